import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ManualClock } from '../core/index.ts';
import { KEYS, type AgentRecord, type ServiceStatusRecord } from '../spec/index.ts';
import { createSqliteStore } from '../store/sqlite.ts';
import { createFsBlobStore } from '../blob/fs.ts';
import { enrich, parseRepo, type ServiceAssignment } from '../deploy/index.ts';
import { FunctionService } from './functions.ts';
import { buildApi, type LogSource } from './api.ts';
import { ServiceCatalog } from './services.ts';

const TOKEN = 'secret-token';
const AUTH = { authorization: `Bearer ${TOKEN}` };
const SECRET = 'hook-secret';
const noLogs: LogSource = { tail: async () => [], follow: () => undefined };

async function setup(t: TestContext, webhookSecret: string | undefined = SECRET) {
  const dir = await mkdtemp(join(tmpdir(), 'aether-svc-api-test-'));
  const clock = new ManualClock(Date.parse('2026-01-02T03:04:05.000Z'));
  const store = createSqliteStore({ path: ':memory:', clock });
  const blobs = createFsBlobStore({ dir: join(dir, 'blobs') });
  const limits = { maxArchiveBytes: 1024, maxUnpackedBytes: 4096, maxEntries: 10 };
  const functions = new FunctionService({ store, blobs, defaultSandbox: 'process', limits, clock, tmpDir: dir });
  const app = buildApi({ functions, store, adminToken: TOKEN, logs: noLogs, metricsOpen: false, limits, services: { catalog: new ServiceCatalog(store, clock), store, clock, webhookSecret } });
  t.after(async () => {
    await app.close();
    await store.close();
    await rm(dir, { recursive: true, force: true });
  });
  const { services } = enrich(parseRepo([
    { path: 'services/web.yaml', text: 'name: web\nimage: /i/web.ext4\nnode_type: general\nmetadata: {host: web.test}\nhealth_check: {port: 8080}\n' },
    { path: 'services/db.yaml', text: 'name: db\nimage: /i/db.ext4\nnode_type: general\n' },
  ]));
  const doc: ServiceAssignment = { node: 'n1', revision: 'abc123', services, written_at: '2026-01-02T03:04:05.000Z' };
  await store.put(KEYS.assignment('n1'), JSON.stringify(doc));
  const agent: AgentRecord = { agent_id: 'n1', url: 'http://n1', hostname: 'n1', capacity: { instances: 10, memory_mb: 4096, vcpu: 4 }, used: { instances: 0, memory_mb: 0, vcpu: 0 }, isolation: 'namespaces', started_at: doc.written_at, node_type: 'general' };
  await store.put(KEYS.agent('n1'), JSON.stringify(agent));
  return { app, store };
}

test('GET /api/services lists assigned services with the agent-reported state, pending ones with a reason', async (t) => {
  const { app, store } = await setup(t);
  const report: ServiceStatusRecord = { node: 'n1', service: 'web', instance_id: 'i1', config_key: 'k', state: 'running', health: 'healthy', address: '10.0.0.2:8080', restarts: 1, started_at: null, message: null };
  await store.put(KEYS.serviceStatus('n1', 'web'), JSON.stringify(report));
  await store.put(KEYS.deployStatus, JSON.stringify({ revision: 'abc123', ok: true, errors: [], warnings: [], unplaced: [{ service: 'huge', reason: 'no_capacity', message: 'no general node has 64 vCPU and 256 MiB free' }], changes: [], source: 'dir x', at: '' }));
  const res = await app.inject({ method: 'GET', url: '/api/services', headers: AUTH });
  assert.equal(res.statusCode, 200, res.body);
  const list = res.json<{ name: string; state: string; health: string; node: string | null; host: string | null }[]>();
  assert.deepEqual(list.map((s) => [s.name, s.node, s.state, s.health, s.host]), [
    ['db', 'n1', 'assigned', 'not_configured', null],
    ['huge', null, 'pending', 'unknown', null],
    ['web', 'n1', 'running', 'healthy', 'web.test'],
  ]);
  const one = await app.inject({ method: 'GET', url: '/api/services/web', headers: AUTH });
  assert.equal(one.json<{ config: { image: string } }>().config.image, '/i/web.ext4');
  const missing = await app.inject({ method: 'GET', url: '/api/services/nope', headers: AUTH });
  assert.equal(missing.statusCode, 404);
  assert.equal(missing.json<{ error: { code: string } }>().error.code, 'AETHER_ERR_SERVICE_NOT_FOUND');
  const anon = await app.inject({ method: 'GET', url: '/api/services' });
  assert.equal(anon.statusCode, 401);
});

test('POST /api/services/{name}/restart records a restart request; GET /api/nodes shows assignments', async (t) => {
  const { app, store } = await setup(t);
  const res = await app.inject({ method: 'POST', url: '/api/services/web/restart', headers: AUTH });
  assert.equal(res.statusCode, 202, res.body);
  const kv = await store.get(KEYS.serviceRestart('web'));
  assert.equal(JSON.parse(kv?.value ?? '{}').request_id, res.json<{ request_id: string }>().request_id);
  const nodes = await app.inject({ method: 'GET', url: '/api/nodes', headers: AUTH });
  assert.deepEqual(nodes.json<{ agent_id: string; services: string[] }[]>().map((n) => [n.agent_id, n.services]), [['n1', ['db', 'web']]]);
});

const sign = (body: string, secret = SECRET): string => `sha256=${createHmac('sha256', secret).update(body).digest('hex')}`;

test('webhook: a valid GitHub signature triggers a deploy; a wrong or missing one is refused and writes nothing', async (t) => {
  const { app, store } = await setup(t);
  const body = JSON.stringify({ ref: 'refs/heads/main', repository: { clone_url: 'x' } });
  const bad = await app.inject({ method: 'POST', url: '/api/deploy/webhook', headers: { 'content-type': 'application/json', 'x-github-event': 'push', 'x-hub-signature-256': sign(body, 'wrong') }, payload: body });
  assert.equal(bad.statusCode, 401);
  assert.equal(bad.json<{ error: { code: string } }>().error.code, 'AETHER_ERR_WEBHOOK_SIGNATURE');
  const none = await app.inject({ method: 'POST', url: '/api/deploy/webhook', headers: { 'content-type': 'application/json' }, payload: body });
  assert.equal(none.statusCode, 401);
  assert.equal(await store.get(KEYS.deployTrigger), undefined);
  const ok = await app.inject({ method: 'POST', url: '/api/deploy/webhook', headers: { 'content-type': 'application/json', 'x-github-event': 'push', 'x-github-delivery': 'd-1', 'X-Hub-Signature-256': sign(body) }, payload: body });
  assert.equal(ok.statusCode, 202, ok.body);
  assert.deepEqual(JSON.parse((await store.get(KEYS.deployTrigger))?.value ?? '{}').ref, 'refs/heads/main');
  const ping = await app.inject({ method: 'POST', url: '/api/deploy/webhook', headers: { 'content-type': 'application/json', 'x-github-event': 'ping', 'x-hub-signature-256': sign('{}') }, payload: '{}' });
  assert.equal(ping.statusCode, 200);
});

test('webhook without a configured secret answers 404 with its code', async (t) => {
  const { app } = await setup(t, '');
  const res = await app.inject({ method: 'POST', url: '/api/deploy/webhook', headers: { 'content-type': 'application/json' }, payload: '{}' });
  assert.equal(res.statusCode, 404);
  assert.equal(res.json<{ error: { code: string } }>().error.code, 'AETHER_ERR_WEBHOOK_DISABLED');
});
