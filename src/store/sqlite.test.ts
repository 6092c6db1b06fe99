import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { ManualClock } from '../core/index.ts';
import { EventLog, shape, storeContract } from './contract.ts';
import { createSqliteStore, prefixEnd } from './sqlite.ts';

storeContract('sqlite (:memory:, ManualClock)', async () => {
  const clock = new ManualClock();
  const store = createSqliteStore({ path: ':memory:', clock });
  return { store, advance: (ms) => clock.advance(ms), cleanup: () => store.close() };
});

const dir = mkdtempSync(join(tmpdir(), 'aether-sqlite-'));
after(() => rmSync(dir, { recursive: true, force: true }));

storeContract('sqlite (file, ManualClock)', async () => {
  const clock = new ManualClock();
  const store = createSqliteStore({ path: join(dir, `contract-${Math.random().toString(36).slice(2)}.db`), clock });
  return { store, advance: (ms) => clock.advance(ms), cleanup: () => store.close() };
});

describe('sqlite store', () => {
  it('keeps keys, revision, lease ids and leases across a reopen; expired leases go at open', async () => {
    const path = join(dir, 'persist.db');
    const clock = new ManualClock();
    let s = createSqliteStore({ path, clock });
    await s.put('/k/a', 'A');
    const short = await s.grantLease(1000);
    const long = await s.grantLease(60_000);
    await s.put('/k/short', 's', { lease: short });
    const last = await s.put('/k/long', 'l', { lease: long });
    await s.close();

    await clock.advance(5000); // the short lease expires while nobody has the file open
    s = createSqliteStore({ path, clock });
    try {
      assert.equal((await s.get('/k/a'))?.value, 'A');
      assert.equal(await s.get('/k/short'), undefined);
      assert.equal((await s.get('/k/long'))?.lease, long);
      assert.equal(await s.keepAlive(short), false);
      assert.equal(await s.keepAlive(long), true);
      const { revision } = await s.list('/k/');
      assert.equal(revision, last + 1, 'the expiry at open took one revision');
      assert.ok((await s.put('/k/b', 'B')) > revision);
      const fresh = await s.grantLease(1000);
      assert.ok(![short, long].includes(fresh), 'lease ids are not reused');
      // History survived too: a watch from the first revision replays everything.
      const log = new EventLog();
      const w = s.watch('/k/', 1, log.handlers);
      await log.waitEvents(5);
      w.close();
      assert.deepEqual(shape(log.events), [
        ['put', '/k/a', 'A'],
        ['put', '/k/short', 's'],
        ['put', '/k/long', 'l'],
        ['delete', '/k/short'],
        ['put', '/k/b', 'B'],
      ]);
    } finally {
      await s.close();
    }
  });

  it('keeps historyLimit revisions; a watch from older ones gets a compacted error', async () => {
    const s = createSqliteStore({ path: ':memory:', clock: new ManualClock(), historyLimit: 16 });
    try {
      const first = await s.put('/h/0', '0');
      let last = first;
      for (let i = 1; i < 100; i++) last = await s.put(`/h/${i % 5}`, String(i));

      const old = new EventLog();
      s.watch('/h/', first, old.handlers);
      await old.waitFor(() => old.errors.length === 1, 'compacted error');
      assert.equal(old.errors[0]?.compacted, true);
      assert.equal(old.errors[0]?.name, 'StoreWatchError');
      assert.equal(old.events.length, 0);

      // The last 16 revisions are still replayable.
      const recent = new EventLog();
      const w = s.watch('/h/', last - 15, recent.handlers);
      await recent.waitEvents(16);
      w.close();
      assert.deepEqual(recent.events.map((e) => e.revision), Array.from({ length: 16 }, (_, i) => last - 15 + i));
      assert.equal(recent.errors.length, 0);
    } finally {
      await s.close();
    }
  });

  it('delivers watch events asynchronously, in order, and survives a throwing handler', async () => {
    const s = createSqliteStore({ path: ':memory:', clock: new ManualClock() });
    try {
      const seen: string[] = [];
      s.watch('/a/', 1, {
        onEvent: (ev) => {
          if (ev.type === 'put') seen.push(ev.kv.value);
          if (ev.type === 'put' && ev.kv.value === '2') throw new Error('handler bug');
        },
      });
      const log = new EventLog();
      s.watch('/a/', 1, log.handlers);
      const put = s.put('/a/x', '1');
      assert.deepEqual(seen, [], 'nothing is delivered inside the write');
      await put;
      for (let i = 2; i <= 4; i++) await s.put('/a/x', String(i));
      await log.waitEvents(4);
      assert.deepEqual(seen, ['1', '2', '3', '4']);
    } finally {
      await s.close();
    }
  });

  it('close stops the sweeper, silences watches and rejects further calls', async () => {
    const clock = new ManualClock();
    const s = createSqliteStore({ path: ':memory:', clock });
    const log = new EventLog();
    s.watch('/', 1, log.handlers);
    await s.put('/x', '1');
    await log.waitEvents(1);
    await s.close();
    await assert.rejects(s.get('/x'), { code: 'AETHER_ERR_UNAVAILABLE' });
    await clock.advance(10_000); // a live sweeper would touch the closed database and throw
    assert.equal(log.events.length, 1);
    assert.equal(log.errors.length, 0);
  });

  it('prefixEnd bounds prefixes in code point order', () => {
    assert.equal(prefixEnd('/a/'), '/a0');
    assert.equal(prefixEnd(''), undefined);
    assert.equal(prefixEnd('a\u{10FFFF}'), 'b');
    assert.equal(prefixEnd('\u{D7FF}'), '\u{E000}');
  });

  it('lists and deletes keys with non-ASCII characters by prefix', async () => {
    const s = createSqliteStore({ path: ':memory:', clock: new ManualClock() });
    try {
      for (const k of ['/ü/a', '/ü/😀', '/ü/z', '/ü', '/üx', '/v']) await s.put(k, k);
      assert.deepEqual((await s.list('/ü/')).kvs.map((kv) => kv.key), ['/ü/a', '/ü/z', '/ü/😀']);
      assert.equal(await s.deletePrefix('/ü/'), 3);
      assert.deepEqual((await s.list('')).kvs.map((kv) => kv.key), ['/v', '/ü', '/üx']);
    } finally {
      await s.close();
    }
  });
});
