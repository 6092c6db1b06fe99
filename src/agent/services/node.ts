import type { IncomingMessage, ServerResponse } from 'node:http';
import Router from 'find-my-way';
import { metrics, registry, silentLogger, type Clock, type Logger } from '../../core/index.ts';
import type { ServiceAssignment } from '../../deploy/index.ts';
import type { Runtime } from '../../runtime/index.ts';
import { KEYS, type AgentRecord, type SandboxKind, type ServiceStatusRecord } from '../../spec/index.ts';
import { listAndWatch, type Informer, type Store } from '../../store/index.ts';
import type { AgentCore } from '../core/index.ts';
import { ServiceController } from './controller.ts';
import { buildRouteTable, EdgeRouter, type PeerRoute, type RouteTable } from './router.ts';

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
  #informers: Informer[] = [];
  readonly #agents = new Map<string, AgentRecord>();
  readonly #assignments = new Map<string, ServiceAssignment>();
  readonly #statuses = new Map<string, ServiceStatusRecord>();
  #attached = false;
  readonly #api = this.#routes();

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
  }

  /** Starts the router first (its URL goes into the agent record), then the controller and views. */
  async listen(): Promise<string | null> {
    if (this.#o.routerPort === undefined) return null;
    this.#router = new EdgeRouter({ table: () => this.table(), logger: this.#log, fallback: (req, res) => this.handleHttp(req, res) });
    this.routerUrl = await this.#router.listen(this.#o.routerPort, this.#o.routerHost ?? '0.0.0.0');
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
    if (this.#router) {
      this.#informers.push(mirror(KEYS.agents, this.#agents), mirror(KEYS.assignments, this.#assignments), mirror(KEYS.serviceStatuses, this.#statuses));
    }
    if (!this.#attached) await this.controller.start();
  }

  async stop(): Promise<void> {
    for (const i of this.#informers) i.close();
    await this.#router?.close();
    await this.controller.stop();
  }

  /** The router's table: local running instances first, then peers' routers for their running services. */
  table(): RouteTable {
    const local = this.controller.routes();
    const peers: PeerRoute[] = [];
    for (const a of this.#agents.values()) {
      if (a.agent_id === this.#o.nodeId || !a.router_url) continue;
      const assigned = this.#assignments.get(KEYS.assignment(a.agent_id));
      const hosts = (assigned?.services ?? [])
        .filter((s) => s.metadata['host'] && this.#statuses.get(KEYS.serviceStatus(a.agent_id, s.name))?.state === 'running')
        .map((s) => s.metadata['host'] as string);
      if (hosts.length) peers.push({ node: a.agent_id, router_url: a.router_url, hosts });
    }
    // Built per call: local instances change without a store event, and the table is small.
    return buildRouteTable(local, peers, this.#o.nodeId);
  }

  status(): { node: string; router_port: number | null; router_url: string | null; services: ServiceStatusRecord[] } {
    return { node: this.#o.nodeId, router_port: this.routerUrl ? Number(new URL(this.routerUrl).port) : null, router_url: this.routerUrl, services: this.controller.status() };
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
