/**
 * Store: an etcd-shaped key-value store. Keys are strings, values are strings (JSON by
 * convention), every write gets a new global revision. Drivers: sqlite (embedded), etcd.
 * Every driver passes the shared contract suite in ./contract.ts.
 */
export interface KeyValue {
  key: string;
  value: string;
  /** Revision at which the key was (last) created. */
  createRevision: number;
  /** Revision of the last write to the key. */
  modRevision: number;
  /** Number of writes since creation (1 after create). */
  version: number;
  /** Lease the key is attached to, if any. */
  lease: string | undefined;
}

export type WatchEvent =
  | { type: 'put'; kv: KeyValue; revision: number }
  | { type: 'delete'; key: string; revision: number };

export interface RangeResult {
  kvs: KeyValue[];
  /** Store revision at the time of the read: watch from `revision + 1` to miss nothing. */
  revision: number;
}

/** A txn condition: the key's modRevision must equal `modRevision` (0 = the key must not exist). */
export interface TxnCompare {
  key: string;
  modRevision: number;
}

export type TxnOp =
  | { type: 'put'; key: string; value: string; lease?: string }
  | { type: 'delete'; key: string }
  | { type: 'deletePrefix'; prefix: string };

export interface TxnResult {
  succeeded: boolean;
  revision: number;
}

export interface WatchHandlers {
  onEvent(event: WatchEvent): void;
  /**
   * The watch ended and will not deliver more events. `compacted` means `fromRevision` is older
   * than what the store still holds: list again and watch from the new revision.
   */
  onError?(err: StoreWatchError): void;
}

export class StoreWatchError extends Error {
  readonly compacted: boolean;
  constructor(message: string, compacted: boolean) {
    super(message);
    this.name = 'StoreWatchError';
    this.compacted = compacted;
  }
}

export interface Watcher {
  close(): void;
}

export interface ListOptions {
  limit?: number;
  /** Newest key (lexically last) first. */
  reverse?: boolean;
}

export interface Store {
  get(key: string): Promise<KeyValue | undefined>;
  /** All keys starting with `prefix`, in key order. */
  list(prefix: string, opts?: ListOptions): Promise<RangeResult>;
  /** Returns the revision of the write. */
  put(key: string, value: string, opts?: { lease?: string }): Promise<number>;
  /** True when the key existed. */
  delete(key: string): Promise<boolean>;
  /** Number of keys deleted. */
  deletePrefix(prefix: string): Promise<number>;
  /** Apply `ops` atomically if every compare holds. */
  txn(compares: TxnCompare[], ops: TxnOp[]): Promise<TxnResult>;
  /** Compare-and-swap on one key (expected modRevision 0 = create only if absent). */
  cas(key: string, expectedModRevision: number, value: string, opts?: { lease?: string }): Promise<TxnResult>;
  /** Grant a lease; keys put with it vanish when it expires or is revoked. */
  grantLease(ttlMs: number): Promise<string>;
  /** Refresh a lease's TTL. False when the lease no longer exists (expired or revoked). */
  keepAlive(leaseId: string): Promise<boolean>;
  revokeLease(leaseId: string): Promise<void>;
  /**
   * Events for keys under `prefix` with revision >= `fromRevision`, in revision order, then live
   * events. With `fromRevision` = RangeResult.revision + 1 nothing between a list and a watch is lost.
   */
  watch(prefix: string, fromRevision: number, handlers: WatchHandlers): Watcher;
  close(): Promise<void>;
}
