export * from './plan.ts';
export * from './health.ts';
export * from './controller.ts';
export * from './router.ts';
export * from './node.ts';
