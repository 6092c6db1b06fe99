import type { Clock, Logger } from '../core/index.ts';
import type { Store } from '../store/index.ts';
import { KEYS, type InvocationRecord } from '../spec/index.ts';

/**
 * Writes invocation records off the request path: records queue in memory and are flushed in
 * batches; each function keeps about the newest `keep` records.
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
    this.#intervalMs = opts.intervalMs ?? 100;
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
      // One store transaction per chunk instead of one write per record (etcd allows 128 ops per txn).
      for (let i = 0; i < batch.length; i += 100) {
        const chunk = batch.slice(i, i + 100);
        try {
          await this.#store.txn([], chunk.map((rec) => ({ type: 'put' as const, key: KEYS.invocation(rec.function_id, rec.id), value: JSON.stringify(rec) })));
        } catch (err) {
          // Store briefly down: keep what is left, in order, and retry later.
          this.#buffer = batch.slice(i).concat(this.#buffer);
          this.#logger.warn({ err: String(err) }, 'invocation records not written yet; will retry');
          this.#schedule(1000);
          return;
        }
        for (const rec of chunk) {
          const n = (this.#writesSinceTrim.get(rec.function_id) ?? 0) + 1;
          this.#writesSinceTrim.set(rec.function_id, n);
          // Trim every keep/2 writes: a function holds between keep and 1.5 x keep records.
          if (n >= Math.max(50, this.#keep / 2)) {
            this.#writesSinceTrim.set(rec.function_id, 0);
            await this.#trim(rec.function_id).catch(() => undefined);
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

  async #trim(fnId: string): Promise<void> {
    const { kvs } = await this.#store.list(KEYS.invocationsOf(fnId));
    const excess = kvs.slice(0, Math.max(0, kvs.length - this.#keep));
    for (let i = 0; i < excess.length; i += 100) {
      await this.#store.txn([], excess.slice(i, i + 100).map((kv) => ({ type: 'delete' as const, key: kv.key })));
    }
  }

  async close(): Promise<void> {
    if (this.#timer) this.#clock.clearTimeout(this.#timer);
    this.#timer = undefined;
    await this.flush();
  }
}
