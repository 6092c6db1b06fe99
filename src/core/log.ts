import { closeSync, fstatSync, openSync, renameSync, write, writeSync } from 'node:fs';
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

const LEVEL_NAMES: Record<number, string> = { 10: 'TRACE', 20: 'DEBUG', 30: 'INFO', 40: 'WARN', 50: 'ERROR', 60: 'FATAL' };
/** Fields every line has, left out of the short form. */
const QUIET_FIELDS = new Set(['level', 'time', 'msg', 'component', 'name', 'pid', 'hostname', 'v']);

/**
 * One JSON log line as a person reads it on a terminal: `12:03:04 WARN message  key=value …`
 * (local time; an error field by its message only: the stack stays in the JSON log).
 */
export function shortLogLine(line: string): string {
  let r: Record<string, unknown>;
  try {
    r = JSON.parse(line) as Record<string, unknown>;
  } catch {
    return line.endsWith('\n') ? line : line + '\n';
  }
  const t = typeof r['time'] === 'number' ? new Date(r['time']) : new Date();
  const hms = [t.getHours(), t.getMinutes(), t.getSeconds()].map((n) => String(n).padStart(2, '0')).join(':');
  const level = LEVEL_NAMES[r['level'] as number] ?? String(r['level']);
  const fields = Object.entries(r)
    .filter(([k]) => !QUIET_FIELDS.has(k))
    .map(([k, v]) => {
      const shown = typeof v === 'object' && v !== null && typeof (v as { message?: unknown }).message === 'string' ? (v as { message: string }).message : v;
      return `${k}=${typeof shown === 'string' && !/[\s"]/.test(shown) ? shown : JSON.stringify(shown)}`;
    });
  return `${hms} ${level} ${String(r['msg'] ?? '')}${fields.length ? '  ' + fields.join(' ') : ''}\n`;
}

/** Size at which the log file is rotated (to `<file>.1`, replacing the one before). */
export const LOG_FILE_MAX_BYTES = 64 * 1024 * 1024;

/**
 * Every line to a log file; warnings and errors also to a terminal, in their short form. Past
 * `maxBytes` the file becomes `<file>.1` (one generation kept) and a new one is started, so a
 * platform left running for months holds at most twice `maxBytes` of logs.
 */
class FileAndTerminalSink {
  #file: LogSink;
  #fd: number;
  #size: number;
  readonly #path: string;
  readonly #maxBytes: number;
  readonly #terminal: LogSink;

  constructor(path: string, terminal: LogSink, maxBytes: number) {
    this.#path = path;
    this.#maxBytes = maxBytes;
    this.#fd = openSync(path, 'a', 0o600);
    this.#size = fstatSync(this.#fd).size;
    this.#file = new LogSink(this.#fd);
    sinks.add(this.#file);
    this.#terminal = terminal;
  }

  #rotate(): void {
    let fd: number;
    try {
      renameSync(this.#path, `${this.#path}.1`);
      fd = openSync(this.#path, 'a', 0o600);
    } catch {
      this.#size = 0; // keep writing where we are; try again after another maxBytes
      return;
    }
    // The old sink finishes its queue (into what is now <file>.1), then lets its fd go.
    const old = this.#file;
    const oldFd = this.#fd;
    void old.drain(10_000).then(() => {
      sinks.delete(old);
      try {
        closeSync(oldFd);
      } catch {
        // closed already
      }
    });
    this.#fd = fd;
    this.#size = 0;
    this.#file = new LogSink(fd);
    sinks.add(this.#file);
  }

  write(line: string): boolean {
    this.#size += line.length;
    if (this.#size > this.#maxBytes) this.#rotate();
    this.#file.write(line);
    // pino writes the level first: no parse for the lines that stay in the file.
    const level = Number(/^\{"level":(\d+)/.exec(line)?.[1] ?? 0);
    if (level >= 40) this.#terminal.write(shortLogLine(line));
    return true;
  }

  flush(cb?: (err?: Error) => void): void {
    this.#file.flush(() => this.#terminal.flush(cb));
  }
}

/**
 * JSON logs appended to `file` (created 0600: lines may name paths and ids of the host), and
 * warnings and errors also on stderr, short: for a person at a terminal, who wants the startup
 * lines and what went wrong, not every info line. Throws when the file cannot be opened.
 */
export function createFileLogger(name: string, level: string, file: string, terminal: LogSink = new LogSink(2), maxBytes = LOG_FILE_MAX_BYTES): Logger {
  const sink = new FileAndTerminalSink(file, terminal, maxBytes);
  sinks.add(terminal);
  return pino({ name, level, base: { component: name } }, sink);
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
