import type { IncomingMessage, ServerResponse } from 'node:http';
import { performance } from 'node:perf_hooks';
import { AetherError, answerUnexpected, clip, closeAfterEarlyResponse, CLUSTER_TOKEN_HEADER, decodePathPart, errorBody, metrics, newId, newInvocationId, type Clock, type Logger } from '../core/index.ts';
import { forward, ProxyError } from '../proxy/index.ts';
import { planScaleUp } from '../scaler/index.ts';
import { failureReason, instanceConfigKey, KEYS, placement, provisionTopic, type FunctionRecord, type InstanceRecord, type ProvisionJob, type ProvisionResult, type SandboxKind } from '../spec/index.ts';
import type { Queue } from '../queue/index.ts';
import type { Store } from '../store/index.ts';
import type { ClusterViews } from './views.ts';
import type { InvocationRecorder } from './records.ts';

/** The agent living in the same process (`aether up`): forwarding to it is a function call. */
export interface LocalAgent {
  readonly id: string;
  forward(
    instanceId: string,
    req: IncomingMessage,
    res: ServerResponse,
    target: { path: string; headers?: Record<string, string> },
    opts?: { signal?: AbortSignal; responseHeaders?: Record<string, string> },
  ): Promise<{ status: number }>;
}

export interface InvokerDeps {
  store: Store;
  queue: Queue;
  views: ClusterViews;
  clock: Clock;
  logger: Logger;
  recorder: InvocationRecorder;
  gatewayId: string;
  /** Lease of this gateway: cold-start claims die with it. */
  leaseId: () => string | undefined;
  localAgent?: LocalAgent;
  /** A provision request without an answer after this long no longer counts as starting. */
  startTimeoutMs: number;
  /** Proves this gateway to agents on the forwarding hop (never the admin token). */
  clusterToken: string;
  /** Whether some live agent runs this sandbox kind (default: always); if none does, a cold start fails at once. */
  sandboxOffered?: (kind: SandboxKind) => boolean;
}

interface Waiter {
  resolve(inst: InstanceRecord): void;
  reject(err: Error): void;
}

interface Start {
  /** When it was asked (or re-queued). */
  at: number;
  configKey: string;
  /** Queue job id once enqueued by this gateway (recovery checks that very job). */
  jobId?: string;
  /** Re-queued once already after its job vanished: never again (bounded recovery). */
  requeued?: boolean;
  /** First housekeeping round that saw the job gone without a result (confirmed on the next). */
  missingSince?: number;
}

interface FnState {
  /** Requests of this function inside this gateway, waiting ones included (the scaler's demand). */
  inflight: number;
  /** Provision requests on the way: requestId -> time asked. Includes another gateway's claimed cold start. */
  starting: Map<string, Start>;
  waiters: Set<Waiter>;
  /** Request ids whose cold-start claim we hold. */
  claims: Set<string>;
  lastError: string | undefined;
  /** What this gateway last wrote to KEYS.demand for the function ("" = nothing). */
  reported: string;
  /** Requests a native data plane (HAProxy) carries for the function, from its stats. */
  external: number;
}

const PREFIX = '/functions/';
/** Function ids and names (see FunctionService): anything else is a 404 without a store lookup. */
const ID_OR_NAME = /^[a-z0-9][a-z0-9-]{0,79}$/;

/**
 * The invocation route: `ANY /functions/{id|name}[/*]`. Warm path: in-memory views -> least-loaded
 * ready instance -> stream. Cold path: one claimed cold start per function, waiters released by the
 * instance watch, failures answered at once from the agent's provision result.
 */
export class Invoker {
  readonly #d: InvokerDeps;
  readonly #fns = new Map<string, FnState>();
  /** Requests this gateway has in flight per instance (least-loaded choice). */
  readonly #instLoad = new Map<string, number>();
  /** Instances that refused a connection recently: skip until the watch catches up. */
  readonly #bad = new Map<string, number>();
  #rr = 0;
  /** The lost-job recovery pass in progress (it never holds up housekeeping or the reconciler). */
  #recovering: Promise<void> | undefined;

