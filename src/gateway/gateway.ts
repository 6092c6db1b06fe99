import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import { guardHandler, refuseConnect, type Clock, type Logger } from '../core/index.ts';
import { acceptUpgrade } from '../proxy/index.ts';
import type { Queue } from '../queue/index.ts';
import { LeaseKeeper, type Store } from '../store/index.ts';
import { KEYS, type SandboxKind } from '../spec/index.ts';
import type { ArchiveLimits } from '../archive/index.ts';
import { buildApi } from './api.ts';
import type { FunctionService } from './functions.ts';
import { Invoker, type LocalAgent } from './invoke.ts';
import { localLogSource, remoteLogSource, remoteServiceLogs, type LocalLogs } from './logs.ts';
import { InvocationRecorder } from './records.ts';
import { ClusterViews, type GatewayRecord } from './views.ts';
import { ServiceCatalog } from './services.ts';

export interface GatewayOptions {
  store: Store;
  queue: Queue;
  clock: Clock;
  logger: Logger;
  functions: FunctionService;
  adminToken: string;
  /** Sent to agents (forwarding hop, logs); never the admin token. */
  clusterToken: string;
  limits: ArchiveLimits;
  host: string;
  port: number;
  gatewayId: string;
  leaseTtlMs: number;
  /** How long a provision request may take before it no longer counts as "starting". */
  startTimeoutMs: number;
  /** `aether up`: the agent in this process (one-hop forwarding, local logs). */
  localAgent?: LocalAgent & LocalLogs;
  /** Period of the reconcile loop (min_instances, replacing stale instances, lost jobs). */
  reconcileMs?: number;
  /** Address clients reach (a native data plane in front listens there; `host` is then loopback). */
  publicHost?: string;
  /**
   * Awaited before answering a write to the API (set once a native data plane runs): a DELETE or
   * rename is already in the proxy's routes when the client gets its answer, as on the Node path.
   */
  writeBarrier?: { wait?: () => Promise<void> };
  /** AETHER_WEBHOOK_SECRET for POST /api/deploy/webhook (absent: the webhook answers 404). */
  webhookSecret?: string;
  /** `aether up`: service logs of the in-process node. */
  serviceLogs?: (service: string, n: number) => { time: number; instance_id: string; stream: string; text: string }[];
}

export interface Gateway {
  readonly url: string;
  readonly server: Server;
  readonly invoker: Invoker;
  /** Watch-fed views and the records writer, shared with a native data plane. */
  readonly views: ClusterViews;
  readonly recorder: InvocationRecorder;
  close(): Promise<void>;
}

const LOOPBACK = new Set(['127.0.0.1', '::1', 'localhost']);

