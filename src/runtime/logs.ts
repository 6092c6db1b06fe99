import type { Readable } from 'node:stream';
import type { Clock, TimerHandle } from '../core/index.ts';
import type { LogLine } from './types.ts';

/** Longest line kept; the rest of an over-long line is dropped (a program printing megabytes without newlines). */
export const MAX_LINE_BYTES = 16 * 1024;
const RECENT = 20;

/** Fans log lines out to listeners and keeps the last few for error messages. */
export class LogHub {
  #listeners: ((line: LogLine) => void)[] = [];
  #recent: LogLine[] = [];
  #clock: Clock;
  constructor(clock: Clock) {
    this.#clock = clock;
  }
  on(listener: (line: LogLine) => void): void {
    this.#listeners.push(listener);
  }
  /** `dropped`: on the notice line of the rate limit, how many lines it stands for. */
  emit(stream: LogLine['stream'], text: string, dropped?: number): void {
    const line: LogLine = dropped ? { time: this.#clock.now(), stream, text, dropped } : { time: this.#clock.now(), stream, text };
    this.#recent.push(line);
    if (this.#recent.length > RECENT) this.#recent.shift();
    for (const l of this.#listeners) {
      try {
        l(line);
      } catch {
        // a failing listener must not break the instance or other listeners
      }
    }
  }
  /** The last program output (stdout/stderr), newest last, for "why did it fail" messages. */
  tail(n = 10): string {
    return this.#recent
      .filter((l) => l.stream !== 'system')
      .slice(-n)
      .map((l) => l.text)
      .join('\n');
  }
}

/**
 * Splits a byte stream into lines (LF or CRLF), truncating lines over MAX_LINE_BYTES. `admit`, when
 * given, is asked as each line begins: the bytes of a refused line are skipped, never copied.
 */
export class LineSplitter {
  #buf: Buffer[] = [];
  #len = 0;
  #overflow = false;
  /** Whether the current line is kept (undefined: no byte of it seen yet). */
  #keep: boolean | undefined;
  #emit: (text: string) => void;
  #admit: (() => boolean) | undefined;
  constructor(emit: (text: string) => void, admit?: () => boolean) {
    this.#emit = emit;
    this.#admit = admit;
  }
  /** Returns the number of lines the chunk ended. */
  write(chunk: Buffer): number {
    let start = 0;
    let lines = 0;
    for (;;) {
      const nl = chunk.indexOf(0x0a, start);
      const end = nl === -1 ? chunk.length : nl;
      if (end > start || nl !== -1) {
        this.#keep ??= this.#admit ? this.#admit() : true;
        if (this.#keep) this.#append(chunk.subarray(start, end));
      }
      if (nl === -1) return lines;
      this.#flushLine();
      lines++;
      start = nl + 1;
    }
  }
  /** Emit a last unterminated line, if any. */
  end(): void {
    if (this.#len > 0 || this.#overflow) this.#flushLine();
  }
  #append(part: Buffer): void {
    if (part.length === 0) return;
    const room = MAX_LINE_BYTES - this.#len;
    if (part.length > room) {
      this.#overflow = true;
      if (room > 0) {
        this.#buf.push(part.subarray(0, room));
        this.#len += room;
      }
      return;
    }
    this.#buf.push(part);
    this.#len += part.length;
  }
  #flushLine(): void {
    const keep = this.#keep;
    this.#keep = undefined;
    if (keep === false) return;
    let text = Buffer.concat(this.#buf, this.#len).toString('utf8');
    if (text.endsWith('\r')) text = text.slice(0, -1);
    if (this.#overflow) text += ' …[truncated]';
    this.#buf = [];
    this.#len = 0;
    this.#overflow = false;
    this.#emit(text);
  }
}

export interface LogLimits {
  /** Lines kept per second (token bucket); the excess is dropped, counted, and reported in one notice line. */
  linesPerSec: number;
  /** Lines that may come at once before the rate applies. */
  burstLines: number;
  /**
   * Reading budget per second: bytes plus LINE_COST per line. Past it the pipes are paused, so the
   * program blocks on its own writes (the work is charged to it, not to the platform).
   */
  bytesPerSec: number;
}

export const DEFAULT_LOG_LIMITS: LogLimits = { linesPerSec: 1000, burstLines: 2000, bytesPerSec: 1024 * 1024 };
/** What one line costs of the reading budget beyond its bytes (splitting, bookkeeping): bounds tiny-line floods too. */
export const LINE_COST = 64;
/** A drop episode is reported at the next kept line, or this long after it began, whichever comes first. */
const NOTICE_DELAY_MS = 1000;

class Bucket {
  #tokens: number;
  #at: number;
  readonly #rate: number;
  readonly #cap: number;
  readonly #clock: Clock;
  constructor(clock: Clock, perSec: number, cap: number) {
    this.#clock = clock;
    this.#rate = perSec / 1000;
    this.#cap = cap;
    this.#tokens = cap;
    this.#at = clock.now();
  }
  #refill(): void {
    const now = this.#clock.now();
    this.#tokens = Math.min(this.#cap, this.#tokens + (now - this.#at) * this.#rate);
    this.#at = now;
  }
  /** Take one token if there is one. */
  take(): boolean {
    this.#refill();
    if (this.#tokens < 1) return false;
    this.#tokens -= 1;
    return true;
  }
  /** Take `n` even into debt; returns the ms until the debt is paid (0: none). */
  charge(n: number): number {
    this.#refill();
    this.#tokens -= n;
    return this.#tokens >= 0 ? 0 : Math.ceil(-this.#tokens / this.#rate);
  }
}

/**
 * Reads an instance's stdout/stderr pipes into lines under per-instance limits: a reading budget
 * (over it, the pipes pause and the program blocks on its writes) and a line rate (over it, lines
 * are dropped and counted; one notice line per episode says how many, as log drivers do). Memory
 * is bounded: a paused pipe stays in the kernel (the program's side blocks), and each stream holds
 * at most one partial line of MAX_LINE_BYTES.
 */
export class LogPump {
  readonly #clock: Clock;
  readonly #limits: LogLimits;
  readonly #emit: (stream: 'stdout' | 'stderr', text: string) => void;
  readonly #notice: (text: string, dropped: number) => void;
  readonly #lines: Bucket;
  readonly #work: Bucket;
  readonly #streams: { stream: Readable; split: LineSplitter }[] = [];
  readonly #open = new Set<Readable>();
  #ended!: () => void;
  /** Resolves once every added stream has closed. */
  readonly ended: Promise<void>;
  #dropped = 0;
  #noticeTimer: TimerHandle | undefined;
  #resumeTimer: TimerHandle | undefined;
  #unlimited = false;
  #closed = false;

  constructor(clock: Clock, limits: LogLimits, emit: (stream: 'stdout' | 'stderr', text: string) => void, notice: (text: string, dropped: number) => void) {
    this.#clock = clock;
    this.#limits = limits;
    this.#emit = emit;
    this.#notice = notice;
    this.#lines = new Bucket(clock, limits.linesPerSec, limits.burstLines);
    this.#work = new Bucket(clock, limits.bytesPerSec, limits.bytesPerSec);
    this.ended = new Promise((r) => (this.#ended = r));
  }

  add(name: 'stdout' | 'stderr', stream: Readable | null | undefined): void {
    if (!stream) return;
    const split = new LineSplitter(
      (t) => this.#keep(name, t),
      () => this.#admit(),
    );
    this.#streams.push({ stream, split });
    this.#open.add(stream);
    stream.on('data', (b: Buffer) => {
      const lines = split.write(b);
      if (this.#unlimited || this.#closed) return;
      const wait = this.#work.charge(b.length + lines * LINE_COST);
      if (wait > 0) this.#pause(wait);
    });
    stream.on('error', () => undefined);
    stream.on('close', () => {
      split.end();
      this.#open.delete(stream);
      if (this.#open.size === 0) {
        this.#flushNotice();
        this.#ended();
      }
    });
  }

  /** No new streams: resolve `ended` at once if none was added. */
  sealed(): void {
    if (this.#open.size === 0) this.#ended();
  }

  /** The program exited: read what is left without the reading budget (lines are still limited). */
  drain(): void {
    this.#unlimited = true;
    this.#resume();
  }

  /** Stop reading (a grandchild may still hold a pipe) and report what was dropped. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#resumeTimer) this.#clock.clearTimeout(this.#resumeTimer);
    for (const { stream } of this.#streams) stream.destroy();
    this.#flushNotice();
  }

  #admit(): boolean {
    if (this.#lines.take()) {
      this.#flushNotice();
      return true;
    }
    if (this.#dropped++ === 0) {
      this.#noticeTimer = this.#clock.setTimeout(() => {
        this.#noticeTimer = undefined;
        this.#flushNotice();
      }, NOTICE_DELAY_MS);
    }
    return false;
  }

  #keep(name: 'stdout' | 'stderr', text: string): void {
    this.#emit(name, text);
  }

  #flushNotice(): void {
    if (this.#noticeTimer) this.#clock.clearTimeout(this.#noticeTimer);
    this.#noticeTimer = undefined;
    const n = this.#dropped;
    if (n === 0) return;
    this.#dropped = 0;
    this.#notice(`${n} log line${n === 1 ? '' : 's'} dropped: over the rate limit of ${this.#limits.linesPerSec} lines/s`, n);
  }

  #pause(ms: number): void {
    if (this.#resumeTimer) return;
    for (const { stream } of this.#streams) stream.pause();
    this.#resumeTimer = this.#clock.setTimeout(() => {
      this.#resumeTimer = undefined;
      this.#resume();
    }, ms);
  }

  #resume(): void {
    if (this.#resumeTimer) this.#clock.clearTimeout(this.#resumeTimer);
    this.#resumeTimer = undefined;
    if (this.#closed) return;
    for (const { stream } of this.#streams) stream.resume();
  }
}
