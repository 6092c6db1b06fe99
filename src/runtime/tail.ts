import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import type { Clock, TimerHandle } from '../core/index.ts';
import { LineSplitter } from './logs.ts';

/**
 * Follows a file another process appends to (a VM's serial console, its VMM's own output: files,
 * not pipes, so they survive the agent), line by line, polled on the clock. `fromEnd`: skip what is
 * already there (an adopted VM: the dead agent read that part).
 */
export class FileTail {
  readonly #clock: Clock;
  readonly #everyMs: number;
  readonly #split: LineSplitter;
  readonly #path: string;
  #fd: number | undefined;
  #pos = 0;
  #timer: TimerHandle | undefined;
  #closed = false;

  constructor(o: { path: string; clock: Clock; everyMs: number; fromEnd: boolean; onLine: (text: string) => void }) {
    this.#clock = o.clock;
    this.#everyMs = o.everyMs;
    this.#split = new LineSplitter(o.onLine);
    this.#path = o.path;
    this.#open();
    if (o.fromEnd && this.#fd !== undefined) this.#pos = fstatSync(this.#fd).size;
    this.#arm();
  }

  /** The writer may create the file after we start following it. */
  #open(): void {
    if (this.#fd !== undefined || this.#closed) return;
    try {
      this.#fd = openSync(this.#path, 'r');
    } catch {
      this.#fd = undefined;
    }
  }

  #arm(): void {
    if (this.#closed) return;
    this.#timer = this.#clock.setTimeout(() => {
      this.drain();
      this.#arm();
    }, this.#everyMs);
  }

  /** Read what has been appended since the last read (synchronous: also the last read before close). */
  drain(): void {
    this.#open();
    if (this.#fd === undefined) return;
    const buf = Buffer.allocUnsafe(64 * 1024);
    for (;;) {
      let n: number;
      try {
        n = readSync(this.#fd, buf, 0, buf.length, this.#pos);
      } catch {
        return;
      }
      if (n <= 0) return;
      this.#pos += n;
      this.#split.write(buf.subarray(0, n));
    }
  }

  /** Read the rest, emit a last unterminated line, stop following. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#timer) this.#clock.clearTimeout(this.#timer);
    this.drain();
    this.#split.end();
    if (this.#fd !== undefined) closeSync(this.#fd);
    this.#fd = undefined;
  }
}
