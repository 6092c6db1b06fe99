import { createHmac, randomUUID, timingSafeEqual } from 'node:crypto';
import type { FastifyInstance } from 'fastify';
import { AetherError, type Clock } from '../core/index.ts';
import type { Assignments, DeployStatus, ServiceAssignment, ServiceConfig } from '../deploy/index.ts';
import { KEYS, type AgentRecord, type ServiceStatusRecord, type ServiceView } from '../spec/index.ts';
import type { Store } from '../store/index.ts';

/** Read side of services for the API and the CLI: assignments + agent reports + deploy status. */
export class ServiceCatalog {
  readonly #store: Store;
  readonly #clock: Clock;

  constructor(store: Store, clock: Clock) {
    this.#store = store;
    this.#clock = clock;
  }

  async deployStatus(): Promise<DeployStatus | null> {
    const kv = await this.#store.get(KEYS.deployStatus);
    return kv ? (JSON.parse(kv.value) as DeployStatus) : null;
  }

  async list(): Promise<ServiceView[]> {
    const [assignments, statuses, deploy] = await Promise.all([this.#store.list(KEYS.assignments), this.#store.list(KEYS.serviceStatuses), this.deployStatus()]);
    const reports = new Map<string, ServiceStatusRecord>();
    for (const kv of statuses.kvs) {
      const r = JSON.parse(kv.value) as ServiceStatusRecord;
      reports.set(`${r.node}\0${r.service}`, r);
    }
    const out: ServiceView[] = [];
    for (const kv of assignments.kvs) {
      const a = JSON.parse(kv.value) as ServiceAssignment;
      for (const s of a.services) out.push(view(s, a.node, a.revision, reports.get(`${a.node}\0${s.name}`)));
    }
    for (const u of deploy?.unplaced ?? []) {
      if (!out.some((v) => v.name === u.service)) out.push(pendingView(u.service, deploy?.revision ?? null, u.message));
    }
    return out.sort((a, b) => (a.name < b.name ? -1 : 1));
  }

  async get(name: string): Promise<ServiceView & { config: ServiceConfig | null }> {
    for (const kv of (await this.#store.list(KEYS.assignments)).kvs) {
      const a = JSON.parse(kv.value) as ServiceAssignment;
      const s = a.services.find((x) => x.name === name);
      if (!s) continue;
      const r = await this.#store.get(KEYS.serviceStatus(a.node, name));
      return { ...view(s, a.node, a.revision, r ? (JSON.parse(r.value) as ServiceStatusRecord) : undefined), config: s };
    }
    const deploy = await this.deployStatus();
    const u = deploy?.unplaced.find((x) => x.service === name);
    if (u) return { ...pendingView(u.service, deploy?.revision ?? null, u.message), config: null };
    throw new AetherError('AETHER_ERR_SERVICE_NOT_FOUND', `no service named ${JSON.stringify(name)}`);
  }

  /** Agents running the service restart it once per request id. */
  async restart(name: string): Promise<{ name: string; request_id: string }> {
    const svc = await this.get(name);
    if (!svc.node) throw new AetherError('AETHER_ERR_CONFLICT', `service ${name} is not placed on any node (pending: ${svc.message ?? 'no reason'})`);
    const request_id = randomUUID();
    await this.#store.put(KEYS.serviceRestart(name), JSON.stringify({ request_id, at: new Date(this.#clock.now()).toISOString() }));
    return { name, request_id };
  }

  async assignments(): Promise<Assignments> {
    const out: Assignments = {};
    for (const kv of (await this.#store.list(KEYS.assignments)).kvs) {
      const a = JSON.parse(kv.value) as ServiceAssignment;
      out[a.node] = a.services;
    }
    return out;
  }

  async nodes(): Promise<(AgentRecord & { services: string[] })[]> {
    const [agents, assignments] = await Promise.all([this.#store.list(KEYS.agents), this.#store.list(KEYS.assignments)]);
    const byNode = new Map<string, string[]>();
    for (const kv of assignments.kvs) {
      const a = JSON.parse(kv.value) as ServiceAssignment;
      byNode.set(a.node, a.services.map((s) => s.name));
    }
    return agents.kvs.map((kv) => {
      const a = JSON.parse(kv.value) as AgentRecord;
      return { ...a, services: byNode.get(a.agent_id) ?? [] };
    });
  }
}

/** A service the deployer could not place (the reason in `message`). */
function pendingView(name: string, revision: string | null, message: string): ServiceView {
  return { name, node: null, state: 'pending', health: 'unknown', host: null, image: '', vcpus: 0, memory_mb: 0, tenant: null, revision, restarts: 0, address: null, message };
}

function view(s: ServiceConfig, node: string, revision: string, r: ServiceStatusRecord | undefined): ServiceView {
  return {
    name: s.name,
    node,
    state: r?.state ?? 'assigned',
    health: r?.health ?? (s.health_check ? 'unknown' : 'not_configured'),
    host: s.metadata['host'] ?? null,
    image: s.image,
    vcpus: s.vcpus,
    memory_mb: s.memory_mb,
    tenant: s.tenant,
    revision,
    restarts: r?.restarts ?? 0,
    address: r?.address ?? null,
    message: r?.message ?? null,
  };
}

/** GitHub's X-Hub-Signature-256: "sha256=" + hex HMAC-SHA256 of the raw body. */
export function verifyGithubSignature(secret: string, body: Buffer, header: string | undefined): boolean {
  if (!header || !header.startsWith('sha256=')) return false;
  const got = Buffer.from(header.slice('sha256='.length), 'hex');
  const want = createHmac('sha256', secret).update(body).digest();
  return got.length === want.length && timingSafeEqual(got, want);
}

export interface ServiceRoutesDeps {
  catalog: ServiceCatalog;
  store: Store;
  clock: Clock;
  /** AETHER_WEBHOOK_SECRET; without it the webhook answers 404. */
  webhookSecret: string | undefined;
  /** The last lines of a service's instances on this process's node (aether up). */
  localLogs?: (service: string, n: number) => { time: number; instance_id: string; stream: string; text: string }[];
  /** Distributed mode: the last lines of a service from the agent of the node running it. */
  remoteLogs?: (node: string, service: string, n: number) => Promise<{ time: number; instance_id: string; stream: string; text: string }[]>;
}

const MAX_WEBHOOK_BODY = 5 * 1024 * 1024;

function pushRef(body: Buffer): string | null {
  try {
    const parsed = JSON.parse(body.toString('utf8')) as { ref?: unknown } | null;
    return typeof parsed?.ref === 'string' ? parsed.ref : null;
  } catch {
    throw new AetherError('AETHER_ERR_INVALID_JSON', 'webhook body is not JSON (set the webhook content type to application/json)');
  }
}

/** /api/services, /api/nodes, /api/deploy and the webhook (which authenticates by signature, not token). */
export function registerServiceRoutes(app: FastifyInstance, d: ServiceRoutesDeps): void {
  app.get('/api/services', async () => d.catalog.list());
  app.get<{ Params: { name: string } }>('/api/services/:name', async (req) => d.catalog.get(req.params.name));
  app.post<{ Params: { name: string } }>('/api/services/:name/restart', async (req, reply) => reply.code(202).send(await d.catalog.restart(req.params.name)));
  app.get('/api/nodes', async () => d.catalog.nodes());
  app.get<{ Params: { name: string }; Querystring: { tail?: string } }>('/api/services/:name/logs', async (req, reply) => {
    const svc = await d.catalog.get(req.params.name);
    const tail = req.query.tail === undefined ? 100 : Number(req.query.tail);
    if (!Number.isInteger(tail) || tail < 0) throw new AetherError('AETHER_ERR_VALIDATION', 'tail: must be an integer >= 0');
    const n = Math.min(tail, 10_000);
    let lines;
    if (d.localLogs) lines = d.localLogs(svc.name, n);
    else if (d.remoteLogs && svc.node) lines = await d.remoteLogs(svc.node, svc.name, n);
    else throw new AetherError('AETHER_ERR_CONFLICT', `service ${svc.name} is not placed on any node, so it has no logs (pending: ${svc.message ?? 'no reason'})`);
    return reply.type('application/x-ndjson').send(lines.map((e) => JSON.stringify({ ...e, time: new Date(e.time).toISOString() }) + '\n').join(''));
  });
  app.get('/api/deploy/assignments', async () => d.catalog.assignments());
  app.post('/api/deploy', async (_req, reply) => {
    await d.store.put(KEYS.deployTrigger, JSON.stringify({ delivery: randomUUID(), ref: null, at: new Date(d.clock.now()).toISOString() }));
    return reply.code(202).send({ status: 'accepted' });
  });
  app.get('/api/deploy', async () => (await d.catalog.deployStatus()) ?? { revision: null, ok: true, errors: [], warnings: [], unplaced: [], changes: [], source: null, at: null });

  app.register(async (scope) => {
    scope.removeAllContentTypeParsers();
    scope.addContentTypeParser('*', { parseAs: 'buffer', bodyLimit: MAX_WEBHOOK_BODY }, (_req, body, done) => done(null, body));
    scope.post('/api/deploy/webhook', async (req, reply) => {
      if (!d.webhookSecret) throw new AetherError('AETHER_ERR_WEBHOOK_DISABLED');
      const body = Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0);
      const sig = req.headers['x-hub-signature-256'];
      if (!verifyGithubSignature(d.webhookSecret, body, typeof sig === 'string' ? sig : undefined)) throw new AetherError('AETHER_ERR_WEBHOOK_SIGNATURE');
      const event = String(req.headers['x-github-event'] ?? 'push');
      if (event === 'ping') return { status: 'pong' };
      if (event !== 'push') return reply.code(202).send({ status: 'ignored', reason: `event ${event}` });
      const ref = pushRef(body);
      const delivery = String(req.headers['x-github-delivery'] ?? randomUUID());
      await d.store.put(KEYS.deployTrigger, JSON.stringify({ delivery, ref, at: new Date(d.clock.now()).toISOString() }));
      return reply.code(202).send({ status: 'accepted', delivery, ref });
    });
  });
}
