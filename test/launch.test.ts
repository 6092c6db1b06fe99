/**
 * `aether up` started the ways a new user or a process manager starts it: through `npx` (npm ->
 * sh -c -> node) and through the Node-version wrapper in bin/aether.mjs. Signalling or killing
 * only the launcher's pid must stop the platform and leave no process of its tree behind.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AETHER_BIN, ROOT, eventually } from './support/platform.ts';
import { descendants, stillAlive } from './support/procs.ts';
import type { Proc } from './support/procs.ts';

const dirs: string[] = [];
after(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

const npx = ((): string | undefined => {
  try {
    return execFileSync('sh', ['-c', 'command -v npx'], { encoding: 'utf8' }).trim() || undefined;
  } catch {
    return undefined;
  }
})();

/** A node older than 24 on the system, to exercise the re-exec wrapper. */
const oldNode = ((): string | undefined => {
  for (const bin of ['/usr/bin/node', '/usr/local/bin/node']) {
    try {
      const v = execFileSync(bin, ['-p', 'process.versions.node'], { encoding: 'utf8' }).trim();
      if (Number(v.split('.')[0]) < 24) return bin;
    } catch {
      // not there
    }
  }
  return undefined;
})();

async function launch(cmd: string, args: string[]): Promise<{ pid: number; out: () => string; exited: Promise<{ code: number | null; signal: string | null }>; tree: Proc[] }> {
  const dataDir = mkdtempSync(join(tmpdir(), 'aether-e2e-'));
  dirs.push(dataDir);
  const env: Record<string, string> = { ...(process.env as Record<string, string>), AETHER_ADMIN_TOKEN: 'launch-test-token', AETHER_LOG_LEVEL: 'warn' };
  delete env['NODE_EXTRA_CA_CERTS'];
  const proc = spawn(cmd, [...args, 'up', '--port', '0', '--data-dir', dataDir], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  proc.stdout.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<{ code: number | null; signal: string | null }>((r) => proc.once('exit', (code, signal) => r({ code, signal })));
  await eventually(async () => /is up at http/.test(out) || (proc.exitCode !== null && assert.fail(out)), 60_000);
  const tree = descendants(proc.pid as number);
  // The platform itself is in the tree, else the test would prove nothing.
  assert.ok(tree.some((p) => p.cmdline.includes('aether') && p.cmdline.includes(' up ')), JSON.stringify(tree));
  return { pid: proc.pid as number, out: () => out, exited, tree };
}

for (const signal of ['SIGTERM', 'SIGINT', 'SIGKILL'] as const) {
  test(`npx aether up: ${signal} to the npx pid stops the platform, no orphans`, { skip: npx ? false : 'no npx on PATH', timeout: 120_000 }, async () => {
    const run = await launch(npx as string, ['aether']);
    process.kill(run.pid, signal);
    const how = await run.exited;
    // npx waits for the platform's clean exit (it reaches node directly: .npmrc's script-shell).
    if (signal !== 'SIGKILL') assert.deepEqual(how, { code: 0, signal: null }, run.out());
    await eventually(async () => stillAlive(run.tree).length === 0, 20_000).catch(() => assert.fail(`left running: ${JSON.stringify(stillAlive(run.tree))}\n${run.out()}`));
    assert.match(run.out(), /shutting down/);
  });
}

for (const signal of ['SIGTERM', 'SIGKILL'] as const) {
  test(`bin/aether.mjs on Node < 24 re-execs; ${signal} to the wrapper stops the platform`, { skip: oldNode ? false : 'no Node < 24 on this host', timeout: 120_000 }, async () => {
    const run = await launch(oldNode as string, [AETHER_BIN]);
    process.kill(run.pid, signal);
    const how = await run.exited;
    if (signal === 'SIGTERM') assert.deepEqual(how, { code: 0, signal: null }, run.out());
    await eventually(async () => stillAlive(run.tree).length === 0, 20_000).catch(() => assert.fail(`left running: ${JSON.stringify(stillAlive(run.tree))}\n${run.out()}`));
    assert.match(run.out(), /shutting down/);
  });
}
