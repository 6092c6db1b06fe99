import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { Redis } from 'ioredis';
import { queueContract } from '../src/queue/contract.ts';
import { createRedisQueue, redisOptionsFromUrl } from '../src/queue/redis.ts';
import { redisAvailable, startRedis, type RedisServer } from './support/redis.ts';

const skip = redisAvailable();
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
let n = 0;
const prefix = (): string => `test${++n}:`;

if (skip) {
  it('redis queue', { skip }, () => {});
} else {
  const server = await startRedis();
  after(() => server.stop());

  queueContract('redis', async () => {
    const queue = createRedisQueue({ url: server.url, keyPrefix: prefix() });
    return { queue, advance: sleep, cleanup: () => queue.close() };
  });

  describe('redis queue', () => {
    it('parses redis urls', () => {
      assert.deepEqual(redisOptionsFromUrl('redis://u:p%40ss@h:7000/2'), { host: 'h', port: 7000, username: 'u', password: 'p@ss', db: 2 });
      assert.deepEqual(redisOptionsFromUrl('redis://127.0.0.1'), { host: '127.0.0.1', port: 6379 });
      assert.throws(() => redisOptionsFromUrl('http://x'), { code: 'AETHER_ERR_VALIDATION' });
    });

    it('a job of a consumer that died (connection gone) is reclaimed by another', async () => {
      const keyPrefix = prefix();
      const dying = createRedisQueue({ url: server.url, keyPrefix });
      const alive = createRedisQueue({ url: server.url, keyPrefix });
      try {
        await alive.enqueue('provision', { fn: 'f' });
        const lost = await dying.take('provision', 'agent-dead', { waitMs: 0, visibilityMs: 300 });
        assert.ok(lost);
        await dying.close();
        // A blocking take that starts before the job expires still gets it within its wait.
        const job = await alive.take('provision', 'agent-2', { waitMs: 5000, visibilityMs: 300 });
        assert.ok(job);
        assert.deepEqual([job.id, job.payload, job.deliveries], [lost.id, { fn: 'f' }, 2]);
        await alive.ack(job);
        assert.equal(await alive.depth('provision'), 0);
      } finally {
        await alive.close();
      }
    });

    it('moves a job to the dead-letter stream after maxDeliveries', async () => {
      const keyPrefix = prefix();
      const q = createRedisQueue({ url: server.url, keyPrefix, maxDeliveries: 2 });
      const raw = new Redis(server.url);
      try {
        const poison = await q.enqueue('t', 'poison');
        for (let i = 1; i <= 2; i++) {
          const job = await q.take('t', 'c', { waitMs: 0, visibilityMs: 200 });
          assert.equal(job?.deliveries, i);
          await sleep(300);
        }
        assert.equal(await q.take('t', 'c', { waitMs: 0, visibilityMs: 200 }), undefined);
        assert.equal(await q.depth('t'), 0);
        assert.equal(await q.contains('t', poison), false, 'dead-lettered: no longer live');
        const dead = await raw.xrange(`${keyPrefix}q:t:dlq`, '-', '+');
        assert.equal(dead.length, 1);
        const fields = dead[0]?.[1] ?? [];
        assert.equal(fields[fields.indexOf('p') + 1], JSON.stringify('poison'));
      } finally {
        raw.disconnect();
        await q.close();
      }
    });

    it('close() ends a waiting take with undefined and frees its connection', async () => {
      const q = createRedisQueue({ url: server.url, keyPrefix: prefix() });
      const waiting = q.take('t', 'c', { waitMs: 30_000, visibilityMs: 1000 });
      await sleep(100);
      const t0 = performance.now();
      await q.close();
      assert.equal(await waiting, undefined);
      assert.ok(performance.now() - t0 < 5000);
    });

    it('release keeps the job id and the delivery count across the re-added entry', async () => {
      const q = createRedisQueue({ url: server.url, keyPrefix: prefix() });
      try {
        const id = await q.enqueue('t', 1);
        for (let i = 1; i <= 3; i++) {
          const job = await q.take('t', 'c', { waitMs: 0, visibilityMs: 60_000 });
          assert.deepEqual([job?.id, job?.deliveries], [id, i]);
          if (i < 3) await q.release(job!);
          else await q.ack(job!);
        }
        assert.equal(await q.depth('t'), 0);
      } finally {
        await q.close();
      }
    });
  });

  describe('redis queue across Redis restarts', () => {
    let aof: RedisServer | undefined;
    let plain: RedisServer | undefined;
    after(async () => {
      await aof?.stop();
      await plain?.stop();
    });

    it('a job accepted before a restart (AOF on) is delivered after it; calls during the outage fail fast', async () => {
      aof = await startRedis({ appendOnly: true });
      const q = createRedisQueue({ url: aof.url });
      try {
        const id = await q.enqueue('provision', { req: 'r1' });
        await aof.kill();
        const t0 = performance.now();
        await assert.rejects(q.depth('provision'));
        await assert.rejects(q.take('provision', 'c', { waitMs: 100, visibilityMs: 1000 }));
        assert.ok(performance.now() - t0 < 15_000, 'calls during the outage must not hang');
        await aof.restart();
        const job = await q.take('provision', 'c', { waitMs: 5000, visibilityMs: 60_000 });
        assert.deepEqual([job?.id, job?.payload], [id, { req: 'r1' }]);
        await q.ack(job!);
      } finally {
        await q.close();
      }
    });

    it('Redis coming back empty (AOF off): the group is recreated and the queue keeps working', async () => {
      plain = await startRedis({ appendOnly: false });
      const q = createRedisQueue({ url: plain.url });
      try {
        const before = await q.enqueue('t', 'before');
        const first = await q.take('t', 'c', { waitMs: 0, visibilityMs: 60_000 });
        assert.equal(first?.payload, 'before');
        assert.equal(await q.contains('t', before), true);
        await plain.restart();
        assert.equal(await q.depth('t'), 0, 'the restart lost everything');
        assert.equal(await q.contains('t', before), false, 'a producer can tell its job is gone');
        // A blocking take on the empty server must recreate the group and still see a new job.
        const waiting = q.take('t', 'c', { waitMs: 10_000, visibilityMs: 60_000 });
        await sleep(100);
        await q.enqueue('t', 'after');
        const job = await waiting;
        assert.equal(job?.payload, 'after');
        await q.ack(job!);
        await q.enqueue('t', 'again');
        assert.equal((await q.take('t', 'c2', { waitMs: 0, visibilityMs: 60_000 }))?.payload, 'again');
      } finally {
        await q.close();
      }
    });
  });
}
