import type { Clock } from '../core/index.ts';
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
  emit(stream: LogLine['stream'], text: string): void {
    const line: LogLine = { time: this.#clock.now(), stream, text };
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

/** Splits a byte stream into lines (LF or CRLF), truncating lines over MAX_LINE_BYTES. */
export class LineSplitter {
  #buf: Buffer[] = [];
  #len = 0;
  #overflow = false;
  #emit: (text: string) => void;
  constructor(emit: (text: string) => void) {
    this.#emit = emit;
  }
  write(chunk: Buffer): void {
    let start = 0;
    for (;;) {
      const nl = chunk.indexOf(0x0a, start);
      const end = nl === -1 ? chunk.length : nl;
      this.#append(chunk.subarray(start, end));
      if (nl === -1) return;
      this.#flushLine();
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
    let text = Buffer.concat(this.#buf, this.#len).toString('utf8');
    if (text.endsWith('\r')) text = text.slice(0, -1);
    if (this.#overflow) text += ' …[truncated]';
    this.#buf = [];
    this.#len = 0;
    this.#overflow = false;
    this.#emit(text);
  }
}
