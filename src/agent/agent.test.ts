import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, request, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, test } from 'node:test';
import { DEFAULT_LIMITS } from '../archive/index.ts';
import { createFsBlobStore } from '../blob/fs.ts';
import { ManualClock, metrics, registry, silentLogger } from '../core/index.ts';
import { closeAllEndpoints } from '../proxy/index.ts';
import { createMemoryQueue } from '../queue/memory.ts';
import { createFakeRuntime, type FakeBehavior, type FakeRuntime } from '../runtime/fake/index.ts';
import type { InstanceSpec } from '../runtime/index.ts';
import { KEYS, PROVISION_TOPIC, provisionTopic, codeBlobKey, sampleFunction, instanceConfigKey, type AgentRecord, type FunctionRecord, type InstanceRecord, type ProvisionJob, type ProvisionResult } from '../spec/index.ts';
import { createSqliteStore } from '../store/sqlite.ts';
import { createAgent } from './agent.ts';
import { buildZip, countingBlob, sha256 } from './test-support.ts';
import { DEFAULT_AGENT_CONFIG, agentConfig, type AgentCapacity, type AgentConfig } from './types.ts';

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
  await closeAllEndpoints();
});

/** Poll real time for something the agent does asynchronously (I/O), with a generous deadline. */
async function until<T>(f: () => Promise<T | undefined | false> | T | undefined | false, what: string, ms = 5000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

async function setup(o: { capacity?: AgentCapacity; behavior?: (spec: InstanceSpec) => FakeBehavior; fn?: Partial<FunctionRecord>; config?: Partial<AgentConfig>; qemu?: FakeRuntime } = {}) {
  const clock = new ManualClock();
  const store = createSqliteStore({ path: ':memory:', clock });
  const queue = createMemoryQueue({ clock });
  const blobDir = await mkdtemp(join(tmpdir(), 'aether-agent-blob-'));
  const blob = countingBlob(createFsBlobStore({ dir: blobDir }));
  // The fake runs on the test's clock too: its startup timeouts fire as the agent's would.
  const runtime = createFakeRuntime({ clock, ...(o.behavior ? { behavior: o.behavior } : {}) });
  const dataDir = await mkdtemp(join(tmpdir(), 'aether-agent-'));
  const config = agentConfig({ clusterToken: 'ct', agentId: 'agent-1', url: 'http://agent-1.test:8081', dataDir, capacity: o.capacity ?? { instances: 10, memoryMb: 4096, vcpu: 16 }, ...o.config });
  const agent = createAgent({ store, queue, blob, runtimes: { process: runtime, ...(o.qemu ? { qemu: o.qemu } : {}) }, clock, logger: silentLogger(), config, archiveLimits: DEFAULT_LIMITS });

  const zip = await buildZip({ 'handler.js': 'require("node:http").createServer().listen(process.env.PORT);\n' });
  const sha = sha256(zip);
  await blob.put(codeBlobKey('fn-1', sha), zip);
  const now = new Date(clock.now()).toISOString();
  const fn: FunctionRecord = sampleFunction({
    code_path: codeBlobKey('fn-1', sha),
    code_sha256: sha,
    code_size: zip.length,
    created_at: now,
    updated_at: now,
    ...o.fn,
  });
  await store.put(KEYS.function(fn.id), JSON.stringify(fn));
  await agent.start();
  cleanups.push(async () => {
    await agent.stop();
    await runtime.close();
    await queue.close();
    await store.close();
    await blob.close();
    await rm(blobDir, { recursive: true, force: true });
    await rm(dataDir, { recursive: true, force: true });
  });
  /** Specs of every instance the agent created, oldest first. */
  const created = (): InstanceSpec[] => [...runtime.instances.values()].map((i) => i.spec);

  let n = 0;
  const enqueue = async (over: Partial<ProvisionJob> = {}, f: FunctionRecord = fn): Promise<string> => {
    const request_id = `req-${++n}`;
    const job: ProvisionJob = { function_id: f.id, config_key: instanceConfigKey(f), reason: 'cold', requested_at: clock.now(), request_id, ...over };
    await queue.enqueue(provisionTopic(job.sandbox ?? 'process'), job);
    return request_id;
  };
  const result = (requestId: string): Promise<ProvisionResult> =>
    until(async () => {
      const kv = await store.get(KEYS.provisionResult(requestId));
      return kv ? (JSON.parse(kv.value) as ProvisionResult) : undefined;
    }, `provision result ${requestId}`);
  const record = async (instanceId: string, f: FunctionRecord = fn): Promise<InstanceRecord | undefined> => {
    const kv = await store.get(KEYS.instance(f.id, instanceId));
    return kv ? (JSON.parse(kv.value) as InstanceRecord) : undefined;
  };
  /** Start one instance through the queue; returns its id. */
  const startOne = async (f: FunctionRecord = fn): Promise<string> => {
    const r = await result(await enqueue({}, f));
    assert.equal(r.ok, true, r.error ?? '');
    assert.ok(r.instance_id);
    return r.instance_id;
  };
  return { clock, store, queue, blob, runtime, created, agent, config, fn, enqueue, result, record, startOne };
}

async function counterValue(c: { get(): Promise<{ values: { value: number; labels: Record<string, string | number> }[] }> }, labels: Record<string, string>): Promise<number> {
  const v = (await c.get()).values.filter((x) => Object.entries(labels).every(([k, val]) => x.labels[k] === val));
  return v.reduce((n, x) => n + x.value, 0);
}

test('a job produces a registered instance under the agent lease, an ok result, and is acked', async () => {
  const h = await setup();
  const reqId = await h.enqueue();
  const r = await h.result(reqId);
  assert.equal(r.ok, true);
  assert.equal(r.function_id, 'fn-1');
  assert.equal(r.error, null);
  const id = r.instance_id;
  assert.ok(id);
  const kv = await h.store.get(KEYS.instance('fn-1', id));
  assert.ok(kv);
  const rec = JSON.parse(kv.value) as InstanceRecord;
  const agentKv = await h.store.get(KEYS.agent('agent-1'));
  assert.ok(agentKv);
  assert.equal(kv.lease, agentKv.lease, 'instance key lives under the agent lease');
  assert.deepEqual({ ...rec, endpoint: undefined }, {
    instance_id: id,
    function_id: 'fn-1',
    agent_id: 'agent-1',
    agent_url: 'http://agent-1.test:8081',
    endpoint: undefined,
    config_key: instanceConfigKey(h.fn),
    sandbox: 'process',
    status: 'ready',
    started_at: new Date(h.clock.now()).toISOString(),
  });
  assert.equal(rec.endpoint.kind, 'tcp');
  assert.equal((await h.store.get(KEYS.provisionResult(reqId)))?.lease, agentKv.lease);
  assert.equal(await h.queue.depth(PROVISION_TOPIC), 0, 'acked');
  const spec = h.created()[0];
  assert.deepEqual(spec?.owner, { kind: 'function', id: 'fn-1', name: spec?.owner.name });
  assert.equal(spec?.artifact.kind === 'code' && spec.artifact.entrypoint, 'handler.js');
  assert.equal(spec?.resources.pidsMax, 256);
  assert.equal(spec?.version, instanceConfigKey(h.fn));
  const agentRec = await until(async () => {
    const a = JSON.parse((await h.store.get(KEYS.agent('agent-1')))?.value ?? '{}') as AgentRecord;
    return a.used?.instances === 1 ? a : undefined;
  }, 'agent record with used capacity');
  assert.deepEqual(agentRec.used, { instances: 1, memory_mb: 128, vcpu: 1 });
  assert.deepEqual(agentRec.functions_used, { instances: 1, memory_mb: 128, vcpu: 1 }, 'the scheduler places services around it');
  assert.deepEqual(agentRec.services_charged, []);
  assert.deepEqual(h.agent.localInstances(), [{ instanceId: id, functionId: 'fn-1', inflight: 0, state: 'ready' }]);
  // the result key is removed after its TTL
  await h.clock.advance(60_000);
  await until(async () => (await h.store.get(KEYS.provisionResult(reqId))) === undefined, 'result cleanup');
});

test('a failing start produces an error result (reason) with the program output apart, is acked and leaves nothing', async () => {
  const h = await setup({ behavior: () => ({ output: ['loading config'], failStart: 'Error: cannot find module express' }) });
  const before = await counterValue(metrics.vmSpawns, { function_id: 'fn-1', status: 'error' });
  const r = await h.result(await h.enqueue());
  assert.equal(r.ok, false);
  assert.equal(r.instance_id, null);
  assert.match(r.error ?? '', /exited \(code 1, signal null\) before listening/);
  // The reason is what invokers may see: the output travels apart, once.
  assert.doesNotMatch(r.error ?? '', /loading config|express/);
  assert.match(r.output ?? '', /loading config\nError: cannot find module express/);
  assert.equal((r.output ?? '').split('cannot find module express').length, 2, 'the output appears once');
  await until(async () => (await h.queue.depth(PROVISION_TOPIC)) === 0, 'ack');
  assert.deepEqual((await h.store.list(KEYS.instances)).kvs, []);
  await until(() => h.agent.localInstances().length === 0, 'local instance forgotten');
  assert.equal(await counterValue(metrics.vmSpawns, { function_id: 'fn-1', status: 'error' }), before + 1);
  // what it printed stays in the function's logs
  assert.ok(h.agent.tailLogs('fn-1', 10).some((e) => e.text === 'Error: cannot find module express'));
});

test('a start() rejection and a missing entrypoint are definite failures too', async () => {
  const h = await setup({ behavior: () => ({ startError: 'sandbox setup failed' }) });
  const r1 = await h.result(await h.enqueue());
  assert.equal(r1.ok, false);
  assert.match(r1.error ?? '', /sandbox setup failed/);
  const moved = { ...h.fn, entrypoint: 'server.js' };
  await h.store.put(KEYS.function('fn-1'), JSON.stringify(moved));
  const r2 = await h.result(await h.enqueue({}, moved));
  assert.equal(r2.ok, false);
  assert.match(r2.error ?? '', /entrypoint server\.js/);
  await until(async () => (await h.queue.depth(PROVISION_TOPIC)) === 0, 'both acked');
});

test('a slow start keeps its job invisible (visibility extended); an agent stopping mid-start gives it back', async () => {
  // The start may take longer than the three visibility timeouts below (startupTimeoutMs is on the same clock).
  const slow = { behavior: () => ({ startupDelayMs: Infinity }), config: { startupTimeoutMs: DEFAULT_AGENT_CONFIG.jobVisibilityMs * 4 } };
  const h = await setup(slow);
  const reqId = await h.enqueue();
  const starting = (hh: typeof h) => until(() => [...hh.runtime.instances.values()].find((i) => i.inspect().state === 'starting'), 'start begun');
  const inst = await starting(h);
  // Three visibility timeouts pass while the instance is still starting.
  await h.clock.advance(h.config.jobVisibilityMs * 3);
  assert.equal(await h.queue.take(PROVISION_TOPIC, 'agent-2', { waitMs: 0, visibilityMs: 1000 }), undefined, 'not redelivered');
  inst.listenNow();
  assert.equal((await h.result(reqId)).ok, true);
  await until(async () => (await h.queue.depth(PROVISION_TOPIC)) === 0, 'acked');
  assert.equal(h.runtime.instances.size, 1, 'delivered once');

  // A second start hangs; stopping the agent releases the job for another agent instead of failing it.
  const second = await setup(slow);
  const req2 = await second.enqueue();
  const half = await starting(second);
  await second.agent.stop();
  const job = await second.queue.take<ProvisionJob>(PROVISION_TOPIC, 'agent-2', { waitMs: 0, visibilityMs: 1000 });
  assert.equal(job?.payload.request_id, req2);
  assert.equal(await second.store.get(KEYS.provisionResult(req2)), undefined, 'no failure reported');
  assert.equal(half.stopCalls, 1, 'half-started instance cleaned up');
  assert.equal(half.inspect().state, 'exited');
});

test('an outdated job is dropped; a job for a deleted function answers "function deleted"', async () => {
  const h = await setup();
  await h.enqueue({ config_key: 'an older config' });
  await until(async () => (await h.queue.depth(PROVISION_TOPIC)) === 0, 'outdated job acked');
  assert.equal(h.runtime.instances.size, 0);
  assert.equal((await h.store.list(KEYS.provisionResults)).kvs.length, 0);
  const r = await h.result(await h.enqueue({ function_id: 'fn-gone' }));
  assert.deepEqual(r, { request_id: r.request_id, function_id: 'fn-gone', ok: false, instance_id: null, error: 'function deleted' });
  assert.equal(h.runtime.instances.size, 0);
});

/** The setup's function under another id and name (same code), stored. */
async function otherFunction(h: Awaited<ReturnType<typeof setup>>, id: string, over: Partial<FunctionRecord> = {}): Promise<FunctionRecord> {
  const f: FunctionRecord = { ...h.fn, id, name: id, ...over };
  await h.store.put(KEYS.function(f.id), JSON.stringify(f));
  return f;
}

const roomyAgent = (id: string): AgentRecord => ({
  agent_id: id,
  url: `http://${id}.test`,
  hostname: id,
  capacity: { instances: 10, memory_mb: 4096, vcpu: 16 },
  used: { instances: 0, memory_mb: 0, vcpu: 0 },
  isolation: 'none',
  started_at: new Date(0).toISOString(),
});

test('a job that does not fit is given back while another agent has room, else answered "no capacity" at once', async () => {
  const h = await setup({ capacity: { instances: 10, memoryMb: 100, vcpu: 16 } });
  await h.store.put(KEYS.agent('agent-2'), JSON.stringify(roomyAgent('agent-2')));
  await h.enqueue();
  // 128 MB > 100 MB here, but agent-2's record has room: released for it.
  const job = await until(() => h.queue.take<ProvisionJob>(PROVISION_TOPIC, 'agent-2', { waitMs: 0, visibilityMs: 60_000 }), 'released job');
  assert.equal(job.deliveries, 2);
  assert.equal(job.payload.function_id, 'fn-1');
  await h.queue.ack(job);
  // Nobody else has room: the waiting requests get an answer now, not a timeout.
  await h.store.delete(KEYS.agent('agent-2'));
  const req = await h.enqueue();
  await h.clock.advance(1000); // the agent's back-off after giving a job back
  const r = await h.result(req);
  assert.equal(r.ok, false);
  assert.equal(r.error_code, 'AETHER_ERR_NO_CAPACITY');
  assert.match(r.error ?? '', /no agent has room/);
  assert.equal(await h.queue.depth(PROVISION_TOPIC), 0, 'acked');
  assert.equal(h.runtime.instances.size, 0);
});

test('a job that cannot be placed does not hold up the jobs behind it', async () => {
  const h = await setup({ capacity: { instances: 10, memoryMb: 1024, vcpu: 16 } });
  const big = await otherFunction(h, 'fn-big', { memory_mb: 4096 });
  const bigReq = await h.enqueue({}, big);
  const smallReq = await h.enqueue();
  const [rb, rs] = await Promise.all([h.result(bigReq), h.result(smallReq)]);
  assert.equal(rb.error_code, 'AETHER_ERR_NO_CAPACITY');
  assert.equal(rs.ok, true, rs.error ?? '');
});

test('a full node evicts the least recently used idle instance of another function to place a cold start', async () => {
  const h = await setup({ capacity: { instances: 2, memoryMb: 4096, vcpu: 16 } });
  const f2 = await otherFunction(h, 'fn-2');
  const f3 = await otherFunction(h, 'fn-3');
  const old = await h.startOne();
  await h.clock.advance(1000);
  const recent = await h.startOne(f2);
  await h.clock.advance(DEFAULT_AGENT_CONFIG.evictIdleMs);
  const r = await h.result(await h.enqueue({}, f3));
  assert.equal(r.ok, true, r.error ?? '');
  assert.ok(r.instance_id);
  assert.equal(await h.record(old), undefined, 'the least recently used instance was evicted');
  assert.ok(await h.record(recent, f2), 'the more recent one kept');
  assert.ok(await h.record(r.instance_id, f3));
  assert.deepEqual(h.agent.localInstances().map((i) => i.functionId).sort(), ['fn-2', 'fn-3']);
});

test('nothing to evict (min_instances, own function): "no capacity" at once', async () => {
  const h = await setup({ capacity: { instances: 1, memoryMb: 4096, vcpu: 16 }, fn: { min_instances: 1 } });
  const f2 = await otherFunction(h, 'fn-2', { min_instances: 0 });
  await h.startOne();
  await h.clock.advance(DEFAULT_AGENT_CONFIG.evictIdleMs * 10);
  const r = await h.result(await h.enqueue({}, f2));
  assert.equal(r.error_code, 'AETHER_ERR_NO_CAPACITY');
  // Its own function's next instance does not evict the first one either.
  const r2 = await h.result(await h.enqueue());
  assert.equal(r2.error_code, 'AETHER_ERR_NO_CAPACITY');
  assert.equal(h.agent.localInstances().length, 1);
});

test('an idle instance within its grace is not evicted yet: the job waits for it, then evicts', async () => {
  const h = await setup({ capacity: { instances: 1, memoryMb: 4096, vcpu: 16 } });
  const f2 = await otherFunction(h, 'fn-2');
  const first = await h.startOne();
  const req = await h.enqueue({}, f2);
  await h.clock.advance(DEFAULT_AGENT_CONFIG.evictIdleMs);
  // Released and taken again until the first instance is idle long enough.
  for (let i = 0; i < 20 && !(await h.store.get(KEYS.provisionResult(req))); i++) await h.clock.advance(200);
  const r = await h.result(req);
  assert.equal(r.ok, true, r.error ?? '');
  assert.equal(await h.record(first), undefined);
});

test('an instance that exits is deregistered at once and its logs survive', async () => {
  // The sandbox teardown hangs: the key must go before it, not after.
  let teardown!: () => void;
  const h = await setup({ behavior: () => ({ teardown: new Promise<void>((r) => (teardown = r)) }) });
  cleanups.push(async () => teardown()); // runs before the agent stops, even if an assertion failed
  const id = await h.startOne();
  const inst = h.runtime.instances.get(id);
  assert.ok(inst);
  inst.print('handling things');
  const deaths = await counterValue(metrics.vmDeaths, { function_id: 'fn-1' });
  inst.crash({ code: 137, reason: 'killed by the memory limit (oom)' });
  // the same tick: no request goes to it any more, and the refusal says nothing reached it
  await assert.rejects(
    h.agent.forward(id, {} as IncomingMessage, {} as ServerResponse, { path: '/' }),
    (err: { code?: string }) => err.code === 'AETHER_ERR_UPSTREAM_UNREACHED',
  );
  await until(async () => (await h.record(id)) === undefined, 'key deleted');
  await until(() => (h.agent.localInstances()[0]?.state === 'stopping' ? true : undefined), 'stopping');
  teardown();
  await until(() => h.agent.localInstances().length === 0, 'forgotten');
  const texts = h.agent.tailLogs('fn-1', 100).map((e) => `${e.stream}:${e.text}`);
  assert.ok(texts.includes('stdout:handling things'));
  assert.ok(texts.includes('system:instance exited: killed by the memory limit (oom)'), texts.join('\n'));
  assert.equal(await counterValue(metrics.vmDeaths, { function_id: 'fn-1', reason: 'oom' }), deaths + 1);
  await assert.rejects(
    h.agent.forward(id, {} as IncomingMessage, {} as ServerResponse, { path: '/' }),
    (err: { code?: string }) => err.code === 'AETHER_ERR_UPSTREAM_UNREACHED',
  );
});

test('a request for an instance that vanished goes to a sibling of the same function here (nothing had reached it)', async () => {
  const h = await setup({ behavior: () => ({ handler: (_req, res) => res.end('sibling') }) });
  const a = await h.startOne();
  const b = await h.startOne();
  const front: Server = createServer((req, res) => {
    h.agent.forward(a, req, res, { path: req.url ?? '/' }).catch((err: { code?: string }) => res.writeHead(599).end(err.code));
  });
  await new Promise<void>((r) => front.listen(0, '127.0.0.1', () => r()));
  cleanups.push(() => new Promise<void>((r) => front.close(() => r())));
  const port = (front.address() as AddressInfo).port;
  const get = (): Promise<{ status: number; body: string }> =>
    new Promise((resolve, reject) => {
      request(`http://127.0.0.1:${port}/x`, (res) => {
        let s = '';
        res.on('data', (c: Buffer) => (s += c.toString()));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: s }));
      })
        .on('error', reject)
        .end();
    });
  h.runtime.instances.get(a)?.crash({ code: 137 });
  const r = await get();
  assert.deepEqual(r, { status: 200, body: 'sibling' }, `served by ${b}`);
  // Once the sibling is gone too, the coded answer goes back (the caller retries elsewhere).
  h.runtime.instances.get(b)?.crash({ code: 137 });
  assert.deepEqual(await get(), { status: 599, body: 'AETHER_ERR_UPSTREAM_UNREACHED' });
});

