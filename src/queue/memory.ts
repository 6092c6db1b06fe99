import { AetherError, newId, systemClock, type Clock, type TimerHandle } from '../core/index.ts';
import type { Job, Queue, TakeOptions } from './types.ts';

/**
 * Embedded queue: at-least-once, FIFO per topic, all in this process (nothing survives a restart).
 * Every time-based decision (wait, visibility) goes through the injected Clock.
 */
export function createMemoryQueue(opts: { clock?: Clock } = {}): Queue {
  return new MemoryQueue(opts.clock ?? systemClock);
}

interface Entry {
  id: string;
  seq: number;
  topic: string;
  payload: unknown;
  /** Hand-outs so far; doubles as the token of the current delivery. */
  deliveries: number;
  /** Set while taken and not yet expired. */
  inflight?: { timer: TimerHandle };
}

interface Waiter {
  visibilityMs: number;
  resolve: (job: Job | undefined) => void;
  timer: TimerHandle;
}

interface Topic {
  /** Deliverable entries in enqueue order. */
  ready: Entry[];
  entries: Map<string, Entry>;
  waiters: Waiter[];
}

class MemoryQueue implements Queue {
  readonly #clock: Clock;
  readonly #topics = new Map<string, Topic>();
  #seq = 0;
  #closed = false;

  constructor(clock: Clock) {
    this.#clock = clock;
  }

  async enqueue<T>(topic: string, payload: T): Promise<string> {
    this.#open();
    const t = this.#topic(topic);
    // structuredClone: the consumer must not share (or see later mutations of) the producer's object.
    const entry: Entry = { id: newId('job', this.#clock.now()), seq: this.#seq++, topic, payload: structuredClone(payload), deliveries: 0 };
    t.entries.set(entry.id, entry);
    this.#makeReady(t, entry);
    return entry.id;
  }

  take<T = unknown>(topic: string, _consumer: string, opts: TakeOptions): Promise<Job<T> | undefined> {
    this.#open();
    const t = this.#topic(topic);
    const entry = t.ready.shift();
    if (entry) return Promise.resolve(this.#deliver(entry, opts.visibilityMs) as Job<T>);
    if (opts.waitMs <= 0) return Promise.resolve(undefined);
    return new Promise((resolve) => {
      const waiter: Waiter = {
        visibilityMs: opts.visibilityMs,
        resolve: resolve as (job: Job | undefined) => void,
        timer: this.#clock.setTimeout(() => {
          t.waiters = t.waiters.filter((w) => w !== waiter);
          resolve(undefined);
        }, opts.waitMs),
      };
      t.waiters.push(waiter);
    });
  }

  async ack(job: Job): Promise<void> {
    const t = this.#topics.get(job.topic);
    const entry = t?.entries.get(job.id);
    if (!t || !entry) return;
    // A late ack from a consumer whose delivery expired still completes the job (at-least-once).
    if (entry.inflight) this.#clock.clearTimeout(entry.inflight.timer);
    t.entries.delete(entry.id);
    t.ready = t.ready.filter((e) => e !== entry);
  }

  async release(job: Job): Promise<void> {
    const t = this.#topics.get(job.topic);
    const entry = t?.entries.get(job.id);
    // Only the current delivery may give the job back; a stale one must not cause a duplicate.
    if (!t || !entry?.inflight || entry.deliveries !== job.deliveries) return;
    this.#clock.clearTimeout(entry.inflight.timer);
    delete entry.inflight;
    // To the tail, as the Redis driver does: a job given back (no capacity) must not block the others.
    entry.seq = this.#seq++;
    this.#makeReady(t, entry);
  }

  async extend(job: Job, visibilityMs: number): Promise<void> {
    const t = this.#topics.get(job.topic);
    const entry = t?.entries.get(job.id);
    if (!t || !entry || entry.deliveries !== job.deliveries) {
      throw new AetherError('AETHER_ERR_CONFLICT', `job ${job.id} is no longer held by this delivery`);
    }
    if (entry.inflight) this.#clock.clearTimeout(entry.inflight.timer);
    else t.ready = t.ready.filter((e) => e !== entry); // expired but not yet re-taken: still ours
    this.#arm(t, entry, visibilityMs);
  }

  async depth(topic: string): Promise<number> {
    return this.#topics.get(topic)?.entries.size ?? 0;
  }

  async contains(topic: string, jobId: string): Promise<boolean> {
    return this.#topics.get(topic)?.entries.has(jobId) ?? false;
  }

  async close(): Promise<void> {
    this.#closed = true;
    for (const t of this.#topics.values()) {
      for (const w of t.waiters) {
        this.#clock.clearTimeout(w.timer);
        w.resolve(undefined);
      }
      t.waiters = [];
      for (const e of t.entries.values()) if (e.inflight) this.#clock.clearTimeout(e.inflight.timer);
    }
    this.#topics.clear();
  }

  #open(): void {
    if (this.#closed) throw new AetherError('AETHER_ERR_UNAVAILABLE', 'queue is closed');
  }

  #topic(name: string): Topic {
    let t = this.#topics.get(name);
    if (!t) {
      t = { ready: [], entries: new Map(), waiters: [] };
      this.#topics.set(name, t);
    }
    return t;
  }

  /** Hand to a waiting taker, else insert in enqueue order (a redelivered job keeps its place). */
  #makeReady(t: Topic, entry: Entry): void {
    const waiter = t.waiters.shift();
    if (waiter) {
      this.#clock.clearTimeout(waiter.timer);
      waiter.resolve(this.#deliver(entry, waiter.visibilityMs));
      return;
    }
    let i = t.ready.length;
    while (i > 0 && (t.ready[i - 1]?.seq ?? 0) > entry.seq) i--;
    t.ready.splice(i, 0, entry);
  }

  #deliver(entry: Entry, visibilityMs: number): Job {
    entry.deliveries++;
    this.#arm(this.#topic(entry.topic), entry, visibilityMs);
    return { id: entry.id, topic: entry.topic, payload: structuredClone(entry.payload), deliveries: entry.deliveries };
  }

  #arm(t: Topic, entry: Entry, visibilityMs: number): void {
    const timer = this.#clock.setTimeout(() => {
      if (entry.inflight?.timer !== timer || !t.entries.has(entry.id)) return;
      delete entry.inflight;
      this.#makeReady(t, entry);
    }, visibilityMs);
    entry.inflight = { timer };
  }
}
