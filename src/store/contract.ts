import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { afterEach, beforeEach, describe, it } from 'node:test';
import { AetherError } from '../core/index.ts';
import { StoreWatchError, type Store, type WatchEvent, type WatchHandlers, type Watcher } from './types.ts';

export interface StoreHarness {
  store: Store;
  /** Let `ms` of the store's time pass (ManualClock.advance, or a real sleep for etcd). */
  advance(ms: number): Promise<void>;
  cleanup(): Promise<void>;
}

/** etcd grants whole seconds with a 2 s floor (single member), so every lease here is 2 s. */
const TTL = 2000;
const OPTS = { timeout: 60_000 };

/** Collects a watch's events; `waitFor` has a generous real-time deadline, never a speed assumption. */
export class EventLog {
  readonly events: WatchEvent[] = [];
  readonly errors: StoreWatchError[] = [];
  #wake: (() => void) | undefined;
  readonly handlers = {
    onEvent: (ev: WatchEvent): void => {
      this.events.push(ev);
      this.#wake?.();
    },
    onError: (err: StoreWatchError): void => {
      this.errors.push(err);
      this.#wake?.();
    },
  };

  async waitFor(pred: () => boolean, what: string, timeoutMs = 20_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!pred()) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${what}; events: ${JSON.stringify(this.events)}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, Math.min(left, 200));
        this.#wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
      this.#wake = undefined;
    }
  }

  async waitEvents(n: number): Promise<WatchEvent[]> {
    await this.waitFor(() => this.events.length >= n, `${n} events`);
    return this.events;
  }
}

/** Events reduced to comparable tuples: [type, key, value?]. */
export function shape(events: WatchEvent[]): (string | undefined)[][] {
  return events.map((e) => (e.type === 'put' ? ['put', e.kv.key, e.kv.value] : ['delete', e.key]));
}

/** A real-time pause that lets in-flight asynchronous deliveries happen (used to assert absence). */
function settle(ms = 300): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/**
 * The behaviour every Store driver must have. `make` is called once per test; tests use a fresh
 * random key prefix each, so drivers may share one server across tests.
 */
