import { forgetFunctionMetrics, keepFunctionMetrics, type Logger } from '../core/index.ts';
import type { KeyValue, Store, WatchEvent } from '../store/index.ts';
import { listAndWatch } from '../store/index.ts';
import { KEYS, type AgentRecord, type FunctionRecord, type InstanceRecord, type ProvisionResult } from '../spec/index.ts';

/**
 * Watch-fed, in-memory views of the Store for the warm path: functions (by id and name), ready
 * instances per function, and provision results. The warm path reads only these maps.
 */
export class PrefixView<T> {
  readonly items = new Map<string, T>();
  #listeners = new Set<(key: string, value: T | undefined) => void>();
  #handle: { ready: Promise<void>; close(): void } | undefined;

  private readonly store: Store;
  private readonly prefix: string;
  private readonly logger: Logger;

  constructor(store: Store, prefix: string, logger: Logger) {
    this.store = store;
    this.prefix = prefix;
    this.logger = logger;
  }

  start(): Promise<void> {
    const parse = (kv: KeyValue): T | undefined => {
      try {
        return JSON.parse(kv.value) as T;
      } catch {
        return undefined;
      }
    };
    const handle = listAndWatch(
      this.store,
      this.prefix,
      {
        onReset: (kvs: KeyValue[]) => {
          const seen = new Set<string>();
          for (const kv of kvs) {
            const v = parse(kv);
            if (v === undefined) continue;
            seen.add(kv.key);
            this.items.set(kv.key, v);
            this.#emit(kv.key, v);
          }
          for (const k of [...this.items.keys()]) {
            if (!seen.has(k)) {
              this.items.delete(k);
              this.#emit(k, undefined);
            }
          }
        },
        onEvent: (ev: WatchEvent) => {
          if (ev.type === 'put') {
            const v = parse(ev.kv);
            if (v === undefined) return;
            this.items.set(ev.kv.key, v);
            this.#emit(ev.kv.key, v);
          } else {
            this.items.delete(ev.key);
            this.#emit(ev.key, undefined);
          }
        },
      },
      { logger: this.logger },
    );
    this.#handle = handle;
    return handle.ready;
  }

  onChange(fn: (key: string, value: T | undefined) => void): () => void {
    this.#listeners.add(fn);
    return () => this.#listeners.delete(fn);
  }

  #emit(key: string, value: T | undefined): void {
    for (const l of this.#listeners) l(key, value);
  }

  close(): void {
    this.#handle?.close();
  }
}

/** What each gateway reports of a function's load (see KEYS.demand). */
export interface GatewayDemand {
  inflight: number;
  starting: number;
  /** The publisher's lease when it wrote this. */
  lease?: string;
}

/** A live gateway (KEYS.gateway), written under its lease. */
export interface GatewayRecord {
  gateway_id: string;
  lease: string;
  started_at: string;
}

export class ClusterViews {
  readonly functions: PrefixView<FunctionRecord>;
  readonly instances: PrefixView<InstanceRecord>;
  readonly results: PrefixView<ProvisionResult>;
  readonly demand: PrefixView<GatewayDemand>;
  /** Registered agents (capacity, used, evictable): placement checks and log gathering. */
  readonly agents: PrefixView<AgentRecord>;
  /** Live gateways: another gateway's demand counts only while it is registered under the same lease. */
  readonly gateways: PrefixView<GatewayRecord>;
  /** fnId -> gatewayId -> reported demand. */
  readonly demandByFunction = new Map<string, Map<string, GatewayDemand>>();
  /** fnId -> instances, maintained from the instances view. */
  readonly byFunction = new Map<string, Map<string, InstanceRecord>>();
  readonly #names = new Map<string, string>();

  constructor(store: Store, logger: Logger) {
    this.functions = new PrefixView(store, KEYS.functions, logger);
    this.instances = new PrefixView(store, KEYS.instances, logger);
    this.results = new PrefixView(store, KEYS.provisionResults, logger);
    this.demand = new PrefixView(store, KEYS.demands, logger);
    this.agents = new PrefixView(store, KEYS.agents, logger);
    this.gateways = new PrefixView(store, KEYS.gateways, logger);
    groupByFunction(this.demand, KEYS.demands, this.demandByFunction);
    this.functions.onChange((key, fn) => {
      const id = key.slice(KEYS.functions.length);
      for (const [name, fid] of this.#names) if (fid === id) this.#names.delete(name);
      if (fn) this.#names.set(fn.name, fn.id);
      // A deleted function's series (invocations, latency, cold starts, scale-ups) leave /metrics.
      if (fn) keepFunctionMetrics(id);
      else forgetFunctionMetrics(id);
    });
    groupByFunction(this.instances, KEYS.instances, this.byFunction);
  }

  async start(): Promise<void> {
    await Promise.all([this.functions.start(), this.instances.start(), this.results.start(), this.demand.start(), this.agents.start(), this.gateways.start()]);
  }

  fn(idOrName: string): FunctionRecord | undefined {
    const byId = this.functions.items.get(KEYS.function(idOrName));
    if (byId) return byId;
    const id = this.#names.get(idOrName);
    return id ? this.functions.items.get(KEYS.function(id)) : undefined;
  }

  close(): void {
    this.functions.close();
    this.instances.close();
    this.results.close();
    this.demand.close();
    this.agents.close();
    this.gateways.close();
  }

  /**
   * What the other gateways report for a function: only from gateways still registered, under the
   * lease they published it with. A gateway that shut down (or restarted) stops counting at once,
   * not when its old lease's TTL runs out.
   */
  otherDemand(fnId: string, selfId: string): { inflight: number; starting: number } {
    const sum = { inflight: 0, starting: 0 };
    const m = this.demandByFunction.get(fnId);
    if (!m) return sum;
    for (const [gw, d] of m) {
      if (gw === selfId) continue;
      const live = this.gateways.items.get(KEYS.gateway(gw));
      if (!live || (d.lease !== undefined && d.lease !== live.lease)) continue;
      sum.inflight += d.inflight;
      sum.starting += d.starting;
    }
    return sum;
  }
}

/** Keep `into` (fnId -> second key segment -> value) in step with a view of `<prefix><fnId>/<id>` keys. */
function groupByFunction<T>(view: PrefixView<T>, prefix: string, into: Map<string, Map<string, T>>): void {
  view.onChange((key, value) => {
    const rest = key.slice(prefix.length);
    const slash = rest.indexOf('/');
    const fnId = rest.slice(0, slash);
    const id = rest.slice(slash + 1);
    let m = into.get(fnId);
    if (value !== undefined) {
      if (!m) into.set(fnId, (m = new Map()));
      m.set(id, value);
    } else if (m) {
      m.delete(id);
      if (m.size === 0) into.delete(fnId);
    }
  });
}
