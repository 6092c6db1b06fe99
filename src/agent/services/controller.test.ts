import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { createSqliteStore } from '../../store/sqlite.ts';
import { createFakeRuntime, type FakeBehavior } from '../../runtime/fake/index.ts';
import { enrich, parseRepo, type ServiceAssignment } from '../../deploy/index.ts';
import { KEYS, type ServiceStatusRecord } from '../../spec/index.ts';
import type { InstanceSpec } from '../../runtime/index.ts';
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
