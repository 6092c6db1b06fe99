/**
 * What a new user meets on a first `aether up`: the help, the admin token (never printed), the data
 * dir's permissions whatever the umask, a busy port reported before anything starts, and a second
 * `aether up` in the same directory refused.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { createServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'node:http';
import { findV1Mounts, v1Usable } from '../src/runtime/cgroup.ts';
import { AETHER_BIN, api, eventually, startAether, zipFiles } from './support/platform.ts';

const dirs: string[] = [];
after(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});
const tempDir = (): string => {
  const d = mkdtempSync(join(tmpdir(), 'aether-e2e-'));
  dirs.push(d);
  return d;
};

function cleanEnv(): Record<string, string> {
  const env: Record<string, string> = { ...(process.env as Record<string, string>), AETHER_LOG_LEVEL: 'warn' };
  delete env['AETHER_ADMIN_TOKEN'];
  delete env['NODE_EXTRA_CA_CERTS'];
  return env;
}

function run(args: string[], env = cleanEnv()): Promise<{ code: number; out: string; err: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [AETHER_BIN, ...args], { env, timeout: 60_000 }, (err, out, errOut) => resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, out, err: errOut }));
  });
}

const mode = (p: string): string => (statSync(p).mode & 0o777).toString(8);

test('aether up --help shows --data-dir and the defaults', async () => {
  const r = await run(['up', '--help']);
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /--data-dir <dir>/);
  assert.match(r.out, /default\s+\.\/\.aether/);
  assert.match(r.out, /default\s+8080/);
  assert.match(r.out, /default\s+127\.0\.0\.1/);
  assert.match(r.out, /default\s+sqlite:\/\/<data-dir>\/store\.db/);
});

test('first start under umask 000: token generated but never printed; data dir 0700, store.db and token 0600', { timeout: 120_000 }, async () => {
  const dataDir = join(tempDir(), 'data');
  mkdirSync(dataDir);
  chmodSync(dataDir, 0o777); // an existing, wide-open dir is narrowed too
  const proc = spawn('sh', ['-c', 'umask 000; exec "$0" "$@"', process.execPath, AETHER_BIN, 'up', '--port', '0', '--data-dir', dataDir], { env: cleanEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  proc.stdout.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise((r) => proc.once('exit', r));
  try {
    await eventually(async () => /is up at http/.test(out) || (proc.exitCode !== null && assert.fail(out)), 60_000);
    const token = readFileSync(join(dataDir, 'admin.token'), 'utf8').trim();
    assert.match(token, /^[0-9a-f]{64}$/);
    assert.ok(!out.includes(token), `the token was printed:\n${out}`);
    assert.ok(out.includes(join(dataDir, 'admin.token')), `where the token is was not said:\n${out}`);
    assert.equal(mode(dataDir), '700');
    assert.equal(mode(join(dataDir, 'admin.token')), '600');
    assert.equal(mode(join(dataDir, 'store.db')), '600');
    for (const f of ['store.db-wal', 'store.db-shm']) if (existsSync(join(dataDir, f))) assert.equal(mode(join(dataDir, f)), '600', f);
  } finally {
    proc.kill('SIGTERM');
    await exited;
  }
});

test('a busy port is reported before anything starts, and nothing is left behind', { timeout: 120_000 }, async () => {
  const busy = createServer();
  await new Promise<void>((r) => busy.listen(0, '127.0.0.1', r));
  try {
    const port = (busy.address() as AddressInfo).port;
    const dataDir = join(tempDir(), 'data');
    const r = await run(['up', '--port', String(port), '--data-dir', dataDir]);
    assert.equal(r.code, 1);
    assert.match(r.err, new RegExp(`port ${port} on 127\\.0\\.0\\.1 is already in use.*--port`));
    assert.doesNotMatch(r.out, /host:|agent started/, 'nothing started');
    // Not even the data dir (so no token, store or sandbox sockets).
    assert.equal(existsSync(dataDir), false);
  } finally {
    await new Promise((r) => busy.close(r));
  }
});

test('a second `aether up` on the same data dir is refused; the first keeps its port, URL file and functions', { timeout: 180_000 }, async () => {
  const dataDir = join(tempDir(), 'data');
  const first = await startAether({ dataDir });
  try {
    assert.equal((await api(first, 'POST', '/api/functions', { name: 'one', runtime: 'node' })).status, 201);
    const urlFile = readFileSync(join(dataDir, 'url'), 'utf8');
    // Another port: the port check passes, the data dir's lock does not.
    const r = await run(['up', '--port', '0', '--data-dir', dataDir]);
    assert.equal(r.code, 1, r.out + r.err);
    assert.ok(r.err.startsWith(`error: AETHER_ERR_VALIDATION: config: the data dir ${dataDir} is in use by \`aether up\` (pid ${first.proc.pid})`), r.err);
    assert.doesNotMatch(r.out, /host:|agent started|is up at/, 'nothing started');
    assert.equal(readFileSync(join(dataDir, 'url'), 'utf8'), urlFile, 'the URL file still names the first');
    assert.equal((await api(first, 'GET', '/api/functions/one')).status, 200);
  } finally {
    await first.stop();
  }
  // A clean stop releases it; a SIGKILLed holder's lock is taken over.
  assert.equal(existsSync(join(dataDir, 'lock')), false);
  const second = await startAether({ dataDir, token: first.token });
  await second.kill();
  assert.equal(existsSync(join(dataDir, 'lock')), true);
  const third = await startAether({ dataDir, token: first.token });
  try {
    assert.equal((await api(third, 'GET', '/api/functions/one')).status, 200);
  } finally {
    await third.stop();
  }
});

test('the upload spool of a platform killed mid-upload is removed when it starts again', { timeout: 180_000 }, async () => {
  const dataDir = join(tempDir(), 'data');
  const first = await startAether({ dataDir });
  const spoolRoot = join(dataDir, 'tmp');
  let req: ReturnType<typeof request> | undefined;
  try {
    assert.equal((await api(first, 'POST', '/api/functions', { name: 'big', runtime: 'node' })).status, 201);
    // Announce 8 MiB, send 1 MiB and stall: the gateway is spooling when it dies.
    const u = new URL(`${first.url}/api/functions/big/code`);
    req = request({ host: u.hostname, port: u.port, path: u.pathname, method: 'POST', headers: { authorization: `Bearer ${first.token}`, 'content-type': 'application/octet-stream', 'content-length': String(8 << 20) } });
    req.on('error', () => undefined);
    req.write(Buffer.alloc(1 << 20, 0x1f));
    const spooled = await eventually(async () => {
      for (const pidDir of readdirSync(spoolRoot)) {
        for (const up of readdirSync(join(spoolRoot, pidDir))) {
          const f = join(spoolRoot, pidDir, up, 'archive');
          if (existsSync(f) && statSync(f).size > 0) return f;
        }
      }
      return undefined;
    }, 30_000);
    await first.kill();
    assert.ok(existsSync(spooled), 'the spool outlived the killed platform');

    const second = await startAether({ dataDir, token: first.token });
    try {
      assert.equal(existsSync(spooled), false, 'left over from the killed platform');
      assert.deepEqual(readdirSync(spoolRoot), [String(second.proc.pid)]);
      assert.deepEqual(readdirSync(join(spoolRoot, String(second.proc.pid))), []);
    } finally {
      await second.stop();
    }
    // A clean stop removes its own spool too.
    assert.deepEqual(readdirSync(spoolRoot), []);
  } finally {
    req?.destroy();
    await first.kill();
  }
});

const mounts = findV1Mounts();
const cgroups = process.getuid?.() === 0 && v1Usable(mounts) ? mounts : undefined;

test('an agent removes the empty cgroups of an agent killed with SIGKILL, never a live one', { skip: cgroups ? false : 'needs root and cgroup v1', timeout: 180_000 }, async () => {
  const cg = cgroups as Record<'memory' | 'cpu' | 'pids', string>;
  const first = await startAether();
  const second = await startAether();
  let third: Awaited<ReturnType<typeof startAether>> | undefined;
  try {
    const agentDirs = (p: { dataDir: string }): string[] => {
      const id = readFileSync(join(p.dataDir, 'agent-id'), 'utf8').trim();
      return Object.values(cg).map((m) => join(m, 'aether', id));
    };
    for (const p of [first, second]) {
      assert.equal((await api(p, 'POST', '/api/functions', { name: 'cg', runtime: 'node' })).status, 201);
      const code = await zipFiles({ 'handler.js': "require('http').createServer((q, s) => s.end('ok')).listen(process.env.PORT);" });
      assert.equal((await api(p, 'POST', '/api/functions/cg/code', code)).status, 200);
      assert.equal((await fetch(`${p.url}/functions/cg/`)).status, 200);
      for (const d of agentDirs(p)) assert.ok(readdirSync(d).some((n) => n.startsWith('.owner-')), `${d} has its owner marker`);
    }
    await first.kill();
    // Its sandboxes die with it (parent-death signal); the empty cgroup dirs stay behind…
    for (const d of agentDirs(first)) assert.ok(existsSync(d), d);
    // …until another agent starts, which removes them, and leaves the live agent's alone.
    third = await startAether();
    await eventually(async () => agentDirs(first).every((d) => !existsSync(d)), 30_000);
    for (const d of agentDirs(second)) assert.ok(existsSync(d), `live agent's ${d} kept`);
    assert.equal((await fetch(`${second.url}/functions/cg/`)).status, 200);
  } finally {
    await first.kill();
    await second.stop();
    await third?.stop();
  }
});
