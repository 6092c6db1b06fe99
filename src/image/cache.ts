/** Where built images live: outside any one data dir, shared by every agent on the host. */
import { createHash } from 'node:crypto';
import { mkdir, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';

export function imageCacheDir(): string {
  return process.env['AETHER_IMAGE_CACHE'] ?? '/var/cache/aether/images';
}

export function contentKey(parts: (string | Buffer)[]): string {
  const h = createHash('sha256');
  for (const p of parts) h.update(typeof p === 'string' ? Buffer.from(p) : p).update('\0');
  return h.digest('hex').slice(0, 20);
}

export async function exists(path: string): Promise<boolean> {
  return stat(path).then(() => true, () => false);
}

const inflight = new Map<string, Promise<string>>();

/**
 * Returns `dir/name`, building it with `make(tmpPath)` when missing. The build writes a temporary
 * file that is renamed into place, so readers never see a partial image (and concurrent builders
 * on one host only waste work). Within a process, one build per path.
 */
export function cached(dir: string, name: string, make: (tmp: string) => Promise<void>): Promise<string> {
  const path = join(dir, name);
  let p = inflight.get(path);
  if (p) return p;
  p = (async () => {
    if (await exists(path)) return path;
    await mkdir(dir, { recursive: true });
    const tmp = `${path}.tmp-${process.pid}-${Date.now()}`;
    try {
      await make(tmp);
      await rename(tmp, path);
    } finally {
      await rm(tmp, { force: true, recursive: true });
    }
    return path;
  })().finally(() => inflight.delete(path));
  inflight.set(path, p);
  return p;
}
