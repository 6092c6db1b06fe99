import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { afterEach, beforeEach, describe, it } from 'node:test';
import type { Job, Queue } from './types.ts';

export interface QueueHarness {
  queue: Queue;
  /** Let `ms` of the queue's time pass (ManualClock.advance, or a real sleep for networked drivers). */
  advance(ms: number): Promise<void>;
  cleanup(): Promise<void>;
}

/** Short visibility for redelivery tests; margins are 40% of it so a real-time driver has slack. */
const VIS = 1000;
/** Visibility that never expires during a test. */
const LONG = 600_000;
const OPTS = { timeout: 60_000 };

/**
 * The behaviour every Queue driver must have. `make` is called once per test and must return a
 * queue whose topics are empty.
 */
export function queueContract(name: string, make: () => Promise<QueueHarness>): void {
  describe(`Queue contract: ${name}`, () => {
    let h: QueueHarness;
    let q: Queue;
    let topic: string;
    beforeEach(async () => {
      h = await make();
      q = h.queue;
      topic = `t-${randomBytes(4).toString('hex')}`;
    });
    afterEach(async () => {
      await h.cleanup();
    });

    it('delivers in FIFO order per topic with payload, id and deliveries=1', OPTS, async () => {
      const payloads = [{ n: 1, s: 'ä€' }, { n: 2, nested: { a: [1, 2] } }, { n: 3 }];
      const ids: string[] = [];
      for (const p of payloads) ids.push(await q.enqueue(topic, p));
      assert.equal(new Set(ids).size, 3);
      assert.equal(await q.take(`${topic}-other`, 'c1', { waitMs: 0, visibilityMs: LONG }), undefined);
      for (let i = 0; i < 3; i++) {
        const job = await q.take(topic, 'c1', { waitMs: 0, visibilityMs: LONG });
        assert.ok(job);
        assert.deepEqual(
          { id: job.id, topic: job.topic, payload: job.payload, deliveries: job.deliveries },
          { id: ids[i], topic, payload: payloads[i], deliveries: 1 },
        );
        await q.ack(job);
      }
      assert.equal(await q.take(topic, 'c1', { waitMs: 0, visibilityMs: LONG }), undefined);
    });

    it('never delivers an acked job again, even after its visibility timeout', OPTS, async () => {
      await q.enqueue(topic, 'x');
      const job = await q.take(topic, 'c1', { waitMs: 0, visibilityMs: VIS });
      assert.ok(job);
      await q.ack(job);
      await h.advance(VIS * 1.4);
      assert.equal(await q.take(topic, 'c2', { waitMs: 0, visibilityMs: VIS }), undefined);
      assert.equal(await q.depth(topic), 0);
    });

    it('redelivers to another consumer after the visibility timeout (dead consumer)', OPTS, async () => {
      const id = await q.enqueue(topic, { work: 'w' });
      const first = await q.take(topic, 'dead', { waitMs: 0, visibilityMs: VIS });
      assert.ok(first);
      assert.equal(await q.take(topic, 'c2', { waitMs: 0, visibilityMs: VIS }), undefined, 'still invisible');
      await h.advance(VIS * 1.4);
      const second = await q.take(topic, 'c2', { waitMs: 0, visibilityMs: LONG });
      assert.ok(second, 'redelivered after the timeout');
      assert.equal(second.id, id);
      assert.deepEqual(second.payload, { work: 'w' });
      assert.equal(second.deliveries, 2);
      // The first holder lost the job: it cannot extend it, and its release must not duplicate it.
      await assert.rejects(q.extend(first, LONG), { code: 'AETHER_ERR_CONFLICT' });
      await q.release(first);
      assert.equal(await q.take(topic, 'c3', { waitMs: 0, visibilityMs: LONG }), undefined);
      assert.equal(await q.depth(topic), 1);
      await q.ack(second);
      assert.equal(await q.depth(topic), 0);
    });

    it('release makes the job deliverable at once', OPTS, async () => {
      const id = await q.enqueue(topic, 'r');
      const first = await q.take<string>(topic, 'c1', { waitMs: 0, visibilityMs: LONG });
      assert.ok(first);
      await q.release(first);
      const second = await q.take<string>(topic, 'c2', { waitMs: 0, visibilityMs: LONG });
      assert.ok(second);
      assert.equal(second.id, id);
      assert.equal(second.payload, 'r');
      assert.equal(second.deliveries, 2);
      await q.ack(second);
      assert.equal(await q.depth(topic), 0);
    });

    it('extend pushes the visibility deadline', OPTS, async () => {
      await q.enqueue(topic, 'e');
      const job = await q.take(topic, 'c1', { waitMs: 0, visibilityMs: VIS });
      assert.ok(job);
      await h.advance(VIS * 0.6);
      await q.extend(job, VIS);
      await h.advance(VIS * 0.6); // 1.2 VIS after take, 0.6 VIS after extend
      assert.equal(await q.take(topic, 'c2', { waitMs: 0, visibilityMs: VIS }), undefined, 'extended job redelivered');
      await h.advance(VIS * 0.8);
      const again = await q.take(topic, 'c2', { waitMs: 0, visibilityMs: LONG });
      assert.ok(again, 'delivered once the extended deadline passed');
      assert.equal(again.deliveries, 2);
      await q.ack(again);
    });

    it('take resolves undefined after waitMs when the topic stays empty', OPTS, async () => {
      const pending = q.take(topic, 'c1', { waitMs: 300, visibilityMs: LONG });
      await h.advance(300);
      assert.equal(await pending, undefined);
      assert.equal(await q.take(topic, 'c1', { waitMs: 0, visibilityMs: LONG }), undefined);
    });

    it('a waiting take receives a job enqueued during the wait', OPTS, async () => {
      const pending = q.take<number>(topic, 'c1', { waitMs: 20_000, visibilityMs: LONG });
      await new Promise((r) => setTimeout(r, 20));
      await q.enqueue(topic, 42);
      const job = await pending;
      assert.ok(job);
      assert.equal(job.payload, 42);
      await q.ack(job);
    });

    it('concurrent takers never get the same job', OPTS, async () => {
      for (let i = 0; i < 4; i++) await q.enqueue(topic, i);
      const takes = Array.from({ length: 6 }, (_, i) => q.take<number>(topic, `c${i}`, { waitMs: 300, visibilityMs: LONG }));
      await h.advance(300);
      const got = await Promise.all(takes);
      const jobs = got.filter((j): j is Job<number> => j !== undefined);
      assert.equal(jobs.length, 4);
      assert.deepEqual(jobs.map((j) => j.payload).sort(), [0, 1, 2, 3]);
      assert.equal(new Set(jobs.map((j) => j.id)).size, 4);

      // Many consumers draining in parallel: every job exactly once.
      const topic2 = `${topic}-drain`;
      for (let i = 0; i < 30; i++) await q.enqueue(topic2, i);
      const seen: number[] = [];
      await Promise.all(
        Array.from({ length: 5 }, async (_, c) => {
          for (;;) {
            const job = await q.take<number>(topic2, `d${c}`, { waitMs: 0, visibilityMs: LONG });
            if (!job) return;
            seen.push(job.payload);
            await q.ack(job);
          }
        }),
      );
      assert.deepEqual(seen.sort((a, b) => a - b), Array.from({ length: 30 }, (_, i) => i));
    });

    it('contains: true while a job waits, is in flight or was released; false once acked', OPTS, async () => {
      const id = await q.enqueue(topic, 'x');
      assert.equal(await q.contains(topic, id), true);
      assert.equal(await q.contains(`${topic}-other`, id), false);
      assert.equal(await q.contains(topic, 'no-such-job'), false);
      const first = await q.take(topic, 'c1', { waitMs: 0, visibilityMs: LONG });
      assert.ok(first);
      assert.equal(await q.contains(topic, id), true, 'in flight');
      await q.release(first);
      assert.equal(await q.contains(topic, id), true, 'released: waiting again');
      const second = await q.take(topic, 'c1', { waitMs: 0, visibilityMs: LONG });
      assert.ok(second);
      await q.ack(second);
      assert.equal(await q.contains(topic, id), false, 'acked');
    });

    it('depth counts waiting and in-flight jobs per topic', OPTS, async () => {
      assert.equal(await q.depth(topic), 0);
      for (let i = 0; i < 3; i++) await q.enqueue(topic, i);
      assert.equal(await q.depth(topic), 3);
      assert.equal(await q.depth(`${topic}-other`), 0);
      const job = await q.take(topic, 'c1', { waitMs: 0, visibilityMs: LONG });
      assert.ok(job);
      assert.equal(await q.depth(topic), 3, 'in flight still counts');
      await q.ack(job);
      assert.equal(await q.depth(topic), 2);
    });
  });
}
