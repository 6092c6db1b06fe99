import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, request, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { agentConfig, createAgent, type Agent } from '../src/agent/index.ts';
import { buildZip, sha256 } from '../src/agent/test-support.ts';
import { createFsBlobStore } from '../src/blob/fs.ts';
import { DEFAULT_LIMITS } from '../src/archive/index.ts';
import { silentLogger, systemClock } from '../src/core/index.ts';
import { closeAllEndpoints } from '../src/proxy/index.ts';
import { createMemoryQueue } from '../src/queue/memory.ts';
import { createProcessRuntime } from '../src/runtime/process/index.ts';
import { sandboxNetwork } from './support/netns.ts';
import type { Runtime } from '../src/runtime/index.ts';
import { KEYS, PROVISION_TOPIC, instanceConfigKey, sampleFunction, type FunctionRecord, type InstanceRecord, type ProvisionJob, type ProvisionResult } from '../src/spec/index.ts';
import { createSqliteStore } from '../src/store/sqlite.ts';
import type { Store } from '../src/store/index.ts';
import type { Queue } from '../src/queue/index.ts';

/** The agent with the real process runtime, running a real node function end to end. */

const HANDLER = `
const http = require('node:http');
console.log('booting on', process.env.PORT);
http.createServer((req, res) => {
  let body = '';
  req.on('data', (c) => (body += c));
  req.on('end', () => {
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ method: req.method, url: req.url, body, fwd: req.headers['x-forwarded-for'] ?? null, fn: process.env.AETHER_FUNCTION_NAME, greeting: process.env.GREETING }));
  });
}).listen(Number(process.env.PORT));
`;

let dir: string;
let store: Store;
let queue: Queue;
let runtime: Runtime;
let agent: Agent;
let server: Server;
let agentUrl: string;
let fn: FunctionRecord;
let instanceId: string;

async function until<T>(f: () => Promise<T | undefined> | T | undefined, what: string, ms = 20_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function httpCall(url: string, opts: { method?: string; body?: string; headers?: Record<string, string> } = {}): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method: opts.method ?? 'GET', headers: opts.headers ?? {} }, (res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.end(opts.body);
  });
}

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'aether-agent-it-'));
  store = createSqliteStore({ path: ':memory:' });
  queue = createMemoryQueue();
  const blob = createFsBlobStore({ dir: join(dir, 'blob') });
  runtime = createProcessRuntime({ dataDir: join(dir, 'runtime'), agentId: 'agent-it', isolation: 'auto', network: sandboxNetwork, logger: silentLogger() });
  const zip = await buildZip({ 'handler.js': HANDLER });
  const sha = sha256(zip);
  const codePath = `functions/fn-it/${sha}.archive`;
  await blob.put(codePath, zip);
  const now = new Date().toISOString();
  fn = sampleFunction({
    id: 'fn-it',
    name: 'hello-it',
    env_vars: { GREETING: 'hi' },
    code_path: codePath,
    code_sha256: sha,
    code_size: zip.length,
    created_at: now,
    updated_at: now,
  });
  await store.put(KEYS.function(fn.id), JSON.stringify(fn));

  // The agent's own server: listen first, the advertised URL carries the port.
  server = createServer((req, res) => agent.handleHttp(req, res));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  agentUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  agent = createAgent({
    store,
    queue,
    blob,
    runtime,
    clock: systemClock,
    logger: silentLogger(),
    archiveLimits: DEFAULT_LIMITS,
    config: agentConfig({ agentId: 'agent-it', url: agentUrl, dataDir: join(dir, 'agent'), capacity: { instances: 4, memoryMb: 1024, vcpu: 4 }, clusterToken: 'secret' }),
  });
  await agent.start();
});

after(async () => {
  await agent?.stop();
  await runtime?.close();
  await new Promise<void>((r) => server?.close(() => r()));
  await closeAllEndpoints();
  await queue?.close();
  await store?.close();
  await rm(dir, { recursive: true, force: true });
});

