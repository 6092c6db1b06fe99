export * from './scaler.ts';
