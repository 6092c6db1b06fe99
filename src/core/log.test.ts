import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { closeSync, constants, existsSync, mkdtempSync, openSync, readFileSync, readSync, rmSync, statSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ManualClock } from './clock.ts';
import { createFileLogger, drainLogs, LogSink, shortLogLine } from './log.ts';

test('log sink: every line reaches a reader that keeps up, in order', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'aether-log-test-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const fd = openSync(join(dir, 'log'), 'w');
  const sink = new LogSink(fd);
  const lines = Array.from({ length: 2000 }, (_, i) => `{"n":${i},"text":"ünïcode ${'x'.repeat(i % 50)}"}\n`);
  for (const l of lines) sink.write(l);
  assert.equal(await sink.drain(10_000), true);
  closeSync(fd);
  assert.equal(readFileSync(join(dir, 'log'), 'utf8'), lines.join(''));
  assert.equal(sink.dropped, 0);
});

test('log sink: a full pipe nobody reads never blocks; lines wait (bounded), then flow with a note of what was dropped', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'aether-log-test-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const fifo = join(dir, 'pipe');
  execFileSync('mkfifo', [fifo]);
  const reader = openSync(fifo, constants.O_RDONLY | constants.O_NONBLOCK);
  const writer = openSync(fifo, constants.O_WRONLY | constants.O_NONBLOCK);
  t.after(() => {
    closeSync(reader);
    closeSync(writer);
  });
  const fill = Buffer.alloc(4096, '.');
  let filled = 0;
  for (;;) {
    try {
      filled += writeSync(writer, fill);
    } catch {
      break;
    }
  }
  const clock = new ManualClock(0);
  const sink = new LogSink(writer, { maxBufferBytes: 500, clock });
  for (let i = 0; i < 100; i++) sink.write(`{"n":${i}}\n`); // 8 or 9 bytes each: about 55 fit
  await new Promise((r) => setTimeout(r, 50)); // the first write attempt meets EAGAIN
  assert.ok(sink.pending > 0 && sink.pending <= 500, `held, bounded: ${sink.pending}`);
  assert.ok(sink.dropped > 0, 'past the bound, lines are dropped, not buffered without end');
  const drained = sink.drain(100);
  await clock.advance(100);
  assert.equal(await drained, false, 'draining is bounded too');
  sink.flushSync(); // at exit: no wait, no throw
  // Someone reads: the held lines, then a note about the dropped ones.
  const got: Buffer[] = [];
  const buf = Buffer.alloc(65536);
  let read = 0;
  for (let i = 0; i < 200 && !Buffer.concat(got).toString().includes('dropped'); i++) {
    try {
      const n = readSync(reader, buf);
      read += n;
      if (read > filled) got.push(Buffer.from(buf.subarray(Math.max(0, n - (read - filled)), n)));
    } catch {
      // EAGAIN: nothing yet
    }
    await clock.advance(50);
    await new Promise((r) => setTimeout(r, 5));
  }
  const text = Buffer.concat(got).toString().replace(/^\.+/, '');
  const out = text.trim().split('\n').map((l) => JSON.parse(l) as { n?: number; dropped?: number; msg?: string });
  const ns = out.flatMap((o) => (o.n === undefined ? [] : [o.n]));
  assert.deepEqual(ns, Array.from({ length: ns.length }, (_, i) => i), 'the held lines, in order');
  assert.equal(out.at(-1)?.dropped, 100 - ns.length);
  assert.match(out.at(-1)?.msg ?? '', /dropped/);
});

test('a log file gets every line; the terminal only warnings and errors, short', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'aether-log-test-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const termFd = openSync(join(dir, 'terminal'), 'w');
  const terminal = new LogSink(termFd);
  const file = join(dir, 'aether.log');
  const logger = createFileLogger('aether-up', 'info', file, terminal);
  logger.debug('below the level');
  logger.info({ agent: 'a-1' }, 'agent started');
  logger.warn({ code: 137, reason: 'killed by a signal' }, 'haproxy exited; restarting');
  logger.error({ err: new Error('disk full') }, 'write failed');
  assert.equal(await terminal.drain(5000), true);
  closeSync(termFd);
  const lines = readFileSync(file, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { msg: string });
  assert.deepEqual(lines.map((l) => l.msg), ['agent started', 'haproxy exited; restarting', 'write failed'], 'the file: JSON, at the level');
  assert.equal((statSync(file).mode & 0o777).toString(8), '600');
  const shown = readFileSync(join(dir, 'terminal'), 'utf8').split('\n');
  assert.equal(shown.length, 3, shown.join('\n'));
  assert.match(shown[0] ?? '', /^\d\d:\d\d:\d\d WARN haproxy exited; restarting {2}code=137 reason="killed by a signal"$/);
  assert.match(shown[1] ?? '', /^\d\d:\d\d:\d\d ERROR write failed {2}err="disk full"$/, 'an error by its message, no stack');
});

test('a log file past its size limit becomes <file>.1 (one generation) and a new one starts; no line lost', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'aether-log-test-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const termFd = openSync(join(dir, 'terminal'), 'w');
  t.after(() => closeSync(termFd));
  const file = join(dir, 'aether.log');
  const logger = createFileLogger('aether-up', 'info', file, new LogSink(termFd), 2000);
  for (let n = 0; n < 60; n++) logger.info({ n }, 'a line of about a hundred bytes');
  assert.equal(await drainLogs(5000), true);
  await new Promise((r) => setTimeout(r, 50)); // the old sink's close after its drain
  const read = (f: string): number[] => (existsSync(f) ? readFileSync(f, 'utf8').trim().split('\n').map((l) => (JSON.parse(l) as { n: number }).n) : []);
  const current = read(file);
  const previous = read(`${file}.1`);
  assert.ok(statSync(file).size <= 2000 + 200, `current ${statSync(file).size} bytes`);
  assert.ok(previous.length > 0 && current.length > 0);
  // Older generations were replaced: what is left are the newest lines, in order, without a gap.
  const kept = [...previous, ...current];
  assert.deepEqual(kept, Array.from({ length: kept.length }, (_, i) => 60 - kept.length + i));
  assert.equal((statSync(file).mode & 0o777).toString(8), '600');
});

test('short log line: a line that is not JSON passes as it is', () => {
  assert.equal(shortLogLine('not json'), 'not json\n');
  assert.match(shortLogLine('{"level":50,"time":0,"msg":"m","component":"c","name":"c","path":"/a b"}'), /^\d\d:\d\d:\d\d ERROR m {2}path="\/a b"\n$/);
});
