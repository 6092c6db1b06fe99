import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import yazl from 'yazl';
import type { BlobInfo, BlobStore } from '../blob/index.ts';

/** Helpers shared by the agent's tests (not used by production code). */

/** A real zip archive of `files` (name -> content), built with yazl. */
export function buildZip(files: Record<string, string>): Promise<Buffer> {
  const zip = new yazl.ZipFile();
  for (const [name, content] of Object.entries(files)) zip.addBuffer(Buffer.from(content), name, { mtime: new Date(0), mode: 0o644 });
  zip.end();
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    zip.outputStream.on('data', (c: Buffer) => chunks.push(c));
    zip.outputStream.on('end', () => resolve(Buffer.concat(chunks)));
    zip.outputStream.on('error', reject);
  });
}

export const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** Wraps a BlobStore and counts downloads per key; `gate` holds every get until opened. */
export function countingBlob(inner: BlobStore): BlobStore & { gets: Map<string, number>; hold(): () => void } {
  const gets = new Map<string, number>();
  let gate: Promise<void> | undefined;
  return {
    gets,
    hold() {
      let open!: () => void;
      gate = new Promise((r) => (open = r));
      return () => {
        gate = undefined;
        open();
      };
    },
    put: (key, body) => inner.put(key, body),
    async get(key) {
      gets.set(key, (gets.get(key) ?? 0) + 1);
      if (gate) await gate;
      return inner.get(key);
    },
    head: (key) => inner.head(key),
    list: (prefix) => inner.list(prefix),
    delete: (key) => inner.delete(key),
    close: () => inner.close(),
  };
}

/** A minimal in-memory BlobStore for unit tests that need no files on disk. */
export function mapBlob(): BlobStore {
  const m = new Map<string, { body: Buffer; info: BlobInfo }>();
  return {
    async put(key, body) {
      let buf: Buffer;
      if (Buffer.isBuffer(body)) buf = body;
      else {
        const chunks: Buffer[] = [];
        for await (const c of body) chunks.push(c as Buffer);
        buf = Buffer.concat(chunks);
      }
      const info = { key, size: buf.length, modified: Date.now() };
      m.set(key, { body: buf, info });
      return info;
    },
    async get(key) {
      const e = m.get(key);
      return e ? Readable.from([e.body]) : undefined;
    },
    async head(key) {
      return m.get(key)?.info;
    },
    async list(prefix) {
      return [...m.values()].filter((e) => e.info.key.startsWith(prefix)).map((e) => e.info);
    },
    async delete(key) {
      m.delete(key);
    },
    async close() {},
  };
}
