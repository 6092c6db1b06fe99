import { connect } from 'node:net';
import { request } from 'node:http';
import { stat } from 'node:fs/promises';
import { AetherError, metrics, newId, silentLogger, systemClock, type Clock, type Logger, type TimerHandle } from '../../core/index.ts';
import { linkTargets } from './links.ts';
import { serviceConfigKey, type ServiceAssignment, type ServiceConfig } from '../../deploy/index.ts';
import type { Artifact, ExitInfo, InstanceSpec, Runtime } from '../../runtime/index.ts';
import { KEYS, type Endpoint, type SandboxKind, type ServiceStatusRecord } from '../../spec/index.ts';
import { LeaseKeeper, listAndWatch, type Informer, type Store } from '../../store/index.ts';
import { agentConfig } from '../types.ts';
import { AgentCore, type CoreInstance, type Leftover, type WorkloadController } from '../core/index.ts';
import type { LogEntry } from '../logs.ts';
import { initialHealth, observeHealth, type HealthPolicy, type HealthState } from './health.ts';
import { orderActions, planReconcile, type Action, type RunningService, type UpdateStrategy } from './plan.ts';

/**
 * The services controller of one agent: makes the node run what its assignment
 * (/aether/assignments/<node>) says. It watches the assignment (a change applies at once), resyncs
 * periodically (an instance that died is recreated even when nothing changed), health-checks
 * instances and restarts failing ones with backoff, honours restart requests, and reports each
 * service's state under its own lease. Decisions are the pure functions in plan.ts / health.ts.
 * Its instances are the agent core's: charged to the node's one capacity ledger (a service that
 * does not fit is reported, not started), supervised by the core, and adopted after an agent
 * restart when they still match the assignment.
 */
export interface ServiceControllerOptions {
  store: Store;
  nodeId: string;
  runtimes: Partial<Record<SandboxKind, Runtime>>;
  clock?: Clock;
  logger?: Logger;
  leaseTtlMs?: number;
  /** Periodic resync (default 5 s). */
  resyncMs?: number;
  strategy?: UpdateStrategy;
  /** How long an instance may take to listen (VM boots are slow under TCG). */
  startupTimeoutMs?: number;
  stopGraceMs?: number;
  pidsMax?: number;
  health?: Partial<HealthPolicy>;
  /**
   * The agent core whose ledger and runtimes the instances use (set later with useCore()).
   * Absent: a private core over `runtimes` with `capacity` (unlimited when not given), for a
   * controller without an agent (tests).
   */
  core?: AgentCore;
  capacity?: { vcpu: number; memoryMb: number };
}

interface Running {
  name: string;
  svc: ServiceConfig;
  configKey: string;
  inst: CoreInstance;
  state: RunningService['state'];
  health: HealthState;
  healthTimer: TimerHandle | undefined;
  restartRequest: string | null;
  startedAt: number;
  message: string | null;
}

const DEFAULT_PORT = 80;

/** Where a service listens inside its sandbox: first port forward's vm_port, else its health check port. */
export function servicePort(s: ServiceConfig): number {
  return s.port_forwards[0]?.vm_port || s.health_check?.port || DEFAULT_PORT;
}

export function describeEndpoint(e: Endpoint): string {
  return e.kind === 'tcp' ? `${e.host}:${e.port}` : `unix:${e.path}`;
}

