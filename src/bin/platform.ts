import { mkdirSync, readFileSync, writeFileSync, existsSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { clusterTokenFor, loadConfig, type ConfigInput, type Role } from '../config/index.ts';
import { AetherError, createLogger, newId, systemClock, type Logger } from '../core/index.ts';
import { createAgent, agentConfig, type Agent } from '../agent/index.ts';
import { FunctionService, loadAdminToken, startGateway, type Gateway } from '../gateway/index.ts';
import { closeAllEndpoints } from '../proxy/index.ts';
import { probeHost } from '../runtime/index.ts';
import { openBlob, openQueue, openStore } from './drivers.ts';
import { Deployer, specSource } from '../deploy/index.ts';
import { ServicesNode } from '../agent/services/index.ts';
import { openRuntimes } from './runtimes.ts';

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
    if (t.source === 'generated') say(`admin token (generated, shown once): ${t.token}\n  saved to ${t.path ?? join(dataDir, 'admin.token')} (mode 0600)`);
    else say(`admin token: from ${t.source === 'env' ? 'AETHER_ADMIN_TOKEN' : (t.path ?? 'file')}`);
    return t.token;
  }
  // Every gateway must share one token: never generate one per process.
  if (env['AETHER_ADMIN_TOKEN']) return env['AETHER_ADMIN_TOKEN'];
  if (tokenFile) return readFileSync(tokenFile, 'utf8').trim();
  if (role === 'gateway') throw new AetherError('AETHER_ERR_VALIDATION', 'config: `aether gateway` needs AETHER_ADMIN_TOKEN or --admin-token-file (the same for every gateway)');
  return undefined;
}

