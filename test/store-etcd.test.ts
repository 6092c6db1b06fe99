import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { Etcd3 } from 'etcd3';
import { ControlledStore, EventLog, shape, storeContract } from '../src/store/contract.ts';
import { createEtcdStore } from '../src/store/etcd.ts';
import { listAndWatch } from '../src/store/informer.ts';
import type { KeyValue, Store } from '../src/store/index.ts';
import { etcdAvailable, startEtcd, type EtcdServer } from './support/etcd.ts';

const skip = etcdAvailable() ? false : 'etcd binary not found: install the etcd-server package or set AETHER_ETCD_BIN';
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const OPTS = { timeout: 90_000 };

/** Retry `fn` until it resolves (etcd coming back after a restart), with a deadline. */
async function eventually<T>(fn: () => Promise<T>, what: string, ms = 30_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    try {
      return await fn();
    } catch (err) {
      if (Date.now() > deadline) throw new Error(`${what} kept failing: ${String(err)}`, { cause: err });
      await sleep(200);
    }
  }
}

describe('etcd store', { skip }, () => {
  let etcd: EtcdServer;
  before(async () => {
    etcd = await startEtcd();
  });
  after(async () => {
    await etcd?.cleanup();
  });

  storeContract('etcd', async () => {
    const store = createEtcdStore({ endpoints: etcd.endpoints });
    return { store, advance: sleep, cleanup: () => store.close() };
  });

  describe('etcd specifics', () => {
    it('uses etcd revisions and decimal etcd lease ids', OPTS, async () => {
      const store = createEtcdStore({ endpoints: etcd.endpoints });
      const raw = new Etcd3({ hosts: etcd.endpoints });
      try {
        const key = `/spec/${randomBytes(4).toString('hex')}`;
        const rev = await store.put(key, 'v');
        const res = await raw.kv.range({ key: Buffer.from(key) });
        assert.equal(String(rev), res.kvs[0]?.mod_revision);
        const lease = await store.grantLease(2000);
        assert.match(lease, /^[0-9]+$/);
        const ttl = await raw.leaseClient.leaseTimeToLive({ ID: lease });
        assert.equal(ttl.grantedTTL, '2');
        await store.revokeLease(lease);
      } finally {
        raw.close();
        await store.close();
      }
    });

    it('a watch survives an etcd restart and delivers every event, once, in order', OPTS, async () => {
      const store = createEtcdStore({ endpoints: etcd.endpoints, callTimeoutMs: 2000 });
      const p = `/restart/${randomBytes(4).toString('hex')}/`;
      try {
        const from = (await store.list(p)).revision + 1;
        const log = new EventLog();
        const w = store.watch(p, from, log.handlers);
        await store.put(`${p}a`, '1');
        await log.waitEvents(1);

        await etcd.kill();
        // While etcd is down calls reject (they do not hang) with a coded error.
        const t0 = Date.now();
        await assert.rejects(store.put(`${p}lost`, 'x'), { code: 'AETHER_ERR_UNAVAILABLE' });
        assert.ok(Date.now() - t0 < 10_000);

        await etcd.restart();
        await eventually(() => store.put(`${p}b`, '2'), 'put after restart');
        // A write by another client lands too, whenever our watch reconnects.
        const raw = new Etcd3({ hosts: etcd.endpoints });
        await raw.put(`${p}c`).value('3');
        raw.close();
        await log.waitEvents(3);
        await sleep(300);
        assert.deepEqual(shape(log.events), [
          ['put', `${p}a`, '1'],
          ['put', `${p}b`, '2'],
          ['put', `${p}c`, '3'],
        ]);
        assert.equal(log.errors.length, 0);
        w.close();
      } finally {
        await store.close();
      }
    });

    it('a watch from a compacted revision ends with compacted; listAndWatch re-lists and recovers', OPTS, async () => {
      const inner = createEtcdStore({ endpoints: etcd.endpoints });
      const raw = new Etcd3({ hosts: etcd.endpoints });
      const p = `/compact/${randomBytes(4).toString('hex')}/`;
      try {
        const first = await inner.put(`${p}a`, '1');
        await inner.put(`${p}b`, '2');
        const head = await inner.put(`${p}a`, '1b');
        await raw.kv.compact({ revision: head, physical: true });

        const log = new EventLog();
        inner.watch(p, first, log.handlers);
        await log.waitFor(() => log.errors.length === 1, 'compacted error');
        assert.equal(log.errors[0]?.compacted, true);
        assert.equal(log.events.length, 0);

        // The informer's watch starts from a revision that gets compacted between list and watch.
        const store = new ControlledStore(inner);
        store.holdWatches = true;
        const view = new Map<string, string>();
        let resets = 0;
        const inf = listAndWatch(store, p, {
          onReset: (kvs: KeyValue[]) => {
            resets++;
            view.clear();
            for (const kv of kvs) view.set(kv.key, kv.value);
          },
          onEvent: (ev) => {
            if (ev.type === 'put') view.set(ev.kv.key, ev.kv.value);
            else view.delete(ev.key);
          },
        });
        await inf.ready;
        assert.deepEqual(Object.fromEntries(view), { [`${p}a`]: '1b', [`${p}b`]: '2' });
        await inner.put(`${p}c`, '3');
        await inner.delete(`${p}b`);
        const now = await inner.put(`/compact-other/${randomBytes(4).toString('hex')}`, 'x');
        await raw.kv.compact({ revision: now, physical: true });
        store.holdWatches = false;
        store.release();
        await new EventLog().waitFor(() => resets === 2, 'informer re-list');
        assert.deepEqual(Object.fromEntries(view), { [`${p}a`]: '1b', [`${p}c`]: '3' });
        await inner.put(`${p}d`, '4');
        await new EventLog().waitFor(() => view.get(`${p}d`) === '4', 'event after recovery');
        inf.close();
      } finally {
        raw.close();
        await inner.close();
      }
    });

    it('keys under a lease vanish when etcd expires it, as seen through a watch', OPTS, async () => {
      const store: Store = createEtcdStore({ endpoints: etcd.endpoints });
      const p = `/lease/${randomBytes(4).toString('hex')}/`;
      try {
        const lease = await store.grantLease(1); // rounds up to etcd's whole seconds
        await store.put(`${p}k`, 'v', { lease });
        const log = new EventLog();
        const w = store.watch(p, (await store.list(p)).revision + 1, log.handlers);
        await log.waitFor(() => log.events.length === 1, 'lease expiry delete');
        assert.deepEqual(shape(log.events), [['delete', `${p}k`]]);
        w.close();
      } finally {
        await store.close();
      }
    });
  });
});
