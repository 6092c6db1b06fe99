import type { IncomingMessage, ServerResponse } from 'node:http';
import Router from 'find-my-way';
import { AetherError, bearerToken, CLUSTER_TOKEN_HEADER, decodePathPart, errorBody, metrics, registry, sameSecret, silentLogger, type Clock, type Logger, type TimerHandle } from '../../core/index.ts';
import type { ServiceAssignment, ServiceConfig } from '../../deploy/index.ts';
import type { Runtime } from '../../runtime/index.ts';
import { KEYS, type AgentRecord, type SandboxKind, type ServiceStatusRecord } from '../../spec/index.ts';
import { listAndWatch, type Informer, type Store } from '../../store/index.ts';
import type { AgentCore } from '../core/index.ts';
import { servicePort, ServiceController } from './controller.ts';
import { PortPublisher, type PublishedPort } from './ports.ts';
import { buildRouteTable, EdgeRouter, type PeerRoute, type RouteTable } from './router.ts';
import { renderTraefikConfig, TRAEFIK_FILE, traefikRoutes, writeFileAtomic, type TraefikRoute } from './traefik.ts';

export interface ServicesNodeOptions {
  store: Store;
  nodeId: string;
  runtimes: Partial<Record<SandboxKind, Runtime>>;
  clock: Clock;
  logger?: Logger;
  /** Edge router port (undefined: no router on this node). */
  routerPort?: number;
  routerHost?: string;
  leaseTtlMs?: number;
  startupTimeoutMs?: number;
  capacity: { vcpu: number; memoryMb: number };
  /** Where port_forwards' host ports listen (default 0.0.0.0). */
  publishHost?: string;
  /** firework's traefik_config_dir: the route table is written there as a Traefik dynamic config. */
  traefikConfigDir?: string;
  /**
   * This node's address as other hosts reach it (the agent's --advertise): the advertised router
   * URL and the Traefik file's servers use it. Default: the router's host, 127.0.0.1 for a wildcard.
   */
  nodeAddress?: string;
  /** How often published ports and the Traefik file are brought up to date (default 1 s). */
  syncMs?: number;
}

export const SERVICE_LOGS_PREFIX = '/internal/service-logs/';

const urlHost = (h: string): string => (h.includes(':') && !h.startsWith('[') ? `[${h}]` : h);

function header(req: IncomingMessage, name: string): string | undefined {
  const v = req.headers[name];
  return Array.isArray(v) ? v[0] : v;
}

/** Only the port the instance listens on reaches its sandbox: other vm_ports cannot be published. */
export function publishedPorts(services: readonly ServiceConfig[]): PublishedPort[] {
  return services.flatMap((s) => s.port_forwards.filter((p) => p.host_port > 0 && p.vm_port === servicePort(s)).map((p) => ({ service: s.name, host_port: p.host_port, vm_port: p.vm_port })));
}

/**
 * Everything services need on one node: the controller, the edge router, and the view of peers
 * (their routers and the hosts they serve) the router's table is computed from.
 */
export class ServicesNode {
  readonly controller: ServiceController;
  readonly #o: ServicesNodeOptions;
  readonly #log: Logger;
  #router: EdgeRouter | undefined;
  routerUrl: string | null = null;
  /** The router as other hosts reach it: http://<nodeAddress>:<bound port> (the agent record's router_url). */
  advertisedRouterUrl: string | null = null;
  #informers: Informer[] = [];
  readonly #agents = new Map<string, AgentRecord>();
  readonly #assignments = new Map<string, ServiceAssignment>();
  readonly #statuses = new Map<string, ServiceStatusRecord>();
  #attached = false;
  readonly #api = this.#routes();
  readonly #ports: PortPublisher;
  #syncTimer: TimerHandle | undefined;
  #syncing: Promise<void> | undefined;
  #lastTraefik = '';
  #unreachable = '';
  #stopped = false;