export async function startGateway(o: GatewayOptions): Promise<Gateway> {
  const views = new ClusterViews(o.store, o.logger);
  const leases = new LeaseKeeper({
    store: o.store,
    ttlMs: o.leaseTtlMs,
    clock: o.clock,
    logger: o.logger,
    onLease: async (lease) => {
      const rec: GatewayRecord = { gateway_id: o.gatewayId, lease, started_at: new Date(o.clock.now()).toISOString() };
      await o.store.put(KEYS.gateway(o.gatewayId), JSON.stringify(rec), { lease });
    },
  });
  await leases.start();
  await views.start();
  /** Sandbox kinds live agents offer (records of older agents carry none: process). */
  const offered = (): Set<SandboxKind> => {
    const kinds = new Set<SandboxKind>();
    for (const a of views.agents.items.values()) for (const k of a.sandboxes ?? ['process']) kinds.add(k);
    return kinds;
  };
  o.functions.setSandboxSource(() => [...offered()]);
  const recorder = new InvocationRecorder({ store: o.store, clock: o.clock, logger: o.logger, exists: (fnId) => views.fn(fnId) !== undefined });
  const invoker = new Invoker({
    store: o.store,
    queue: o.queue,
    views,
    clock: o.clock,
    logger: o.logger,
    recorder,
    gatewayId: o.gatewayId,
    leaseId: () => leases.leaseId,
    startTimeoutMs: o.startTimeoutMs,
    clusterToken: o.clusterToken,
    sandboxOffered: (kind) => offered().has(kind),
    ...(o.localAgent ? { localAgent: o.localAgent } : {}),
  });
  const logs = o.localAgent ? localLogSource(o.localAgent) : remoteLogSource({ agents: () => [...views.agents.items.values()], token: o.clusterToken, logger: o.logger });

  let server: Server | undefined;
  const app = buildApi(
    {
      functions: o.functions,
      store: o.store,
      adminToken: o.adminToken,
      logs,
      metricsOpen: LOOPBACK.has(o.publicHost ?? o.host),
      limits: o.limits,
      services: { catalog: new ServiceCatalog(o.store, o.clock), store: o.store, clock: o.clock, webhookSecret: o.webhookSecret, ...(o.serviceLogs ? { localLogs: o.serviceLogs } : { remoteLogs: remoteServiceLogs({ agents: () => [...views.agents.items.values()], token: o.clusterToken }) }) },
    },
    {
      // Invocation traffic skips fastify entirely: the warm path is a raw handler.
      serverFactory: (handler: (req: IncomingMessage, res: ServerResponse) => void) => {
        // Guarded: an error in one request answers 500 and never ends the process.
        const guarded = guardHandler(o.logger, 'gateway', (req, res) => (Invoker.matches(req.url) ? invoker.handle(req, res) : handler(req, res)));
        // Upgrades (WebSocket) are taken on /functions/* only, and tunnelled to the instance;
        // elsewhere the request is served as a plain one.
        server = createServer({ shouldUpgradeCallback: (req) => Invoker.matches(req.url) }, guarded);
        server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => guarded(req, acceptUpgrade(req, socket, head)));
        server.keepAliveTimeout = 65_000;
        server.on('connect', refuseConnect);
        return server;
      },
    },
  );
  const barrier = o.writeBarrier;
  if (barrier) {
    app.addHook('onSend', async (req, _reply, payload) => {
      if (req.method !== 'GET' && req.method !== 'HEAD' && barrier.wait) await barrier.wait();
      return payload;
    });
  }
  await app.listen({ host: o.host, port: o.port });
  if (!server) throw new Error('server factory was not called');
  const addr = server.address() as AddressInfo;
  const host = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
  const url = `http://${host === '0.0.0.0' || host === '[::]' ? '127.0.0.1' : host}:${addr.port}`;

  // One gateway runs the reconcile loop (leader key under its lease); every gateway re-queues its own lost cold starts.
  let stopped = false;
  const tick = async (): Promise<void> => {
    if (stopped) return;
    try {
      const lease = leases.leaseId;
      if (lease) {
        const key = KEYS.leader('reconciler');
        const held = await o.store.get(key);
        const leader = held ? held.value === o.gatewayId : (await o.store.cas(key, 0, o.gatewayId, { lease })).succeeded;
        if (leader) invoker.reconcile();
      }
      await invoker.housekeeping();
    } catch (err) {
      o.logger.debug({ err: String(err) }, 'reconcile tick failed');
    }
    if (!stopped) timer = o.clock.setTimeout(() => void tick(), o.reconcileMs ?? 1000);
  };
  let timer = o.clock.setTimeout(() => void tick(), o.reconcileMs ?? 1000);

  return {
    url,
    server,
    invoker,
    views,
    recorder,
    async close() {
      stopped = true;
      o.clock.clearTimeout(timer);
      // Deregister first: other gateways stop counting our demand at once.
      await o.store.delete(KEYS.gateway(o.gatewayId)).catch(() => undefined);
      await app.close();
      await invoker.settled();
      await recorder.close();
      views.close();
      await leases.stop({ revoke: true }).catch(() => undefined);
    },
  };
}
