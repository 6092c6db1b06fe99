import client from 'prom-client';

/**
 * Every Prometheus metric, declared once (upstream Aether's names where they exist). One registry
 * per process; `aether up` serves gateway and agent metrics together.
 */
export const registry = new client.Registry();
// Event-loop lag sampled every 100 ms, not prom-client's 10: its timer was 100 of an idle
// platform's ~140 wakeups a second (a few % of a core doing nothing).
client.collectDefaultMetrics({ register: registry, prefix: 'aether_process_', eventLoopMonitoringPrecision: 100 });

const opts = { registers: [registry] };

/**
 * Ids of deleted functions (most recent last, bounded). Their series are removed when the deletion
 * is seen (forgetFunctionMetrics) and again at each scrape, so an increment that lands after the
 * deletion (a request or a stop that was still under way) does not bring a series back for good.
 */
const goneFunctions = new Set<string>();
const GONE_FUNCTIONS_MAX = 10_000;

/** The label sets a metric holds (prom-client's own per-series map; every metric type keeps one). */
interface SeriesMap {
  hashMap?: Record<string, { labels?: Record<string, string | number> }>;
  remove(labels: Record<string, string | number>): void;
}

function purgeFunctions(metric: SeriesMap, ids: ReadonlySet<string>): void {
  if (ids.size === 0 || !metric.hashMap) return;
  for (const { labels } of Object.values(metric.hashMap)) {
    const id = labels?.function_id;
    if (labels && id !== undefined && ids.has(String(id))) metric.remove(labels);
  }
}

/** Options of every metric labelled by function_id: a deleted function's series go at scrape time. */
const fnOpts = {
  ...opts,
  collect(this: unknown): void {
    purgeFunctions(this as SeriesMap, goneFunctions);
  },
};

export const metrics = {
  invocations: new client.Counter({ name: 'aether_invocations_total', help: 'Invocations by function and status', labelNames: ['function_id', 'status'] as const, ...fnOpts }),
  invocationDuration: new client.Histogram({ name: 'aether_invocation_duration_seconds', help: 'Invocation latency at the gateway', labelNames: ['function_id'] as const, buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30], ...fnOpts }),
  coldStarts: new client.Counter({ name: 'aether_cold_starts_total', help: 'Requests that triggered or waited for a cold start', labelNames: ['function_id'] as const, ...fnOpts }),
  activeRequests: new client.Gauge({ name: 'aether_active_requests', help: 'Requests in flight at the gateway', ...opts }),
  instancesActive: new client.Gauge({ name: 'aether_instances_active', help: 'Running instances on this agent', labelNames: ['function_id', 'agent_id'] as const, ...fnOpts }),
  vmSpawns: new client.Counter({ name: 'aether_vm_spawns_total', help: 'Instance starts by outcome', labelNames: ['function_id', 'agent_id', 'status'] as const, ...fnOpts }),
  vmSpawnDuration: new client.Histogram({ name: 'aether_vm_spawn_duration_seconds', help: 'Job taken to instance ready', labelNames: ['function_id'] as const, buckets: [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30], ...fnOpts }),
  vmDeaths: new client.Counter({ name: 'aether_vm_deaths_total', help: 'Instances that exited', labelNames: ['function_id', 'reason'] as const, ...fnOpts }),
  codeCacheHits: new client.Counter({ name: 'aether_code_cache_hits_total', help: 'Code cache hits', ...opts }),
  codeCacheMisses: new client.Counter({ name: 'aether_code_cache_misses_total', help: 'Code cache misses (downloads)', ...opts }),
  scaleEvents: new client.Counter({ name: 'aether_scale_events_total', help: 'Scale decisions taken', labelNames: ['function_id', 'direction'] as const, ...fnOpts }),
  logLinesDropped: new client.Counter({ name: 'aether_log_lines_dropped_total', help: 'Output lines of instances dropped by the per-instance log rate limit', labelNames: ['function_id'] as const, ...fnOpts }),
  // Services: firework's agent metric names, so its dashboards keep working.
  fwReconcileRuns: new client.Counter({ name: 'firework_agent_reconcile_runs_total', help: 'Service reconcile runs', labelNames: ['node'] as const, ...opts }),
  fwReconcileErrors: new client.Counter({ name: 'firework_agent_reconcile_errors_total', help: 'Service reconcile runs that failed', labelNames: ['node'] as const, ...opts }),
  fwServiceRestarts: new client.Counter({ name: 'firework_agent_service_restarts_total', help: 'Service instances restarted (health check, exit, request)', labelNames: ['service', 'tenant'] as const, ...opts }),
  fwServiceHealth: new client.Gauge({ name: 'firework_agent_service_health', help: '1 healthy, 0 unhealthy, -1 unknown', labelNames: ['service', 'tenant'] as const, ...opts }),
  fwServiceState: new client.Gauge({ name: 'firework_agent_service_state', help: '1 for the state each service is in', labelNames: ['service', 'tenant', 'state'] as const, ...opts }),
  fwCapacityVcpus: new client.Gauge({ name: 'firework_node_capacity_vcpus', help: 'vCPUs this node offers to services', labelNames: ['node'] as const, ...opts }),
  fwCapacityMemory: new client.Gauge({ name: 'firework_node_capacity_memory_mb', help: 'Memory this node offers to services', labelNames: ['node'] as const, ...opts }),
  fwUsedVcpus: new client.Gauge({ name: 'firework_node_used_vcpus', help: 'vCPUs of the services assigned here', labelNames: ['node'] as const, ...opts }),
  fwUsedMemory: new client.Gauge({ name: 'firework_node_used_memory_mb', help: 'Memory of the services assigned here', labelNames: ['node'] as const, ...opts }),
  queuePublishErrors: new client.Counter({ name: 'aether_queue_publish_errors_total', help: 'Failed provision job publishes', ...opts }),
  lostJobsRequeued: new client.Counter({ name: 'aether_lost_jobs_requeued_total', help: 'Cold-start jobs queued again after they vanished from the queue', ...opts }),
  evictions: new client.Counter({ name: 'aether_evictions_total', help: 'Idle instances stopped to make room for a cold start', labelNames: ['function_id'] as const, ...fnOpts }),
  noCapacity: new client.Counter({ name: 'aether_no_capacity_total', help: 'Provision jobs answered "no capacity"', labelNames: ['function_id'] as const, ...fnOpts }),
};

/** Every metric labelled by function_id. */
const functionMetrics: SeriesMap[] = Object.values(metrics).filter((m) => ((m as unknown as { labelNames?: string[] }).labelNames ?? []).includes('function_id')) as unknown as SeriesMap[];

/**
 * A function was deleted: drop every series labelled with its id from this process's registry (and
 * keep dropping any that a late increment brings back). Call it where the deletion is observed.
 */
export function forgetFunctionMetrics(fnId: string): void {
  goneFunctions.delete(fnId);
  goneFunctions.add(fnId);
  if (goneFunctions.size > GONE_FUNCTIONS_MAX) goneFunctions.delete(goneFunctions.values().next().value as string);
  const one = new Set([fnId]);
  for (const m of functionMetrics) purgeFunctions(m, one);
}

/** A function (again) exists under this id: its series are no longer dropped. */
export function keepFunctionMetrics(fnId: string): void {
  goneFunctions.delete(fnId);
}
