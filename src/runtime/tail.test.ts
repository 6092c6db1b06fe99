import assert from 'node:assert/strict';
import { appendFileSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { ManualClock } from '../core/index.ts';
import { FileTail } from './tail.ts';

describe('FileTail', () => {
  it('follows appended lines on the clock, from the end when asked, and flushes the last line at close', async () => {
    const d = mkdtempSync(join(tmpdir(), 'file-tail-'));
    try {
      const path = join(d, 'console.log');
      writeFileSync(path, 'old line\n');
      const clock = new ManualClock();
      const fromStart: string[] = [];
      const fromEnd: string[] = [];
      const a = new FileTail({ path, clock, everyMs: 100, fromEnd: false, onLine: (t) => fromStart.push(t) });
      const b = new FileTail({ path, clock, everyMs: 100, fromEnd: true, onLine: (t) => fromEnd.push(t) });
      appendFileSync(path, 'one\ntw');
      assert.deepEqual(fromStart, [], 'nothing before the clock moves');
      await clock.advance(100);
      assert.deepEqual(fromStart, ['old line', 'one']);
      assert.deepEqual(fromEnd, ['one']);
      appendFileSync(path, 'o\r\nthree');
      await clock.advance(100);
      assert.deepEqual(fromEnd, ['one', 'two']);
      a.close();
      b.close();
      assert.deepEqual(fromStart, ['old line', 'one', 'two', 'three']);
      assert.deepEqual(fromEnd, ['one', 'two', 'three']);
      appendFileSync(path, 'after\n');
      await clock.advance(1000);
      assert.equal(fromEnd.includes('after'), false, 'closed: no more reads');
    } finally {
      rmSync(d, { recursive: true, force: true });
    }
  });

  it('waits for a file its writer has not created yet', async () => {
    const d = mkdtempSync(join(tmpdir(), 'file-tail-'));
    try {
      const path = join(d, 'late.log');
      const clock = new ManualClock();
      const out: string[] = [];
      const t = new FileTail({ path, clock, everyMs: 100, fromEnd: false, onLine: (x) => out.push(x) });
      await clock.advance(100);
      writeFileSync(path, 'first\n');
      await clock.advance(100);
      assert.deepEqual(out, ['first']);
      t.close();
    } finally {
      rmSync(d, { recursive: true, force: true });
    }
  });

  it('frees the disk blocks of what it has read (reclaimBytes), losing nothing the writer adds', async () => {
    const d = mkdtempSync(join(tmpdir(), 'file-tail-'));
    try {
      const path = join(d, 'console.log');
      const line = `${'x'.repeat(1023)}\n`;
      writeFileSync(path, line.repeat(3 * 1024));
      const clock = new ManualClock();
      const got: string[] = [];
      const t = new FileTail({ path, clock, everyMs: 100, fromEnd: false, reclaimBytes: 1024 * 1024, onLine: (x) => got.push(x) });
      await clock.advance(100);
      assert.equal(got.length, 3 * 1024);
      assert.ok(got.every((x) => x.length === 1023));
      for (let i = 0; i < 200 && statSync(path).blocks * 512 > 1024 * 1024; i++) await new Promise((r) => setTimeout(r, 10));
      assert.ok(statSync(path).blocks * 512 <= 1024 * 1024, `read blocks freed (${statSync(path).blocks * 512} bytes on disk)`);
      assert.equal(statSync(path).size, 3 * 1024 * 1024, 'the size stays: the writer appends where it did');
      appendFileSync(path, 'after the hole\n');
      const after: string[] = [];
      const u = new FileTail({ path, clock, everyMs: 100, fromEnd: true, onLine: (x) => after.push(x) });
      appendFileSync(path, 'and more\n');
      await clock.advance(100);
      assert.deepEqual(got.slice(3 * 1024), ['after the hole', 'and more']);
      assert.deepEqual(after, ['and more']);
      t.close();
      u.close();
    } finally {
      rmSync(d, { recursive: true, force: true });
    }
  });
});
