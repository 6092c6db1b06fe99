import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { closeSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ManualClock } from '../../core/index.ts';
import { openLogPipe } from './logpipe.ts';

test('log pipe: lines are read in batches on the clock, split across reads, and the rest at EOF', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'aether-logpipe-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const clock = new ManualClock();
  const pipe = openLogPipe(join(dir, 'log.fifo'), clock, 20);
  // The writer: one line, half a line, then (on stdin) the other half and a last line.
  // It says on stderr when its first write is done (a fixed wait was too short on a loaded host).
  const script = "process.stdout.write('a 1\\nb 2', () => process.stderr.write('w')); process.stdin.once('data', () => { process.stdout.write(' more\\nc 3\\n'); process.exit(0); });";
  const cmd = pipe.wrap([process.execPath, '-e', script]);
  const child = spawn(cmd[0] as string, cmd.slice(1), { stdio: ['pipe', pipe.writeFd, 'pipe'] });
  t.after(() => child.kill('SIGKILL'));
  const written = new Promise((r) => child.stderr?.once('data', r));
  closeSync(pipe.writeFd);
  const lines: string[] = [];
  pipe.start((l) => lines.push(l));
  await written;
  assert.deepEqual(lines, [], 'nothing is read until the next poll');
  await clock.advance(20);
  assert.deepEqual(lines, ['a 1'], 'a partial line waits for its end');
  child.stdin?.write('go');
  await new Promise<void>((r) => child.once('exit', () => r()));
  pipe.close(); // reads what is left
  assert.deepEqual(lines, ['a 1', 'b 2 more', 'c 3']);
});

test('log pipe: an empty pipe is polled less and less often (up to the idle interval), a busy one every poll interval', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'aether-logpipe-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const clock = new ManualClock();
  const pipe = openLogPipe(join(dir, 'log.fifo'), clock, 20, 250);
  // The writer: a line per byte on stdin, acknowledged on stderr once written.
  const script = "process.stdin.on('data', (d) => { for (const c of d.toString()) process.stdout.write(c + '\\n', () => process.stderr.write('w')); });";
  const cmd = pipe.wrap([process.execPath, '-e', script]);
  const child = spawn(cmd[0] as string, cmd.slice(1), { stdio: ['pipe', pipe.writeFd, 'pipe'] });
  t.after(() => child.kill('SIGKILL'));
  closeSync(pipe.writeFd);
  const write = (c: string): Promise<unknown> => {
    const acked = new Promise((r) => child.stderr?.once('data', r));
    child.stdin?.write(c);
    return acked;
  };
  const lines: string[] = [];
  pipe.start((l) => lines.push(l));
  // Empty polls at 20, 60 (+40), 140 (+80), 300 (+160); the next one 250 later, at 550.
  await clock.advance(300);
  await write('a');
  await clock.advance(249);
  assert.deepEqual(lines, [], 'backed off');
  await clock.advance(1);
  assert.deepEqual(lines, ['a']);
  await write('b');
  await clock.advance(20);
  assert.deepEqual(lines, ['a', 'b'], 'after a read with lines: every poll interval again');
  pipe.close();
});

test('haproxy threads: one on two CPUs or fewer, else one less than the CPUs (max 16); a valid override wins', async () => {
  const { haproxyThreads } = await import('./supervisor.ts');
  assert.deepEqual([1, 2, 3, 8, 64].map((n) => haproxyThreads(n)), [1, 1, 2, 7, 16]);
  assert.equal(haproxyThreads(2, '2'), 2);
  for (const bad of ['0', '-1', '1.5', 'x', '65', '']) assert.equal(haproxyThreads(2, bad), 1, bad);
});
