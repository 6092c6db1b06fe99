import { schedule, type SchedNode, type Unplaced } from '../scheduler/index.ts';
import { enrich, serviceConfigKey, type ServiceConfig } from './enrich.ts';
import { parseRepo, type RepoFile, type SpecError } from './format.ts';

/** node name -> the services assigned to it. */
export type Assignments = Record<string, ServiceConfig[]>;

export type Change =
  | { kind: 'start'; service: string; node: string; why: string }
  | { kind: 'stop'; service: string; node: string; why: string }
  | { kind: 'move'; service: string; from: string; to: string; why: string }
  | { kind: 'update'; service: string; node: string; why: string }
  | { kind: 'config'; service: string; node: string; why: string };

export interface DeployPlan {
  /** False when the input is refused: nothing may change (an invalid commit changes nothing). */
  ok: boolean;
  errors: SpecError[];
  warnings: SpecError[];
  /** The assignments to write (equal to `previous` when !ok). */
  assignments: Assignments;
  changes: Change[];
  unplaced: Unplaced[];
}

const sortedKeys = (o: object): string[] => Object.keys(o).sort();

function where(a: Assignments): Map<string, { node: string; svc: ServiceConfig }> {
  const m = new Map<string, { node: string; svc: ServiceConfig }>();
  for (const node of sortedKeys(a)) for (const svc of a[node] ?? []) m.set(svc.name, { node, svc });
  return m;
}

/** What changes between two assignments, and why (for `aether deploy --dry-run` and events). */
export function diffAssignments(previous: Assignments, next: Assignments, liveNodes: ReadonlySet<string>): Change[] {
  const before = where(previous);
  const after = where(next);
  const changes: Change[] = [];
  for (const [name, { node, svc }] of after) {
    const old = before.get(name);
    if (!old) changes.push({ kind: 'start', service: name, node, why: 'new service' });
    else if (old.node !== node) {
      changes.push({ kind: 'move', service: name, from: old.node, to: node, why: liveNodes.has(old.node) ? `no longer fits on ${old.node}` : `node ${old.node} is gone` });
    } else if (serviceConfigKey(old.svc) !== serviceConfigKey(svc)) changes.push({ kind: 'update', service: name, node, why: 'image, resources, env, command or ports changed' });
    else if (JSON.stringify(old.svc) !== JSON.stringify(svc)) changes.push({ kind: 'config', service: name, node, why: 'health check or metadata changed (applied in place)' });
  }
  for (const [name, { node }] of before) {
    if (!after.has(name)) changes.push({ kind: 'stop', service: name, node, why: 'removed from the specs (or unplaceable)' });
  }
  return changes.sort((a, b) => (a.service < b.service ? -1 : a.service > b.service ? 1 : 0));
}

/** The specs alone, as a deploy would take or refuse them (errors, or no service at all), before any placement. */
export interface SpecCheck {
  ok: boolean;
  errors: SpecError[];
  warnings: SpecError[];
  /** Empty when refused. */
  services: ServiceConfig[];
}

export function checkSpecs(files: readonly RepoFile[]): SpecCheck {
  const { services, errors, warnings } = enrich(parseRepo(files));
  if (errors.length > 0) return { ok: false, errors, warnings, services: [] };
  if (services.length === 0) {
    return { ok: false, errors: [{ file: '(repo)', field: 'services', message: 'no services found (expected services/*.yaml or tenants/<tenant>/*.yaml); refusing to stop everything' }], warnings, services: [] };
  }
  return { ok: true, errors: [], warnings, services };
}

/**
 * Specs + live nodes + what runs now -> the new assignments. Never wipes or shrinks a working
 * placement on an error, an empty input or a lost node count: those return `previous` unchanged.
 */
export function planDeploy(files: readonly RepoFile[], nodes: readonly SchedNode[], previous: Assignments): DeployPlan {
  const refuse = (errors: SpecError[], warnings: SpecError[] = []): DeployPlan => ({ ok: false, errors, warnings, assignments: previous, changes: [], unplaced: [] });
  const { ok, services, errors, warnings } = checkSpecs(files);
  if (!ok) return refuse(errors, warnings);
  if (nodes.length === 0) return { ...refuse([], warnings), ok: true, unplaced: services.map((s) => ({ service: s.name, reason: 'no_nodes', message: 'no live node' })) };

  const prevWhere = where(previous);
  const prevNode = new Map([...prevWhere].map(([name, v]) => [name, v.node]));
  const result = schedule(services, nodes, prevNode);
  const byName = new Map(services.map((s) => [s.name, s]));
  const assignments: Assignments = {};
  for (const node of sortedKeys(result.placements)) {
    assignments[node] = (result.placements[node] ?? []).map((n) => byName.get(n)).filter((s): s is ServiceConfig => s !== undefined);
  }
  const live = new Set(nodes.map((n) => n.name));
  const resolved = resolveLinks(assignments, new Map(nodes.flatMap((n) => (n.host_ip ? [[n.name, n.host_ip] as const] : []))));
  return { ok: true, errors: [], warnings, assignments: resolved, changes: diffAssignments(previous, resolved, live), unplaced: result.unplaced };
}

/**
 * Links become env values an image without DNS can use, once placement is known (firework's
 * enricher does this for cross-node links): a link {service, env, port} -> `protocol://<target
 * node's host IP>:<host_port>`, where host_port is the target's port forward publishing `port`
 * (the agent listens there on every node, so the same value works on the same node and across
 * nodes); cross_node_links -> `<host IP>:<host_port>`; node_host_ip_env -> the own node's host IP.
 * A link whose target publishes no such port, or whose node has no known IP, stays unset here
 * (the node then resolves a same-node link to the target's instance address when it has one).
 * The values land in `env`, so a target that moves recreates the services linking to it.
 */
export function resolveLinks(assignments: Assignments, hostIps: ReadonlyMap<string, string>): Assignments {
  const at = where(assignments);
  const ipOf = (service: string): { ip: string; svc: ServiceConfig } | undefined => {
    const w = at.get(service);
    const ip = w ? hostIps.get(w.node) : undefined;
    return w && ip ? { ip, svc: w.svc } : undefined;
  };
  const out: Assignments = {};
  for (const node of sortedKeys(assignments)) {
    out[node] = (assignments[node] ?? []).map((s) => {
      const env = { ...s.env };
      for (const l of s.links) {
        const t = ipOf(l.service);
        const fwd = t?.svc.port_forwards.find((p) => p.vm_port === l.port);
        if (t && fwd) env[l.env] = `${l.protocol || 'http'}://${hostLiteral(t.ip)}:${fwd.host_port}`;
      }
      for (const l of s.cross_node_links) {
        const t = ipOf(l.service);
        if (t) env[l.env] = `${hostLiteral(t.ip)}:${l.host_port}`;
      }
      const own = hostIps.get(node);
      if (s.node_host_ip_env && own) env[s.node_host_ip_env] = own;
      return JSON.stringify(env) === JSON.stringify(s.env) ? s : { ...s, env };
    });
  }
  return out;
}

const hostLiteral = (ip: string): string => (ip.includes(':') ? `[${ip}]` : ip);
