import { chmodSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import type { Server as HttpServer } from 'node:http';
import { createServer as createNetServer, type AddressInfo } from 'node:net';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { clusterTokenFor, loadConfig, logFileFor, type Config, type ConfigInput, type Role } from '../config/index.ts';
import { AetherError, createFileLogger, createLogger, drainLogs, installRejectionSafetyNet, metrics, newId, systemClock, type Clock, type Logger } from '../core/index.ts';
import type { BlobStore } from '../blob/index.ts';
import type { Queue } from '../queue/index.ts';
import type { Store } from '../store/index.ts';
import { createAgent, createAgentServer, agentConfig, type Agent } from '../agent/index.ts';
import { FunctionService, loadAdminToken, startGateway, type Gateway } from '../gateway/index.ts';
import { closeAllEndpoints } from '../proxy/index.ts';
import { probeHost, type Runtime } from '../runtime/index.ts';
import { nodeDataPlane, resolveDataPlane, type DataPlane, type RouteSource } from '../dataplane/index.ts';
import { maxSampling, startAgentHop, startHaproxyDataPlane, type AgentHop } from '../dataplane/haproxy/index.ts';
import { openBlob, openQueue, openStore } from './drivers.ts';
import { Deployer, specSource } from '../deploy/index.ts';
import { ServicesNode } from '../agent/services/index.ts';
import { openRuntimes } from './runtimes.ts';
import { lockDataDir } from './lock.ts';

export interface RunningNode {
  /** Gateway URL (up, gateway) or agent URL (agent). */
  url: string;
  close(): Promise<void>;
}

/** Same id across restarts on one data dir, so a restarted agent finds its leftovers. */
function stableAgentId(dataDir: string, explicit: string | undefined): string {
  if (explicit) return explicit;
  const file = join(dataDir, 'agent-id');
  if (existsSync(file)) return readFileSync(file, 'utf8').trim();
  const host = hostname().toLowerCase().replace(/[^a-z0-9-]/g, '-').slice(0, 20) || 'node';
  const id = `agent-${host}-${newId('x').slice(-6)}`;
  writeFileSync(file, id + '\n');
  return id;
}

async function adminToken(role: Role, dataDir: string, tokenFile: string | undefined, env: NodeJS.ProcessEnv, say: (s: string) => void): Promise<string | undefined> {
  if (role === 'up') {
    const t = await loadAdminToken({ dataDir, env, ...(tokenFile ? { tokenFile } : {}) });
    // Only where it is: output ends up in logs that others can read.
    if (t.source === 'generated') say(`admin token: generated into ${t.path ?? join(dataDir, 'admin.token')} (mode 0600)`);
    else say(`admin token: from ${t.source === 'env' ? 'AETHER_ADMIN_TOKEN' : (t.path ?? 'file')}`);
    return t.token;
  }
  // Every gateway must share one token: never generate one per process.
  if (env['AETHER_ADMIN_TOKEN']) return env['AETHER_ADMIN_TOKEN'];
  if (tokenFile) return readFileSync(tokenFile, 'utf8').trim();
  if (role === 'gateway') throw new AetherError('AETHER_ERR_VALIDATION', 'config: `aether gateway` needs AETHER_ADMIN_TOKEN or --admin-token-file (the same for every gateway)');
  return undefined;
}

/**
 * This process's upload spool, `<root>/<pid>`. Spools of processes that are gone (a gateway killed
 * mid-upload) are removed first; a live one's (another gateway on the same data dir) stays.
 */
export function uploadSpool(root: string, logger: Logger): string {
  mkdirSync(root, { recursive: true, mode: 0o700 });
  for (const name of readdirSync(root)) {
    const pid = /^\d+$/.test(name) ? Number(name) : undefined;
    if (pid !== undefined && pid !== process.pid && pidAlive(pid)) continue;
    rmSync(join(root, name), { recursive: true, force: true });
    logger.info({ spool: join(root, name) }, 'removed the upload spool of a process that is gone');
  }
  const dir = join(root, String(process.pid));
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  return dir;
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Fails with a clear message when host:port cannot be bound; before anything starts. */
async function assertPortFree(host: string, port: number): Promise<void> {
  if (port === 0) return;
  const probe = createNetServer();
  await new Promise<void>((resolve, reject) => {
    probe.once('error', (err: NodeJS.ErrnoException) => {
      const why = err.code === 'EADDRINUSE' ? 'is already in use (another `aether up`?)' : err.code === 'EACCES' ? 'needs privileges' : `cannot be bound (${err.code ?? err.message})`;
      reject(new AetherError('AETHER_ERR_VALIDATION', `config: port ${port} on ${host} ${why}; choose another with --port`));
    });
    probe.listen({ port, host, exclusive: true }, () => probe.close(() => resolve()));
  });
}

export async function startNode(role: Role, flags: ConfigInput & { config?: string }, env: NodeJS.ProcessEnv = process.env, out: (s: string) => void = (s) => process.stdout.write(s + '\n')): Promise<RunningNode> {
  const cfg = loadConfig(role, flags, env);
  // The deployer listens nowhere: an AETHER_PORT meant for another role must not stop it.
  if (role !== 'deployer') await assertPortFree(cfg.host, cfg.port);
  // The deployer talks only to the store (and reads its spec source): no data dir, queue or blob store.
  const deployer = role === 'deployer';
  if (!deployer) {
    mkdirSync(cfg.dataDir, { recursive: true, mode: 0o700 });
    // It holds the admin token and every function's code: 0700 whatever the umask or earlier mode.
    chmodSync(cfg.dataDir, 0o700);
  }
  // One node per data dir (its agent id, store, HAProxy config, sandboxes' state): a second
  // `aether up` in the same directory on another port is refused before it touches any of it.
  // Gateways only spool uploads there, per process.
  const unlock = role === 'up' || role === 'agent' ? lockDataDir(cfg.dataDir, role) : () => undefined;
  const logFile = logFileFor(cfg, Boolean(process.stderr.isTTY));
  let logger: Logger;
  if (logFile) {
    try {
      logger = createFileLogger(`aether-${role}`, cfg.logLevel, logFile);
    } catch (err) {
      unlock();
      throw new AetherError('AETHER_ERR_VALIDATION', `config: cannot open the log file ${logFile} (${(err as NodeJS.ErrnoException).code ?? String(err)}); choose another with --log-file`);
    }
    out(`logs: ${logFile} (warnings and errors are shown here too)`);
  } else {
    logger = createLogger(`aether-${role}`, cfg.logLevel);
  }
  // One request's or one task's unexpected rejection is logged; it never ends the process.
  const dropSafetyNet = installRejectionSafetyNet(logger);
  const clock = systemClock;
  // Agents never read the admin token: they know only the cluster token, checked before anything starts.
  // The deployer talks only to the store: it needs neither secret.
  const token = role === 'agent' || role === 'deployer' ? undefined : await adminToken(role, cfg.dataDir, cfg.adminTokenFile, env, out);
  const clusterToken = role === 'deployer' ? '' : clusterTokenFor(role, { env, file: cfg.clusterTokenFile, adminToken: token });
  const store = openStore(cfg, logger);
  const queue = deployer ? undefined : openQueue(cfg, logger);
  const blob = deployer ? undefined : openBlob(cfg);
  const closers: (() => Promise<void>)[] = [];
  let closing: Promise<void> | undefined;
  const close = (): Promise<void> => {
    closing ??= (async () => {
      for (const c of closers) await c().catch((err: unknown) => logger.error({ err: String(err) }, 'shutdown step failed'));
      await closeAllEndpoints();
      await queue?.close().catch(() => undefined);
      await blob?.close().catch(() => undefined);
      await store.close().catch(() => undefined);
      unlock();
      // Bounded: an output nobody reads must not hold the exit (see LogSink).
      await drainLogs(2000);
      dropSafetyNet();
    })();
    return closing;
  };
  try {
    const url = await startParts(role, cfg, { logger, clock, token, clusterToken, store, queue, blob, closers, out, env });
    return { url, close };
  } catch (err) {
    // A failed start (say the port was taken meanwhile) leaves no sandbox, socket or server behind.
    await close();
    throw err;
  }
}

async function startParts(
  role: Role,
  cfg: Config,
  p: { logger: Logger; clock: Clock; token: string | undefined; clusterToken: ReturnType<typeof clusterTokenFor>; store: Store; queue: Queue | undefined; blob: BlobStore | undefined; closers: (() => Promise<void>)[]; out: (s: string) => void; env: NodeJS.ProcessEnv },
): Promise<string> {
  const { logger, clock, token, clusterToken, store, closers, out, env } = p;
  // Opened for every role but the deployer.
  const opened = <T>(v: T | undefined, what: string): T => {
    if (v === undefined) throw new AetherError('AETHER_ERR_INTERNAL', `\`aether ${role}\` opened no ${what}`);
    return v;
  };
  let agent: Agent | undefined;
  let servicesNode: ServicesNode | undefined;
  const startupFloors: number[] = [];
  let viaForwarders = false;
  let agentServerUrl: string | undefined;
  if (role === 'up' || role === 'agent') {
    let url = 'local://in-process';
    let server: ReturnType<typeof createAgentServer> | undefined;
    /** The agent's hop through its own HAProxy (`aether agent` on the haproxy data plane). */
    let hop: AgentHop | undefined;
    let hopReason = '';
    const started: { runtimes: Runtime[] } = { runtimes: [] };
    // One step for the node's own parts, whichever of them got started. The proxy goes after the
    // instances' drains (it carries their last requests), the Node server last.
    closers.push(async () => {
      await agent?.stop();
      await Promise.all(started.runtimes.map((rt) => rt.close()));
      await hop?.close();
      if (server?.listening) await new Promise<void>((r) => server?.close(() => r()));
    });
    // Hand requests to the agent once built.
    if (role === 'agent') {
      server = createAgentServer((req, res) => {
        // The services controller's internal routes (service logs for gateways) beside the agent's.
        if (agent && servicesNode?.handleInternal(req, res, clusterToken)) return;
        if (agent) agent.handleHttp(req, res);
        else {
          res.writeHead(503).end();
        }
      });
    }
    const host = await probeHost();
    out(`host: ${JSON.stringify({ root: host.root, namespaces: host.namespaces, cgroups: host.cgroups, kvm: host.kvm, qemu: host.qemu, firecracker: host.firecracker, isolation: host.isolation })}`);
    const agentId = stableAgentId(cfg.dataDir, cfg.agentId);
    const { runtimes, notes } = openRuntimes(cfg, host, agentId, clock, logger);
    started.runtimes = Object.values(runtimes);
    for (const rt of started.runtimes) if (rt.minStartupMs) startupFloors.push(rt.minStartupMs);
    viaForwarders = started.runtimes.some((r) => r.reach === 'forwarder');
    for (const n of notes) out(n);
    if (started.runtimes.length === 0) throw new AetherError('AETHER_ERR_VALIDATION', 'config: this node offers no sandbox (see --sandboxes and `aether doctor`)');
    if (role === 'up' && !runtimes[cfg.sandbox]) {
      throw new AetherError('AETHER_ERR_VALIDATION', `config: --sandbox ${cfg.sandbox} is the default for new functions, but this node does not offer it (offered: ${Object.keys(runtimes).join(', ')}; see \`aether doctor\`)`);
    }
    if (server) {
      // Listen before the agent is built: the advertised URL carries the bound port.
      const l = await listenAgent(server, cfg, { viaForwarders, env, clusterToken, clock, logger, out, serve: (req, res) => (agent ? agent.handleTrustedForward(req, res) : void res.writeHead(503).end()) });
      hop = l.hop;
      hopReason = l.reason;
      url = `http://${cfg.advertise ?? (cfg.host === '0.0.0.0' || cfg.host === '::' ? '127.0.0.1' : cfg.host)}:${l.port}`;
      agentServerUrl = url;
    }
    // Services on this node: the controller runs what the deployer assigns here; the edge router
    // (with --router-port) routes by Host to them and to peers' routers.
    const services = new ServicesNode({
      store,
      nodeId: agentId,
      runtimes,
      clock,
      logger,
      leaseTtlMs: cfg.leaseTtlMs,
      startupTimeoutMs: Math.max(cfg.startupTimeoutMs, 120_000),
      capacity: { vcpu: cfg.capacity.vcpu, memoryMb: cfg.capacity.memoryMb },
      ...(cfg.routerPort !== undefined ? { routerPort: cfg.routerPort, routerHost: role === 'up' ? cfg.host : '0.0.0.0' } : {}),
      ...(cfg.traefikConfigDir ? { traefikConfigDir: cfg.traefikConfigDir } : {}),
      ...(cfg.advertise ? { nodeAddress: cfg.advertise } : {}),
      // port_forwards' host ports: on every address of an agent's node (firework DNATs the host IP); `up` keeps to --host.
      publishHost: role === 'up' ? cfg.host : '0.0.0.0',
    });
    servicesNode = services;
    const routerUrl = await services.listen();
    const advertisedRouter = services.advertisedRouterUrl;
    if (routerUrl) out(`edge router at ${routerUrl} (routes by Host to services; /status, /health, /metrics)`);
    agent = createAgent({
      store,
      queue: opened(p.queue, 'queue'),
      blob: opened(p.blob, 'blob store'),
      runtimes,
      clock,
      logger,
      archiveLimits: cfg.limits,
      config: agentConfig({
        agentId,
        url,
        dataDir: cfg.dataDir,
        capacity: cfg.capacity,
        leaseTtlMs: cfg.leaseTtlMs,
        startupTimeoutMs: cfg.startupTimeoutMs,
        pidsMax: cfg.pidsMax,
        ...(cfg.nodeType ? { nodeType: cfg.nodeType } : {}),
        ...(advertisedRouter ? { routerUrl: advertisedRouter } : {}),
        clusterToken,
      }),
    });
    // Services run on the agent's core: one ledger, and adoption of their instances at start.
    if (agent.core) services.attach(agent.core);
    // Before start: adopted instances are routed by the proxy from the first moment.
    const a = agent;
    hop?.attach({ routable: () => a.routableInstances(), onChange: (l) => a.onRoutableChange(l), instanceLoad: (id, n, active, routed) => a.noteExternalLoad(id, n, active, routed) });
    await agent.start();
    await services.start();
    closers.unshift(() => services.stop());
    if (role === 'agent') {
      out(`data plane: ${hop ? 'haproxy' : 'node'} (${hopReason})`);
      out(`agent ${agentId} serving at ${url}`);
    }
  }

  let dataPlane: DataPlane | undefined;
  if (role === 'up' || role === 'gateway') {
    const spool = uploadSpool(join(cfg.dataDir, 'tmp'), logger);
    closers.push(async () => rmSync(spool, { recursive: true, force: true }));
    // In `up` the local instances may be reached only through forwarder sockets (no veth network).
    const dp = resolveDataPlane(cfg.dataPlane, env, undefined, viaForwarders);
    if (cfg.dataPlane === 'haproxy' && !dp.binary) throw new AetherError('AETHER_ERR_VALIDATION', 'config: --data-plane haproxy, but no haproxy binary was found (install haproxy, or use --data-plane auto|node)');
    const functions = new FunctionService({ store, blobs: opened(p.blob, 'blob store'), clock, logger, limits: cfg.limits, defaultSandbox: cfg.sandbox, tmpDir: spool });
    const writeBarrier: { wait?: () => Promise<void> } = {};
    const openGateway = (native: boolean): Promise<Gateway> =>
      startGateway({
        store,
        queue: opened(p.queue, 'queue'),
        clock,
        logger,
        functions,
        adminToken: token as string,
        clusterToken,
        limits: cfg.limits,
        // With HAProxy in front, the Node gateway is the activator on a private loopback port.
        host: native ? '127.0.0.1' : cfg.host,
        port: native ? 0 : cfg.port,
        publicHost: cfg.host,
        writeBarrier,
        gatewayId: newId('gw'),
        leaseTtlMs: cfg.leaseTtlMs,
        // A start counts as pending as long as the slowest local runtime may take (a VM boot without KVM).
        startTimeoutMs: Math.max(cfg.startupTimeoutMs, ...startupFloors) + 15_000,
        ...(cfg.webhookSecret ? { webhookSecret: cfg.webhookSecret } : {}),
        ...(agent ? { localAgent: agent } : {}),
        ...(servicesNode ? { serviceLogs: (name: string, n: number) => (servicesNode as ServicesNode).controller.logs(name, n) } : {}),
      });
    let g = await openGateway(dp.kind === 'haproxy');
    dataPlane = nodeDataPlane(g.url);
    if (dp.kind === 'haproxy') {
      try {
        dataPlane = await startHaproxy(g, agent, join(cfg.dataDir, 'haproxy'), cfg.host, cfg.port, dp.binary, clock, logger, clusterToken);
      } catch (err) {
        if (cfg.dataPlane === 'haproxy') {
          await g.close();
          throw err;
        }
        // auto: a host where HAProxy cannot start still works, through the Node path.
        out(`WARNING: haproxy did not start (${String(err).slice(0, 300)}); using the node data plane`);
        await g.close();
        g = await openGateway(false);
        dataPlane = nodeDataPlane(g.url);
      }
    }
    const gw = g;
    const d = dataPlane;
    writeBarrier.wait = () => d.sync();
    closers.unshift(() => gw.close());
    closers.unshift(() => d.close());
    out(`data plane: ${dataPlane.kind} (${dataPlane.kind === dp.kind ? dp.reason : 'haproxy failed to start'})`);
    if (role === 'up') writeFileSync(join(cfg.dataDir, 'url'), dataPlane.url + '\n');
    out(`Aether ${role === 'up' ? 'is up' : 'gateway'} at ${dataPlane.url}`);
    out(`data dir: ${cfg.dataDir}`);
    out(`try: curl -H "Authorization: Bearer $(cat ${join(cfg.dataDir, 'admin.token')} 2>/dev/null || echo $AETHER_ADMIN_TOKEN)" ${dataPlane.url}/api/functions`);
  }

  // Services: the deployer reads the specs, places them and writes node assignments.
  if (cfg.source && (role === 'up' || role === 'deployer')) {
    const source = specSource(cfg.source);
    const deployer = new Deployer({
      store,
      source,
      deployerId: newId('dep'),
      clock,
      logger,
      pollMs: cfg.pollMs,
      leaseTtlMs: cfg.leaseTtlMs,
      ...(cfg.exportDir ? { exportDir: cfg.exportDir } : {}),
    });
    deployer.start();
    closers.unshift(() => deployer.stop());
    out(`deployer: ${source.describe}, every ${cfg.pollMs} ms${cfg.webhookSecret ? ' and on POST /api/deploy/webhook' : ''}`);
  }

  return dataPlane?.url ?? agentServerUrl ?? '';
}

/**
 * The agent's listener: with the haproxy data plane its own HAProxy binds the agent's port and
 * carries forwards straight to instances, the Node server moves to a loopback port behind it and a
 * forwarding-only Node server (`serve`) listens on a private socket as the proxy's backup; with
 * node, the Node server binds the port itself.
 */
async function listenAgent(
  server: HttpServer,
  cfg: Config,
  o: { viaForwarders: boolean; env: NodeJS.ProcessEnv; clusterToken: string; clock: Clock; logger: Logger; out: (s: string) => void; serve: Parameters<typeof createAgentServer>[0] },
): Promise<{ port: number; hop: AgentHop | undefined; reason: string }> {
  const listen = (host: string, port: number): Promise<number> =>
    new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => {
        server.off('error', reject);
        resolve((server.address() as AddressInfo).port);
      });
    });
  // Instances reached only through forwarder sockets: `auto` keeps the Node hop (as for `aether up`).
  const dp = resolveDataPlane(cfg.dataPlane, o.env, undefined, o.viaForwarders);
  if (cfg.dataPlane === 'haproxy' && !dp.binary) throw new AetherError('AETHER_ERR_VALIDATION', 'config: --data-plane haproxy, but no haproxy binary was found (install haproxy, or use --data-plane auto|node)');
  if (dp.kind === 'node') return { port: await listen(cfg.host, cfg.port), hop: undefined, reason: dp.reason };
  const nodePort = await listen('127.0.0.1', 0);
  try {
    const hop = await startAgentHop({
      dir: join(cfg.dataDir, 'haproxy'),
      host: cfg.host,
      port: cfg.port,
      node: { host: '127.0.0.1', port: nodePort, server },
      forwarder: createAgentServer(o.serve, true),
      clusterToken: o.clusterToken,
      clock: o.clock,
      logger: o.logger,
      ...(dp.binary ? { binary: dp.binary } : {}),
    });
    return { port: hop.port, hop, reason: dp.reason };
  } catch (err) {
    if (cfg.dataPlane === 'haproxy') throw err;
    // auto: a host where HAProxy cannot start still works, through the Node hop.
    o.out(`WARNING: haproxy did not start (${String(err).slice(0, 300)}); using the node data plane`);
    await new Promise<void>((r) => server.close(() => r()));
    return { port: await listen(cfg.host, cfg.port), hop: undefined, reason: 'haproxy failed to start' };
  }
}

