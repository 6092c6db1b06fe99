import { createHash, randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { lstat, mkdir, readdir, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { extractArchive, type ArchiveLimits } from '../archive/index.ts';
import type { BlobStore } from '../blob/index.ts';
import { AetherError, metrics, type Clock, type Logger } from '../core/index.ts';

export interface CodeCacheOptions {
  /** Cache root, e.g. `<dataDir>/code`; entries live in `<dir>/<sha256>/`. */
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
  /** Entries currently on disk (sha256 -> bytes, users). */
  entries(): { sha256: string; bytes: number; users: number }[];
}

interface Entry {
  bytes: number;
  users: number;
  lastUsed: number;
}

const SHA_RE = /^[0-9a-f]{64}$/;

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

  // Adopt what an earlier run left; drop half-written temp dirs.
  for (const name of await readdir(dir)) {
    const p = join(dir, name);
    if (name.startsWith('.tmp-')) {
      await rm(p, { recursive: true, force: true });
    } else if (SHA_RE.test(name)) {
      entries.set(name, { bytes: await treeSize(p), users: 0, lastUsed: 0 });
    }
  }

  async function fill(ref: CodeRef, sha: string): Promise<void> {
    if (!ref.code_path) throw new AetherError('AETHER_ERR_NO_CODE');
    const tmp = join(dir, `.tmp-${randomBytes(6).toString('hex')}`);
    const archive = `${tmp}.archive`;
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
      await mkdir(tmp, { recursive: true });
      const { bytes } = await extractArchive(archive, tmp, opts.archiveLimits);
      await removing.get(sha);
      await rename(tmp, join(dir, sha));
      entries.set(sha, { bytes, users: 0, lastUsed: clock.now() });
    } catch (err) {
      await rm(tmp, { recursive: true, force: true });
      throw err;
    } finally {
      await rm(archive, { force: true });
    }
  }

  async function evict(): Promise<void> {
    let total = 0;
    for (const e of entries.values()) total += e.bytes;
    if (total <= opts.budgetBytes) return;
    const idle = [...entries].filter(([sha, e]) => e.users === 0 && !pending.has(sha)).sort((a, b) => a[1].lastUsed - b[1].lastUsed);
    for (const [sha, e] of idle) {
      if (total <= opts.budgetBytes) break;
      entries.delete(sha);
      total -= e.bytes;
      const done = rm(join(dir, sha), { recursive: true, force: true })
        .catch((err: unknown) => logger.warn({ err, sha }, 'code cache: could not remove an evicted entry'))
        .finally(() => removing.delete(sha));
      removing.set(sha, done);
      await done;
    }
  }

  return {
    async acquire(ref) {
      const sha = ref.code_sha256;
      if (!ref.code_path || !sha) throw new AetherError('AETHER_ERR_NO_CODE');
      if (!SHA_RE.test(sha)) throw new AetherError('AETHER_ERR_ARCHIVE_INVALID', `bad code sha256: ${sha}`);
      let e = entries.get(sha);
      if (e) metrics.codeCacheHits.inc();
      // Single flight per sha; loop because an eviction may win the race right after a fill.
      for (let attempt = 0; !e; attempt++) {
        if (attempt === 3) throw new AetherError('AETHER_ERR_INTERNAL', 'code cache entry evicted while being acquired');
        let p = pending.get(sha);
        if (!p) {
          metrics.codeCacheMisses.inc();
          p = fill(ref, sha).finally(() => pending.delete(sha));
          pending.set(sha, p);
        } else if (attempt === 0) {
          metrics.codeCacheHits.inc();
        }
        await p;
        e = entries.get(sha);
      }
      const entry = e;
      entry.users++;
      entry.lastUsed = clock.now();
      let released = false;
      // Evict others now that this one is pinned (never the entry being handed out).
      void evict().catch((err: unknown) => logger.warn({ err }, 'code cache eviction failed'));
      return {
        dir: join(dir, sha),
        sha256: sha,
        release() {
          if (released) return;
          released = true;
          entry.users--;
          entry.lastUsed = clock.now();
          void evict().catch((err: unknown) => logger.warn({ err }, 'code cache eviction failed'));
        },
      };
    },
    entries() {
      return [...entries].map(([sha256, e]) => ({ sha256, bytes: e.bytes, users: e.users }));
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

