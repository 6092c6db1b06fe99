/**
 * An orphaned `aether up` whose output pipe nobody reads (the test runner that spawned it was
 * killed, a log shipper hung) must still stop on SIGTERM: logging may never block or spin the
 * main thread. The pipe is a FIFO this test holds open for reading and never reads, filled before
 * the CLI starts, so every line the CLI writes meets a full pipe.
 */
import './support/netns.ts';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { closeSync, constants, existsSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { AETHER_BIN, reapSandboxes } from './support/platform.ts';

async function until(what: string, fn: () => boolean, ms: number): Promise<void> {
  for (const end = Date.now() + ms; !fn(); await sleep(50)) if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
}

test('an `aether up` writing to a full pipe nobody reads stops on SIGTERM', { timeout: 90_000 }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'aether-orphan-'));
  const dataDir = join(dir, 'data');
  t.after(() => {
    reapSandboxes(dataDir);
    rmSync(dir, { recursive: true, force: true });
  });
  const fifo = join(dir, 'out');
  execFileSync('mkfifo', [fifo]);
  const reader = openSync(fifo, constants.O_RDONLY | constants.O_NONBLOCK); // held, never read
  t.after(() => closeSync(reader));
  const writer = openSync(fifo, constants.O_WRONLY | constants.O_NONBLOCK);
  // Fill the pipe: from now on a write only fits once someone reads (nobody will).
  const block = Buffer.alloc(4096, 'x');
  for (;;) {
    try {
      writeSync(writer, block);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EAGAIN') break;
      throw err;
    }
  }
  const child = spawn(process.execPath, [AETHER_BIN, 'up', '--data-dir', dataDir, '--port', '0', '--data-plane', 'node', '--log-level', 'debug'], {
    stdio: ['ignore', writer, writer],
    env: { ...process.env, AETHER_ADMIN_TOKEN: 'orphan-test-token-0123456789' },
  });
  closeSync(writer);
  const state: { exit?: { code: number | null; signal: NodeJS.Signals | null } } = {};
  child.on('exit', (code, signal) => (state.exit = { code, signal }));
  const exited = (): typeof state.exit => state.exit; // read afresh (no narrowing across awaits)
  t.after(() => {
    if (!state.exit) child.kill('SIGKILL');
  });
  // It starts although nothing it prints can be delivered ...
  await until('the platform is up (its url file)', () => existsSync(join(dataDir, 'url')) || state.exit !== undefined, 60_000);
  assert.equal(state.exit, undefined, 'it did not die of the full pipe');
  // ... keeps logging into the full pipe for a while (its debug lines, the shutdown lines) ...
  await sleep(1000);
  // ... and stops on SIGTERM (10 s is its own shutdown deadline; the bound here is generous).
  child.kill('SIGTERM');
  await until('exit after SIGTERM', () => exited() !== undefined, 30_000);
  assert.equal(exited()?.signal, null, 'it exited by itself');
});
