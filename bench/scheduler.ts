/**
 * Scheduler benchmark: placements per second of the pure placement function, at growing sizes up
 * to 10,000 services on 1,000 nodes; first placement (everything new) and a re-plan after one node
 * is lost (stability keeps the rest). Baseline in the same run: a naive first-fit that ignores
 * stability and anti-affinity, to show what those rules cost. Results in bench/results/.
 */
import { performance } from 'node:perf_hooks';
import { writeResults } from './lib.ts';
import { schedule, type SchedNode, type SchedService } from '../src/scheduler/index.ts';

function world(services: number, nodes: number): { svcs: SchedService[]; nodes: SchedNode[] } {
  const svcs: SchedService[] = Array.from({ length: services }, (_, i) => ({
    name: `svc-${String(i).padStart(6, '0')}`,
    vcpus: 1 + (i % 4),
    memory_mb: 128 * (1 + (i % 8)),
    node_type: i % 10 === 0 ? 'storage' : 'general',
    anti_affinity_group: i % 7 === 0 ? `g${i % 50}` : '',
  }));
  const ns: SchedNode[] = Array.from({ length: nodes }, (_, i) => ({ name: `node-${String(i).padStart(5, '0')}`, node_type: i % 10 === 0 ? 'storage' : 'general', capacity: { vcpus: 64, memory_mb: 65536 } }));
  return { svcs, nodes: ns };
}

function firstFit(svcs: SchedService[], nodes: SchedNode[]): number {
  const free = nodes.map((n) => ({ v: n.capacity.vcpus, m: n.capacity.memory_mb, t: n.node_type }));
  let placed = 0;
  for (const s of svcs) {
    const n = free.find((f) => f.t === s.node_type && f.v >= s.vcpus && f.m >= s.memory_mb);
    if (n) {
      n.v -= s.vcpus;
      n.m -= s.memory_mb;
      placed++;
    }
  }
  return placed;
}

const time = <T>(fn: () => T): { ms: number; value: T } => {
  const t0 = performance.now();
  const value = fn();
  return { ms: performance.now() - t0, value };
};

const rows: Record<string, unknown>[] = [];
for (const [s, n] of [[100, 10], [1000, 100], [5000, 500], [10_000, 1000]] as const) {
  const w = world(s, n);
  const first = time(() => schedule(w.svcs, w.nodes, new Map()));
  const prev = new Map<string, string>();
  for (const [node, names] of Object.entries(first.value.placements)) for (const name of names) prev.set(name, node);
  const lost = w.nodes.slice(1);
  const replan = time(() => schedule(w.svcs, lost, prev));
  const naive = time(() => firstFit(w.svcs, w.nodes));
  const row = {
    services: s,
    nodes: n,
    first_ms: +first.ms.toFixed(1),
    first_placements_per_s: Math.round(s / (first.ms / 1000)),
    unplaced: first.value.unplaced.length,
    replan_after_node_loss_ms: +replan.ms.toFixed(1),
    moved: replan.value.moved.length,
    naive_first_fit_ms: +naive.ms.toFixed(1),
    ratio_vs_first_fit: +(first.ms / naive.ms).toFixed(2),
  };
  rows.push(row);
  console.log(`${s} services on ${n} nodes: first ${row.first_ms} ms (${row.first_placements_per_s}/s, ${row.unplaced} unplaced); re-plan after losing a node ${row.replan_after_node_loss_ms} ms (${row.moved} moved); naive first-fit ${row.naive_first_fit_ms} ms (x${row.ratio_vs_first_fit})`);
}
console.log(`results: ${writeResults({ at: new Date().toISOString(), rows }, 'scheduler-')}`);
