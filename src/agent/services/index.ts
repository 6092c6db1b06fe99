export * from './plan.ts';
export * from './health.ts';
