import {
  CreateBucketCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadBucketCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  type S3ClientConfig,
} from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import type { Readable } from 'node:stream';
import { AetherError } from '../core/index.ts';
import type { BlobInfo, BlobStore } from './types.ts';

export interface S3BlobStoreOptions {
  bucket: string;
  /** For S3-compatible servers (Ceph radosgw, MinIO...): 'http://host:port'. */
  endpoint?: string;
  /** Default: AWS_REGION, else us-east-1. */
  region?: string;
  /** Default: true when an endpoint is given (S3-compatible servers rarely do virtual hosts). */
  forcePathStyle?: boolean;
  /** Default: the SDK's standard chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, profile, ...). */
  credentials?: { accessKeyId: string; secretAccessKey: string };
}

/** Bodies larger than this go up as a multipart upload of parts this size. */
const PART_SIZE = 8 * 1024 * 1024;

/**
 * `s3://bucket?endpoint=http://host:port&region=r&path_style=true` -> options (credentials still
 * come from the environment).
 */
export function s3OptionsFromUrl(url: string): S3BlobStoreOptions {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new AetherError('AETHER_ERR_VALIDATION', `invalid s3 url: ${url}`);
  }
  if (u.protocol !== 's3:' || !u.hostname) throw new AetherError('AETHER_ERR_VALIDATION', `s3 url must look like s3://bucket?...: ${url}`);
  if (u.pathname !== '' && u.pathname !== '/') throw new AetherError('AETHER_ERR_VALIDATION', `s3 url must not have a path (a key prefix is not supported): ${url}`);
  const opts: S3BlobStoreOptions = { bucket: u.hostname };
  for (const [name, value] of u.searchParams) {
    if (name === 'endpoint') opts.endpoint = value;
    else if (name === 'region') opts.region = value;
    else if (name === 'path_style') {
      if (value !== 'true' && value !== 'false') throw new AetherError('AETHER_ERR_VALIDATION', `s3 url: path_style must be true or false: ${url}`);
      opts.forcePathStyle = value === 'true';
    } else throw new AetherError('AETHER_ERR_VALIDATION', `s3 url: unknown parameter ${name}: ${url}`);
  }
  return opts;
}

export function createS3BlobStore(opts: S3BlobStoreOptions): BlobStore {
  return new S3BlobStore(opts);
}

/** Same key rules as the fs driver, so a key that works on one works on the other. */
function checkKey(key: string): void {
  const bad = (why: string): AetherError => new AetherError('AETHER_ERR_VALIDATION', `invalid blob key ${JSON.stringify(key)}: ${why}`);
  if (typeof key !== 'string' || key === '') throw bad('empty');
  if (key.startsWith('/')) throw bad('absolute');
  if (key.includes('\\') || key.includes('\0')) throw bad('backslash or NUL');
  for (const s of key.split('/')) {
    if (s === '') throw bad('empty segment');
    if (s === '.' || s === '..') throw bad('. or .. segment');
    if (s.startsWith('.tmp-')) throw bad('segment starts with the reserved .tmp-');
  }
}

interface S3Error {
  name?: string;
  Code?: string;
  message?: string;
  $metadata?: { httpStatusCode?: number };
}

function status(err: unknown): number | undefined {
  return (err as S3Error | undefined)?.$metadata?.httpStatusCode;
}

function isMissing(err: unknown): boolean {
  const e = err as S3Error | undefined;
  return status(err) === 404 || e?.name === 'NoSuchKey' || e?.name === 'NotFound';
}

class S3BlobStore implements BlobStore {
  readonly #client: S3Client;
  readonly #bucket: string;
  #bucketReady: Promise<void> | undefined;

  constructor(opts: S3BlobStoreOptions) {
    this.#bucket = opts.bucket;
    const config: S3ClientConfig = {
      region: opts.region ?? process.env['AWS_REGION'] ?? 'us-east-1',
      forcePathStyle: opts.forcePathStyle ?? opts.endpoint !== undefined,
      // A dead endpoint must fail a call in seconds: connect timeout, socket idle timeout, 1 retry.
      maxAttempts: 2,
      requestHandler: { connectionTimeout: 3000, requestTimeout: 30_000 },
      // Only send/verify checksums S3 requires: the SDK's default CRC32 headers and trailers are
      // not understood by every S3-compatible server (Ceph 16 happens to accept them).
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
    };
    if (opts.endpoint !== undefined) config.endpoint = opts.endpoint;
    if (opts.credentials) config.credentials = opts.credentials;
    this.#client = new S3Client(config);
  }

