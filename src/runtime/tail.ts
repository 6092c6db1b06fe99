import { execFile } from 'node:child_process';
import { closeSync, constants, fstatSync, openSync, readFileSync, readSync, writeSync } from 'node:fs';
import type { Clock, TimerHandle } from '../core/index.ts';
import { LineSplitter } from './logs.ts';

/** Hole punching frees whole filesystem blocks: what is punched is rounded down to this. */
const BLOCK = 4096;
/** An offset record is rewritten in place at this fixed width (padded): a shorter one leaves nothing of the last behind. */
const OFFSET_RECORD_BYTES = 128;

/** How far a followed file was consumed (see FileTail's `offsetFile`): which file (device, inode) and up to where. */
interface OffsetRecord {
  dev: string;
  ino: string;
  offset: number;
}

function readOffsetRecord(path: string): OffsetRecord | undefined {
  try {
    const r = JSON.parse(readFileSync(path, 'utf8')) as Partial<OffsetRecord>;
    return typeof r.dev === 'string' && typeof r.ino === 'string' && Number.isSafeInteger(r.offset) && (r.offset as number) >= 0 ? (r as OffsetRecord) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Follows a file another process appends to (a VM's serial console, its VMM's own output: files,
 * not pipes, so they survive the agent), line by line, polled on the clock. `fromEnd`: skip what is
 * already there (an adopted VM: the dead agent read that part). `reclaimBytes`: once that much more
 * has been read, the read part's disk blocks are freed (`fallocate --punch-hole`: the size and the
 * writer's O_APPEND offset stay, so nothing the writer adds meanwhile can be lost, unlike a
 * truncation; also right for a writer without O_APPEND, as Firecracker's logger and metrics): a
 * program's output then takes no more disk than what is not read yet.
 * `offsetFile`: where how far the file was consumed is kept, so that a later follower (a restarted
 * agent) goes on from there and reads what was written while nobody followed; see #commit.
 */
export class FileTail {
  readonly #clock: Clock;
  readonly #everyMs: number;
  readonly #split: LineSplitter;
  readonly #path: string;
  #fd: number | undefined;
  #pos = 0;
  /** Just past the last line handed on: what is recorded, and what may be punched (a partial line is read again by a resuming follower). */
  #committed = 0;
  #fromEnd: boolean;
  #positioned = false;
  readonly #offsetFile: string | undefined;
  #offsetFd: number | undefined;
  /** The record last written (not rewritten unchanged). */
  #written: string | undefined;
  /** The followed file's identity, for the offset record. */
  #id: { dev: string; ino: string } | undefined;
  #timer: TimerHandle | undefined;
  #closed = false;
  readonly #reclaimBytes: number | undefined;
  /** Freed up to here; a punch in flight; undefined once punching failed (no fallocate, a filesystem without holes). */
  #reclaimed: number | undefined = 0;
  #punching = false;

  constructor(o: { path: string; clock: Clock; everyMs: number; fromEnd: boolean; onLine: (text: string) => void; reclaimBytes?: number; offsetFile?: string }) {
    this.#clock = o.clock;
    this.#everyMs = o.everyMs;
    this.#split = new LineSplitter(o.onLine);
    this.#path = o.path;
    this.#reclaimBytes = o.reclaimBytes;
    this.#offsetFile = o.offsetFile;
    this.#fromEnd = o.fromEnd;
    this.#open();
    // `fromEnd` is about what is there now: a file created later is new output, read from its start
    this.#fromEnd = false;
    // not there yet: a successor finding no record would skip it all; a record of no file sends it to the start
    if (!this.#positioned && this.#offsetFile !== undefined && !readOffsetRecord(this.#offsetFile)) this.#write({ dev: '-', ino: '-', offset: 0 });
    this.#arm();
  }

  /** The writer may create the file after we start following it. */
  #open(): void {
    if (this.#fd !== undefined || this.#closed) return;
    try {
      this.#fd = openSync(this.#path, 'r');
    } catch {
      this.#fd = undefined;
      return;
    }
    if (!this.#positioned) this.#position(this.#fd);
  }

  /**
   * Where to start: the recorded offset when the record is about this very file (same device and
   * inode) and the file still reaches it; from the start when the record names another file (it was
   * replaced) or one that shrank (truncated): all of it is unread; without a usable record, `fromEnd`.
   */
  #position(fd: number): void {
    this.#positioned = true;
    const st = fstatSync(fd, { bigint: true });
    this.#id = { dev: String(st.dev), ino: String(st.ino) };
    const size = Number(st.size);
    const rec = this.#offsetFile !== undefined ? readOffsetRecord(this.#offsetFile) : undefined;
    if (rec) this.#pos = rec.dev === this.#id.dev && rec.ino === this.#id.ino && rec.offset <= size ? rec.offset : 0;
    else this.#pos = this.#fromEnd ? size : 0;
    this.#committed = this.#pos;
    // count what is read from here on (a punch starts at 0 anyway and covers what came before)
    if (this.#reclaimed !== undefined) this.#reclaimed = Math.floor(this.#pos / BLOCK) * BLOCK;
    // recorded at once: a successor must not take the file's end for where this one started
    this.#commit();
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
      if (n <= 0) break;
      const nl = buf.lastIndexOf(0x0a, n - 1);
      this.#pos += n;
      this.#split.write(buf.subarray(0, n));
      if (nl !== -1) this.#committed = this.#pos - n + nl + 1;
    }
    this.#commit();
    this.#reclaim();
  }

  /**
   * Record how far lines were handed on, right after they were: synchronously, once per drain that
   * ended a line (not per line), one small pwrite in place, no fsync (the record must outlive the
   * agent process, not the host, whose crash ends the VMs too). An agent killed between handing
   * lines on and recording them makes its successor hand those lines on again: at most one drain's
   * worth is duplicated, nothing is lost.
   */
  #commit(): void {
    if (this.#id !== undefined) this.#write({ ...this.#id, offset: this.#committed });
  }

  #write(rec: OffsetRecord): void {
    const text = JSON.stringify(rec);
    if (this.#offsetFile === undefined || this.#written === text) return;
    try {
      this.#offsetFd ??= openSync(this.#offsetFile, constants.O_RDWR | constants.O_CREAT, 0o600);
      writeSync(this.#offsetFd, Buffer.from(`${text.padEnd(OFFSET_RECORD_BYTES - 1)}\n`), 0, OFFSET_RECORD_BYTES, 0);
      this.#written = text;
    } catch {
      // the dir is going away with the VM
    }
  }

  #reclaim(): void {
    const upTo = Math.floor(this.#committed / BLOCK) * BLOCK;
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
    if (this.#offsetFd !== undefined) closeSync(this.#offsetFd);
    this.#offsetFd = undefined;
  }
}
