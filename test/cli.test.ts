/**
 * End to end: start the real platform (`aether up`) as a child process and drive it with the CLI
 * exactly as a user would (`node bin/aether.mjs fn …`), checking outputs and exit codes.
 */
import './support/netns.ts';
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { freePort } from '../src/core/index.ts';

const ROOT = resolve(import.meta.dirname, '..');
const ENTRY = join(ROOT, 'src/bin/aether.ts');
const CLI = join(ROOT, 'bin/aether.mjs');
const TOKEN = 'e2e-admin-token-0123456789';
const skip = existsSync(ENTRY) ? false : 'src/bin/aether.ts does not exist yet (the `aether up` composition root lands separately)';

let platform: ChildProcess | undefined;
let platformLog = '';
let url = '';
let work = '';
let dataDir = '';

interface Run {
  code: number;
  out: string;
  err: string;
}

function aether(args: string[], env: Record<string, string> = { AETHER_URL: url, AETHER_ADMIN_TOKEN: TOKEN }): Promise<Run> {
  return new Promise((res) => {
    execFile(
      process.execPath,
      [CLI, ...args],
      // A clean env so nothing from the developer's shell points the CLI elsewhere.
      { cwd: work, env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', ...env }, timeout: 120_000 },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
        res({ code, out: stdout, err: stderr });
      },
    );
  });
}

/** Retry a check until it passes (the platform records invocations and logs asynchronously). */
async function eventually<T>(what: string, fn: () => Promise<T>, attempts = 100): Promise<T> {
  let last: unknown;
  for (let i = 0; i < attempts; i++) {
    if (platform && (platform.exitCode !== null || platform.signalCode !== null)) throw new Error(`${what}: aether up exited:\n${platformLog}`);
    try {
      return await fn();
    } catch (err) {
      last = err;
      await sleep(200);
    }
  }
  throw new Error(`${what}: ${String(last)}`);
}

