export * from './duration.ts';
export * from './format.ts';
export * from './enrich.ts';
export * from './nodeconfig.ts';
export * from './plan.ts';
export * from './source.ts';
export * from './deployer.ts';
