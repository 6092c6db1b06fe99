import { createHash, randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { lstat, mkdir, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { extractArchive, type ArchiveLimits } from '../archive/index.ts';
import type { BlobStore } from '../blob/index.ts';
import { AetherError, metrics, type Clock, type Logger } from '../core/index.ts';

export interface CodeCacheOptions {
  /** Cache root, e.g. `<dataDir>/code`; entries live in `<dir>/<sha256>-<entrypoint hash>/`. */
  dir: string;
  blob: BlobStore;
  clock: Clock;
  logger: Logger;
  archiveLimits: ArchiveLimits;
  /** Unpacked bytes kept on disk before unused entries are evicted (LRU). */
  budgetBytes: number;
}

/** What the cache needs to know about a function's code. */
export interface CodeRef {
  code_path: string | null;
  code_sha256: string | null;
  /**
   * The entrypoint decides whether a single top folder is stripped (see extractArchive), so it is
   * part of the cache key: the same archive can unpack two ways.
   */
  entrypoint: string;
}

/** A cache entry in use; call release() when the instance using it is gone. */
export interface CodeLease {
  dir: string;
  sha256: string;
  release(): void;
}

export interface CodeCache {
  /** Unpacked code for this archive: from disk, or downloaded + verified + unpacked once. */
  acquire(ref: CodeRef): Promise<CodeLease>;
  /**
   * Remove unused entries (least recently used first) until the cache fits its budget. Runs by
   * itself after every acquire and release; resolves when every pass so far has finished.
   */
  evict(): Promise<void>;
  /** Entries currently on disk. */
  entries(): { key: string; bytes: number; users: number }[];
}

interface Entry {
  bytes: number;
  users: number;
  lastUsed: number;
}

const SHA_RE = /^[0-9a-f]{64}$/;
const KEY_RE = /^[0-9a-f]{64}-[0-9a-f]{8}$/;

function cacheKey(sha: string, entrypoint: string): string {
  return `${sha}-${createHash('sha256').update(entrypoint).digest('hex').slice(0, 8)}`;
}

/**
 * Content-addressed code cache: keyed by the archive's sha256, so a code update never sees an old
 * unpack and identical uploads share one directory. Unlike upstream (no lock, non-atomic write),
 * concurrent requests for one sha download once, the blob is hashed while it streams and checked,
 * and the unpacked tree appears by an atomic rename.
 */
export async function createCodeCache(opts: CodeCacheOptions): Promise<CodeCache> {
  const { dir, blob, clock, logger } = opts;
  const entries = new Map<string, Entry>();
  const pending = new Map<string, Promise<void>>();
  /** Evictions in progress: a re-download of the same sha waits before renaming into place. */
  const removing = new Map<string, Promise<void>>();
  await mkdir(dir, { recursive: true });

  // Adopt what an earlier run left; drop half-written downloads and unpacks.
  for (const name of await readdir(dir)) {
    const p = join(dir, name);
    if (name.startsWith('.')) {
      await rm(p, { recursive: true, force: true });
    } else if (KEY_RE.test(name)) {
      entries.set(name, { bytes: await treeSize(p), users: 0, lastUsed: 0 });
    }
  }

  async function fill(ref: CodeRef, sha: string, key: string): Promise<void> {
    if (!ref.code_path) throw new AetherError('AETHER_ERR_NO_CODE');
    const archive = join(dir, `.download-${randomBytes(6).toString('hex')}`);
    try {
      const body = await blob.get(ref.code_path);
      if (!body) throw new AetherError('AETHER_ERR_NO_CODE', `code archive ${ref.code_path} is missing from the blob store`);
      const hash = createHash('sha256');
      const tap = new Transform({
        transform(chunk: Buffer, _enc, cb) {
          hash.update(chunk);
          cb(null, chunk);
        },
      });
      await pipeline(body, tap, createWriteStream(archive, { mode: 0o600 }));
      const got = hash.digest('hex');
      if (got !== sha) {
        throw new AetherError('AETHER_ERR_ARCHIVE_INVALID', `code archive sha256 mismatch: expected ${sha}, got ${got}`);
      }
      await removing.get(key);
      // Unpacks into a staging dir beside the target and renames it into place (atomic).
      const { bytes } = await extractArchive(archive, join(dir, key), opts.archiveLimits, { entrypoint: ref.entrypoint });
      entries.set(key, { bytes, users: 0, lastUsed: clock.now() });
    } finally {
      await rm(archive, { force: true });
    }
  }

  let evicting: Promise<void> = Promise.resolve();
  function evict(): Promise<void> {
    evicting = evicting.then(evictPass).catch((err: unknown) => logger.warn({ err }, 'code cache eviction failed'));
    return evicting;
  }

  async function evictPass(): Promise<void> {
    let total = 0;
    for (const e of entries.values()) total += e.bytes;
    if (total <= opts.budgetBytes) return;
    const idle = [...entries].filter(([key, e]) => e.users === 0 && !pending.has(key)).sort((a, b) => a[1].lastUsed - b[1].lastUsed);
    for (const [key, e] of idle) {
      if (total <= opts.budgetBytes) break;
      entries.delete(key);
      total -= e.bytes;
      const done = rm(join(dir, key), { recursive: true, force: true })
        .catch((err: unknown) => logger.warn({ err, key }, 'code cache: could not remove an evicted entry'))
        .finally(() => removing.delete(key));
      removing.set(key, done);
      await done;
    }
  }

  return {
    async acquire(ref) {
      const sha = ref.code_sha256;
      if (!ref.code_path || !sha) throw new AetherError('AETHER_ERR_NO_CODE');
      if (!SHA_RE.test(sha)) throw new AetherError('AETHER_ERR_ARCHIVE_INVALID', `bad code sha256: ${sha}`);
      const key = cacheKey(sha, ref.entrypoint);
      let e = entries.get(key);
      if (e) metrics.codeCacheHits.inc();
      // Single flight per sha; loop because an eviction may win the race right after a fill.
      for (let attempt = 0; !e; attempt++) {
        if (attempt === 3) throw new AetherError('AETHER_ERR_INTERNAL', 'code cache entry evicted while being acquired');
        let p = pending.get(key);
        if (!p) {
          metrics.codeCacheMisses.inc();
          p = fill(ref, sha, key).finally(() => pending.delete(key));
          pending.set(key, p);
        } else if (attempt === 0) {
          metrics.codeCacheHits.inc();
        }
        await p;
        e = entries.get(key);
      }
      const entry = e;
      entry.users++;
      entry.lastUsed = clock.now();
      let released = false;
      // Evict others now that this one is pinned (never the entry being handed out).
      void evict();
      return {
        dir: join(dir, key),
        sha256: sha,
        release() {
          if (released) return;
          released = true;
          entry.users--;
          entry.lastUsed = clock.now();
          void evict();
        },
      };
    },
    evict,
    entries() {
      return [...entries].map(([key, e]) => ({ key, bytes: e.bytes, users: e.users }));
    },
  };
}

async function treeSize(p: string): Promise<number> {
  const st = await lstat(p);
  if (!st.isDirectory()) return st.size;
  let n = 0;
  for (const name of await readdir(p)) n += await treeSize(join(p, name));
  return n;
}

