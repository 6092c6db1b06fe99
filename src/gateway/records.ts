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

const byId = (a: InvocationRecord, b: InvocationRecord): number => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);

/** Records of stored values (a chunk's array, or one record from before chunks), newest first. */
export function newestRecords(values: readonly string[], limit: number): InvocationRecord[] {
  const out: InvocationRecord[] = [];
  for (const v of values) {
    const parsed = JSON.parse(v) as InvocationRecord | InvocationRecord[];
    if (Array.isArray(parsed)) out.push(...parsed);
    else out.push(parsed);
  }
  // Chunks of different gateways may interleave in time: order the records themselves.
  out.sort((a, b) => byId(b, a));
  return out.slice(0, limit);
}

/** Records buffered in all while the store is down (the oldest of a function are dropped past it). */
const MAX_BUFFERED = 50_000;

/**
 * What a flush writes of one function's records: all of them in order, or past `max`, the failed
 * ones first (what a user looks for in a busy function's records) and the newest successes after.
 * Sorts `recs` in place.
 */
export function sample(recs: InvocationRecord[], max: number): InvocationRecord[] {
  // Nearly in order already (ids start with the request's start time; lines come as requests end).
  if (!isSorted(recs)) recs.sort(byId);
  if (recs.length <= max) return recs;
  const failed = recs.filter((r) => r.status !== 'success');
  if (failed.length >= max) return failed.slice(-max);
  const ok = recs.filter((r) => r.status === 'success').slice(failed.length - max);
  return failed.length === 0 ? ok : [...failed, ...ok].sort(byId);
}

function isSorted(recs: readonly InvocationRecord[]): boolean {
  for (let i = 1; i < recs.length; i++) if ((recs[i - 1] as InvocationRecord).id > (recs[i] as InvocationRecord).id) return false;
  return true;
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
  /**
   * Per function, in arrival order; past 4 x what a flush writes, cut down to what `sample` could
   * still pick: at a few thousand requests a second the buffering, sorting and copying of records
   * that would never be written was most of what the platform process spent per warm request.
   */
  #buffers = new Map<string, InvocationRecord[]>();
  #buffered = 0;
  #writesSinceTrim = new Map<string, number>();
  #timer: ReturnType<Clock['setTimeout']> | undefined;
  #flushing: Promise<void> | undefined;
  readonly #store: Store;
  readonly #clock: Clock;
  readonly #logger: Logger;
  readonly #keep: number;
  readonly #intervalMs: number;
  readonly #perFlush: number;
  readonly #perFlushHot: number;
  /** Functions whose last flush had more than #perFlushHot records. */
  #hot = new Set<string>();

  /** Records of a function deleted meanwhile are dropped, so a DELETE leaves none behind. */
  readonly #exists: (fnId: string) => boolean;

  constructor(opts: { store: Store; clock: Clock; logger: Logger; keep?: number; intervalMs?: number; perFlush?: number; exists?: (fnId: string) => boolean }) {
    this.#exists = opts.exists ?? (() => true);
    this.#store = opts.store;
    this.#clock = opts.clock;
    this.#logger = opts.logger;
    this.#keep = opts.keep ?? 1000;
    this.#intervalMs = opts.intervalMs ?? 500;
    // At most `keep` per function per flush is written (a burst keeps all its records), and once a
    // function has had more than a quarter of that in two flushes in a row, a quarter: a hot
    // function costs the store a bounded amount however fast it is called (embedded, each record
    // is written twice, as a value and as its revision's event; at 8,000 requests a second the
    // 2,000 records a second written before were the platform's largest cost per request).
    this.#perFlush = Math.max(1, opts.perFlush ?? this.#keep);
    this.#perFlushHot = Math.max(1, Math.floor(this.#perFlush / 4));
  }

  record(rec: InvocationRecord): void {
    let buf = this.#buffers.get(rec.function_id);
    if (!buf) this.#buffers.set(rec.function_id, (buf = []));
    buf.push(rec);
    this.#buffered++;
    // Past 4 x what a flush writes, keep only what `sample` could still pick (amortized O(1)).
    if (buf.length >= 4 * this.#perFlush) this.#compact(buf);
    // Store down for long with many functions: drop this function's oldest.
    if (this.#buffered > MAX_BUFFERED) this.#drop(buf, Math.min(buf.length - 1, this.#buffered - MAX_BUFFERED));
    this.#schedule(this.#intervalMs);
  }

  #compact(buf: InvocationRecord[]): void {
    // Twice the largest flush: whatever a flush then samples from it, it would have from the whole.
    const keep = sample(buf, 2 * this.#perFlush);
    this.#buffered -= buf.length - keep.length;
    buf.splice(0, buf.length, ...keep);
  }

  #drop(buf: InvocationRecord[], n: number): void {
    buf.splice(0, n);
    this.#buffered -= n;
  }

  #schedule(ms: number): void {
    this.#timer ??= this.#clock.setTimeout(() => {
      this.#timer = undefined;
      void this.flush();
    }, ms);
  }

  async flush(): Promise<void> {
    if (this.#flushing) await this.#flushing;
    const buffers = this.#buffers;
    this.#buffers = new Map();
    this.#buffered = 0;
    const chunks: InvocationRecord[][] = [];
    const hot = new Set<string>();
    for (const [fnId, recs] of buffers) {
      if (!this.#exists(fnId)) continue;
      const kept = sample(recs, this.#hot.has(fnId) ? this.#perFlushHot : this.#perFlush);
      if (recs.length > this.#perFlushHot) hot.add(fnId);
      for (let i = 0; i < kept.length; i += BATCH_MAX) chunks.push(kept.slice(i, i + BATCH_MAX));
    }
    this.#hot = hot;
    if (chunks.length === 0) return;
    this.#flushing = (async () => {
      // Several chunks per store transaction (etcd allows 128 ops per txn; values stay far below its 1.5 MiB).
      for (let i = 0; i < chunks.length; i += 50) {
        const part = chunks.slice(i, i + 50);
        try {
          await this.#store.txn([], part.map((c) => ({ type: 'put' as const, key: invocationBatchKey(c), value: JSON.stringify(c) })));
        } catch (err) {
          // Store briefly down: keep what is left, in order, and retry later.
          const newer = this.#buffers;
          this.#buffers = new Map();
          this.#buffered = 0;
          for (const rec of chunks.slice(i).flat()) this.record(rec);
          for (const recs of newer.values()) for (const rec of recs) this.record(rec);
          this.#logger.warn({ err: String(err) }, 'invocation records not written yet; will retry');
          if (this.#timer) this.#clock.clearTimeout(this.#timer);
          this.#timer = undefined;
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
