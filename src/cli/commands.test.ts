import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command } from 'commander';
import { addGlobalOptions, registerClientCommands, registerDoctor } from './index.ts';
import type { HostProbe } from './index.ts';
import { capturingIo, type CliRun } from './testing.ts';

const TOKEN = 't0ken';

/** In-memory stand-in for the gateway API: just enough state for the commands under test. */
const fns = new Map<string, Record<string, unknown>>();
const requests: { method: string; path: string; body: Buffer; contentType: string | undefined }[] = [];
let server: Server;
let url: string;
let nextId = 1;

function json(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}

function find(ref: string): Record<string, unknown> | undefined {
  return fns.get(ref) ?? [...fns.values()].find((f) => f.name === ref);
}

/** What GET /api/deploy answers: as the gateway does before any deployer has run. */
let deployStatus: Record<string, unknown> = { revision: null, ok: true, errors: [], warnings: [], unplaced: [], changes: [], source: null, at: null };

async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  const body = Buffer.concat(chunks);
  const u = new URL(req.url ?? '/', 'http://x');
  const parts = u.pathname.split('/').filter(Boolean).map(decodeURIComponent);
  requests.push({ method: req.method ?? '', path: u.pathname + u.search, body, contentType: req.headers['content-type'] });

  if (parts[0] === 'functions') {
    const f = find(parts[1] ?? '');
    if (!f) return json(res, 404, { error: { code: 'AETHER_ERR_FUNCTION_NOT_FOUND', message: `no such function "${parts[1]}"` } });
    const status = Number(req.headers['x-want-status'] ?? 200);
    res.writeHead(status, { 'x-aether-invocation-id': 'inv-9', 'x-aether-cold-start': 'false' });
    res.end(`${req.method} /${parts.slice(2).join('/')} ${body.toString()}`);
    return;
  }
  if (req.headers.authorization !== `Bearer ${TOKEN}`) return json(res, 401, { error: { code: 'AETHER_ERR_UNAUTHORIZED', message: 'missing or wrong bearer token' } });
  // A platform with no node yet and nothing placed.
  if (parts[1] === 'nodes') return json(res, 200, []);
  if (parts[1] === 'deploy' && parts[2] === 'assignments') return json(res, 200, {});
  if (parts[1] === 'deploy') return req.method === 'POST' ? json(res, 202, { status: 'accepted' }) : json(res, 200, deployStatus);
  const ref = parts[2];
  if (parts.length === 2 && req.method === 'POST') {
    const input = JSON.parse(body.toString()) as Record<string, unknown>;
    const rec = { id: `fn-${nextId++}`, memory_mb: 128, min_instances: 0, max_instances: 10, env_vars: {}, code_size: null, updated_at: new Date(0).toISOString(), ...input };
    fns.set(rec.id, rec);
    return json(res, 201, rec);
  }
  if (parts.length === 2) return json(res, 200, [...fns.values()]);
  const f = find(ref ?? '');
  if (!f) return json(res, 404, { error: { code: 'AETHER_ERR_FUNCTION_NOT_FOUND', message: `no such function "${ref}"` } });
  if (parts.length === 3 && req.method === 'GET') return json(res, 200, f);
  if (parts.length === 3 && req.method === 'PUT') {
    Object.assign(f, JSON.parse(body.toString()));
    return json(res, 200, f);
  }
  if (parts.length === 3 && req.method === 'DELETE') {
    fns.delete(f.id as string);
    res.writeHead(204).end();
    return;
  }
  if (parts[3] === 'code') {
    // The real server checks the archive against the function's entrypoint.
    if (String(f.name).startsWith('reject-')) return json(res, 400, { error: { code: 'AETHER_ERR_ENTRYPOINT_MISSING', message: 'archive does not contain the entrypoint handler.js' } });
    f.code_size = body.length;
    return json(res, 200, { message: 'ok', code_path: 'x', code_sha256: 'ab'.repeat(32), code_size: body.length });
  }
  if (parts[3] === 'logs') {
    res.writeHead(200, { 'content-type': 'application/x-ndjson' });
    res.end(`${JSON.stringify({ time: 0, instance_id: 'i-1', stream: 'stdout', text: 'hello log' })}\n`);
    return;
  }
  return json(res, 404, { error: { code: 'AETHER_ERR_ROUTE_NOT_FOUND', message: 'no such route' } });
}

