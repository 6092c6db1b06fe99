export * from './gateway.ts';
export * from './invoke.ts';
export * from './logs.ts';
export * from './records.ts';
export * from './views.ts';
export { FunctionService } from './functions.ts';
export { buildApi } from './api.ts';
export { loadAdminToken } from './token.ts';
export { ServiceCatalog, verifyGithubSignature } from './services.ts';
