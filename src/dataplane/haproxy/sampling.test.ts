import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DEFAULT_MAX_SAMPLING, LogSampler, maxSampling, SAMPLING_DECAY_MS, samplingFor, TARGET_LINES_PER_S } from './sampling.ts';

const T = TARGET_LINES_PER_S;

test('samplingFor: a power of two that keeps lines at or below the target, capped', () => {
  assert.equal(samplingFor(0), 1);
  assert.equal(samplingFor(T), 1);
  assert.equal(samplingFor(T + 1), 2);
  assert.equal(samplingFor(16 * T), 16);
  assert.equal(samplingFor(16 * T + 1), 32);
  assert.equal(samplingFor(1e9), DEFAULT_MAX_SAMPLING);
  assert.equal(samplingFor(1e9, 1), 1, 'sampling off');
});

test('maxSampling: AETHER_LOG_SAMPLING_MAX, a power of two from 1 to 1024', () => {
  assert.equal(maxSampling(undefined), DEFAULT_MAX_SAMPLING);
  assert.equal(maxSampling('1'), 1);
  assert.equal(maxSampling('256'), 256);
  for (const bad of ['0', '3', '2048', 'x', '-4', '1.5']) assert.throws(() => maxSampling(bad), /power of two/, bad);
});

test('LogSampler: rates over the last second; up as soon as they need it, down only after they stayed low, per function', () => {
  let now = 0;
  const s = new LogSampler(now);
  /** 200 ms of traffic at `rate` requests/s; lines as HAProxy writes them (one per N requests). */
  const tick = (fn: string, rate: number): boolean => {
    const n = s.of(fn);
    for (let i = 0; i < Math.floor((rate * 0.2) / n); i++) s.note(fn, n);
    now += 200;
    return s.evaluate(now);
  };
  const hold = (fn: string, rate: number, ms: number): boolean => {
    let changed = false;
    for (let t = 0; t < ms; t += 200) changed = tick(fn, rate) || changed;
    return changed;
  };
  assert.equal(hold('a', T / 2, 3000), false, 'below the target: every request logged');
  assert.equal(s.of('a'), 1);
  // A burst of T requests within a second is logged in full.
  assert.equal(hold('a', 0, 2000), false);
  assert.equal(hold('a', 2 * T, 400), false, 'T requests within the last second: still at the target');
  assert.equal(tick('a', 10 * T), true, 'past it: up at once');
  assert.equal(s.of('a'), 4);
  assert.equal(hold('a', 10 * T, 1000), true);
  assert.equal(s.of('a'), 16, 'the full rate once a second of it is seen');
  assert.equal(s.of('b'), 1, 'others untouched');
  assert.equal(hold('a', 10 * T, 10_000), false, 'steady');
  assert.equal(hold('a', 5 * T, 10_000), false, 'within 2x below: kept (no flapping at a boundary)');
  assert.equal(hold('a', 0, SAMPLING_DECAY_MS - 400), false, 'a pause: kept for a while');
  assert.equal(s.of('a'), 16);
  assert.equal(hold('a', 10 * T, 1000), false);
  assert.equal(hold('a', 2 * T, SAMPLING_DECAY_MS + 1400), true, 'low for long enough: down');
  assert.equal(s.of('a'), 2);
  assert.equal(hold('a', 0, SAMPLING_DECAY_MS + 1400), true, 'idle: every request logged again');
  assert.equal(s.of('a'), 1);
  assert.equal(hold('a', 1.5 * T, 1000), true);
  assert.equal(s.of('a'), 2);
  assert.equal(hold('a', 0.8 * T, 2 * SAMPLING_DECAY_MS), false, 'just under the target: kept at 2');
  assert.equal(hold('a', 0.4 * T, SAMPLING_DECAY_MS + 1400), true);
  assert.equal(s.of('a'), 1);
  const off = new LogSampler(0, 1);
  off.note('a', 1e6);
  assert.equal(off.evaluate(1000), false, 'max 1: never sampled');
});
