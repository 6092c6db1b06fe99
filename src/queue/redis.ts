import { Redis, type RedisOptions } from 'ioredis';
import { AetherError, silentLogger, systemClock, type Logger } from '../core/index.ts';
import type { Job, Queue, TakeOptions } from './types.ts';

/**
 * Redis Streams driver. One stream per topic (`<prefix>q:<topic>`), one consumer group ('agents').
 * An entry is in flight while it sits in the group's pending list; its idle time there is the
 * visibility clock (server time), so a job of a dead consumer is reclaimed with XAUTOCLAIM by the
 * next taker. Acked entries are deleted, so XLEN = waiting + in flight.
 *
 * Entry fields: p = JSON payload, j = job id (original entry id, kept across release), d = deliveries
 * before this entry (a released job is re-added as a new entry that carries its count).
 */
export interface RedisQueueOptions {
  url: string;
  keyPrefix?: string;
  /** Approximate cap on entries per stream (XADD MAXLEN ~). */
  maxLen?: number;
  /** A job delivered this many times goes to `<prefix>q:<topic>:dlq` instead of an 11th delivery. */
  maxDeliveries?: number;
  logger?: Logger;
}

const GROUP = 'agents';
/** A blocking read is cut into slices so jobs of dead consumers are reclaimed during a long wait. */
const BLOCK_SLICE_MS = 1000;
const COMMAND_TIMEOUT_MS = 5000;
/** Blocking connections kept open for reuse. */
const MAX_IDLE_BLOCKERS = 4;

/** ioredis options for a `redis://[user:pass@]host:port[/db]` (or `rediss://`) url. */
export function redisOptionsFromUrl(url: string): RedisOptions {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new AetherError('AETHER_ERR_VALIDATION', `invalid redis url: ${url}`);
  }
  if (u.protocol !== 'redis:' && u.protocol !== 'rediss:') {
    throw new AetherError('AETHER_ERR_VALIDATION', `redis url must start with redis:// or rediss://: ${url}`);
  }
  const opts: RedisOptions = { host: u.hostname || '127.0.0.1', port: u.port ? Number(u.port) : 6379 };
  if (u.username) opts.username = decodeURIComponent(u.username);
  if (u.password) opts.password = decodeURIComponent(u.password);
  const db = u.pathname.replace(/^\//, '');
  if (db) {
    if (!/^\d+$/.test(db)) throw new AetherError('AETHER_ERR_VALIDATION', `invalid redis db in url: ${url}`);
    opts.db = Number(db);
  }
  if (u.protocol === 'rediss:') opts.tls = {};
  return opts;
}

export function createRedisQueue(opts: RedisQueueOptions): Queue {
  return new RedisQueue(opts);
}

// Give a job back: only if this exact delivery still holds it (pending count unchanged), so a
// stale holder cannot duplicate a job that was already redelivered.
// KEYS[1]=stream ARGV: group, entryId, pendingCount, payload, jobId, deliveries, maxLen
const RELEASE_LUA = `
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #p == 0 or tostring(p[1][4]) ~= ARGV[3] then return 0 end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[7], '*', 'p', ARGV[4], 'j', ARGV[5], 'd', ARGV[6])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return 1`;

// Reset the idle time of a job, only for the delivery that holds it.
// KEYS[1]=stream ARGV: group, entryId, pendingCount
const EXTEND_LUA = `
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #p == 0 or tostring(p[1][4]) ~= ARGV[3] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], p[1][2], 0, ARGV[2], 'JUSTID')
return 1`;

interface Delivery {
  entryId: string;
  /** The entry's pending delivery count when handed out: identifies this delivery. */
  count: number;
  raw: string;
}

type StreamEntry = [id: string, fields: string[] | null];

class RedisQueue implements Queue {
  readonly #prefix: string;
  readonly #maxLen: number;
  readonly #maxDeliveries: number;
  readonly #log: Logger;
  readonly #options: RedisOptions;
  readonly #redis: Redis;
  readonly #idleBlockers: Redis[] = [];
  readonly #busyBlockers = new Set<Redis>();
  readonly #deliveries = new WeakMap<Job, Delivery>();
  readonly #groups = new Set<string>();
  #closed = false;

