import { DatabaseSync, type StatementSync } from 'node:sqlite';
import { AetherError, silentLogger, systemClock, type Clock, type Logger, type TimerHandle } from '../core/index.ts';
import {
  StoreWatchError,
  type KeyValue,
  type ListOptions,
  type RangeResult,
  type Store,
  type TxnCompare,
  type TxnOp,
  type TxnResult,
  type WatchEvent,
  type WatchHandlers,
  type Watcher,
} from './types.ts';

export interface SqliteStoreOptions {
  /** File path, or ':memory:'. One process owns the file (revision and lease counters are cached). */
  path: string;
  clock?: Clock;
  /** How often expired leases are swept (default 250 ms). */
  sweepIntervalMs?: number;
  /** Revisions of event history kept for watches from the past (default 10000). */
  historyLimit?: number;
  logger?: Logger;
}

interface EventRow {
  rev: number;
  key: string;
  value: string | null;
  create_rev: number | null;
  version: number | null;
  lease: string | null;
}

interface WatchState {
  prefix: string;
  end: string | undefined;
  from: number;
  handlers: WatchHandlers;
  /** False until the history replay ran; live events are ignored until then (the replay reads them). */
  live: boolean;
  closed: boolean;
  queue: WatchEvent[];
  scheduled: boolean;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS kv (
  key TEXT PRIMARY KEY, value TEXT NOT NULL, create_rev INTEGER NOT NULL,
  mod_rev INTEGER NOT NULL, version INTEGER NOT NULL, lease TEXT
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS kv_lease ON kv(lease) WHERE lease IS NOT NULL;
CREATE TABLE IF NOT EXISTS events (
  rev INTEGER NOT NULL, seq INTEGER NOT NULL, key TEXT NOT NULL, value TEXT,
  create_rev INTEGER, version INTEGER, lease TEXT, PRIMARY KEY (rev, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS leases (id TEXT PRIMARY KEY, ttl_ms INTEGER NOT NULL, expires_at INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS leases_expiry ON leases(expires_at);
INSERT OR IGNORE INTO meta (k, v) VALUES ('rev', 0), ('compacted', 0), ('lease_seq', 0);
`;

const KV_COLS = 'key, value, create_rev, mod_rev, version, lease';

/**
 * The smallest string greater than every string starting with `prefix`, in SQLite's BINARY
 * (UTF-8 byte) order, which is code point order; undefined when there is none (empty prefix).
 */
export function prefixEnd(prefix: string): string | undefined {
  const cps = Array.from(prefix, (c) => c.codePointAt(0) ?? 0);
  while (cps.length > 0) {
    const last = cps.pop() ?? 0;
    if (last < 0x10ffff) {
      const next = last + 1 === 0xd800 ? 0xe000 : last + 1;
      return String.fromCodePoint(...cps, next);
    }
  }
  return undefined;
}

/** get/list rows come back as arrays in KV_COLS order: about 2.5x cheaper than row objects. */
type KvTuple = [key: string, value: string, createRev: number, modRev: number, version: number, lease: string | null];

function toKv(r: KvTuple): KeyValue {
  return { key: r[0], value: r[1], createRevision: r[2], modRevision: r[3], version: r[4], lease: r[5] ?? undefined };
}

function toEvent(r: EventRow): WatchEvent {
  if (r.value === null) return { type: 'delete', key: r.key, revision: r.rev };
  return {
    type: 'put',
    revision: r.rev,
    kv: { key: r.key, value: r.value, createRevision: r.create_rev ?? r.rev, modRevision: r.rev, version: r.version ?? 1, lease: r.lease ?? undefined },
  };
}

function matches(w: WatchState, key: string): boolean {
  return key.startsWith(w.prefix);
}

/** Embedded Store on node:sqlite. Every mutation is one SQLite transaction and one revision. */
export function createSqliteStore(opts: SqliteStoreOptions): Store {
  return new SqliteStore(opts);
}

class SqliteStore implements Store {
  readonly #db: DatabaseSync;
  readonly #clock: Clock;
  readonly #log: Logger;
  readonly #sweepMs: number;
  readonly #historyLimit: number;
  /** Trim history in batches so most writes skip the DELETE. */
  readonly #trimBatch: number;
  #rev: number;
  #compacted: number;
  #leaseSeq: number;
  #closed = false;
  #sweepTimer: TimerHandle | undefined;
  readonly #watchers = new Set<WatchState>();
  readonly #s: Record<string, StatementSync>;

  constructor(opts: SqliteStoreOptions) {
    this.#clock = opts.clock ?? systemClock;
    this.#log = opts.logger ?? silentLogger();
    this.#sweepMs = opts.sweepIntervalMs ?? 250;
    this.#historyLimit = Math.max(1, opts.historyLimit ?? 10_000);
    this.#trimBatch = Math.max(1, Math.floor(this.#historyLimit / 16));
    this.#db = new DatabaseSync(opts.path);
    this.#db.exec('PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;');
    this.#db.exec(SCHEMA);
    const p = (sql: string): StatementSync => this.#db.prepare(sql);
    this.#s = {
      begin: p('BEGIN IMMEDIATE'),
      commit: p('COMMIT'),
      rollback: p('ROLLBACK'),
      getMeta: p('SELECT v FROM meta WHERE k = ?'),
      setMeta: p('UPDATE meta SET v = ? WHERE k = ?'),
      get: p(`SELECT ${KV_COLS} FROM kv WHERE key = ?`),
      listAll: p(`SELECT ${KV_COLS} FROM kv ORDER BY key LIMIT ?`),
      listAllRev: p(`SELECT ${KV_COLS} FROM kv ORDER BY key DESC LIMIT ?`),
      listRange: p(`SELECT ${KV_COLS} FROM kv WHERE key >= ? AND key < ? ORDER BY key LIMIT ?`),
      listRangeRev: p(`SELECT ${KV_COLS} FROM kv WHERE key >= ? AND key < ? ORDER BY key DESC LIMIT ?`),
      head: p('SELECT create_rev, version FROM kv WHERE key = ?'),
      modRev: p('SELECT mod_rev FROM kv WHERE key = ?'),
      upsert: p(
        'INSERT INTO kv (key, value, create_rev, mod_rev, version, lease) VALUES (?, ?, ?, ?, ?, ?) ' +
          'ON CONFLICT(key) DO UPDATE SET value = excluded.value, mod_rev = excluded.mod_rev, version = excluded.version, lease = excluded.lease',
      ),
      del: p('DELETE FROM kv WHERE key = ? RETURNING key'),
      delAll: p('DELETE FROM kv RETURNING key'),
      delRange: p('DELETE FROM kv WHERE key >= ? AND key < ? RETURNING key'),
      delLeaseKeys: p('DELETE FROM kv WHERE lease = ? RETURNING key'),
      insEvent: p('INSERT INTO events (rev, seq, key, value, create_rev, version, lease) VALUES (?, ?, ?, ?, ?, ?, ?)'),
      trim: p('DELETE FROM events WHERE rev <= ?'),
      eventsAll: p('SELECT rev, key, value, create_rev, version, lease FROM events WHERE rev >= ? ORDER BY rev, seq'),
      eventsRange: p('SELECT rev, key, value, create_rev, version, lease FROM events WHERE rev >= ? AND key >= ? AND key < ? ORDER BY rev, seq'),
      getLease: p('SELECT ttl_ms, expires_at FROM leases WHERE id = ?'),
      insLease: p('INSERT INTO leases (id, ttl_ms, expires_at) VALUES (?, ?, ?)'),
      touchLease: p('UPDATE leases SET expires_at = ? WHERE id = ?'),
      delLease: p('DELETE FROM leases WHERE id = ?'),
      expired: p('SELECT id FROM leases WHERE expires_at <= ? ORDER BY expires_at'),
    };
    for (const name of ['get', 'listAll', 'listAllRev', 'listRange', 'listRangeRev']) this.#s[name]!.setReturnArrays(true);
    this.#rev = this.#meta('rev');
    this.#compacted = this.#meta('compacted');
    this.#leaseSeq = this.#meta('lease_seq');
    // Leases that expired while the store was closed go now, before anyone reads their keys.
    this.#sweep();
    this.#scheduleSweep();
  }

  #meta(k: string): number {
    const row = this.#s['getMeta']!.get(k) as { v: number } | undefined;
    return row?.v ?? 0;
  }

  #stmt(name: string): StatementSync {
    if (this.#closed) throw new AetherError('AETHER_ERR_UNAVAILABLE', 'store is closed');
    return this.#s[name]!;
  }

  // ---- reads ----

  async get(key: string): Promise<KeyValue | undefined> {
    const row = this.#stmt('get').get(key) as unknown as KvTuple | undefined;
    return row ? toKv(row) : undefined;
  }

  async list(prefix: string, opts?: ListOptions): Promise<RangeResult> {
    const limit = opts?.limit !== undefined && opts.limit > 0 ? opts.limit : -1;
    const rev = opts?.reverse === true;
    const end = prefixEnd(prefix);
    const rows = (
      end === undefined ? this.#stmt(rev ? 'listAllRev' : 'listAll').all(limit) : this.#stmt(rev ? 'listRangeRev' : 'listRange').all(prefix, end, limit)
    ) as unknown as KvTuple[];
    return { kvs: rows.map(toKv), revision: this.#rev };
  }

  // ---- writes ----

  /**
   * Run `fn` in one SQLite transaction. Writes inside share the next revision; the revision is
   * consumed (and events recorded and dispatched) only if something changed, as in etcd.
   */
  #write<T>(fn: (w: WriteCtx) => T): { result: T; revision: number } {
    const s = this.#stmt('begin');
    s.run();
    const w = new WriteCtx(this.#s, this.#rev + 1, this.#clock.now());
    let result: T;
    try {
      result = fn(w);
      if (w.events.length > 0) {
        const rev = w.rev;
        this.#s['setMeta']!.run(rev, 'rev');
        let seq = 0;
        for (const ev of w.events) {
          if (ev.type === 'put') this.#s['insEvent']!.run(rev, seq++, ev.kv.key, ev.kv.value, ev.kv.createRevision, ev.kv.version, ev.kv.lease ?? null);
          else this.#s['insEvent']!.run(rev, seq++, ev.key, null, null, null, null);
        }
        if (rev - this.#compacted > this.#historyLimit + this.#trimBatch) {
          const compacted = rev - this.#historyLimit;
          this.#s['trim']!.run(compacted);
          this.#s['setMeta']!.run(compacted, 'compacted');
          w.compacted = compacted;
        }
      }
      if (w.leaseSeq > 0) this.#s['setMeta']!.run(w.leaseSeq, 'lease_seq');
      this.#s['commit']!.run();
    } catch (err) {
      this.#s['rollback']!.run();
      throw err;
    }
    if (w.compacted > 0) this.#compacted = w.compacted;
    if (w.events.length > 0) {
      this.#rev = w.rev;
      this.#dispatch(w.events);
    }
    return { result, revision: this.#rev };
  }

  async put(key: string, value: string, opts?: { lease?: string }): Promise<number> {
    return this.#write((w) => w.put(key, value, opts?.lease)).revision;
  }

  async delete(key: string): Promise<boolean> {
    return this.#write((w) => w.delete(key)).result;
  }

  async deletePrefix(prefix: string): Promise<number> {
    return this.#write((w) => w.deletePrefix(prefix)).result;
  }

  async txn(compares: TxnCompare[], ops: TxnOp[]): Promise<TxnResult> {
    const { result, revision } = this.#write((w) => {
      for (const c of compares) {
        const row = this.#s['modRev']!.get(c.key) as { mod_rev: number } | undefined;
        if ((row?.mod_rev ?? 0) !== c.modRevision) return false;
      }
      for (const op of ops) {
        if (op.type === 'put') w.put(op.key, op.value, op.lease);
        else if (op.type === 'delete') w.delete(op.key);
        else w.deletePrefix(op.prefix);
      }
      return true;
    });
    return { succeeded: result, revision };
  }

  async cas(key: string, expectedModRevision: number, value: string, opts?: { lease?: string }): Promise<TxnResult> {
    const op: TxnOp = opts?.lease !== undefined ? { type: 'put', key, value, lease: opts.lease } : { type: 'put', key, value };
    return this.txn([{ key, modRevision: expectedModRevision }], [op]);
  }

  // ---- leases ----

  async grantLease(ttlMs: number): Promise<string> {
    if (!(ttlMs > 0)) throw new AetherError('AETHER_ERR_VALIDATION', `lease TTL must be positive, got ${ttlMs}`);
    return this.#write((w) => {
      w.leaseSeq = this.#leaseSeq + 1;
      const id = String(w.leaseSeq);
      this.#s['insLease']!.run(id, Math.ceil(ttlMs), w.now + Math.ceil(ttlMs));
      this.#leaseSeq = w.leaseSeq;
      return id;
    }).result;
  }

  async keepAlive(leaseId: string): Promise<boolean> {
    const row = this.#stmt('getLease').get(leaseId) as { ttl_ms: number; expires_at: number } | undefined;
    if (!row) return false;
    const now = this.#clock.now();
    if (row.expires_at <= now) {
      // Expired but not swept yet: it is gone for the caller, so make that true for everyone.
      this.#write((w) => w.revokeLease(leaseId));
      return false;
    }
    this.#s['touchLease']!.run(now + row.ttl_ms, leaseId);
    return true;
  }

  async revokeLease(leaseId: string): Promise<void> {
    this.#write((w) => w.revokeLease(leaseId));
  }

  #sweep(): void {
    if (this.#closed) return;
    try {
      const ids = this.#s['expired']!.all(this.#clock.now()) as { id: string }[];
      for (const { id } of ids) this.#write((w) => w.revokeLease(id));
    } catch (err) {
      this.#log.error({ err }, 'lease sweep failed');
    }
  }

  #scheduleSweep(): void {
    if (this.#closed) return;
    this.#sweepTimer = this.#clock.setTimeout(() => {
      this.#sweep();
      this.#scheduleSweep();
    }, this.#sweepMs);
  }

  // ---- watch ----

  watch(prefix: string, fromRevision: number, handlers: WatchHandlers): Watcher {
    if (this.#closed) throw new AetherError('AETHER_ERR_UNAVAILABLE', 'store is closed');
    const w: WatchState = {
      prefix,
      end: prefixEnd(prefix),
      from: Math.max(1, Math.floor(fromRevision)),
      handlers,
      live: false,
      closed: false,
      queue: [],
      scheduled: false,
    };
    this.#watchers.add(w);
    this.#schedule(w);
    return {
      close: () => {
        w.closed = true;
        w.queue.length = 0;
        this.#watchers.delete(w);
      },
    };
  }

  #dispatch(events: WatchEvent[]): void {
    for (const w of this.#watchers) {
      if (!w.live) continue;
      let added = false;
      for (const ev of events) {
        if (ev.revision >= w.from && matches(w, ev.type === 'put' ? ev.kv.key : ev.key)) {
          w.queue.push(ev);
          added = true;
        }
      }
      if (added) this.#schedule(w);
    }
  }

  #schedule(w: WatchState): void {
    if (w.scheduled) return;
    w.scheduled = true;
    queueMicrotask(() => this.#flush(w));
  }

  #flush(w: WatchState): void {
    w.scheduled = false;
    if (w.closed || this.#closed) return;
    if (!w.live) {
      if (w.from <= this.#compacted) {
        this.#watchers.delete(w);
        w.closed = true;
        this.#call(w, () =>
          w.handlers.onError?.(new StoreWatchError(`revision ${w.from} is compacted (history starts after ${this.#compacted})`, true)),
        );
        return;
      }
      // Replay and the switch to live happen in one synchronous step, so no write falls between.
      const rows = (w.end === undefined ? this.#s['eventsAll']!.all(w.from) : this.#s['eventsRange']!.all(w.from, w.prefix, w.end)) as unknown as EventRow[];
      w.queue = rows.map(toEvent);
      w.live = true;
    }
    while (w.queue.length > 0 && !w.closed) {
      const ev = w.queue.shift()!;
      this.#call(w, () => w.handlers.onEvent(ev));
    }
  }

  #call(w: WatchState, fn: () => void): void {
    try {
      fn();
    } catch (err) {
      this.#log.error({ err, prefix: w.prefix }, 'watch handler threw');
    }
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#sweepTimer) this.#clock.clearTimeout(this.#sweepTimer);
    for (const w of this.#watchers) {
      w.closed = true;
      w.queue.length = 0;
    }
    this.#watchers.clear();
    this.#db.close();
  }
}

/** The mutations of one transaction; they all get revision `rev`. */
class WriteCtx {
  readonly events: WatchEvent[] = [];
  readonly rev: number;
  readonly now: number;
  compacted = 0;
  leaseSeq = 0;
  readonly #s: Record<string, StatementSync>;

  constructor(s: Record<string, StatementSync>, rev: number, now: number) {
    this.#s = s;
    this.rev = rev;
    this.now = now;
  }

  put(key: string, value: string, lease: string | undefined): void {
    if (lease !== undefined) {
      const l = this.#s['getLease']!.get(lease) as { expires_at: number } | undefined;
      if (!l || l.expires_at <= this.now) throw new AetherError('AETHER_ERR_CONFLICT', `lease ${lease} not found`);
    }
    const cur = this.#s['head']!.get(key) as { create_rev: number; version: number } | undefined;
    const createRevision = cur?.create_rev ?? this.rev;
    const version = (cur?.version ?? 0) + 1;
    this.#s['upsert']!.run(key, value, createRevision, this.rev, version, lease ?? null);
    this.events.push({ type: 'put', revision: this.rev, kv: { key, value, createRevision, modRevision: this.rev, version, lease } });
  }

  delete(key: string): boolean {
    const gone = this.#s['del']!.all(key).length > 0;
    if (gone) this.events.push({ type: 'delete', key, revision: this.rev });
    return gone;
  }

  deletePrefix(prefix: string): number {
    const end = prefixEnd(prefix);
    const rows = (end === undefined ? this.#s['delAll']!.all() : this.#s['delRange']!.all(prefix, end)) as { key: string }[];
    this.#deleted(rows);
    return rows.length;
  }

  revokeLease(id: string): void {
    const rows = this.#s['delLeaseKeys']!.all(id) as { key: string }[];
    this.#deleted(rows);
    this.#s['delLease']!.run(id);
  }

  #deleted(rows: { key: string }[]): void {
    // RETURNING order is unspecified; emit in key order like etcd.
    const keys = rows.map((r) => r.key).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    for (const key of keys) this.events.push({ type: 'delete', key, revision: this.rev });
  }
}
