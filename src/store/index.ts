export * from './types.ts';
export { listAndWatch, type Informer, type InformerHandlers } from './informer.ts';
export { LeaseKeeper, type LeaseKeeperOptions } from './lease.ts';