  constructor(opts: RedisQueueOptions) {
    this.#prefix = opts.keyPrefix ?? 'aether:';
    this.#maxLen = opts.maxLen ?? 100_000;
    this.#maxDeliveries = opts.maxDeliveries ?? 10;
    this.#log = opts.logger ?? silentLogger();
    this.#options = {
      ...redisOptionsFromUrl(opts.url),
      // During an outage a call fails after one reconnect attempt instead of queueing forever.
      maxRetriesPerRequest: 1,
      retryStrategy: (times) => Math.min(100 * times, 1000),
      // RESP2: XREADGROUP replies keep their documented [[stream, entries]] shape.
      protocol: 2,
    };
    this.#redis = this.#connect('aether-queue', { commandTimeout: COMMAND_TIMEOUT_MS });
  }

  #connect(name: string, extra: RedisOptions): Redis {
    const { replyMapping: _unused, ...options } = { ...this.#options, connectionName: name, ...extra };
    const r = new Redis(options);
    let lastLogged = 0;
    r.on('error', (err: Error) => {
      // ioredis emits one error per reconnect attempt; keep the log readable during an outage.
      const now = systemClock.now();
      if (now - lastLogged < 5000) return;
      lastLogged = now;
      this.#log.warn({ err: err.message }, 'redis queue connection error');
    });
    return r;
  }

  #key(topic: string): string {
    return `${this.#prefix}q:${topic}`;
  }

  async enqueue<T>(topic: string, payload: T): Promise<string> {
    this.#open();
    const raw = JSON.stringify(payload);
    if (raw === undefined) throw new AetherError('AETHER_ERR_VALIDATION', 'queue payload must be JSON-serialisable');
    const id = await this.#redis.xadd(this.#key(topic), 'MAXLEN', '~', this.#maxLen, '*', 'p', raw);
    if (!id) throw new AetherError('AETHER_ERR_INTERNAL', 'XADD returned no id');
    return id;
  }

  async take<T = unknown>(topic: string, consumer: string, opts: TakeOptions): Promise<Job<T> | undefined> {
    this.#open();
    const key = this.#key(topic);
    const deadline = systemClock.now() + Math.max(0, opts.waitMs);
    await this.#ensureGroup(key);
    for (;;) {
      const stale = await this.#withGroup(key, () => this.#claimStale(key, topic, consumer, opts.visibilityMs));
      if (stale) return stale as Job<T>;
      const remaining = deadline - systemClock.now();
      const fresh = await this.#withGroup(key, () => this.#readNew(key, topic, consumer, Math.min(remaining, BLOCK_SLICE_MS)));
      if (fresh) return fresh as Job<T>;
      if (this.#closed || systemClock.now() >= deadline) return undefined;
    }
  }

  async ack(job: Job): Promise<void> {
    const key = this.#key(job.topic);
    const entryId = this.#deliveries.get(job)?.entryId ?? job.id;
    // A late ack from a holder whose delivery expired still completes the job (at-least-once).
    await this.#redis.multi().xack(key, GROUP, entryId).xdel(key, entryId).exec();
  }

  async release(job: Job): Promise<void> {
    const d = this.#delivery(job);
    await this.#redis.eval(RELEASE_LUA, 1, this.#key(job.topic), GROUP, d.entryId, d.count, d.raw, job.id, job.deliveries, this.#maxLen);
  }

  /** Restarts the job's idle clock; the next takers compare it with their own visibilityMs. */
  async extend(job: Job, _visibilityMs: number): Promise<void> {
    const d = this.#delivery(job);
    const ok = await this.#redis.eval(EXTEND_LUA, 1, this.#key(job.topic), GROUP, d.entryId, d.count);
    if (ok !== 1) throw new AetherError('AETHER_ERR_CONFLICT', `job ${job.id} is no longer held by this delivery`);
  }

  async depth(topic: string): Promise<number> {
    return this.#redis.xlen(this.#key(topic));
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    // Blocking connections are dropped at once: a pending take then resolves undefined.
    for (const b of [...this.#idleBlockers, ...this.#busyBlockers]) b.disconnect();
    this.#idleBlockers.length = 0;
    try {
      await this.#redis.quit();
    } catch {
      this.#redis.disconnect();
    }
  }

  #open(): void {
    if (this.#closed) throw new AetherError('AETHER_ERR_UNAVAILABLE', 'queue is closed');
  }

  #delivery(job: Job): Delivery {
    const d = this.#deliveries.get(job);
    if (!d) throw new AetherError('AETHER_ERR_VALIDATION', `job ${job.id} was not taken from this queue`);
    return d;
  }

  async #ensureGroup(key: string, force = false): Promise<void> {
    if (!force && this.#groups.has(key)) return;
    try {
      // From id 0: jobs enqueued before the group existed are delivered too.
      await this.#redis.xgroup('CREATE', key, GROUP, '0', 'MKSTREAM');
    } catch (err) {
      if (!String((err as Error).message).startsWith('BUSYGROUP')) throw err;
    }
    this.#groups.add(key);
  }

  /** Run `fn`; when the group vanished (Redis came back empty, key deleted) recreate it and retry once. */
  async #withGroup<R>(key: string, fn: () => Promise<R>): Promise<R> {
    try {
      return await fn();
    } catch (err) {
      if (this.#closed) return undefined as R;
      if (!String((err as Error).message).startsWith('NOGROUP')) throw err;
      this.#log.info({ key }, 'consumer group missing; recreating');
      await this.#ensureGroup(key, true);
      return fn();
    }
  }

  /** The oldest job whose holder has been silent for visibilityMs, moved to `consumer`. */
  async #claimStale(key: string, topic: string, consumer: string, visibilityMs: number): Promise<Job | undefined> {
    let cursor = '0-0';
    for (let round = 0; round < 1000; round++) {
      const [next, entries] = (await this.#redis.xautoclaim(key, GROUP, consumer, Math.max(0, Math.floor(visibilityMs)), cursor, 'COUNT', 1)) as [
        string,
        StreamEntry[],
      ];
      for (const [id, fields] of entries) {
        if (!fields) continue; // deleted meanwhile (trimmed); XAUTOCLAIM already dropped it from the PEL
        const pending = (await this.#redis.xpending(key, GROUP, id, id, 1)) as [string, string, number, number][];
        const count = pending[0]?.[3];
        if (count === undefined) continue; // acked meanwhile
        const job = this.#toJob(topic, id, fields, count);
        if (job.deliveries > this.#maxDeliveries) {
          await this.#deadLetter(key, id, fields, job);
          continue;
        }
        return job;
      }
      if (next === '0-0') return undefined;
      cursor = next;
    }
    return undefined;
  }

  async #readNew(key: string, topic: string, consumer: string, blockMs: number): Promise<Job | undefined> {
    const args: (string | number)[] = ['GROUP', GROUP, consumer, 'COUNT', 1];
    let conn = this.#redis;
    if (blockMs >= 1) {
      // BLOCK 0 would wait forever; only positive waits block, on a connection of their own.
      args.push('BLOCK', Math.floor(blockMs));
      conn = this.#acquireBlocker();
    }
    args.push('STREAMS', key, '>');
    try {
      const reply = (await conn.call('XREADGROUP', args)) as [string, StreamEntry[]][] | null;
      const entry = reply?.[0]?.[1]?.[0];
      if (!entry?.[1]) return undefined;
      return this.#toJob(topic, entry[0], entry[1], 1);
    } catch (err) {
      if (this.#closed) return undefined;
      throw err;
    } finally {
      if (conn !== this.#redis) this.#releaseBlocker(conn);
    }
  }

  #acquireBlocker(): Redis {
    const b =
      this.#idleBlockers.pop() ??
      this.#connect('aether-queue-block', {
        // No plain command timeout (it would cut BLOCK short); instead the client gives up on a
        // blocking read BLOCK + grace ms after sending it, so a dead server cannot hang a take.
        blockingTimeout: COMMAND_TIMEOUT_MS,
        blockingTimeoutGrace: COMMAND_TIMEOUT_MS,
      });
    this.#busyBlockers.add(b);
    return b;
  }

  #releaseBlocker(b: Redis): void {
    this.#busyBlockers.delete(b);
    if (this.#closed || this.#idleBlockers.length >= MAX_IDLE_BLOCKERS) b.disconnect();
    else this.#idleBlockers.push(b);
  }

  #toJob(topic: string, entryId: string, fields: string[], count: number): Job {
    const f = new Map<string, string>();
    for (let i = 0; i + 1 < fields.length; i += 2) f.set(fields[i] as string, fields[i + 1] as string);
    const raw = f.get('p') ?? 'null';
    const base = Number(f.get('d') ?? 0);
    let payload: unknown;
    try {
      payload = JSON.parse(raw);
    } catch {
      payload = raw;
    }
    const job: Job = { id: f.get('j') ?? entryId, topic, payload, deliveries: base + count };
    this.#deliveries.set(job, { entryId, count, raw });
    return job;
  }

  async #deadLetter(key: string, entryId: string, fields: string[], job: Job): Promise<void> {
    this.#log.warn({ topic: job.topic, job: job.id, deliveries: job.deliveries - 1 }, 'job exceeded maxDeliveries; moved to dead-letter stream');
    await this.#redis
      .multi()
      .xadd(`${key}:dlq`, 'MAXLEN', '~', this.#maxLen, '*', ...fields, 'dead_job', job.id, 'dead_deliveries', String(job.deliveries - 1))
      .xack(key, GROUP, entryId)
      .xdel(key, entryId)
      .exec();
  }
}