test('scale-down after idle keeps one, then scale to zero (clock-driven)', async () => {
  const h = await setup();
  const a = await h.startOne();
  const b = await h.startOne();
  await h.clock.advance(29_000);
  assert.equal(h.agent.localInstances().length, 2);
  await h.clock.advance(2_000);
  await until(() => h.agent.localInstances().length === 1, 'one instance scaled down');
  const left = h.agent.localInstances()[0]?.instanceId;
  assert.ok(left === a || left === b);
  const gone = left === a ? b : a;
  await until(async () => (await h.record(gone)) === undefined, 'drained key deleted');
  assert.equal(h.runtime.instances.get(gone)?.stopCalls, 1);
  await h.clock.advance(240_000);
  assert.equal(h.agent.localInstances().length, 1, 'the last one stays until scale_to_zero_after_s');
  await h.clock.advance(60_000);
  await until(() => h.agent.localInstances().length === 0, 'scaled to zero');
  assert.deepEqual((await h.store.list(KEYS.instancesOf('fn-1'))).kvs, []);
});

test('idle time counts from the end of the last request; busy instances are not stopped', async () => {
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  const h = await setup({
    behavior: () => ({
      handler: (_req, res) => {
        void gate.then(() => res.end('done'));
      },
    }),
  });
  const id = await h.startOne();
  const front: Server = createServer((req, res) => {
    h.agent.forward(id, req, res, { path: req.url ?? '/' }).catch(() => res.writeHead(599).end());
  });
  await new Promise<void>((r) => front.listen(0, '127.0.0.1', () => r()));
  cleanups.push(() => new Promise<void>((r) => front.close(() => r())));
  const port = (front.address() as AddressInfo).port;
  const answer = new Promise<string>((resolve, reject) => {
    request(`http://127.0.0.1:${port}/slow`, (res) => {
      let s = '';
      res.on('data', (c: Buffer) => (s += c.toString()));
      res.on('end', () => resolve(s));
    })
      .on('error', reject)
      .end();
  });
  await until(() => h.agent.localInstances()[0]?.inflight === 1, 'request in flight');
  await h.clock.advance(400_000);
  assert.equal(h.agent.localInstances()[0]?.state, 'ready', 'a busy instance is not scaled to zero');
  release();
  assert.equal(await answer, 'done');
  await until(() => h.agent.localInstances()[0]?.inflight === 0, 'request done');
  await h.clock.advance(299_000);
  assert.equal(h.agent.localInstances().length, 1, 'idle counted from the end of the request');
  await h.clock.advance(2_000);
  await until(() => h.agent.localInstances().length === 0, 'scaled to zero');
});

