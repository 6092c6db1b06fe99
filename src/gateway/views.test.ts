import { test } from 'node:test';
import assert from 'node:assert/strict';
import { metrics, registry, silentLogger } from '../core/index.ts';
import { KEYS } from '../spec/index.ts';
import { createSqliteStore } from '../store/sqlite.ts';
import { ClusterViews } from './views.ts';

const settle = (): Promise<void> => new Promise((r) => setTimeout(r, 50));

test("another gateway's demand counts only while it is registered under the lease it published with", async () => {
  const store = createSqliteStore({ path: ':memory:' });
  const views = new ClusterViews(store, silentLogger());
  await views.start();
  try {
    const lease = await store.grantLease(60_000);
    await store.put(KEYS.gateway('gw-b'), JSON.stringify({ gateway_id: 'gw-b', lease, started_at: '' }), { lease });
    await store.put(KEYS.demand('fn-1', 'gw-b'), JSON.stringify({ inflight: 7, starting: 1, lease }), { lease });
    await store.put(KEYS.demand('fn-1', 'gw-a'), JSON.stringify({ inflight: 100, starting: 100, lease }));
    await settle();
    assert.deepEqual(views.otherDemand('fn-1', 'gw-a'), { inflight: 7, starting: 1 }, 'own demand is not counted twice');
    // gw-b got a new lease (the old one expired): what it wrote under the old one no longer counts.
    await store.put(KEYS.gateway('gw-b'), JSON.stringify({ gateway_id: 'gw-b', lease: 'another-lease', started_at: '' }));
    await settle();
    assert.deepEqual(views.otherDemand('fn-1', 'gw-a'), { inflight: 0, starting: 0 });
    await store.put(KEYS.gateway('gw-b'), JSON.stringify({ gateway_id: 'gw-b', lease, started_at: '' }), { lease });
    await settle();
    assert.equal(views.otherDemand('fn-1', 'gw-a').inflight, 7);
    // gw-b is known dead (deregistered): its demand key may still be there, it stops counting at once.
    await store.delete(KEYS.gateway('gw-b'));
    await settle();
    assert.ok(await store.get(KEYS.demand('fn-1', 'gw-b')), 'the demand key itself is still there');
    assert.deepEqual(views.otherDemand('fn-1', 'gw-a'), { inflight: 0, starting: 0 });
  } finally {
    views.close();
    await store.close();
  }
});

test("a deleted function's metric series leave the registry; a live function's stay", async () => {
  const store = createSqliteStore({ path: ':memory:' });
  const views = new ClusterViews(store, silentLogger());
  await views.start();
  try {
    for (const id of ['fn-gone-v', 'fn-live-v']) await store.put(KEYS.function(id), JSON.stringify({ id, name: id }));
    await settle();
    for (const id of ['fn-gone-v', 'fn-live-v']) {
      metrics.invocations.inc({ function_id: id, status: 'success' });
      metrics.invocationDuration.observe({ function_id: id }, 0.01);
      metrics.coldStarts.inc({ function_id: id });
      metrics.scaleEvents.inc({ function_id: id, direction: 'up' });
    }
    assert.match(await registry.metrics(), /function_id="fn-gone-v"/);
    await store.delete(KEYS.function('fn-gone-v'));
    await settle();
    let text = await registry.metrics();
    assert.doesNotMatch(text, /function_id="fn-gone-v"/);
    for (const name of ['aether_invocations_total', 'aether_invocation_duration_seconds_count', 'aether_cold_starts_total', 'aether_scale_events_total']) {
      assert.match(text, new RegExp(`${name}\\{function_id="fn-live-v"[^}]*\\} 1`), name);
    }
    // A request that was still in flight when the function went finishes later: no series comes back.
    metrics.invocations.inc({ function_id: 'fn-gone-v', status: 'success' });
    text = await registry.metrics();
    assert.doesNotMatch(text, /function_id="fn-gone-v"/);
  } finally {
    views.close();
    await store.close();
  }
});
