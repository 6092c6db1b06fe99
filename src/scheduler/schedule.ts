/**
 * Placement of services on nodes: a pure function with firework's rules (B16), fixed where
 * firework was harsh. Stable placements first (a service stays where it runs while its node is
 * alive, matches and has room), then the rest largest-first onto the node with the most free vCPU,
 * anti-affinity as a preference. Unlike firework, one service that fits nowhere does not fail the
 * whole schedule: it is reported unplaced with a reason and everything else is placed.
 *
 * Function instances share each node's capacity (one ledger per agent). They come and go with
 * load and scale to zero, so they count only where a decision is being made anyway:
 * - a service that runs on its node (its agent holds its charge) stays while the node's capacity
 *   minus the services kept there takes it: function usage never moves a running service, so
 *   function churn cannot make services flap between nodes;
 * - a service placed on a node but not running there (it found no room, crashed, or has not
 *   started yet), and every new or moved service, needs room now: capacity minus what function
 *   instances hold minus the services placed there. A placed service that fits nowhere now stays
 *   on its node when its own reservation fits there (it starts once functions shrink); a new one
 *   is reported unplaced, saying what functions hold.
 */

export interface SchedService {
  name: string;
  vcpus: number;
  memory_mb: number;
  node_type: string;
  anti_affinity_group: string;
}

export interface SchedUsage {
  vcpus: number;
  memory_mb: number;
  /** Instance slots; absent: not counted. */
  instances?: number;
}

export interface SchedNode {
  name: string;
  /** null: the node takes services of any node_type (an agent started without --node-type). */
  node_type: string | null;
  /** `instances` absent: the node has no instance-count limit. Each service takes one instance. */
  capacity: SchedUsage;
  /** What non-service workloads (function instances) hold on the node now; absent: nothing. */
  other_used?: SchedUsage;
  /**
   * Services that hold capacity on the node now (its agent admitted them). Absent (an agent that
   * does not report it): every service placed there counts as running.
   */
  running?: readonly string[];
  /** The address other nodes (and its own sandboxes) reach this node at; resolves links, not placement. */
  host_ip?: string;
}

export type UnplacedReason = 'no_nodes' | 'no_node_type' | 'no_capacity';

export interface Unplaced {
  service: string;
  reason: UnplacedReason;
  message: string;
}

export interface Schedule {
  /** node name -> service names, sorted; only nodes with at least one service. */
  placements: Record<string, string[]>;
  unplaced: Unplaced[];
  /** Services that moved from the node they were on (node gone, full or no longer matching). */
  moved: { service: string; from: string; to: string }[];
}

interface Room {
  node: SchedNode;
  /** Capacity minus the services placed here (their reservations). */
  vcpus: number;
  memory: number;
  instances: number;
  /** What function instances hold here now: subtracted only for services that need room now. */
  other: { vcpus: number; memory: number; instances: number };
  groups: Set<string>;
  services: string[];
}

const byName = (a: { name: string }, b: { name: string }): number => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0);
const matches = (n: SchedNode, s: SchedService): boolean => n.node_type === null || n.node_type === s.node_type;
/** Fits by the services' reservations alone (function usage ignored). */
const fitsReserved = (r: Room, s: SchedService): boolean => r.vcpus >= s.vcpus && r.memory >= s.memory_mb && r.instances >= 1;
/** Fits now, next to what function instances hold. */
const fitsNow = (r: Room, s: SchedService): boolean =>
  r.vcpus - r.other.vcpus >= s.vcpus && r.memory - r.other.memory >= s.memory_mb && r.instances - r.other.instances >= 1;
const conflicts = (r: Room, s: SchedService): boolean => s.anti_affinity_group !== '' && r.groups.has(s.anti_affinity_group);
const isRunning = (r: Room, s: SchedService): boolean => r.node.running === undefined || r.node.running.includes(s.name);

function take(r: Room, s: SchedService): void {
  r.vcpus -= s.vcpus;
  r.memory -= s.memory_mb;
  r.instances -= 1;
  r.services.push(s.name);
  if (s.anti_affinity_group) r.groups.add(s.anti_affinity_group);
}

