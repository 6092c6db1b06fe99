import { access, mkdir } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { join } from 'node:path';
import { AetherError, forgetFunctionMetrics, keepFunctionMetrics, metrics, newId, type TimerHandle } from '../../core/index.ts';
import { forward as proxyForward, ProxyError } from '../../proxy/index.ts';
import type { Job } from '../../queue/index.ts';
import type { Endpoint, ExitInfo, InstanceSpec, RuntimeInstance } from '../../runtime/index.ts';
import { planScaleDown, type InstanceLoad, type ScalePolicy } from '../../scaler/index.ts';
import {
  KEYS,
  defaultEntrypoint,
  failureReason,
  provisionTopic,
  instanceConfigKey,
  type AgentRecord,
  type FunctionRecord,
  type InstanceRecord,
  type ProvisionJob,
  type ProvisionResult,
  type Resources,
  placement,
  type SandboxKind,
} from '../../spec/index.ts';
import { listAndWatch, type KeyValue, type WatchEvent } from '../../store/index.ts';
import { createCodeCache, type CodeCache, type CodeLease } from '../code-cache.ts';
import { describeExit, type AgentCore, type CoreInstance, type Leftover, type WorkloadController } from '../core/index.ts';
import type { LogEntry } from '../logs.ts';
import type { AgentDeps, AgentForwardOptions, AgentForwardTarget, LocalInstanceInfo } from '../types.ts';

/** Back-off after giving a job back for lack of capacity, so another agent can take it. */
const NO_CAPACITY_BACKOFF_MS = 200;
/** A job no agent could place after this many deliveries is answered "no capacity" instead of bouncing on. */
const MAX_CAPACITY_BOUNCES = 5;
const NO_RESOURCES: Resources = { instances: 0, memory_mb: 0, vcpu: 0 };

/** A function instance: the core's instance plus what the functions controller tracks about it. */
interface Local {
  inst: CoreInstance;
  id: string;
  sandbox: SandboxKind;
  fnId: string;
  fnName: string;
  configKey: string;
  memoryMb: number;
  vcpu: number;
  inflight: number;
  /** Requests a native data plane carries straight to the instance (from its stats). */
  external: number;
  /** The native data plane still sends it new requests: a drain waits until it stops. */
  externalRouted: boolean;
  /** End of the last request (idle time counts from there), or the ready time. */
  lastActiveAt: number;
  code: CodeLease | undefined;
  record: InstanceRecord | undefined;
  /** Key writes for this instance, applied in order (a late put must never resurrect a deleted key). */
  keyChain: Promise<void>;
  idleWaiters: (() => void)[];
  /** Counted in the instancesActive gauge. */
  counted: boolean;
  stopped: Promise<void> | undefined;
}

/**
 * The functions workload controller: consumes provision jobs (one take loop per sandbox kind),
 * admits them against the core's ledger (evicting idle instances of other functions), starts and
 * registers instances, drains stale and idle ones, and forwards requests to them. The core runs
 * the sandboxes and holds the lease.
 */
export class FunctionsController implements WorkloadController {
  readonly kind = 'function' as const;
  readonly #d: AgentDeps;
  readonly #core: AgentCore;
  readonly #locals = new Map<string, Local>();
  /** Function of recently removed instances (bounded), so a late request for one can go to a sibling. */
  readonly #goneFn = new Map<string, string>();
  /** Every function, from the watch. */
  readonly #functions = new Map<string, FunctionRecord>();
  #functionsReady = false;
  /** Every instance record of every agent, by key, from the watch. */
  readonly #records = new Map<string, InstanceRecord>();
  #watchers: { close(): void }[] = [];
  #cache: CodeCache | undefined;
  #running = false;
  readonly #stopAc = new AbortController();
  readonly #starts = new Set<Promise<void>>();
  #scaleTimer: TimerHandle | undefined;
  #scaleTicking = false;
  readonly #resultTimers = new Set<TimerHandle>();
  /** Wakes the take loops (one per sandbox kind) paused for capacity. */
  readonly #wakers = new Set<() => void>();
  /** Told when the set of instances forwards can reach changes (the agent's own proxy follows it). */
  readonly #routableListeners = new Set<() => void>();
  #unfree: (() => void) | undefined;

  constructor(deps: AgentDeps, core: AgentCore) {
    this.#d = deps;
    this.#core = core;
  }

