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

// ---- function instances share the nodes (one ledger per agent)

const busy = (n: SchedNode, vcpus: number, memory_mb = 0, running?: string[]): SchedNode => ({ ...n, other_used: { vcpus, memory_mb }, ...(running ? { running } : {}) });
const placedOn = (r: { placements: Record<string, string[]> }): Map<string, string> => new Map(Object.entries(r.placements).flatMap(([n, ss]) => ss.map((s) => [s, n] as [string, string])));

test('functions: a new service goes to the node with room now, not the one its functions fill', () => {
  const r = schedule([svc('a', 2)], [busy(node('n1', 8), 7), node('n2', 4)], none);
  assert.deepEqual(r.placements, { n2: ['a'] });
  assert.deepEqual(r.unplaced, []);
});

test('functions: a service placed on a node full of functions, not running there, moves to a node with room', () => {
  const r = schedule([svc('a', 1, 256)], [busy(node('n1', 4), 4, 0, []), node('n2', 4)], new Map([['a', 'n1']]));
  assert.deepEqual(r.placements, { n2: ['a'] });
  assert.deepEqual(r.moved, [{ service: 'a', from: 'n1', to: 'n2' }]);
});

test('functions: a running service never moves for function usage (its charge is already counted)', () => {
  const r = schedule([svc('a', 1)], [busy(node('n1', 4), 3, 0, ['a']), node('n2', 16)], new Map([['a', 'n1']]));
  assert.deepEqual(r.placements, { n1: ['a'] });
  assert.deepEqual(r.moved, []);
});

test('functions: scale-to-zero churn does not make running services flap', () => {
  const services = [svc('a', 2), svc('b', 2), svc('c', 1)];
  let prev = placedOn(schedule(services, [node('n1', 4), node('n2', 4)], none));
  const running = (n: string): string[] => [...prev].filter(([, at]) => at === n).map(([s]) => s);
  // Functions swing between the nodes, filling whatever the services leave and scaling to zero.
  for (const [f1, f2] of [[0, 0], [4, 0], [0, 4], [3, 3], [0, 0], [4, 4]] as const) {
    const r = schedule(services, [busy(node('n1', 4), f1, 0, running('n1')), busy(node('n2', 4), f2, 0, running('n2'))], prev);
    assert.deepEqual(r.moved, [], `functions ${f1}/${f2} move nothing`);
    assert.deepEqual(r.unplaced, []);
    prev = placedOn(r);
  }
});

test('functions: a waiting service with room nowhere stays on its node (it starts when functions shrink)', () => {
  const r = schedule([svc('a', 1)], [busy(node('n1', 4), 4, 0, []), busy(node('n2', 4), 4, 0, [])], new Map([['a', 'n1']]));
  assert.deepEqual(r.placements, { n1: ['a'] });
  assert.deepEqual(r.moved, []);
  assert.deepEqual(r.unplaced, []);
});

test('functions: a new service with room nowhere now is unplaced, and the message says functions hold it', () => {
  const r = schedule([svc('a', 2, 512)], [busy(node('n1', 4), 3, 1024), busy(node('n2', 4), 4)], none);
  assert.deepEqual(r.placements, {});
  assert.equal(r.unplaced[0]?.reason, 'no_capacity');
  assert.equal(
    r.unplaced[0]?.message,
    'no general node has 2 vCPU and 512 MiB free now: function instances hold n1 3 vCPU, 1024 MiB; n2 4 vCPU, 0 MiB; it is placed once they scale down',
  );
  // too big for any node whatever functions do: the plain message
  const huge = schedule([svc('h', 8)], [busy(node('n1', 4), 3)], none);
  assert.equal(huge.unplaced[0]?.message, 'no general node has 8 vCPU and 256 MiB free');
});

test('functions: running services keep their place before waiting ones claim room', () => {
  // b runs on n1; a (sorted first) waits there. Once functions leave room for one only, b keeps it and a moves.
  const r = schedule([svc('a', 2), svc('b', 2)], [busy(node('n1', 4), 0, 0, ['b']), node('n2', 2)], new Map([['a', 'n1'], ['b', 'n1']]));
  assert.deepEqual(r.placements, { n1: ['a', 'b'] }, 'both fit n1 while functions hold nothing');
  const full = schedule([svc('a', 2), svc('b', 2)], [busy(node('n1', 4), 2, 0, ['b']), node('n2', 2)], new Map([['a', 'n1'], ['b', 'n1']]));
  assert.deepEqual(full.placements, { n1: ['b'], n2: ['a'] });
  assert.deepEqual(full.moved, [{ service: 'a', from: 'n1', to: 'n2' }]);
});

test('functions: instance slots count (a node whose slots functions fill takes no new service)', () => {
  const n1: SchedNode = { name: 'n1', node_type: 'general', capacity: { vcpus: 8, memory_mb: 8192, instances: 2 }, other_used: { vcpus: 0, memory_mb: 0, instances: 2 } };
  const r = schedule([svc('a')], [n1, node('n2', 1)], none);
  assert.deepEqual(r.placements, { n2: ['a'] });
});
