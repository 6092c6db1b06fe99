import { Redis, type RedisOptions } from 'ioredis';
import { AetherError, silentLogger, systemClock, type Logger } from '../core/index.ts';
import type { Job, Queue, TakeOptions } from './types.ts';

/**
 * Redis Streams driver. One stream per topic (`<prefix>q:<topic>`), one consumer group ('agents',
 * created with MKSTREAM from id 0 on every take, so it comes back after Redis lost its data).
 * A taken entry sits in the group's pending list (XPENDING gives its delivery count) and its
 * visibility deadline (server TIME + visibilityMs) in the sorted set `<prefix>q:<topic>:inflight`.
 * XAUTOCLAIM's min-idle is one value per call, chosen by the *taker*; a deadline per delivery lets
 * the holder's own visibilityMs and extend() decide, as the Queue interface says. A take is one
 * Lua script (reclaim an expired entry with XCLAIM, else XREADGROUP), so a job is never handed to
 * two takers; waiting happens outside the script with XREAD BLOCK on a dedicated connection.
 * Acked entries are deleted, so XLEN = waiting + in flight. The set `<prefix>q:<topic>:jobs` holds
 * the ids of live jobs (added by enqueue, removed by ack or dead-lettering) for contains(); it
 * empties with the stream when Redis comes back without its data.
 *
 * Entry fields: p = JSON payload, j = job id (original entry id, kept across release), d = deliveries
 * before this entry (a released job is re-added at the tail as a new entry that carries its count).
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

const LUA_NOW = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)`;

// KEYS: stream, jobs. ARGV: maxLen, payload -> entry id (= job id)
const ENQUEUE_LUA = `
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'p', ARGV[2])
redis.call('SADD', KEYS[2], id)
return id`;

// KEYS: stream, inflight, dlq, jobs. ARGV: group, consumer, visibilityMs, maxDeliveries, maxLen.
// -> {'job', entryId, fields, pendingCount, deadJobs} or {'none', lastId, msToNextDeadline|-1, deadJobs}
const TAKE_LUA = `
local key, zkey, dlq, jobs = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local group, consumer = ARGV[1], ARGV[2]
local vis, maxd = tonumber(ARGV[3]), tonumber(ARGV[4])
redis.pcall('XGROUP', 'CREATE', key, group, '0', 'MKSTREAM')
${LUA_NOW}
local function field(fields, name)
  for i = 1, #fields, 2 do if fields[i] == name then return fields[i + 1] end end
  return nil
end
local dead = {}
for _ = 1, 100 do
  local due = redis.call('ZRANGEBYSCORE', zkey, '-inf', now, 'LIMIT', 0, 1)
  if #due == 0 then break end
  local id = due[1]
  local e = redis.call('XCLAIM', key, group, consumer, 0, id)[1]
  if not e or not e[2] then
    redis.call('ZREM', zkey, id) -- acked or trimmed meanwhile
  else
    local count = tonumber(redis.call('XPENDING', key, group, id, id, 1)[1][4])
    local deliveries = tonumber(field(e[2], 'd') or '0') + count
    if deliveries > maxd then
      local f = e[2]
      table.insert(f, 'dead_deliveries'); table.insert(f, tostring(deliveries - 1))
      redis.call('XADD', dlq, 'MAXLEN', '~', ARGV[5], '*', unpack(f))
      redis.call('XACK', key, group, id)
      redis.call('XDEL', key, id)
      redis.call('ZREM', zkey, id)
      redis.call('SREM', jobs, field(e[2], 'j') or id)
      table.insert(dead, field(e[2], 'j') or id)
    else
      redis.call('ZADD', zkey, now + vis, id)
      return {'job', id, e[2], count, dead}
    end
  end
end
local r = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', 1, 'STREAMS', key, '>')
if r and r[1][2][1] then
  local e = r[1][2][1]
  redis.call('ZADD', zkey, now + vis, e[1])
  return {'job', e[1], e[2], 1, dead}
end
local last = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)[1]
local nxt = redis.call('ZRANGE', zkey, 0, 0, 'WITHSCORES')[2]
return {'none', last and last[1] or '0-0', nxt and (tonumber(nxt) - now) or -1, dead}`;

// The current delivery holds the job iff its pending count is unchanged: a stale holder (whose job
// was redelivered) can neither extend nor release it.
const HELD_LUA = `
local p = redis.pcall('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if p.err or #p == 0 or tostring(p[1][4]) ~= ARGV[3] then return 0 end`;

// KEYS: stream, inflight. ARGV: group, entryId, pendingCount, visibilityMs
const EXTEND_LUA = `${HELD_LUA}
${LUA_NOW}
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), ARGV[2])
return 1`;

// KEYS: stream, inflight. ARGV: group, entryId, pendingCount, payload, jobId, deliveries, maxLen
const RELEASE_LUA = `${HELD_LUA}
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[7], '*', 'p', ARGV[4], 'j', ARGV[5], 'd', ARGV[6])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[2])
return 1`;

interface Delivery {
  entryId: string;
  /** The entry's pending delivery count when handed out: identifies this delivery. */
  count: number;
  raw: string;
}

