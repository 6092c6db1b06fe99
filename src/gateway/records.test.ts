import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ManualClock, silentLogger } from '../core/index.ts';
import { KEYS, type InvocationRecord } from '../spec/index.ts';
import { ControlledStore } from '../store/contract.ts';
import { createSqliteStore } from '../store/sqlite.ts';
import { BATCH_MAX, batchCount, InvocationRecorder, newestRecords, sample } from './records.ts';

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

/** Every record stored under a function, oldest first. */
async function stored(store: { list(p: string): Promise<{ kvs: { value: string }[] }> }, fnId: string): Promise<InvocationRecord[]> {
  const { kvs } = await store.list(KEYS.invocationsOf(fnId));
  return newestRecords(kvs.map((kv) => kv.value), Infinity).reverse();
}

test('records are written in chunks after the interval, never on the caller', async () => {
  const clock = new ManualClock();
  const store = createSqliteStore({ path: ':memory:', clock });
  const r = new InvocationRecorder({ store, clock, logger: silentLogger(), intervalMs: 100 });
  const before = (await store.list('/')).revision;
  const written: string[] = [];
  for (let i = 0; i < 250; i++) {
    const x = rec(i % 2 ? 'fn-a' : 'fn-a2');
    if (x.function_id === 'fn-a') written.push(x.id);
    r.record(x);
  }
  assert.equal((await store.list(KEYS.invocationsOf('fn-a'))).kvs.length, 0, 'nothing written synchronously');
  await clock.advance(100);
  await r.flush();
  const { kvs, revision } = await store.list(KEYS.invocationsOf('fn-a'));
  assert.equal(kvs.length, 1, '125 records of one function: one key');
  assert.equal(batchCount(kvs[0]?.key ?? ''), 125, 'the key counts its records');
  assert.deepEqual((await stored(store, 'fn-a')).map((x) => x.id), written);
  assert.equal((await stored(store, 'fn-a2')).length, 125);
  assert.equal(revision - before, 1, 'one store transaction for both functions');
  for (let i = 0; i < BATCH_MAX + 1; i++) r.record(rec('fn-a3'));
  await r.flush();
  assert.deepEqual((await store.list(KEYS.invocationsOf('fn-a3'))).kvs.map((kv) => batchCount(kv.key)), [BATCH_MAX, 1], 'chunks of at most BATCH_MAX');
  await store.close();
});

test('reading: chunks and single records (the layout before chunks) merge newest first', () => {
  const a = rec('fn-r');
  const b = rec('fn-r');
  const c = rec('fn-r');
  const d = rec('fn-r');
  // Two gateways' chunks may interleave in time.
  const got = newestRecords([JSON.stringify([a, c]), JSON.stringify(b), JSON.stringify([d])], 3);
  assert.deepEqual(got.map((x) => x.id), [d.id, c.id, b.id]);
  assert.equal(batchCount('/aether/invocations/fn/inv-1'), 1);
  assert.equal(batchCount('/aether/invocations/fn/inv-1.37'), 37);
});

test('each function keeps about the newest `keep` records', async () => {
  const clock = new ManualClock();
  const store = createSqliteStore({ path: ':memory:', clock });
  const r = new InvocationRecorder({ store, clock, logger: silentLogger(), keep: 100 });
  /** Record `n` new records of fn-b and flush; their ids. */
  const flushOf = async (n: number): Promise<string[]> => {
    const made = Array.from({ length: n }, () => rec('fn-b'));
    for (const x of made) r.record(x);
    await r.flush();
    return made.map((x) => x.id);
  };
  const first = await flushOf(400);
  // At most `keep` of one flush are written at all (older ones would be trimmed at once).
  assert.deepEqual((await stored(store, 'fn-b')).map((x) => x.id), first.slice(-100));
  // Busy again in the next flush: a quarter of `keep` (the store's cost stays bounded under load).
  const hot = await flushOf(400);
  const afterHot = (await stored(store, 'fn-b')).map((x) => x.id);
  assert.deepEqual(afterHot.slice(-25), hot.slice(-25));
  assert.ok(!afterHot.includes(hot.at(-26) as string), 'only 25 of that flush');
  const ids = [...first.slice(-100), ...hot.slice(-25)];
  // Many small flushes: trimming drops whole chunks, oldest first, keeping at least `keep`.
  for (let round = 0; round < 30; round++) ids.push(...(await flushOf(10)));
  const kept = await stored(store, 'fn-b');
  assert.ok(kept.length >= 100 && kept.length <= 160, `kept ${kept.length}`);
  assert.deepEqual(kept.map((x) => x.id), ids.slice(-kept.length), 'the newest, in order, with no gap');
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
  assert.equal((await stored(inner, 'fn-c')).length, 1);
  assert.equal((await inner.list(KEYS.invocationsOf('fn-gone'))).kvs.length, 0);
  await r.close();
  await inner.close();
});

test('a busy function: a flush writes a bounded sample, its failures first, then the newest successes', async () => {
  const clock = new ManualClock();
  const store = createSqliteStore({ path: ':memory:', clock });
  const r = new InvocationRecorder({ store, clock, logger: silentLogger(), keep: 40, perFlush: 10 });
  const all: InvocationRecord[] = [];
  for (let i = 0; i < 500; i++) {
    const x = rec('fn-d');
    if (i === 3 || i === 250) Object.assign(x, { status: 'error', status_code: 502, error: 'AETHER_ERR_UPSTREAM: boom' });
    all.push(x);
  }
  // Out of order, as requests end (HAProxy logs a request when it ends).
  [all[10], all[11]] = [all[11] as InvocationRecord, all[10] as InvocationRecord];
  for (const x of all) r.record(x);
  await r.flush();
  const got = await stored(store, 'fn-d');
  const sorted = [...all].sort((a, b) => (a.id < b.id ? -1 : 1));
  const failed = sorted.filter((x) => x.status !== 'success').map((x) => x.id);
  assert.equal(failed.length, 2);
  assert.deepEqual(got.map((x) => x.id), [...failed, ...sorted.filter((x) => x.status === 'success').slice(-8).map((x) => x.id)].sort());
  await store.close();
});

test('sample: everything in id order up to the limit; failures alone when they fill it', () => {
  const xs = [rec('f'), rec('f'), rec('f')];
  assert.deepEqual(sample([xs[2], xs[0], xs[1]] as InvocationRecord[], 5).map((x) => x.id), xs.map((x) => x.id));
  const bad = xs.map((x) => ({ ...x, status: 'timeout' as const }));
  assert.deepEqual(sample([...bad, rec('f')], 2).map((x) => x.id), bad.slice(-2).map((x) => x.id));
});
