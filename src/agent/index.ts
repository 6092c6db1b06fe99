export { createAgent } from './agent.ts';
export { createCodeCache, type CodeCache, type CodeCacheOptions, type CodeLease, type CodeRef } from './code-cache.ts';
export { LogStore, DEFAULT_LOG_LINES, type LogEntry } from './logs.ts';
export * from './types.ts';
export { createAgentServer } from './http.ts';
