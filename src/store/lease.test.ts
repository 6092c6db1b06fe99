import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { pino } from 'pino';
import { ManualClock, type Logger } from '../core/index.ts';
import { ControlledStore } from './contract.ts';
import { LeaseKeeper } from './lease.ts';
import { createSqliteStore } from './sqlite.ts';

const TTL = 3000;

function captureLogger(): { logger: Logger; warns: () => number } {
  const lines: { level: number }[] = [];
  const logger = pino({ level: 'debug' }, { write: (s: string) => void lines.push(JSON.parse(s)) });
  return { logger, warns: () => lines.filter((l) => l.level === 40).length };
}

function setup(): { clock: ManualClock; inner: ReturnType<typeof createSqliteStore>; store: ControlledStore; leases: string[]; keeper: LeaseKeeper; warns: () => number } {
  const clock = new ManualClock();
  const inner = createSqliteStore({ path: ':memory:', clock });
  const store = new ControlledStore(inner);
  const leases: string[] = [];
  const { logger, warns } = captureLogger();
  const keeper = new LeaseKeeper({
    store,
    ttlMs: TTL,
    clock,
    logger,
    onLease: async (id) => {
      leases.push(id);
      await store.put('/agents/a1', JSON.stringify({ lease: id }), { lease: id });
    },
  });
  return { clock, inner, store, leases, keeper, warns };
}

describe('LeaseKeeper', () => {
  it('grants a lease, lets the owner register under it and keeps it alive for many TTLs', async () => {
    const { clock, inner, store, leases, keeper } = setup();
    let keepAlives = 0;
    const ka = store.keepAlive;
    store.keepAlive = (id) => {
      keepAlives++;
      return ka(id);
    };
    const id = await keeper.start();
    assert.deepEqual(leases, [id]);
    assert.equal(keeper.leaseId, id);
    assert.equal((await inner.get('/agents/a1'))?.lease, id);
    await clock.advance(TTL * 10);
    assert.equal((await inner.get('/agents/a1'))?.lease, id);
    assert.deepEqual(leases, [id], 'same lease throughout');
    assert.ok(keepAlives >= 29 && keepAlives <= 31, `a keep-alive every ttl/3 (${keepAlives})`);
    await keeper.stop();
    await inner.close();
  });

  it('replaces a lease that was revoked elsewhere and calls onLease again', async () => {
    const { clock, inner, leases, keeper } = setup();
    const first = await keeper.start();
    await inner.revokeLease(first);
    assert.equal(await inner.get('/agents/a1'), undefined);
    await clock.advance(TTL / 3);
    assert.equal(leases.length, 2);
    const second = leases[1]!;
    assert.notEqual(second, first);
    assert.equal(keeper.leaseId, second);
    assert.equal((await inner.get('/agents/a1'))?.lease, second);
    await keeper.stop();
    await inner.close();
  });

  it('rides out a store outage longer than the TTL quietly and re-registers under a new lease', async () => {
    const { clock, inner, store, leases, keeper, warns } = setup();
    const first = await keeper.start();
    store.down = true;
    await clock.advance(TTL * 4); // the lease expires in the store meanwhile
    assert.equal(await inner.get('/agents/a1'), undefined);
    assert.equal(warns(), 1, 'one warning per outage');
    assert.deepEqual(leases, [first]);
    store.down = false;
    await clock.advance(TTL / 3);
    assert.equal(leases.length, 2);
    assert.equal((await inner.get('/agents/a1'))?.lease, leases[1]);
    assert.equal(keeper.leaseId, leases[1]);
    await clock.advance(TTL * 3);
    assert.equal(leases.length, 2, 'stable again after the outage');
    assert.equal(warns(), 2, 'the lost lease itself is one more warning');
    await keeper.stop();
    await inner.close();
  });

  it('stop({ revoke: true }) deletes the keys at once; plain stop lets the lease run out', async () => {
    const a = setup();
    await a.keeper.start();
    await a.keeper.stop({ revoke: true });
    assert.equal(await a.inner.get('/agents/a1'), undefined);
    assert.equal(a.keeper.leaseId, undefined);
    await a.inner.close();

    const b = setup();
    const id = await b.keeper.start();
    await b.keeper.stop();
    assert.equal(b.keeper.leaseId, id);
    await b.clock.advance(TTL - 500);
    assert.equal((await b.inner.get('/agents/a1'))?.lease, id, 'still there within the TTL');
    await b.clock.advance(1000);
    assert.equal(await b.inner.get('/agents/a1'), undefined, 'no keep-alives after stop');
    await b.inner.close();
  });

  it('start rejects and drops the lease when onLease fails', async () => {
    const clock = new ManualClock();
    const inner = createSqliteStore({ path: ':memory:', clock });
    let granted: string | undefined;
    const keeper = new LeaseKeeper({
      store: inner,
      ttlMs: TTL,
      clock,
      onLease: async (id) => {
        granted = id;
        await inner.put('/k', 'v', { lease: id });
        throw new Error('registration failed');
      },
    });
    await assert.rejects(keeper.start(), /registration failed/);
    assert.equal(keeper.leaseId, undefined);
    assert.equal(await inner.keepAlive(granted!), false, 'lease revoked');
    assert.equal(await inner.get('/k'), undefined);
    await inner.close();
  });
});
