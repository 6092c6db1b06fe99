import { instanceConfigKey, type FunctionRecord, type InstanceRecord } from '../spec/index.ts';

/**
 * The route table: what the data plane needs to carry warm traffic, computed purely from the
 * watch-fed views. Drivers (node, haproxy) apply it; nothing here does I/O.
 */

/** How the data plane reaches an instance: its own socket, or its agent's HTTP hop (another node). */
export type RouteAddress =
  | { kind: 'unix'; path: string }
  | { kind: 'tcp'; host: string; port: number }
  /** Through the owning agent's HTTP hop (another node; the haproxy driver sends these through its hop listeners). */
  | { kind: 'agent'; host: string; port: number };

export interface RouteInstance {
  id: string;
  address: RouteAddress;
  /** ready: takes new requests; drain: finishes what it has, takes none (stale or scaling down). */
  state: 'ready' | 'drain';
  /** Requests in flight as the data plane last reported them (least-loaded choice, autoscaler). */
  load: number;
}

export interface FunctionRoute {
  id: string;
  name: string;
  timeoutMs: number;
  /**
   * Per-instance concurrency cap (more requests queue at the proxy), or 0 for none: a function at
   * its max_instances gets no more capacity, so queueing would only add latency (and HAProxy's
   * queue is far costlier per request than a connection); the Node path piles on too then.
   */
  maxConn: number;
  instances: RouteInstance[];
}

/** Services (later): a Host header routes to a service's instances, same instance shape. */
export interface HostRoute {
  host: string;
  serviceId: string;
  instances: RouteInstance[];
}

export interface RouteTable {
  /** Functions with at least one instance the data plane knows (ready or draining). */
  functions: Map<string, FunctionRoute>;
  /**
   * Path references (id AND name) -> function id, only for functions with a ready instance: a
   * reference missing here goes to the activator (cold start, waiting, 404).
   */
  refs: Map<string, string>;
  hosts: Map<string, HostRoute>;
}

export interface RouteInputs {
  functions: Iterable<FunctionRecord>;
  instancesOf(fnId: string): Iterable<InstanceRecord>;
  /** Instances of this agent are reached at their own endpoint; others through their agent. */
  localAgentId?: string | undefined;
  load?: (instanceId: string) => number;
  /**
   * Only this agent's instances: a driver that cannot reach other agents' instances (their hop needs
   * the cluster token, which must not reach functions) leaves those to the activator.
   */
  localOnly?: boolean;
}

/**
 * Per-instance cap: the Node path stops piling onto an instance at twice the concurrency target
 * while more capacity starts; the proxy does the same, queueing the rest (the queue is demand).
 */
export function instanceCap(fn: Pick<FunctionRecord, 'concurrency_target'>): number {
  return Math.max(2, fn.concurrency_target * 2);
}

export function computeRoutes(inp: RouteInputs): RouteTable {
  const functions = new Map<string, FunctionRoute>();
  const refs = new Map<string, string>();
  for (const fn of inp.functions) {
    if (!fn.code_sha256) continue;
    const key = instanceConfigKey(fn);
    const current: InstanceRecord[] = [];
    const stale: InstanceRecord[] = [];
    const draining: InstanceRecord[] = [];
    for (const rec of inp.instancesOf(fn.id)) {
      if (rec.status !== 'ready') draining.push(rec);
      else (rec.config_key === key ? current : stale).push(rec);
    }
    // Stale instances serve only while no current one is ready (same rule as the Node path).
    const ready = current.length > 0 ? current : stale;
    const drain = current.length > 0 ? [...stale, ...draining] : draining;
    const instances: RouteInstance[] = [];
    for (const [list, state] of [[ready, 'ready'], [drain, 'drain']] as const) {
      for (const rec of list) {
        if (inp.localOnly && rec.agent_id !== inp.localAgentId) continue;
        const address = addressOf(rec, inp.localAgentId);
        if (!address) continue;
        instances.push({ id: rec.instance_id, address, state, load: inp.load?.(rec.instance_id) ?? 0 });
      }
    }
    if (instances.length === 0) continue;
    instances.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    // Counted over every agent's instances (not only the ones this driver routes to).
    const atMax = ready.length >= fn.max_instances;
    functions.set(fn.id, { id: fn.id, name: fn.name, timeoutMs: fn.timeout_ms, maxConn: atMax ? 0 : instanceCap(fn), instances });
    if (instances.some((i) => i.state === 'ready')) {
      refs.set(fn.id, fn.id);
      refs.set(fn.name, fn.id);
    }
  }
  return { functions, refs, hosts: new Map() };
}

function addressOf(rec: InstanceRecord, localAgentId: string | undefined): RouteAddress | undefined {
  if (rec.agent_id === localAgentId) {
    const e = rec.endpoint;
    // A socket that starts answers with the forwarder's preamble byte has a plain twin for native proxies.
    return e.kind === 'unix' ? { kind: 'unix', path: e.preamble ? `${e.path}.raw` : e.path } : { kind: 'tcp', host: e.host, port: e.port };
  }
  let u: URL;
  try {
    u = new URL(rec.agent_url);
  } catch {
    return undefined;
  }
  if (u.protocol !== 'http:') return undefined;
  const host = u.hostname.startsWith('[') ? u.hostname.slice(1, -1) : u.hostname;
  return { kind: 'agent', host, port: u.port ? Number(u.port) : 80 };
}

export function sameAddress(a: RouteAddress, b: RouteAddress): boolean {
  if (a.kind !== b.kind) return false;
  if (a.kind === 'unix') return a.path === (b as { path: string }).path;
  const bb = b as { host: string; port: number };
  return a.host === bb.host && a.port === bb.port;
}
