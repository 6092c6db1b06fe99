import { write, writeSync } from 'node:fs';
import { pino, type Logger } from 'pino';
import { systemClock, type Clock } from './clock.ts';

export type { Logger };

export interface LogSinkOptions {
  /** Lines held while the fd cannot take them; beyond this they are dropped (and counted). Default 8 MiB. */
  maxBufferBytes?: number;
  /** Retry delay after EAGAIN (a full non-blocking pipe). Default 50 ms. */
  retryMs?: number;
  clock?: Clock;
}

/**
 * pino's destination, written so that logging never blocks or spins the main thread: a full pipe
 * that nobody reads (an orphaned `aether up` whose parent died, a stalled log shipper) must not
 * stop the process from handling SIGTERM. pino's own sonic-boom flushes synchronously on exit and
 * sleeps (Atomics.wait) on every EAGAIN of a non-blocking pipe, forever if nobody reads.
 *
 * Lines queue in memory and go out by asynchronous writes (libuv's thread pool, so even a blocking
 * fd holds at most one pool thread); EAGAIN retries on a timer. While the reader keeps up nothing
 * is lost; past `maxBufferBytes` lines are dropped, and a note says how many once the fd drains.
 * `drain()` waits (bounded) for the queue before a clean exit; at exit, whatever could not be
 * written is given up rather than waited for.
 */
export class LogSink {
  readonly #fd: number;
  readonly #max: number;
  readonly #retryMs: number;
  readonly #clock: Clock;
  #queue: Buffer[] = [];
  #bytes = 0;
  /** An fs.write is in flight (or waiting to be retried after EAGAIN). */
  #busy = false;
  #inFlight = false;
  #dropped = 0;
  #closed = false;
  #waiters: (() => void)[] = [];

  constructor(fd: number, o: LogSinkOptions = {}) {
    this.#fd = fd;
    this.#max = o.maxBufferBytes ?? 8 * 1024 * 1024;
    this.#retryMs = o.retryMs ?? 50;
    this.#clock = o.clock ?? systemClock;
  }

  /** Bytes waiting to be written. */
  get pending(): number {
    return this.#bytes;
  }

  /** Lines dropped because the fd could not keep up (since the last note about them). */
  get dropped(): number {
    return this.#dropped;
  }

  write(line: string): boolean {
    if (this.#closed) return true;
    const b = Buffer.from(line);
    if (this.#bytes + b.length > this.#max) {
      this.#dropped++;
      return true;
    }
    this.#queue.push(b);
    this.#bytes += b.length;
    if (!this.#busy) this.#pump();
    return true;
  }

  #pump(): void {
    if (this.#closed) return;
    if (this.#queue.length === 0 && this.#dropped > 0) {
      const note = Buffer.from(`${JSON.stringify({ level: 40, time: this.#clock.now(), msg: 'log lines dropped: the output could not take them', dropped: this.#dropped })}\n`);
      this.#dropped = 0;
      this.#queue.push(note);
      this.#bytes += note.length;
    }
    if (this.#queue.length === 0) {
      this.#busy = false;
      for (const w of this.#waiters.splice(0)) w();
      return;
    }
    this.#busy = true;
    this.#inFlight = true;
    const buf = this.#queue.length === 1 && this.#queue[0] ? this.#queue[0] : Buffer.concat(this.#queue);
    this.#queue = [];
    write(this.#fd, buf, 0, buf.length, null, (err, written) => {
      this.#inFlight = false;
      if (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'EAGAIN' || code === 'EBUSY') {
          this.#queue.unshift(buf);
          this.#clock.setTimeout(() => this.#pump(), this.#retryMs);
          return;
        }
        // EPIPE, EBADF…: nobody will ever read these; stop logging rather than fail.
        this.#closed = true;
        this.#queue = [];
        this.#bytes = 0;
        for (const w of this.#waiters.splice(0)) w();
        return;
      }
      this.#bytes -= written;
      if (written < buf.length) this.#queue.unshift(buf.subarray(written));
      this.#pump();
    });
  }

  /** pino's flush(): calls back once what is queued now is written (or given up). */
  flush(cb?: (err?: Error) => void): void {
    if (!this.#busy || this.#closed) {
      cb?.();
      return;
    }
    this.#waiters.push(() => cb?.());
  }

  /** Wait until the queue is written, at most `ms` (the output may never drain). */
  async drain(ms: number): Promise<boolean> {
    if (!this.#busy || this.#closed) return true;
    let timer: ReturnType<Clock['setTimeout']> | undefined;
    const done = await Promise.race([
      new Promise<boolean>((r) => this.#waiters.push(() => r(true))),
      new Promise<boolean>((r) => (timer = this.#clock.setTimeout(() => r(false), ms))),
    ]);
    if (timer) this.#clock.clearTimeout(timer);
    return done;
  }

  /**
   * At exit: one non-blocking attempt for what is queued, never a wait. Only when no write is in
   * flight (else the fd is stuck or busy, and writing now could block or reorder lines).
   */
  flushSync(): void {
    if (this.#closed || this.#inFlight || this.#queue.length === 0) return;
    try {
      writeSync(this.#fd, Buffer.concat(this.#queue));
      this.#queue = [];
      this.#bytes = 0;
    } catch {
      // EAGAIN or a closed reader: give the lines up.
    }
  }
}

const sinks = new Set<LogSink>();
process.once('exit', () => {
  for (const s of sinks) s.flushSync();
});

/** Structured JSON logs on stderr; AETHER_LOG_LEVEL picks the level (default info). */
export function createLogger(name: string, level = process.env['AETHER_LOG_LEVEL'] ?? 'info', sink?: LogSink): Logger {
  const dest = sink ?? new LogSink(2);
  sinks.add(dest);
  return pino({ name, level, base: { component: name } }, dest);
}

/** Wait (at most `ms`) until every logger's lines are written: before a clean exit. */
export async function drainLogs(ms: number): Promise<boolean> {
  const r = await Promise.all([...sinks].map((s) => s.drain(ms)));
  return r.every(Boolean);
}

/** A logger that drops everything (tests, benchmarks). */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