before(async () => {
  server = createServer((req, res) => void handle(req, res).catch((err: unknown) => res.destroy(err as Error)));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

after(async () => {
  server.closeAllConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));
});

type Run = CliRun;

const probe: HostProbe = { root: true, namespaces: true, cgroups: 'v1', kvm: false, qemu: true, firecracker: false, isolation: 'namespaces+cgroups', notes: ['no /dev/kvm: qemu uses TCG'],
  sandboxes: [{ kind: 'process', ok: true, detail: 'namespaces+cgroups' }, { kind: 'qemu', ok: true, detail: 'microvm, TCG' }, { kind: 'firecracker', ok: false, detail: 'no usable /dev/kvm' }],
};

/** Run the CLI in-process, as src/bin wires it, against the stand-in server. */
async function cli(args: string[], opts: { url?: string; env?: NodeJS.ProcessEnv } = {}): Promise<Run> {
  const r: Run = { out: '', err: '', code: 0 };
  const io = capturingIo(r);
  const program = addGlobalOptions(new Command('aether')).exitOverride();
  const now = Date.parse('1970-01-01T00:05:00Z');
  registerClientCommands(program, { io, env: opts.env ?? { AETHER_URL: opts.url ?? url, AETHER_ADMIN_TOKEN: TOKEN }, now: () => now });
  registerDoctor(program, { io, env: {}, probe: async () => ({ ...probe, extra: 1 }) as HostProbe });
  await program.parseAsync(args, { from: 'user' });
  return r;
}

test('create sends --env pairs and typed numbers; ls prints a table or JSON', async () => {
  const r = await cli(['fn', 'create', 'hello', '--env', 'A=1', '--env', 'B=two=2', '--memory', '256']);
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /^created function hello \(fn-\d+\)\n$/);
  const sent = JSON.parse(requests.at(-1)?.body.toString() ?? '') as Record<string, unknown>;
  assert.deepEqual(sent, { name: 'hello', runtime: 'node', memory_mb: 256, env_vars: { A: '1', B: 'two=2' } });

  const ls = await cli(['fn', 'ls']);
  assert.match(ls.out, /^NAME\s+ID\s+RUNTIME\s+MEMORY\s+SCALE\s+CODE\s+UPDATED\n/);
  assert.match(ls.out, /\nhello\s+fn-\d+\s+node\s+256MB\s+0-10\s+-\s+5m ago\n/);
  const lsJson = await cli(['--json', 'fn', 'ls']);
  assert.deepEqual((JSON.parse(lsJson.out) as { name: string }[]).map((f) => f.name), ['hello']);
});

test('update merges --env with the stored variables and removes --unset-env', async () => {
  await cli(['fn', 'create', 'envy', '--env', 'KEEP=1', '--env', 'DROP=2']);
  const r = await cli(['fn', 'update', 'envy', '--env', 'NEW=3', '--unset-env', 'DROP', '--name', 'envy2']);
  assert.equal(r.code, 0, r.err);
  const put = requests.filter((q) => q.method === 'PUT').at(-1);
  assert.deepEqual(JSON.parse(put?.body.toString() ?? ''), { name: 'envy2', env_vars: { KEEP: '1', NEW: '3' } });
  assert.match(r.out, /^updated function envy2 /);
  const nothing = await cli(['fn', 'update', 'envy2']);
  assert.equal(nothing.code, 1);
  assert.match(nothing.err, /^error: AETHER_ERR_VALIDATION: nothing to change/);
});

