import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { AddressInfo } from 'node:net';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer as createHttpServer, type Server } from 'node:http';
import { parse } from 'yaml';
import { freePort, systemClock } from '../../core/index.ts';
import { createSqliteStore } from '../../store/sqlite.ts';
import { createFakeRuntime } from '../../runtime/fake/index.ts';
import { enrich, parseRepo, type ServiceAssignment } from '../../deploy/index.ts';
import { KEYS, type AgentRecord } from '../../spec/index.ts';
import { remoteServiceLogs } from '../../gateway/logs.ts';
import { ServicesNode } from './node.ts';

async function until<T>(what: string, fn: () => Promise<T | undefined | false> | T | undefined | false, ms = 5000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

test('services node: port forwards published, the Traefik file follows the routes (local and peer), logs served to gateways with the cluster token', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'aether-svcnode-test-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const store = createSqliteStore({ path: ':memory:' });
  const runtime = createFakeRuntime({});
  const traefikDir = join(dir, 'traefik');
  const node = new ServicesNode({ store, nodeId: 'n1', runtimes: { process: runtime }, clock: systemClock, routerPort: 0, routerHost: '127.0.0.1', traefikConfigDir: traefikDir, syncMs: 20, capacity: { vcpu: 4, memoryMb: 4096 }, publishHost: '127.0.0.1', nodeAddress: '192.0.2.1', startupTimeoutMs: 2000 });
  t.after(async () => {
    await node.stop();
    await runtime.close();
    await store.close();
  });
  const routerUrl = await node.listen();
  assert.ok(routerUrl);
  const hostPort = await freePort();
  const { services } = enrich(parseRepo([{ path: 'services/web.yaml', text: `name: web\nimage: /img/web.ext4\nnode_type: general\nmetadata: {host: web.test}\nport_forwards: [{host_port: ${hostPort}, vm_port: 8080}]\n` }]));
  await store.put(KEYS.assignment('n1'), JSON.stringify({ node: 'n1', revision: 'r', services, written_at: '' } satisfies ServiceAssignment));
  // A peer runs api.test.
  const peer: AgentRecord = { agent_id: 'n2', url: 'http://10.0.0.2:7000', router_url: 'http://10.0.0.2:8088', hostname: 'n2', capacity: { instances: 1, memory_mb: 1, vcpu: 1 }, used: { instances: 0, memory_mb: 0, vcpu: 0 }, isolation: 'namespaces', started_at: '' };
  await store.put(KEYS.agent('n2'), JSON.stringify(peer));
  const peerSvc = enrich(parseRepo([{ path: 'services/api.yaml', text: 'name: api\nimage: /img/api.ext4\nnode_type: general\nmetadata: {host: api.test}\n' }])).services;
  await store.put(KEYS.assignment('n2'), JSON.stringify({ node: 'n2', revision: 'r', services: peerSvc, written_at: '' } satisfies ServiceAssignment));
  await store.put(KEYS.serviceStatus('n2', 'api'), JSON.stringify({ node: 'n2', service: 'api', instance_id: 'x', config_key: 'k', state: 'running', health: 'not_configured', address: null, restarts: 0, started_at: null, message: null }));
  await node.start();

  // The host port answers with the instance's page, through the agent's listener.
  const body = await until('the published port answers', async () => {
    const r = await fetch(`http://127.0.0.1:${hostPort}/hello`).catch(() => undefined);
    return r?.status === 200 && ((await r.json()) as { url: string });
  });
  assert.equal(body.url, '/hello');
  assert.deepEqual(node.published(), [{ service: 'web', host_port: hostPort, vm_port: 8080 }]);

  // Traefik: web.test to this node's router at its node address (not the instance's own address), api.test to the peer's router.
  const file = join(traefikDir, 'aether.yaml');
  const doc = await until('the traefik file names both hosts', async () => {
    if (!existsSync(file)) return false;
    const d = parse(await readFile(file, 'utf8')) as { http: { routers?: Record<string, { rule: string }>; services?: Record<string, { loadBalancer: { servers: { url: string }[] } }> } };
    return Object.keys(d.http.routers ?? {}).length === 2 && d;
  });
  assert.equal(doc.http.routers?.['aether-api-test']?.rule, 'Host(`api.test`)');
  assert.deepEqual(doc.http.services?.['aether-api-test']?.loadBalancer.servers, [{ url: 'http://10.0.0.2:8088' }]);
  assert.deepEqual(doc.http.services?.['aether-web-test']?.loadBalancer.servers, [{ url: `http://192.0.2.1:${new URL(routerUrl).port}` }]);
  assert.equal(node.advertisedRouterUrl, `http://192.0.2.1:${new URL(routerUrl).port}`);

  // The peer's api stops: its route leaves the file.
  await store.delete(KEYS.serviceStatus('n2', 'api'));
  await until('api.test gone from the traefik file', async () => !(await readFile(file, 'utf8')).includes('api.test'));

  // Logs: the agent server's internal route, as a gateway reads it.
  const server: Server = createHttpServer((req, res) => {
    if (!node.handleInternal(req, res, 'cluster-secret')) res.writeHead(404).end();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  t.after(() => new Promise<void>((r) => server.close(() => r())));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const me: AgentRecord = { ...peer, agent_id: 'n1', url };
  const read = remoteServiceLogs({ agents: () => [me], token: 'cluster-secret' });
  const lines = await read('n1', 'web', 100);
  assert.ok(lines.some((l) => l.text === 'req GET /hello'), JSON.stringify(lines));
  assert.ok(lines.every((l) => typeof l.time === 'number' && l.instance_id));
  const wrong = remoteServiceLogs({ agents: () => [me], token: 'nope' });
  await assert.rejects(wrong('n1', 'web', 10), /answered 401/);
  await assert.rejects(read('n9', 'web', 10), (err: Error & { code?: string }) => err.code === 'AETHER_ERR_UNAVAILABLE' && /n9/.test(err.message));
  assert.equal((await fetch(`${url}/internal/service-logs/web`)).status, 401, 'no token, no logs');

  // Unassigned: the host port closes.
  await store.put(KEYS.assignment('n1'), JSON.stringify({ node: 'n1', revision: 'r2', services: [], written_at: '' } satisfies ServiceAssignment));
  await until('the port is unpublished', () => node.published().length === 0);
  await assert.rejects(fetch(`http://127.0.0.1:${hostPort}/`));
});
