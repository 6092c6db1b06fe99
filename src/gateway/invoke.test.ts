/**
 * The invocation path in one process on first-class drivers (sqlite store, memory queue, fs blobs,
 * fake runtime, a real agent and gateway on a loopback port): cold-start single flight, burst
 * scaling, failure answers. No timing assertions.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { agentConfig, createAgent, type Agent } from '../agent/index.ts';
import { DEFAULT_LIMITS } from '../archive/index.ts';
import { zipOf } from '../archive/testing.ts';
import { createFsBlobStore } from '../blob/fs.ts';
import { silentLogger, systemClock } from '../core/index.ts';
import { closeAllEndpoints } from '../proxy/index.ts';
import { createMemoryQueue } from '../queue/memory.ts';
import { createFakeRuntime, type FakeBehavior, type FakeRuntime } from '../runtime/fake/index.ts';
import type { Store } from '../store/index.ts';
import { createSqliteStore } from '../store/sqlite.ts';
import { KEYS } from '../spec/index.ts';
import { FunctionService } from './functions.ts';
import { startGateway, type Gateway } from './gateway.ts';

let dir: string;
let gateway: Gateway;
let agent: Agent;
let runtime: FakeRuntime;
let functions: FunctionService;
let store: Store;
const behaviors = new Map<string, FakeBehavior>();
const closers: (() => Promise<void>)[] = [];

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'aether-invoke-'));
  store = createSqliteStore({ path: ':memory:' });
  const queue = createMemoryQueue();
  const blob = createFsBlobStore({ dir: join(dir, 'blobs') });
  runtime = createFakeRuntime({ behavior: (spec) => behaviors.get(spec.owner.name) ?? {} });
  const logger = silentLogger();
  agent = createAgent({ store, queue, blob, runtime, clock: systemClock, logger, archiveLimits: DEFAULT_LIMITS, config: agentConfig({ agentId: 'agent-t', url: 'local://', dataDir: dir, scaleIntervalMs: 60_000 }) });
  await agent.start();
  functions = new FunctionService({ store, blobs: blob, defaultSandbox: 'process', tmpDir: dir });
  gateway = await startGateway({ store, queue, clock: systemClock, logger, functions, adminToken: 't', limits: DEFAULT_LIMITS, host: '127.0.0.1', port: 0, gatewayId: 'gw-t', leaseTtlMs: 10_000, startTimeoutMs: 30_000, localAgent: agent });
  closers.push(() => gateway.close(), () => agent.stop(), () => runtime.close(), () => store.close());
});

after(async () => {
  for (const c of closers) await c().catch(() => undefined);
  await closeAllEndpoints();
  await rm(dir, { recursive: true, force: true });
});

async function deploy(name: string, fields: Record<string, unknown> = {}, behavior: FakeBehavior = {}): Promise<void> {
  behaviors.set(name, behavior);
  await functions.create({ name, runtime: 'node', ...fields });
  await functions.uploadCode(name, await zipOf({ 'handler.js': '// the fake runtime serves it' }));
}

const instancesOf = (name: string): number => [...runtime.instances.values()].filter((i) => i.spec.owner.name === name).length;

async function call(name: string, path = '/'): Promise<{ status: number; body: string; cold: string | null }> {
  const r = await fetch(`${gateway.url}/functions/${name}${path}`);
  return { status: r.status, body: await r.text(), cold: r.headers.get('x-aether-cold-start') };
}

describe('invoker', { timeout: 60_000 }, () => {
  test('concurrent first requests share one cold start', async () => {
    await deploy('single', { concurrency_target: 20 }, { startupDelayMs: 200 });
    const rs = await Promise.all(Array.from({ length: 10 }, () => call('single', '/x')));
    assert.deepEqual(rs.map((r) => r.status), Array(10).fill(200));
    assert.ok(rs.every((r) => r.cold === 'true'));
    assert.equal(instancesOf('single'), 1);
    const warm = await call('single');
    assert.equal(warm.cold, 'false');
    assert.equal(instancesOf('single'), 1);
  });

  test('a burst scales out within max_instances and every request is served', async () => {
    let open = 0;
    await deploy('burst', { concurrency_target: 1, max_instances: 4 }, {
      startupDelayMs: 50,
      handler: (_req, res) => {
        open++;
        setTimeout(() => {
          open--;
          res.end('done');
        }, 150);
      },
    });
    const rs = await Promise.all(Array.from({ length: 16 }, () => call('burst')));
    assert.deepEqual(rs.map((r) => r.status), Array(16).fill(200));
    assert.equal(open, 0);
    const n = instancesOf('burst');
    assert.ok(n > 1 && n <= 4, `scaled to ${n} instances`);
  });

  test('scale-up counts the demand other gateways report', async () => {
    await deploy('shared', { concurrency_target: 5, max_instances: 10 }, { startupDelayMs: 20 });
    const fnId = (await functions.get('shared')).id;
    // Another gateway behind the same load balancer has 20 requests of this function in flight.
    await store.put(KEYS.demand(fnId, 'gw-other'), JSON.stringify({ inflight: 20, starting: 0 }));
    await new Promise((r) => setTimeout(r, 50)); // the watch delivers it
    assert.equal((await call('shared')).status, 200);
    // 21 in flight at a target of 5 -> 5 instances, not the 1 this gateway's own request needs.
    // (4 is possible: the first instance can count as ready and still starting for a moment.)
    for (let i = 0; i < 100 && instancesOf('shared') < 4; i++) await new Promise((r) => setTimeout(r, 20));
    const n = instancesOf('shared');
    assert.ok(n >= 4 && n <= 5, `scaled to ${n}`);
  });

  test('a start that fails answers 503 with the program output', async () => {
    await deploy('broken', {}, { failStart: 'cannot find module ./missing' });
    const r = await call('broken');
    assert.equal(r.status, 503);
    const err = (JSON.parse(r.body) as { error: { code: string; message: string } }).error;
    assert.equal(err.code, 'AETHER_ERR_COLD_START_FAILED');
    assert.match(err.message, /cannot find module \.\/missing/);
  });

  test('a function that does not answer within timeout_ms gets 504', async () => {
    await deploy('silent', { timeout_ms: 300 }, { handler: () => undefined });
    const r = await call('silent');
    assert.equal(r.status, 504);
    assert.equal((JSON.parse(r.body) as { error: { code: string } }).error.code, 'AETHER_ERR_TIMEOUT');
  });

  test('a function whose sandbox no live agent offers gets an immediate 503 naming it; the API refuses that sandbox', async () => {
    await functions.create({ name: 'vmfn', runtime: 'node' });
    const upd = await fetch(`${gateway.url}/api/functions/vmfn`, { method: 'PUT', headers: { authorization: 'Bearer t', 'content-type': 'application/json' }, body: JSON.stringify({ sandbox: 'qemu' }) });
    assert.equal(upd.status, 400);
    assert.match(await upd.text(), /qemu.{0,4} is not available/);
    // A record from a time when an agent offered qemu (written directly: the API would refuse it now).
    const fn = await functions.get('vmfn');
    await store.put(KEYS.function(fn.id), JSON.stringify({ ...fn, sandbox: 'qemu', timeout_ms: 60_000, code_path: 'functions/x', code_sha256: 'a'.repeat(64), code_size: 1 }));
    // Until the gateway's view has the new record the function has no code (400); a hang would be a 504 after timeout_ms.
    let r = await call('vmfn');
    for (let i = 0; i < 200 && r.status === 400; i++) r = await call('vmfn');
    assert.equal(r.status, 503);
    const body = JSON.parse(r.body) as { error: { code: string; message: string } };
    assert.equal(body.error.code, 'AETHER_ERR_SANDBOX_UNAVAILABLE');
    assert.match(body.error.message, /sandbox "qemu"/);
  });

  test('unknown function 404, function without code 400', async () => {
    assert.equal((await call('nobody')).status, 404);
    await functions.create({ name: 'empty', runtime: 'node' });
    const r = await call('empty');
    assert.equal(r.status, 400);
    assert.equal((JSON.parse(r.body) as { error: { code: string } }).error.code, 'AETHER_ERR_NO_CODE');
  });
});

describe('invoker: an update racing a cold start', { timeout: 60_000 }, () => {
  // An agent with one slot, held by another function: the cold-start job waits in the queue while
  // the function changes; the agent then drops that job as outdated.
  let dir2: string;
  let gw2: Gateway;
  let fns2: FunctionService;
  const stops: (() => Promise<void>)[] = [];

  before(async () => {
    dir2 = await mkdtemp(join(tmpdir(), 'aether-invoke-race-'));
    const store = createSqliteStore({ path: ':memory:' });
    const queue = createMemoryQueue();
    const blob = createFsBlobStore({ dir: join(dir2, 'blobs') });
    const rt = createFakeRuntime();
    const logger = silentLogger();
    const a = createAgent({ store, queue, blob, runtime: rt, clock: systemClock, logger, archiveLimits: DEFAULT_LIMITS, config: agentConfig({ agentId: 'agent-race', url: 'local://', dataDir: dir2, scaleIntervalMs: 60_000, capacity: { instances: 1, memoryMb: 4096, vcpu: 8 } }) });
    await a.start();
    fns2 = new FunctionService({ store, blobs: blob, defaultSandbox: 'process', tmpDir: dir2 });
    gw2 = await startGateway({ store, queue, clock: systemClock, logger, functions: fns2, adminToken: 't', limits: DEFAULT_LIMITS, host: '127.0.0.1', port: 0, gatewayId: 'gw-race', leaseTtlMs: 10_000, startTimeoutMs: 30_000, localAgent: a });
    stops.push(() => gw2.close(), () => a.stop(), () => rt.close(), () => store.close());
  });

  after(async () => {
    for (const s of stops) await s().catch(() => undefined);
    await rm(dir2, { recursive: true, force: true });
  });

  test('the waiting request is served by the new version instead of timing out', async () => {
    const zip = await zipOf({ 'handler.js': '// fake' });
    for (const name of ['blocker', 'late']) {
      await fns2.create({ name, runtime: 'node', timeout_ms: 10_000, env_vars: { V: '1' } });
      await fns2.uploadCode(name, zip);
    }
    assert.equal((await fetch(`${gw2.url}/functions/blocker/`)).status, 200); // takes the only slot
    const pending = fetch(`${gw2.url}/functions/late/`).then(async (r) => ({ status: r.status, body: await r.text() }));
    await new Promise((r) => setTimeout(r, 200)); // its job is queued; the agent is full
    await fns2.update('late', { env_vars: { V: '2' } });
    await fns2.remove('blocker'); // frees the slot: the outdated job is dropped, the new one runs
    const r = await pending;
    assert.equal(r.status, 200, r.body);
    assert.equal((JSON.parse(r.body) as { env: Record<string, string> }).env['V'], '2');
  });
});
