import { hostname } from 'node:os';
import { AetherError, metrics, type Clock, type Logger } from '../../core/index.ts';
import { closeEndpoint } from '../../proxy/index.ts';
import type { AdoptableInstance, InstanceSpec, LogLine, Runtime, RuntimeInstance } from '../../runtime/index.ts';
import { KEYS, type AgentRecord, type Resources, type SandboxKind } from '../../spec/index.ts';
import { LeaseKeeper, type Store } from '../../store/index.ts';
import { LogStore, type LogEntry } from '../logs.ts';
import type { AgentConfig } from '../types.ts';
import { CoreInstance, RECENT_LINES, type InstanceHooks } from './instance.ts';
import { CapacityLedger } from './ledger.ts';

const NO_RESOURCES: Resources = { instances: 0, memory_mb: 0, vcpu: 0 };

/** An instance an earlier run of this agent left running, offered to the controller of its kind. */
export interface Leftover extends AdoptableInstance {
  sandbox: SandboxKind;
}

/**
 * A workload controller (functions, services) on top of the core: it decides what runs; the core
 * runs it. The core calls prepare() (load what is wanted), then offers each leftover instance of
 * the controller's kind to adopt(), stops what nobody took, then calls run().
 */
export interface WorkloadController {
  readonly kind: 'function' | 'service';
  prepare(): Promise<void>;
  /** Take over a leftover (the core's adopt()) and resolve true, or resolve false to have it stopped. */
  adopt(found: Leftover): Promise<boolean>;
  run(): void | Promise<void>;
  /** A new agent lease (the first, or after a store outage): re-register what it owns. */
  onLease?(lease: string): Promise<void>;
  stop(): Promise<void>;
}

export interface AgentCoreDeps {
  store: Store;
  clock: Clock;
  logger: Logger;
  config: AgentConfig;
  runtimes: Partial<Record<SandboxKind, Runtime>>;
}

/**
 * The node's core: the agent lease and record, ONE capacity ledger for everything running here,
 * the runtimes, instance supervision (launch, wait ready, exit watching, stop, adoption) and the
 * logs. Workload controllers ask it for instances; it owns none of their policy.
 */
export class AgentCore {
  readonly id: string;
  readonly ledger: CapacityLedger;
  /** Logs per owner: function id, or service name. */
  readonly logs = { function: new LogStore(), service: new LogStore() };
  /** The runtime of each sandbox kind offered, in a stable order. */
  readonly runtimes: readonly [SandboxKind, Runtime][];
  readonly #d: AgentCoreDeps;
  readonly #instances = new Map<string, CoreInstance>();
  readonly #controllers: WorkloadController[] = [];
  #keeper: LeaseKeeper | undefined;
  #agentWrite: Promise<void> | undefined;
  #agentDirty = false;
  #evictable: Resources = NO_RESOURCES;
  readonly #startedAt: string;
  readonly #stopAc = new AbortController();
  /** Called when capacity is released (wakes loops waiting for room). */
  readonly #onFree = new Set<() => void>();
  #started = false;

  constructor(d: AgentCoreDeps) {
    this.#d = d;
    this.id = d.config.agentId;
    const rts = d.runtimes;
    this.runtimes = (['process', 'qemu', 'firecracker'] as const).flatMap((k) => (rts[k] ? [[k, rts[k]] as [SandboxKind, Runtime]] : []));
    if (this.runtimes.length === 0) throw new AetherError('AETHER_ERR_INTERNAL', 'an agent needs at least one runtime');
    this.ledger = new CapacityLedger(d.config.capacity);
    this.#startedAt = new Date(d.clock.now()).toISOString();
  }

  get config(): AgentConfig {
    return this.#d.config;
  }

  get leaseId(): string | undefined {
    return this.#keeper?.leaseId;
  }

  /** Aborts when the agent stops. */
  get stopping(): AbortSignal {
    return this.#stopAc.signal;
  }

  runtime(kind: SandboxKind): Runtime | undefined {
    return this.runtimes.find(([k]) => k === kind)?.[1];
  }

  /** Add a workload controller; before start() to take part in adoption. */
  register(c: WorkloadController): void {
    this.#controllers.push(c);
  }

  get started(): boolean {
    return this.#started;
  }

