export * from './types.ts';
// Type-only: drivers themselves are picked in src/bin/ (importing this index never loads ioredis).
export type { RedisQueueOptions } from './redis.ts';
