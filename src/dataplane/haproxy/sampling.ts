import { AetherError } from '../../core/index.ts';

/**
 * Log sampling of busy functions. A log line per request costs HAProxy a write and a getpid and the
 * platform a parse: together ~10 % of the proxy path's throughput at 64 connections here (measured
 * with and without the line, bench/README.md). Past `TARGET_LINES_PER_S` a function's route gets a
 * sampling N (a power of two): HAProxy logs every Nth successful answer, whose line then stands for
 * N requests (`aether_*` metrics count it N times; its record is one of a sample, as the records of
 * a busy function are anyway, see InvocationRecorder). Failures are always logged, one line each.
 */
export const TARGET_LINES_PER_S = 1000;
export const DEFAULT_MAX_SAMPLING = 64;
/**
 * Rates are requests over the last second: a burst that fits in a second below the target (a test
 * sending a few hundred requests at once, say) is logged in full.
 */
export const RATE_WINDOW_MS = 1000;
/** How long a function's rate must stay low before its N comes down (up is at once). */
export const SAMPLING_DECAY_MS = 5000;

/** `AETHER_LOG_SAMPLING_MAX`: the largest N (1: every request logged), a power of two up to 1024. */
export function maxSampling(env: string | undefined): number {
  if (env === undefined || env === '') return DEFAULT_MAX_SAMPLING;
  const n = Number(env);
  if (!Number.isInteger(n) || n < 1 || n > 1024 || (n & (n - 1)) !== 0) throw new AetherError('AETHER_ERR_VALIDATION', `AETHER_LOG_SAMPLING_MAX ${JSON.stringify(env)}: must be a power of two from 1 to 1024`);
  return n;
}

export class LogSampler {
  /** Requests seen (line weights) per function since the last evaluation. */
  #seen = new Map<string, number>();
  /** Per function, the counts of the evaluations within the last RATE_WINDOW_MS. */
  readonly #recent = new Map<string, { at: number; n: number }[]>();
  readonly #n = new Map<string, number>();
  /** Since when a sampled function's rate has been low enough for a smaller N. */
  readonly #lowSince = new Map<string, number>();
  #since: number;
  readonly #max: number;

  constructor(nowMs: number, max = DEFAULT_MAX_SAMPLING) {
    this.#since = nowMs;
    this.#max = max;
  }

  /** The route's N for this function (1: every request logged). */
  of(fnId: string): number {
    return this.#n.get(fnId) ?? 1;
  }

  note(fnId: string, weight: number): void {
    this.#seen.set(fnId, (this.#seen.get(fnId) ?? 0) + weight);
  }

  /**
   * Recompute every function's N from its request rate over the last second; true when one
   * changed (the routes must be rewritten). Up as soon as the rate needs it; down once the rate has
   * stayed below half of what the current N is for during SAMPLING_DECAY_MS, so neither a rate near
   * a boundary nor a short pause flaps the routes.
   */
  evaluate(nowMs: number): boolean {
    if (nowMs <= this.#since) return false;
    this.#since = nowMs;
    for (const [fnId, n] of this.#seen) {
      const r = this.#recent.get(fnId) ?? [];
      r.push({ at: nowMs, n });
      this.#recent.set(fnId, r);
    }
    this.#seen.clear();
    let changed = false;
    for (const fnId of new Set([...this.#n.keys(), ...this.#recent.keys()])) {
      const r = (this.#recent.get(fnId) ?? []).filter((x) => x.at > nowMs - RATE_WINDOW_MS);
      if (r.length > 0) this.#recent.set(fnId, r);
      else this.#recent.delete(fnId);
      const rate = (r.reduce((a, x) => a + x.n, 0) * 1000) / RATE_WINDOW_MS;
      const cur = this.of(fnId);
      const want = samplingFor(rate, this.#max);
      let next = cur;
      if (want > cur) next = want;
      else if (want < cur / 2 || (want === 1 && cur === 2 && rate < TARGET_LINES_PER_S / 2)) {
        const since = this.#lowSince.get(fnId) ?? nowMs;
        this.#lowSince.set(fnId, since);
        if (nowMs - since >= SAMPLING_DECAY_MS) next = want;
      } else this.#lowSince.delete(fnId);
      if (next === cur) continue;
      changed = true;
      this.#lowSince.delete(fnId);
      if (next === 1) this.#n.delete(fnId);
      else this.#n.set(fnId, next);
    }
    return changed;
  }
}

/** The smallest power of two that brings `rate` requests/s to at most TARGET_LINES_PER_S lines/s, capped. */
export function samplingFor(rate: number, max = DEFAULT_MAX_SAMPLING): number {
  let n = 1;
  while (n < max && rate / n > TARGET_LINES_PER_S) n *= 2;
  return n;
}