export class ServiceController implements WorkloadController {
  readonly kind = 'service' as const;
  readonly #o: ServiceControllerOptions;
  readonly #clock: Clock;
  readonly #log: Logger;
  #core: AgentCore;
  #stopping: Promise<void> | undefined;
  /** Set by run(): before it (loading, adoption) nothing is reconciled, so nothing is started twice. */
  #live = false;
  readonly #stopAc = new AbortController();
  readonly #running = new Map<string, Running>();
  /** Restart request ids already honoured, per service. */
  readonly #restartsSeen = new Map<string, string>();
  #desired: ServiceConfig[] = [];
  /** Standalone only (no agent core): the lease statuses are written under. */
  #keeper: LeaseKeeper | undefined;
  #prepared = false;
  #informers: Informer[] = [];
  #timer: TimerHandle | undefined;
  #reconciling: Promise<void> | undefined;
  #again = false;
  #stopped = false;
  readonly #policy: HealthPolicy;
  /** Crash-loop backoff per service: no recreate before this time. */
  readonly #notBefore = new Map<string, number>();
  readonly #crashes = new Map<string, number>();
  /** A service's restart count and health backoff, carried from one instance to its replacement. */
  readonly #carry = new Map<string, { restarts: number; next_restart_at: number }>();

  constructor(o: ServiceControllerOptions) {
    this.#o = o;
    this.#clock = o.clock ?? systemClock;
    this.#log = o.logger ?? silentLogger();
    this.#policy = { retries: 3, backoff_base_ms: 1000, backoff_max_ms: 60_000, ...o.health };
    this.#core = o.core ?? privateCore(o, this.#clock, this.#log);
  }

