import {
  CompareResult,
  CompareTarget,
  Etcd3,
  EtcdLeaseInvalidError,
  Range,
  SortOrder,
  SortTarget,
  type ICompare,
  type IDuplexStream,
  type IKeyValue,
  type IOptions,
  type IRangeRequest,
  type IRequestOp,
  type IWatchRequest,
  type IWatchResponse,
} from 'etcd3';
import { AetherError, silentLogger, type Logger } from '../core/index.ts';
import {
  StoreWatchError,
  type KeyValue,
  type ListOptions,
  type RangeResult,
  type Store,
  type TxnCompare,
  type TxnOp,
  type TxnResult,
  type WatchEvent,
  type WatchHandlers,
  type Watcher,
} from './types.ts';

export interface EtcdStoreOptions {
  /** e.g. ['http://127.0.0.1:2379'] */
  endpoints: string[];
  dialTimeoutMs?: number;
  /** Every call rejects with AETHER_ERR_UNAVAILABLE after this long (default 5000 ms). */
  callTimeoutMs?: number;
  logger?: Logger;
}

type HostPolicy = ReturnType<NonNullable<NonNullable<IOptions['faultHandling']>['host']>>;

/**
 * etcd3's default per-host circuit breaker fails every call for 5 s after three errors, which
 * only delays recovery after an etcd restart; our callers (informer, lease keeper) already retry
 * at their own pace. Only `execute` is used by etcd3.
 */
const passThrough = {
  execute: <T>(fn: (ctx: { signal: AbortSignal }) => PromiseLike<T> | T, signal?: AbortSignal): Promise<T> =>
    Promise.resolve().then(() => fn({ signal: signal ?? new AbortController().signal })),
} as unknown as HostPolicy;

const WATCH_BACKOFF_MIN_MS = 100;
const WATCH_BACKOFF_MAX_MS = 2000;

function toKv(kv: IKeyValue): KeyValue {
  return {
    key: kv.key.toString(),
    value: kv.value.toString(),
    createRevision: Number(kv.create_revision),
    modRevision: Number(kv.mod_revision),
    version: Number(kv.version),
    lease: kv.lease && kv.lease !== '0' ? String(kv.lease) : undefined,
  };
}

function isLeaseNotFound(err: unknown): boolean {
  return err instanceof EtcdLeaseInvalidError || (err instanceof Error && /lease not found/i.test(err.message));
}

/** Store on etcd v3: revisions are etcd revisions, lease ids etcd lease ids in decimal. */
export function createEtcdStore(opts: EtcdStoreOptions): Store {
  return new EtcdStore(opts);
}

class EtcdStore implements Store {
  readonly #client: Etcd3;
  readonly #log: Logger;
  readonly #timeoutMs: number;
  readonly #watches = new Set<EtcdWatch>();
  #closed = false;

