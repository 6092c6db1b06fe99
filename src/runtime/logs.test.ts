import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ManualClock } from '../core/index.ts';
import { LineSplitter, LogHub, MAX_LINE_BYTES } from './logs.ts';

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
