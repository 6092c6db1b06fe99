import { test } from 'node:test';
import assert from 'node:assert/strict';
import { schedule, type SchedNode, type SchedService } from './index.ts';

const svc = (name: string, vcpus = 1, memory_mb = 256, extra: Partial<SchedService> = {}): SchedService => ({ name, vcpus, memory_mb, node_type: 'general', anti_affinity_group: '', ...extra });
const node = (name: string, vcpus = 4, memory_mb = 4096, node_type: string | null = 'general'): SchedNode => ({ name, node_type, capacity: { vcpus, memory_mb } });
const none = new Map<string, string>();

test('capacity: services fill nodes up to their vCPU and memory, never beyond', () => {
  const r = schedule([svc('a', 2), svc('b', 2), svc('c', 2)], [node('n1', 4)], none);
  assert.deepEqual(r.placements, { n1: ['a', 'b'] });
  assert.deepEqual(r.unplaced.map((u) => [u.service, u.reason]), [['c', 'no_capacity']]);
  const mem = schedule([svc('a', 1, 3000), svc('b', 1, 3000)], [node('n1', 8, 4096)], none);
  assert.equal(mem.unplaced.length, 1, 'memory is checked as well as vCPU');
});

test('no nodes: everything is unplaced with a reason, nothing throws', () => {
  const r = schedule([svc('a')], [], none);
  assert.deepEqual(r.placements, {});
  assert.deepEqual(r.unplaced, [{ service: 'a', reason: 'no_nodes', message: 'no live node' }]);
});

test('one service that fits nowhere does not fail the others (firework failed the whole schedule)', () => {
  const r = schedule([svc('huge', 64), svc('small')], [node('n1')], none);
  assert.deepEqual(r.placements, { n1: ['small'] });
  assert.equal(r.unplaced[0]?.service, 'huge');
  assert.match(r.unplaced[0]?.message ?? '', /64 vCPU/);
});

test('node_type: only matching nodes (or untyped ones) take a service; a missing type says so', () => {
  const r = schedule([svc('web'), svc('db', 1, 256, { node_type: 'storage' })], [node('g1'), node('s1', 4, 4096, 'storage')], none);
  assert.deepEqual(r.placements, { g1: ['web'], s1: ['db'] });
  const missing = schedule([svc('gpu', 1, 256, { node_type: 'gpu' })], [node('g1')], none);
  assert.equal(missing.unplaced[0]?.reason, 'no_node_type');
  const any = schedule([svc('gpu', 1, 256, { node_type: 'gpu' })], [node('u1', 4, 4096, null)], none);
  assert.deepEqual(any.placements, { u1: ['gpu'] });
});

test('stability: a service stays on its node while it is alive and fits, even if another node is emptier', () => {
  const r = schedule([svc('a'), svc('b')], [node('n1', 4), node('n2', 16)], new Map([['a', 'n1'], ['b', 'n1']]));
  assert.deepEqual(r.placements, { n1: ['a', 'b'] });
  assert.deepEqual(r.moved, []);
});

test('rebalance: a vanished node moves its services to nodes with room', () => {
  const r = schedule([svc('a'), svc('b')], [node('n2'), node('n3')], new Map([['a', 'n1'], ['b', 'n1']]));
  assert.equal(r.unplaced.length, 0);
  assert.deepEqual(r.moved.map((m) => m.from), ['n1', 'n1']);
  assert.deepEqual(Object.values(r.placements).flat().sort(), ['a', 'b']);
  assert.deepEqual(r.placements, { n2: ['a'], n3: ['b'] }, 'spread: each goes to the node with the most free vCPU');
});

test('rebalance: a node that shrank keeps what fits (input order) and moves the rest', () => {
  const r = schedule([svc('a', 2), svc('b', 2)], [node('n1', 2), node('n2', 8)], new Map([['a', 'n1'], ['b', 'n1']]));
  assert.deepEqual(r.placements, { n1: ['a'], n2: ['b'] });
  assert.deepEqual(r.moved, [{ service: 'b', from: 'n1', to: 'n2' }]);
});

test('spreading: largest first onto the node with the most free vCPU', () => {
  const r = schedule([svc('s1', 1), svc('big', 3), svc('s2', 1)], [node('n1', 4), node('n2', 4)], none);
  // big goes first to n1 (tie broken by name), then the small ones to n2 (more free vCPU).
  assert.deepEqual(r.placements, { n1: ['big'], n2: ['s1', 's2'] });
});

test('anti-affinity spreads a group across nodes when possible', () => {
  const g = { anti_affinity_group: 'es' };
  const r = schedule([svc('es-1', 1, 256, g), svc('es-2', 1, 256, g)], [node('n1', 16), node('n2', 2)], none);
  assert.deepEqual(r.placements, { n1: ['es-1'], n2: ['es-2'] });
});

test('anti-affinity is a preference: with one node both still run', () => {
  const g = { anti_affinity_group: 'es' };
  const r = schedule([svc('es-1', 1, 256, g), svc('es-2', 1, 256, g)], [node('n1')], none);
  assert.deepEqual(r.placements, { n1: ['es-1', 'es-2'] });
});

test('anti-affinity: an existing placement that violates the group is split when another node can take one', () => {
  const g = { anti_affinity_group: 'es' };
  const r = schedule([svc('es-1', 1, 256, g), svc('es-2', 1, 256, g)], [node('n1'), node('n2')], new Map([['es-1', 'n1'], ['es-2', 'n1']]));
  assert.deepEqual(r.placements, { n1: ['es-1'], n2: ['es-2'] });
});

test('deterministic: the same input in any order gives the same output', () => {
  const services = Array.from({ length: 40 }, (_, i) => svc(`s${i}`, 1 + (i % 3), 128 * (1 + (i % 4)), { anti_affinity_group: i % 5 === 0 ? 'g' : '' }));
  const nodes = Array.from({ length: 6 }, (_, i) => node(`n${i}`, 8, 4096));
  const a = schedule(services, nodes, none);
  const b = schedule([...services].reverse(), [...nodes].reverse(), none);
  assert.deepEqual(a, b);
});

test('anti-affinity: a group larger than the node count stays put; free vCPU shifting elsewhere moves nothing', () => {
  const g = { anti_affinity_group: 'front' };
  const group = [svc('a', 1, 256, g), svc('b', 1, 256, g), svc('c', 1, 256, g)];
  const nodes = [node('n1', 8), node('n2', 8)];
  const first = schedule(group, nodes, none);
  const prev = new Map(Object.entries(first.placements).flatMap(([n, ss]) => ss.map((s) => [s, n] as [string, string])));
  assert.equal(new Set(prev.values()).size, 2, 'spread over both nodes');
  // A new, groupless service lands on one node: the group members stay where they are.
  for (const extra of [svc('x', 3), svc('y', 5)]) {
    const next = schedule([...group, extra], nodes, prev);
    assert.deepEqual(next.moved, [], `${extra.name} moves none of the group`);
  }
  // A node comes back: a member sharing a node with another moves to it (the group spreads again), only one.
  const crowded = new Map([['a', 'n1'], ['b', 'n1'], ['c', 'n1']]);
  const back = schedule(group, nodes, crowded);
  assert.equal(back.moved.length, 1);
  assert.equal(back.moved[0]?.to, 'n2');
});
