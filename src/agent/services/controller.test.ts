import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { createSqliteStore } from '../../store/sqlite.ts';
import { createFakeRuntime, type FakeBehavior } from '../../runtime/fake/index.ts';
import { enrich, parseRepo, type ServiceAssignment } from '../../deploy/index.ts';
import { KEYS, type ServiceStatusRecord } from '../../spec/index.ts';
import type { WatchHandlers } from '../../store/index.ts';
import type { InstanceSpec } from '../../runtime/index.ts';
import { silentLogger, systemClock } from '../../core/index.ts';
import { AgentCore } from '../core/index.ts';
import { agentConfig } from '../types.ts';
import { ServiceController } from './controller.ts';

const NODE = 'n1';

async function setup(t: TestContext, behavior?: (spec: InstanceSpec) => FakeBehavior) {
  const store = createSqliteStore({ path: ':memory:' });
  const runtime = createFakeRuntime(behavior ? { behavior } : {});
  const ctl = new ServiceController({ store, nodeId: NODE, runtimes: { process: runtime }, resyncMs: 100, startupTimeoutMs: 2000, stopGraceMs: 100, health: { backoff_base_ms: 50 } });
  t.after(async () => {
    await ctl.stop();
    await runtime.close();
    await store.close();
  });
  const assign = async (yaml: Record<string, string>): Promise<void> => {
    const { services, errors } = enrich(parseRepo(Object.entries(yaml).map(([name, text]) => ({ path: `services/${name}.yaml`, text: `name: ${name}\nimage: /img/${name}.ext4\nnode_type: general\n${text}` }))));
    assert.deepEqual(errors, []);
    const doc: ServiceAssignment = { node: NODE, revision: 'r', services, written_at: '' };
    await store.put(KEYS.assignment(NODE), JSON.stringify(doc));
  };
  const status = async (svc: string): Promise<ServiceStatusRecord | undefined> => {
    const kv = await store.get(KEYS.serviceStatus(NODE, svc));
    return kv ? (JSON.parse(kv.value) as ServiceStatusRecord) : undefined;
  };
  const until = async (what: string, cond: () => Promise<boolean> | boolean, ms = 5000): Promise<void> => {
    const end = Date.now() + ms;
    while (!(await cond())) {
      if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  };
  const live = () => [...runtime.instances.values()].filter((i) => i.inspect().state !== 'exited');
  return { store, runtime, ctl, assign, status, until, live };
}

test('runs what the assignment says, replaces on a config change, stops what is removed', async (t) => {
  const { ctl, assign, status, until, live, store } = await setup(t);
  await assign({ web: 'env: {GREETING: "hello world"}\nport_forwards: [{host_port: 8081, vm_port: 8080}]\nmetadata: {host: web.test}\n', db: '' });
  await ctl.start();
  await until('both running', async () => (await status('web'))?.state === 'running' && (await status('db'))?.state === 'running');
  const web = live().find((i) => i.spec.owner.name === 'web');
  assert.equal(web?.spec.env['GREETING'], 'hello world', 'env values keep their spaces');
  assert.equal(web?.spec.listen.port, 8080, 'listens on the first port forward');
  assert.deepEqual(web?.spec.artifact, { kind: 'image', path: '/img/web.ext4' });
  assert.deepEqual(ctl.routes().map((r) => [r.service, r.host]).sort(), [['db', null], ['web', 'web.test']]);
  const dbId = (await status('db'))?.instance_id;

  await assign({ web: 'env: {GREETING: changed}\nport_forwards: [{host_port: 8081, vm_port: 8080}]\n', db: '' });
  await until('web replaced', async () => live().find((i) => i.spec.owner.name === 'web')?.spec.env['GREETING'] === 'changed' && (await status('web'))?.state === 'running');
  assert.equal((await status('db'))?.instance_id, dbId, 'the unchanged service is untouched');
  assert.equal(live().length, 2);

  await assign({ web: 'env: {GREETING: changed}\nport_forwards: [{host_port: 8081, vm_port: 8080}]\n' });
  await until('db stopped', async () => live().length === 1 && (await store.get(KEYS.serviceStatus(NODE, 'db'))) === undefined);
});

test('an instance that dies is recreated although nothing in the config changed', async (t) => {
  const { ctl, assign, status, until, live } = await setup(t);
  await assign({ web: '' });
  await ctl.start();
  await until('running', async () => (await status('web'))?.state === 'running');
  const first = live()[0];
  first?.crash({ code: 137, signal: 'SIGKILL' });
  await until('recreated', async () => (await status('web'))?.state === 'running' && (await status('web'))?.instance_id !== first?.id, 8000);
  assert.equal(live().length, 1);
});

test('a failing health check restarts the instance after `retries` failures; a restart request restarts once', async (t) => {
  let healthy = true;
  const { ctl, assign, status, until, live, store } = await setup(t, () => ({
    handler: (_req, res) => {
      res.statusCode = healthy ? 200 : 500;
      res.end();
    },
  }));
  await assign({ web: 'health_check: {type: http, port: 8080, path: /healthz, interval: 50ms, timeout: 200ms, retries: 2}\n' });
  await ctl.start();
  await until('healthy', async () => (await status('web'))?.health === 'healthy');
  const first = (await status('web'))?.instance_id;
  healthy = false;
  await until('restarted by its health check', async () => {
    const s = await status('web');
    return s !== undefined && s.instance_id !== first && s.restarts >= 1;
  }, 8000);
  healthy = true;
  await until('healthy again', async () => (await status('web'))?.health === 'healthy');
  const before = (await status('web'))?.instance_id;
  await store.put(KEYS.serviceRestart('web'), JSON.stringify({ request_id: 'req-1' }));
  await until('restarted on request', async () => (await status('web'))?.instance_id !== before && (await status('web'))?.state === 'running');
  const after = (await status('web'))?.instance_id;
  await new Promise((r) => setTimeout(r, 300));
  assert.equal((await status('web'))?.instance_id, after, 'the same request does not restart twice');
  assert.equal(live().length, 1);
});

test('a service whose sandbox this node lacks is reported, not crashed on', async (t) => {
  const { ctl, assign, status, until } = await setup(t);
  await assign({ vm: 'sandbox: firecracker\n' });
  await ctl.start();
  await until('reported', async () => (await status('vm'))?.message?.includes('no firecracker sandbox') === true);
  assert.equal((await status('vm'))?.state, 'exited');
});

test('services are charged to the node core\'s one ledger: one that does not fit is reported, not started, and starts once room frees up', async (t) => {
  const store = createSqliteStore({ path: ':memory:' });
  const runtime = createFakeRuntime();
  const core = new AgentCore({
    store,
    clock: systemClock,
    logger: silentLogger(),
    runtimes: { process: runtime },
    config: agentConfig({ agentId: NODE, url: 'http://agent.test', dataDir: '/nonexistent', clusterToken: 't', capacity: { instances: 10, memoryMb: 512, vcpu: 4 } }),
  });
  const ctl = new ServiceController({ store, nodeId: NODE, runtimes: { process: runtime }, core, resyncMs: 100, startupTimeoutMs: 2000, stopGraceMs: 100 });
  t.after(async () => {
    await ctl.stop();
    await runtime.close();
    await store.close();
  });
  // a function instance holds 384 of the node's 512 MB
  const fn = core.admit({ id: 'inst-fn', kind: 'function', owner: 'fn-1', sandbox: 'process', memoryMb: 384, vcpu: 1 });
  const { services, errors } = enrich(parseRepo([{ path: 'services/db.yaml', text: 'name: db\nimage: /img/db.ext4\nnode_type: general\nmemory_mb: 256\n' }]));
  assert.deepEqual(errors, []);
  await store.put(KEYS.assignment(NODE), JSON.stringify({ node: NODE, revision: 'r', services, written_at: '' } satisfies ServiceAssignment));
  await ctl.start();
  const status = async (): Promise<ServiceStatusRecord | undefined> => {
    const kv = await store.get(KEYS.serviceStatus(NODE, 'db'));
    return kv ? (JSON.parse(kv.value) as ServiceStatusRecord) : undefined;
  };
  const until = async (what: string, cond: () => Promise<boolean>): Promise<void> => {
    const end = Date.now() + 5000;
    while (!(await cond())) {
      if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  };
  await until('reported', async () => (await status())?.message?.includes('no capacity') === true);
  assert.equal((await status())?.state, 'exited');
  assert.equal(runtime.instances.size, 0, 'nothing was started');
  assert.deepEqual(core.ledger.used(), { instances: 1, memoryMb: 384, vcpu: 1 });
  // the function instance goes: the service fits and starts, and the node's record counts it
  fn.to('stopping');
  core.release(fn);
  await until('running', async () => (await status())?.state === 'running');
  assert.deepEqual(core.ledger.used('service'), { instances: 1, memoryMb: 256, vcpu: 1 });
  assert.deepEqual(core.agentRecord().used, { instances: 1, memory_mb: 256, vcpu: 1 });
  await ctl.stop();
  assert.deepEqual(core.ledger.used(), { instances: 0, memoryMb: 0, vcpu: 0 }, 'a stopped service gives its capacity back');
});

test('after an agent restart the controller adopts the instances its assignment still wants, and stops the rest', async (t) => {
  const store = createSqliteStore({ path: ':memory:' });
  // The first agent "crashes": its store calls fail and its watches go quiet, its instances run on.
  let crashed = false;
  const crashable = new Proxy(store, {
    get(target, key, receiver) {
      const v = Reflect.get(target, key, receiver) as unknown;
      if (typeof v !== 'function') return v;
      if (key === 'watch') {
        return (prefix: string, rev: number, h: WatchHandlers) => target.watch(prefix, rev, { onEvent: (ev) => !crashed && h.onEvent(ev), onError: (err) => !crashed && h.onError?.(err) });
      }
      return (...args: unknown[]) => (crashed ? Promise.reject(new Error('crashed')) : (v as (...a: unknown[]) => unknown).apply(target, args));
    },
  });
  const rt1 = createFakeRuntime();
  const ctl1 = new ServiceController({ store: crashable, nodeId: NODE, runtimes: { process: rt1 }, resyncMs: 100, startupTimeoutMs: 2000, stopGraceMs: 100 });
  const assign = async (yaml: Record<string, string>): Promise<void> => {
    const { services } = enrich(parseRepo(Object.entries(yaml).map(([name, text]) => ({ path: `services/${name}.yaml`, text: `name: ${name}\nimage: /img/${name}.ext4\nnode_type: general\n${text}` }))));
    await store.put(KEYS.assignment(NODE), JSON.stringify({ node: NODE, revision: 'r', services, written_at: '' } satisfies ServiceAssignment));
  };
  const status = async (svc: string): Promise<ServiceStatusRecord | undefined> => {
    const kv = await store.get(KEYS.serviceStatus(NODE, svc));
    return kv ? (JSON.parse(kv.value) as ServiceStatusRecord) : undefined;
  };
  const until = async (what: string, cond: () => Promise<boolean> | boolean): Promise<void> => {
    const end = Date.now() + 5000;
    while (!(await cond())) {
      if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  };
  await assign({ web: '', db: '', cache: 'env: {V: "1"}\n' });
  await ctl1.start();
  await until('all running', async () => (await Promise.all(['web', 'db', 'cache'].map(status))).every((s) => s?.state === 'running'));
  const before = new Map(await Promise.all(['web', 'db', 'cache'].map(async (n) => [n, await status(n)] as const)));
  crashed = true;

  // While no agent runs: db is removed, cache changes.
  await assign({ web: '', cache: 'env: {V: "2"}\n' });
  const rt2 = createFakeRuntime({ adoptFrom: rt1 });
  const core = new AgentCore({ store, clock: systemClock, logger: silentLogger(), runtimes: { process: rt2 }, config: agentConfig({ agentId: NODE, url: 'http://agent.test', dataDir: '/nonexistent', clusterToken: 't' }) });
  const ctl2 = new ServiceController({ store, nodeId: NODE, runtimes: { process: rt2 }, core, resyncMs: 100, startupTimeoutMs: 2000, stopGraceMs: 100 });
  core.register(ctl2);
  t.after(async () => {
    await core.stop();
    await ctl1.stop().catch(() => undefined);
    await rt1.close();
    await rt2.close();
    await store.close();
  });
  await core.start();

  const web = rt1.instances.get(before.get('web')?.instance_id ?? '');
  assert.ok(web);
  assert.equal(web.stopCalls, 0, 'web is not restarted');
  assert.equal(web.inspect().state, 'running');
  const st = await status('web');
  assert.deepEqual([st?.instance_id, st?.state, st?.restarts, st?.started_at], [web.id, 'running', 0, before.get('web')?.started_at]);
  assert.equal(rt1.instances.get(before.get('db')?.instance_id ?? '')?.inspect().state, 'exited', 'the removed service was stopped');
  assert.equal(rt1.instances.get(before.get('cache')?.instance_id ?? '')?.inspect().state, 'exited', 'the changed one was stopped');
  await until('cache recreated with its new config', async () => (await status('cache'))?.state === 'running' && [...rt2.instances.values()].some((i) => i.spec.owner.name === 'cache' && i.spec.env['V'] === '2'));
  await until('the status of the removed one is gone', async () => (await status('db')) === undefined);
  // the adopted instance's output reaches the new agent's logs; it is charged to the new ledger
  web.print('still here');
  assert.ok(ctl2.logs('web', 10).some((e) => e.text === 'still here'));
  assert.ok(ctl2.logs('web', 10).some((e) => e.text === 'adopted by the restarted agent'));
  assert.deepEqual(core.ledger.used('service').instances, 2);
  assert.deepEqual(ctl2.routes().map((r) => r.service).sort(), ['cache', 'web']);
});
