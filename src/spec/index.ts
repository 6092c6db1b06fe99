export * from './function.ts';
export * from './keys.ts';
export * from './instance.ts';
export * from './service.ts';
export * from './endpoint.ts';
