import type { Endpoint, FunctionRecord, InstanceRecord, InvocationRecord } from '../spec/index.ts';

export type DataPlaneKind = 'node' | 'haproxy';

/** What the route table is computed from: the gateway's watch-fed views. */
export interface RouteSource {
  functions(): Iterable<FunctionRecord>;
  instancesOf(fnId: string): Iterable<InstanceRecord>;
  /** Called on every change of functions or instances. */
  onChange(listener: () => void): () => void;
}

/** Where the data plane reports what it carried (read off the request path). */
export interface DataPlaneSinks {
  record(rec: InvocationRecord): void;
  /** Requests of a function in flight or queued at the proxy (the autoscaler's demand). */
  functionLoad(fnId: string, inflight: number): void;
  /**
   * Per instance: in flight now, whether it served anything since the last report, and whether the
   * proxy still sends it new requests (false once drained or removed: safe to stop).
   */
  instanceLoad?(instanceId: string, inflight: number, active: boolean, routed: boolean): void;
  /** Requests carried by the proxy (aether_* metrics): `weight` of them ended like `rec` (log sampling). */
  observed?(rec: InvocationRecord, weight: number): void;
}

/** An agent's local instances, as its own proxy routes forwards to them (the agent's hop). */
export interface LocalInstanceSource {
  /** The instances forwards go to now (ready or draining, program alive), with their endpoints. */
  routable(): Iterable<{ id: string; endpoint: Endpoint }>;
  /** Called on every change of routable(). */
  onChange(listener: () => void): () => void;
  /** Requests the proxy carries straight to an instance: as DataPlaneSinks.instanceLoad. */
  instanceLoad(instanceId: string, inflight: number, active: boolean, routed: boolean): void;
}

export interface DataPlane {
  readonly kind: DataPlaneKind;
  /** Public URL clients use. */
  readonly url: string;
  /** Resolves once every change the views hold so far is in effect in the proxy. */
  sync(): Promise<void>;
  /** For tests and `aether doctor`-style reports. */
  status(): { kind: DataPlaneKind; proxy: 'running' | 'restarting' | 'none'; restarts: number; routes: number };
  close(): Promise<void>;
}
