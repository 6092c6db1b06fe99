export * from './types.ts';
export { createProcessRuntime, type ProcessRuntimeOptions } from './process.ts';