  constructor(o: ServicesNodeOptions) {
    this.#o = o;
    this.#log = o.logger ?? silentLogger();
    this.controller = new ServiceController({
      store: o.store,
      nodeId: o.nodeId,
      runtimes: o.runtimes,
      clock: o.clock,
      logger: this.#log,
      ...(o.leaseTtlMs ? { leaseTtlMs: o.leaseTtlMs } : {}),
      ...(o.startupTimeoutMs ? { startupTimeoutMs: o.startupTimeoutMs } : {}),
    });
    this.#ports = new PortPublisher({
      ...(o.publishHost ? { host: o.publishHost } : {}),
      endpointOf: (service) => this.controller.routes().find((r) => r.service === service)?.endpoint,
      logger: this.#log,
    });
  }

  /** Starts the router first (its URL goes into the agent record), then the controller and views. */
  async listen(): Promise<string | null> {
    if (this.#o.routerPort === undefined) return null;
    this.#router = new EdgeRouter({ table: () => this.table(), logger: this.#log, fallback: (req, res) => this.handleHttp(req, res) });
    this.routerUrl = await this.#router.listen(this.#o.routerPort, this.#o.routerHost ?? '0.0.0.0');
    this.advertisedRouterUrl = this.#o.nodeAddress ? `http://${urlHost(this.#o.nodeAddress)}:${new URL(this.routerUrl).port}` : this.routerUrl;
    return this.routerUrl;
  }

  /**
   * Run the controller on the agent's core (before agent.start()): one capacity ledger for the
   * node, and the core's adoption round offers it the service instances an earlier run left. The
   * core then starts and stops the controller; start()/stop() here handle the router's views.
   */
  attach(core: AgentCore): void {
    this.controller.useCore(core);
    core.register(this.controller);
    this.#attached = true;
  }

  async start(): Promise<void> {
    const { store } = this.#o;
    const opts = { clock: this.#o.clock, logger: this.#log };
    const mirror = <T>(prefix: string, map: Map<string, T>): Informer =>
      listAndWatch(
        store,
        prefix,
        {
          onReset: (kvs) => {
            map.clear();
            for (const kv of kvs) map.set(kv.key, JSON.parse(kv.value) as T);
          },
          onEvent: (ev) => {
            if (ev.type === 'put') map.set(ev.kv.key, JSON.parse(ev.kv.value) as T);
            else map.delete(ev.key);
          },
        },
        opts,
      );
    if (this.#router || this.#o.traefikConfigDir) {
      this.#informers.push(mirror(KEYS.agents, this.#agents), mirror(KEYS.assignments, this.#assignments), mirror(KEYS.serviceStatuses, this.#statuses));
    }
    if (!this.#attached) await this.controller.start();
    this.#scheduleSync(0);
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    if (this.#syncTimer) this.#o.clock.clearTimeout(this.#syncTimer);
    await this.#syncing;
    for (const i of this.#informers) i.close();
    await this.#router?.close();
    await this.#ports.close();
    await this.controller.stop();
  }

  /** Host ports published for port_forwards now. */
  published(): PublishedPort[] {
    return this.#ports.published();
  }

  #scheduleSync(ms = this.#o.syncMs ?? 1000): void {
    if (this.#stopped) return;
    this.#syncTimer = this.#o.clock.setTimeout(() => {
      this.#syncing = this.sync()
        .catch((err: unknown) => this.#log.warn({ err: String(err) }, 'services sync failed'))
        .finally(() => {
          this.#syncing = undefined;
          this.#scheduleSync();
        });
    }, ms);
  }

  /** Published ports follow the assignment; the Traefik file follows the route table. */
  async sync(): Promise<void> {
    await this.#ports.sync(publishedPorts(this.controller.desired()));
    const dir = this.#o.traefikConfigDir;
    if (!dir) return;
    const text = renderTraefikConfig(this.traefikRoutes());
    if (text === this.#lastTraefik) return;
    await writeFileAtomic(dir, TRAEFIK_FILE, text);
    this.#lastTraefik = text;
  }

  /** The route table in Traefik's terms, every server reachable from other hosts (see `traefikRoutes`). */
  traefikRoutes(): TraefikRoute[] {
    const desired = new Map(this.controller.desired().map((s) => [s.name, s]));
    const listening = this.#ports.published();
    const published = new Map<string, number>();
    for (const svc of desired.values()) {
      const p = publishedPorts([svc]).find((x) => listening.some((l) => l.service === x.service && l.host_port === x.host_port));
      if (p) published.set(svc.name, p.host_port);
    }
    const { routes, unreachable } = traefikRoutes({
      local: this.controller.routes().flatMap((r) => (r.host ? [{ service: r.service, host: r.host }] : [])),
      routerUrl: this.advertisedRouterUrl,
      nodeAddress: this.#nodeAddress(),
      published,
      peers: this.#peers(),
    });
    const key = unreachable.join(',');
    if (key && key !== this.#unreachable) this.#log.warn({ services: unreachable }, 'left out of the Traefik file: no edge router (--router-port) and no published port reach them from other hosts');
    this.#unreachable = key;
    return routes;
  }

  #nodeAddress(): string {
    const h = this.#o.nodeAddress ?? this.#o.routerHost ?? this.#o.publishHost ?? '127.0.0.1';
    return h === '0.0.0.0' || h === '::' ? '127.0.0.1' : h;
  }

  /** The router's table: local running instances first, then peers' routers for their running services. */
  table(): RouteTable {
    // Built per call: local instances change without a store event, and the table is small.
    return buildRouteTable(this.controller.routes(), this.#peers(), this.#o.nodeId);
  }

  /** Peers' routers and the hosts of the services running there (their status says running). */
  #peers(): PeerRoute[] {
    const peers: PeerRoute[] = [];
    for (const a of this.#agents.values()) {
      if (a.agent_id === this.#o.nodeId || !a.router_url) continue;
      const assigned = this.#assignments.get(KEYS.assignment(a.agent_id));
      const hosts = (assigned?.services ?? [])
        .filter((s) => s.metadata['host'] && this.#statuses.get(KEYS.serviceStatus(a.agent_id, s.name))?.state === 'running')
        .map((s) => s.metadata['host'] as string);
      if (hosts.length) peers.push({ node: a.agent_id, router_url: a.router_url, hosts });
    }
    return peers;
  }

  status(): { node: string; router_port: number | null; router_url: string | null; services: ServiceStatusRecord[] } {
    return { node: this.#o.nodeId, router_port: this.routerUrl ? Number(new URL(this.routerUrl).port) : null, router_url: this.routerUrl, services: this.controller.status() };
  }

  /**
   * The agent server's service routes (cluster token required, as on every /internal/ route):
   * `GET /internal/service-logs/<service>?tail=N` answers the node's lines of that service as
   * NDJSON, so any gateway can show logs of a service running on this node. False: not ours.
   */
  handleInternal(req: IncomingMessage, res: ServerResponse, clusterToken: string): boolean {
    const url = req.url ?? '/';
    if (!url.startsWith(SERVICE_LOGS_PREFIX)) return false;
    const send = (err: AetherError): void => {
      const { status, body } = errorBody(err);
      res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(body) }).end(body);
    };
    const given = header(req, CLUSTER_TOKEN_HEADER) ?? bearerToken(req.headers.authorization);
    if (given === undefined || !sameSecret(given, clusterToken)) {
      send(new AetherError('AETHER_ERR_UNAUTHORIZED', 'missing or wrong cluster token'));
      return true;
    }
    if (req.method !== 'GET') {
      send(new AetherError('AETHER_ERR_METHOD_NOT_ALLOWED'));
      return true;
    }
    const q = url.indexOf('?');
    let name: string;
    try {
      name = decodePathPart(url.slice(SERVICE_LOGS_PREFIX.length, q < 0 ? undefined : q), 'service name');
    } catch (err) {
      send(err instanceof AetherError ? err : new AetherError('AETHER_ERR_VALIDATION', 'bad service name'));
      return true;
    }
    const tail = Number(new URLSearchParams(q < 0 ? '' : url.slice(q + 1)).get('tail') ?? 100);
    if (!Number.isInteger(tail) || tail < 0) {
      send(new AetherError('AETHER_ERR_VALIDATION', 'tail: must be an integer >= 0'));
      return true;
    }
    const text = this.controller
      .logs(name, Math.min(tail, 10_000))
      .map((e) => JSON.stringify(e) + '\n')
      .join('');
    res.writeHead(200, { 'content-type': 'application/x-ndjson', 'cache-control': 'no-store', 'content-length': Buffer.byteLength(text) }).end(text);
    return true;
  }

  /** firework's agent API on the router port when the Host names no service: /healthz, /status, /health, /metrics. */
  async handleHttp(req: IncomingMessage, res: ServerResponse): Promise<boolean> {
    if (req.method !== 'GET' && req.method !== 'HEAD') return false;
    let found;
    try {
      found = this.#api.find(req.method, req.url ?? '/');
    } catch {
      return false; // a path that does not decode is not one of ours
    }
    if (!found) return false;
    await (found.handler as unknown as (req: IncomingMessage, res: ServerResponse) => Promise<void> | void)(req, res);
    return true;
  }

  /** The route table of handleHttp (find-my-way, as the agent's own server). */
  #routes(): Router.Instance<Router.HTTPVersion.V1> {
    const api = Router();
    const json = (res: ServerResponse, body: unknown): void => {
      const text = JSON.stringify(body);
      res.writeHead(200, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(text) }).end(text);
    };
    const get = (path: string, h: (req: IncomingMessage, res: ServerResponse) => Promise<void> | void): void => api.on(['GET', 'HEAD'], path, h as never);
    for (const path of ['/healthz', '/ping']) get(path, (_req, res) => void res.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n'));
    get('/status', (_req, res) => json(res, this.status()));
    get('/health', (_req, res) => json(res, Object.fromEntries(this.controller.status().map((s) => [s.service, s.health]))));
    get('/metrics', async (_req, res) => {
      this.#refreshMetrics();
      const text = await registry.metrics();
      res.writeHead(200, { 'content-type': registry.contentType }).end(text);
    });
    return api;
  }

  #refreshMetrics(): void {
    const node = this.#o.nodeId;
    const st = this.controller.status();
    const mine = this.#assignments.get(KEYS.assignment(node))?.services ?? this.controller.desired();
    metrics.fwCapacityVcpus.set({ node }, this.#o.capacity.vcpu);
    metrics.fwCapacityMemory.set({ node }, this.#o.capacity.memoryMb);
    metrics.fwUsedVcpus.set({ node }, mine.reduce((n, s) => n + s.vcpus, 0));
    metrics.fwUsedMemory.set({ node }, mine.reduce((n, s) => n + s.memory_mb, 0));
    metrics.fwServiceState.reset();
    metrics.fwServiceHealth.reset();
    for (const s of st) {
      const tenant = mine.find((x) => x.name === s.service)?.tenant ?? 'shared';
      metrics.fwServiceState.set({ service: s.service, tenant, state: s.state }, 1);
      metrics.fwServiceHealth.set({ service: s.service, tenant }, s.health === 'healthy' ? 1 : s.health === 'unhealthy' ? 0 : -1);
    }
  }
}