/** The gateway's watch-fed views as the data plane's route source. */
function viewsSource(v: Gateway['views']): RouteSource {
  return {
    functions: () => v.functions.items.values(),
    instancesOf: (fnId) => v.byFunction.get(fnId)?.values() ?? [],
    onChange(listener) {
      const a = v.functions.onChange(() => listener());
      const b = v.instances.onChange(() => listener());
      return () => {
        a();
        b();
      };
    },
  };
}

function startHaproxy(g: Gateway, agent: Agent | undefined, dir: string, host: string, port: number, binary: string | undefined, clock: Clock, logger: Logger, clusterToken: string): Promise<DataPlane> {
  return startHaproxyDataPlane({
    dir,
    host,
    port,
    activator: { host: '127.0.0.1', port: Number(new URL(g.url).port), server: g.server },
    source: viewsSource(g.views),
    sinks: {
      record: (rec) => g.recorder.record(rec),
      observed: (rec, weight) => {
        metrics.invocations.inc({ function_id: rec.function_id, status: rec.status }, weight);
        // A sampled line stands for `weight` requests (prom-client has no weighted observe).
        const labels = { function_id: rec.function_id };
        for (let i = 0; i < weight; i++) metrics.invocationDuration.observe(labels, rec.duration_ms / 1000);
      },
      functionLoad: (fnId, n) => g.invoker.setExternalLoad(fnId, n),
      ...(agent ? { instanceLoad: (id: string, n: number, active: boolean, routed: boolean) => agent.noteExternalLoad(id, n, active, routed) } : {}),
    },
    localAgentId: agent?.id,
    // Instances on other nodes: proxy -> their agent, the token added on that hop only. Only on a
    // gateway without an agent (`aether up` has no other nodes' instances to reach).
    ...(agent ? {} : { clusterToken }),
    clock,
    logger,
    logSamplingMax: maxSampling(process.env['AETHER_LOG_SAMPLING_MAX']),
    ...(binary ? { binary } : {}),
  });
}