  async put(key: string, body: Readable | Buffer): Promise<BlobInfo> {
    checkKey(key);
    await this.#ensureBucket();
    await this.#call('put', key, async () => {
      if (Buffer.isBuffer(body)) {
        await this.#client.send(new PutObjectCommand({ Bucket: this.#bucket, Key: key, Body: body, ContentLength: body.length }));
        return;
      }
      // Streams of unknown length: one PUT if it fits a part, else multipart (parts uploaded 2 at a
      // time, so at most 2 parts are buffered); a failed multipart upload is aborted.
      const upload = new Upload({
        client: this.#client,
        params: { Bucket: this.#bucket, Key: key, Body: body },
        partSize: PART_SIZE,
        queueSize: 2,
        leavePartsOnError: false,
      });
      await upload.done();
    });
    const info = await this.head(key);
    if (!info) throw new AetherError('AETHER_ERR_UNAVAILABLE', `s3 put ${key}: object missing right after upload`);
    return info;
  }

  async get(key: string): Promise<Readable | undefined> {
    checkKey(key);
    await this.#ensureBucket();
    const res = await this.#call('get', key, () => this.#client.send(new GetObjectCommand({ Bucket: this.#bucket, Key: key })), true);
    return res?.Body as Readable | undefined;
  }

  async head(key: string): Promise<BlobInfo | undefined> {
    checkKey(key);
    await this.#ensureBucket();
    const res = await this.#call('head', key, () => this.#client.send(new HeadObjectCommand({ Bucket: this.#bucket, Key: key })), true);
    if (!res) return undefined;
    return { key, size: res.ContentLength ?? 0, modified: res.LastModified?.getTime() ?? 0 };
  }

  async list(prefix: string): Promise<BlobInfo[]> {
    await this.#ensureBucket();
    const out: BlobInfo[] = [];
    let token: string | undefined;
    do {
      const res = await this.#call('list', prefix, () =>
        this.#client.send(
          new ListObjectsV2Command({
            Bucket: this.#bucket,
            ...(prefix ? { Prefix: prefix } : {}),
            ...(token ? { ContinuationToken: token } : {}),
          }),
        ),
      );
      for (const o of res.Contents ?? []) {
        if (o.Key !== undefined) out.push({ key: o.Key, size: o.Size ?? 0, modified: o.LastModified?.getTime() ?? 0 });
      }
      token = res.IsTruncated ? res.NextContinuationToken : undefined;
    } while (token);
    return out;
  }

  async delete(key: string): Promise<void> {
    checkKey(key);
    await this.#ensureBucket();
    // S3 answers 204 for a missing key too.
    await this.#call('delete', key, () => this.#client.send(new DeleteObjectCommand({ Bucket: this.#bucket, Key: key })), true);
  }

  async close(): Promise<void> {
    this.#client.destroy();
  }

  /** Create the bucket on first use; a failure is not cached, so the next call tries again. */
  #ensureBucket(): Promise<void> {
    this.#bucketReady ??= (async () => {
      try {
        await this.#client.send(new HeadBucketCommand({ Bucket: this.#bucket }));
        return;
      } catch (err) {
        if (!isMissing(err)) throw this.#wrap('head bucket', this.#bucket, err);
      }
      try {
        await this.#client.send(new CreateBucketCommand({ Bucket: this.#bucket }));
      } catch (err) {
        const name = (err as S3Error).name;
        if (name !== 'BucketAlreadyOwnedByYou' && name !== 'BucketAlreadyExists') throw this.#wrap('create bucket', this.#bucket, err);
      }
    })().catch((err: unknown) => {
      this.#bucketReady = undefined;
      throw err;
    });
    return this.#bucketReady;
  }

  async #call<R>(op: string, key: string, fn: () => Promise<R>, missingOk: true): Promise<R | undefined>;
  async #call<R>(op: string, key: string, fn: () => Promise<R>): Promise<R>;
  async #call<R>(op: string, key: string, fn: () => Promise<R>, missingOk = false): Promise<R | undefined> {
    try {
      return await fn();
    } catch (err) {
      if (missingOk && isMissing(err)) return undefined;
      throw this.#wrap(op, key, err);
    }
  }

  /** Every S3 failure (unreachable, auth, 5xx) is UNAVAILABLE to callers; the S3 code stays in the message. */
  #wrap(op: string, key: string, err: unknown): AetherError {
    const e = err as S3Error;
    // HEAD answers have no body, so the SDK knows only the status there ('UnknownError').
    const code = status(err);
    const what = [code ? `HTTP ${code}` : undefined, e?.Code ?? e?.name].filter(Boolean).join(' ');
    return new AetherError('AETHER_ERR_UNAVAILABLE', `s3 ${op} ${this.#bucket}/${key}: ${what}: ${e?.message ?? String(err)}`, { cause: err });
  }
}
