import { test } from 'node:test';
import assert from 'node:assert/strict';
import { desiredInstances, planScaleDown, planScaleUp, type ScalePolicy } from './index.ts';

const policy: ScalePolicy = { min_instances: 0, max_instances: 10, concurrency_target: 3, scale_down_after_s: 30, scale_to_zero_after_s: 300 };

test('desired instances follow demand within min..max', () => {
  assert.equal(desiredInstances(policy, 0), 0);
  assert.equal(desiredInstances(policy, 1), 1);
  assert.equal(desiredInstances(policy, 7), 3);
  assert.equal(desiredInstances(policy, 200), 10);
  assert.equal(desiredInstances({ ...policy, min_instances: 2 }, 0), 2);
});

test('starting instances count, so a burst does not start a storm', () => {
  assert.equal(planScaleUp(policy, { ready: 0, starting: 0, demand: 9 }), 3);
  assert.equal(planScaleUp(policy, { ready: 0, starting: 3, demand: 9 }), 0);
  assert.equal(planScaleUp(policy, { ready: 2, starting: 1, demand: 30 }), 7);
});

test('scale down stops one idle instance at a time, never the last', () => {
  const now = 1_000_000;
  const idle = (id: string, ago: number) => ({ id, inflight: 0, lastActiveAt: now - ago * 1000 });
  assert.deepEqual(planScaleDown(policy, { now, instances: [idle('a', 40), idle('b', 50)], totalReady: 2 }), ['b']);
  assert.deepEqual(planScaleDown(policy, { now, instances: [idle('a', 40)], totalReady: 1 }), []);
  assert.deepEqual(planScaleDown(policy, { now, instances: [idle('a', 10), idle('b', 20)], totalReady: 2 }), []);
  // busy demand keeps enough instances
  const busy = { id: 'c', inflight: 6, lastActiveAt: now };
  assert.deepEqual(planScaleDown(policy, { now, instances: [busy, idle('a', 40)], totalReady: 2 }), []);
});

test('scale to zero after the long timer unless min_instances > 0', () => {
  const now = 1_000_000;
  const i = [{ id: 'a', inflight: 0, lastActiveAt: now - 301_000 }, { id: 'b', inflight: 0, lastActiveAt: now - 400_000 }];
  assert.deepEqual(planScaleDown(policy, { now, instances: i, totalReady: 2 }).sort(), ['a', 'b']);
  assert.deepEqual(planScaleDown({ ...policy, min_instances: 2 }, { now, instances: i, totalReady: 2 }), []);
});