before(async () => {
  if (skip) return;
  work = await mkdtemp(join(tmpdir(), 'aether-e2e-'));
  dataDir = join(work, 'data');
  await mkdir(dataDir);
  // Sandboxed instances may run as an unprivileged user: let them traverse to the code cache.
  await chmod(work, 0o755);
  const port = await freePort();
  platform = spawn(process.execPath, [ENTRY, 'up', '--port', String(port), '--data-dir', dataDir], {
    cwd: ROOT,
    env: { ...process.env, AETHER_ADMIN_TOKEN: TOKEN },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  platform.stdout?.on('data', (c: Buffer) => (platformLog += c.toString()));
  platform.stderr?.on('data', (c: Buffer) => (platformLog += c.toString()));
  const exited = new Promise<never>((_, rej) => platform?.once('exit', (code) => rej(new Error(`aether up exited (${code}):\n${platformLog}`))));
  const fallback = `http://127.0.0.1:${port}`;
  const ready = eventually(
    'aether up never served /healthz',
    async () => {
      // The URL `aether up` announces ("… is up at http://…"), else the port we asked for.
      const printed = /\bup at (https?:\/\/[^\s"']+)/.exec(platformLog)?.[1]?.replace(/\/+$/, '');
      const base = printed ?? fallback;
      const r = await fetch(`${base}/healthz`);
      if (!r.ok) throw new Error(`healthz ${r.status}`);
      url = base;
    },
    300,
  );
  await Promise.race([ready, exited]);
});

after(async () => {
  if (platform && platform.exitCode === null && platform.signalCode === null) {
    const gone = new Promise((r) => platform?.once('exit', r));
    platform.kill('SIGTERM');
    const t = setTimeout(() => platform?.kill('SIGKILL'), 10_000);
    await gone;
    clearTimeout(t);
  }
  if (work) await rm(work, { recursive: true, force: true });
});

const HANDLER = `
const http = require('node:http');
const fs = require('node:fs');
http.createServer((req, res) => {
  let body = '';
  req.on('data', (c) => (body += c));
  req.on('end', () => {
    console.log('got ' + req.method + ' ' + req.url);
    if (req.url === '/files') {
      res.setHeader('content-type', 'application/json');
      return res.end(JSON.stringify({ files: fs.readdirSync(__dirname).sort(), dep: require('dep') }));
    }
    if (req.url === '/fail') { res.statusCode = 500; return res.end('failed on purpose'); }
    res.setHeader('content-type', 'text/plain');
    res.end('hello ' + req.method + ' ' + req.url + ' ' + body + ' ' + process.env.GREETING);
  });
}).listen(Number(process.env.PORT || 3000));
`;

test('deploy, list, get, invoke, invocations, logs and rm against a real `aether up`', { skip, timeout: 300_000 }, async () => {
  const app = join(work, 'E2E App');
  await mkdir(join(app, 'node_modules/dep'), { recursive: true });
  await writeFile(join(app, 'handler.js'), HANDLER);
  await writeFile(join(app, 'node_modules/dep/index.js'), "module.exports = 'dep-ok';");
  await writeFile(join(app, 'secret.txt'), 'do not ship');
  await writeFile(join(app, '.aetherignore'), 'secret.txt\n*.log\n');
  await writeFile(join(app, 'debug.log'), 'noise');

  const deploy = await aether(['fn', 'deploy', app]);
  assert.equal(deploy.code, 0, deploy.err);
  assert.match(deploy.out, /created function e2e-app \(/);
  assert.ok(deploy.out.includes(`invoke: ${url}/functions/e2e-app/`), deploy.out);

  const upd = await aether(['fn', 'update', 'e2e-app', '--env', 'GREETING=hi-there']);
  assert.equal(upd.code, 0, upd.err);

  // The URL from the file `aether up` wrote into its data dir.
  const ls = await aether(['--data-dir', dataDir, 'fn', 'ls'], { AETHER_ADMIN_TOKEN: TOKEN });
  assert.equal(ls.code, 0, ls.err);
  assert.match(ls.out, /^NAME\s+ID\s+RUNTIME\s+MEMORY/);
  assert.match(ls.out, /\ne2e-app\s+\S+\s+node\s/);

  const get = await aether(['--json', 'fn', 'get', 'e2e-app']);
  assert.equal(get.code, 0, get.err);
  const rec = JSON.parse(get.out) as { name: string; id: string; code_sha256: string | null; env_vars: Record<string, string> };
  assert.equal(rec.name, 'e2e-app');
  assert.match(rec.code_sha256 ?? '', /^[0-9a-f]{64}$/);
  assert.deepEqual(rec.env_vars, { GREETING: 'hi-there' });

  const inv = await aether(['fn', 'invoke', 'e2e-app', '--data', 'payload', '--path', '/p?q=1']);
  assert.equal(inv.code, 0, `${inv.err}\n${platformLog}`);
  assert.equal(inv.out, 'hello POST /p?q=1 payload hi-there');

  const files = await aether(['fn', 'invoke', rec.id, '--path', '/files']);
  assert.equal(files.code, 0, files.err);
  const listed = JSON.parse(files.out) as { files: string[]; dep: string };
  assert.ok(listed.files.includes('handler.js') && listed.files.includes('node_modules'), String(listed.files));
  for (const left of ['secret.txt', 'debug.log', '.aetherignore']) assert.ok(!listed.files.includes(left), `${left} was shipped`);
  assert.equal(listed.dep, 'dep-ok');

  const fail = await aether(['fn', 'invoke', 'e2e-app', '--path', '/fail', '--include']);
  assert.equal(fail.code, 1);
  assert.match(fail.out, /^HTTP 500\n/);
  assert.match(fail.out, /x-aether-invocation-id: \S+/);
  assert.match(fail.out, /failed on purpose$/);
  assert.match(fail.err, /^error: e2e-app answered HTTP 500/);

  await eventually('invocations recorded', async () => {
    const r = await aether(['--json', 'fn', 'invocations', 'e2e-app', '--limit', '10']);
    assert.equal(r.code, 0, r.err);
    const rows = JSON.parse(r.out) as { status_code: number; started_at: string }[];
    assert.ok(rows.length >= 3, `only ${rows.length} invocations`);
    assert.equal(rows[0]?.status_code, 500, 'newest first');
  });
  const table = await aether(['fn', 'invocations', 'e2e-app']);
  assert.match(table.out, /^ID\s+STATUS\s+CODE\s+DURATION\s+COLD/);

  await eventually('logs show the requests', async () => {
    const r = await aether(['fn', 'logs', 'e2e-app', '--tail', '50']);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /stdout\s+got POST \/p\?q=1/);
  });

  const rm1 = await aether(['fn', 'rm', 'e2e-app']);
  assert.equal(rm1.code, 0, rm1.err);
  const gone = await aether(['fn', 'get', 'e2e-app']);
  assert.equal(gone.code, 1);
  assert.equal(gone.out, '');
  assert.match(gone.err, /^error: AETHER_ERR_FUNCTION_NOT_FOUND: [^\n]+\n$/);

  const noToken = await aether(['fn', 'ls'], { AETHER_URL: url, AETHER_DATA_DIR: join(work, 'nowhere') });
  assert.equal(noToken.code, 1);
  assert.match(noToken.err, /^error: AETHER_ERR_UNAUTHORIZED: /);
});
