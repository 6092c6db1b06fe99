/**
 * Placement of services on nodes: a pure function with firework's rules (B16), fixed where
 * firework was harsh. Stable placements first (a service stays where it runs while its node is
 * alive, matches and has room), then the rest largest-first onto the node with the most free vCPU,
 * anti-affinity as a preference. Unlike firework, one service that fits nowhere does not fail the
 * whole schedule: it is reported unplaced with a reason and everything else is placed.
 */

export interface SchedService {
  name: string;
  vcpus: number;
  memory_mb: number;
  node_type: string;
  anti_affinity_group: string;
}

export interface SchedNode {
  name: string;
  /** null: the node takes services of any node_type (an agent started without --node-type). */
  node_type: string | null;
  capacity: { vcpus: number; memory_mb: number };
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
  vcpus: number;
  memory: number;
  groups: Set<string>;
  services: string[];
}

const byName = (a: { name: string }, b: { name: string }): number => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0);
const matches = (n: SchedNode, s: SchedService): boolean => n.node_type === null || n.node_type === s.node_type;
const fits = (r: Room, s: SchedService): boolean => r.vcpus >= s.vcpus && r.memory >= s.memory_mb;

function take(r: Room, s: SchedService): void {
  r.vcpus -= s.vcpus;
  r.memory -= s.memory_mb;
  r.services.push(s.name);
  if (s.anti_affinity_group) r.groups.add(s.anti_affinity_group);
}

/** `previous` maps service name -> node it is placed on now (nodes not in `nodes` are gone). */
export function schedule(services: readonly SchedService[], nodes: readonly SchedNode[], previous: ReadonlyMap<string, string>): Schedule {
  const rooms = new Map<string, Room>();
  for (const node of [...nodes].sort(byName)) {
    rooms.set(node.name, { node, vcpus: node.capacity.vcpus, memory: node.capacity.memory_mb, groups: new Set(), services: [] });
  }
  const ordered = [...services].sort(byName);
  const rest: SchedService[] = [];

  // Phase 1: stability.
  for (const s of ordered) {
    const prev = previous.get(s.name);
    const r = prev === undefined ? undefined : rooms.get(prev);
    if (r && matches(r.node, s) && fits(r, s) && !(s.anti_affinity_group && r.groups.has(s.anti_affinity_group))) take(r, s);
    else rest.push(s);
  }

  // Phase 2: largest first, onto the node with the most free vCPU (spreads load), avoiding
  // anti-affinity conflicts when any other node can take it.
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
      if (!fits(r, s)) continue;
      const conflict = s.anti_affinity_group !== '' && r.groups.has(s.anti_affinity_group);
      if (
        !best ||
        (bestConflict && !conflict) ||
        (bestConflict === conflict && (r.vcpus > best.vcpus || (r.vcpus === best.vcpus && r.memory > best.memory)))
      ) {
        best = r;
        bestConflict = conflict;
      }
    }
    // No conflict-free node: stay where it runs when that node still takes it (moving would only
    // trade one conflict for another, and restart the service on every plan as free vCPU shifts).
    const prevRoom = rooms.get(previous.get(s.name) ?? '');
    if (best && bestConflict && prevRoom && prevRoom !== best && matches(prevRoom.node, s) && fits(prevRoom, s)) best = prevRoom;
    if (best) {
      take(best, s);
      const prev = previous.get(s.name);
      if (prev !== undefined && prev !== best.node.name) moved.push({ service: s.name, from: prev, to: best.node.name });
      continue;
    }
    if (all.length === 0) unplaced.push({ service: s.name, reason: 'no_nodes', message: 'no live node' });
    else if (!anyType) unplaced.push({ service: s.name, reason: 'no_node_type', message: `no live node has node_type ${JSON.stringify(s.node_type)}` });
    else unplaced.push({ service: s.name, reason: 'no_capacity', message: `no ${s.node_type} node has ${s.vcpus} vCPU and ${s.memory_mb} MiB free` });
  }

  const placements: Record<string, string[]> = {};
  for (const r of all) if (r.services.length > 0) placements[r.node.name] = [...r.services].sort();
  unplaced.sort((a, b) => (a.service < b.service ? -1 : 1));
  return { placements, unplaced, moved };
}
