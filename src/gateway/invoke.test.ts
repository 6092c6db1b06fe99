/**
 * The invocation path in one process on first-class drivers (sqlite store, memory queue, fs blobs,
 * fake runtime, a real agent and gateway on a loopback port): cold-start single flight, burst
 * scaling, failure answers. No timing assertions.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
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
import { instanceConfigKey, KEYS, PROVISION_TOPIC, type ProvisionJob } from '../spec/index.ts';
import type { Queue } from '../queue/index.ts';
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
  agent = createAgent({ store, queue, blob, runtime, clock: systemClock, logger, archiveLimits: DEFAULT_LIMITS, config: agentConfig({ clusterToken: 'ct', agentId: 'agent-t', url: 'local://', dataDir: dir, scaleIntervalMs: 60_000 }) });
  await agent.start();
  functions = new FunctionService({ store, blobs: blob, defaultSandbox: 'process', tmpDir: dir });
  gateway = await startGateway({ store, queue, clock: systemClock, logger, functions, adminToken: 't', clusterToken: 'ct', limits: DEFAULT_LIMITS, host: '127.0.0.1', port: 0, gatewayId: 'gw-t', leaseTtlMs: 10_000, startTimeoutMs: 30_000, localAgent: agent });
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
    const lease = await store.grantLease(60_000);
    await store.put(KEYS.gateway('gw-other'), JSON.stringify({ gateway_id: 'gw-other', lease, started_at: '' }), { lease });
    await store.put(KEYS.demand(fnId, 'gw-other'), JSON.stringify({ inflight: 20, starting: 0, lease }), { lease });
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
    const a = createAgent({ store, queue, blob, runtime: rt, clock: systemClock, logger, archiveLimits: DEFAULT_LIMITS, config: agentConfig({ clusterToken: 'ct', agentId: 'agent-race', url: 'local://', dataDir: dir2, scaleIntervalMs: 60_000, capacity: { instances: 1, memoryMb: 4096, vcpu: 8 } }) });
    await a.start();
    fns2 = new FunctionService({ store, blobs: blob, defaultSandbox: 'process', tmpDir: dir2 });
    gw2 = await startGateway({ store, queue, clock: systemClock, logger, functions: fns2, adminToken: 't', clusterToken: 'ct', limits: DEFAULT_LIMITS, host: '127.0.0.1', port: 0, gatewayId: 'gw-race', leaseTtlMs: 10_000, startTimeoutMs: 30_000, localAgent: a });
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

describe('invoker: lost cold-start jobs and claims', { timeout: 60_000 }, () => {
  // No agent at first: the cold start's job sits in the queue until the test "loses" it (as when
  // Redis comes back empty) or starts an agent.
  let dir3: string;
  let gw3: Gateway;
  let fns3: FunctionService;
  let store3: Store;
  let queue3: ReturnType<typeof createMemoryQueue>;
  const enqueued: ProvisionJob[] = [];
  const stops: (() => Promise<void>)[] = [];
  const blob3 = () => createFsBlobStore({ dir: join(dir3, 'blobs') });

  before(async () => {
    dir3 = await mkdtemp(join(tmpdir(), 'aether-invoke-lost-'));
    store3 = createSqliteStore({ path: ':memory:' });
    queue3 = createMemoryQueue();
    const counting: Queue = {
      enqueue: async (topic, payload) => {
        enqueued.push(payload as ProvisionJob);
        return queue3.enqueue(topic, payload);
      },
      take: (topic, consumer, opts) => queue3.take(topic, consumer, opts),
      ack: (job) => queue3.ack(job),
      release: (job) => queue3.release(job),
      extend: (job, ms) => queue3.extend(job, ms),
      depth: (topic) => queue3.depth(topic),
      contains: (topic, id) => queue3.contains(topic, id),
      close: () => queue3.close(),
    };
    // An agent is registered (the sandbox is offered) but takes nothing: the test plays its part.
    await store3.put(KEYS.agent('agent-idle'), JSON.stringify({ agent_id: 'agent-idle', url: 'http://127.0.0.1:9', hostname: 'x', capacity: { instances: 10, memory_mb: 4096, vcpu: 16 }, used: { instances: 0, memory_mb: 0, vcpu: 0 }, isolation: 'none', started_at: new Date().toISOString() }));
    fns3 = new FunctionService({ store: store3, blobs: blob3(), defaultSandbox: 'process', tmpDir: dir3 });
    gw3 = await startGateway({ store: store3, queue: counting, clock: systemClock, logger: silentLogger(), functions: fns3, adminToken: 't', clusterToken: 'ct', limits: DEFAULT_LIMITS, host: '127.0.0.1', port: 0, gatewayId: 'gw-lost', leaseTtlMs: 10_000, startTimeoutMs: 30_000, reconcileMs: 100 });
    stops.push(() => gw3.close());
  });

  after(async () => {
    for (const s of stops.reverse()) await s().catch(() => undefined);
    await store3.close();
    await rm(dir3, { recursive: true, force: true });
  });

  const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
  async function until<T>(f: () => T | undefined | false | Promise<T | undefined | false>, what: string, ms = 10_000): Promise<T> {
    const end = Date.now() + ms;
    for (;;) {
      const v = await f();
      if (v) return v;
      if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
      await sleep(20);
    }
  }

  test('a cold-start claim is deleted only by its owner', async () => {
    const zip = await zipOf({ 'handler.js': '// fake' });
    await fns3.create({ name: 'claimed', runtime: 'node', timeout_ms: 5000 });
    await fns3.uploadCode('claimed', zip);
    const fn = await fns3.get('claimed');
    // No agent yet: the job waits; another gateway takes the claim over meanwhile.
    const pending = fetch(`${gw3.url}/functions/claimed/`).then(async (r) => ({ status: r.status, body: await r.text() }));
    const ours = await until(async () => (await store3.get(KEYS.coldStart(fn.id)))?.value, 'our claim');
    const ourRequest = (JSON.parse(ours) as { request_id: string }).request_id;
    const theirs = JSON.stringify({ gateway_id: 'gw-other', request_id: 'req-theirs', config_key: 'x', at: Date.now() });
    await store3.put(KEYS.coldStart(fn.id), theirs);
    // Our start ends (failed): we must not delete the claim that is no longer ours.
    await store3.put(KEYS.provisionResult(ourRequest), JSON.stringify({ request_id: ourRequest, function_id: fn.id, ok: false, instance_id: null, error: 'boom' }));
    const r = await pending;
    assert.equal(r.status, 503, r.body);
    await sleep(300);
    assert.equal((await store3.get(KEYS.coldStart(fn.id)))?.value, theirs, "another gateway's claim survives");
  });

  test('a lost job is queued again once (not in a loop); the waiting request is served', async () => {
    const zip = await zipOf({ 'handler.js': '// fake' });
    await fns3.create({ name: 'lost', runtime: 'node', timeout_ms: 30_000 });
    const fn = await fns3.uploadCode('lost', zip).then(() => fns3.get('lost'));
    const jobsOf = (): ProvisionJob[] => enqueued.filter((j) => j.function_id === fn.id);
    const pending = fetch(`${gw3.url}/functions/lost/`).then(async (r) => ({ status: r.status, body: await r.text() }));
    await until(() => jobsOf().length === 1, 'the cold-start job');
    // The queue loses every job (Redis restarted empty): gone, no result.
    for (let job; (job = await queue3.take(PROVISION_TOPIC, 'thief', { waitMs: 0, visibilityMs: 60_000 })); ) await queue3.ack(job);
    await until(() => jobsOf().length >= 2, 'the job queued again', 15_000);
    await sleep(2000); // many housekeeping rounds (every 100 ms)
    assert.equal(jobsOf().length, 2, `queued again exactly once, saw ${jobsOf().length}`);
    assert.equal(jobsOf()[1]?.request_id, jobsOf()[0]?.request_id, 'same request: the claim still matches');
    // An agent appears (with its HTTP server: this gateway forwards over HTTP) and takes the re-queued job.
    const rt = createFakeRuntime();
    const holder: { agent?: Agent } = {};
    const server = createServer((req, res) => holder.agent?.handleHttp(req, res));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const started = createAgent({ store: store3, queue: queue3, blob: blob3(), runtime: rt, clock: systemClock, logger: silentLogger(), archiveLimits: DEFAULT_LIMITS, config: agentConfig({ clusterToken: 'ct', agentId: 'agent-lost', url, dataDir: join(dir3, 'agent'), scaleIntervalMs: 60_000 }) });
    holder.agent = started;
    await started.start();
    stops.push(() => started.stop(), () => rt.close(), () => new Promise<void>((r) => {
      server.closeAllConnections();
      server.close(() => r());
    }));
    const r = await pending;
    assert.equal(r.status, 200, r.body);
    assert.equal(jobsOf().length, 2);
  });
});

describe('invoker: a full node', { timeout: 60_000 }, () => {
  // One agent with room for two 128 MB instances.
  let dir4: string;
  let gw4: Gateway;
  let fns4: FunctionService;
  let store4: Store;
  const held: (() => void)[] = [];
  const behaviors4 = new Map<string, FakeBehavior>();
  const stops: (() => Promise<void>)[] = [];

  before(async () => {
    dir4 = await mkdtemp(join(tmpdir(), 'aether-invoke-full-'));
    store4 = createSqliteStore({ path: ':memory:' });
    const queue = createMemoryQueue();
    const blob = createFsBlobStore({ dir: join(dir4, 'blobs') });
    const rt = createFakeRuntime({ behavior: (spec) => behaviors4.get(spec.owner.name) ?? {} });
    const logger = silentLogger();
    const a = createAgent({ store: store4, queue, blob, runtime: rt, clock: systemClock, logger, archiveLimits: DEFAULT_LIMITS, config: agentConfig({ clusterToken: 'ct', agentId: 'agent-full', url: 'local://', dataDir: dir4, scaleIntervalMs: 200, capacity: { instances: 2, memoryMb: 256, vcpu: 4 } }) });
    await a.start();
    fns4 = new FunctionService({ store: store4, blobs: blob, defaultSandbox: 'process', tmpDir: dir4 });
    gw4 = await startGateway({ store: store4, queue, clock: systemClock, logger, functions: fns4, adminToken: 't', clusterToken: 'ct', limits: DEFAULT_LIMITS, host: '127.0.0.1', port: 0, gatewayId: 'gw-full', leaseTtlMs: 10_000, startTimeoutMs: 30_000, localAgent: a });
    stops.push(() => gw4.close(), () => a.stop(), () => rt.close(), () => store4.close());
  });

  after(async () => {
    for (const h of held.splice(0)) h();
    for (const s of stops) await s().catch(() => undefined);
    await rm(dir4, { recursive: true, force: true });
  });

  async function deploy4(name: string, fields: Record<string, unknown> = {}, behavior: FakeBehavior = {}): Promise<void> {
    behaviors4.set(name, behavior);
    await fns4.create({ name, runtime: 'node', timeout_ms: 20_000, ...fields });
    await fns4.uploadCode(name, await zipOf({ 'handler.js': '// fake' }));
  }
  const call4 = async (name: string): Promise<{ status: number; code: string | undefined; body: string }> => {
    const r = await fetch(`${gw4.url}/functions/${name}/`);
    const body = await r.text();
    let code: string | undefined;
    try {
      code = (JSON.parse(body) as { error?: { code: string } }).error?.code;
    } catch {
      // a function's own body
    }
    return { status: r.status, code, body };
  };

  test('a function larger than any agent is refused at create time (400) and at invocation (503 at once)', async () => {
    await assert.rejects(fns4.create({ name: 'huge', runtime: 'node', memory_mb: 512 }), (err: Error & { code?: string }) => err.code === 'AETHER_ERR_EXCEEDS_CAPACITY');
    await deploy4('grows');
    await assert.rejects(fns4.update('grows', { vcpu: 8 }), (err: Error & { code?: string }) => err.code === 'AETHER_ERR_EXCEEDS_CAPACITY');
    // A record written around the check (e.g. before the agents shrank) is answered at once, not after timeout_ms.
    const fn = await fns4.get('grows');
    await store4.put(KEYS.function(fn.id), JSON.stringify({ ...fn, vcpu: 8 }));
    await new Promise((r) => setTimeout(r, 100));
    const r = await call4('grows');
    assert.deepEqual([r.status, r.code], [503, 'AETHER_ERR_NO_CAPACITY'], r.body);
  });

  test('a busy instance fills the node: another function gets 503 NO_CAPACITY at once; once it is idle it is evicted', async () => {
    const hold = { handler: (_req: unknown, res: { end(s: string): void }) => held.push(() => res.end('held')) } as FakeBehavior;
    await deploy4('busy', { memory_mb: 256, max_instances: 1 }, hold);
    await deploy4('other');
    const busy = [call4('busy')];
    for (let i = 0; i < 200 && held.length < 1; i++) await new Promise((r) => setTimeout(r, 20));
    assert.equal(held.length, 1, '"busy" holds a request');
    const r = await call4('other'); // 20 s timeout_ms: a 504 would take that long
    assert.deepEqual([r.status, r.code], [503, 'AETHER_ERR_NO_CAPACITY'], r.body);
    for (const h of held.splice(0)) h();
    for (const b of await Promise.all(busy)) assert.equal(b.status, 200);
    // Idle now: the next cold start evicts the least recently used one.
    let ok: { status: number; body: string } | undefined;
    for (let i = 0; i < 50 && ok?.status !== 200; i++) {
      ok = await call4('other');
      if (ok.status !== 200) await new Promise((res) => setTimeout(res, 100));
    }
    assert.equal(ok?.status, 200, ok?.body);
  });
});

describe('gateway -> agent credential', { timeout: 30_000 }, () => {
  test('agents found in the store get the cluster token, never the admin token (forwarding and logs)', async () => {
    const ADMIN = 'admin-secret-0123456789abcdef';
    const CLUSTER = 'cluster-secret-0123456789abcdef';
    const dir5 = await mkdtemp(join(tmpdir(), 'aether-invoke-cred-'));
    const store5 = createSqliteStore({ path: ':memory:' });
    // A fake agent that anyone able to write to the store could register: it records what it gets.
    const seen: { url: string; headers: Record<string, unknown> }[] = [];
    const fake = createServer((req, res) => {
      seen.push({ url: req.url ?? '', headers: { ...req.headers } });
      res.writeHead(200, { 'content-type': req.url?.startsWith('/internal/logs/') ? 'application/x-ndjson' : 'text/plain' }).end(req.url?.startsWith('/internal/logs/') ? '' : 'from the fake agent');
    });
    await new Promise<void>((r) => fake.listen(0, '127.0.0.1', () => r()));
    const fakeUrl = `http://127.0.0.1:${(fake.address() as AddressInfo).port}`;
    const fns5 = new FunctionService({ store: store5, blobs: createFsBlobStore({ dir: join(dir5, 'blobs') }), defaultSandbox: 'process', tmpDir: dir5 });
    const gw5 = await startGateway({ store: store5, queue: createMemoryQueue(), clock: systemClock, logger: silentLogger(), functions: fns5, adminToken: ADMIN, clusterToken: CLUSTER, limits: DEFAULT_LIMITS, host: '127.0.0.1', port: 0, gatewayId: 'gw-cred', leaseTtlMs: 10_000, startTimeoutMs: 30_000 });
    try {
      await fns5.create({ name: 'cred', runtime: 'node' });
      await fns5.uploadCode('cred', await zipOf({ 'handler.js': '// fake' }));
      const fn = await fns5.get('cred');
      await store5.put(KEYS.agent('agent-fake'), JSON.stringify({ agent_id: 'agent-fake', url: fakeUrl, hostname: 'x', capacity: { instances: 1, memory_mb: 1024, vcpu: 4 }, used: { instances: 1, memory_mb: 128, vcpu: 1 }, isolation: 'none', started_at: new Date().toISOString() }));
      await store5.put(KEYS.instance(fn.id, 'inst-fake'), JSON.stringify({ instance_id: 'inst-fake', function_id: fn.id, agent_id: 'agent-fake', agent_url: fakeUrl, endpoint: { kind: 'tcp', host: '127.0.0.1', port: 1 }, config_key: instanceConfigKey(fn), status: 'ready', started_at: new Date().toISOString() }));
      await new Promise((r) => setTimeout(r, 100)); // the watch delivers them
      // The caller sends its own Authorization (for the function) and tries to smuggle a cluster token.
      const r = await fetch(`${gw5.url}/functions/cred/x`, { headers: { authorization: `Bearer ${ADMIN}`, 'x-aether-cluster-token': 'forged' } });
      assert.equal(r.status, 200);
      assert.equal(await r.text(), 'from the fake agent');
      const logs = await fetch(`${gw5.url}/api/functions/cred/logs?tail=5`, { headers: { authorization: `Bearer ${ADMIN}` } });
      assert.equal(logs.status, 200);
      await logs.text();
      const fwd = seen.find((s) => s.url.startsWith('/internal/forward/inst-fake/x'));
      const logReq = seen.find((s) => s.url.startsWith('/internal/logs/'));
      assert.ok(fwd && logReq, JSON.stringify(seen));
      assert.equal(fwd.headers['x-aether-cluster-token'], CLUSTER);
      assert.equal(logReq.headers['authorization'], `Bearer ${CLUSTER}`);
      // What the caller itself put in Authorization is the caller's business; the gateway adds no admin token anywhere else.
      for (const s of seen) {
        const { authorization, ...rest } = s.headers;
        assert.ok(!JSON.stringify(rest).includes(ADMIN), `admin token sent to ${s.url}: ${JSON.stringify(rest)}`);
        if (s === logReq) assert.ok(!String(authorization).includes(ADMIN));
      }
    } finally {
      await gw5.close();
      await store5.close();
      await new Promise<void>((r) => {
        fake.closeAllConnections();
        fake.close(() => r());
      });
      await rm(dir5, { recursive: true, force: true });
    }
  });
});
