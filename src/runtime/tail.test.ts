import assert from 'node:assert/strict';
import { appendFileSync, existsSync, mkdtempSync, readFileSync, renameSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
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

  describe('with an offset record (offsetFile)', () => {
    const follow = (path: string, offsetFile: string, clock: ManualClock, out: string[], fromEnd = true, reclaimBytes?: number): FileTail =>
      new FileTail({ path, clock, everyMs: 100, fromEnd, offsetFile, onLine: (t) => out.push(t), ...(reclaimBytes ? { reclaimBytes } : {}) });

    it('a successor resumes where the last follower handed lines on: what was written while nobody followed, once; a partial line whole', async () => {
      const d = mkdtempSync(join(tmpdir(), 'file-tail-'));
      try {
        const path = join(d, 'console.log');
        const offsets = join(d, 'console.log.offset');
        writeFileSync(path, 'before\n');
        const first: string[] = [];
        const deadClock = new ManualClock();
        // started on an existing file from its end (an adopted VM without a record yet): records where it started
        follow(path, offsets, deadClock, first);
        assert.ok(existsSync(offsets), 'the start is recorded at once');
        appendFileSync(path, 'one\ntwo\npart');
        await deadClock.advance(100);
        assert.deepEqual(first, ['one', 'two']);
        // the follower's agent is killed here (never closed: no last line); the writer goes on
        appendFileSync(path, 'ial\nwhile nobody followed\n');
        const second: string[] = [];
        const clock = new ManualClock();
        const t = follow(path, offsets, clock, second);
        await clock.advance(100);
        assert.deepEqual(second, ['partial', 'while nobody followed']);
        appendFileSync(path, 'later\n');
        await clock.advance(100);
        t.close();
        assert.deepEqual(second, ['partial', 'while nobody followed', 'later']);
        const third: string[] = [];
        const u = follow(path, offsets, new ManualClock(), third, false);
        u.close();
        assert.deepEqual(third, [], 'all of it was handed on: nothing again, even from the start');
      } finally {
        rmSync(d, { recursive: true, force: true });
      }
    });

    it('from the start when the file was replaced, shrank, or did not exist yet; fromEnd without a usable record', async () => {
      const d = mkdtempSync(join(tmpdir(), 'file-tail-'));
      try {
        const path = join(d, 'out.log');
        const offsets = join(d, 'out.log.offset');
        const read = (fromEnd = true): string[] => {
          const out: string[] = [];
          follow(path, offsets, new ManualClock(), out, fromEnd).close();
          return out;
        };
        // not there when followed: a record that sends a successor to the start of whatever appears
        follow(path, offsets, new ManualClock(), []);
        writeFileSync(path, 'first\nsecond\n');
        assert.deepEqual(read(), ['first', 'second']);
        renameSync(path, `${path}.1`);
        writeFileSync(path, 'a new file\n');
        assert.deepEqual(read(), ['a new file'], 'another inode: all of it is unread');
        appendFileSync(path, 'more than before\n');
        assert.deepEqual(read(), ['more than before']);
        truncateSync(path, 0);
        appendFileSync(path, 'short\n');
        assert.deepEqual(read(), ['short'], 'shorter than the record: truncated, read from the start');
        writeFileSync(offsets, 'torn');
        appendFileSync(path, 'x\n');
        assert.deepEqual(read(), [], 'an unusable record: fromEnd decides');
        writeFileSync(offsets, 'torn');
        assert.deepEqual(read(false), ['short', 'x']);
      } finally {
        rmSync(d, { recursive: true, force: true });
      }
    });

    it('frees blocks only below the last whole line handed on: a resuming follower reads a partial line intact', async () => {
      const d = mkdtempSync(join(tmpdir(), 'file-tail-'));
      try {
        const path = join(d, 'console.log');
        const offsets = join(d, 'console.log.offset');
        const line = `${'x'.repeat(99)}\n`;
        writeFileSync(path, line.repeat(50) + 'z'.repeat(9000));
        const first: string[] = [];
        const clock = new ManualClock();
        follow(path, offsets, clock, first, false, 4096);
        await clock.advance(100);
        assert.equal(first.length, 50);
        // 14000 bytes read, 5000 of them whole lines: the first block may go, the partial line's must not
        for (let i = 0; i < 100 && statSync(path).blocks * 512 >= 14000; i++) await new Promise((r) => setTimeout(r, 10));
        await new Promise((r) => setTimeout(r, 100));
        assert.equal(readFileSync(path).subarray(5000).includes(0), false, 'nothing of the partial line was punched');
        appendFileSync(path, 'z\n');
        const second: string[] = [];
        follow(path, offsets, new ManualClock(), second).close();
        assert.deepEqual(second, ['z'.repeat(9001)]);
      } finally {
        rmSync(d, { recursive: true, force: true });
      }
    });
  });
});
