export * from './errors.ts';
export * from './clock.ts';
export * from './ids.ts';
export * from './log.ts';
export * from './metrics.ts';
export * from './secrets.ts';
export * from './http.ts';
export * from './net.ts';