type TakeReply = ['job', string, string[], number, string[]] | ['none', string, number, string[]];

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
      // RESP2: stream replies keep their documented nested-array shapes.
      protocol: 2,
    };
    this.#redis = this.#connect('aether-queue', { commandTimeout: COMMAND_TIMEOUT_MS });
  }

  async enqueue<T>(topic: string, payload: T): Promise<string> {
    this.#open();
    const raw = JSON.stringify(payload);
    if (raw === undefined) throw new AetherError('AETHER_ERR_VALIDATION', 'queue payload must be JSON-serialisable');
    const key = this.#key(topic);
    const id = (await this.#redis.eval(ENQUEUE_LUA, 2, key, `${key}:jobs`, this.#maxLen, raw)) as string | null;
    if (!id) throw new AetherError('AETHER_ERR_INTERNAL', 'XADD returned no id');
    return id;
  }

  async take<T = unknown>(topic: string, consumer: string, opts: TakeOptions): Promise<Job<T> | undefined> {
    this.#open();
    const key = this.#key(topic);
    const deadline = systemClock.now() + Math.max(0, opts.waitMs);
    for (;;) {
      const reply = (await this.#redis.eval(
        TAKE_LUA, 4, key, `${key}:inflight`, `${key}:dlq`, `${key}:jobs`,
        GROUP, consumer, Math.max(1, Math.floor(opts.visibilityMs)), this.#maxDeliveries, this.#maxLen,
      )) as TakeReply;
      const dead = reply[4] ?? reply[3];
      if (Array.isArray(dead) && dead.length > 0) {
        this.#log.warn({ topic, jobs: dead, maxDeliveries: this.#maxDeliveries }, 'jobs exceeded maxDeliveries; moved to the dead-letter stream');
      }
      if (reply[0] === 'job') return this.#toJob(topic, reply[1], reply[2], reply[3]) as Job<T>;
      const remaining = deadline - systemClock.now();
      if (this.#closed || remaining < 1) return undefined;
      // Wake for a new entry, or when the next in-flight job expires, or to re-check now and then.
      let block = Math.min(remaining, BLOCK_SLICE_MS);
      if (reply[2] >= 0) block = Math.min(block, reply[2] + 1);
      await this.#waitForEntry(key, reply[1], Math.max(1, Math.floor(block)));
      if (this.#closed) return undefined;
    }
  }

  async ack(job: Job): Promise<void> {
    const key = this.#key(job.topic);
    const entryId = this.#deliveries.get(job)?.entryId ?? job.id;
    // A late ack from a holder whose delivery expired still completes the job (at-least-once).
    await this.#redis.multi().xack(key, GROUP, entryId).xdel(key, entryId).zrem(`${key}:inflight`, entryId).srem(`${key}:jobs`, job.id).exec();
  }

  async release(job: Job): Promise<void> {
    const d = this.#delivery(job);
    const key = this.#key(job.topic);
    await this.#redis.eval(RELEASE_LUA, 2, key, `${key}:inflight`, GROUP, d.entryId, d.count, d.raw, job.id, job.deliveries, this.#maxLen);
  }

  async extend(job: Job, visibilityMs: number): Promise<void> {
    const d = this.#delivery(job);
    const key = this.#key(job.topic);
    const ok = await this.#redis.eval(EXTEND_LUA, 2, key, `${key}:inflight`, GROUP, d.entryId, d.count, Math.max(1, Math.floor(visibilityMs)));
    if (ok !== 1) throw new AetherError('AETHER_ERR_CONFLICT', `job ${job.id} is no longer held by this delivery`);
  }

  async depth(topic: string): Promise<number> {
    return this.#redis.xlen(this.#key(topic));
  }

  async contains(topic: string, jobId: string): Promise<boolean> {
    return (await this.#redis.sismember(`${this.#key(topic)}:jobs`, jobId)) === 1;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    // Blocking connections are dropped at once: a waiting take then resolves undefined.
    for (const b of [...this.#idleBlockers, ...this.#busyBlockers]) b.disconnect();
    this.#idleBlockers.length = 0;
    try {
      await this.#redis.quit();
    } catch {
      this.#redis.disconnect();
    }
  }

  #connect(name: string, extra: RedisOptions): Redis {
    // replyMapping is only valid with RESP3 (and its type clashes under exactOptionalPropertyTypes).
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

  #open(): void {
    if (this.#closed) throw new AetherError('AETHER_ERR_UNAVAILABLE', 'queue is closed');
  }

  #delivery(job: Job): Delivery {
    const d = this.#deliveries.get(job);
    if (!d) throw new AetherError('AETHER_ERR_VALIDATION', `job ${job.id} was not taken from this queue`);
    return d;
  }

  /** XREAD BLOCK for entries after `lastId`; a blocking command gets a connection of its own. */
  async #waitForEntry(key: string, lastId: string, blockMs: number): Promise<void> {
    const b = this.#idleBlockers.pop() ?? this.#connect('aether-queue-block', {
      // No plain command timeout (it would cut BLOCK short); the client instead gives up on a
      // blocking read BLOCK + grace ms after sending it, so a dead server cannot hang a take.
      blockingTimeout: COMMAND_TIMEOUT_MS,
      blockingTimeoutGrace: COMMAND_TIMEOUT_MS,
    });
    this.#busyBlockers.add(b);
    try {
      await b.call('XREAD', ['COUNT', 1, 'BLOCK', blockMs, 'STREAMS', key, lastId]);
    } catch (err) {
      if (!this.#closed) throw err;
    } finally {
      this.#busyBlockers.delete(b);
      if (this.#closed || this.#idleBlockers.length >= MAX_IDLE_BLOCKERS) b.disconnect();
      else this.#idleBlockers.push(b);
    }
  }

  #toJob(topic: string, entryId: string, fields: string[], count: number): Job {
    const f = new Map<string, string>();
    for (let i = 0; i + 1 < fields.length; i += 2) f.set(fields[i] as string, fields[i + 1] as string);
    const raw = f.get('p') ?? 'null';
    let payload: unknown;
    try {
      payload = JSON.parse(raw);
    } catch {
      payload = raw;
    }
    const job: Job = { id: f.get('j') ?? entryId, topic, payload, deliveries: Number(f.get('d') ?? 0) + count };
    this.#deliveries.set(job, { entryId, count, raw });
    return job;
  }
}
