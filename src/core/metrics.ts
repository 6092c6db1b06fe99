import client from 'prom-client';

/**
 * Every Prometheus metric, declared once (upstream Aether's names where they exist). One registry
 * per process; `aether up` serves gateway and agent metrics together.
 */
export const registry = new client.Registry();
client.collectDefaultMetrics({ register: registry, prefix: 'aether_process_' });

const opts = { registers: [registry] };

export const metrics = {
  invocations: new client.Counter({ name: 'aether_invocations_total', help: 'Invocations by function and status', labelNames: ['function_id', 'status'] as const, ...opts }),
  invocationDuration: new client.Histogram({ name: 'aether_invocation_duration_seconds', help: 'Invocation latency at the gateway', labelNames: ['function_id'] as const, buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30], ...opts }),
  coldStarts: new client.Counter({ name: 'aether_cold_starts_total', help: 'Requests that triggered or waited for a cold start', labelNames: ['function_id'] as const, ...opts }),
  activeRequests: new client.Gauge({ name: 'aether_active_requests', help: 'Requests in flight at the gateway', ...opts }),
  instancesActive: new client.Gauge({ name: 'aether_instances_active', help: 'Running instances on this agent', labelNames: ['function_id', 'agent_id'] as const, ...opts }),
  vmSpawns: new client.Counter({ name: 'aether_vm_spawns_total', help: 'Instance starts by outcome', labelNames: ['function_id', 'agent_id', 'status'] as const, ...opts }),
  vmSpawnDuration: new client.Histogram({ name: 'aether_vm_spawn_duration_seconds', help: 'Job taken to instance ready', labelNames: ['function_id'] as const, buckets: [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30], ...opts }),
  vmDeaths: new client.Counter({ name: 'aether_vm_deaths_total', help: 'Instances that exited', labelNames: ['function_id', 'reason'] as const, ...opts }),
  codeCacheHits: new client.Counter({ name: 'aether_code_cache_hits_total', help: 'Code cache hits', ...opts }),
  codeCacheMisses: new client.Counter({ name: 'aether_code_cache_misses_total', help: 'Code cache misses (downloads)', ...opts }),
  scaleEvents: new client.Counter({ name: 'aether_scale_events_total', help: 'Scale decisions taken', labelNames: ['function_id', 'direction'] as const, ...opts }),
  logLinesDropped: new client.Counter({ name: 'aether_log_lines_dropped_total', help: 'Output lines of instances dropped by the per-instance log rate limit', labelNames: ['function_id'] as const, ...opts }),
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
  evictions: new client.Counter({ name: 'aether_evictions_total', help: 'Idle instances stopped to make room for a cold start', labelNames: ['function_id'] as const, ...opts }),
  noCapacity: new client.Counter({ name: 'aether_no_capacity_total', help: 'Provision jobs answered "no capacity"', labelNames: ['function_id'] as const, ...opts }),
};
