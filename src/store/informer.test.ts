import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { pino } from 'pino';
import { ManualClock, type Logger } from '../core/index.ts';
import { ControlledStore } from './contract.ts';
import { listAndWatch } from './informer.ts';
import { createSqliteStore } from './sqlite.ts';
import type { KeyValue, WatchEvent } from './types.ts';

function captureLogger(): { logger: Logger; lines: { level: number; msg: string }[] } {
  const lines: { level: number; msg: string }[] = [];
  const logger = pino({ level: 'debug' }, { write: (s: string) => void lines.push(JSON.parse(s)) });
  return { logger, lines };
}

/** Mirrors the informer's callbacks into a key -> value map, as the gateway cache does. */
function mirror(): {
  view: Map<string, string>;
  resets: number[];
  events: WatchEvent[];
  handlers: { onReset(kvs: KeyValue[], revision: number): void; onEvent(ev: WatchEvent): void };
} {
  const view = new Map<string, string>();
  const resets: number[] = [];
  const events: WatchEvent[] = [];
  return {
    view,
    resets,
    events,
    handlers: {
      onReset: (kvs, revision) => {
        view.clear();
        for (const kv of kvs) view.set(kv.key, kv.value);
        resets.push(revision);
      },
      onEvent: (ev) => {
        events.push(ev);
        if (ev.type === 'put') view.set(ev.kv.key, ev.kv.value);
        else view.delete(ev.key);
      },
    },
  };
}

async function until(pred: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setImmediate(r));
  }
}

function setup(historyLimit?: number): { clock: ManualClock; inner: ReturnType<typeof createSqliteStore>; store: ControlledStore } {
  const clock = new ManualClock();
  const inner = createSqliteStore({ path: ':memory:', clock, ...(historyLimit !== undefined ? { historyLimit } : {}) });
  return { clock, inner, store: new ControlledStore(inner) };
}

describe('listAndWatch', () => {
  it('resets with the listed state, then applies every later change, including ones racing the watch start', async () => {
    const { inner, store } = setup();
    await inner.put('/i/a', '1');
    await inner.put('/i/b', '2');
    await inner.put('/other', 'x');
    const m = mirror();
    store.holdWatches = true;
    const inf = listAndWatch(store, '/i/', m.handlers);
    await inf.ready;
    assert.deepEqual([...m.view], [['/i/a', '1'], ['/i/b', '2']]);
    // Written after the list, before the watch exists.
    await inner.put('/i/c', '3');
    await inner.delete('/i/a');
    store.release();
    await inner.put('/i/b', '2b');
    await until(() => m.events.length === 3, '3 events');
    assert.deepEqual([...m.view].sort(), [['/i/b', '2b'], ['/i/c', '3']]);
    assert.equal(m.resets.length, 1);
    inf.close();
    await inner.put('/i/d', '4');
    await new Promise((r) => setImmediate(r));
    assert.equal(m.view.has('/i/d'), false, 'no events after close');
    await inner.close();
  });

  it('re-lists when its watch start is compacted and carries on from the new revision', async () => {
    const { inner, store } = setup(8);
    await inner.put('/c/keep', 'k');
    const m = mirror();
    const { logger, lines } = captureLogger();
    store.holdWatches = true;
    const inf = listAndWatch(store, '/c/', m.handlers, { logger });
    await inf.ready;
    const first = m.resets[0]!;
    for (let i = 0; i < 40; i++) await inner.put(`/c/n${i % 3}`, String(i));
    await inner.delete('/c/keep');
    store.holdWatches = false;
    store.release();
    await until(() => m.resets.length === 2, 'second reset');
    assert.ok(m.resets[1]! > first);
    assert.deepEqual([...m.view].sort(), [['/c/n0', '39'], ['/c/n1', '37'], ['/c/n2', '38']]);
    assert.equal(m.events.length, 0, 'the compacted watch delivered nothing');
    assert.equal(store.watchCalls, 2);
    assert.ok(lines.some((l) => l.msg.includes('compacted')));
    await inner.put('/c/after', 'a');
    await until(() => m.view.get('/c/after') === 'a', 'event after recovery');
    inf.close();
    await inner.close();
  });

  it('retries a failing list every retryMs without throwing, warning once, and becomes ready when it works', async () => {
    const { clock, inner, store } = setup();
    await inner.put('/r/a', '1');
    store.down = true;
    const m = mirror();
    const { logger, lines } = captureLogger();
    const attempts: number[] = [];
    const list = store.list;
    store.list = (prefix, opts) => {
      attempts.push(clock.now());
      return list(prefix, opts);
    };
    const inf = listAndWatch(store, '/r/', m.handlers, { clock, logger, retryMs: 500 });
    let ready = false;
    void inf.ready.then(() => (ready = true));
    for (let i = 0; i < 5; i++) await clock.advance(500);
    assert.equal(ready, false);
    assert.equal(m.resets.length, 0);
    assert.ok(attempts.length >= 5, `attempts: ${attempts.join(',')}`);
    // (The first gap also holds the time ManualClock.advance took to run the first failure's callbacks.)
    for (let i = 2; i < attempts.length; i++) assert.equal(attempts[i]! - attempts[i - 1]!, 500, 'retries every retryMs');
    assert.equal(lines.filter((l) => l.level === 40).length, 1, 'one warning for the whole outage');
    store.down = false;
    await clock.advance(500);
    await until(() => ready, 'ready');
    assert.equal(m.resets.length, 1);
    assert.deepEqual([...m.view], [['/r/a', '1']]);
    inf.close();
    await inner.close();
  });

  it('after a watch failure it re-lists once the store is back, picking up changes made meanwhile', async () => {
    const { clock, inner, store } = setup();
    await inner.put('/w/a', '1');
    const m = mirror();
    const inf = listAndWatch(store, '/w/', m.handlers, { clock, retryMs: 1000 });
    await inf.ready;
    store.down = true; // fails the live watch
    await inner.put('/w/b', '2'); // changes the informer cannot see while "down"
    await inner.delete('/w/a');
    await clock.advance(1000);
    await clock.advance(1000);
    assert.equal(m.resets.length, 1);
    store.down = false;
    await clock.advance(1000);
    await until(() => m.resets.length === 2, 'reset after outage');
    assert.deepEqual([...m.view], [['/w/b', '2']]);
    await inner.put('/w/c', '3');
    await until(() => m.view.get('/w/c') === '3', 'live event after outage');
    inf.close();
    await inner.close();
  });

  it('ready rejects when closed before the first list succeeded', async () => {
    const { clock, inner, store } = setup();
    store.down = true;
    const m = mirror();
    const inf = listAndWatch(store, '/x/', m.handlers, { clock });
    inf.close();
    await assert.rejects(inf.ready, { code: 'AETHER_ERR_UNAVAILABLE' });
    store.down = false;
    await clock.advance(5000);
    assert.equal(m.resets.length, 0, 'no retries after close');
    await inner.close();
  });
});