export async function startNode(role: Role, flags: ConfigInput & { config?: string }, env: NodeJS.ProcessEnv = process.env, out: (s: string) => void = (s) => process.stdout.write(s + '\n')): Promise<RunningNode> {
  const cfg = loadConfig(role, flags, env);
  const logger: Logger = createLogger(`aether-${role}`, cfg.logLevel);
  mkdirSync(cfg.dataDir, { recursive: true, mode: 0o700 });
  const clock = systemClock;
  // Agents never read the admin token: they know only the cluster token, checked before anything starts.
  // The deployer talks only to the store: it needs neither secret.
  const token = role === 'agent' || role === 'deployer' ? undefined : await adminToken(role, cfg.dataDir, cfg.adminTokenFile, env, out);
  const clusterToken = role === 'deployer' ? '' : clusterTokenFor(role, { env, file: cfg.clusterTokenFile, adminToken: token });
  const store = openStore(cfg, logger);
  const queue = openQueue(cfg, logger);
  const blob = openBlob(cfg);
  const closers: (() => Promise<void>)[] = [];

  let agent: Agent | undefined;
  let servicesNode: ServicesNode | undefined;
  const startupFloors: number[] = [];
  let agentServerUrl: string | undefined;
  if (role === 'up' || role === 'agent') {
    const host = await probeHost();
    out(`host: ${JSON.stringify({ root: host.root, namespaces: host.namespaces, cgroups: host.cgroups, kvm: host.kvm, qemu: host.qemu, firecracker: host.firecracker, isolation: host.isolation })}`);
    const agentId = stableAgentId(cfg.dataDir, cfg.agentId);
    const { runtimes, notes } = openRuntimes(cfg, host, agentId, clock, logger);
    for (const n of notes) out(n);
    const all = Object.values(runtimes);
    for (const rt of all) if (rt.minStartupMs) startupFloors.push(rt.minStartupMs);
    const closeRuntimes = (): Promise<unknown> => Promise.all(all.map((rt) => rt.close()));
    if (all.length === 0) throw new AetherError('AETHER_ERR_VALIDATION', 'config: this node offers no sandbox (see --sandboxes and `aether doctor`)');
    if (role === 'up' && !runtimes[cfg.sandbox]) {
      await closeRuntimes();
      throw new AetherError('AETHER_ERR_VALIDATION', `config: --sandbox ${cfg.sandbox} is the default for new functions, but this node does not offer it (offered: ${Object.keys(runtimes).join(', ')}; see \`aether doctor\`)`);
    }
    let url = 'local://in-process';
    let server: ReturnType<typeof createServer> | undefined;
    if (role === 'agent') {
      // Listen first (the advertised URL carries the bound port), hand requests to the agent once built.
      server = createServer((req, res) => {
        if (agent) agent.handleHttp(req, res);
        else {
          res.writeHead(503).end();
        }
      });
      await new Promise<void>((resolve, reject) => {
        server?.once('error', reject);
        server?.listen(cfg.port, cfg.host, () => resolve());
      });
      const port = (server.address() as AddressInfo).port;
      url = `http://${cfg.advertise ?? (cfg.host === '0.0.0.0' || cfg.host === '::' ? '127.0.0.1' : cfg.host)}:${port}`;
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
    });
    servicesNode = services;
    const routerUrl = await services.listen();
    const advertisedRouter = routerUrl && cfg.advertise ? `http://${cfg.advertise}:${new URL(routerUrl).port}` : routerUrl;
    if (routerUrl) out(`edge router at ${routerUrl} (routes by Host to services; /status, /health, /metrics)`);
    agent = createAgent({
      store,
      queue,
      blob,
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
    await agent.start();
    await services.start();
    const a = agent;
    closers.push(async () => {
      await services.stop();
      await a.stop();
      await closeRuntimes();
      if (server) await new Promise<void>((r) => server?.close(() => r()));
    });
    if (role === 'agent') out(`agent ${agentId} serving at ${url}`);
  }

  let gateway: Gateway | undefined;
  if (role === 'up' || role === 'gateway') {
    mkdirSync(join(cfg.dataDir, 'tmp'), { recursive: true });
    const functions = new FunctionService({ store, blobs: blob, clock, logger, limits: cfg.limits, defaultSandbox: cfg.sandbox, tmpDir: join(cfg.dataDir, 'tmp') });
    gateway = await startGateway({
      store,
      queue,
      clock,
      logger,
      functions,
      adminToken: token as string,
      clusterToken,
      limits: cfg.limits,
      host: cfg.host,
      port: cfg.port,
      gatewayId: newId('gw'),
      leaseTtlMs: cfg.leaseTtlMs,
      // A start counts as pending as long as the slowest local runtime may take (a VM boot without KVM).
      startTimeoutMs: Math.max(cfg.startupTimeoutMs, ...startupFloors) + 15_000,
      ...(cfg.webhookSecret ? { webhookSecret: cfg.webhookSecret } : {}),
      ...(agent ? { localAgent: agent } : {}),
      ...(servicesNode ? { serviceLogs: (name: string, n: number) => (servicesNode as ServicesNode).controller.logs(name, n) } : {}),
    });
    const g = gateway;
    closers.unshift(() => g.close());
    if (role === 'up') writeFileSync(join(cfg.dataDir, 'url'), gateway.url + '\n');
    out(`Aether ${role === 'up' ? 'is up' : 'gateway'} at ${gateway.url}`);
    out(`data dir: ${cfg.dataDir}`);
    out(`try: curl -H "Authorization: Bearer $(cat ${join(cfg.dataDir, 'admin.token')} 2>/dev/null || echo $AETHER_ADMIN_TOKEN)" ${gateway.url}/api/functions`);
  }

  // Services: the deployer reads the specs, places them and writes node assignments.
  if (cfg.source && (role === 'up' || role === 'deployer')) {
    const deployer = new Deployer({
      store,
      source: specSource(cfg.source),
      deployerId: newId('dep'),
      clock,
      logger,
      pollMs: cfg.pollMs,
      leaseTtlMs: cfg.leaseTtlMs,
      ...(cfg.exportDir ? { exportDir: cfg.exportDir } : {}),
    });
    deployer.start();
    closers.unshift(() => deployer.stop());
    out(`deployer: ${specSource(cfg.source).describe}, every ${cfg.pollMs} ms${cfg.webhookSecret ? ' and on POST /api/deploy/webhook' : ''}`);
  }

  let closing: Promise<void> | undefined;
  return {
    url: gateway?.url ?? agentServerUrl ?? '',
    close() {
      closing ??= (async () => {
        for (const c of closers) await c().catch((err: unknown) => logger.error({ err: String(err) }, 'shutdown step failed'));
        await closeAllEndpoints();
        await queue.close().catch(() => undefined);
        await blob.close().catch(() => undefined);
        await store.close().catch(() => undefined);
        logger.flush();
      })();
      return closing;
    },
  };
}
