import assert from 'node:assert/strict';
import { it } from 'node:test';
import { ManualClock } from '../core/index.ts';
import { queueContract } from './contract.ts';
import { createMemoryQueue } from './memory.ts';

queueContract('memory', async () => {
  const clock = new ManualClock();
  const queue = createMemoryQueue({ clock });
  return { queue, advance: (ms) => clock.advance(ms), cleanup: () => queue.close() };
});

it('memory: a job redelivered after expiry keeps its FIFO place', async () => {
  const clock = new ManualClock();
  const q = createMemoryQueue({ clock });
  await q.enqueue('t', 'a');
  await q.enqueue('t', 'b');
  const a = await q.take('t', 'c1', { waitMs: 0, visibilityMs: 100 });
  assert.equal(a?.payload, 'a');
  await clock.advance(100);
  const again = await q.take('t', 'c2', { waitMs: 0, visibilityMs: 100 });
  assert.deepEqual([again?.payload, again?.deliveries], ['a', 2]);
  await q.close();
});

it('memory: close resolves waiting takes and rejects new calls', async () => {
  const q = createMemoryQueue({ clock: new ManualClock() });
  const pending = q.take('t', 'c1', { waitMs: 1000, visibilityMs: 100 });
  await q.close();
  assert.equal(await pending, undefined);
  await assert.rejects(q.enqueue('t', 1), { code: 'AETHER_ERR_UNAVAILABLE' });
});
