/** One line an instance (or the agent about an instance) printed. */
export interface LogEntry {
  /** ms since epoch */
  time: number;
  instance_id: string;
  stream: 'stdout' | 'stderr' | 'system';
  text: string;
}

export const DEFAULT_LOG_LINES = 1000;

/** Fixed-size ring: O(1) append, oldest lines overwritten. */
class Ring {
  readonly #buf: (LogEntry | undefined)[];
  #start = 0;
  #size = 0;
  constructor(capacity: number) {
    this.#buf = new Array<LogEntry | undefined>(capacity);
  }
  push(e: LogEntry): void {
    const cap = this.#buf.length;
    if (this.#size < cap) {
      this.#buf[(this.#start + this.#size) % cap] = e;
      this.#size++;
    } else {
      this.#buf[this.#start] = e;
      this.#start = (this.#start + 1) % cap;
    }
  }
  /** The last `n` entries, oldest first. */
  last(n: number): LogEntry[] {
    const cap = this.#buf.length;
    const k = Math.max(0, Math.min(n, this.#size));
    const out: LogEntry[] = [];
    for (let i = this.#size - k; i < this.#size; i++) {
      const e = this.#buf[(this.#start + i) % cap];
      if (e) out.push(e);
    }
    return out;
  }
}

/**
 * The last lines per FUNCTION (not per instance), so `aether logs` still shows why an instance
 * crashed or what it printed before it was scaled to zero. Followers get every new line.
 */
export class LogStore {
  readonly #capacity: number;
  readonly #rings = new Map<string, Ring>();
  readonly #followers = new Map<string, Set<(e: LogEntry) => void>>();

  constructor(capacity = DEFAULT_LOG_LINES) {
    this.#capacity = capacity;
  }

  append(fnId: string, entry: LogEntry): void {
    let ring = this.#rings.get(fnId);
    if (!ring) {
      ring = new Ring(this.#capacity);
      this.#rings.set(fnId, ring);
    }
    ring.push(entry);
    const subs = this.#followers.get(fnId);
    if (subs) {
      for (const cb of subs) {
        try {
          cb(entry);
        } catch {
          // a broken follower must not stop the others or the instance's output
        }
      }
    }
  }

  tail(fnId: string, n: number): LogEntry[] {
    return this.#rings.get(fnId)?.last(n) ?? [];
  }

  /** Returns the unsubscribe function. */
  follow(fnId: string, onEntry: (e: LogEntry) => void): () => void {
    let subs = this.#followers.get(fnId);
    if (!subs) {
      subs = new Set();
      this.#followers.set(fnId, subs);
    }
    subs.add(onEntry);
    return () => {
      const s = this.#followers.get(fnId);
      if (!s) return;
      s.delete(onEntry);
      if (s.size === 0) this.#followers.delete(fnId);
    };
  }

  /** Forget a deleted function's lines (followers stay subscribed until they unsubscribe). */
  drop(fnId: string): void {
    this.#rings.delete(fnId);
  }
}