test('a provision job starts a real node instance, registers it and reports ok', async () => {
  const job: ProvisionJob = { function_id: fn.id, config_key: instanceConfigKey(fn), reason: 'cold', requested_at: Date.now(), request_id: 'req-it-1' };
  await queue.enqueue(PROVISION_TOPIC, job);
  const result = await until(async () => {
    const kv = await store.get(KEYS.provisionResult('req-it-1'));
    return kv ? (JSON.parse(kv.value) as ProvisionResult) : undefined;
  }, 'the provision result');
  assert.equal(result.ok, true, String(result.error));
  assert.ok(result.instance_id);
  instanceId = result.instance_id;
  const kv = await store.get(KEYS.instance(fn.id, instanceId));
  assert.ok(kv, 'instance registered');
  const rec = JSON.parse(kv.value) as InstanceRecord;
  assert.equal(rec.status, 'ready');
  assert.equal(rec.agent_url, agentUrl);
  assert.equal(rec.config_key, instanceConfigKey(fn));
  assert.equal(await queue.depth(PROVISION_TOPIC), 0);
  const lines = agent.tailLogs(fn.id, 10).map((e) => e.text);
  assert.ok(lines.some((t) => t.includes('booting on')), lines.join('\n'));
});

test('a request through agent.forward (in-process, one hop) reaches the function', async () => {
  assert.ok(instanceId);
  const front = createServer((req, res) => {
    agent.forward(instanceId, req, res, { path: req.url ?? '/', headers: { 'x-forwarded-for': '203.0.113.9' } }).catch((err: unknown) => {
      res.writeHead(599).end(String(err));
    });
  });
  await new Promise<void>((r) => front.listen(0, '127.0.0.1', () => r()));
  try {
    const port = (front.address() as AddressInfo).port;
    const r = await httpCall(`http://127.0.0.1:${port}/hello?x=1`, { method: 'POST', body: 'ping' });
    assert.equal(r.status, 200);
    assert.deepEqual(JSON.parse(r.body), { method: 'POST', url: '/hello?x=1', body: 'ping', fwd: '203.0.113.9', fn: 'hello-it', greeting: 'hi' });
  } finally {
    await new Promise<void>((r) => front.close(() => r()));
  }
  assert.equal(agent.localInstances().find((i) => i.instanceId === instanceId)?.inflight, 0);
});

test('a request through the agent server /internal/forward reaches the function with headers unchanged', async () => {
  const cluster = { 'x-aether-cluster-token': 'secret' };
  const r = await httpCall(`${agentUrl}/internal/forward/${instanceId}/a/b?q=2`, { method: 'PUT', body: 'data', headers: { 'x-forwarded-for': '198.51.100.7', ...cluster } });
  assert.equal(r.status, 200);
  assert.deepEqual(JSON.parse(r.body), { method: 'PUT', url: '/a/b?q=2', body: 'data', fwd: '198.51.100.7', fn: 'hello-it', greeting: 'hi' });
  // Without the cluster token (or with the caller's own Authorization only) nothing reaches the function.
  for (const headers of [{}, { authorization: 'Bearer secret' }, { 'x-aether-cluster-token': 'wrong' }]) {
    const denied = await httpCall(`${agentUrl}/internal/forward/${instanceId}/a`, { headers });
    assert.equal(denied.status, 401, JSON.stringify(headers));
  }
  const missing = await httpCall(`${agentUrl}/internal/forward/inst-nope/x`, { headers: cluster });
  assert.equal(missing.status, 503);
  assert.equal((JSON.parse(missing.body) as { error: { code: string } }).error.code, 'AETHER_ERR_UPSTREAM_UNREACHED');
});

test('logs over HTTP need the cluster token (bearer scheme in any case)', async () => {
  assert.equal((await httpCall(`${agentUrl}/internal/logs/${fn.id}?tail=5`)).status, 401);
  assert.equal((await httpCall(`${agentUrl}/internal/logs/${fn.id}?tail=5`, { headers: { authorization: 'Bearer secre' } })).status, 401);
  assert.equal((await httpCall(`${agentUrl}/internal/logs/${fn.id}?tail=5`, { headers: { authorization: 'BEARER secret' } })).status, 200);
  const r = await httpCall(`${agentUrl}/internal/logs/${fn.id}?tail=50`, { headers: { authorization: 'bearer secret' } });
  assert.equal(r.status, 200);
  const entries = r.body.trim().split('\n').map((l) => JSON.parse(l) as { text: string; instance_id: string });
  assert.ok(entries.some((e) => e.text.includes('booting on') && e.instance_id === instanceId));
});

test('stop drains the instance, deletes its key and the agent record', async () => {
  await agent.stop();
  assert.equal(await store.get(KEYS.instance(fn.id, instanceId)), undefined);
  assert.equal(await store.get(KEYS.agent('agent-it')), undefined);
  assert.deepEqual(agent.localInstances(), []);
});
