export * from './proxy.ts';