test('errors: one stderr line with the code, exit code 1, nothing on stdout', async () => {
  const r = await cli(['fn', 'get', 'nope']);
  assert.equal(r.code, 1);
  assert.equal(r.out, '');
  assert.equal(r.err, 'error: AETHER_ERR_FUNCTION_NOT_FOUND: no such function "nope"\n');

  const down = await cli(['fn', 'ls'], { url: 'http://127.0.0.1:1' });
  assert.equal(down.code, 1);
  assert.match(down.err, /^error: ECONNREFUSED: cannot reach http:\/\/127\.0\.0\.1:1: [^\n]* \(URL from AETHER_URL; is `aether up` running\?\)\n$/);

  // Run outside the directory of `aether up` (no URL file, no token): the error says where to look.
  const noDir = join(tmpdir(), 'aether-no-such-dir');
  const noToken = await cli(['--data-dir', noDir, 'fn', 'ls'], { env: { AETHER_URL: url } });
  assert.equal(noToken.code, 1);
  assert.equal(noToken.err, `error: AETHER_ERR_UNAUTHORIZED: no admin token: none in ${noDir}/admin.token, AETHER_ADMIN_TOKEN or --token (run this in the directory \`aether up\` runs in, or pass --data-dir <its .aether>)\n`);
  // A wrong token is the server's answer as is.
  const wrong = await cli(['fn', 'ls'], { env: { AETHER_URL: url, AETHER_ADMIN_TOKEN: 'wrong' } });
  assert.equal(wrong.err, 'error: AETHER_ERR_UNAUTHORIZED: missing or wrong bearer token\n');
});

test('deploy creates the missing function from the directory name and uploads a zip', async () => {
  const parent = await mkdtemp(join(tmpdir(), 'aether-deploy-'));
  const dir = join(parent, 'My_Py.Fn');
  await mkdir(dir);
  await writeFile(join(dir, 'main.py'), 'print(1)');
  try {
    const r = await cli(['fn', 'deploy', dir]);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /^created function my-py-fn \(fn-\d+, python\)\n/);
    assert.match(r.out, new RegExp(`invoke: ${url}/functions/my-py-fn/\\n$`));
    const upload = requests.at(-1);
    assert.match(upload?.path ?? '', /^\/api\/functions\/fn-\d+\/code$/);
    assert.equal(upload?.contentType, 'application/zip');
    assert.equal(upload?.body.subarray(0, 2).toString(), 'PK');

    // Second deploy: no create, only the upload (and an explicit --entrypoint update).
    const before = requests.length;
    const again = await cli(['--json', 'fn', 'deploy', dir, '--entrypoint', 'main.py']);
    const out = JSON.parse(again.out) as { created: boolean; files: number };
    assert.equal(out.created, false);
    assert.equal(out.files, 1);
    assert.deepEqual(requests.slice(before).map((q) => q.method), ['GET', 'PUT', 'POST']);
  } finally {
    await rm(parent, { recursive: true, force: true });
  }
});

test('deploy without an entrypoint creates nothing and hints at --entrypoint', async () => {
  const parent = await mkdtemp(join(tmpdir(), 'aether-deploy-'));
  try {
    const dir = join(parent, 'no-entry');
    await mkdir(dir);
    await writeFile(join(dir, 'app.js'), 'console.log(1)');
    const before = requests.length;
    const r = await cli(['fn', 'deploy', dir]);
    assert.equal(r.code, 1);
    assert.match(r.err, /^error: AETHER_ERR_VALIDATION: .*no handler\.js to run.*--entrypoint <path>/);
    assert.ok(!requests.slice(before).some((q) => q.method === 'POST'), 'nothing created');
    assert.equal(find('no-entry'), undefined);
    // With the hint followed, it deploys.
    const ok = await cli(['fn', 'deploy', dir, '--entrypoint', './app.js']);
    assert.equal(ok.code, 0, ok.err);
    assert.equal(find('no-entry')?.entrypoint, './app.js');

    // The server refusing the code of a function the deploy just created: that function is removed.
    const refused = join(parent, 'reject-me');
    await mkdir(refused);
    await writeFile(join(refused, 'handler.js'), 'x');
    const r2 = await cli(['fn', 'deploy', refused]);
    assert.equal(r2.code, 1);
    assert.equal(r2.err, 'error: AETHER_ERR_ENTRYPOINT_MISSING: archive does not contain the entrypoint handler.js (name the file to run with --entrypoint <path>)\n');
    assert.equal(find('reject-me'), undefined, 'the new function was deleted');
  } finally {
    await rm(parent, { recursive: true, force: true });
  }
});