test('a stale instance is drained only once a ready instance with the current config exists', async () => {
  const h = await setup();
  const old = await h.startOne();
  const v2: FunctionRecord = { ...h.fn, env_vars: { VERSION: '2' } };
  await h.store.put(KEYS.function('fn-1'), JSON.stringify(v2));
  await h.clock.advance(3_000);
  assert.equal(h.agent.localInstances().length, 1, 'stale instance keeps serving while nothing newer is ready');
  assert.equal((await h.record(old))?.status, 'ready');
  const fresh = await h.startOne(v2);
  assert.deepEqual(h.created().at(-1)?.env, { VERSION: '2' });
  await h.clock.advance(1_000);
  await until(async () => (await h.record(old)) === undefined, 'stale instance deregistered');
  await until(() => h.agent.localInstances().length === 1, 'stale instance stopped');
  assert.equal(h.agent.localInstances()[0]?.instanceId, fresh);
  assert.equal(h.runtime.instances.get(old)?.stopCalls, 1);
});

test("a deleted function's instances are stopped at once", async () => {
  const h = await setup();
  const id = await h.startOne();
  await h.store.delete(KEYS.function('fn-1'));
  await until(() => h.agent.localInstances().length === 0, 'instance stopped');
  assert.equal(await h.record(id), undefined);
  assert.equal(h.runtime.instances.get(id)?.stopCalls, 1);
});

