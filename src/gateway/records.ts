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

  constructor(opts: { store: Store; clock: Clock; logger: Logger; keep?: number; intervalMs?: number }) {
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
    const batch = this.#buffer;
    if (batch.length === 0) return;
    this.#buffer = [];
    this.#flushing = (async () => {
      for (let i = 0; i < batch.length; i++) {
        const rec = batch[i] as InvocationRecord;
        try {
          await this.#store.put(KEYS.invocation(rec.function_id, rec.id), JSON.stringify(rec));
        } catch (err) {
          // Store briefly down: keep what is left, in order, and retry later.
          this.#buffer = batch.slice(i).concat(this.#buffer);
          this.#logger.warn({ err: String(err) }, 'invocation records not written yet; will retry');
          this.#schedule(1000);
          return;
        }
        const n = (this.#writesSinceTrim.get(rec.function_id) ?? 0) + 1;
        this.#writesSinceTrim.set(rec.function_id, n);
        if (n >= Math.max(50, this.#keep / 10)) {
          this.#writesSinceTrim.set(rec.function_id, 0);
          await this.#trim(rec.function_id).catch(() => undefined);
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
    const excess = kvs.length - this.#keep;
    for (let i = 0; i < excess; i++) await this.#store.delete((kvs[i] as { key: string }).key);
  }

  async close(): Promise<void> {
    if (this.#timer) this.#clock.clearTimeout(this.#timer);
    this.#timer = undefined;
    await this.flush();
  }
}