  get #id(): string {
    return this.#core.id;
  }

  // ---------------------------------------------------------------- lifecycle

  /** The code cache and the watches of functions and instance records, before adoption. */
  async prepare(): Promise<void> {
    const { store, clock, logger, config } = this.#d;
    await mkdir(config.dataDir, { recursive: true });
    this.#cache = await createCodeCache({
      dir: join(config.dataDir, 'code'),
      blob: this.#d.blob,
      clock,
      logger,
      archiveLimits: this.#d.archiveLimits,
      budgetBytes: config.codeCacheBytes,
    });
    this.#unfree = this.#core.onCapacityFreed(() => this.#poke());
    const fns = listAndWatch(
      store,
      KEYS.functions,
      { onReset: (kvs) => this.#resetFunctions(kvs), onEvent: (ev) => this.#functionEvent(ev) },
      { clock, logger },
    );
    const insts = listAndWatch(
      store,
      KEYS.instances,
      {
        onReset: (kvs) => {
          this.#records.clear();
          for (const kv of kvs) this.#recordPut(kv);
        },
        onEvent: (ev) => {
          if (ev.type === 'put') this.#recordPut(ev.kv);
          else this.#records.delete(ev.key);
        },
      },
      { clock, logger },
    );
    this.#watchers.push(fns, insts);
    await Promise.all([fns.ready, insts.ready]);
  }

  /** After adoption and the runtimes' cleanup: drop stale keys, start taking jobs and scaling down. */
  async run(): Promise<void> {
    const { store, logger } = this.#d;
    // Records this agent id left under an earlier (dead) lease route to nothing: drop them now
    // instead of waiting for that lease to expire.
    for (const [key, rec] of this.#records) {
      if (rec.agent_id === this.#id && !this.#locals.has(rec.instance_id)) {
        await store.delete(key).catch((err: unknown) => logger.warn({ err, key }, 'could not delete a leftover instance key'));
      }
    }
    this.#running = true;
    // One take loop per sandbox kind (a topic each): a slow VM start never holds up process jobs.
    for (const [kind] of this.#core.runtimes) void this.#runTakeLoop(kind).catch((err: unknown) => logger.error({ err, sandbox: kind }, 'provision loop crashed'));
    this.#scheduleScale();
  }

  async stop(): Promise<void> {
    const { config } = this.#d;
    this.#running = false;
    this.#stopAc.abort(new AetherError('AETHER_ERR_UNAVAILABLE', 'agent is stopping'));
    this.#poke();
    if (this.#scaleTimer) this.#d.clock.clearTimeout(this.#scaleTimer);
    // A take blocked in the queue is not awaited: if it returns a job later, the loop gives it back.
    await Promise.allSettled([...this.#starts]);
    await Promise.allSettled([...this.#locals.values()].map((l) => this.#drain(l, 'agent stopping', config.drainTimeoutMs)));
    for (const w of this.#watchers) w.close();
    this.#watchers = [];
    for (const t of this.#resultTimers) this.#d.clock.clearTimeout(t);
    this.#resultTimers.clear();
    this.#unfree?.();
  }

  /**
   * A leftover of an earlier run: instances of functions that still exist at the same config key
   * (and sandbox) come back as ready under the new lease, serving on without a cold start; the
   * rest are stopped by the runtime's cleanup.
   */
  async adopt(a: Leftover): Promise<boolean> {
    const { logger } = this.#d;
    const sandbox = a.sandbox;
    const fn = this.#functions.get(a.spec.owner.id);
    // Its key under our old lease is still there only if we came back before that lease
    // expired: past that the cluster has written the instance off (others took its load), and
    // whatever comes back on this node stops it.
    const old = fn ? this.#records.get(KEYS.instance(fn.id, a.spec.instanceId)) : undefined;
    if (!old || old.agent_id !== this.#id || old.status !== 'ready') {
      logger.info({ instance: a.spec.instanceId, owner: a.spec.owner }, 'not adopting a leftover instance: its registration expired');
      return false;
    }
    if (!fn || instanceConfigKey(fn) !== a.spec.version || fn.sandbox !== sandbox || a.spec.artifact.kind !== 'code' || !this.#fits(fn)) {
      logger.info({ instance: a.spec.instanceId, owner: a.spec.owner }, 'not adopting a leftover instance: its function is gone or changed');
      return false;
    }
    const configKey = instanceConfigKey(fn);
    const l = this.#newLocal({ id: a.spec.instanceId, sandbox, fn, configKey, startedAt: a.startedAt, adopted: true });
    try {
      // pin its code in the cache (it is there: the instance runs from it)
      l.code = await this.#cache?.acquire({ code_path: fn.code_path, code_sha256: fn.code_sha256, entrypoint: a.spec.artifact.entrypoint });
      const rt = await this.#core.adopt(l.inst);
      await this.#register(l, rt.endpoint, a.startedAt);
      logger.info({ fnId: fn.id, instance: l.id }, 'adopted an instance');
      return true;
    } catch (err) {
      logger.warn({ err, instance: l.id }, 'could not adopt an instance; stopping it');
      l.inst.to('failed');
      await this.#cleanupFailed(l);
      return true; // stopped here already
    }
  }

  /** A function instance's bookkeeping (a fresh start, or one adopted from an earlier run), charged to the node's ledger. */
  #newLocal(o: { id: string; sandbox: SandboxKind; fn: FunctionRecord; configKey: string; startedAt: number; adopted: boolean }): Local {
    const inst = this.#core.admit({ id: o.id, kind: 'function', owner: o.fn.id, sandbox: o.sandbox, memoryMb: o.fn.memory_mb, vcpu: o.fn.vcpu, startedAt: o.startedAt, adopted: o.adopted });
    const l: Local = {
      inst,
      id: o.id,
      sandbox: o.sandbox,
      fnId: o.fn.id,
      fnName: o.fn.name,
      configKey: o.configKey,
      memoryMb: o.fn.memory_mb,
      vcpu: o.fn.vcpu,
      inflight: 0,
      external: 0,
      externalRouted: false,
      lastActiveAt: this.#d.clock.now(),
      code: undefined,
      record: undefined,
      keyChain: Promise.resolve(),
      idleWaiters: [],
      counted: false,
      stopped: undefined,
    };
    inst.hooks = { onGone: () => this.#onGone(l), onExit: (info) => this.#onExit(l, info), onState: () => this.#routableChanged() };
    this.#locals.set(l.id, l);
    return l;
  }

  // ---------------------------------------------------------------- registration

  /** A (new) agent lease: register every ready instance under it (after a store outage longer than the TTL they kept running). */
  async onLease(): Promise<void> {
    const puts: Promise<void>[] = [];
    for (const l of this.#locals.values()) {
      if (l.inst.state === 'ready' && l.record) puts.push(this.#putRecord(l, l.record));
    }
    await Promise.all(puts);
  }

  /**
   * A ready instance (just started, or adopted) into the store under this agent's lease, and
   * counted: gateways route to it from here on.
   */
  async #register(l: Local, endpoint: Endpoint, startedAt: number): Promise<void> {
    const rec: InstanceRecord = {
      instance_id: l.id,
      function_id: l.fnId,
      agent_id: this.#id,
      agent_url: this.#d.config.url,
      endpoint,
      config_key: l.configKey,
      sandbox: l.sandbox,
      status: 'ready',
      started_at: new Date(startedAt).toISOString(),
    };
    l.record = rec;
    l.lastActiveAt = this.#d.clock.now();
    await this.#putRecord(l, rec);
    l.counted = true;
    metrics.instancesActive.inc({ function_id: l.fnId, agent_id: this.#id });
  }

  #putRecord(l: Local, rec: InstanceRecord): Promise<void> {
    return this.#keyOp(l, async () => {
      const lease = this.#core.leaseId;
      if (!lease) throw new AetherError('AETHER_ERR_UNAVAILABLE', 'agent has no lease');
      await this.#d.store.put(KEYS.instance(l.fnId, l.id), JSON.stringify(rec), { lease });
    });
  }

  #deleteRecord(l: Local): Promise<void> {
    return this.#keyOp(l, async () => {
      await this.#d.store.delete(KEYS.instance(l.fnId, l.id));
    });
  }

  /** Chain a key write; the returned promise carries its own failure, the chain never breaks. */
  #keyOp(l: Local, op: () => Promise<void>): Promise<void> {
    const p = l.keyChain.then(op);
    l.keyChain = p.catch(() => undefined);
    return p;
  }

  // ---------------------------------------------------------------- watches

  #resetFunctions(kvs: KeyValue[]): void {
    // Functions known before a reset (a watch that was lost) and missing from it were deleted meanwhile.
    const missing = new Set(this.#functions.keys());
    this.#functions.clear();
    for (const kv of kvs) {
      const fn = parse<FunctionRecord>(kv.value);
      if (!fn) continue;
      const id = kv.key.slice(KEYS.functions.length);
      this.#functions.set(id, fn);
      keepFunctionMetrics(id);
    }
    this.#functionsReady = true;
    for (const l of this.#locals.values()) missing.add(l.fnId);
    for (const id of missing) {
      if (!this.#functions.has(id)) void this.#checkDeleted(id);
    }
  }

  #functionEvent(ev: WatchEvent): void {
    if (ev.type === 'put') {
      const fn = parse<FunctionRecord>(ev.kv.value);
      if (!fn) return;
      const id = ev.kv.key.slice(KEYS.functions.length);
      const prev = this.#functions.get(id);
      this.#functions.set(id, fn);
      keepFunctionMetrics(id);
      if (prev && instanceConfigKey(prev) !== instanceConfigKey(fn)) this.#dropTemplates(id, [instanceConfigKey(fn)]);
      return;
    }
    const fnId = ev.key.slice(KEYS.functions.length);
    this.#functions.delete(fnId);
    this.#stopFunction(fnId);
  }

  /** Snapshot templates of a function's older versions (or all of them) go with it. */
  #dropTemplates(fnId: string, keep: string[]): void {
    for (const [, rt] of this.#core.runtimes) {
      rt.snapshots?.removeTemplates(fnId, keep).catch((err: unknown) => this.#d.logger.warn({ err, fnId }, 'could not remove snapshot templates'));
    }
  }

  #recordPut(kv: KeyValue): void {
    const rec = parse<InstanceRecord>(kv.value);
    if (rec) this.#records.set(kv.key, rec);
  }

  /** The watch does not know the function: make sure it is really gone before stopping anything. */
  async #checkDeleted(fnId: string): Promise<void> {
    try {
      if (!(await this.#d.store.get(KEYS.function(fnId)))) this.#stopFunction(fnId);
    } catch (err) {
      this.#d.logger.warn({ err, fnId }, 'could not check whether a function still exists');
    }
  }

  /** A deleted function's instances go at once (no drain wait: nobody can call it any more). */
  #stopFunction(fnId: string): void {
    let any = false;
    for (const l of this.#locals.values()) {
      if (l.fnId !== fnId || (l.inst.state !== 'ready' && l.inst.state !== 'draining')) continue;
      any = true;
      metrics.scaleEvents.inc({ function_id: fnId, direction: 'down' });
      this.#system(l, 'stopping instance: function deleted');
      void this.#stopInstance(l);
    }
    if (any) this.#d.logger.info({ fnId }, 'function deleted: stopping its instances');
    this.#core.logs.function.drop(fnId);
    this.#dropTemplates(fnId, []);
    // Its series (instances gauge, spawns, deaths, scale events...) leave /metrics with it.
    forgetFunctionMetrics(fnId);
  }

  // ---------------------------------------------------------------- provisioning

  #used(): { instances: number; memoryMb: number; vcpu: number } {
    return this.#core.ledger.used();
  }

  #fits(fn: FunctionRecord): boolean {
    return this.#core.ledger.fits({ memoryMb: fn.memory_mb, vcpu: fn.vcpu });
  }

  /** Wait `ms` of clock time, or less when capacity frees up or the agent stops. */
  async #pause(ms: number): Promise<void> {
    let wake!: () => void;
    const woken = new Promise<void>((resolve) => this.#wakers.add((wake = resolve)));
    await Promise.race([this.#d.clock.sleep(ms, this.#stopAc.signal).catch(() => undefined), woken]);
    this.#wakers.delete(wake);
  }

  #poke(): void {
    for (const w of this.#wakers) w();
  }

  async #runTakeLoop(sandbox: SandboxKind): Promise<void> {
    const { queue, logger, config } = this.#d;
    const topic = provisionTopic(sandbox);
    while (this.#running) {
      // A full agent still takes jobs: it evicts idle instances, hands the job on, or answers "no capacity".
      if (this.#starts.size >= config.maxConcurrentStarts) {
        await this.#pause(NO_CAPACITY_BACKOFF_MS);
        continue;
      }
      let job: Job<ProvisionJob> | undefined;
      try {
        job = await queue.take<ProvisionJob>(topic, this.#id, { waitMs: 1000, visibilityMs: config.jobVisibilityMs });
      } catch (err) {
        if (!this.#running) break;
        logger.warn({ err }, 'provision queue take failed');
        await this.#pause(1000);
        continue;
      }
      if (!job) continue;
      if (!this.#running) {
        await queue.release(job).catch(() => undefined);
        break;
      }
      let verdict: 'started' | 'done' | 'retry';
      try {
        verdict = await this.#admit(job, sandbox);
      } catch (err) {
        logger.error({ err, job: job.id }, 'could not handle a provision job; given back');
        await queue.release(job).catch(() => undefined);
        verdict = 'retry';
      }
      if (verdict === 'retry') await this.#pause(NO_CAPACITY_BACKOFF_MS);
    }
  }

  /**
   * Decide on a job (sequentially, so capacity is reserved before the next take) and start the
   * instance in the background.
   */
  async #admit(job: Job<ProvisionJob>, sandbox: SandboxKind): Promise<'started' | 'done' | 'retry'> {
    const { queue, store, logger, clock } = this.#d;
    const takenAt = clock.now();
    const p = job.payload;
    if (!p || typeof p.function_id !== 'string' || typeof p.request_id !== 'string') {
      logger.warn({ job: job.id }, 'dropping a malformed provision job');
      await queue.ack(job).catch(() => undefined);
      return 'done';
    }
    let kv: KeyValue | undefined;
    try {
      kv = await store.get(KEYS.function(p.function_id));
    } catch (err) {
      logger.warn({ err, fnId: p.function_id }, 'store unavailable while reading a function; job given back');
      await queue.release(job).catch(() => undefined);
      return 'retry';
    }
    const fn = kv ? parse<FunctionRecord>(kv.value) : undefined;
    if (!fn) {
      await this.#writeResult(p, { ok: false, instance_id: null, error: 'function deleted' });
      await queue.ack(job).catch(() => undefined);
      return 'done';
    }
    const configKey = instanceConfigKey(fn);
    // The sandbox is part of the config key: a job from this topic for another sandbox is outdated too.
    if (p.config_key !== configKey || fn.sandbox !== sandbox) {
      // The function changed after the job was queued; whoever wants the new version asks again.
      logger.debug({ fnId: fn.id, job: job.id }, 'dropping a provision job for an outdated config');
      await queue.ack(job).catch(() => undefined);
      return 'done';
    }
    const evicting: Promise<void>[] = [];
    if (!this.#fits(fn)) {
      const victims = this.#evictionPlan(fn);
      if (!victims) return this.#noRoom(job, fn);
      for (const v of victims) {
        metrics.evictions.inc({ function_id: v.fnId });
        metrics.scaleEvents.inc({ function_id: v.fnId, direction: 'down' });
        evicting.push(this.#drain(v, `evicted (idle) to make room for ${fn.name}`, this.#d.config.drainTimeoutMs));
      }
      logger.info({ fnId: fn.id, evicted: victims.map((v) => v.id) }, 'evicting idle instances to place a cold start');
    }
    const l = this.#newLocal({ id: newId('inst', clock.now()), sandbox, fn, configKey, startedAt: clock.now(), adopted: false });
    const task = this.#provision(job, fn, l, takenAt, evicting).finally(() => {
      this.#starts.delete(task);
      this.#poke();
    });
    this.#starts.add(task);
    return 'started';
  }

  /**
   * Idle instances of other functions (least recently used first, idle at least evictIdleMs, not
   * below their function's min_instances) whose capacity, with what is free, places `fn`;
   * undefined when that is not enough. `idleMs` 0: what could be freed once the grace has passed.
   */
  #evictionPlan(fn: FunctionRecord, idleMs = this.#d.config.evictIdleMs): Local[] | undefined {
    const { clock, config } = this.#d;
    const c = config.capacity;
    const u = this.#used();
    const need = { memoryMb: fn.memory_mb, vcpu: fn.vcpu };
    const free = { instances: c.instances - u.instances, memoryMb: c.memoryMb - u.memoryMb, vcpu: c.vcpu - u.vcpu };
    const enough = (): boolean => free.instances >= 1 && free.memoryMb >= need.memoryMb && free.vcpu >= need.vcpu;
    if (need.memoryMb > c.memoryMb || need.vcpu > c.vcpu) return undefined;
    const now = clock.now();
    const ready = this.#readyCounts();
    const victims: Local[] = [];
    const idle = [...this.#locals.values()]
      .filter((l) => l.inst.state === 'ready' && l.inflight + l.external === 0 && l.fnId !== fn.id && now - l.lastActiveAt >= idleMs)
      .sort((a, b) => a.lastActiveAt - b.lastActiveAt);
    for (const l of idle) {
      if (enough()) break;
      const min = this.#functions.get(l.fnId)?.min_instances ?? 0;
      const left = ready.get(l.fnId) ?? 0;
      if (left <= min) continue;
      ready.set(l.fnId, left - 1);
      victims.push(l);
      free.instances++;
      free.memoryMb += l.memoryMb;
      free.vcpu += l.vcpu;
    }
    return enough() ? victims : undefined;
  }

  /** Ready instances per function across the cluster (ours from local state). */
  #readyCounts(): Map<string, number> {
    const m = new Map<string, number>();
    for (const l of this.#locals.values()) if (l.inst.state === 'ready') m.set(l.fnId, (m.get(l.fnId) ?? 0) + 1);
    for (const rec of this.#records.values()) {
      if (rec.agent_id !== this.#id && rec.status === 'ready') m.set(rec.function_id, (m.get(rec.function_id) ?? 0) + 1);
    }
    return m;
  }

  /** What idle instances could be evicted to free (published in the agent record for placement decisions). */
  #evictable(): Resources {
    const { clock, config } = this.#d;
    const now = clock.now();
    const ready = this.#readyCounts();
    const r = { ...NO_RESOURCES };
    for (const l of this.#locals.values()) {
      if (l.inst.state !== 'ready' || l.inflight + l.external > 0 || now - l.lastActiveAt < config.evictIdleMs) continue;
      const left = ready.get(l.fnId) ?? 0;
      if (left <= (this.#functions.get(l.fnId)?.min_instances ?? 0)) continue;
      ready.set(l.fnId, left - 1);
      r.instances++;
      r.memory_mb += l.memoryMb;
      r.vcpu += l.vcpu;
    }
    return r;
  }

  /**
   * A job this agent cannot place even by evicting: give it back (to the tail of the queue) while
   * instances here become evictable in a moment or another agent's record says it has room
   * (bounded by deliveries), else answer "no capacity" at once so the waiting requests get a 503
   * instead of a timeout, and the queue moves on to other functions' jobs.
   */
  async #noRoom(job: Job<ProvisionJob>, fn: FunctionRecord): Promise<'retry' | 'done'> {
    const { queue, store, logger, config } = this.#d;
    if (job.deliveries < MAX_CAPACITY_BOUNCES) {
      // Room here in a moment (idle instances within their grace), or on another agent by its record.
      let retry = this.#evictionPlan(fn, 0) !== undefined;
      if (!retry) {
        try {
          const agents = (await store.list(KEYS.agents)).kvs.map((kv) => parse<AgentRecord>(kv.value)).filter((a): a is AgentRecord => a !== undefined);
          retry = placement(agents, fn, this.#id).now;
        } catch {
          retry = true; // store down: give it back, the delivery bound ends the bouncing
        }
      }
      if (retry) {
        await queue.release(job).catch(() => undefined);
        return 'retry';
      }
    }
    const c = config.capacity;
    const u = this.#used();
    const error = `no agent has room for an instance of "${fn.name}" (${fn.memory_mb} MB, ${fn.vcpu} vCPU) right now; this agent uses ${u.instances}/${c.instances} instances, ${u.memoryMb}/${c.memoryMb} MB, ${u.vcpu}/${c.vcpu} vCPU and nothing idle can be evicted`;
    metrics.noCapacity.inc({ function_id: fn.id });
    logger.warn({ fnId: fn.id, job: job.id }, 'no capacity for a provision job');
    await this.#writeResult(job.payload, { ok: false, instance_id: null, error, error_code: 'AETHER_ERR_NO_CAPACITY' });
    await queue.ack(job).catch(() => undefined);
    return 'done';
  }

  async #provision(job: Job<ProvisionJob>, fn: FunctionRecord, l: Local, takenAt: number, evicting: Promise<void>[] = []): Promise<void> {
    const { queue, clock, logger, config } = this.#d;
    const req = job.payload;
    // Keep the job invisible to other agents while this start is in progress.
    let extendTimer: TimerHandle | undefined;
    const every = Math.max(100, Math.floor(config.jobVisibilityMs / 3));
    const extend = (): void => {
      extendTimer = clock.setTimeout(() => {
        queue.extend(job, config.jobVisibilityMs).catch((err: unknown) => logger.warn({ err, job: job.id }, 'could not extend a provision job'));
        extend();
      }, every);
    };
    extend();
    let registered = false;
    try {
      await Promise.all(evicting); // their capacity is ours once they are gone
      const cache = this.#cache;
      if (!cache) throw new AetherError('AETHER_ERR_INTERNAL', 'agent not started');
      const entrypoint = fn.entrypoint || defaultEntrypoint(fn.runtime);
      l.code = await cache.acquire({ code_path: fn.code_path, code_sha256: fn.code_sha256, entrypoint });
      try {
        await access(join(l.code.dir, entrypoint));
      } catch {
        throw new AetherError('AETHER_ERR_ENTRYPOINT_MISSING', `the code does not contain the entrypoint ${entrypoint}`);
      }
      const spec: InstanceSpec = {
        instanceId: l.id,
        owner: { kind: 'function', id: fn.id, name: fn.name },
        artifact: { kind: 'code', dir: l.code.dir, runtime: fn.runtime, entrypoint },
        env: { ...fn.env_vars },
        resources: { memoryMb: fn.memory_mb, vcpu: fn.vcpu, pidsMax: config.pidsMax },
        listen: { port: fn.port },
        version: l.configKey,
      };
      const rt = await this.#core.launch(l.inst, spec, config.startupTimeoutMs, this.#stopAc.signal);
      if (this.#stopAc.signal.aborted) throw this.#stopAc.signal.reason;

      const now = clock.now();
      l.inst.to('ready');
      await this.#register(l, rt.endpoint, now);
      registered = true;
      metrics.vmSpawns.inc({ function_id: fn.id, agent_id: this.#id, status: 'success' });
      metrics.vmSpawnDuration.observe({ function_id: fn.id }, (now - takenAt) / 1000);
      this.#system(l, `instance ready in ${now - takenAt} ms`);
      await this.#writeResult(req, { ok: true, instance_id: l.id, error: null });
      await queue.ack(job).catch((err: unknown) => logger.warn({ err, job: job.id }, 'could not ack a provision job'));
      logger.info({ fnId: fn.id, instance: l.id, ms: now - takenAt }, 'instance ready');
      // It may have died while being registered: #onExit saw state 'ready' and cleaned up.
    } catch (err) {
      if (extendTimer) clock.clearTimeout(extendTimer);
      extendTimer = undefined;
      if (registered) return;
      const stopping = this.#stopAc.signal.aborted;
      const retryable = stopping || (l.inst.state === 'ready' && !registered);
      // (it may have died meanwhile: #onExit tore it down already)
      if (l.inst.state === 'starting' || l.inst.state === 'ready') l.inst.to('failed');
      await this.#cleanupFailed(l);
      if (retryable) {
        // Agent shutting down or the store refused the registration: another agent should try.
        logger.warn({ err, fnId: fn.id, job: job.id }, 'provision interrupted; job given back');
        await queue.release(job).catch(() => undefined);
        return;
      }
      // The reason alone (exit code, signal, OOM, timeout): anonymous invokers see it. The output
      // travels separately, once, to invocation records and the authenticated API.
      const reason = failureReason(err);
      this.#system(l, `start failed: ${reason}`);
      metrics.vmSpawns.inc({ function_id: fn.id, agent_id: this.#id, status: 'error' });
      const tail = l.inst.recent.filter((s) => !s.startsWith('[system] start failed:'));
      logger.warn({ fnId: fn.id, instance: l.id, reason }, 'instance failed to start');
      await this.#writeResult(req, { ok: false, instance_id: null, error: reason, output: tail.length > 0 ? tail.join('\n') : null });
      await queue.ack(job).catch((err2: unknown) => logger.warn({ err: err2, job: job.id }, 'could not ack a provision job'));
    } finally {
      if (extendTimer) clock.clearTimeout(extendTimer);
    }
  }

  /** Tear down a start that did not make it; waits for the program's last lines to arrive. */
  async #cleanupFailed(l: Local): Promise<void> {
    const rt = l.inst.rt;
    if (rt) {
      await this.#core.halt(l.inst, this.#d.config.stopGraceMs);
      if (l.inst.launched) await rt.exited.catch(() => undefined);
      // stdout/stderr can trail the exit by a tick.
      await new Promise((r) => setImmediate(r));
    }
    this.#forget(l);
  }

  async #writeResult(job: ProvisionJob, r: Pick<ProvisionResult, 'ok' | 'instance_id' | 'error' | 'error_code' | 'output'>): Promise<void> {
    const { store, clock, logger, config } = this.#d;
    const result: ProvisionResult = { request_id: job.request_id, function_id: job.function_id, ...r };
    const key = KEYS.provisionResult(job.request_id);
    const lease = this.#core.leaseId;
    try {
      await store.put(key, JSON.stringify(result), lease ? { lease } : {});
    } catch (err) {
      logger.warn({ err, key }, 'could not write a provision result');
      return;
    }
    const t = clock.setTimeout(() => {
      this.#resultTimers.delete(t);
      void store.delete(key).catch(() => undefined);
    }, config.resultTtlMs);
    this.#resultTimers.add(t);
  }

  // ---------------------------------------------------------------- instance lifecycle

  /** A line from the agent itself about an instance. */
  #system(l: Local, text: string): void {
    this.#core.system(l.inst, text);
  }

  /**
   * The program just exited (its sandbox is still being cleaned up): before anything else, stop
   * routing to it here (forward refuses it) and in every gateway (its key goes).
   */
  #onGone(l: Local): void {
    this.#routableChanged();
    if (l.inst.state !== 'ready' && l.inst.state !== 'draining') return;
    this.#deleteRecord(l).catch((err: unknown) => this.#d.logger.warn({ err, instance: l.id }, 'could not delete the key of a dead instance'));
  }

  #onExit(l: Local, info: ExitInfo): void {
    // Starting: #provision sees the failure. Stopping/stopped: we asked for it.
    if (l.inst.state !== 'ready' && l.inst.state !== 'draining') return;
    const oom = info.reason?.includes('oom') ?? false;
    this.#system(l, `instance exited: ${describeExit(info)}`);
    metrics.vmDeaths.inc({ function_id: l.fnId, reason: oom ? 'oom' : 'unexpected' });
    this.#d.logger.warn({ fnId: l.fnId, instance: l.id, exit: info }, 'instance exited unexpectedly');
    const draining = l.inst.state === 'draining';
    l.inst.to('failed');
    // Deregister at once so no gateway routes another request to it.
    this.#deleteRecord(l).catch((err: unknown) => this.#d.logger.warn({ err, instance: l.id }, 'could not delete the key of a dead instance'));
    for (const w of l.idleWaiters.splice(0)) w();
    // A draining instance's drain now proceeds to its teardown; otherwise reap it here.
    if (!draining) l.stopped = this.#teardown(l);
  }

  /** Mark draining, wait for in-flight requests (bounded), then stop. */
  #drain(l: Local, why: string, timeoutMs: number): Promise<void> {
    if (l.inst.state !== 'ready') return l.stopped ?? Promise.resolve();
    l.inst.to('draining');
    this.#system(l, `draining instance: ${why}`);
    if (l.record) {
      const rec: InstanceRecord = { ...l.record, status: 'draining' };
      l.record = rec;
      this.#putRecord(l, rec).catch((err: unknown) => this.#d.logger.warn({ err, instance: l.id }, 'could not mark an instance draining'));
    }
    l.stopped = (async () => {
      if ((l.inflight + l.external > 0 || l.externalRouted) && timeoutMs > 0) {
        const idle = new Promise<void>((resolve) => l.idleWaiters.push(resolve));
        const ac = new AbortController();
        await Promise.race([idle, this.#d.clock.sleep(timeoutMs, ac.signal).catch(() => undefined)]);
        ac.abort();
      }
      await this.#teardown(l);
    })();
    return l.stopped;
  }

  /** Stop now, without waiting for in-flight requests. */
  #stopInstance(l: Local): Promise<void> {
    if (l.inst.state === 'ready') {
      l.inst.to('stopping');
      l.stopped = this.#teardown(l);
    } else if (l.inst.state === 'draining') {
      for (const w of l.idleWaiters.splice(0)) w(); // cut the drain wait short
    }
    return l.stopped ?? Promise.resolve();
  }

  async #teardown(l: Local): Promise<void> {
    if (l.inst.state === 'stopped') return;
    if (l.inst.state !== 'stopping') l.inst.to('stopping');
    await this.#deleteRecord(l).catch((err: unknown) => this.#d.logger.warn({ err, instance: l.id }, 'could not delete an instance key'));
    const died = l.inst.exit !== undefined;
    await this.#core.halt(l.inst, died ? 0 : this.#d.config.stopGraceMs);
    if (!died) this.#system(l, 'instance stopped');
    this.#forget(l);
  }

  /** Release everything the instance held (capacity, code, pooled connections, gauge). */
  #forget(l: Local): void {
    if (l.inst.state === 'stopped') return;
    this.#locals.delete(l.id);
    // A request for it may still be on its way (a proxy's view lags): the agent retries it on a sibling.
    this.#goneFn.set(l.id, l.fnId);
    if (this.#goneFn.size > 1000) this.#goneFn.delete(this.#goneFn.keys().next().value as string);
    if (l.counted) {
      l.counted = false;
      metrics.instancesActive.dec({ function_id: l.fnId, agent_id: this.#id });
    }
    l.code?.release();
    l.code = undefined;
    for (const w of l.idleWaiters.splice(0)) w();
    this.#core.release(l.inst);
    this.#poke();
  }

  // ---------------------------------------------------------------- scale-down

  #scheduleScale(): void {
    if (!this.#running) return;
    this.#scaleTimer = this.#d.clock.setTimeout(() => {
      this.#scaleTimer = undefined;
      this.#scaleTick();
      this.#scheduleScale();
    }, this.#d.config.scaleIntervalMs);
  }

  #scaleTick(): void {
    if (this.#scaleTicking || !this.#running) return;
    this.#scaleTicking = true;
    try {
      const { clock, config } = this.#d;
      const now = clock.now();
      const byFn = new Map<string, Local[]>();
      for (const l of this.#locals.values()) {
        if (l.inst.state !== 'ready') continue;
        const list = byFn.get(l.fnId);
        if (list) list.push(l);
        else byFn.set(l.fnId, [l]);
      }
      for (const [fnId, locals] of byFn) {
        const fn = this.#functions.get(fnId);
        if (!fn) {
          if (this.#functionsReady) void this.#checkDeleted(fnId);
          continue;
        }
        const current = instanceConfigKey(fn);
        // Ready instances of this function on every agent (ours from local state, it is fresher).
        const ready: { id: string; configKey: string }[] = locals.map((l) => ({ id: l.id, configKey: l.configKey }));
        for (const rec of this.#records.values()) {
          if (rec.function_id === fnId && rec.agent_id !== this.#id && rec.status === 'ready') ready.push({ id: rec.instance_id, configKey: rec.config_key });
        }
        const hasCurrent = ready.some((r) => r.configKey === current);
        let candidates = locals;
        let totalReady = ready.length;
        if (hasCurrent) {
          for (const l of locals) {
            if (l.configKey !== current) {
              metrics.scaleEvents.inc({ function_id: fnId, direction: 'down' });
              void this.#drain(l, 'replaced by an instance of the updated function', config.drainTimeoutMs);
            }
          }
          candidates = locals.filter((l) => l.configKey === current);
          totalReady = ready.filter((r) => r.configKey === current).length;
        }
        if (candidates.length === 0) continue;
        const loads: InstanceLoad[] = candidates.map((l) => ({ id: l.id, inflight: l.inflight + l.external, lastActiveAt: l.lastActiveAt }));
        for (const id of planScaleDown(policyOf(fn), { now, instances: loads, totalReady })) {
          const l = this.#locals.get(id);
          if (!l) continue;
          metrics.scaleEvents.inc({ function_id: fnId, direction: 'down' });
          void this.#drain(l, `idle for ${Math.round((now - l.lastActiveAt) / 1000)} s`, config.drainTimeoutMs);
        }
      }
      this.#core.setEvictable(this.#evictable());
    } catch (err) {
      this.#d.logger.error({ err }, 'scale-down pass failed');
    } finally {
      this.#scaleTicking = false;
    }
  }

  // ---------------------------------------------------------------- forwarding

  /**
   * Forward to `instanceId`; when nothing of the request reached it (gone, or it no longer accepts)
   * and nothing was read or answered yet, to another ready instance of the same function here.
   * Callers that could not reach any (AETHER_ERR_UPSTREAM_UNREACHED) retry elsewhere themselves:
   * the Node gateway does; HAProxy's hop cannot tell this answer from a function's 503, so the
   * agent's own retry is what spares those requests.
   */
  async forward(
    instanceId: string,
    req: IncomingMessage,
    res: ServerResponse,
    target: AgentForwardTarget,
    opts: AgentForwardOptions = {},
  ): Promise<{ status: number }> {
    const tried = new Set<string>();
    for (let id: string | undefined = instanceId; ; ) {
      tried.add(id);
      try {
        return await this.#forwardOnce(id, req, res, target, opts);
      } catch (err) {
        const unreached = err instanceof AetherError && err.code === 'AETHER_ERR_UPSTREAM_UNREACHED';
        const fnId: string | undefined = this.#locals.get(id)?.fnId ?? this.#goneFn.get(id);
        id = unreached && fnId !== undefined && !req.readableDidRead && !res.headersSent && !opts.signal?.aborted ? this.#anotherReady(fnId, tried) : undefined;
        if (id === undefined) throw err;
      }
    }
  }

  /** The least loaded ready instance of `fnId` here, not in `tried` (current config first). */
  #anotherReady(fnId: string, tried: ReadonlySet<string>): string | undefined {
    const fn = this.#functions.get(fnId);
    const current = fn ? instanceConfigKey(fn) : undefined;
    const rank = (x: Local): [number, number] => [current !== undefined && x.configKey !== current ? 1 : 0, x.inflight + x.external];
    let best: Local | undefined;
    for (const l of this.#locals.values()) {
      if (l.fnId !== fnId || tried.has(l.id) || l.inst.state !== 'ready' || !reachable(l)) continue;
      const [s, load] = rank(l);
      const b = best ? rank(best) : undefined;
      if (!b || s < b[0] || (s === b[0] && load < b[1])) best = l;
    }
    return best?.id;
  }

  async #forwardOnce(
    instanceId: string,
    req: IncomingMessage,
    res: ServerResponse,
    target: AgentForwardTarget,
    opts: AgentForwardOptions = {},
  ): Promise<{ status: number }> {
    const l = this.#locals.get(instanceId);
    const rt = l && reachable(l);
    if (!l || !rt) {
      throw new AetherError('AETHER_ERR_UPSTREAM_UNREACHED', `instance ${instanceId} is not running on agent ${this.#id}`);
    }
    l.inflight++;
    try {
      const t = target.headers ? { endpoint: rt.endpoint, path: target.path, headers: target.headers } : { endpoint: rt.endpoint, path: target.path };
      return await proxyForward(req, res, t, opts);
    } catch (err) {
      // Nothing reached the program (it is not listening any more): one coded signal for the caller.
      if (err instanceof ProxyError && err.phase === 'connect') throw new AetherError('AETHER_ERR_UPSTREAM_UNREACHED', `instance ${instanceId}: ${err.message}`, { cause: err });
      throw err;
    } finally {
      l.inflight--;
      l.lastActiveAt = this.#d.clock.now();
      if (l.inflight + l.external === 0 && !l.externalRouted) for (const w of l.idleWaiters.splice(0)) w();
    }
  }

  /** The instances forwards go to now (ready or draining, program alive), for the agent's own proxy. */
  routableInstances(): { id: string; endpoint: Endpoint }[] {
    const out: { id: string; endpoint: Endpoint }[] = [];
    for (const l of this.#locals.values()) {
      const rt = reachable(l);
      if (rt) out.push({ id: l.id, endpoint: rt.endpoint });
    }
    return out;
  }

  /** `listener` after every change of routableInstances() (called synchronously: coalesce there). */
  onRoutableChange(listener: () => void): () => void {
    this.#routableListeners.add(listener);
    return () => this.#routableListeners.delete(listener);
  }

  #routableChanged(): void {
    for (const f of this.#routableListeners) f();
  }

  noteExternalLoad(instanceId: string, inflight: number, active: boolean, routed: boolean): void {
    const l = this.#locals.get(instanceId);
    if (!l) return;
    l.external = inflight;
    l.externalRouted = routed;
    if (active || inflight > 0) l.lastActiveAt = this.#d.clock.now();
    if (l.inflight + l.external === 0 && !routed) for (const w of l.idleWaiters.splice(0)) w();
  }

  // ---------------------------------------------------------------- logs + introspection

  tailLogs(fnId: string, n: number): LogEntry[] {
    return this.#core.logs.function.tail(fnId, n);
  }

  followLogs(fnId: string, onEntry: (e: LogEntry) => void): () => void {
    return this.#core.logs.function.follow(fnId, onEntry);
  }

  localInstances(): LocalInstanceInfo[] {
    return [...this.#locals.values()].map((l) => ({ instanceId: l.id, functionId: l.fnId, inflight: l.inflight, state: l.inst.state }));
  }
}

/**
 * Its sandbox, if forwards may go to it: ready, or draining (a gateway's view may lag by a moment,
 * so a draining instance still serves what reaches it), and its program not gone.
 */
function reachable(l: Local): RuntimeInstance | undefined {
  const rt = l.inst.rt;
  return rt && !l.inst.gone && (l.inst.state === 'ready' || l.inst.state === 'draining') ? rt : undefined;
}

function policyOf(fn: FunctionRecord): ScalePolicy {
  return {
    min_instances: fn.min_instances,
    max_instances: fn.max_instances,
    concurrency_target: fn.concurrency_target,
    scale_down_after_s: fn.scale_down_after_s,
    scale_to_zero_after_s: fn.scale_to_zero_after_s,
  };
}

function parse<T>(s: string): T | undefined {
  try {
    return JSON.parse(s) as T;
  } catch {
    return undefined;
  }
}