test('after losing its lease the agent re-registers itself and its running instances', async () => {
  const h = await setup();
  const id = await h.startOne();
  const oldLease = (await h.store.get(KEYS.agent('agent-1')))?.lease;
  assert.ok(oldLease);
  await h.store.revokeLease(oldLease); // what a store outage longer than the TTL does
  assert.equal(await h.record(id), undefined);
  await h.clock.advance(h.config.leaseTtlMs / 3 + 1);
  const kv = await until(() => h.store.get(KEYS.instance('fn-1', id)), 'instance re-registered');
  assert.notEqual(kv.lease, oldLease);
  assert.equal((await h.store.get(KEYS.agent('agent-1')))?.lease, kv.lease);
  assert.equal((JSON.parse(kv.value) as InstanceRecord).status, 'ready');
  assert.equal(h.runtime.instances.get(id)?.stopCalls, 0, 'the instance kept running');
});

test('the agent HTTP server: healthz, unknown routes, forwarding errors, followed logs', async () => {
  const h = await setup();
  const id = await h.startOne();
  const server = createServer((req, res) => h.agent.handleHttp(req, res));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  cleanups.push(() => new Promise<void>((r) => {
    server.closeAllConnections();
    server.close(() => r());
  }));
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const get = async (path: string, headers: Record<string, string> = { 'x-aether-cluster-token': 'ct' }) => {
    const r = await fetch(base + path, { headers });
    return { status: r.status, body: await r.text() };
  };
  assert.deepEqual(await get('/healthz'), { status: 200, body: JSON.stringify({ ok: true, agent_id: 'agent-1' }) });
  assert.equal((await get('/nope')).status, 404);
  const fwd = await get(`/internal/forward/${id}/x?y=1`);
  assert.equal(fwd.status, 200);
  const echo = JSON.parse(fwd.body) as { url: string; env: Record<string, string>; headers: Record<string, string> };
  assert.deepEqual([echo.url, echo.env.AETHER_INSTANCE_ID], ['/x?y=1', id], 'reached that instance with the path');
  assert.equal(echo.headers['x-aether-cluster-token'], undefined, 'the cluster token never reaches a function');
  assert.equal((await get(`/internal/forward/${id}/x`, {})).status, 401);
  assert.equal((await get('/internal/logs/fn-1', {})).status, 401);
  assert.equal((await get('/internal/logs/fn-1', { authorization: 'bearer ct' })).status, 200);
  const badRes = await fetch(`${base}/internal/forward/inst-unknown/`, { headers: { 'x-aether-cluster-token': 'ct' } });
  assert.equal(badRes.status, 503);
  assert.equal(badRes.headers.get('x-aether-error-code'), 'AETHER_ERR_UPSTREAM_UNREACHED', 'coded for the gateway: retry elsewhere');
  assert.match(await badRes.text(), /AETHER_ERR_UPSTREAM_UNREACHED/);

  h.runtime.instances.get(id)?.print('first');
  const ac = new AbortController();
  const res = await fetch(`${base}/internal/logs/fn-1?tail=1&follow=1`, { signal: ac.signal, headers: { authorization: 'Bearer ct' } });
  assert.equal(res.headers.get('content-type'), 'application/x-ndjson');
  const reader = res.body!.getReader();
  let text = '';
  const readUntil = async (needle: string) => {
    while (!text.includes(needle)) {
      const { value, done } = await reader.read();
      if (done) throw new Error('stream ended');
      text += Buffer.from(value).toString();
    }
  };
  await readUntil('first');
  h.runtime.instances.get(id)?.print('second', 'stderr');
  await readUntil('second');
  const lines = text.trim().split('\n').map((l) => JSON.parse(l) as { stream: string; text: string; instance_id: string });
  assert.deepEqual(lines.map((l) => [l.stream, l.text, l.instance_id]), [['stdout', 'first', id], ['stderr', 'second', id]]);
  ac.abort();
});

