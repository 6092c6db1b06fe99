import { test } from 'node:test';
import assert from 'node:assert/strict';
import { instanceConfigKey, sampleFunction, type FunctionRecord, type InstanceRecord } from '../spec/index.ts';
import { computeRoutes, instanceCap } from './table.ts';

const fn = sampleFunction({ id: 'fn-a', name: 'echo', code_sha256: 'abc', timeout_ms: 1500, concurrency_target: 4 });
const current = instanceConfigKey(fn);

function inst(id: string, over: Partial<InstanceRecord> = {}): InstanceRecord {
  return {
    instance_id: id,
    function_id: 'fn-a',
    agent_id: 'agent-local',
    agent_url: 'http://10.0.0.9:7070',
    endpoint: { kind: 'unix', path: `/run/${id}.sock` },
    config_key: current,
    status: 'ready',
    started_at: new Date(0).toISOString(),
    ...over,
  };
}

interface Case {
  name: string;
  fns?: FunctionRecord[];
  instances: InstanceRecord[];
  /** instance id -> state, or undefined when the function has no route at all. */
  want: Record<string, 'ready' | 'drain'> | undefined;
  /** Whether the path prefixes (id and name) route to the fast path. */
  routed: boolean;
}

const cases: Case[] = [
  { name: 'no instances: nothing routed (activator)', instances: [], want: undefined, routed: false },
  { name: 'one ready instance', instances: [inst('i1')], want: { i1: 'ready' }, routed: true },
  { name: 'draining instance only: kept for its in-flight, prefix goes to the activator', instances: [inst('i1', { status: 'draining' })], want: { i1: 'drain' }, routed: false },
  { name: 'stale serves while no current one is ready', instances: [inst('i1', { config_key: 'old' })], want: { i1: 'ready' }, routed: true },
  { name: 'stale drains once a current one is ready', instances: [inst('i1', { config_key: 'old' }), inst('i2')], want: { i1: 'drain', i2: 'ready' }, routed: true },
  { name: 'ready and draining mixed', instances: [inst('i1'), inst('i2', { status: 'draining' })], want: { i1: 'ready', i2: 'drain' }, routed: true },
  { name: 'function without code is never routed', fns: [{ ...fn, code_sha256: null }], instances: [inst('i1')], want: undefined, routed: false },
];

for (const c of cases) {
  test(`route table: ${c.name}`, () => {
    const t = computeRoutes({ functions: c.fns ?? [fn], instancesOf: (id) => (id === 'fn-a' ? c.instances : []), localAgentId: 'agent-local' });
    const r = t.functions.get('fn-a');
    if (c.want === undefined) assert.equal(r, undefined);
    else assert.deepEqual(Object.fromEntries((r?.instances ?? []).map((i) => [i.id, i.state])), c.want);
    assert.equal(t.refs.get('fn-a'), c.routed ? 'fn-a' : undefined, 'by id');
    assert.equal(t.refs.get('echo'), c.routed ? 'fn-a' : undefined, 'by name');
  });
}

test('route table: local instances by their endpoint, remote ones through their agent', () => {
  const t = computeRoutes({
    functions: [fn],
    instancesOf: () => [inst('i1'), inst('i2', { agent_id: 'agent-other', agent_url: 'http://[::1]:7071' }), inst('i3', { endpoint: { kind: 'tcp', host: '127.0.0.1', port: 4000 } })],
    localAgentId: 'agent-local',
    load: (id) => (id === 'i1' ? 3 : 0),
  });
  const r = t.functions.get('fn-a');
  assert.deepEqual(r?.instances.map((i) => [i.id, i.address, i.load]), [
    ['i1', { kind: 'unix', path: '/run/i1.sock' }, 3],
    ['i2', { kind: 'agent', host: '::1', port: 7071 }, 0],
    ['i3', { kind: 'tcp', host: '127.0.0.1', port: 4000 }, 0],
  ]);
  assert.equal(r?.timeoutMs, 1500);
  assert.equal(r?.maxConn, instanceCap(fn));
  assert.equal(r?.maxConn, 8);
});

test('route table: a rename routes the new name only; host routes start empty', () => {
  const renamed = { ...fn, name: 'echo2' };
  const t = computeRoutes({ functions: [renamed], instancesOf: () => [inst('i1')], localAgentId: 'agent-local' });
  assert.equal(t.refs.get('echo'), undefined);
  assert.equal(t.refs.get('echo2'), 'fn-a');
  assert.equal(t.hosts.size, 0);
});

test('route table: localOnly leaves other agents\' instances to the activator', () => {
  const remoteOnly = computeRoutes({ functions: [fn], instancesOf: () => [inst('i2', { agent_id: 'agent-other' })], localAgentId: 'agent-local', localOnly: true });
  assert.equal(remoteOnly.functions.get('fn-a'), undefined);
  assert.equal(remoteOnly.refs.get('echo'), undefined);
  const mixed = computeRoutes({ functions: [fn], instancesOf: () => [inst('i1'), inst('i2', { agent_id: 'agent-other' })], localAgentId: 'agent-local', localOnly: true });
  assert.deepEqual(mixed.functions.get('fn-a')?.instances.map((i) => i.id), ['i1']);
});

test('route table: per-instance cap while the function can still scale up, none at max_instances', () => {
  const two = { ...fn, max_instances: 2 };
  const capped = computeRoutes({ functions: [two], instancesOf: () => [inst('i1'), inst('i2', { status: 'draining' })], localAgentId: 'agent-local' });
  assert.equal(capped.functions.get('fn-a')?.maxConn, instanceCap(two));
  // At the maximum (counting another agent's instance, which this driver does not route to): no cap.
  const full = computeRoutes({ functions: [two], instancesOf: () => [inst('i1'), inst('i2', { agent_id: 'agent-other' })], localAgentId: 'agent-local', localOnly: true });
  assert.equal(full.functions.get('fn-a')?.maxConn, 0);
  assert.deepEqual(full.functions.get('fn-a')?.instances.map((i) => i.id), ['i1']);
});