test('invoke: --data @file, -H, --include; exit code 1 on >= 400', async () => {
  await cli(['fn', 'create', 'echo']);
  const dir = await mkdtemp(join(tmpdir(), 'aether-inv-'));
  try {
    await writeFile(join(dir, 'b.txt'), 'file body');
    const r = await cli(['fn', 'invoke', 'echo', '--data', `@${join(dir, 'b.txt')}`, '--path', '/x/y']);
    assert.equal(r.code, 0, r.err);
    assert.equal(r.out, 'POST /x/y file body');

    const bad = await cli(['fn', 'invoke', 'echo', '-X', 'GET', '-H', 'x-want-status: 503', '--include']);
    assert.equal(bad.code, 1);
    assert.match(bad.out, /^HTTP 503\n/);
    assert.match(bad.out, /\nx-aether-invocation-id: inv-9\n/);
    assert.match(bad.out, /\n\nGET \/ $/);
    assert.equal(bad.err, 'error: echo answered HTTP 503 (invocation inv-9)\n');

    // The platform's own error (here: no such function): its code on the error line, the body ends with a newline.
    const missing = await cli(['fn', 'invoke', 'nope']);
    assert.equal(missing.code, 1);
    assert.equal(missing.out, '{"error":{"code":"AETHER_ERR_FUNCTION_NOT_FOUND","message":"no such function \\"nope\\""}}\n');
    assert.equal(missing.err, 'error: AETHER_ERR_FUNCTION_NOT_FOUND: no such function "nope" (nope answered HTTP 404)\n');
    const json = await cli(['--json', 'fn', 'invoke', 'nope']);
    assert.equal((JSON.parse(json.out) as { status: number }).status, 404);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('logs prints formatted lines; rm deletes', async () => {
  await cli(['fn', 'create', 'gone']);
  const logs = await cli(['fn', 'logs', 'gone', '--tail', '5']);
  assert.equal(logs.out, '1970-01-01T00:00:00.000Z i-1 stdout hello log\n');
  assert.match(requests.at(-1)?.path ?? '', /\/logs\?tail=5$/);
  const r = await cli(['fn', 'rm', 'gone']);
  assert.equal(r.out, 'deleted function gone\n');
  assert.equal((await cli(['fn', 'get', 'gone'])).code, 1);
});

test('doctor --json prints exactly the documented object; the human form is a checklist', async () => {
  const j = await cli(['doctor', '--json']);
  assert.equal(
    j.out,
    '{"root":true,"namespaces":true,"cgroups":"v1","kvm":false,"qemu":true,"firecracker":false,"isolation":"namespaces+cgroups",' +
      '"sandboxes":[{"kind":"process","ok":true,"detail":"namespaces+cgroups"},{"kind":"qemu","ok":true,"detail":"microvm, TCG"},{"kind":"firecracker","ok":false,"detail":"no usable /dev/kvm"}],' +
      '"notes":["no /dev/kvm: qemu uses TCG"]}\n',
  );
  const h = await cli(['doctor']);
  assert.match(h.out, /^\[ok\] running as root\n/);
  assert.match(h.out, /\n\[--\] \/dev\/kvm\n/);
  assert.match(h.out, /\nisolation: namespaces\+cgroups\n/);
  assert.match(h.out, /\n {2}\[--\] firecracker: no usable \/dev\/kvm\n/);
  assert.match(h.out, /\n {2}- no \/dev\/kvm: qemu uses TCG\n$/);
});

test('aether deploy: says when no deploy has ever run (no deployer), else the last result', async () => {
  const none = await cli(['deploy']);
  assert.equal(none.code, 0, none.err);
  assert.match(none.out, /^deploy requested; no deploy has run yet: services come from a deployer \(`aether up --source <dir\|git-url>`, or `aether deployer`\)\n$/);
  deployStatus = { ...deployStatus, revision: 'abc123', at: new Date(0).toISOString(), source: 'dir ./specs' };
  const last = await cli(['deploy']);
  assert.equal(last.out, 'deploy requested; last result: revision abc123 ok\n');
  const refused = await cli(['deploy', './specs']);
  assert.equal(refused.code, 1);
  assert.match(refused.err, /^error: AETHER_ERR_VALIDATION: the platform deploys from its --source; run `aether deploy <source> --dry-run` to preview/);
});

test('aether deploy --dry-run: with no platform reachable it checks the specs only and says what it could not compare', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'aether-specs-'));
  try {
    await mkdir(join(dir, 'services'));
    await writeFile(join(dir, 'defaults.yaml'), 'sandbox: process\nmemory_mb: 128\n');
    await writeFile(join(dir, 'services', 'web.yaml'), 'name: web\nimage: /img/web\nnode_type: general\ncommand: [/bin/httpd]\n');
    // A port nobody listens on.
    const closed = createServer();
    await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
    const port = (closed.address() as AddressInfo).port;
    await new Promise<void>((r) => closed.close(() => r()));
    const offline = `http://127.0.0.1:${port}`;

    const r = await cli(['deploy', dir, '--dry-run'], { url: offline });
    assert.equal(r.code, 0, r.err);
    const lines = r.out.split('\n');
    assert.match(lines[0] ?? '', /^revision \S+$/);
    assert.equal(lines[1], 'valid: 1 service (web)');
    assert.match(lines[2] ?? '', new RegExp(`^not compared with the platform: ECONNREFUSED: cannot reach ${offline}.*is \`aether up\` running\\?\\)$`));
    assert.match(lines[3] ?? '', /^what would start, stop or move is known only against a running platform/);
    assert.doesNotMatch(r.out, /no changes|pending/, 'no plan made up against no nodes');
    const j = await cli(['--json', 'deploy', dir, '--dry-run'], { url: offline });
    assert.deepEqual({ ...(JSON.parse(j.out) as Record<string, unknown>), revision: 'x', unreachable: 'x' }, { revision: 'x', offline: true, unreachable: 'x', ok: true, errors: [], warnings: [], services: ['web'] });

    // Invalid specs are refused offline too, exit 1.
    await writeFile(join(dir, 'services', 'bad.yaml'), 'name: bad\nmemory_mb: lots\n');
    const bad = await cli(['deploy', dir, '--dry-run'], { url: offline });
    assert.equal(bad.code, 1);
    assert.match(bad.out, /^revision \S+\nrefused: nothing would change\n.*bad\.yaml/);
    await rm(join(dir, 'services', 'bad.yaml'));

    // Reachable but no node yet: the plan says nothing moves and why the service waits.
    const none = await cli(['deploy', dir, '--dry-run']);
    assert.equal(none.code, 0, none.err);
    assert.match(none.out, /^revision \S+\nnothing would start, stop or move\npending web {2}\(no live node\)\n$/);

    // Reachable with a wrong token: the coded error, not a silent offline check.
    const denied = await cli(['deploy', dir, '--dry-run'], { env: { AETHER_URL: url, AETHER_ADMIN_TOKEN: 'wrong' } });
    assert.equal(denied.code, 1);
    assert.match(denied.err, /^error: AETHER_ERR_UNAUTHORIZED: /);
    assert.equal(denied.out, '');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