test('an agent advertises its sandbox kinds and takes each kind\'s jobs into that kind\'s runtime', async () => {
  const qemu = createFakeRuntime();
  cleanups.push(() => qemu.close());
  const h = await setup({ qemu });
  const rec = await until(async () => JSON.parse((await h.store.get(KEYS.agent('agent-1')))?.value ?? 'null') as AgentRecord | null ?? undefined, 'agent record');
  assert.deepEqual(rec.sandboxes, ['process', 'qemu']);
  const vmFn: FunctionRecord = { ...h.fn, id: 'fn-vm', name: 'vm', sandbox: 'qemu' };
  await h.store.put(KEYS.function(vmFn.id), JSON.stringify(vmFn));
  const r = await h.result(await h.enqueue({ sandbox: 'qemu' }, vmFn));
  assert.equal(r.ok, true, r.error ?? '');
  assert.equal(qemu.instances.size, 1, 'started by the qemu runtime');
  assert.equal(h.runtime.instances.size, 0, 'not by the process runtime');
  assert.equal([...qemu.instances.values()][0]?.spec.version, instanceConfigKey(vmFn));
});

test('an agent without a sandbox kind leaves that kind\'s jobs to others', async () => {
  const h = await setup();
  const rec = await until(async () => JSON.parse((await h.store.get(KEYS.agent('agent-1')))?.value ?? 'null') as AgentRecord | null ?? undefined, 'agent record');
  assert.deepEqual(rec.sandboxes, ['process']);
  const vmFn: FunctionRecord = { ...h.fn, id: 'fn-vm', name: 'vm', sandbox: 'qemu' };
  await h.store.put(KEYS.function(vmFn.id), JSON.stringify(vmFn));
  await h.enqueue({ sandbox: 'qemu' }, vmFn);
  // a process job queued after it is served: the agent is taking jobs, just not the qemu one
  await h.startOne();
  assert.equal(await h.queue.depth(provisionTopic('qemu')), 1, 'the qemu job is still waiting');
  assert.equal(h.runtime.instances.size, 1);
});

