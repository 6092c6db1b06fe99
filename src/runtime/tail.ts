import { execFile } from 'node:child_process';
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import type { Clock, TimerHandle } from '../core/index.ts';
import { LineSplitter } from './logs.ts';

/** Hole punching frees whole filesystem blocks: what is punched is rounded down to this. */
const BLOCK = 4096;

/**
 * Follows a file another process appends to (a VM's serial console, its VMM's own output: files,
 * not pipes, so they survive the agent), line by line, polled on the clock. `fromEnd`: skip what is
 * already there (an adopted VM: the dead agent read that part). `reclaimBytes`: once that much more
 * has been read, the read part's disk blocks are freed (`fallocate --punch-hole`: the size and the
 * writer's O_APPEND offset stay, so nothing the writer adds meanwhile can be lost, unlike a
 * truncation): a program's output then takes no more disk than what is not read yet.
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
  readonly #reclaimBytes: number | undefined;
  /** Freed up to here; a punch in flight; undefined once punching failed (no fallocate, a filesystem without holes). */
  #reclaimed: number | undefined = 0;
  #punching = false;

  constructor(o: { path: string; clock: Clock; everyMs: number; fromEnd: boolean; onLine: (text: string) => void; reclaimBytes?: number }) {
    this.#clock = o.clock;
    this.#everyMs = o.everyMs;
    this.#split = new LineSplitter(o.onLine);
    this.#path = o.path;
    this.#reclaimBytes = o.reclaimBytes;
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
      if (n <= 0) return this.#reclaim();
      this.#pos += n;
      this.#split.write(buf.subarray(0, n));
    }
  }

  #reclaim(): void {
    const upTo = Math.floor(this.#pos / BLOCK) * BLOCK;
    if (this.#reclaimBytes === undefined || this.#reclaimed === undefined || this.#punching || this.#closed || upTo - this.#reclaimed < this.#reclaimBytes) return;
    this.#punching = true;
    execFile('fallocate', ['--punch-hole', '--offset', '0', '--length', String(upTo), this.#path], { timeout: 10_000 }, (err) => {
      this.#punching = false;
      this.#reclaimed = err ? undefined : upTo;
    });
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