export function storeContract(name: string, make: () => Promise<StoreHarness>): void {
  describe(`Store contract: ${name}`, () => {
    let h: StoreHarness;
    let s: Store;
    let p: string;
    beforeEach(async () => {
      h = await make();
      s = h.store;
      p = `/contract/${randomBytes(5).toString('hex')}/`;
    });
    afterEach(async () => {
      await h.cleanup();
    });

    it('put returns increasing revisions; get has createRevision, modRevision and version', OPTS, async () => {
      const r1 = await s.put(`${p}a`, 'one');
      const r2 = await s.put(`${p}b`, 'two');
      const r3 = await s.put(`${p}a`, 'uno');
      assert.ok(r1 > 0 && r2 > r1 && r3 > r2, `${r1} < ${r2} < ${r3}`);
      assert.deepEqual(await s.get(`${p}a`), { key: `${p}a`, value: 'uno', createRevision: r1, modRevision: r3, version: 2, lease: undefined });
      assert.deepEqual(await s.get(`${p}b`), { key: `${p}b`, value: 'two', createRevision: r2, modRevision: r2, version: 1, lease: undefined });
      assert.equal(await s.get(`${p}missing`), undefined);
      const v = JSON.stringify({ name: 'ä€😀', n: [1, 2] });
      await s.put(`${p}json`, v);
      assert.equal((await s.get(`${p}json`))?.value, v);
    });

    it('lists by prefix in key order, with limit and reverse', OPTS, async () => {
      for (const k of ['c', 'a', 'b/x', 'b', 'd']) await s.put(`${p}list/${k}`, k);
      await s.put(`${p}listing`, 'not under list/');
      await s.put(`${p}lis`, 'shorter');
      const last = await s.put(`${p}list/e`, 'e');
      const all = await s.list(`${p}list/`);
      assert.deepEqual(all.kvs.map((kv) => kv.value), ['a', 'b', 'b/x', 'c', 'd', 'e']);
      assert.ok(all.revision >= last);
      assert.deepEqual((await s.list(`${p}list/`, { limit: 2 })).kvs.map((kv) => kv.value), ['a', 'b']);
      assert.deepEqual((await s.list(`${p}list/`, { reverse: true })).kvs.map((kv) => kv.value), ['e', 'd', 'c', 'b/x', 'b', 'a']);
      assert.deepEqual((await s.list(`${p}list/`, { reverse: true, limit: 2 })).kvs.map((kv) => kv.value), ['e', 'd']);
      assert.deepEqual((await s.list(`${p}list`)).kvs.map((kv) => kv.key), [`${p}list/a`, `${p}list/b`, `${p}list/b/x`, `${p}list/c`, `${p}list/d`, `${p}list/e`, `${p}listing`]);
      assert.deepEqual((await s.list(`${p}nothing/`)).kvs, []);
    });

    it('delete and deletePrefix remove keys; a no-op delete does not consume a revision', OPTS, async () => {
      await s.put(`${p}x`, '1');
      for (const k of ['a', 'b', 'c']) await s.put(`${p}dir/${k}`, k);
      await s.put(`${p}dirt`, 'sibling');
      assert.equal(await s.delete(`${p}x`), true);
      assert.equal(await s.get(`${p}x`), undefined);
      const before = (await s.list(p)).revision;
      assert.equal(await s.delete(`${p}x`), false);
      assert.equal(await s.deletePrefix(`${p}none/`), 0);
      assert.equal((await s.list(p)).revision, before);
      assert.equal(await s.deletePrefix(`${p}dir/`), 3);
      assert.deepEqual((await s.list(p)).kvs.map((kv) => kv.key), [`${p}dirt`]);
    });

    it('a key recreated after delete starts at version 1 with a new createRevision', OPTS, async () => {
      const r1 = await s.put(`${p}k`, 'a');
      await s.put(`${p}k`, 'b');
      await s.delete(`${p}k`);
      const r4 = await s.put(`${p}k`, 'c');
      const kv = await s.get(`${p}k`);
      assert.equal(kv?.version, 1);
      assert.equal(kv?.createRevision, r4);
      assert.notEqual(kv?.createRevision, r1);
    });

    it('txn applies all ops at one revision when every compare holds, and none otherwise', OPTS, async () => {
      const ra = await s.put(`${p}a`, 'a1');
      await s.put(`${p}gone/1`, 'x');
      await s.put(`${p}gone/2`, 'y');
      const ok = await s.txn(
        [{ key: `${p}a`, modRevision: ra }, { key: `${p}new`, modRevision: 0 }],
        [
          { type: 'put', key: `${p}a`, value: 'a2' },
          { type: 'put', key: `${p}new`, value: 'n' },
          { type: 'deletePrefix', prefix: `${p}gone/` },
        ],
      );
      assert.equal(ok.succeeded, true);
      const a = await s.get(`${p}a`);
      const n = await s.get(`${p}new`);
      assert.equal(a?.value, 'a2');
      assert.equal(n?.value, 'n');
      assert.equal(a?.modRevision, ok.revision);
      assert.equal(n?.modRevision, ok.revision);
      assert.deepEqual((await s.list(`${p}gone/`)).kvs, []);

      // One stale compare: nothing happens, not even the op on another key.
      const failed = await s.txn(
        [{ key: `${p}new`, modRevision: ok.revision }, { key: `${p}a`, modRevision: ra }],
        [
          { type: 'put', key: `${p}new`, value: 'n2' },
          { type: 'delete', key: `${p}a` },
        ],
      );
      assert.equal(failed.succeeded, false);
      assert.ok(failed.revision >= ok.revision);
      assert.equal((await s.get(`${p}new`))?.value, 'n');
      assert.equal((await s.get(`${p}a`))?.value, 'a2');

      // modRevision 0 means "absent", which an existing key is not.
      const absent = await s.txn([{ key: `${p}a`, modRevision: 0 }], [{ type: 'delete', key: `${p}a` }]);
      assert.equal(absent.succeeded, false);
      assert.equal((await s.get(`${p}a`))?.value, 'a2');
    });

    it('cas creates only if absent and swaps only on the expected modRevision', OPTS, async () => {
      const c1 = await s.cas(`${p}lock`, 0, 'me');
      assert.equal(c1.succeeded, true);
      const c2 = await s.cas(`${p}lock`, 0, 'you');
      assert.equal(c2.succeeded, false);
      assert.equal((await s.get(`${p}lock`))?.value, 'me');
      const swapped = await s.cas(`${p}lock`, c1.revision, 'me2');
      assert.equal(swapped.succeeded, true);
      assert.ok(swapped.revision > c1.revision);
      const stale = await s.cas(`${p}lock`, c1.revision, 'late');
      assert.equal(stale.succeeded, false);
      const kv = await s.get(`${p}lock`);
      assert.equal(kv?.value, 'me2');
      assert.equal(kv?.version, 2);
      assert.equal(kv?.modRevision, swapped.revision);
    });

    it('keys put with a lease vanish after its TTL, with delete events', OPTS, async () => {
      const lease = await s.grantLease(TTL);
      assert.equal(typeof lease, 'string');
      const start = (await s.list(p)).revision + 1;
      await s.put(`${p}eph/a`, '1', { lease });
      const viaTxn = await s.txn([], [{ type: 'put', key: `${p}eph/b`, value: '2', lease }]);
      assert.equal(viaTxn.succeeded, true);
      await s.put(`${p}eph/stay`, 'no lease');
      assert.equal((await s.get(`${p}eph/a`))?.lease, lease);
      assert.equal((await s.get(`${p}eph/b`))?.lease, lease);
      const log = new EventLog();
      const w = s.watch(`${p}eph/`, start, log.handlers);
      try {
        await log.waitEvents(3);
        await h.advance(TTL + 2500);
        assert.equal(await s.get(`${p}eph/a`), undefined);
        assert.equal(await s.get(`${p}eph/b`), undefined);
        assert.equal((await s.get(`${p}eph/stay`))?.value, 'no lease');
        const evs = await log.waitEvents(5);
        assert.deepEqual(shape(evs.slice(3)).sort(), [['delete', `${p}eph/a`], ['delete', `${p}eph/b`]]);
        assert.equal(await s.keepAlive(lease), false);
      } finally {
        w.close();
      }
    });

    it('keepAlive extends a lease; without it the lease then expires', OPTS, async () => {
      const lease = await s.grantLease(TTL);
      await s.put(`${p}hb`, 'alive', { lease });
      for (let i = 0; i < 3; i++) {
        await h.advance(TTL * 0.6);
        assert.equal(await s.keepAlive(lease), true, `keepAlive #${i}`);
      }
      // 3.6 TTLs after the grant, the key is still there.
      assert.equal((await s.get(`${p}hb`))?.value, 'alive');
      await h.advance(TTL + 2500);
      assert.equal(await s.get(`${p}hb`), undefined);
      assert.equal(await s.keepAlive(lease), false);
    });

    it('revokeLease deletes its keys at once; keepAlive then returns false; unknown leases are rejected', OPTS, async () => {
      const lease = await s.grantLease(60_000);
      const other = await s.grantLease(60_000);
      await s.put(`${p}r/a`, '1', { lease });
      await s.put(`${p}r/b`, '2', { lease });
      await s.put(`${p}r/c`, '3', { lease: other });
      await s.revokeLease(lease);
      assert.deepEqual((await s.list(`${p}r/`)).kvs.map((kv) => kv.key), [`${p}r/c`]);
      assert.equal(await s.keepAlive(lease), false);
      await s.revokeLease(lease); // idempotent
      assert.equal(await s.keepAlive(other), true);
      await assert.rejects(s.put(`${p}r/d`, '4', { lease }));
      assert.equal(await s.get(`${p}r/d`), undefined);
      assert.equal(await s.keepAlive('987654321'), false);
      await s.revokeLease(other);
    });

    it('watch from a past revision replays history in order, then streams live events', OPTS, async () => {
      const r1 = await s.put(`${p}w/a`, '1');
      await s.put(`${p}other`, 'not watched');
      const r2 = await s.put(`${p}w/b`, '2');
      await s.put(`${p}w/a`, '1b');
      await s.delete(`${p}w/b`);
      const log = new EventLog();
      const w = s.watch(`${p}w/`, r1, log.handlers);
      try {
        await log.waitEvents(4);
        await s.put(`${p}w/c`, '3');
        await s.put(`${p}wx`, 'sibling, not under w/');
        const rLast = await s.put(`${p}w/c`, '3b');
        const evs = await log.waitEvents(6);
        assert.deepEqual(shape(evs), [
          ['put', `${p}w/a`, '1'],
          ['put', `${p}w/b`, '2'],
          ['put', `${p}w/a`, '1b'],
          ['delete', `${p}w/b`],
          ['put', `${p}w/c`, '3'],
          ['put', `${p}w/c`, '3b'],
        ]);
        const revs = evs.map((e) => e.revision);
        assert.equal(revs[0], r1);
        assert.equal(revs[1], r2);
        assert.equal(revs[5], rLast);
        for (let i = 1; i < revs.length; i++) assert.ok(revs[i]! > revs[i - 1]!, `revisions increase: ${revs.join(',')}`);
        const e2 = evs[2];
        assert.ok(e2?.type === 'put');
        assert.equal(e2.kv.version, 2);
        assert.equal(e2.kv.createRevision, r1);
        assert.equal(e2.kv.modRevision, e2.revision);

        // Watching from a later revision skips what came before it.
        const late = new EventLog();
        const w2 = s.watch(`${p}w/`, rLast, late.handlers);
        await late.waitEvents(1);
        w2.close();
        assert.deepEqual(shape(late.events), [['put', `${p}w/c`, '3b']]);
      } finally {
        w.close();
      }
    });

    it('loses nothing between a list and a watch from list.revision + 1', OPTS, async () => {
      for (let i = 0; i < 5; i++) await s.put(`${p}i/${i}`, `v${i}`);
      const listed = await s.list(`${p}i/`);
      assert.equal(listed.kvs.length, 5);
      // Writes that land after the list but before the watch starts.
      await s.put(`${p}i/5`, 'v5');
      await s.delete(`${p}i/0`);
      await s.put(`${p}i/1`, 'v1b');
      const log = new EventLog();
      const w = s.watch(`${p}i/`, listed.revision + 1, log.handlers);
      try {
        await s.put(`${p}i/6`, 'v6');
        await log.waitEvents(4);
        assert.deepEqual(shape(log.events), [
          ['put', `${p}i/5`, 'v5'],
          ['delete', `${p}i/0`],
          ['put', `${p}i/1`, 'v1b'],
          ['put', `${p}i/6`, 'v6'],
        ]);
      } finally {
        w.close();
      }
    });

    it('deletePrefix and txn emit one event per key, sharing the write revision', OPTS, async () => {
      for (const k of ['a', 'b', 'c']) await s.put(`${p}d/${k}`, k);
      const log = new EventLog();
      const from = (await s.list(p)).revision + 1;
      const w = s.watch(`${p}d/`, from, log.handlers);
      try {
        await s.deletePrefix(`${p}d/`);
        const t = await s.txn([], [
          { type: 'put', key: `${p}d/x`, value: 'x' },
          { type: 'put', key: `${p}d/y`, value: 'y' },
        ]);
        const evs = await log.waitEvents(5);
        assert.deepEqual(shape(evs.slice(0, 3)), [['delete', `${p}d/a`], ['delete', `${p}d/b`], ['delete', `${p}d/c`]]);
        assert.equal(new Set(evs.slice(0, 3).map((e) => e.revision)).size, 1);
        assert.deepEqual(shape(evs.slice(3)), [['put', `${p}d/x`, 'x'], ['put', `${p}d/y`, 'y']]);
        assert.deepEqual(evs.slice(3).map((e) => e.revision), [t.revision, t.revision]);
      } finally {
        w.close();
      }
    });

    it('a closed watch delivers nothing more; other watches keep going', OPTS, async () => {
      const from = (await s.list(p)).revision + 1;
      const closed = new EventLog();
      const open = new EventLog();
      const w1 = s.watch(p, from, closed.handlers);
      const w2 = s.watch(p, from, open.handlers);
      try {
        await s.put(`${p}1`, 'a');
        await closed.waitEvents(1);
        w1.close();
        await s.put(`${p}2`, 'b');
        await s.put(`${p}3`, 'c');
        await open.waitEvents(3);
        await settle();
        assert.deepEqual(shape(closed.events), [['put', `${p}1`, 'a']]);
        assert.equal(closed.errors.length, 0);
      } finally {
        w1.close();
        w2.close();
      }
    });
  });
}

