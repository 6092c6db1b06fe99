import type { Endpoint } from './endpoint.ts';
import type { SANDBOXES } from './function.ts';

export type SandboxKind = (typeof SANDBOXES)[number];

/** What an agent registers for each ready instance (under its lease). */
export interface InstanceRecord {
  instance_id: string;
  function_id: string;
  agent_id: string;
  /** Base URL of the owning agent's proxy (distributed mode: gateway -> agent -> instance). */
  agent_url: string;
  /** How the owning agent reaches the instance itself (used directly when gateway and agent share a process). */
  endpoint: Endpoint;
  /** instanceConfigKey() of the function version it runs: another value means stale. */
  config_key: string;
  /** The sandbox kind it runs in (absent in records of older agents: process). */
  sandbox?: SandboxKind;
  status: 'ready' | 'draining';
  started_at: string;
}

export interface Resources {
  instances: number;
  memory_mb: number;
  vcpu: number;
}

export interface AgentRecord {
  agent_id: string;
  url: string;
  hostname: string;
  capacity: Resources;
  /** Instances starting, running or stopping. */
  used: Resources;
  /** What the agent could free by evicting idle instances of other functions (refreshed each second). */
  evictable?: Resources;
  /** The part of `used` that function instances hold (the scheduler places new services around it). */
  functions_used?: Resources;
  /** Services holding capacity on the node (admitted, not yet stopped): the scheduler keeps these where they are. */
  services_charged?: string[];
  /** Isolation of its process sandbox ("namespaces+cgroups" or "none"). */
  isolation: string;
  /** Sandbox kinds it runs (absent in records of older agents: process only). */
  sandboxes?: SandboxKind[];
  started_at: string;
  /** firework's node_type label (services are placed only on matching nodes); null/absent: any. */
  node_type?: string | null;
  /** The agent's edge router (host-based routes to services), when it runs one. */
  router_url?: string | null;
}

/** Where a function's instance could go given the agents' records (gateway and agent use the same rule). */
export function placement(agents: Iterable<AgentRecord>, need: { memory_mb: number; vcpu: number; sandbox?: SandboxKind }, exceptAgent?: string): { agents: number; ever: boolean; now: boolean } {
  let n = 0;
  let ever = false;
  let now = false;
  for (const a of agents) {
    if (a.agent_id === exceptAgent) continue;
    if (need.sandbox !== undefined && !(a.sandboxes ?? ['process']).includes(need.sandbox)) continue;
    n++;
    if (a.capacity.memory_mb < need.memory_mb || a.capacity.vcpu < need.vcpu || a.capacity.instances < 1) continue;
    ever = true;
    const e = a.evictable ?? { instances: 0, memory_mb: 0, vcpu: 0 };
    const free = (k: keyof Resources): number => a.capacity[k] - a.used[k] + e[k];
    if (free('instances') >= 1 && free('memory_mb') >= need.memory_mb && free('vcpu') >= need.vcpu) now = true;
  }
  return { agents: n, ever, now };
}

/** A provisioning job on the queue. The agent re-reads the function from the Store. */
export interface ProvisionJob {
  function_id: string;
  /** config_key the requester wants; an agent skips (acks) jobs for an outdated config. */
  config_key: string;
  reason: 'cold' | 'scale' | 'min' | 'replace';
  /** The function's sandbox (also in the topic); absent in jobs of older gateways: process. */
  sandbox?: SandboxKind;
  requested_at: number;
  /** Id of the cold-start waiter group, so the gateway can match the result. */
  request_id: string;
}

export interface InvocationRecord {
  id: string;
  function_id: string;
  status: 'success' | 'error' | 'timeout';
  status_code: number;
  duration_ms: number;
  cold_start: boolean;
  instance_id: string | null;
  started_at: string;
  error: string | null;
}

/** Written by the agent when a provision job ends, so waiting gateways answer at once. */
export interface ProvisionResult {
  request_id: string;
  function_id: string;
  ok: boolean;
  instance_id: string | null;
  /** Failure reason only (exit code, signal, OOM, timeout): shown to invokers. */
  error: string | null;
  /** Set when the failure has a specific code (AETHER_ERR_NO_CAPACITY: no agent could place it). */
  error_code?: string;
  /** The last lines the instance printed: invocation records and the authenticated API only. */
  output?: string | null;
}

/**
 * The reason of a failed start without the program's output (runtimes append it after
 * "; last output:"), on one line: what anonymous invokers may see.
 */
export function failureReason(err: unknown): string {
  const msg = err instanceof Error ? err.message : String(err);
  const cut = msg.indexOf('; last output:');
  const head = cut >= 0 ? msg.slice(0, cut) : msg;
  return (head.split('\n')[0] ?? '').trim() || 'instance failed to start';
}
