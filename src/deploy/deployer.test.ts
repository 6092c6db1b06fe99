import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, mkdir, writeFile, rm, readdir, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ManualClock } from '../core/index.ts';
import { createSqliteStore } from '../store/sqlite.ts';
import { KEYS, type AgentRecord } from '../spec/index.ts';
import { Deployer, directorySource, parseNodeConfig, type DeployStatus, type ServiceAssignment } from './index.ts';

const agent = (id: string, vcpu = 4): AgentRecord => ({
  agent_id: id,
  url: `http://${id}`,
  hostname: id,
  capacity: { instances: 10, memory_mb: 4096, vcpu },
  used: { instances: 0, memory_mb: 0, vcpu: 0 },
  isolation: 'namespaces',
  started_at: new Date(0).toISOString(),
  node_type: 'general',
});

async function setup(t: TestContext) {
  const dir = await mkdtemp(join(tmpdir(), 'aether-deployer-test-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const specs = join(dir, 'specs');
  await mkdir(join(specs, 'services'), { recursive: true });
  const svc = (name: string, extra = ''): Promise<void> => writeFile(join(specs, 'services', `${name}.yaml`), `name: ${name}\nimage: /img/${name}.ext4\nnode_type: general\n${extra}`);
  const store = createSqliteStore({ path: join(dir, 'store.db') });
  t.after(() => store.close());
  const clock = new ManualClock(0);
  const deployer = new Deployer({ store, source: directorySource(specs), deployerId: 'd1', clock, exportDir: join(dir, 'export') });
  t.after(() => deployer.stop());
  const assignments = async (): Promise<Record<string, string[]>> => {
    const out: Record<string, string[]> = {};
    for (const kv of (await store.list(KEYS.assignments)).kvs) {
      const a = JSON.parse(kv.value) as ServiceAssignment;
      out[a.node] = a.services.map((s) => s.name);
    }
    return out;
  };
  return { dir, specs, svc, store, deployer, assignments, clock };
}

test('deployer: places services on live agents, writes one document per node and firework node files', async (t) => {
  const { dir, svc, store, deployer, assignments } = await setup(t);
  await store.put(KEYS.agent('n1'), JSON.stringify(agent('n1')));
  await store.put(KEYS.agent('n2'), JSON.stringify(agent('n2')));
  await svc('a', 'vcpus: 2\n');
  await svc('b', 'vcpus: 2\n');
  const status = await deployer.trigger();
  assert.equal(status?.ok, true);
  assert.deepEqual(await assignments(), { n1: ['a'], n2: ['b'] });
  const files = (await readdir(join(dir, 'export', 'nodes'))).sort();
  assert.deepEqual(files, ['n1.yaml', 'n2.yaml']);
  assert.deepEqual(parseNodeConfig(await readFile(join(dir, 'export', 'nodes', 'n1.yaml'), 'utf8')).services.map((s) => s.name), ['a']);
});

test('deployer: an invalid commit changes nothing and the status names file and field', async (t) => {
  const { specs, svc, store, deployer, assignments } = await setup(t);
  await store.put(KEYS.agent('n1'), JSON.stringify(agent('n1')));
  await svc('a');
  await deployer.trigger();
  const before = (await store.get(KEYS.assignment('n1')))?.modRevision;
  await writeFile(join(specs, 'services', 'bad.yaml'), 'name: bad\nnode_type: general\n');
  const status = await deployer.trigger();
  assert.equal(status?.ok, false);
  assert.ok(status?.errors.some((e) => e.file === 'services/bad.yaml' && e.field === 'image'));
  assert.equal((await store.get(KEYS.assignment('n1')))?.modRevision, before, 'assignment untouched');
  const stored = JSON.parse((await store.get(KEYS.deployStatus))?.value ?? '{}') as DeployStatus;
  assert.equal(stored.ok, false);
  assert.deepEqual(await assignments(), { n1: ['a'] });
});

test('deployer: unchanged services are not rewritten; a node that leaves has its services moved', async (t) => {
  const { svc, store, deployer, assignments } = await setup(t);
  await store.put(KEYS.agent('n1'), JSON.stringify(agent('n1')));
  await store.put(KEYS.agent('n2'), JSON.stringify(agent('n2')));
  await svc('a');
  await svc('b');
  await deployer.trigger();
  const first = await assignments();
  const revs = (await store.list(KEYS.assignments)).kvs.map((kv) => kv.modRevision);
  await deployer.trigger();
  assert.deepEqual((await store.list(KEYS.assignments)).kvs.map((kv) => kv.modRevision), revs, 'no rewrite when nothing changed');
  const gone = Object.keys(first)[0] ?? '';
  await store.delete(KEYS.agent(gone));
  const status = await deployer.trigger();
  assert.ok(status?.changes.every((c) => c.kind === 'move'));
  const after = await assignments();
  assert.equal(after[gone], undefined);
  assert.deepEqual(Object.values(after).flat().sort(), ['a', 'b']);
});

test('deployer: a service too big for every node is reported unplaced, the rest still run', async (t) => {
  const { svc, store, deployer, assignments } = await setup(t);
  await store.put(KEYS.agent('n1'), JSON.stringify(agent('n1', 2)));
  await svc('small');
  await svc('huge', 'vcpus: 64\n');
  const status = await deployer.trigger();
  assert.deepEqual(await assignments(), { n1: ['small'] });
  assert.deepEqual(status?.unplaced.map((u) => [u.service, u.reason]), [['huge', 'no_capacity']]);
});

test('deployer: only the leader writes', async (t) => {
  const { store, deployer, specs } = await setup(t);
  await store.put(KEYS.agent('n1'), JSON.stringify(agent('n1')));
  await store.put(KEYS.leader('deployer'), 'someone-else');
  await writeFile(join(specs, 'services', 'a.yaml'), 'name: a\nimage: i\nnode_type: general\n');
  assert.equal(await deployer.trigger(), null);
  assert.equal((await store.list(KEYS.assignments)).kvs.length, 0);
});

test('deployer: a service waiting for room is placed once functions scale down on a node (re-plan on agent usage)', async (t) => {
  const { svc, store, deployer, assignments, clock } = await setup(t);
  const busy = (id: string, fnVcpu: number, charged: string[] = []): AgentRecord => ({
    ...agent(id),
    used: { instances: fnVcpu, memory_mb: 0, vcpu: fnVcpu },
    functions_used: { instances: fnVcpu, memory_mb: 0, vcpu: fnVcpu },
    services_charged: charged,
  });
  await store.put(KEYS.agent('n1'), JSON.stringify(busy('n1', 4)));
  await store.put(KEYS.agent('n2'), JSON.stringify(busy('n2', 4)));
  await svc('a');
  const first = await deployer.trigger();
  assert.deepEqual(await assignments(), {});
  assert.equal(first?.unplaced[0]?.reason, 'no_capacity');
  assert.match(first?.unplaced[0]?.message ?? '', /function instances hold n1 4 vCPU/);
  deployer.start();
  await clock.advance(0); // the first poll: still nowhere to go
  await new Promise((r) => setTimeout(r, 50));
  assert.deepEqual(await assignments(), {});
  // n2's functions scale to zero: its record changes, and the deployer re-plans well before the next poll (30 s).
  await store.put(KEYS.agent('n2'), JSON.stringify(busy('n2', 0)));
  for (let i = 0; i < 100 && (await assignments()).n2 === undefined; i++) {
    await new Promise((r) => setTimeout(r, 20));
    await clock.advance(100);
  }
  assert.deepEqual(await assignments(), { n2: ['a'] });
  assert.ok(clock.now() < 30_000, 're-planned before the next poll');
});
