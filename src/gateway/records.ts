import type { Clock, Logger } from '../core/index.ts';
import type { Store } from '../store/index.ts';
import { KEYS, type InvocationRecord } from '../spec/index.ts';

/** Records per stored chunk (~300 bytes each as JSON). */
export const BATCH_MAX = 200;

/**
 * The key of a chunk of one function's records (sorted by id): `<newest id>.<count>`. Ids sort by
 * time and have one width, so chunks sort newest-last like the records did, and trimming counts
 * records without reading values. A key without `.<count>` (one record per key, as written before
 * chunks) counts as one.
 */
export function invocationBatchKey(chunk: readonly InvocationRecord[]): string {
  const last = chunk.at(-1) as InvocationRecord;
  return KEYS.invocation(last.function_id, `${last.id}.${chunk.length}`);
}

export function batchCount(key: string): number {
  const m = /\.(\d+)$/.exec(key);
  return m ? Number(m[1]) : 1;
}

/** Records of stored values (a chunk's array, or one record from before chunks), newest first. */
export function newestRecords(values: readonly string[], limit: number): InvocationRecord[] {
  const out: InvocationRecord[] = [];
  for (const v of values) {
    const parsed = JSON.parse(v) as InvocationRecord | InvocationRecord[];
    if (Array.isArray(parsed)) out.push(...parsed);
    else out.push(parsed);
  }
  // Chunks of different gateways may interleave in time: order the records themselves.
  out.sort((a, b) => (a.id < b.id ? 1 : a.id > b.id ? -1 : 0));
  return out.slice(0, limit);
}

/**
 * Writes invocation records off the request path: records queue in memory and are flushed every
 * `intervalMs`; each function keeps about the newest `keep` records.
 *
 * A flush stores a function's records as ONE key per chunk (up to BATCH_MAX records, a JSON array;
 * see `invocationBatchKey`), not one key per record: a key per record cost the embedded store
 * ~130 µs of CPU per request (a row, an event row and a watch dispatch each, and trimming listed
 * and deleted them one by one), more than everything else the platform does for a warm request.
 */
export class InvocationRecorder {
  #buffer: InvocationRecord[] = [];
  #writesSinceTrim = new Map<string, number>();
  #timer: ReturnType<Clock['setTimeout']> | undefined;
  #flushing: Promise<void> | undefined;
  readonly #store: Store;
  readonly #clock: Clock;
  readonly #logger: Logger;
  readonly #keep: number;
  readonly #intervalMs: number;

  /** Records of a function deleted meanwhile are dropped, so a DELETE leaves none behind. */
  readonly #exists: (fnId: string) => boolean;

  constructor(opts: { store: Store; clock: Clock; logger: Logger; keep?: number; intervalMs?: number; exists?: (fnId: string) => boolean }) {
    this.#exists = opts.exists ?? (() => true);
    this.#store = opts.store;
    this.#clock = opts.clock;
    this.#logger = opts.logger;
    this.#keep = opts.keep ?? 1000;
    // Half a second: at most `keep` records per function per flush are written, so a hot function
    // costs the store at most 2 x keep records a second however fast it is called.
    this.#intervalMs = opts.intervalMs ?? 500;
  }

  record(rec: InvocationRecord): void {
    this.#buffer.push(rec);
    if (this.#buffer.length > 50_000) this.#buffer.splice(0, this.#buffer.length - 50_000); // store down for long: drop oldest
    this.#schedule(this.#intervalMs);
  }

  #schedule(ms: number): void {
    this.#timer ??= this.#clock.setTimeout(() => {
      this.#timer = undefined;
      void this.flush();
    }, ms);
  }

  async flush(): Promise<void> {
    if (this.#flushing) await this.#flushing;
    const batch = this.#buffer.filter((r) => this.#exists(r.function_id));
    this.#buffer = [];
    if (batch.length === 0) return;
    this.#flushing = (async () => {
      const chunks = [...Map.groupBy(batch, (r) => r.function_id).values()].flatMap((recs) => {
        recs.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
        // More than `keep` at once: the older ones would be trimmed right away.
        const newest = recs.slice(-this.#keep);
        const out: InvocationRecord[][] = [];
        for (let i = 0; i < newest.length; i += BATCH_MAX) out.push(newest.slice(i, i + BATCH_MAX));
        return out;
      });
      // Several chunks per store transaction (etcd allows 128 ops per txn; values stay far below its 1.5 MiB).
      for (let i = 0; i < chunks.length; i += 50) {
        const part = chunks.slice(i, i + 50);
        try {
          await this.#store.txn([], part.map((c) => ({ type: 'put' as const, key: invocationBatchKey(c), value: JSON.stringify(c) })));
        } catch (err) {
          // Store briefly down: keep what is left, in order, and retry later.
          this.#buffer = chunks.slice(i).flat().concat(this.#buffer);
          this.#logger.warn({ err: String(err) }, 'invocation records not written yet; will retry');
          this.#schedule(1000);
          return;
        }
        for (const c of part) {
          const fnId = (c[0] as InvocationRecord).function_id;
          const n = (this.#writesSinceTrim.get(fnId) ?? 0) + c.length;
          this.#writesSinceTrim.set(fnId, n);
          // Trim every keep/2 records: a function holds between keep and 1.5 x keep records
          // (plus at most one chunk, as whole chunks go).
          if (n >= Math.max(50, this.#keep / 2)) {
            this.#writesSinceTrim.set(fnId, 0);
            await this.#trim(fnId).catch(() => undefined);
          }
        }
      }
    })();
    try {
      await this.#flushing;
    } finally {
      this.#flushing = undefined;
    }
  }

  /** Drop the oldest chunks while the rest still hold `keep` records; counts come from the keys. */
  async #trim(fnId: string): Promise<void> {
    const { kvs } = await this.#store.list(KEYS.invocationsOf(fnId));
    let total = kvs.reduce((n, kv) => n + batchCount(kv.key), 0);
    const excess: string[] = [];
    for (const kv of kvs) {
      const n = batchCount(kv.key);
      if (total - n < this.#keep) break;
      total -= n;
      excess.push(kv.key);
    }
    for (let i = 0; i < excess.length; i += 100) {
      await this.#store.txn([], excess.slice(i, i + 100).map((key) => ({ type: 'delete' as const, key })));
    }
  }

  async close(): Promise<void> {
    if (this.#timer) this.#clock.clearTimeout(this.#timer);
    this.#timer = undefined;
    await this.flush();
  }
}