/** `previous` maps service name -> node it is placed on now (nodes not in `nodes` are gone). */
export function schedule(services: readonly SchedService[], nodes: readonly SchedNode[], previous: ReadonlyMap<string, string>): Schedule {
  const rooms = new Map<string, Room>();
  for (const node of [...nodes].sort(byName)) {
    const o = node.other_used;
    rooms.set(node.name, {
      node,
      vcpus: node.capacity.vcpus,
      memory: node.capacity.memory_mb,
      instances: node.capacity.instances ?? Infinity,
      other: { vcpus: o?.vcpus ?? 0, memory: o?.memory_mb ?? 0, instances: o?.instances ?? 0 },
      groups: new Set(),
      services: [],
    });
  }
  const ordered = [...services].sort(byName);
  const prevRoom = (s: SchedService): Room | undefined => {
    const r = rooms.get(previous.get(s.name) ?? '');
    return r && matches(r.node, s) ? r : undefined;
  };

  // Phase 1: stability. Running services first, by their reservation (their charge is part of
  // the node's usage already); then placed-but-not-running ones, which need room now.
  const rest: SchedService[] = [];
  const waiting: SchedService[] = [];
  for (const s of ordered) {
    const r = prevRoom(s);
    if (r && isRunning(r, s) && fitsReserved(r, s) && !conflicts(r, s)) take(r, s);
    else if (r && !isRunning(r, s)) waiting.push(s);
    else rest.push(s);
  }
  for (const s of waiting) {
    const r = prevRoom(s);
    if (r && fitsNow(r, s) && !conflicts(r, s)) take(r, s);
    else rest.push(s);
  }

  // Phase 2: largest first, onto the node with the most free vCPU now (spreads load, away from
  // nodes busy with functions), avoiding anti-affinity conflicts when any other node can take it.
  rest.sort((a, b) => b.vcpus - a.vcpus || b.memory_mb - a.memory_mb || byName(a, b));
  const unplaced: Unplaced[] = [];
  const moved: Schedule['moved'] = [];
  const all = [...rooms.values()];
  for (const s of rest) {
    let best: Room | undefined;
    let bestConflict = true;
    let anyType = false;
    for (const r of all) {
      if (!matches(r.node, s)) continue;
      anyType = true;
      if (!fitsNow(r, s)) continue;
      const conflict = conflicts(r, s);
      const free = r.vcpus - r.other.vcpus;
      const bestFree = best ? best.vcpus - best.other.vcpus : 0;
      if (
        !best ||
        (bestConflict && !conflict) ||
        (bestConflict === conflict && (free > bestFree || (free === bestFree && r.memory - r.other.memory > best.memory - best.other.memory)))
      ) {
        best = r;
        bestConflict = conflict;
      }
    }
    const prev = prevRoom(s);
    // No conflict-free node: stay where it runs when that node still takes it (moving would only
    // trade one conflict for another, and restart the service on every plan as free vCPU shifts).
    if (best && bestConflict && prev && prev !== best && fitsReserved(prev, s) && (isRunning(prev, s) || fitsNow(prev, s))) best = prev;
    // No node has room now: a placed service waits on its node while its reservation fits there
    // (it starts when functions shrink; moving it nowhere better would only churn).
    if (!best && prev && fitsReserved(prev, s)) best = prev;
    if (best) {
      take(best, s);
      const from = previous.get(s.name);
      if (from !== undefined && from !== best.node.name) moved.push({ service: s.name, from, to: best.node.name });
      continue;
    }
    if (all.length === 0) unplaced.push({ service: s.name, reason: 'no_nodes', message: 'no live node' });
    else if (!anyType) unplaced.push({ service: s.name, reason: 'no_node_type', message: `no live node has node_type ${JSON.stringify(s.node_type)}` });
    else unplaced.push({ service: s.name, reason: 'no_capacity', message: noCapacity(s, all) });
  }

  const placements: Record<string, string[]> = {};
  for (const r of all) if (r.services.length > 0) placements[r.node.name] = [...r.services].sort();
  unplaced.sort((a, b) => (a.service < b.service ? -1 : 1));
  return { placements, unplaced, moved };
}

/** Why nothing takes `s`, naming what function instances hold where that is what stands in the way. */
function noCapacity(s: SchedService, rooms: readonly Room[]): string {
  const base = `no ${s.node_type} node has ${s.vcpus} vCPU and ${s.memory_mb} MiB free`;
  const blocked = rooms.filter((r) => matches(r.node, s) && fitsReserved(r, s));
  if (blocked.length === 0) return base;
  const held = blocked.map((r) => `${r.node.name} ${r.other.vcpus} vCPU, ${r.other.memory} MiB${r.other.instances ? `, ${r.other.instances} instances` : ''}`);
  return `${base} now: function instances hold ${held.join('; ')}; it is placed once they scale down`;
}
