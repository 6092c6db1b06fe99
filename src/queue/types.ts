/**
 * Queue: at-least-once jobs with explicit ack. A job taken but neither acked nor released within
 * its visibility timeout is delivered again (to any consumer). Drivers: memory (embedded), redis
 * (Streams + consumer group). Every driver passes ./contract.ts.
 */
export interface Job<T = unknown> {
  id: string;
  topic: string;
  payload: T;
  /** 1 on first delivery, incremented on every redelivery. */
  deliveries: number;
}

export interface TakeOptions {
  /** How long to wait for a job before resolving undefined. */
  waitMs: number;
  /** After this long without ack/release/extend the job is delivered again. */
  visibilityMs: number;
}

export interface Queue {
  enqueue<T>(topic: string, payload: T): Promise<string>;
  take<T = unknown>(topic: string, consumer: string, opts: TakeOptions): Promise<Job<T> | undefined>;
  /** Done: never deliver this job again. */
  ack(job: Job): Promise<void>;
  /** Give the job back for immediate redelivery (e.g. this consumer has no capacity). */
  release(job: Job): Promise<void>;
  /** Still working on it: push its visibility deadline `visibilityMs` from now. */
  extend(job: Job, visibilityMs: number): Promise<void>;
  /** Jobs waiting or in flight (approximate for networked drivers). */
  depth(topic: string): Promise<number>;
  /**
   * Whether the job `enqueue` returned `jobId` for is still waiting or in flight (neither acked,
   * dead-lettered nor lost). A producer uses it to notice a job that vanished (e.g. Redis came back
   * without its data) and to queue it again, judged per job rather than by the topic's length.
   */
  contains(topic: string, jobId: string): Promise<boolean>;
  close(): Promise<void>;
}