test('a deleted or updated function\'s snapshot templates are removed (all of them, or all but the new version)', async () => {
  const removed: [string, readonly string[] | undefined][] = [];
  const qemu: FakeRuntime = Object.assign(createFakeRuntime(), {
    snapshots: { removeTemplates: async (owner: string, keep?: readonly string[]) => void removed.push([owner, keep]), templates: () => [] },
  });
  cleanups.push(() => qemu.close());
  const h = await setup({ qemu });
  const updated = { ...h.fn, memory_mb: h.fn.memory_mb * 2 };
  await h.store.put(KEYS.function(h.fn.id), JSON.stringify(updated));
  await until(() => removed.length === 1, 'templates of the old version removed');
  assert.deepEqual(removed[0], [h.fn.id, [instanceConfigKey(updated)]]);
  await h.store.delete(KEYS.function(h.fn.id));
  await until(() => removed.length === 2, 'templates removed with the function');
  assert.deepEqual(removed[1], [h.fn.id, []]);
});

test("a deleted function's metric series leave /metrics; a live function's stay", async () => {
  const h = await setup();
  const live: FunctionRecord = { ...h.fn, id: 'fn-live', name: 'live' };
  await h.store.put(KEYS.function(live.id), JSON.stringify(live));
  await until(async () => (await h.store.get(KEYS.function(live.id))) !== undefined, 'live function stored');
  await h.startOne();
  await h.startOne(live);
  metrics.evictions.inc({ function_id: 'fn-1' });
  metrics.vmDeaths.inc({ function_id: 'fn-1', reason: 'oom' });
  let text = await registry.metrics();
  assert.match(text, /aether_instances_active\{function_id="fn-1",agent_id="agent-1"\} 1/);
  await h.store.delete(KEYS.function('fn-1'));
  await until(() => h.agent.localInstances().length === 1, 'instance of the deleted function stopped');
  text = await registry.metrics();
  assert.doesNotMatch(text, /function_id="fn-1"/, 'no series of the deleted function is left');
  assert.match(text, /aether_instances_active\{function_id="fn-live",agent_id="agent-1"\} 1/);
  assert.match(text, /aether_vm_spawns_total\{function_id="fn-live",agent_id="agent-1",status="success"\} \d/);
  assert.match(text, /aether_vm_spawn_duration_seconds_count\{function_id="fn-live"\} \d/);
});
