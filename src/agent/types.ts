import { availableParallelism, totalmem } from 'node:os';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { ArchiveLimits } from '../archive/index.ts';
import type { BlobStore } from '../blob/index.ts';
import type { Clock, Logger } from '../core/index.ts';
import type { Queue } from '../queue/index.ts';
import type { Runtime } from '../runtime/index.ts';
import type { Endpoint, SandboxKind } from '../spec/index.ts';
import type { Store } from '../store/index.ts';
import type { LogEntry } from './logs.ts';
import type { AgentCore } from './core/index.ts';

export interface AgentCapacity {
  instances: number;
  memoryMb: number;
  vcpu: number;
}

export interface AgentConfig {
  agentId: string;
  /** Advertised base URL of this agent's HTTP server (gateway -> agent hop), e.g. http://10.0.0.5:8081. */
  url: string;
  /** Holds `code/` (the code cache); the runtime keeps its own state elsewhere. */
  dataDir: string;
  capacity: AgentCapacity;
  /** TTL of the agent's lease; its keys (agent record, instances) vanish this long after a crash. */
  leaseTtlMs: number;
  /** Longest wait for a new instance to accept connections. */
  startupTimeoutMs: number;
  pidsMax: number;
  /** Longest wait for in-flight requests when an instance is drained (scale-down, update, stop). */
  drainTimeoutMs: number;
  /** Queue visibility of a provision job; extended while the start is in progress. */
  jobVisibilityMs: number;
  /** Scale-down loop period. */
  scaleIntervalMs: number;
  /** Instance starts handled at the same time. */
  maxConcurrentStarts: number;
  /** SIGTERM -> SIGKILL grace when stopping an instance. */
  stopGraceMs: number;
  /** Unpacked code kept on disk before unused entries are evicted. */
  codeCacheBytes: number;
  /** How long a provision result stays in the store (a waiting gateway reads it at once). */
  resultTtlMs: number;
  /** firework's node_type label: the deployer places only matching services here (absent: any). */
  nodeType?: string;
  /** This node's edge router, published in its record so peers route to it. */
  routerUrl?: string;
  /** Every /internal/ route requires it (x-aether-cluster-token header, or a bearer token off the forwarding hop). Not the admin token. */
  clusterToken: string;
  /** An instance idle (no request in flight) at least this long may be evicted to place another function's cold start. */
  evictIdleMs: number;
}

/** Capacity from the host: 80 % of RAM, 8 vCPU shares per core (functions mostly wait on I/O). */
export function defaultCapacity(): AgentCapacity {
  const memoryMb = Math.floor((totalmem() / 1024 / 1024) * 0.8);
  return { instances: 100, memoryMb, vcpu: availableParallelism() * 8 };
}

export const DEFAULT_AGENT_CONFIG = {
  leaseTtlMs: 10_000,
  startupTimeoutMs: 30_000,
  pidsMax: 256,
  drainTimeoutMs: 30_000,
  jobVisibilityMs: 15_000,
  scaleIntervalMs: 1_000,
  maxConcurrentStarts: 4,
  stopGraceMs: 5_000,
  codeCacheBytes: 2 * 1024 * 1024 * 1024,
  resultTtlMs: 60_000,
  evictIdleMs: 1_000,
} as const satisfies Partial<AgentConfig>;

/** Fill the defaults around the fields only the caller can know. */
export function agentConfig(c: Pick<AgentConfig, 'agentId' | 'url' | 'dataDir' | 'clusterToken'> & Partial<AgentConfig>): AgentConfig {
  return { ...DEFAULT_AGENT_CONFIG, capacity: defaultCapacity(), ...c };
}

export interface AgentDeps {
  store: Store;
  queue: Queue;
  blob: BlobStore;
  /**
   * One runtime per sandbox kind this agent offers; it advertises the kinds in its record and takes
   * provision jobs of those kinds only.
   */
  runtimes?: Partial<Record<SandboxKind, Runtime>>;
  /** Shorthand for `runtimes: { process: runtime }`. */
  runtime?: Runtime;
  clock: Clock;
  logger: Logger;
  config: AgentConfig;
  archiveLimits: ArchiveLimits;
}

/** The core's instance state (src/agent/core/state.ts). */
export type LocalInstanceState = 'starting' | 'ready' | 'draining' | 'stopping' | 'stopped' | 'failed';

export interface LocalInstanceInfo {
  instanceId: string;
  functionId: string;
  inflight: number;
  state: LocalInstanceState;
}

export interface AgentForwardTarget {
  /** Path plus query string for the instance. */
  path: string;
  headers?: Record<string, string>;
}

export interface AgentForwardOptions {
  signal?: AbortSignal;
  responseHeaders?: Record<string, string>;
}

export interface Agent {
  readonly id: string;
  /** The node's core (ledger, runtimes, supervision): other workload controllers (services) register on it before start(). */
  readonly core?: AgentCore;
  start(): Promise<void>;
  /** Stop taking jobs, drain and stop every local instance, delete their keys, revoke the lease. */
  stop(): Promise<void>;
  /**
   * In-process forwarding for the gateway in `aether up` (one hop): counts the request in the
   * instance's in-flight number. Unknown or stopped instance: AetherError AETHER_ERR_UPSTREAM
   * (nothing was sent: retry elsewhere). Proxy failures reject with the proxy's ProxyError.
   */
  forward(instanceId: string, req: IncomingMessage, res: ServerResponse, target: AgentForwardTarget, opts?: AgentForwardOptions): Promise<{ status: number }>;
  /**
   * node:http handler of the agent's own server (a find-my-way route table): GET /healthz; ANY
   * /internal/forward/<instanceId>/<path>; GET /internal/logs/<fnId>?tail=&follow= (NDJSON). Every
   * /internal/ path, known or not, needs the cluster token.
   */
  handleHttp(req: IncomingMessage, res: ServerResponse): void;
  /**
   * node:http handler of the agent's private forwarding listener, the backup of its own HAProxy:
   * forwards to the instance named in FORWARD_INSTANCE_HEADER (the path already stripped), or to a
   * sibling, else answers coded. No token: only the agent's proxy can reach that listener.
   */
  handleTrustedForward(req: IncomingMessage, res: ServerResponse): void;
  /** The instances forwards go to now (ready or draining, program alive), with their endpoints. */
  routableInstances(): { id: string; endpoint: Endpoint }[];
  /** `listener` after every change of routableInstances() (called synchronously: coalesce there). Returns the unsubscribe function. */
  onRoutableChange(listener: () => void): () => void;
  /**
   * Load a native data plane carries straight to a local instance (its stats): counts like
   * forwarded requests for scale-down and draining. `active`: it served something since last time;
   * `routed`: the proxy still sends it new requests (a drain waits until it does not).
   */
  noteExternalLoad(instanceId: string, inflight: number, active: boolean, routed: boolean): void;
  tailLogs(fnId: string, n: number): LogEntry[];
  /** Returns the unsubscribe function. */
  followLogs(fnId: string, onEntry: (e: LogEntry) => void): () => void;
  localInstances(): LocalInstanceInfo[];
}