  constructor(deps: InvokerDeps) {
    this.#d = deps;
    deps.views.instances.onChange((_key, rec) => {
      if (rec && rec.status === 'ready') this.#wake(rec.function_id);
    });
    deps.views.results.onChange((_key, r) => {
      if (r) this.#onResult(r);
    });
    deps.views.functions.onChange((key, fn) => {
      if (fn) return this.#onFunctionChanged(fn);
      // Deleted: fail waiters at once, later requests get 404; forget its state and published demand.
      const fnId = key.slice(KEYS.functions.length);
      const st = this.#fns.get(fnId);
      if (!st) return;
      this.#failWaiters(st, new AetherError('AETHER_ERR_FUNCTION_NOT_FOUND', 'function was deleted'));
      if (st.inflight === 0) this.#fns.delete(fnId);
      if (st.reported) void this.#d.store.delete(KEYS.demand(fnId, this.#d.gatewayId)).catch(() => undefined);
    });
  }

  static matches(url: string | undefined): boolean {
    return url !== undefined && url.startsWith(PREFIX);
  }

  /** Never throws or rejects: whatever goes wrong in one request is answered (500 at worst) and logged. */
  handle(req: IncomingMessage, res: ServerResponse): void {
    this.#handle(req, res).catch((err: unknown) => answerUnexpected(this.#d.logger, 'invocation', req, res, err));
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const started = performance.now();
    const startedAt = this.#d.clock.now();
    const url = req.url ?? '/';
    const rest = url.slice(PREFIX.length);
    const cut = rest.search(/[/?]/);
    let path = cut === -1 ? '/' : rest.slice(cut);
    if (path.startsWith('?')) path = '/' + path;

    let fn: FunctionRecord | undefined;
    let ref: string;
    try {
      ref = decodePathPart(cut === -1 ? rest : rest.slice(0, cut), 'function name');
      fn = this.#d.views.fn(ref) ?? (await this.#lookup(ref));
    } catch (err) {
      return this.#fail(res, err);
    }
    if (!fn) return this.#fail(res, new AetherError('AETHER_ERR_FUNCTION_NOT_FOUND', `function "${clip(ref)}" not found`));
    if (!fn.code_sha256) return this.#fail(res, new AetherError('AETHER_ERR_NO_CODE', `function "${fn.name}" has no code; upload it first`));

    delete req.headers[CLUSTER_TOKEN_HEADER]; // a caller's copy never reaches an agent or a function
    const invId = newInvocationId(startedAt);
    const st = this.#state(fn.id);
    st.inflight++;
    metrics.activeRequests.inc();
    const ac = new AbortController();
    const timer = this.#d.clock.setTimeout(() => ac.abort(new AetherError('AETHER_ERR_TIMEOUT', `function did not answer within ${fn.timeout_ms} ms`)), fn.timeout_ms);
    const onClose = (): void => {
      if (!res.writableFinished) ac.abort(new ProxyError('client went away', 'aborted', res.headersSent));
    };
    res.on('close', onClose);

    let coldStart = false;
    let instanceId: string | null = null;
    let status: number;
    let error: AetherError | undefined;
    try {
      const headers = forwardedHeaders(req);
      for (let attempt = 0; ; attempt++) {
        // The chosen instance comes back with this request already counted in its load.
        let inst = this.#reserve(fn, st);
        if (!inst) {
          coldStart ||= this.#candidates(fn).current.length === 0;
          if (coldStart && !this.#offered(fn)) {
            throw new AetherError('AETHER_ERR_SANDBOX_UNAVAILABLE', `function "${fn.name}" needs sandbox "${fn.sandbox}", which no live agent offers (start an agent with --sandboxes ${fn.sandbox})`);
          }
          inst = await this.#waitForInstance(fn, st, ac.signal);
        }
        this.#maybeScaleUp(fn, st);
        instanceId = inst.instance_id;
        const responseHeaders = { 'x-aether-invocation-id': invId, 'x-aether-cold-start': String(coldStart) };
        try {
          const r = await this.#send(inst, req, res, path, headers, responseHeaders, ac.signal);
          status = r.status;
          break;
        } catch (err) {
          // Raced with scale-down / a dying instance before anything reached it: try another one.
          const retryable = !req.readableDidRead && !res.headersSent && attempt < 4 && !ac.signal.aborted && isUnreached(err);
          if (!retryable) throw err;
          this.#bad.set(inst.instance_id, this.#d.clock.now() + 5000);
        } finally {
          this.#addLoad(inst.instance_id, -1);
          if (st.waiters.size > 0) this.#wake(fn.id);
        }
      }
    } catch (err) {
      error = this.#classify(err, ac.signal, fn, invId);
      status = error.status;
      if (!res.headersSent) this.#fail(res, error.detail === undefined ? error : new AetherError(error.code, `${error.message} (invocation ${invId}; the output is in the function's logs)`), { 'x-aether-invocation-id': invId });
      else res.destroy();
    } finally {
      this.#d.clock.clearTimeout(timer);
      res.off('close', onClose);
      st.inflight--;
      metrics.activeRequests.dec();
    }

    const duration = performance.now() - started;
    const outcome = error?.code === 'AETHER_ERR_TIMEOUT' ? 'timeout' : status >= 500 || error ? 'error' : 'success';
    metrics.invocations.inc({ function_id: fn.id, status: outcome });
    metrics.invocationDuration.observe({ function_id: fn.id }, duration / 1000);
    if (coldStart) metrics.coldStarts.inc({ function_id: fn.id });
    this.#d.recorder.record({
      id: invId,
      function_id: fn.id,
      status: outcome,
      status_code: status,
      duration_ms: Math.round(duration * 1000) / 1000,
      cold_start: coldStart,
      instance_id: instanceId,
      started_at: new Date(startedAt).toISOString(),
      error: error ? `${error.code}: ${error.message}${error.detail === undefined ? '' : `\n--- last output ---\n${error.detail}`}` : status >= 500 ? `function answered ${status}` : null,
    });
  }

  /** Rejects with AETHER_ERR_UPSTREAM_UNREACHED when nothing of the request reached a program. */
  async #send(
    inst: InstanceRecord,
    req: IncomingMessage,
    res: ServerResponse,
    path: string,
    headers: Record<string, string>,
    responseHeaders: Record<string, string>,
    signal: AbortSignal,
  ): Promise<{ status: number }> {
    const local = this.#d.localAgent;
    if (local && inst.agent_id === local.id) {
      return local.forward(inst.instance_id, req, res, { path, headers }, { signal, responseHeaders });
    }
    const hop = { ...headers, [CLUSTER_TOKEN_HEADER]: this.#d.clusterToken };
    try {
      return await forward(req, res, { endpoint: { kind: 'http', origin: inst.agent_url }, path: `/internal/forward/${inst.instance_id}${path}`, headers: hop }, { signal, responseHeaders, fromAgent: true });
    } catch (err) {
      // 'connect': the agent could not be reached, or answered that the instance could not be
      // (its coded answer, which no function response can carry).
      if (err instanceof ProxyError && err.phase === 'connect') throw new AetherError('AETHER_ERR_UPSTREAM_UNREACHED', `instance ${inst.instance_id}: ${err.message}`, { cause: err });
      throw err;
    }
  }

  #classify(err: unknown, signal: AbortSignal, fn: FunctionRecord, invId: string): AetherError {
    if (signal.aborted && signal.reason instanceof AetherError) return signal.reason;
    if (err instanceof AetherError) return err;
    if (err instanceof ProxyError) {
      if (err.phase === 'aborted') return new AetherError('AETHER_ERR_UPSTREAM', 'client closed the connection');
      return new AetherError('AETHER_ERR_UPSTREAM', `instance of "${fn.name}" failed while answering: ${err.message}`);
    }
    this.#d.logger.error({ err, invocation_id: invId }, 'invocation failed'); // the answer carries the same id
    return new AetherError('AETHER_ERR_INTERNAL');
  }

  #fail(res: ServerResponse, err: unknown, extraHeaders: Record<string, string> = {}): void {
    const { status, body } = errorBody(err);
    if (res.headersSent) {
      res.destroy();
      return;
    }
    closeAfterEarlyResponse(res.req, res);
    res.writeHead(status, { ...extraHeaders, 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
    res.end(body);
  }

  async #lookup(ref: string): Promise<FunctionRecord | undefined> {
    if (!ID_OR_NAME.test(ref)) return undefined; // cannot be a function: no store round trip
    // Cold path only: the view may lag a create made through another gateway by a few ms.
    let kv = await this.#d.store.get(KEYS.function(ref));
    if (!kv) {
      const byName = await this.#d.store.get(KEYS.functionName(ref));
      if (byName) kv = await this.#d.store.get(KEYS.function(byName.value));
    }
    return kv ? (JSON.parse(kv.value) as FunctionRecord) : undefined;
  }

  #state(fnId: string): FnState {
    let st = this.#fns.get(fnId);
    if (!st) {
      st = { inflight: 0, starting: new Map(), waiters: new Set(), claims: new Set(), lastError: undefined, reported: '', external: 0 };
      this.#fns.set(fnId, st);
    }
    return st;
  }

  /** Ready instances: the function's current config first; stale ones only while no current one is ready. */
  #candidates(fn: FunctionRecord): { current: InstanceRecord[]; stale: InstanceRecord[] } {
    const current: InstanceRecord[] = [];
    const stale: InstanceRecord[] = [];
    const m = this.#d.views.byFunction.get(fn.id);
    if (!m) return { current, stale };
    const key = instanceConfigKey(fn);
    const now = this.#d.clock.now();
    for (const rec of m.values()) {
      if (rec.status !== 'ready') continue;
      const badUntil = this.#bad.get(rec.instance_id);
      if (badUntil !== undefined) {
        if (badUntil > now) continue;
        this.#bad.delete(rec.instance_id);
      }
      (rec.config_key === key ? current : stale).push(rec);
    }
    return { current, stale };
  }

  #pick(fn: FunctionRecord): InstanceRecord | undefined {
    const { current, stale } = this.#candidates(fn);
    const list = current.length > 0 ? current : stale;
    if (list.length === 0) return undefined;
    // Least loaded; rotate the starting point so ties spread.
    const start = this.#rr++ % list.length;
    let best: InstanceRecord | undefined;
    let bestLoad = Infinity;
    for (let i = 0; i < list.length; i++) {
      const rec = list[(start + i) % list.length] as InstanceRecord;
      const load = this.#instLoad.get(rec.instance_id) ?? 0;
      if (load < bestLoad) {
        best = rec;
        bestLoad = load;
      }
    }
    return best;
  }

  #addLoad(instanceId: string, delta: number): void {
    const n = (this.#instLoad.get(instanceId) ?? 0) + delta;
    if (n <= 0) this.#instLoad.delete(instanceId);
    else this.#instLoad.set(instanceId, n);
  }

  /**
   * Least-loaded ready instance, counted as taken. While more instances are starting, an instance
   * already at twice the concurrency target takes no more: the request waits for the new capacity
   * instead of piling onto one instance. With nothing starting, it takes them all.
   */
  #reserve(fn: FunctionRecord, st: FnState): InstanceRecord | undefined {
    const inst = this.#pick(fn);
    if (!inst) return undefined;
    if (st.starting.size > 0 && (this.#instLoad.get(inst.instance_id) ?? 0) >= fn.concurrency_target * 2) return undefined;
    this.#addLoad(inst.instance_id, 1);
    return inst;
  }

  #waitForInstance(fn: FunctionRecord, st: FnState, signal: AbortSignal): Promise<InstanceRecord> {
    return new Promise<InstanceRecord>((resolve, reject) => {
      const waiter: Waiter = {
        resolve: (inst) => {
          cleanup();
          resolve(inst);
        },
        reject: (err) => {
          cleanup();
          reject(err);
        },
      };
      const onAbort = (): void => waiter.reject(signal.reason instanceof Error ? signal.reason : new Error('aborted'));
      const cleanup = (): void => {
        st.waiters.delete(waiter);
        signal.removeEventListener('abort', onAbort);
      };
      if (signal.aborted) return onAbort();
      signal.addEventListener('abort', onAbort, { once: true });
      st.waiters.add(waiter);
      if (this.#candidates(fn).current.length > 0 || st.starting.size > 0) return; // capacity is on its way
      const tooLarge = this.#neverFits(fn);
      if (tooLarge) return waiter.reject(tooLarge);
      void this.#ensureColdStart(fn, st).catch((err: unknown) => {
        this.#failWaiters(st, err instanceof AetherError ? err : new AetherError('AETHER_ERR_UNAVAILABLE', `cold start could not be requested: ${String(err)}`));
      });
    });
  }

  /**
   * Agents drop provision jobs queued for an older config (a code upload or PUT raced a cold
   * start), without a result: forget those starts and ask again for the current config, so waiting
   * requests are not left until their timeout.
   */
  #onFunctionChanged(fn: FunctionRecord): void {
    const st = this.#fns.get(fn.id);
    if (!st || st.starting.size === 0) return;
    const key = instanceConfigKey(fn);
    for (const [id, s] of st.starting) {
      if (s.configKey === key) continue;
      st.starting.delete(id);
      if (st.claims.delete(id)) this.#releaseClaim(fn.id, id);
    }
    if (st.waiters.size === 0 || st.starting.size > 0 || this.#candidates(fn).current.length > 0) return;
    void this.#ensureColdStart(fn, st).catch((err: unknown) => {
      this.#failWaiters(st, err instanceof AetherError ? err : new AetherError('AETHER_ERR_UNAVAILABLE', `cold start could not be requested: ${String(err)}`));
    });
  }

  /** No registered agent could ever hold an instance (none at all: wait, one may be starting). */
  #neverFits(fn: FunctionRecord): AetherError | undefined {
    const p = placement(this.#d.views.agents.items.values(), fn);
    if (p.agents === 0 || p.ever) return undefined;
    return new AetherError('AETHER_ERR_NO_CAPACITY', `"${fn.name}" needs ${fn.memory_mb} MB and ${fn.vcpu} vCPU per instance; no agent has that much capacity`);
  }

  #wake(fnId: string): void {
    const st = this.#fns.get(fnId);
    if (!st || st.waiters.size === 0) return;
    const fn = this.#d.views.fn(fnId);
    if (!fn) return;
    for (const w of [...st.waiters]) {
      const inst = this.#reserve(fn, st);
      if (!inst) return;
      w.resolve(inst);
    }
  }

  #failWaiters(st: FnState, err: Error): void {
    for (const w of [...st.waiters]) w.reject(err);
  }

  #gcStarting(st: FnState): void {
    const cutoff = this.#d.clock.now() - this.#d.startTimeoutMs;
    for (const [id, s] of st.starting) if (s.at < cutoff) st.starting.delete(id);
  }

  /** One cold start per function across gateways: a claim key under this gateway's lease. */
  async #ensureColdStart(fn: FunctionRecord, st: FnState): Promise<void> {
    this.#gcStarting(st);
    if (st.starting.size > 0) return;
    const requestId = newId('req', this.#d.clock.now());
    const configKey = instanceConfigKey(fn);
    st.starting.set(requestId, { at: this.#d.clock.now(), configKey });
    const lease = this.#d.leaseId();
    const claimKey = KEYS.coldStart(fn.id);
    const claim = await this.#d.store.cas(claimKey, 0, JSON.stringify({ gateway_id: this.#d.gatewayId, request_id: requestId, config_key: configKey, at: this.#d.clock.now() }), lease ? { lease } : {});
    if (!claim.succeeded) {
      st.starting.delete(requestId);
      const held = await this.#d.store.get(claimKey);
      if (held) {
        const h = JSON.parse(held.value) as { request_id: string; at: number; config_key?: string };
        if (this.#d.clock.now() - h.at > this.#d.startTimeoutMs || (h.config_key !== undefined && h.config_key !== configKey)) {
          // A claim nobody finished (its gateway hung), or one for an older version: take it over.
          await this.#d.store.txn([{ key: claimKey, modRevision: held.modRevision }], [{ type: 'delete', key: claimKey }]);
          return this.#ensureColdStart(fn, st);
        }
        st.starting.set(h.request_id, { at: this.#d.clock.now(), configKey: h.config_key ?? configKey });
        return;
      }
      return this.#ensureColdStart(fn, st);
    }
    st.claims.add(requestId);
    await this.#enqueue(fn, requestId, 'cold');
    metrics.scaleEvents.inc({ function_id: fn.id, direction: 'up' });
  }

  #offered(fn: FunctionRecord): boolean {
    return this.#d.sandboxOffered?.(fn.sandbox) ?? true;
  }

  async #enqueue(fn: FunctionRecord, requestId: string, reason: ProvisionJob['reason']): Promise<void> {
    const job: ProvisionJob = { function_id: fn.id, config_key: instanceConfigKey(fn), reason, requested_at: this.#d.clock.now(), request_id: requestId, sandbox: fn.sandbox };
    try {
      const jobId = await this.#d.queue.enqueue(provisionTopic(fn.sandbox), job);
      const s = this.#state(fn.id).starting.get(requestId);
      if (s) s.jobId = jobId;
    } catch (err) {
      metrics.queuePublishErrors.inc();
      this.#state(fn.id).starting.delete(requestId);
      throw new AetherError('AETHER_ERR_UNAVAILABLE', `provision queue unavailable: ${String(err)}`);
    }
  }

  /**
   * Delete our cold-start claim, only if it is still ours: a plain delete could remove the claim
   * another gateway took over meanwhile (and start a second cold start).
   */
  #releaseClaim(fnId: string, requestId: string): void {
    const key = KEYS.coldStart(fnId);
    void (async () => {
      const held = await this.#d.store.get(key);
      if (!held || claimRequestId(held.value) !== requestId) return;
      await this.#d.store.txn([{ key, modRevision: held.modRevision }], [{ type: 'delete', key }]);
    })().catch(() => undefined);
  }

  #maybeScaleUp(fn: FunctionRecord, st: FnState): void {
    this.#gcStarting(st);
    const ready = this.#candidates(fn).current.length;
    // Behind a load balancer each gateway sees a share of the demand: add what the others report.
    const others = this.#d.views.otherDemand(fn.id, this.#d.gatewayId);
    const n = this.#offered(fn) ? planScaleUp(fn, { ready, starting: st.starting.size + others.starting, demand: st.inflight + st.external + others.inflight }) : 0;
    for (let i = 0; i < n; i++) {
      const requestId = newId('req', this.#d.clock.now());
      st.starting.set(requestId, { at: this.#d.clock.now(), configKey: instanceConfigKey(fn) });
      metrics.scaleEvents.inc({ function_id: fn.id, direction: 'up' });
      this.#enqueue(fn, requestId, 'scale').catch((err: unknown) => this.#d.logger.warn({ err: String(err) }, 'scale-up request failed'));
    }
  }

  /**
   * Every gateway, periodically: forget stuck starts, release waiters (asking again for a cold
   * start when the one they waited for was forgotten), re-queue lost cold starts. The recovery
   * pass runs in the background: it never holds up this call (and so the reconciler).
   */
  async housekeeping(): Promise<void> {
    for (const [fnId, st] of [...this.#fns]) {
      this.#gcStarting(st);
      if (st.waiters.size === 0) continue;
      this.#wake(fnId);
      const fn = this.#d.views.fn(fnId);
      if (fn && st.waiters.size > 0 && st.starting.size === 0 && this.#offered(fn) && this.#candidates(fn).current.length === 0) {
        this.#ensureColdStart(fn, st).catch((err: unknown) => {
          this.#failWaiters(st, err instanceof AetherError ? err : new AetherError('AETHER_ERR_UNAVAILABLE', `cold start could not be requested: ${String(err)}`));
        });
      }
    }
    await this.#reportDemand();
    this.#recovering ??= this.#requeueLost()
      .catch((err: unknown) => this.#d.logger.warn({ err: String(err) }, 'lost-job recovery failed'))
      .finally(() => (this.#recovering = undefined));
  }

  /** Wait for a recovery pass in progress (tests, shutdown). */
  async settled(): Promise<void> {
    await this.#recovering;
  }

  /** Publish this gateway's load per function (only changes; removed when idle) for the other gateways' scale-up. */
  async #reportDemand(): Promise<void> {
    const lease = this.#d.leaseId();
    if (!lease) return;
    for (const [fnId, st] of this.#fns) {
      const idle = st.inflight + st.external === 0 && st.starting.size === 0;
      // The lease is part of the value: after a new lease (the old one expired with its keys) it is written again.
      const value = idle ? '' : JSON.stringify({ inflight: st.inflight + st.external, starting: st.starting.size, lease });
      if (value === st.reported) continue;
      const key = KEYS.demand(fnId, this.#d.gatewayId);
      try {
        if (idle) await this.#d.store.delete(key);
        else await this.#d.store.put(key, value, { lease });
        st.reported = value;
      } catch {
        // store briefly down: try again next round
      }
    }
  }

  reconcile(): void {
    for (const fn of this.#d.views.functions.items.values()) {
      if (!fn.code_sha256 || !this.#offered(fn)) continue;
      const st = this.#state(fn.id);
      const { current, stale } = this.#candidates(fn);
      this.#gcStarting(st);
      const floor = Math.min(fn.max_instances, Math.max(fn.min_instances, stale.length > 0 ? 1 : 0));
      const n = floor - current.length - st.starting.size;
      for (let i = 0; i < n; i++) {
        const requestId = newId('req', this.#d.clock.now());
        st.starting.set(requestId, { at: this.#d.clock.now(), configKey: instanceConfigKey(fn) });
        this.#enqueue(fn, requestId, stale.length > 0 ? 'replace' : 'min').catch((err: unknown) => this.#d.logger.warn({ err: String(err) }, 'provision request failed'));
      }
    }
  }

  #onResult(r: ProvisionResult): void {
    const st = this.#fns.get(r.function_id);
    if (!st || !st.starting.has(r.request_id)) return;
    st.starting.delete(r.request_id);
    if (st.claims.delete(r.request_id)) this.#releaseClaim(r.function_id, r.request_id);
    if (r.ok) {
      this.#wake(r.function_id);
      return;
    }
    this.#wake(r.function_id); // others may be ready: with nothing else starting they take the waiters
    // Only the reason reaches the invoker; the program's output (connection strings, stack
    // traces…) goes to the invocation record as the error's detail.
    st.lastError = failureReason(r.error ?? 'instance failed to start');
    const output = r.output ?? (r.error?.includes('\n') ? r.error : undefined);
    const fn = this.#d.views.fn(r.function_id);
    if (st.starting.size === 0 && (!fn || !this.#pick(fn))) {
      const err = r.error_code === 'AETHER_ERR_NO_CAPACITY'
        ? new AetherError('AETHER_ERR_NO_CAPACITY', st.lastError)
        : new AetherError('AETHER_ERR_COLD_START_FAILED', `cold start of "${fn?.name ?? r.function_id}" failed: ${st.lastError}`, output ? { detail: output } : {});
      this.#failWaiters(st, err);
    }
  }

  /**
   * Cold starts whose job vanished (e.g. Redis came back without its data): our claimed start has
   * waiters, its job is no longer in the queue (asked per job, not judged by the topic's length)
   * and no result came, on two rounds in a row. Each such start is queued again at most once, with
   * the same request id (the claim and any late result still match it).
   */
  async #requeueLost(): Promise<void> {
    for (const [fnId, st] of [...this.#fns]) {
      if (st.waiters.size === 0) continue;
      const fn = this.#d.views.fn(fnId);
      if (!fn) continue;
      for (const requestId of [...st.claims]) {
        const s = st.starting.get(requestId);
        if (!s || s.jobId === undefined || s.requeued || this.#d.clock.now() - s.at < LOST_JOB_AFTER_MS) continue;
        if (this.#d.views.results.items.has(KEYS.provisionResult(requestId))) continue;
        let present: boolean;
        try {
          present = await this.#d.queue.contains(provisionTopic(fn.sandbox), s.jobId);
        } catch {
          continue; // queue down: nothing to decide now
        }
        if (present || st.starting.get(requestId) !== s) {
          delete s.missingSince;
          continue;
        }
        if (s.missingSince === undefined) {
          s.missingSince = this.#d.clock.now(); // an agent may have acked it a moment before its result shows up
          continue;
        }
        s.requeued = true;
        const job: ProvisionJob = { function_id: fnId, config_key: s.configKey, reason: 'cold', requested_at: this.#d.clock.now(), request_id: requestId, sandbox: fn.sandbox };
        try {
          s.jobId = await this.#d.queue.enqueue(provisionTopic(fn.sandbox), job);
          s.at = this.#d.clock.now();
          delete s.missingSince;
          metrics.lostJobsRequeued.inc();
          this.#d.logger.warn({ function_id: fnId, request_id: requestId }, 'provision job lost (not in the queue, no result); queued again once');
        } catch {
          s.requeued = false; // queue down: try again on a later round
        }
      }
    }
  }

  /**
   * Load a native data plane reports for a function (in flight + queued at the proxy): it counts
   * as this gateway's demand, and may scale up, as requests through the Node path do.
   */
  setExternalLoad(fnId: string, inflight: number): void {
    const fn = this.#d.views.fn(fnId);
    if (!fn) return;
    const st = this.#state(fnId);
    st.external = inflight;
    if (inflight > 0) this.#maybeScaleUp(fn, st);
  }

  /** Demand per function in this gateway (tests, metrics). */
  snapshot(): Record<string, { inflight: number; starting: number; waiting: number }> {
    const out: Record<string, { inflight: number; starting: number; waiting: number }> = {};
    for (const [id, st] of this.#fns) out[id] = { inflight: st.inflight, starting: st.starting.size, waiting: st.waiters.size };
    return out;
  }
}

/** A cold start's job is considered lost only after this long without a result. */
const LOST_JOB_AFTER_MS = 3000;

function claimRequestId(value: string): string | undefined {
  try {
    return (JSON.parse(value) as { request_id?: string }).request_id;
  } catch {
    return undefined;
  }
}

/** The request reached no program, so it may go to another instance (the one signal #send gives for it). */
function isUnreached(err: unknown): boolean {
  return err instanceof AetherError && err.code === 'AETHER_ERR_UPSTREAM_UNREACHED';
}

function forwardedHeaders(req: IncomingMessage): Record<string, string> {
  const h = req.headers;
  const addr = req.socket.remoteAddress ?? '';
  const prior = h['x-forwarded-for'];
  return {
    // A unix-socket peer (the data plane's backup listener) has no address: the proxy's list stands.
    'x-forwarded-for': prior ? `${Array.isArray(prior) ? prior.join(', ') : prior}${addr ? `, ${addr}` : ''}` : addr,
    'x-forwarded-proto': 'encrypted' in req.socket && req.socket.encrypted ? 'https' : 'http',
    'x-forwarded-host': h.host ?? '',
  };
}
