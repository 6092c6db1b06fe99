import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, mkdirSync, mkdtempSync, openSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ManualClock } from '../../core/index.ts';
import { findOrphanSandboxes, startOrphanSweep, sweepOrphanSandboxes } from './orphans.ts';

const LAUNCHER = '/opt/aether/src/runtime/process/sandbox/launch.pl';
const FORWARDER = '/opt/aether/src/runtime/process/sandbox/forwarder.mjs';

/** A fake /proc: pid -> argv, fd targets, mount namespace. */
function fakeProc(t: { after(fn: () => void): void }, procs: Record<string, { argv: string[]; fds?: Record<string, string>; mnt?: string }>): string {
  const root = mkdtempSync(join(tmpdir(), 'aether-fakeproc-'));
  t.after(() => rmSync(root, { recursive: true, force: true }));
  mkdirSync(join(root, 'self', 'ns'), { recursive: true });
  symlinkSync('mnt:[1]', join(root, 'self', 'ns', 'mnt'));
  for (const [pid, p] of Object.entries(procs)) {
    mkdirSync(join(root, pid, 'fd'), { recursive: true });
    mkdirSync(join(root, pid, 'ns'), { recursive: true });
    writeFileSync(join(root, pid, 'cmdline'), p.argv.join('\0') + '\0');
    for (const [fd, target] of Object.entries(p.fds ?? {})) symlinkSync(target, join(root, pid, 'fd', fd));
    symlinkSync(p.mnt ?? 'mnt:[1]', join(root, pid, 'ns', 'mnt'));
  }
  return root;
}

test('orphans: only our sandboxes whose data dir is gone (FIFO deleted, dir missing) are found', (t) => {
  const gone = '/tmp/aether-e2e-gone/runtime';
  const here = '/tmp/aether-e2e-here/runtime';
  const chain = ['unshare', '--pid', '--fork', '--kill-child', '--', 'perl', LAUNCHER, ' '];
  const proc = fakeProc(t, {
    '101': { argv: chain, fds: { '1': `${gone}/instances/agent-1/inst-1/stdout (deleted)`, '2': `${gone}/instances/agent-1/inst-1/stderr (deleted)` } },
    '102': { argv: chain, fds: { '1': `${here}/instances/agent-1/inst-2/stdout` } }, // alive data dir
    '103': { argv: ['unshare', '--', 'perl', '/elsewhere/launch.pl'], fds: { '1': `${gone}/instances/agent-1/inst-3/stdout (deleted)` } }, // another checkout's script
    '104': { argv: chain, fds: { '1': 'pipe:[123]' } }, // nothing names a data dir
    '105': { argv: ['unshare', '--net', '--', 'node', FORWARDER, `${gone}/sockets/.fwd-1-inst-1.tmp`] },
    '106': { argv: ['unshare', '--net', '--', 'node', FORWARDER, `${gone}/sockets/.fwd-1-inst-9.tmp`], mnt: 'mnt:[2]' }, // another mount namespace
    '107': { argv: ['perl', 'something-else', LAUNCHER.slice(0, -1)], fds: { '1': `${gone}/instances/a/b/stdout (deleted)` } },
    '108': { argv: chain, fds: { '1': `${here}/instances/agent-1/inst-8/stdout (deleted)` } }, // FIFO gone but the data dir is there
  });
  const exists = (p: string): boolean => p === here;
  const found = findOrphanSandboxes({ proc, launcher: LAUNCHER, forwarder: FORWARDER, exists });
  assert.deepEqual(found, [
    { pid: 101, kind: 'launcher', dataDir: gone },
    { pid: 105, kind: 'forwarder', dataDir: gone },
  ]);
  const killed: number[] = [];
  const stopped = sweepOrphanSandboxes({ proc, launcher: LAUNCHER, forwarder: FORWARDER, exists, kill: (pid) => killed.push(pid) });
  assert.deepEqual(killed, [101, 105]);
  assert.equal(stopped.length, 2);
});

test('orphans: the sweep runs at start and then every minute of the injected clock', async (t) => {
  // One candidate: every scan asks once whether its data dir exists.
  const proc = fakeProc(t, { '201': { argv: ['unshare', '--', 'perl', LAUNCHER], fds: { '1': '/d/runtime/instances/a/i/stdout (deleted)' } } });
  const clock = new ManualClock(0);
  let scans = 0;
  const sweep = startOrphanSweep({ proc, clock, launcher: LAUNCHER, forwarder: FORWARDER, exists: () => (scans++, true) });
  assert.equal(scans, 1, 'at start');
  await clock.advance(59_999);
  assert.equal(scans, 1, 'not before a minute');
  await clock.advance(1);
  assert.equal(scans, 2, 'again after a minute');
  sweep.stop();
  await clock.advance(600_000);
  assert.equal(scans, 2, 'stopped');
});

test('orphans: a real process marked as our launcher is stopped once its data dir is deleted; one with its data dir is left alone', async (t) => {
  const root = mkdtempSync(join(tmpdir(), 'aether-orphans-'));
  t.after(() => rmSync(root, { recursive: true, force: true }));
  const launcher = join(root, 'checkout', 'sandbox', 'launch.pl');
  const start = (dataDir: string, inst: string): ChildProcess => {
    const dir = join(dataDir, 'instances', 'agent-1', inst);
    mkdirSync(dir, { recursive: true });
    const out = openSync(join(dir, 'stdout'), 'w');
    // A stand-in for `unshare … perl launch.pl`: the script path in its argv, its stdout in the instance dir.
    const child = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1e9)', launcher], { stdio: ['ignore', out, 'ignore'] });
    closeSync(out);
    t.after(() => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    });
    return child;
  };
  const goneDir = join(root, 'gone', 'runtime');
  const keptDir = join(root, 'kept', 'runtime');
  const orphan = start(goneDir, 'inst-1');
  const kept = start(keptDir, 'inst-2');
  const exited = new Promise((r) => orphan.once('exit', (_code, signal) => r(signal)));
  assert.deepEqual(sweepOrphanSandboxes({ launcher }), [], 'nothing while both data dirs exist');
  rmSync(join(root, 'gone'), { recursive: true, force: true });
  const stopped = sweepOrphanSandboxes({ launcher });
  assert.deepEqual(stopped, [{ pid: orphan.pid, kind: 'launcher', dataDir: goneDir }]);
  assert.equal(await exited, 'SIGKILL');
  assert.equal(kept.exitCode, null);
  assert.equal(kept.signalCode, null, 'the one whose data dir exists runs on');
});