  /** Run on an agent's core (its ledger, runtimes, adoption round): before start(). */
  useCore(core: AgentCore): void {
    if (this.#prepared) throw new AetherError('AETHER_ERR_INTERNAL', 'the services controller already started');
    this.#core = core;
  }

  /** The agent core's new lease (the first, or after a store outage): statuses again under it. */
  async onLease(): Promise<void> {
    for (const r of this.#running.values()) await this.#report(r);
  }

  /** Statuses live under the agent's lease (gone with the agent); standalone, under one of our own. */
  #leaseId(): string | undefined {
    return this.#keeper ? this.#keeper.leaseId : this.#core.leaseId;
  }

  /** Standalone start (no agent core driving it): no adoption. */
  async start(): Promise<void> {
    await this.prepare();
    this.run();
  }

  /** Standalone: a lease of our own for statuses. Then the assignment loaded (adoption compares leftovers with it). */
  async prepare(): Promise<void> {
    const { store, nodeId } = this.#o;
    this.#prepared = true;
    // An agent's core holds its lease by now (it starts it before preparing its controllers).
    if (this.#core.leaseId === undefined) {
      this.#keeper = new LeaseKeeper({ store, ttlMs: this.#o.leaseTtlMs ?? 10_000, clock: this.#clock, logger: this.#log, onLease: () => this.onLease() });
      await this.#keeper.start();
    }
    const opts = { clock: this.#clock, logger: this.#log };
    const assignment = listAndWatch(
      store,
      KEYS.assignment(nodeId),
      {
        onReset: (kvs) => this.#setDesired(kvs.find((kv) => kv.key === KEYS.assignment(nodeId))?.value),
        onEvent: (ev) => {
          if (ev.type === 'put' && ev.kv.key === KEYS.assignment(nodeId)) this.#setDesired(ev.kv.value);
          else if (ev.type === 'delete' && ev.key === KEYS.assignment(nodeId)) this.#setDesired(undefined);
        },
      },
      opts,
    );
    this.#informers.push(assignment);
    // Restart requests: the first listing only records what was already honoured elsewhere.
    let primed = false;
    this.#informers.push(
      listAndWatch(
        store,
        KEYS.serviceRestarts,
        {
          onReset: (kvs) => {
            for (const kv of kvs) {
              const svc = kv.key.slice(KEYS.serviceRestarts.length);
              const id = (JSON.parse(kv.value) as { request_id: string }).request_id;
              if (!primed) this.#restartsSeen.set(svc, id);
              else this.#restartRequested(svc, id);
            }
            primed = true;
          },
          onEvent: (ev) => {
            if (ev.type !== 'put') return;
            this.#restartRequested(ev.kv.key.slice(KEYS.serviceRestarts.length), (JSON.parse(ev.kv.value) as { request_id: string }).request_id);
          },
        },
        opts,
      ),
    );
    await assignment.ready;
  }

  /** After adoption: converge now and on every resync. */
  run(): void {
    this.#live = true;
    void this.#dropStaleStatuses();
    void this.reconcile();
    this.#scheduleResync();
  }

  /** Statuses an earlier run left (under its lease) for services neither running nor assigned here. */
  async #dropStaleStatuses(): Promise<void> {
    const prefix = KEYS.serviceStatus(this.#o.nodeId, '');
    try {
      for (const kv of (await this.#o.store.list(prefix)).kvs) {
        const name = kv.key.slice(prefix.length);
        if (!this.#running.has(name) && !this.#desired.some((s) => s.name === name)) await this.#o.store.delete(kv.key);
      }
    } catch (err) {
      this.#log.debug({ err: String(err) }, 'could not drop stale service statuses');
    }
  }

  /**
   * A service instance an earlier run of this agent left running: kept (same process, same start
   * time, restart count carried from its last status) when the assignment still wants this service
   * with the same config on the same sandbox and the node has room; else the runtime stops it.
   */
  async adopt(found: Leftover): Promise<boolean> {
    const name = found.spec.owner.name;
    const svc = this.#desired.find((s) => s.name === name);
    if (!svc || this.#running.has(name) || serviceConfigKey(svc) !== found.spec.version || this.#sandbox(svc) !== found.sandbox) {
      this.#log.info({ service: name, instance: found.spec.instanceId }, 'not adopting a leftover service instance: not assigned here any more, or its config changed');
      return false;
    }
    const inst = this.#core.tryAdmit({ id: found.spec.instanceId, kind: 'service', owner: name, sandbox: found.sandbox, memoryMb: svc.memory_mb, vcpu: svc.vcpus, startedAt: found.startedAt, adopted: true });
    if (!inst) {
      this.#log.warn({ service: name }, 'not adopting a leftover service instance: the node has no room for it');
      return false;
    }
    try {
      await this.#core.adopt(inst);
    } catch (err) {
      this.#log.warn({ err: String(err), service: name }, 'could not adopt a service instance');
      this.#core.release(inst);
      return false;
    }
    const last = await this.#o.store.get(KEYS.serviceStatus(this.#o.nodeId, name)).catch(() => undefined);
    const prev = last ? (JSON.parse(last.value) as ServiceStatusRecord) : undefined;
    // Its last status (under the old lease, if that still lives) carries on: restarts, reported start time.
    const same = prev?.instance_id === inst.id ? prev : undefined;
    const health = { ...initialHealth(), restarts: same?.restarts ?? 0 };
    const startedAt = same?.started_at ? Date.parse(same.started_at) : found.startedAt;
    const r: Running = { name, svc, configKey: serviceConfigKey(svc), inst, state: 'running', health, healthTimer: undefined, restartRequest: null, startedAt, message: null };
    inst.hooks = { onExit: (exit) => this.#onExit(r, exit) };
    this.#running.set(name, r);
    this.#armHealth(r);
    await this.#report(r);
    this.#log.info({ service: name, instance: inst.id }, 'adopted a service instance');
    return true;
  }

  stop(): Promise<void> {
    this.#stopping ??= (async () => {
      this.#stopped = true;
      this.#stopAc.abort(new AetherError('AETHER_ERR_UNAVAILABLE', 'services controller stopping'));
      for (const i of this.#informers) i.close();
      if (this.#timer) this.#clock.clearTimeout(this.#timer);
      await this.#reconciling?.catch(() => undefined);
      await Promise.all([...this.#running.values()].map((r) => this.#stopInstance(r)));
      await this.#keeper?.stop({ revoke: true });
    })();
    return this.#stopping;
  }

  /** Local instances for the edge router: service name -> endpoint and host. */
  routes(): { service: string; host: string | null; endpoint: Endpoint }[] {
    return [...this.#running.values()]
      .filter((r) => r.state === 'running')
      .flatMap((r) => (r.inst.rt ? [{ service: r.name, host: r.svc.metadata['host'] ?? null, endpoint: r.inst.rt.endpoint }] : []));
  }

  desired(): ServiceConfig[] {
    return this.#desired;
  }

  status(): ServiceStatusRecord[] {
    return [...this.#running.values()].map((r) => this.#record(r));
  }

  logs(service: string, n: number): LogEntry[] {
    return this.#core.logs.service.tail(service, n);
  }

  /** Run a reconcile now (and once more if one is running). */
  reconcile(): Promise<void> {
    if (!this.#live) return Promise.resolve();
    if (this.#reconciling) {
      this.#again = true;
      return this.#reconciling;
    }
    this.#reconciling = this.#reconcileOnce()
      .catch((err: unknown) => {
        metrics.fwReconcileErrors.inc({ node: this.#o.nodeId });
        this.#log.warn({ err: String(err) }, 'services reconcile failed');
      })
      .finally(() => {
        this.#reconciling = undefined;
        if (this.#again && !this.#stopped) {
          this.#again = false;
          void this.reconcile();
        }
      });
    return this.#reconciling;
  }

  #setDesired(value: string | undefined): void {
    this.#desired = value ? (JSON.parse(value) as ServiceAssignment).services : [];
    void this.reconcile();
  }

  #scheduleResync(): void {
    if (this.#stopped) return;
    this.#timer = this.#clock.setTimeout(() => {
      void this.reconcile().finally(() => this.#scheduleResync());
    }, this.#o.resyncMs ?? 5000);
  }

  #restartRequested(svc: string, id: string): void {
    if (this.#restartsSeen.get(svc) === id) return;
    this.#restartsSeen.set(svc, id);
    const r = this.#running.get(svc);
    if (!r) return;
    this.#log.info({ service: svc, request: id }, 'restart requested');
    r.restartRequest = id;
    void this.reconcile();
  }

  async #reconcileOnce(): Promise<void> {
    if (this.#stopped) return;
    metrics.fwReconcileRuns.inc({ node: this.#o.nodeId });
    const desired = this.#desired.map((s) => ({ name: s.name, config_key: serviceConfigKey(s) }));
    const actual: RunningService[] = [...this.#running.values()].map((r) => ({
      name: r.name,
      config_key: r.configKey,
      // A requested restart is planned as a dead instance: replaced once, at once.
      state: r.restartRequest ? 'exited' : r.state,
    }));
    const bySvc = new Map(this.#desired.map((s) => [s.name, s]));
    const now = this.#clock.now();
    for (const step of orderActions(planReconcile(desired, actual), this.#o.strategy ?? 'all-at-once')) {
      await Promise.all(step.map((a) => this.#apply(a, bySvc, now)));
    }
    // Config-only changes (health check, metadata) apply in place.
    for (const r of this.#running.values()) {
      const want = bySvc.get(r.name);
      if (want && r.configKey === serviceConfigKey(want) && JSON.stringify(want) !== JSON.stringify(r.svc)) {
        r.svc = want;
        this.#armHealth(r);
        await this.#report(r);
      }
    }
  }

  async #apply(a: Action, bySvc: Map<string, ServiceConfig>, now: number): Promise<void> {
    const old = this.#running.get(a.service);
    if (a.kind === 'delete') {
      if (old) await this.#remove(old);
      return;
    }
    const svc = bySvc.get(a.service);
    if (!svc) return;
    if (a.kind === 'update' && a.reason === 'dead' && !old?.restartRequest && now < (this.#notBefore.get(a.service) ?? 0)) return;
    if (old && a.kind === 'update' && a.reason === 'dead') metrics.fwServiceRestarts.inc({ service: svc.name, tenant: svc.tenant ?? 'shared' });
    if (old) await this.#remove(old, a.kind === 'update' && a.reason === 'config' ? 'replaced (config changed)' : null);
    await this.#create(svc);
  }

  async #artifact(s: ServiceConfig): Promise<Artifact> {
    const st = await stat(s.image).catch(() => undefined);
    return st?.isDirectory() ? { kind: 'rootfs', dir: s.image } : { kind: 'image', path: s.image };
  }

  #sandbox(s: ServiceConfig): SandboxKind | undefined {
    const have = this.#o.runtimes;
    if (s.sandbox) return have[s.sandbox] ? s.sandbox : undefined;
    // firework runs every service in a microVM; prefer one when this node offers it.
    return (['firecracker', 'qemu', 'process'] as const).find((k) => have[k] !== undefined);
  }

  async #create(svc: ServiceConfig): Promise<void> {
    const kind = this.#sandbox(svc);
    const configKey = serviceConfigKey(svc);
    const fail = async (message: string): Promise<void> => {
      this.#log.warn({ service: svc.name, message }, 'service could not start');
      await this.#putStatus({ node: this.#o.nodeId, service: svc.name, instance_id: null, config_key: configKey, state: 'exited', health: 'unknown', address: null, restarts: 0, started_at: null, message });
      this.#backoff(svc.name);
    };
    if (!kind) return fail(`no ${svc.sandbox ?? 'suitable'} sandbox on node ${this.#o.nodeId}`);
    const need = { memoryMb: svc.memory_mb, vcpu: svc.vcpus };
    // One ledger for the node: functions' instances count against the same capacity.
    const inst = this.#core.tryAdmit({ id: newId('svc'), kind: 'service', owner: svc.name, sandbox: kind, ...need });
    if (!inst) return fail(`no capacity on node ${this.#o.nodeId}: ${this.#core.ledger.describe(need)}`);
    let spec: InstanceSpec;
    try {
      const env = this.#env(svc);
      const links = linkTargets(svc, env);
      spec = {
        instanceId: inst.id,
        owner: { kind: 'service', id: svc.name, name: svc.name },
        artifact: await this.#artifact(svc),
        ...(svc.command.length ? { command: svc.command } : {}),
        env,
        // where the links point: a process sandbox relays them (it has no route out)
        ...(links.length ? { links } : {}),
        resources: { memoryMb: svc.memory_mb, vcpu: svc.vcpus, pidsMax: this.#o.pidsMax ?? 1024 },
        listen: { port: servicePort(svc) },
        version: configKey,
      };
    } catch (err) {
      this.#core.release(inst);
      return fail(`create failed: ${(err as Error).message}`);
    }
    const carried = this.#carry.get(svc.name);
    const health = { ...initialHealth(), ...(carried ?? {}) };
    const r: Running = { name: svc.name, svc, configKey, inst, state: 'starting', health, healthTimer: undefined, restartRequest: null, startedAt: inst.startedAt, message: null };
    inst.hooks = { onExit: (exit) => this.#onExit(r, exit) };
    this.#running.set(svc.name, r);
    await this.#report(r);
    try {
      await this.#core.launch(inst, spec, this.#o.startupTimeoutMs ?? 60_000, this.#stopAc.signal);
    } catch (err) {
      if (!inst.rt) {
        // the runtime refused it (no sandbox started): reported like before, with its reason
        this.#running.delete(svc.name);
        this.#core.release(inst);
        return fail(`create failed: ${(err as Error).message}`);
      }
      if (r.state !== 'exited') {
        r.message = `did not become ready: ${(err as Error).message}`;
        await this.#stopInstance(r);
        r.state = 'exited';
        this.#backoff(svc.name);
        await this.#report(r);
      }
      return;
    }
    if (r.state !== 'starting') return;
    inst.to('ready');
    r.state = 'running';
    this.#crashes.delete(svc.name);
    this.#armHealth(r);
    await this.#report(r);
    this.#log.info({ service: svc.name, instance: inst.id, sandbox: kind, endpoint: inst.rt ? describeEndpoint(inst.rt.endpoint) : null }, 'service running');
  }

  /** Its program exited on its own: the sandbox is gone, so is its charge; the next reconcile replaces it. */
  #onExit(r: Running, exit: ExitInfo): void {
    if (this.#running.get(r.name) !== r || r.state === 'stopping') return;
    r.state = 'exited';
    if (r.inst.state !== 'stopped') {
      r.inst.to('failed');
      this.#core.release(r.inst);
    }
    r.message = `exited (code ${exit.code ?? '-'}, signal ${exit.signal ?? '-'}${exit.reason ? `, ${exit.reason}` : ''})`;
    this.#core.system(r.inst, `instance exited: ${r.message}`);
    this.#log.warn({ service: r.name, instance: r.inst.id, exit }, 'service instance exited');
    this.#backoff(r.name);
    void this.#report(r).then(() => this.reconcile());
  }

  /**
   * Env plus links. The deployer resolves links to the target's published port on its node's
   * address (in `env` already); a link it could not resolve that way falls back to the address of
   * the target's instance on this node, when it has one.
   */
  #env(svc: ServiceConfig): Record<string, string> {
    const env = { ...svc.env };
    for (const l of svc.links) {
      if (env[l.env] !== undefined) continue;
      const e = this.#running.get(l.service)?.inst.rt?.endpoint;
      const host = e?.guest?.address ?? (e?.kind === 'tcp' ? e.host : undefined);
      if (host) env[l.env] = `${l.protocol ?? 'http'}://${host}:${l.port}`;
    }
    return env;
  }

  #backoff(name: string): void {
    const n = (this.#crashes.get(name) ?? 0) + 1;
    this.#crashes.set(name, n);
    this.#notBefore.set(name, this.#clock.now() + Math.min(30_000, 500 * 2 ** (n - 1)));
  }

  #armHealth(r: Running): void {
    if (r.healthTimer) this.#clock.clearTimeout(r.healthTimer);
    r.healthTimer = undefined;
    const hc = r.svc.health_check;
    if (!hc || this.#stopped) return;
    // First check one interval after start (boot grace), as firework does.
    r.healthTimer = this.#clock.setTimeout(() => void this.#check(r), hc.interval_ms);
  }

  async #check(r: Running): Promise<void> {
    const hc = r.svc.health_check;
    if (!hc || this.#running.get(r.name) !== r || r.state === 'stopping' || r.state === 'exited') return;
    // Checks go to the instance's endpoint (its listen port), the one address the platform has for it.
    const e = r.inst.rt?.endpoint;
    const ok = e ? await probe(e, hc.type, hc.path, hc.timeout_ms) : false;
    const { state, restart } = observeHealth(r.health, ok, this.#clock.now(), this.#policy);
    const changed = state.health !== r.health.health;
    r.health = state;
    if (r.state === 'running' || r.state === 'unhealthy') r.state = state.health === 'unhealthy' ? 'unhealthy' : 'running';
    if (restart) {
      this.#log.warn({ service: r.name, restarts: state.restarts }, 'health check failed: restarting');
      r.restartRequest = `health-${state.restarts}`;
      await this.#report(r);
      void this.reconcile();
      return;
    }
    if (changed) await this.#report(r);
    this.#armHealth(r);
  }

  async #remove(r: Running, why: string | null = null): Promise<void> {
    if (why) this.#log.info({ service: r.name }, why);
    // A replacement after a death, a failed check or a request counts as a restart.
    // A replacement after a death or a restart request counts as a restart (health-check restarts
    // are counted by observeHealth already).
    const counted = r.restartRequest?.startsWith('health-') === true;
    const restarts = r.health.restarts + (!counted && (r.restartRequest !== null || r.state === 'exited') ? 1 : 0);
    await this.#stopInstance(r);
    if (this.#running.get(r.name) === r) this.#running.delete(r.name);
    // Keep the restart count across replacements of the same service.
    this.#carry.set(r.name, { restarts, next_restart_at: r.health.next_restart_at });
    if (!this.#desired.some((s) => s.name === r.name)) await this.#o.store.delete(KEYS.serviceStatus(this.#o.nodeId, r.name)).catch(() => undefined);
  }

  async #stopInstance(r: Running): Promise<void> {
    if (r.healthTimer) this.#clock.clearTimeout(r.healthTimer);
    r.healthTimer = undefined;
    const prev = r.state;
    r.state = 'stopping';
    const inst = r.inst;
    if (inst.state === 'starting' || inst.state === 'ready' || inst.state === 'draining') inst.to('stopping');
    await this.#core.halt(inst, this.#o.stopGraceMs ?? 5000);
    if (inst.state !== 'stopped') {
      if (inst.launched) await inst.rt?.exited;
      this.#core.release(inst);
    }
    if (prev === 'exited') r.state = 'exited';
  }

  #record(r: Running): ServiceStatusRecord {
    return {
      node: this.#o.nodeId,
      service: r.name,
      instance_id: r.inst.id,
      config_key: r.configKey,
      state: r.state,
      health: r.svc.health_check ? r.health.health : 'not_configured',
      address: (r.state === 'running' || r.state === 'unhealthy') && r.inst.rt ? describeEndpoint(r.inst.rt.endpoint) : null,
      restarts: r.health.restarts,
      started_at: new Date(r.startedAt).toISOString(),
      message: r.message,
    };
  }

  async #report(r: Running): Promise<void> {
    if (this.#running.get(r.name) !== r) return;
    await this.#putStatus(this.#record(r));
  }

  async #putStatus(rec: ServiceStatusRecord): Promise<void> {
    const lease = this.#leaseId();
    if (!lease || this.#stopped) return;
    await this.#o.store.put(KEYS.serviceStatus(rec.node, rec.service), JSON.stringify(rec), { lease }).catch((err: unknown) => this.#log.debug({ err: String(err) }, 'status write failed'));
  }
}

/** A core of its own for a controller without an agent: the given runtimes and capacity, no lease or record of its own. */
function privateCore(o: ServiceControllerOptions, clock: Clock, logger: Logger): AgentCore {
  const cap = o.capacity ?? { vcpu: Number.MAX_SAFE_INTEGER, memoryMb: Number.MAX_SAFE_INTEGER };
  const config = agentConfig({ agentId: o.nodeId, url: '', dataDir: '', clusterToken: '', capacity: { instances: Number.MAX_SAFE_INTEGER, ...cap } });
  return new AgentCore({ store: o.store, clock, logger, config, runtimes: o.runtimes });
}

/** A sandbox forwarder's socket starts answers with a preamble byte; its `.raw` twin speaks plain HTTP. */
const plainPath = (e: Endpoint & { kind: 'unix' }): string => (e.preamble ? `${e.path}.raw` : e.path);

/** One health check: HTTP 2xx, or a TCP connect, within timeoutMs. */
export function probe(e: Endpoint, type: 'http' | 'tcp', path: string, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    let done = false;
    const finish = (ok: boolean): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      resolve(ok);
    };
    const timer = setTimeout(() => {
      finish(false);
      cleanup();
    }, timeoutMs);
    let cleanup = (): void => undefined;
    if (type === 'tcp') {
      const s = e.kind === 'tcp' ? connect({ host: e.host, port: e.port }) : connect({ path: plainPath(e) });
      cleanup = () => s.destroy();
      s.once('connect', () => {
        s.destroy();
        finish(true);
      });
      s.once('error', () => finish(false));
      return;
    }
    const target = e.kind === 'tcp' ? { host: e.host, port: e.port } : { socketPath: plainPath(e) };
    const req = request({ ...target, path, method: 'GET', headers: { 'user-agent': 'aether-health', connection: 'close' } }, (res) => {
      res.resume();
      finish((res.statusCode ?? 0) >= 200 && (res.statusCode ?? 0) < 300);
    });
    cleanup = () => req.destroy();
    req.once('error', () => finish(false));
    req.end();
  });
}
