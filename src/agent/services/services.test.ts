import { test } from 'node:test';
import assert from 'node:assert/strict';
import { initialHealth, observeHealth, orderActions, planReconcile, type HealthPolicy } from './index.ts';

test('reconcile plan: create missing, delete unwanted, recreate changed or dead, leave the rest', () => {
  const plan = planReconcile(
    [{ name: 'a', config_key: '1' }, { name: 'b', config_key: '2' }, { name: 'c', config_key: '3' }, { name: 'd', config_key: '4' }],
    [
      { name: 'b', config_key: 'old', state: 'running' },
      { name: 'c', config_key: '3', state: 'exited' },
      { name: 'd', config_key: '4', state: 'running' },
      { name: 'x', config_key: '9', state: 'running' },
      { name: 'y', config_key: '9', state: 'stopping' },
    ],
  );
  assert.deepEqual(plan, [
    { kind: 'delete', service: 'x' },
    { kind: 'create', service: 'a' },
    { kind: 'update', service: 'b', reason: 'config' },
    { kind: 'update', service: 'c', reason: 'dead' },
  ]);
});

test('a dead instance is recreated even when nothing in the config changed', () => {
  assert.deepEqual(planReconcile([{ name: 'a', config_key: '1' }], [{ name: 'a', config_key: '1', state: 'exited' }]), [{ kind: 'update', service: 'a', reason: 'dead' }]);
  assert.deepEqual(planReconcile([{ name: 'a', config_key: '1' }], [{ name: 'a', config_key: '1', state: 'running' }]), []);
});

test('rolling: deletes, creates and dead replacements at once, config updates one by one', () => {
  const actions = planReconcile(
    [{ name: 'a', config_key: '1' }, { name: 'b', config_key: '2' }, { name: 'c', config_key: '3' }],
    [{ name: 'b', config_key: 'x', state: 'running' }, { name: 'c', config_key: 'x', state: 'running' }, { name: 'z', config_key: 'x', state: 'running' }],
  );
  assert.deepEqual(orderActions(actions, 'rolling').map((step) => step.map((a) => `${a.kind}:${a.service}`)), [['delete:z', 'create:a'], ['update:b'], ['update:c']]);
  assert.equal(orderActions(actions, 'all-at-once').length, 1);
  assert.deepEqual(orderActions([], 'rolling'), []);
});

const policy: HealthPolicy = { retries: 3, backoff_base_ms: 1000, backoff_max_ms: 60_000 };

test('health: retries consecutive failures restart; a success resets; restarts back off', () => {
  let s = initialHealth();
  let r = observeHealth(s, false, 0, policy);
  assert.equal(r.restart, false);
  assert.equal(r.state.health, 'unhealthy');
  r = observeHealth(r.state, true, 1, policy);
  assert.deepEqual([r.state.health, r.state.failures], ['healthy', 0]);
  s = r.state;
  for (let i = 0; i < 2; i++) s = observeHealth(s, false, 2, policy).state;
  r = observeHealth(s, false, 3, policy);
  assert.equal(r.restart, true, 'third consecutive failure restarts');
  assert.equal(r.state.next_restart_at, 3 + 1000);
  // fails again right away: no restart before the backoff passes
  s = r.state;
  for (let i = 0; i < 3; i++) s = observeHealth(s, false, 10, policy).state;
  assert.equal(observeHealth(s, false, 500, policy).restart, false);
  const late = observeHealth(s, false, 2000, policy);
  assert.equal(late.restart, true);
  assert.equal(late.state.next_restart_at, 2000 + 2000, 'second restart waits twice as long');
});