  constructor(opts: EtcdStoreOptions) {
    if (opts.endpoints.length === 0) throw new AetherError('AETHER_ERR_VALIDATION', 'etcd store needs at least one endpoint');
    this.#log = opts.logger ?? silentLogger();
    this.#timeoutMs = opts.callTimeoutMs ?? 5000;
    const timeoutMs = this.#timeoutMs;
    this.#client = new Etcd3({
      hosts: opts.endpoints,
      dialTimeout: opts.dialTimeoutMs ?? 3000,
      // Unary calls get a deadline so nothing waits forever on a dead etcd; streams live on.
      defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + timeoutMs }),
      // Pings find a silently dead peer (no RST); etcd's default minimum ping interval is 5 s.
      grpcOptions: { 'grpc.keepalive_time_ms': 10_000, 'grpc.keepalive_timeout_ms': 5_000 },
      faultHandling: { host: () => passThrough },
    });
  }

  /** Run one etcd call with an overall deadline, mapping failures to coded errors. */
  async #call<T>(op: string, fn: () => Promise<T>): Promise<T> {
    if (this.#closed) throw new AetherError('AETHER_ERR_UNAVAILABLE', 'store is closed');
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new AetherError('AETHER_ERR_UNAVAILABLE', `etcd ${op}: no answer within ${this.#timeoutMs} ms`)), this.#timeoutMs);
      timer.unref();
    });
    try {
      return await Promise.race([fn(), timeout]);
    } catch (err) {
      if (err instanceof AetherError) throw err;
      const msg = err instanceof Error ? err.message : String(err);
      if (isLeaseNotFound(err)) throw new AetherError('AETHER_ERR_CONFLICT', `etcd ${op}: lease not found`, { cause: err });
      throw new AetherError('AETHER_ERR_UNAVAILABLE', `etcd ${op}: ${msg}`, { cause: err });
    } finally {
      clearTimeout(timer);
    }
  }

  async get(key: string): Promise<KeyValue | undefined> {
    const res = await this.#call('get', () => this.#client.kv.range({ key: Buffer.from(key) }));
    const kv = res.kvs[0];
    return kv ? toKv(kv) : undefined;
  }

  async list(prefix: string, opts?: ListOptions): Promise<RangeResult> {
    const r = Range.prefix(prefix);
    const req: IRangeRequest = { key: r.start, range_end: r.end };
    if (opts?.limit !== undefined && opts.limit > 0) req.limit = opts.limit;
    if (opts?.reverse) {
      req.sort_order = SortOrder.Descend;
      req.sort_target = SortTarget.Key;
    }
    const res = await this.#call('list', () => this.#client.kv.range(req));
    return { kvs: res.kvs.map(toKv), revision: Number(res.header.revision) };
  }

  async put(key: string, value: string, opts?: { lease?: string }): Promise<number> {
    const res = await this.#call('put', () =>
      this.#client.kv.put({ key: Buffer.from(key), value: Buffer.from(value), ...(opts?.lease !== undefined ? { lease: opts.lease } : {}) }),
    );
    return Number(res.header.revision);
  }

  async delete(key: string): Promise<boolean> {
    const res = await this.#call('delete', () => this.#client.kv.deleteRange({ key: Buffer.from(key) }));
    return Number(res.deleted) > 0;
  }

  async deletePrefix(prefix: string): Promise<number> {
    const r = Range.prefix(prefix);
    const res = await this.#call('deletePrefix', () => this.#client.kv.deleteRange({ key: r.start, range_end: r.end }));
    return Number(res.deleted);
  }

  async txn(compares: TxnCompare[], ops: TxnOp[]): Promise<TxnResult> {
    const compare: ICompare[] = compares.map((c) =>
      c.modRevision === 0
        ? // etcd reports an absent key's create revision as 0.
          { key: Buffer.from(c.key), target: CompareTarget.Create, result: CompareResult.Equal, create_revision: 0 }
        : { key: Buffer.from(c.key), target: CompareTarget.Mod, result: CompareResult.Equal, mod_revision: c.modRevision },
    );
    const success: IRequestOp[] = ops.map((op) => {
      if (op.type === 'put') {
        return { request_put: { key: Buffer.from(op.key), value: Buffer.from(op.value), ...(op.lease !== undefined ? { lease: op.lease } : {}) } };
      }
      if (op.type === 'delete') return { request_delete_range: { key: Buffer.from(op.key) } };
      const r = Range.prefix(op.prefix);
      return { request_delete_range: { key: r.start, range_end: r.end } };
    });
    const res = await this.#call('txn', () => this.#client.kv.txn({ compare, success, failure: [] }));
    return { succeeded: res.succeeded, revision: Number(res.header.revision) };
  }

  cas(key: string, expectedModRevision: number, value: string, opts?: { lease?: string }): Promise<TxnResult> {
    const op: TxnOp = opts?.lease !== undefined ? { type: 'put', key, value, lease: opts.lease } : { type: 'put', key, value };
    return this.txn([{ key, modRevision: expectedModRevision }], [op]);
  }

  async grantLease(ttlMs: number): Promise<string> {
    if (!(ttlMs > 0)) throw new AetherError('AETHER_ERR_VALIDATION', `lease TTL must be positive, got ${ttlMs}`);
    // etcd TTLs are whole seconds (and at least ~2 s on a default single member).
    const res = await this.#call('grantLease', () => this.#client.leaseClient.leaseGrant({ TTL: Math.max(1, Math.ceil(ttlMs / 1000)), ID: 0 }));
    if (res.error) throw new AetherError('AETHER_ERR_UNAVAILABLE', `etcd grantLease: ${res.error}`);
    return String(res.ID);
  }

  async keepAlive(leaseId: string): Promise<boolean> {
    if (!/^[0-9]+$/.test(leaseId)) return false;
    return this.#call('keepAlive', async () => {
      const stream = await this.#client.leaseClient.leaseKeepAlive({ deadline: Date.now() + this.#timeoutMs });
      try {
        return await new Promise<boolean>((resolve, reject) => {
          // etcd answers an unknown or expired lease with TTL 0.
          stream.on('data', (res) => resolve(Number(res.TTL) > 0));
          stream.on('error', reject);
          stream.on('end', () => reject(new Error('keep-alive stream ended')));
          stream.write({ ID: leaseId });
        });
      } finally {
        stream.end();
      }
    });
  }

  async revokeLease(leaseId: string): Promise<void> {
    if (!/^[0-9]+$/.test(leaseId)) return;
    try {
      await this.#call('revokeLease', () => this.#client.leaseClient.leaseRevoke({ ID: leaseId }));
    } catch (err) {
      if (err instanceof AetherError && err.code === 'AETHER_ERR_CONFLICT') return; // already gone
      throw err;
    }
  }

  watch(prefix: string, fromRevision: number, handlers: WatchHandlers): Watcher {
    if (this.#closed) throw new AetherError('AETHER_ERR_UNAVAILABLE', 'store is closed');
    const w = new EtcdWatch(this.#client, this.#log, prefix, Math.max(1, Math.floor(fromRevision)), handlers, () => this.#watches.delete(w));
    this.#watches.add(w);
    w.connect();
    return { close: () => w.close() };
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const w of [...this.#watches]) w.close();
    this.#client.close();
  }
}

/**
 * One watch on its own gRPC stream. We drive the raw Watch RPC instead of etcd3's Watcher: that one
 * hides compact_revision and, on reconnect, resumes from the revision in the last response header,
 * which can skip history not yet replayed. Here the resume point is the last delivered revision + 1
 * (or a progress notification's revision + 1), so a reconnect after an etcd restart loses nothing
 * and duplicates nothing; if that revision was compacted meanwhile the watch ends with compacted.
 */
class EtcdWatch {
  readonly #client: Etcd3;
  readonly #log: Logger;
  readonly #prefix: string;
  readonly #handlers: WatchHandlers;
  readonly #onDone: () => void;
  /** Next revision to deliver. */
  #next: number;
  #stream: IDuplexStream<IWatchRequest, IWatchResponse> | undefined;
  #timer: NodeJS.Timeout | undefined;
  #backoffMs = WATCH_BACKOFF_MIN_MS;
  #closed = false;
  #down = false;

  constructor(client: Etcd3, log: Logger, prefix: string, from: number, handlers: WatchHandlers, onDone: () => void) {
    this.#client = client;
    this.#log = log;
    this.#prefix = prefix;
    this.#next = from;
    this.#handlers = handlers;
    this.#onDone = onDone;
  }

  connect(): void {
    if (this.#closed) return;
    this.#client.watchClient.watch().then(
      (stream) => {
        if (this.#closed) {
          stream.cancel();
          return;
        }
        this.#stream = stream;
        stream.on('data', (res) => this.#onResponse(stream, res));
        stream.on('error', (err) => this.#onBroken(stream, err));
        stream.on('end', () => this.#onBroken(stream, new Error('watch stream ended')));
        const r = Range.prefix(this.#prefix);
        stream.write({ create_request: { key: r.start, range_end: r.end, start_revision: this.#next, progress_notify: true } });
      },
      (err: unknown) => this.#onBroken(undefined, err),
    );
  }

  #onResponse(stream: IDuplexStream<IWatchRequest, IWatchResponse>, res: IWatchResponse): void {
    if (this.#closed || stream !== this.#stream) return;
    if (res.canceled) {
      const compactedAt = Number(res.compact_revision);
      if (compactedAt > 0) {
        this.#fail(new StoreWatchError(`revision ${this.#next} is compacted (etcd compacted up to ${compactedAt})`, true));
      } else {
        this.#fail(new StoreWatchError(`etcd canceled the watch: ${res.cancel_reason || 'no reason given'}`, false));
      }
      return;
    }
    if (res.created) {
      this.#backoffMs = WATCH_BACKOFF_MIN_MS;
      if (this.#down) this.#log.info({ prefix: this.#prefix, from: this.#next }, 'etcd watch resumed');
      this.#down = false;
      return; // its header revision says nothing about what was replayed
    }
    if (res.events.length === 0) {
      // A progress notification: everything up to the header revision has been sent.
      this.#next = Math.max(this.#next, Number(res.header.revision) + 1);
      return;
    }
    for (const ev of res.events) {
      const rev = Number(ev.kv.mod_revision);
      const event: WatchEvent =
        String(ev.type).toUpperCase() === 'DELETE' ? { type: 'delete', key: ev.kv.key.toString(), revision: rev } : { type: 'put', kv: toKv(ev.kv), revision: rev };
      this.#next = rev + 1;
      try {
        this.#handlers.onEvent(event);
      } catch (err) {
        this.#log.error({ err, prefix: this.#prefix }, 'watch handler threw');
      }
      if (this.#closed) return;
    }
  }

  #onBroken(stream: IDuplexStream<IWatchRequest, IWatchResponse> | undefined, err: unknown): void {
    if (this.#closed || stream !== this.#stream) return;
    this.#stream = undefined;
    if (!this.#down) this.#log.warn({ prefix: this.#prefix, err: err instanceof Error ? err.message : String(err) }, 'etcd watch disconnected; reconnecting');
    this.#down = true;
    const delay = this.#backoffMs;
    this.#backoffMs = Math.min(WATCH_BACKOFF_MAX_MS, this.#backoffMs * 2);
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.connect();
    }, delay);
    this.#timer.unref();
  }

  #fail(err: StoreWatchError): void {
    this.close();
    try {
      this.#handlers.onError?.(err);
    } catch (e) {
      this.#log.error({ err: e, prefix: this.#prefix }, 'watch error handler threw');
    }
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#timer) clearTimeout(this.#timer);
    const s = this.#stream;
    this.#stream = undefined;
    if (s) {
      s.on('error', () => undefined); // the cancel surfaces as a CANCELLED error
      s.cancel();
    }
    this.#onDone();
  }
}