  /**
   * Lease and record first, then every controller loads what it wants, leftovers of an earlier run
   * (a crash, kill -9, an upgrade) are offered to the controller of their kind, the runtimes stop
   * what nobody adopted, and the controllers run.
   */
  async start(): Promise<void> {
    if (this.#started) throw new AetherError('AETHER_ERR_INTERNAL', 'agent already started');
    this.#started = true;
    const { store, clock, logger, config } = this.#d;
    this.#keeper = new LeaseKeeper({ store, ttlMs: config.leaseTtlMs, clock, logger, onLease: (lease) => this.#onLease(lease) });
    await this.#keeper.start();
    for (const c of this.#controllers) await c.prepare();
    for (const [sandbox, runtime] of this.runtimes) {
      if (!runtime.adoption) continue;
      let found: AdoptableInstance[];
      try {
        found = await runtime.adoption.list();
      } catch (err) {
        logger.warn({ err, sandbox }, 'could not list instances to adopt');
        continue;
      }
      for (const a of found) {
        const c = this.#controllers.find((x) => x.kind === a.spec.owner.kind);
        const taken = c ? await c.adopt({ ...a, sandbox }).catch((err: unknown) => (logger.warn({ err, instance: a.spec.instanceId }, 'adoption failed'), false)) : false;
        if (!taken) logger.info({ instance: a.spec.instanceId, owner: a.spec.owner }, 'not adopting a leftover instance; it is stopped');
      }
    }
    for (const [, rt] of this.runtimes) await rt.cleanupLeftovers();
    this.publish();
    for (const c of this.#controllers) await c.run();
  }

  /** Stop the controllers (they stop their instances), then give up the record and the lease. */
  async stop(): Promise<void> {
    const { store, logger } = this.#d;
    this.#stopAc.abort(new AetherError('AETHER_ERR_UNAVAILABLE', 'agent is stopping'));
    this.#wake();
    for (const c of [...this.#controllers].reverse()) await c.stop().catch((err: unknown) => logger.warn({ err, kind: c.kind }, 'a workload controller did not stop cleanly'));
    await this.#agentWrite;
    await store.delete(KEYS.agent(this.id)).catch(() => undefined);
    await this.#keeper?.stop({ revoke: true }).catch((err: unknown) => logger.warn({ err }, 'could not revoke the agent lease'));
  }

  // ---------------------------------------------------------------- lease + registration

  async #onLease(lease: string): Promise<void> {
    await this.#d.store.put(KEYS.agent(this.id), JSON.stringify(this.agentRecord()), { lease });
    await Promise.all(this.#controllers.map((c) => c.onLease?.(lease)));
  }

  agentRecord(): AgentRecord {
    const { config } = this.#d;
    const used = this.ledger.used();
    const fns = this.ledger.used('function');
    const services = new Set(this.ledger.charges().flatMap((c) => (c.kind === 'service' ? [c.owner] : [])));
    return {
      agent_id: this.id,
      url: config.url,
      hostname: hostname(),
      capacity: { instances: config.capacity.instances, memory_mb: config.capacity.memoryMb, vcpu: config.capacity.vcpu },
      used: { instances: used.instances, memory_mb: used.memoryMb, vcpu: used.vcpu },
      evictable: { ...this.#evictable },
      functions_used: { instances: fns.instances, memory_mb: fns.memoryMb, vcpu: fns.vcpu },
      services_charged: [...services].sort(),
      isolation: (this.runtimes.find(([k]) => k === 'process') ?? this.runtimes[0])?.[1].isolation ?? 'none',
      sandboxes: this.runtimes.map(([k]) => k),
      started_at: this.#startedAt,
      node_type: config.nodeType ?? null,
      router_url: config.routerUrl ?? null,
    };
  }

  /** What idle function instances could free (set by the functions controller); published on change. */
  setEvictable(r: Resources): void {
    if (r.instances === this.#evictable.instances && r.memory_mb === this.#evictable.memory_mb && r.vcpu === this.#evictable.vcpu) return;
    this.#evictable = { ...r };
    this.publish();
  }

  /** Rewrite the agent record (capacity used changed); coalesces bursts into one write at a time. */
  publish(): void {
    if (this.#agentWrite) {
      this.#agentDirty = true;
      return;
    }
    const lease = this.#keeper?.leaseId;
    if (!lease || this.#stopAc.signal.aborted) return;
    this.#agentWrite = this.#d.store
      .put(KEYS.agent(this.id), JSON.stringify(this.agentRecord()), { lease })
      .then(
        () => undefined,
        (err: unknown) => this.#d.logger.warn({ err }, 'could not update the agent record'),
      )
      .finally(() => {
        this.#agentWrite = undefined;
        if (this.#agentDirty) {
          this.#agentDirty = false;
          this.publish();
        }
      });
  }

  /** Wait hook: called whenever capacity is released. Returns the unsubscribe function. */
  onCapacityFreed(fn: () => void): () => void {
    this.#onFree.add(fn);
    return () => this.#onFree.delete(fn);
  }

  #wake(): void {
    for (const w of this.#onFree) w();
  }

  // ---------------------------------------------------------------- instances

  /** Every instance on the node (function and service), not yet stopped. */
  instances(kind?: 'function' | 'service'): CoreInstance[] {
    return [...this.#instances.values()].filter((i) => !kind || i.kind === kind);
  }

  get(id: string): CoreInstance | undefined {
    return this.#instances.get(id);
  }

  /**
   * Admit an instance: charged to the ledger from now until it is stopped. The caller decided that
   * it may (ledger.fits(), evictions); `tryAdmit` for workloads that must not overcommit.
   */
  admit(o: { id: string; kind: 'function' | 'service'; owner: string; sandbox: SandboxKind; memoryMb: number; vcpu: number; startedAt?: number; adopted?: boolean; hooks?: InstanceHooks }): CoreInstance {
    if (this.#instances.has(o.id)) throw new AetherError('AETHER_ERR_CONFLICT', `instance ${o.id} exists`);
    const inst = new CoreInstance({ ...o, startedAt: o.startedAt ?? this.#d.clock.now(), adopted: o.adopted ?? false, hooks: o.hooks ?? {}, logger: this.#d.logger });
    this.#instances.set(inst.id, inst);
    this.ledger.charge({ id: inst.id, kind: inst.kind, owner: inst.owner, memoryMb: inst.memoryMb, vcpu: inst.vcpu });
    this.publish();
    return inst;
  }

  /** admit() only if it fits the ledger now; undefined (nothing charged) otherwise. */
  tryAdmit(o: Parameters<AgentCore['admit']>[0]): CoreInstance | undefined {
    if (!this.ledger.fits(o)) return undefined;
    return this.admit(o);
  }

  /**
   * Create and start the sandbox, wait until it listens (at least the runtime's floor). Rejects
   * with the reason when it exits first, times out, or the agent stops; the caller tears down.
   */
  async launch(inst: CoreInstance, spec: InstanceSpec, timeoutMs: number, signal: AbortSignal = this.#stopAc.signal): Promise<RuntimeInstance> {
    const runtime = this.runtime(inst.sandbox);
    if (!runtime) throw new AetherError('AETHER_ERR_INTERNAL', `no ${inst.sandbox} runtime on this agent`);
    const rt = await runtime.create(spec);
    this.#watch(inst, rt);
    await rt.start();
    inst.launched = true;
    await rt.waitReady(Math.max(timeoutMs, runtime.minStartupMs ?? 0), signal);
    if (inst.exit) throw new AetherError('AETHER_ERR_COLD_START_FAILED', describeExit(inst.exit));
    if (inst.gone) throw new AetherError('AETHER_ERR_COLD_START_FAILED', 'the instance exited right after it started listening');
    return rt;
  }

  /** Re-attach to a leftover instance (see start()); it is 'ready' from the start. */
  async adopt(inst: CoreInstance): Promise<RuntimeInstance> {
    const runtime = this.runtime(inst.sandbox);
    if (!runtime?.adoption) throw new AetherError('AETHER_ERR_INTERNAL', `the ${inst.sandbox} runtime cannot adopt`);
    const rt = await runtime.adoption.adopt(inst.id);
    inst.launched = true;
    this.#watch(inst, rt);
    inst.to('ready');
    this.system(inst, 'adopted by the restarted agent');
    return rt;
  }

  #watch(inst: CoreInstance, rt: RuntimeInstance): void {
    inst.rt = rt;
    rt.onLog((line) => this.line(inst, line));
    rt.onGone(() => {
      inst.gone = true;
      inst.hooks.onGone?.();
    });
    void rt.exited.then((info) => {
      inst.exit = info;
      inst.hooks.onExit?.(info);
    });
  }

  /** A line of the instance's output (or about it): into its owner's logs. */
  line(inst: CoreInstance, line: LogLine): void {
    if (line.dropped) metrics.logLinesDropped.inc({ function_id: inst.owner }, line.dropped);
    const entry: LogEntry = { time: line.time, instance_id: inst.id, stream: line.stream, text: line.text };
    this.logs[inst.kind].append(inst.owner, entry);
    inst.recent.push(line.stream === 'system' ? `[system] ${line.text}` : line.text);
    if (inst.recent.length > RECENT_LINES) inst.recent.shift();
  }

  /** A line from the agent itself about an instance. */
  system(inst: CoreInstance, text: string): void {
    this.line(inst, { time: this.#d.clock.now(), stream: 'system', text });
  }

  /** Ask its program to end (forced after graceMs) and wait for the sandbox to be gone. */
  async halt(inst: CoreInstance, graceMs: number): Promise<void> {
    await inst.rt?.stop(graceMs).catch((err: unknown) => this.#d.logger.warn({ err, instance: inst.id }, 'could not stop an instance'));
  }

  /** The sandbox is gone: release its capacity and pooled connections; the instance is stopped. */
  release(inst: CoreInstance): void {
    if (inst.state === 'stopped') return;
    if (inst.state !== 'stopping' && inst.state !== 'failed') inst.to('failed');
    inst.to('stopped');
    this.#instances.delete(inst.id);
    this.ledger.release(inst.id);
    if (inst.rt && inst.launched) void closeEndpoint(inst.rt.endpoint);
    this.publish();
    this.#wake();
  }
}

export function describeExit(e: { code: number | null; signal: string | null; reason?: string }): string {
  if (e.reason) return e.reason;
  if (e.signal) return `signal ${e.signal}`;
  return `code ${e.code ?? 'unknown'}`;
}