/**
 * Test double around a real store: `down` makes every call reject as if the server were gone (and
 * fails live watches), `holdWatches` parks new watches until `release()` so a test can change the
 * store (e.g. compact it) between a list and the watch that follows it.
 */
export class ControlledStore implements Store {
  readonly inner: Store;
  #down = false;
  holdWatches = false;
  #held: (() => void)[] = [];
  #live = new Set<{ fail(): void }>();
  watchCalls = 0;

  constructor(inner: Store) {
    this.inner = inner;
  }

  get down(): boolean {
    return this.#down;
  }

  set down(v: boolean) {
    this.#down = v;
    if (v) for (const w of [...this.#live]) w.fail();
  }

  release(): void {
    const held = this.#held;
    this.#held = [];
    for (const start of held) start();
  }

  #gate<T>(fn: () => Promise<T>): Promise<T> {
    if (this.#down) return Promise.reject(new AetherError('AETHER_ERR_UNAVAILABLE', 'store unreachable (test)'));
    return fn();
  }

  get: Store['get'] = (key) => this.#gate(() => this.inner.get(key));
  list: Store['list'] = (prefix, opts) => this.#gate(() => this.inner.list(prefix, opts));
  put: Store['put'] = (key, value, opts) => this.#gate(() => this.inner.put(key, value, opts));
  delete: Store['delete'] = (key) => this.#gate(() => this.inner.delete(key));
  deletePrefix: Store['deletePrefix'] = (prefix) => this.#gate(() => this.inner.deletePrefix(prefix));
  txn: Store['txn'] = (compares, ops) => this.#gate(() => this.inner.txn(compares, ops));
  cas: Store['cas'] = (key, rev, value, opts) => this.#gate(() => this.inner.cas(key, rev, value, opts));
  grantLease: Store['grantLease'] = (ttlMs) => this.#gate(() => this.inner.grantLease(ttlMs));
  keepAlive: Store['keepAlive'] = (id) => this.#gate(() => this.inner.keepAlive(id));
  revokeLease: Store['revokeLease'] = (id) => this.#gate(() => this.inner.revokeLease(id));

  watch(prefix: string, fromRevision: number, handlers: WatchHandlers): Watcher {
    this.watchCalls++;
    let inner: Watcher | undefined;
    let closed = false;
    const entry = {
      fail: (): void => {
        if (closed) return;
        closed = true;
        inner?.close();
        this.#live.delete(entry);
        queueMicrotask(() => handlers.onError?.(new StoreWatchError('store unreachable (test)', false)));
      },
    };
    const start = (): void => {
      if (closed) return;
      if (this.#down) return entry.fail();
      this.#live.add(entry);
      inner = this.inner.watch(prefix, fromRevision, {
        onEvent: (ev) => handlers.onEvent(ev),
        onError: (err) => {
          closed = true;
          this.#live.delete(entry);
          handlers.onError?.(err);
        },
      });
    };
    if (this.holdWatches) this.#held.push(start);
    else start();
    return {
      close: () => {
        closed = true;
        this.#live.delete(entry);
        inner?.close();
      },
    };
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}
