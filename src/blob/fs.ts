import { randomBytes } from 'node:crypto';
import { mkdir, open, readdir, rename, rm, stat, unlink } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import type { Readable } from 'node:stream';
import { AetherError } from '../core/index.ts';
import type { BlobInfo, BlobStore } from './types.ts';

/** Temp files of in-progress puts; a key segment may not start with it. */
const TMP_PREFIX = '.tmp-';

/**
 * Blobs as files under `dir`: key 'functions/fn-x/abc.archive' is `<dir>/functions/fn-x/abc.archive`.
 * put writes a temp file next to the target, fsyncs it and renames it over the target, so readers
 * see the whole old or the whole new file. A key cannot also be a "directory" of other keys
 * ('a/b' and 'a/b/c' cannot both exist), unlike S3.
 */
export function createFsBlobStore(opts: { dir: string }): BlobStore {
  return new FsBlobStore(resolve(opts.dir));
}

/** The key's path segments; rejects what could escape the root or is ambiguous. */
function segments(key: string): string[] {
  const bad = (why: string): AetherError => new AetherError('AETHER_ERR_VALIDATION', `invalid blob key ${JSON.stringify(key)}: ${why}`);
  if (typeof key !== 'string' || key === '') throw bad('empty');
  if (key.startsWith('/')) throw bad('absolute');
  if (key.includes('\\') || key.includes('\0')) throw bad('backslash or NUL');
  const segs = key.split('/');
  for (const s of segs) {
    if (s === '') throw bad('empty segment');
    if (s === '.' || s === '..') throw bad('. or .. segment');
    if (s.startsWith(TMP_PREFIX)) throw bad(`segment starts with the reserved ${TMP_PREFIX}`);
  }
  return segs;
}

function errno(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException | undefined)?.code;
}

/** S3 lists keys in UTF-8 byte order; match it. */
function byKey(a: BlobInfo, b: BlobInfo): number {
  return Buffer.compare(Buffer.from(a.key), Buffer.from(b.key));
}

class FsBlobStore implements BlobStore {
  readonly #root: string;

  constructor(root: string) {
    this.#root = root;
  }

  async put(key: string, body: Readable | Buffer): Promise<BlobInfo> {
    const target = join(this.#root, ...segments(key));
    const parent = dirname(target);
    try {
      await mkdir(parent, { recursive: true });
    } catch (err) {
      throw this.#collision(key, err);
    }
    const tmp = join(parent, `${TMP_PREFIX}${randomBytes(8).toString('hex')}`);
    const fh = await open(tmp, 'wx', 0o644);
    try {
      if (Buffer.isBuffer(body)) await fh.writeFile(body);
      else for await (const chunk of body) await fh.write(typeof chunk === 'string' ? Buffer.from(chunk) : (chunk as Uint8Array));
      await fh.sync();
      await fh.close();
      await rename(tmp, target);
    } catch (err) {
      await fh.close().catch(() => {});
      await rm(tmp, { force: true });
      throw this.#collision(key, err);
    }
    // Persist the rename itself (the directory entry) before reporting success.
    const d = await open(parent, 'r');
    try {
      await d.sync();
    } finally {
      await d.close();
    }
    const info = await this.head(key);
    if (!info) throw new AetherError('AETHER_ERR_INTERNAL', `blob ${key} vanished right after put`);
    return info;
  }

  async get(key: string): Promise<Readable | undefined> {
    const target = join(this.#root, ...segments(key));
    let fh;
    try {
      fh = await open(target, 'r');
    } catch (err) {
      if (['ENOENT', 'ENOTDIR', 'EISDIR'].includes(errno(err) ?? '')) return undefined;
      throw err;
    }
    // The open handle pins this version: a concurrent put renames a new file in, this one stays whole.
    if (!(await fh.stat()).isFile()) {
      await fh.close();
      return undefined;
    }
    return fh.createReadStream();
  }

  async head(key: string): Promise<BlobInfo | undefined> {
    try {
      const st = await stat(join(this.#root, ...segments(key)));
      return st.isFile() ? { key, size: st.size, modified: Math.floor(st.mtimeMs) } : undefined;
    } catch (err) {
      if (errno(err) === 'ENOENT' || errno(err) === 'ENOTDIR') return undefined;
      throw err;
    }
  }

  async list(prefix: string): Promise<BlobInfo[]> {
    // Start at the deepest directory the prefix names completely ('a/b/c' -> 'a/b').
    const cut = prefix.lastIndexOf('/');
    const base = cut < 0 ? '' : prefix.slice(0, cut);
    if (base !== '') segments(base);
    const out: BlobInfo[] = [];
    const walk = async (rel: string): Promise<void> => {
      let entries;
      try {
        entries = await readdir(join(this.#root, rel), { withFileTypes: true });
      } catch (err) {
        if (errno(err) === 'ENOENT' || errno(err) === 'ENOTDIR') return;
        throw err;
      }
      for (const e of entries) {
        if (e.name.startsWith(TMP_PREFIX)) continue;
        const key = rel === '' ? e.name : `${rel}/${e.name}`;
        if (e.isDirectory()) {
          if (`${key}/`.startsWith(prefix) || prefix.startsWith(`${key}/`)) await walk(key);
        } else if (e.isFile() && key.startsWith(prefix)) {
          const info = await this.head(key);
          if (info) out.push(info);
        }
      }
    };
    await walk(base);
    return out.sort(byKey);
  }

  async delete(key: string): Promise<void> {
    try {
      await unlink(join(this.#root, ...segments(key)));
    } catch (err) {
      // Missing is fine; EISDIR: the key only names a "directory" of other keys, so no such blob.
      if (!['ENOENT', 'ENOTDIR', 'EISDIR'].includes(errno(err) ?? '')) throw err;
    }
  }

  async close(): Promise<void> {}

  #collision(key: string, err: unknown): unknown {
    if (['ENOTDIR', 'EISDIR', 'EEXIST', 'ENOTEMPTY'].includes(errno(err) ?? '')) {
      return new AetherError('AETHER_ERR_CONFLICT', `blob key ${key} collides with another key's path`, { cause: err });
    }
    return err;
  }
}
