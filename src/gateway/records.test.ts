import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ManualClock, silentLogger } from '../core/index.ts';
import { KEYS, type InvocationRecord } from '../spec/index.ts';
import { ControlledStore } from '../store/contract.ts';
import { createSqliteStore } from '../store/sqlite.ts';
import { InvocationRecorder } from './records.ts';

let seq = 0;
const rec = (fnId: string): InvocationRecord => ({
  id: `inv-${String(seq++).padStart(8, '0')}`,
  function_id: fnId,
  status: 'success',
  status_code: 200,
  duration_ms: 1,
  cold_start: false,
  instance_id: 'inst-1',
  started_at: new Date(0).toISOString(),
  error: null,
});

test('records are written in batches after the interval, never on the caller', async () => {
  const clock = new ManualClock();
  const store = createSqliteStore({ path: ':memory:', clock });
  const r = new InvocationRecorder({ store, clock, logger: silentLogger(), intervalMs: 100 });
  const before = (await store.list('/')).revision;
  for (let i = 0; i < 150; i++) r.record(rec('fn-a'));
  assert.equal((await store.list(KEYS.invocationsOf('fn-a'))).kvs.length, 0, 'nothing written synchronously');
  await clock.advance(100);
  await r.flush();
  const { kvs, revision } = await store.list(KEYS.invocationsOf('fn-a'));
  assert.equal(kvs.length, 150);
  assert.equal(revision - before, 2, 'one store transaction per 100 records');
  await store.close();
});

test('each function keeps about the newest `keep` records', async () => {
  const clock = new ManualClock();
  const store = createSqliteStore({ path: ':memory:', clock });
  const r = new InvocationRecorder({ store, clock, logger: silentLogger(), keep: 100 });
  const ids: string[] = [];
  for (let i = 0; i < 400; i++) {
    const x = rec('fn-b');
    ids.push(x.id);
    r.record(x);
  }
  await r.flush();
  const { kvs } = await store.list(KEYS.invocationsOf('fn-b'));
  assert.ok(kvs.length >= 100 && kvs.length <= 150, `kept ${kvs.length}`);
  assert.equal(kvs.at(-1)?.key, KEYS.invocation('fn-b', ids.at(-1) as string), 'the newest stays');
  assert.ok(!kvs.some((kv) => kv.key === KEYS.invocation('fn-b', ids[0] as string)), 'the oldest went');
  await store.close();
});

test('records of a deleted function are dropped; a store outage delays, not loses, the rest', async () => {
  const clock = new ManualClock();
  const inner = createSqliteStore({ path: ':memory:', clock });
  const store = new ControlledStore(inner);
  const alive = new Set(['fn-c']);
  const r = new InvocationRecorder({ store, clock, logger: silentLogger(), exists: (id) => alive.has(id) });
  r.record(rec('fn-c'));
  r.record(rec('fn-gone'));
  store.down = true;
  await r.flush();
  assert.equal((await inner.list('/aether/invocations/')).kvs.length, 0);
  store.down = false;
  await clock.advance(1000); // the retry timer
  await r.flush();
  assert.equal((await inner.list(KEYS.invocationsOf('fn-c'))).kvs.length, 1);
  assert.equal((await inner.list(KEYS.invocationsOf('fn-gone'))).kvs.length, 0);
  await r.close();
  await inner.close();
});
