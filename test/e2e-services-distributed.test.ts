/**
 * Services across two agents: real etcd, Redis and radosgw; one `aether deployer` reading a
 * firework-format Git repo by file:// URL, one `aether gateway`, two `aether agent`s (process
 * sandbox: each service is an ext4 image built by `aether image build` from busybox's httpd, run as
 * a container). Steps run in order and share the cluster. Every wait is bounded; nothing asserts speed.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { api, eventually, startAether, type RunningPlatform } from './support/platform.ts';
import { backendsMissing, startBackends, type Backends } from './support/backends.ts';
import { sandboxPids } from './support/procs.ts';
import { busyboxImage, busyboxMissing } from './support/busybox.ts';
import { byHost } from './support/router.ts';
import type { ServiceView } from '../src/spec/index.ts';
import type { DeployStatus } from '../src/deploy/index.ts';

// Long enough for a killed agent to be restarted within it (adoption), short for the move test.
const LEASE_TTL_MS = 10_000;
const TOKEN = randomBytes(16).toString('hex');
const PAGE = 'hello from a service\n';
/** Host ports of the port forwards (one per service: both agents share this host's ports). */
const PORTS = { web: 28181, api: 28182, 'acme-web': 28183 } as const;

const skip =
  process.getuid?.() !== 0
    ? 'needs root (service containers: loop devices, mounts)'
    : (busyboxMissing() ?? backendsMissing() ?? false);

function git(dir: string, ...args: string[]): void {
  execFileSync('git', ['-C', dir, '-c', 'user.email=t@example.test', '-c', 'user.name=t', ...args], { stdio: 'ignore' });
}

const svcYaml = (name: string, image: string, hostPort: number, extra: string): string =>
  `name: ${name}\nimage: ${image}\nnode_type: general\nsandbox: process\nmemory_mb: 128\ncommand: [/bin/busybox, httpd, -f, -v, -p, '8080', -h, /www]\nport_forwards: [{host_port: ${hostPort}, vm_port: 8080}]\n${extra}`;

/** One environment variable of an instance's program, read from /proc. */
function instanceEnv(instanceId: string, name: string): string | undefined {
  for (const pid of sandboxPids(instanceId)) {
    try {
      const vars = readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0');
      const hit = vars.find((v) => v.startsWith(`${name}=`));
      if (hit) return hit.slice(name.length + 1);
    } catch {
      // gone meanwhile
    }
  }
  return undefined;
}

interface NodeStatus {
  node: string;
  services: { service: string; instance_id: string | null; state: string }[];
}

