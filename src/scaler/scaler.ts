/**
 * Pure autoscaling decisions. Inputs are snapshots plus `now` from an injected clock; the loops in
 * the gateway (scale up) and the agent (scale down) do the I/O.
 */
export interface ScalePolicy {
  min_instances: number;
  max_instances: number;
  concurrency_target: number;
  scale_down_after_s: number;
  scale_to_zero_after_s: number;
}

export interface InstanceLoad {
  id: string;
  inflight: number;
  /** End of the last request (or start time if it never served one); ignored while inflight > 0. */
  lastActiveAt: number;
}

/** Instances wanted for `demand` concurrent requests (in flight + waiting), within min..max. */
export function desiredInstances(policy: ScalePolicy, demand: number): number {
  const want = Math.ceil(demand / policy.concurrency_target);
  return Math.min(policy.max_instances, Math.max(policy.min_instances, want));
}

/**
 * How many instances to start now. Starting instances count as capacity already on the way, so a
 * burst asks once instead of once per request.
 */
export function planScaleUp(policy: ScalePolicy, s: { ready: number; starting: number; demand: number }): number {
  const want = desiredInstances(policy, s.demand);
  return Math.max(0, want - s.ready - s.starting);
}

/**
 * Which instances to stop now. All go after scale_to_zero_after_s without any request (unless
 * min_instances > 0); otherwise at most one idle instance per call goes after scale_down_after_s,
 * never below what current demand or min_instances needs (and never the last one: that is
 * scale-to-zero's job).
 */
export function planScaleDown(policy: ScalePolicy, s: { now: number; instances: InstanceLoad[]; totalReady: number }): string[] {
  const busy = s.instances.some((i) => i.inflight > 0);
  const lastActive = Math.max(0, ...s.instances.map((i) => i.lastActiveAt));
  if (!busy && policy.min_instances === 0 && s.instances.length > 0 && s.now - lastActive >= policy.scale_to_zero_after_s * 1000) {
    return s.instances.map((i) => i.id);
  }
  const demand = s.instances.reduce((n, i) => n + i.inflight, 0);
  const floor = Math.max(1, policy.min_instances, Math.ceil(demand / policy.concurrency_target));
  if (s.totalReady <= floor) return [];
  const idle = s.instances
    .filter((i) => i.inflight === 0 && s.now - i.lastActiveAt >= policy.scale_down_after_s * 1000)
    .sort((a, b) => a.lastActiveAt - b.lastActiveAt);
  return idle.length > 0 && idle[0] ? [idle[0].id] : [];
}
