import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AetherError } from '../core/index.ts';
import { procStart } from '../runtime/procfs.ts';
import { lockDataDir } from './lock.ts';

const withDir = async (fn: (dir: string) => Promise<void> | void): Promise<void> => {
  const dir = mkdtempSync(join(tmpdir(), 'aether-lock-'));
  try {
    await fn(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
};

/** A live process other than this one, and a way to end it. */
async function otherProcess(): Promise<{ pid: number; end: () => Promise<void> }> {
  const child = spawn('sleep', ['60'], { stdio: 'ignore' });
  await new Promise((r) => child.once('spawn', r));
  return {
    pid: child.pid as number,
    end: async () => {
      child.kill('SIGKILL');
      await new Promise((r) => child.once('exit', r));
    },
  };
}

test('the lock is taken, held in <data-dir>/lock, and released', () =>
  withDir((dir) => {
    const release = lockDataDir(dir, 'up');
    const held = JSON.parse(readFileSync(join(dir, 'lock'), 'utf8')) as { pid: number; role: string };
    assert.deepEqual([held.pid, held.role], [process.pid, 'up']);
    release();
    assert.equal(existsSync(join(dir, 'lock')), false);
    // and can be taken again
    lockDataDir(dir, 'up')();
  }));

test('a data dir held by a live process is refused with a clear error naming it', () =>
  withDir(async (dir) => {
    const other = await otherProcess();
    try {
      writeFileSync(join(dir, 'lock'), JSON.stringify({ pid: other.pid, start: procStart(other.pid) ?? null, role: 'up' }));
      assert.throws(
        () => lockDataDir(dir, 'up'),
        (err: unknown) => err instanceof AetherError && err.code === 'AETHER_ERR_VALIDATION' && err.message.includes(`in use by \`aether up\` (pid ${other.pid})`) && err.message.includes('--data-dir'),
      );
      // the holder's lock is left alone
      assert.equal((JSON.parse(readFileSync(join(dir, 'lock'), 'utf8')) as { pid: number }).pid, other.pid);
    } finally {
      await other.end();
    }
  }));

test('a lock whose holder is gone (killed, crashed, or its pid reused) is taken over', () =>
  withDir(async (dir) => {
    const other = await otherProcess();
    const start = procStart(other.pid) ?? null;
    await other.end();
    writeFileSync(join(dir, 'lock'), JSON.stringify({ pid: other.pid, start, role: 'up' }));
    lockDataDir(dir, 'up')();
    // A live pid with another start time is not the holder (pid reuse).
    if (procStart(process.ppid) !== undefined) {
      writeFileSync(join(dir, 'lock'), JSON.stringify({ pid: process.ppid, start: 'not-its-start', role: 'up' }));
      lockDataDir(dir, 'up')();
    }
    // Garbage (a half-written file) is stale too.
    writeFileSync(join(dir, 'lock'), '{"pid":');
    const release = lockDataDir(dir, 'agent');
    assert.equal((JSON.parse(readFileSync(join(dir, 'lock'), 'utf8')) as { role: string }).role, 'agent');
    release();
  }));

test('a release removes only its own lock', () =>
  withDir(async (dir) => {
    const release = lockDataDir(dir, 'up');
    const other = await otherProcess();
    try {
      const theirs = JSON.stringify({ pid: other.pid, start: procStart(other.pid) ?? null, role: 'up' });
      writeFileSync(join(dir, 'lock'), theirs);
      release();
      assert.equal(readFileSync(join(dir, 'lock'), 'utf8'), theirs);
    } finally {
      await other.end();
    }
  }));
