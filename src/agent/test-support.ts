import { createHash } from 'node:crypto';
import { zipOf } from '../archive/testing.ts';
import type { BlobStore } from '../blob/index.ts';

/** Helpers shared by the agent's tests (not used by production code). */

/** A real zip archive of `files` (name -> content). */
export const buildZip = (files: Record<string, string>): Promise<Buffer> => zipOf(files);

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

