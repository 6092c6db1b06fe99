export * from './types.ts';
// Type-only: drivers themselves are picked in src/bin/ (importing this index never loads the AWS SDK).
export type { S3BlobStoreOptions } from './s3.ts';
