import { connect } from 'node:net';
import { request } from 'node:http';
import { stat } from 'node:fs/promises';
import { metrics, newId, silentLogger, systemClock, type Clock, type Logger, type TimerHandle } from '../../core/index.ts';
import { serviceConfigKey, type ServiceAssignment, type ServiceConfig } from '../../deploy/index.ts';
import type { Artifact, InstanceSpec, Runtime, RuntimeInstance } from '../../runtime/index.ts';
import { KEYS, type Endpoint, type SandboxKind, type ServiceStatusRecord } from '../../spec/index.ts';
import { LeaseKeeper, listAndWatch, type Informer, type Store } from '../../store/index.ts';
import { LogStore, type LogEntry } from '../logs.ts';
import { initialHealth, observeHealth, type HealthPolicy, type HealthState } from './health.ts';
import { orderActions, planReconcile, type Action, type RunningService, type UpdateStrategy } from './plan.ts';

/**
 * The services controller of one agent: makes the node run what its assignment
 * (/aether/assignments/<node>) says. It watches the assignment (a change applies at once), resyncs
 * periodically (an instance that died is recreated even when nothing changed), health-checks
 * instances and restarts failing ones with backoff, honours restart requests, and reports each
 * service's state under its own lease. Decisions are the pure functions in plan.ts / health.ts.
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
}

interface Running {
  name: string;
  svc: ServiceConfig;
  configKey: string;
  instance: RuntimeInstance;
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

export class ServiceController {
  readonly #o: ServiceControllerOptions;
  readonly #clock: Clock;
  readonly #log: Logger;
  readonly #logs = new LogStore();
  readonly #running = new Map<string, Running>();
  /** Restart request ids already honoured, per service. */
  readonly #restartsSeen = new Map<string, string>();
  #desired: ServiceConfig[] = [];
  #keeper: LeaseKeeper | undefined;
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
  }

  async start(): Promise<void> {
    const { store, nodeId } = this.#o;
    this.#keeper = new LeaseKeeper({
      store,
      ttlMs: this.#o.leaseTtlMs ?? 10_000,
      clock: this.#clock,
      logger: this.#log,
      onLease: async () => {
        for (const r of this.#running.values()) await this.#report(r);
      },
    });
    await this.#keeper.start();
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
    this.#scheduleResync();
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    for (const i of this.#informers) i.close();
    if (this.#timer) this.#clock.clearTimeout(this.#timer);
    await this.#reconciling?.catch(() => undefined);
    await Promise.all([...this.#running.values()].map((r) => this.#stopInstance(r)));
    await this.#keeper?.stop({ revoke: true });
  }

  /** Local instances for the edge router: service name -> endpoint and host. */
  routes(): { service: string; host: string | null; endpoint: Endpoint }[] {
    return [...this.#running.values()]
      .filter((r) => r.state === 'running')
      .map((r) => ({ service: r.name, host: r.svc.metadata['host'] ?? null, endpoint: r.instance.endpoint }));
  }

  desired(): ServiceConfig[] {
    return this.#desired;
  }

  status(): ServiceStatusRecord[] {
    return [...this.#running.values()].map((r) => this.#record(r));
  }

  logs(service: string, n: number): LogEntry[] {
    return this.#logs.tail(service, n);
  }

  /** Run a reconcile now (and once more if one is running). */
  reconcile(): Promise<void> {
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
    const runtime = this.#o.runtimes[kind] as Runtime;
    const spec: InstanceSpec = {
      instanceId: newId('svc'),
      owner: { kind: 'service', id: svc.name, name: svc.name },
      artifact: await this.#artifact(svc),
      ...(svc.command.length ? { command: svc.command } : {}),
      env: this.#env(svc),
      resources: { memoryMb: svc.memory_mb, vcpu: svc.vcpus, pidsMax: this.#o.pidsMax ?? 1024 },
      listen: { port: servicePort(svc) },
      version: configKey,
    };
    let instance: RuntimeInstance;
    try {
      instance = await runtime.create(spec);
    } catch (err) {
      return fail(`create failed: ${(err as Error).message}`);
    }
    const carried = this.#carry.get(svc.name);
    const health = { ...initialHealth(), ...(carried ?? {}) };
    const r: Running = { name: svc.name, svc, configKey, instance, state: 'starting', health, healthTimer: undefined, restartRequest: null, startedAt: this.#clock.now(), message: null };
    this.#running.set(svc.name, r);
    instance.onLog((line) => this.#logs.append(svc.name, { time: line.time, instance_id: instance.id, stream: line.stream, text: line.text }));
    void instance.exited.then((exit) => {
      if (this.#running.get(svc.name) !== r || r.state === 'stopping') return;
      r.state = 'exited';
      r.message = `exited (code ${exit.code ?? '-'}, signal ${exit.signal ?? '-'}${exit.reason ? `, ${exit.reason}` : ''})`;
      this.#log.warn({ service: svc.name, instance: instance.id, exit }, 'service instance exited');
      this.#backoff(svc.name);
      void this.#report(r).then(() => this.reconcile());
    });
    await this.#report(r);
    try {
      await instance.start();
      await instance.waitReady(this.#o.startupTimeoutMs ?? 60_000);
    } catch (err) {
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
    r.state = 'running';
    this.#crashes.delete(svc.name);
    this.#armHealth(r);
    await this.#report(r);
    this.#log.info({ service: svc.name, instance: instance.id, sandbox: kind, endpoint: describeEndpoint(instance.endpoint) }, 'service running');
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
      const target = this.#running.get(l.service);
      const host = target?.instance.endpoint.guest?.address ?? (target?.instance.endpoint.kind === 'tcp' ? target.instance.endpoint.host : undefined);
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
    const ok = await probe(r.instance.endpoint, hc.type, hc.path, hc.timeout_ms);
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
    await r.instance.stop(this.#o.stopGraceMs ?? 5000).catch((err: unknown) => this.#log.warn({ err: String(err), service: r.name }, 'stop failed'));
    if (prev === 'exited') r.state = 'exited';
  }

  #record(r: Running): ServiceStatusRecord {
    return {
      node: this.#o.nodeId,
      service: r.name,
      instance_id: r.instance.id,
      config_key: r.configKey,
      state: r.state,
      health: r.svc.health_check ? r.health.health : 'not_configured',
      address: r.state === 'running' || r.state === 'unhealthy' ? describeEndpoint(r.instance.endpoint) : null,
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
    const lease = this.#keeper?.leaseId;
    if (!lease || this.#stopped) return;
    await this.#o.store.put(KEYS.serviceStatus(rec.node, rec.service), JSON.stringify(rec), { lease }).catch((err: unknown) => this.#log.debug({ err: String(err) }, 'status write failed'));
  }
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
