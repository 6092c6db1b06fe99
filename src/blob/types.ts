import type { Readable } from 'node:stream';

/**
 * BlobStore: immutable-ish objects by key (S3-shaped). put is atomic: a reader sees the old object
 * or the new one, never a part. Drivers: fs (embedded), s3. Every driver passes ./contract.ts.
 */
export interface BlobInfo {
  key: string;
  size: number;
  /** Last-modified time, ms since epoch. */
  modified: number;
}

export interface BlobStore {
  put(key: string, body: Readable | Buffer): Promise<BlobInfo>;
  /** undefined when the key does not exist. */
  get(key: string): Promise<Readable | undefined>;
  head(key: string): Promise<BlobInfo | undefined>;
  /** Every object whose key starts with `prefix`, in key order. */
  list(prefix: string): Promise<BlobInfo[]>;
  /** Deleting a missing key is not an error. */
  delete(key: string): Promise<void>;
  close(): Promise<void>;
}
