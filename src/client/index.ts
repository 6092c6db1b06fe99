export * from './client.ts';
export * from './connection.ts';
