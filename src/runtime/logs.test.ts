import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { PassThrough } from 'node:stream';
import { ManualClock } from '../core/index.ts';
import { LINE_COST, LineSplitter, LogHub, LogPump, MAX_LINE_BYTES } from './logs.ts';

describe('LineSplitter', () => {
  it('splits chunks into lines across chunk boundaries, strips CR, flushes the tail at end', () => {
    const out: string[] = [];
    const s = new LineSplitter((t) => out.push(t));
    s.write(Buffer.from('one\ntw'));
    s.write(Buffer.from('o\r\nthr'));
    assert.deepEqual(out, ['one', 'two']);
    s.write(Buffer.from('ee'));
    s.end();
    assert.deepEqual(out, ['one', 'two', 'three']);
  });

  it('keeps multi-byte characters split across chunks intact', () => {
    const out: string[] = [];
    const s = new LineSplitter((t) => out.push(t));
    const b = Buffer.from('ä€\n');
    s.write(b.subarray(0, 1));
    s.write(b.subarray(1));
    assert.deepEqual(out, ['ä€']);
  });

  it('truncates lines over 16 KiB and carries on with the next line', () => {
    const out: string[] = [];
    const s = new LineSplitter((t) => out.push(t));
    s.write(Buffer.alloc(MAX_LINE_BYTES + 5000, 'x'));
    s.write(Buffer.from('yyy\nnext\n'));
    assert.equal(out.length, 2);
    assert.ok(out[0]?.startsWith('x'.repeat(MAX_LINE_BYTES)));
    assert.ok(out[0]?.endsWith('[truncated]'));
    assert.ok(!out[0]?.includes('y'));
    assert.equal(out[1], 'next');
  });
});

describe('LogHub', () => {
  it('stamps lines with the clock, survives a throwing listener, tails program output only', () => {
    const clock = new ManualClock(1000);
    const hub = new LogHub(clock);
    const got: number[] = [];
    hub.on(() => {
      throw new Error('bad listener');
    });
    hub.on((l) => got.push(l.time));
    hub.emit('system', 'starting');
    for (let i = 0; i < 15; i++) hub.emit(i % 2 ? 'stderr' : 'stdout', `line ${i}`);
    assert.deepEqual(got.slice(0, 1), [1000]);
    assert.equal(got.length, 16);
    assert.equal(hub.tail(3), 'line 12\nline 13\nline 14');
    assert.ok(!hub.tail(50).includes('starting'));
  });
});

describe('LogPump', () => {
  const tick = (): Promise<void> => new Promise((r) => setImmediate(r));
  function setup(limits = { linesPerSec: 10, burstLines: 20, bytesPerSec: 1_000_000 }) {
    const clock = new ManualClock(0);
    const kept: string[] = [];
    const notices: { text: string; dropped: number }[] = [];
    const pump = new LogPump(clock, limits, (_s, t) => kept.push(t), (text, dropped) => notices.push({ text, dropped }));
    const out = new PassThrough();
    pump.add('stdout', out);
    pump.sealed();
    return { clock, kept, notices, pump, out };
  }

  it('keeps a burst, drops the excess with a counter, reports it once at the next kept line', async () => {
    const { clock, kept, notices, out } = setup();
    out.write(Array.from({ length: 100 }, (_, i) => `l${i}\n`).join(''));
    await tick();
    assert.equal(kept.length, 20, 'the burst');
    assert.equal(notices.length, 0, 'no notice per dropped line');
    await clock.advance(500); // 5 tokens back
    out.write('after\n');
    await tick();
    assert.deepEqual(notices.map((n) => n.dropped), [80]);
    assert.match(notices[0]?.text ?? '', /^80 log lines dropped: over the rate limit of 10 lines\/s$/);
    assert.equal(kept.at(-1), 'after');
  });

  it('reports a drop episode after a second even when the program falls silent, and at close', async () => {
    const { clock, notices, out, pump } = setup();
    out.write('x\n'.repeat(25));
    await tick();
    await clock.advance(1000);
    assert.deepEqual(notices.map((n) => n.dropped), [5]);
    out.write('x\n'.repeat(30)); // 10 refilled + ... the rest dropped
    await tick();
    pump.close();
    assert.equal(notices.length, 2);
    assert.equal(notices[1]?.dropped, 20);
  });

  it('pauses the pipe when over the reading budget (the writer blocks) and resumes when it is paid', async () => {
    const { clock, out, kept } = setup({ linesPerSec: 1e9, burstLines: 1e9, bytesPerSec: 1000 });
    out.write(`${'a'.repeat(1000 - LINE_COST - 1)}\n`); // exactly the budget
    await tick();
    assert.equal(out.isPaused(), false);
    out.write('b'.repeat(99) + '\n'); // 100 + 64 over
    await tick();
    assert.equal(out.isPaused(), true, 'paused: the program blocks once the pipe buffer is full');
    out.write('c\n');
    await tick();
    assert.equal(kept.length, 2, 'nothing read while paused');
    await clock.advance(163);
    assert.equal(out.isPaused(), true);
    await clock.advance(1);
    await tick();
    assert.equal(kept.at(-1), 'c', 'resumed once the debt was paid');
    assert.equal(out.isPaused(), true, 'and "c" put it in debt again');
  });

  it('drain() reads the rest without the budget; ended resolves when the streams close', async () => {
    const { out, kept, pump } = setup({ linesPerSec: 1e9, burstLines: 1e9, bytesPerSec: 10 });
    out.write('first line over budget\n');
    await tick();
    assert.equal(out.isPaused(), true);
    out.end('last words\n');
    pump.drain();
    await pump.ended;
    assert.deepEqual(kept, ['first line over budget', 'last words']);
  });

  it('memory stays bounded under a flood of one endless line', async () => {
    const { out, kept, pump } = setup({ linesPerSec: 1e9, burstLines: 1e9, bytesPerSec: 1e12 });
    for (let i = 0; i < 64; i++) out.write(Buffer.alloc(64 * 1024, 'z'));
    out.end('\n');
    await pump.ended;
    assert.equal(kept.length, 1);
    assert.ok((kept[0]?.length ?? 0) < MAX_LINE_BYTES + 20);
  });
});