if (skip) {
  it('services across two agents', { skip }, () => {});
} else {
  let backends: Backends | undefined;
  let flags: string[];
  let env: Record<string, string>;
  let dir: string;
  let repo: string;
  let image: string;
  let gateway: RunningPlatform;
  let deployer: RunningPlatform;
  const agents = new Map<string, { p: RunningPlatform; router: string }>();
  const began = Date.now();

  const startAgent = async (id: string, dataDir?: string): Promise<void> => {
    const p = await startAether({
      role: 'agent',
      token: TOKEN,
      ...(dataDir ? { dataDir } : {}),
      args: [...flags, '--port', '0', '--advertise', '127.0.0.1', '--agent-id', id, '--node-type', 'general', '--router-port', '0', '--sandboxes', 'process', '--traefik-config-dir', join(dir, `traefik-${id}`)],
      env,
    });
    const router = /edge router at (http:\/\/\S+)/.exec(p.output())?.[1];
    assert.ok(router, p.output());
    agents.set(id, { p, router });
  };
  const routerOf = (id: string): string => (agents.get(id) as { router: string }).router;
  const services = async (): Promise<Map<string, ServiceView>> => new Map((await api<ServiceView[]>(gateway, 'GET', '/api/services')).body.map((s) => [s.name, s]));
  const allRunning = async (names: string[]): Promise<Map<string, ServiceView> | false> => {
    const s = await services();
    return names.every((n) => s.get(n)?.state === 'running') && s;
  };
  /** Each router serves every host: its own instances directly, the others' through the peer's router. */
  const everyRouterServesEveryHost = async (): Promise<void> => {
    for (const id of agents.keys()) {
      for (const host of ['web.test', 'api.test', 'acme.test']) {
        const r = await eventually(async () => {
          const x = await byHost(routerOf(id), host, { timeoutMs: 10_000 });
          return x.status === 200 && x;
        }, 20_000, 200);
        assert.equal(r.text, PAGE, `${host} through ${id}`);
      }
    }
  };
  const nodeStatus = async (id: string): Promise<NodeStatus> => (await (await fetch(routerOf(id) + '/status')).json()) as NodeStatus;
  const instanceOf = async (svc: string): Promise<{ node: string; instance: string }> => {
    for (const id of agents.keys()) {
      const s = (await nodeStatus(id)).services.find((x) => x.service === svc && x.state === 'running');
      if (s?.instance_id) return { node: id, instance: s.instance_id };
    }
    throw new Error(`${svc} runs nowhere`);
  };
  const explain = async (err: unknown): Promise<never> => {
    const outs = [...agents].map(([id, a]) => `--- ${id}\n${a.p.output().slice(-3000)}`).join('\n');
    throw new Error(`${String(err)}\nservices: ${JSON.stringify([...(await services()).values()])}\n--- deployer\n${deployer.output().slice(-2000)}\n${outs}`);
  };
  const commit = (msg: string): void => {
    git(repo, 'add', '-A');
    git(repo, 'commit', '-qm', msg);
  };

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'aether-e2e-svcd-'));
    // The image: busybox + a page; firework's tenant override runs <dir>/<tenant>-<file>.
    ({ image } = busyboxImage(dir, PAGE, { linkProbe: 'WEB_URL' }));
    copyFileSync(image, join(dir, 'acme-web.ext4'));

    repo = join(dir, 'repo');
    mkdirSync(join(repo, 'services'), { recursive: true });
    mkdirSync(join(repo, 'tenants', 'acme'), { recursive: true });
    writeFileSync(join(repo, 'defaults.yaml'), 'vcpus: 1\nhealth_check:\n  interval: 1s\n  timeout: 1s\n  retries: 2\n');
    writeFileSync(join(repo, 'services', 'web.yaml'), svcYaml('web', image, PORTS.web, 'metadata: {host: web.test}\nanti_affinity_group: front\nhealth_check: {type: http, port: 8080, path: /}\n'));
    writeFileSync(join(repo, 'services', 'api.yaml'), svcYaml('api', image, PORTS.api, 'metadata: {host: api.test}\nanti_affinity_group: front\nlinks: [{service: web, env: WEB_URL, port: 8080}]\nnode_host_ip_env: NODE_IP\n'));
    // The tenant override: its own host name and host port.
    writeFileSync(join(repo, 'tenants', 'acme', 'web.yaml'), `metadata: {host: acme.test}\nport_forwards: [{host_port: ${PORTS['acme-web']}, vm_port: 8080}]\n`);
    execFileSync('git', ['init', '-q', '-b', 'main', repo]);
    commit('first');

    backends = await startBackends({ appendOnly: true });
    const { store } = backends;
    flags = backends.flags;
    env = { ...backends.env, AETHER_LEASE_TTL_MS: String(LEASE_TTL_MS), AETHER_LOG_LEVEL: 'info' };
    gateway = await startAether({ role: 'gateway', token: TOKEN, args: flags, env });
    await startAgent('node-a');
    await startAgent('node-b');
    deployer = await startAether({ role: 'deployer', args: ['--store', store, '--source', `file://${repo}#main`, '--poll', '1s'], env });
  }, { timeout: 600_000 });

  after(async () => {
    await deployer?.stop();
    await gateway?.stop();
    for (const a of agents.values()) await a.p.stop();
    await backends?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
    process.stdout.write(`# e2e-services-distributed took ${Math.round((Date.now() - began) / 1000)} s\n`);
  }, { timeout: 120_000 });

  describe('services across two agents', { timeout: 900_000 }, () => {
    let first: Map<string, ServiceView>;

    it('placed on both nodes (anti-affinity), routed by Host through either router, ports published, links resolved', { timeout: 240_000 }, async () => {
      first = await eventually(() => allRunning(['acme-web', 'api', 'web']), 180_000, 500).catch(explain);
      assert.notEqual(first.get('web')?.node, first.get('api')?.node, 'web and api share an anti-affinity group: different nodes');
      assert.deepEqual(new Set([...first.values()].map((s) => s.node)), new Set(['node-a', 'node-b']));
      await everyRouterServesEveryHost();
      for (const id of agents.keys()) assert.equal((await byHost(routerOf(id), 'nothing.test', { timeoutMs: 10_000 })).status, 404);
      // port_forwards: each host port answers on the node running the service.
      for (const [svc, port] of Object.entries(PORTS)) {
        const r = await eventually(async () => {
          const x = await fetch(`http://127.0.0.1:${port}/`).catch(() => undefined);
          return x?.status === 200 && x;
        }, 20_000, 200);
        assert.equal(await r.text(), PAGE, `${svc} on host port ${port}`);
      }
      // links: api's WEB_URL names web's node address and published port; NODE_IP is api's node.
      const api0 = await instanceOf('api');
      assert.equal(instanceEnv(api0.instance, 'WEB_URL'), `http://127.0.0.1:${PORTS.web}`);
      assert.equal(instanceEnv(api0.instance, 'NODE_IP'), '127.0.0.1');
      assert.equal((await fetch(instanceEnv(api0.instance, 'WEB_URL') ?? '')).status, 200, 'the link answers');
      // ... from inside api's process sandbox too: its own program fetches WEB_URL and gets web's page
      // from the other node (api's agent relays it to web's published port there; links.ts)
      const viaApi = await fetch(`http://127.0.0.1:${PORTS.api}/cgi-bin/get`, { signal: AbortSignal.timeout(15_000) });
      assert.equal((await viaApi.text()).trim(), `OK ${PAGE.trim()}`, "api's program reaches web across nodes");
      // The Traefik file of each node names every host.
      for (const id of agents.keys()) {
        const file = join(dir, `traefik-${id}`, 'aether.yaml');
        const text = await eventually(async () => existsSync(file) && /acme\.test/.test(readFileSync(file, 'utf8')) && /api\.test/.test(readFileSync(file, 'utf8')) && /web\.test/.test(readFileSync(file, 'utf8')) && readFileSync(file, 'utf8'), 20_000, 200);
        assert.match(text, /Host\(`web\.test`\)/);
        // Servers are edge routers at node addresses, reachable from a Traefik anywhere; never a node-local sandbox address.
        assert.doesNotMatch(text, /10\.213\./);
        assert.match(text, /url: http:\/\/127\.0\.0\.1:\d+/);
      }
    });

    it('service logs through the gateway, from whichever agent runs the service', { timeout: 60_000 }, async () => {
      for (const svc of ['web', 'api']) {
        await byHost(routerOf('node-a'), `${svc}.test`, { timeoutMs: 10_000 });
        const lines = await eventually(async () => {
          const r = await fetch(`${gateway.url}/api/services/${svc}/logs?tail=50`, { headers: { authorization: `Bearer ${TOKEN}` } });
          assert.equal(r.status, 200, await r.clone().text());
          const got = (await r.text()).trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as { text: string; instance_id: string });
          return got.length > 0 && got;
        }, 20_000, 500);
        const running = await instanceOf(svc);
        assert.ok(lines.some((l) => l.instance_id === running.instance), `${svc}: lines of its instance on ${running.node}: ${JSON.stringify(lines.slice(-3))}`);
      }
    });

    it('a commit that changes one service converges; the others keep their instances', { timeout: 120_000 }, async () => {
      const before = { web: await instanceOf('web'), acme: await instanceOf('acme-web'), api: await instanceOf('api') };
      writeFileSync(join(repo, 'services', 'api.yaml'), svcYaml('api', image, PORTS.api, 'metadata: {host: api.test}\nanti_affinity_group: front\nlinks: [{service: web, env: WEB_URL, port: 8080}]\nnode_host_ip_env: NODE_IP\nenv: {VERSION: "2"}\n'));
      commit('api v2');
      const api2 = await eventually(async () => {
        if (!(await allRunning(['acme-web', 'api', 'web']))) return false;
        const now = await instanceOf('api');
        return now.instance !== before.api.instance && now;
      }, 60_000, 300).catch(explain);
      assert.equal(instanceEnv(api2.instance, 'VERSION'), '2');
      assert.deepEqual(await instanceOf('web'), before.web, 'web untouched');
      assert.deepEqual(await instanceOf('acme-web'), before.acme, 'acme-web untouched');
    });

    it('a killed service process is recreated although nothing changed in Git', { timeout: 120_000 }, async () => {
      const victim = await instanceOf('web');
      const pids = sandboxPids(victim.instance);
      assert.ok(pids.length > 0, 'the container is visible');
      for (const p of pids) process.kill(p, 'SIGKILL');
      const back = await eventually(async () => {
        const s = await allRunning(['web']);
        const now = await instanceOf('web').catch(() => undefined);
        return s && now && now.instance !== victim.instance && (s.get('web')?.restarts ?? 0) >= 1 && now;
      }, 90_000, 300).catch(explain);
      assert.equal(back.node, victim.node, 'recreated on its node');
      assert.equal((await byHost(routerOf(back.node === 'node-a' ? 'node-b' : 'node-a'), 'web.test', { timeoutMs: 10_000 })).status, 200);
    });

    it('an invalid commit is refused with file and field; running services stay up', { timeout: 60_000 }, async () => {
      const before = await instanceOf('api');
      writeFileSync(join(repo, 'services', 'bad.yaml'), 'name: bad\nnode_type: general\n');
      writeFileSync(join(repo, 'services', 'api.yaml'), svcYaml('api', image, PORTS.api, 'metadata: {host: api.test}\nvcpus: two\n'));
      commit('broken');
      const refused = await eventually(async () => {
        const d = (await api<DeployStatus>(gateway, 'GET', '/api/deploy')).body;
        return !d.ok && d.errors.length > 0 && d;
      }, 30_000, 300);
      assert.ok(refused.errors.some((e) => e.file === 'services/bad.yaml' && e.field === 'image'), JSON.stringify(refused.errors));
      assert.ok(refused.errors.some((e) => e.file === 'services/api.yaml' && e.field === 'vcpus'), JSON.stringify(refused.errors));
      assert.ok(await allRunning(['acme-web', 'api', 'web']), 'running services stay up');
      assert.deepEqual(await instanceOf('api'), before, 'api keeps its instance');
      // Fixed again: back to the good spec (same content as before: nothing restarts).
      git(repo, 'rm', '-q', 'services/bad.yaml');
      git(repo, 'checkout', 'HEAD~1', '--', 'services/api.yaml');
      commit('fixed');
      await eventually(async () => (await api<DeployStatus>(gateway, 'GET', '/api/deploy')).body.ok, 30_000, 300);
      assert.deepEqual(await instanceOf('api'), before, 'api still keeps its instance');
    });

    it('a failing health check restarts its instance', { timeout: 180_000 }, async () => {
      writeFileSync(join(repo, 'services', 'sick.yaml'), svcYaml('sick', image, 28184, 'health_check: {type: http, port: 8080, path: /missing}\n'));
      commit('sick');
      await eventually(async () => ((await services()).get('sick')?.restarts ?? 0) >= 1, 150_000, 500).catch(explain);
      git(repo, 'rm', '-q', 'services/sick.yaml');
      commit('no sick');
      await eventually(async () => !(await services()).has('sick'), 60_000, 500);
    });

    it('kill -9 of an agent and a restart within its lease adopts its instances: nothing restarts', { timeout: 180_000 }, async () => {
      const placed = await eventually(() => allRunning(['acme-web', 'api', 'web']), 60_000, 300).catch(explain);
      const victimId = placed.get('web')?.node as string;
      const onVictim = [...placed.values()].filter((s) => s.node === victimId).map((s) => s.name);
      const before = new Map(await Promise.all(onVictim.map(async (s) => [s, await instanceOf(s)] as const)));
      const restarts = new Map(onVictim.map((s) => [s, placed.get(s)?.restarts]));
      const victim = agents.get(victimId)?.p as RunningPlatform;
      await victim.kill({ keepSandboxes: true });
      agents.delete(victimId);
      const killedAt = Date.now();
      await startAgent(victimId, victim.dataDir);
      const downMs = Date.now() - killedAt;
      // Adoption is only promised within the lease: past it the node counts as gone.
      assert.ok(downMs < LEASE_TTL_MS, `the agent came back within its lease (${downMs} ms)`);
      for (const [svc, was] of before) assert.deepEqual(await eventually(() => instanceOf(svc), 20_000, 200).catch(explain), was, `${svc} keeps its instance`);
      const now = await services();
      for (const svc of onVictim) {
        assert.equal(now.get(svc)?.node, victimId, `${svc} stays on ${victimId}`);
        assert.equal(now.get(svc)?.restarts, restarts.get(svc), `${svc} was not restarted`);
      }
      for (const host of ['web.test', 'api.test', 'acme.test']) {
        const r = await eventually(async () => {
          const x = await byHost(routerOf(victimId), host);
          return x.status === 200 && x;
        }, 20_000, 200);
        assert.equal(r.text, PAGE, `${host} through the restarted ${victimId}`);
      }
    });

    it('an agent kept down has its services moved; when it comes back it stops what it no longer owns', { timeout: 240_000 }, async () => {
      const placed = await eventually(() => allRunning(['acme-web', 'api', 'web']), 60_000, 300).catch(explain);
      const victimId = placed.get('web')?.node as string;
      const survivorId = victimId === 'node-a' ? 'node-b' : 'node-a';
      const onVictim = [...placed.values()].filter((s) => s.node === victimId).map((s) => s.name);
      assert.ok(onVictim.includes('web'));
      const orphans = await eventually(() => Promise.all(onVictim.map(async (s) => (await instanceOf(s)).instance)), 30_000, 300);
      const victim = agents.get(victimId)?.p as RunningPlatform;
      await victim.kill({ keepSandboxes: true });
      agents.delete(victimId);
      // Lease expiry -> the deployer re-plans -> everything runs on the survivor.
      const moved = await eventually(async () => {
        const s = await allRunning(['acme-web', 'api', 'web']);
        return s && [...s.values()].every((v) => v.node === survivorId) && s;
      }, LEASE_TTL_MS + 90_000, 500).catch(explain);
      assert.equal(moved.size, 3);
      for (const host of ['web.test', 'api.test', 'acme.test']) {
        const r = await eventually(async () => {
          const x = await byHost(routerOf(survivorId), host, { timeoutMs: 10_000 });
          return x.status === 200 && x;
        }, 20_000, 200);
        assert.equal(r.text, PAGE);
      }
      const deploy = (await api<DeployStatus>(gateway, 'GET', '/api/deploy')).body;
      assert.ok(deploy.ok);
      // The orphaned containers outlived their agent; the agent coming back on that node stops
      // them (they are no longer its) before it runs anything.
      for (const id of orphans) assert.ok(sandboxPids(id).length > 0, `container ${id} outlives its killed agent`);
      await startAgent(victimId, victim.dataDir);
      for (const id of orphans) await eventually(async () => sandboxPids(id).length === 0, 30_000, 200);
      // With two nodes again, the anti-affinity pair is spread again (one of them moves back);
      // everything runs once and every router serves every host.
      const spread = await eventually(async () => {
        const s = await allRunning(['acme-web', 'api', 'web']);
        return s && s.get('web')?.node !== s.get('api')?.node && s;
      }, 90_000, 500).catch(explain);
      assert.equal(spread.size, 3);
      await everyRouterServesEveryHost();
      const running = new Map<string, number>();
      for (const id of agents.keys()) for (const x of (await nodeStatus(id)).services) running.set(x.service, (running.get(x.service) ?? 0) + 1);
      assert.deepEqual([...running].sort(), [['acme-web', 1], ['api', 1], ['web', 1]], 'each service runs on exactly one node');
    });
  });
}
