import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import type { Readable } from 'node:stream';
import { ManualClock, newId, newInvocationId } from '../core/index.ts';
import { KEYS, type FunctionRecord, type InvocationRecord } from '../spec/index.ts';
import type { Store } from '../store/index.ts';
import type { BlobInfo, BlobStore } from '../blob/index.ts';
import { createSqliteStore } from '../store/sqlite.ts';
import { createFsBlobStore } from '../blob/fs.ts';
import { makeTarGz, makeZip } from '../archive/testing.ts';
import type { ArchiveLimits } from '../archive/index.ts';
import { FunctionService } from './functions.ts';
import { buildApi, type LogEntry, type LogSource } from './api.ts';

const TOKEN = 'secret-token';
const AUTH = { authorization: `Bearer ${TOKEN}` };
const JSON_H = { ...AUTH, 'content-type': 'application/json' };
const LIMITS: ArchiveLimits = { maxArchiveBytes: 256 * 1024, maxUnpackedBytes: 1024 * 1024, maxEntries: 50 };

/** Wraps a BlobStore so a test can make it fail. */
class FlakyBlobs implements BlobStore {
  readonly inner: BlobStore;
  failing = false;
  constructor(inner: BlobStore) {
    this.inner = inner;
  }
  #check(): void {
    if (this.failing) throw new Error('connect ECONNREFUSED (simulated)');
  }
  async put(key: string, body: Readable | Buffer): Promise<BlobInfo> {
    this.#check();
    return this.inner.put(key, body);
  }
  async get(key: string): Promise<Readable | undefined> {
    this.#check();
    return this.inner.get(key);
  }
  async head(key: string): Promise<BlobInfo | undefined> {
    return this.inner.head(key);
  }
  async list(prefix: string): Promise<BlobInfo[]> {
    return this.inner.list(prefix);
  }
  async delete(key: string): Promise<void> {
    this.#check();
    return this.inner.delete(key);
  }
  async close(): Promise<void> {
    return this.inner.close();
  }
}

class FakeLogs implements LogSource {
  entries: LogEntry[] = [];
  tailCalls: number[] = [];
  followers = new Set<(e: LogEntry) => void>();
  aborted = 0;
  async tail(_fnId: string, n: number): Promise<LogEntry[]> {
    this.tailCalls.push(n);
    return this.entries.slice(-n);
  }
  follow(_fnId: string, onEntry: (e: LogEntry) => void, signal: AbortSignal): void {
    this.followers.add(onEntry);
    signal.addEventListener('abort', () => {
      this.followers.delete(onEntry);
      this.aborted++;
    });
  }
  emit(e: LogEntry): void {
    this.entries.push(e);
    for (const f of this.followers) f(e);
  }
}

async function setup(t: TestContext, opts: { metricsOpen?: boolean } = {}) {
  const dir = await mkdtemp(join(tmpdir(), 'aether-api-test-'));
  const clock = new ManualClock(Date.parse('2025-01-02T03:04:05.678Z'));
  const store = createSqliteStore({ path: ':memory:', clock });
  const blobs = new FlakyBlobs(createFsBlobStore({ dir: join(dir, 'blobs') }));
  const functions = new FunctionService({ store, blobs, defaultSandbox: 'process', availableSandboxes: ['process', 'qemu'], limits: LIMITS, clock, tmpDir: dir });
  const logs = new FakeLogs();
  const app = buildApi({ functions, store, adminToken: TOKEN, logs, metricsOpen: opts.metricsOpen ?? false, limits: LIMITS });
  t.after(async () => {
    await app.close();
    await store.close();
    await blobs.close();
    await rm(dir, { recursive: true, force: true });
  });
  const create = async (body: Record<string, unknown>): Promise<FunctionRecord> => {
    const res = await app.inject({ method: 'POST', url: '/api/functions', headers: JSON_H, payload: JSON.stringify(body) });
    assert.equal(res.statusCode, 201, res.body);
    return res.json<FunctionRecord>();
  };
  /** Everything persistent: store keys and values, blob keys. */
  const state = async (): Promise<unknown> => ({
    kv: (await store.list('/aether/')).kvs.map((kv) => [kv.key, kv.value, kv.modRevision]),
    blobs: (await blobs.list('')).map((b) => b.key),
  });
  return { app, store, blobs, functions, logs, clock, create, state };
}

function errorOf(res: { statusCode: number; body: string }): { status: number; code: string; message: string } {
  const j = JSON.parse(res.body) as { error: { code: string; message: string } };
  assert.equal(typeof j.error.message, 'string');
  assert.doesNotMatch(res.body, /\n\s+at /, 'no stack trace');
  return { status: res.statusCode, code: j.error.code, message: j.error.message };
}

const handlerZip = (): Promise<Buffer> => makeZip([{ name: 'handler.js', data: 'require("http").createServer().listen(process.env.PORT)' }]);

test('healthz needs no token', async (t) => {
  const { app } = await setup(t);
  const res = await app.inject({ method: 'GET', url: '/healthz' });
  assert.equal(res.statusCode, 200);
  assert.deepEqual(res.json(), { status: 'ok' });
});

test('every /api route needs the bearer token, except openapi.json', async (t) => {
  const { app, create } = await setup(t);
  const fn = await create({ name: 'a', runtime: 'node' });
  const routes: [string, string][] = [
    ['GET', '/api/functions'],
    ['POST', '/api/functions'],
    ['GET', `/api/functions/${fn.id}`],
    ['PUT', `/api/functions/${fn.id}`],
    ['DELETE', `/api/functions/${fn.id}`],
    ['POST', `/api/functions/${fn.id}/code`],
    ['GET', `/api/functions/${fn.id}/invocations`],
    ['GET', `/api/functions/${fn.id}/logs`],
    ['GET', '/api/unknown'],
    ['GET', '/%61pi/functions'],
  ];
  for (const [method, url] of routes) {
    for (const authorization of [undefined, 'Bearer wrong', `Basic ${TOKEN}`, `Bearer ${TOKEN}x`, 'Bearer', `Bearer ${TOKEN.slice(0, -1)}`]) {
      const res = await app.inject({ method: method as 'GET', url, headers: authorization ? { authorization } : {} });
      const e = errorOf(res);
      assert.equal(e.status, 401, `${method} ${url} with ${authorization}`);
      assert.equal(e.code, 'AETHER_ERR_UNAUTHORIZED');
      assert.match(String(res.headers['www-authenticate']), /^Bearer/);
    }
  }
  // still there: the DELETE without a token did nothing
  assert.equal((await app.inject({ method: 'GET', url: `/api/functions/${fn.id}`, headers: AUTH })).statusCode, 200);
  assert.equal((await app.inject({ method: 'GET', url: '/api/functions', headers: { authorization: `bearer ${TOKEN}` } })).statusCode, 200);
  assert.equal((await app.inject({ method: 'GET', url: '/api/openapi.json' })).statusCode, 200);
});

test('metrics: open on loopback, token otherwise', async (t) => {
  const closed = await setup(t, { metricsOpen: false });
  assert.equal((await closed.app.inject({ method: 'GET', url: '/metrics' })).statusCode, 401);
  const ok = await closed.app.inject({ method: 'GET', url: '/metrics', headers: AUTH });
  assert.equal(ok.statusCode, 200);
  assert.match(ok.body, /aether_invocations_total/);
  assert.match(String(ok.headers['content-type']), /^text\/plain/);
  const open = await setup(t, { metricsOpen: true });
  assert.equal((await open.app.inject({ method: 'GET', url: '/metrics' })).statusCode, 200);
});

test('create applies upstream defaults plus ours', async (t) => {
  const { app, clock } = await setup(t);
  const res = await app.inject({ method: 'POST', url: '/api/functions', headers: JSON_H, payload: { name: 'hello', runtime: 'node' } });
  assert.equal(res.statusCode, 201);
  const fn = res.json<FunctionRecord>();
  assert.match(fn.id, /^fn-[0-9a-v]{20}$/);
  const iso = new Date(clock.now()).toISOString();
  assert.deepEqual(fn, {
    id: fn.id,
    name: 'hello',
    runtime: 'node',
    entrypoint: 'handler.js',
    code_path: null,
    code_sha256: null,
    code_size: null,
    vcpu: 1,
    memory_mb: 128,
    port: 3000,
    env_vars: {},
    timeout_ms: 30000,
    min_instances: 0,
    max_instances: 10,
    concurrency_target: 3,
    scale_down_after_s: 30,
    scale_to_zero_after_s: 300,
    sandbox: 'process',
    created_at: iso,
    updated_at: iso,
  });
  assert.match(fn.created_at, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
  const py = await app.inject({ method: 'POST', url: '/api/functions', headers: JSON_H, payload: { name: 'py', runtime: 'python', sandbox: 'qemu', env_vars: { A: '1' } } });
  assert.equal(py.json<FunctionRecord>().entrypoint, 'main.py');
  assert.equal(py.json<FunctionRecord>().sandbox, 'qemu');
  assert.deepEqual(py.json<FunctionRecord>().env_vars, { A: '1' });
});

test('create rejects bad fields with 400 naming the field, and stores nothing', async (t) => {
  const { app, state } = await setup(t);
  const before = await state();
  const base = { name: 'ok', runtime: 'node' };
  const cases: [unknown, RegExp][] = [
    [{ runtime: 'node' }, /^name: is required/],
    [{ name: 'x' }, /^runtime/],
    [{ ...base, name: 'Upper' }, /^name/],
    [{ ...base, name: '1abc' }, /^name/],
    [{ ...base, name: 'a'.repeat(64) }, /^name/],
    [{ ...base, name: '' }, /^name/],
    [{ ...base, name: 'a_b' }, /^name/],
    [{ ...base, runtime: 'go' }, /^runtime/],
    [{ ...base, entrypoint: '../x.js' }, /^entrypoint/],
    [{ ...base, entrypoint: '/abs.js' }, /^entrypoint/],
    [{ ...base, entrypoint: '' }, /^entrypoint/],
    [{ ...base, vcpu: 0 }, /^vcpu/],
    [{ ...base, vcpu: 65 }, /^vcpu/],
    [{ ...base, vcpu: 1.5 }, /^vcpu/],
    [{ ...base, vcpu: '2' }, /^vcpu/],
    [{ ...base, memory_mb: 15 }, /^memory_mb/],
    [{ ...base, memory_mb: 8193 }, /^memory_mb/],
    [{ ...base, port: 0 }, /^port/],
    [{ ...base, port: 65536 }, /^port/],
    [{ ...base, env_vars: { A: 1 } }, /^env_vars/],
    [{ ...base, env_vars: { '1A': 'x' } }, /^env_vars/],
    [{ ...base, env_vars: ['a'] }, /^env_vars/],
    [{ ...base, timeout_ms: 99 }, /^timeout_ms/],
    [{ ...base, timeout_ms: 900_001 }, /^timeout_ms/],
    [{ ...base, min_instances: -1 }, /^min_instances/],
    [{ ...base, min_instances: 11 }, /^min_instances/],
    [{ ...base, min_instances: 3, max_instances: 2 }, /^min_instances/],
    [{ ...base, max_instances: 0 }, /^max_instances/],
    [{ ...base, max_instances: 1001 }, /^max_instances/],
    [{ ...base, concurrency_target: 0 }, /^concurrency_target/],
    [{ ...base, scale_down_after_s: 0 }, /^scale_down_after_s/],
    [{ ...base, scale_to_zero_after_s: 0 }, /^scale_to_zero_after_s/],
    [{ ...base, sandbox: 'docker' }, /^sandbox/],
    [{ ...base, colour: 'blue' }, /unknown field: colour/],
    [{ ...base, id: 'fn-mine' }, /unknown field: id/],
    [{ ...base, code_path: 'x' }, /unknown field: code_path/],
    [[base], /./],
    [null, /./],
    ['a string', /./],
  ];
  for (const [body, msg] of cases) {
    const res = await app.inject({ method: 'POST', url: '/api/functions', headers: JSON_H, payload: JSON.stringify(body) });
    const e = errorOf(res);
    assert.equal(e.status, 400, JSON.stringify(body));
    assert.equal(e.code, 'AETHER_ERR_VALIDATION', JSON.stringify(body));
    assert.match(e.message, msg, JSON.stringify(body));
  }
  assert.deepEqual(await state(), before);
});

test('bad JSON, wrong content types and oversized bodies', async (t) => {
  const { app, state, create } = await setup(t);
  const fn = await create({ name: 'a', runtime: 'node' });
  const before = await state();
  const cases: [string, string, Record<string, string>, string, number, string][] = [
    ['POST', '/api/functions', JSON_H, '{"name":"b",', 400, 'AETHER_ERR_INVALID_JSON'],
    ['POST', '/api/functions', JSON_H, '', 400, 'AETHER_ERR_INVALID_JSON'],
    ['POST', '/api/functions', JSON_H, '{"__proto__":{"admin":true},"name":"b","runtime":"node"}', 400, 'AETHER_ERR_INVALID_JSON'],
    ['PUT', `/api/functions/${fn.id}`, JSON_H, 'nope', 400, 'AETHER_ERR_INVALID_JSON'],
    ['POST', '/api/functions', { ...AUTH, 'content-type': 'text/plain' }, '{"name":"b","runtime":"node"}', 415, 'AETHER_ERR_UNSUPPORTED_MEDIA_TYPE'],
    ['POST', '/api/functions', { ...AUTH, 'content-type': 'application/x-www-form-urlencoded' }, 'name=b&runtime=node', 415, 'AETHER_ERR_UNSUPPORTED_MEDIA_TYPE'],
    ['POST', '/api/functions', AUTH, '{"name":"b","runtime":"node"}', 415, 'AETHER_ERR_UNSUPPORTED_MEDIA_TYPE'],
    ['PUT', `/api/functions/${fn.id}`, { ...AUTH, 'content-type': 'text/plain' }, '{"vcpu":2}', 415, 'AETHER_ERR_UNSUPPORTED_MEDIA_TYPE'],
    ['POST', '/api/functions', JSON_H, JSON.stringify({ name: 'b', runtime: 'node', env_vars: { BIG: 'x'.repeat(1100 * 1024) } }), 413, 'AETHER_ERR_PAYLOAD_TOO_LARGE'],
  ];
  for (const [method, url, headers, payload, status, code] of cases) {
    const res = await app.inject({ method: method as 'POST', url, headers, payload });
    const e = errorOf(res);
    assert.equal(e.status, status, `${method} ${url} ${payload.slice(0, 40)}: ${res.body}`);
    assert.equal(e.code, code);
  }
  assert.deepEqual(await state(), before);
});

test('unknown routes are 404, wrong methods on known paths are 405', async (t) => {
  const { app, create } = await setup(t);
  const fn = await create({ name: 'a', runtime: 'node' });
  const r404 = errorOf(await app.inject({ method: 'GET', url: '/api/nothing', headers: AUTH }));
  assert.deepEqual([r404.status, r404.code], [404, 'AETHER_ERR_ROUTE_NOT_FOUND']);
  assert.equal(errorOf(await app.inject({ method: 'GET', url: '/nothing' })).status, 404);
  const cases: [string, string, string][] = [
    ['PATCH', `/api/functions/${fn.id}`, 'GET, HEAD, PUT, DELETE'],
    ['DELETE', '/api/functions', 'GET, HEAD, POST'],
    ['GET', `/api/functions/${fn.id}/code`, 'POST'],
    ['POST', `/api/functions/${fn.id}/invocations`, 'GET, HEAD'],
    ['PUT', '/healthz', 'GET, HEAD'],
  ];
  for (const [method, url, allow] of cases) {
    const res = await app.inject({ method: method as 'GET', url, headers: AUTH });
    const e = errorOf(res);
    assert.deepEqual([e.status, e.code], [405, 'AETHER_ERR_METHOD_NOT_ALLOWED'], `${method} ${url}`);
    assert.equal(res.headers['allow'], allow);
  }
});

test('list, get by id or name, 404 for unknown', async (t) => {
  const { app, create } = await setup(t);
  assert.deepEqual((await app.inject({ method: 'GET', url: '/api/functions', headers: AUTH })).json(), []);
  const a = await create({ name: 'alpha', runtime: 'node' });
  const b = await create({ name: 'beta', runtime: 'python' });
  const list = (await app.inject({ method: 'GET', url: '/api/functions', headers: AUTH })).json<FunctionRecord[]>();
  assert.deepEqual(list.map((f) => f.name).sort(), ['alpha', 'beta']);
  assert.deepEqual((await app.inject({ method: 'GET', url: `/api/functions/${a.id}`, headers: AUTH })).json(), a);
  assert.deepEqual((await app.inject({ method: 'GET', url: '/api/functions/beta', headers: AUTH })).json(), b);
  assert.deepEqual((await app.inject({ method: 'GET', url: '/api/functions/beta/', headers: AUTH })).json(), b);
  for (const id of ['gamma', 'fn-00000000000000000000', 'A%20B', '..%2F..%2Fetc', `${'x'.repeat(90)}`]) {
    const e = errorOf(await app.inject({ method: 'GET', url: `/api/functions/${id}`, headers: AUTH }));
    assert.deepEqual([e.status, e.code], [404, 'AETHER_ERR_FUNCTION_NOT_FOUND'], id);
  }
});

test('duplicate names are 409 and leave state unchanged', async (t) => {
  const { app, create, state } = await setup(t);
  await create({ name: 'taken', runtime: 'node' });
  const before = await state();
  const e = errorOf(await app.inject({ method: 'POST', url: '/api/functions', headers: JSON_H, payload: { name: 'taken', runtime: 'python' } }));
  assert.deepEqual([e.status, e.code], [409, 'AETHER_ERR_NAME_TAKEN']);
  assert.match(e.message, /taken/);
  assert.deepEqual(await state(), before);
});

test('concurrent creates of one name: exactly one wins', async (t) => {
  const { app } = await setup(t);
  const results = await Promise.all(
    Array.from({ length: 8 }, (_, i) => app.inject({ method: 'POST', url: '/api/functions', headers: JSON_H, payload: { name: 'race', runtime: 'node', vcpu: i + 1 } })),
  );
  assert.deepEqual(results.map((r) => r.statusCode).sort(), [201, 409, 409, 409, 409, 409, 409, 409]);
  assert.equal((await app.inject({ method: 'GET', url: '/api/functions', headers: AUTH })).json<unknown[]>().length, 1);
});

test('update: partial, env_vars replaced, rename, invariants after merge', async (t) => {
  const { app, create, state } = await setup(t);
  const fn = await create({ name: 'a', runtime: 'node', env_vars: { A: '1', B: '2' }, max_instances: 3 });
  await create({ name: 'other', runtime: 'node' });
  const put = (id: string, body: unknown) => app.inject({ method: 'PUT', url: `/api/functions/${id}`, headers: JSON_H, payload: JSON.stringify(body) });

  const r1 = await put(fn.id, { vcpu: 2, env_vars: { C: '3' } });
  assert.equal(r1.statusCode, 200);
  const u1 = r1.json<FunctionRecord>();
  assert.equal(u1.vcpu, 2);
  assert.deepEqual(u1.env_vars, { C: '3' });
  assert.equal(u1.memory_mb, 128);
  assert.equal(u1.created_at, fn.created_at);
  assert.ok(u1.updated_at > fn.updated_at, 'updated_at moves even when the clock did not');
  assert.deepEqual((await app.inject({ method: 'GET', url: `/api/functions/${fn.id}`, headers: AUTH })).json(), u1);

  // rename; the old name is free afterwards, the new one resolves
  const r2 = await put('a', { name: 'renamed' });
  assert.equal(r2.statusCode, 200);
  assert.equal(r2.json<FunctionRecord>().name, 'renamed');
  assert.equal((await app.inject({ method: 'GET', url: '/api/functions/renamed', headers: AUTH })).json<FunctionRecord>().id, fn.id);
  assert.equal((await app.inject({ method: 'GET', url: '/api/functions/a', headers: AUTH })).statusCode, 404);
  await create({ name: 'a', runtime: 'node' });

  const before = await state();
  const bad: [unknown, number, string, RegExp][] = [
    [{ name: 'other' }, 409, 'AETHER_ERR_NAME_TAKEN', /other/],
    [{ min_instances: 4 }, 400, 'AETHER_ERR_VALIDATION', /^min_instances/],
    [{ max_instances: 0 }, 400, 'AETHER_ERR_VALIDATION', /^max_instances/],
    [{ vcpu: 100 }, 400, 'AETHER_ERR_VALIDATION', /^vcpu/],
    [{ code_path: 'x' }, 400, 'AETHER_ERR_VALIDATION', /unknown field: code_path/],
    [{ id: 'fn-x' }, 400, 'AETHER_ERR_VALIDATION', /unknown field: id/],
    [{ runtime: null }, 400, 'AETHER_ERR_VALIDATION', /^runtime/],
    [[1], 400, 'AETHER_ERR_VALIDATION', /./],
  ];
  for (const [body, status, code, msg] of bad) {
    const e = errorOf(await put(fn.id, body));
    assert.deepEqual([e.status, e.code], [status, code], JSON.stringify(body));
    assert.match(e.message, msg);
  }
  const missing = errorOf(await put('nope', { vcpu: 2 }));
  assert.deepEqual([missing.status, missing.code], [404, 'AETHER_ERR_FUNCTION_NOT_FOUND']);
  assert.deepEqual(await state(), before);

  // min <= max checked after the merge: raising both at once is fine
  assert.equal((await put(fn.id, { min_instances: 5, max_instances: 6 })).statusCode, 200);
  // switching runtime moves a default entrypoint along
  assert.equal((await put(fn.id, { runtime: 'python' })).json<FunctionRecord>().entrypoint, 'main.py');
  assert.equal((await put(fn.id, { runtime: 'node', entrypoint: 'srv.js' })).json<FunctionRecord>().entrypoint, 'srv.js');
  assert.equal((await put(fn.id, { runtime: 'python' })).json<FunctionRecord>().entrypoint, 'srv.js');
});

test('concurrent updates of different fields all survive (CAS + retry)', async (t) => {
  const { app, create } = await setup(t);
  const fn = await create({ name: 'a', runtime: 'node' });
  const patches = [{ vcpu: 4 }, { memory_mb: 512 }, { port: 8080 }, { timeout_ms: 1000 }];
  const res = await Promise.all(patches.map((p) => app.inject({ method: 'PUT', url: `/api/functions/${fn.id}`, headers: JSON_H, payload: p })));
  for (const r of res) assert.equal(r.statusCode, 200, r.body);
  const final = (await app.inject({ method: 'GET', url: `/api/functions/${fn.id}`, headers: AUTH })).json<FunctionRecord>();
  assert.deepEqual([final.vcpu, final.memory_mb, final.port, final.timeout_ms], [4, 512, 8080, 1000]);
});

async function upload(app: Awaited<ReturnType<typeof setup>>['app'], id: string, body: Buffer, contentType?: string) {
  return app.inject({ method: 'POST', url: `/api/functions/${id}/code`, headers: { ...AUTH, ...(contentType ? { 'content-type': contentType } : {}) }, payload: body });
}

function multipart(field: string, data: Buffer, filename = 'code.zip'): { payload: Buffer; headers: Record<string, string> } {
  const boundary = '----aether' + Math.random().toString(16).slice(2);
  const payload = Buffer.concat([
    Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="${field}"; filename="${filename}"\r\nContent-Type: application/octet-stream\r\n\r\n`),
    data,
    Buffer.from(`\r\n--${boundary}--\r\n`),
  ]);
  return { payload, headers: { ...AUTH, 'content-type': `multipart/form-data; boundary=${boundary}` } };
}

test('upload: raw body with any content type, multipart, zip and tar.gz', async (t) => {
  const { app, create, blobs, store } = await setup(t);
  const fn = await create({ name: 'a', runtime: 'node' });
  const zip = await handlerZip();
  const { createHash } = await import('node:crypto');
  const sha = createHash('sha256').update(zip).digest('hex');

  for (const ct of ['application/octet-stream', 'application/x-www-form-urlencoded', 'application/zip', 'application/json', undefined]) {
    const res = await upload(app, fn.id, zip, ct);
    assert.equal(res.statusCode, 200, `${ct}: ${res.body}`);
    assert.deepEqual(res.json(), { message: 'code uploaded', code_path: `functions/${fn.id}/${sha}.archive`, code_sha256: sha, code_size: zip.length });
  }
  const rec = (await app.inject({ method: 'GET', url: `/api/functions/${fn.id}`, headers: AUTH })).json<FunctionRecord>();
  assert.equal(rec.code_path, `functions/${fn.id}/${sha}.archive`);
  assert.equal(rec.code_sha256, sha);
  assert.equal(rec.code_size, zip.length);
  assert.ok(rec.updated_at > fn.updated_at);
  const stored = await blobs.get(rec.code_path as string);
  assert.ok(stored);
  const chunks: Buffer[] = [];
  for await (const c of stored as AsyncIterable<Buffer>) chunks.push(c);
  assert.deepEqual(Buffer.concat(chunks), zip);

  // a new archive (tar.gz, by name) replaces the old blob
  const tgz = await makeTarGz([{ name: 'fn/handler.js', data: 'x' }]);
  const r2 = await upload(app, 'a', tgz, 'application/gzip');
  assert.equal(r2.statusCode, 200, r2.body);
  const keys = (await blobs.list(`functions/${fn.id}/`)).map((b) => b.key);
  assert.deepEqual(keys, [r2.json<{ code_path: string }>().code_path]);

  // multipart, field "file"
  const mp = multipart('file', zip);
  const r3 = await app.inject({ method: 'POST', url: `/api/functions/${fn.id}/code`, headers: mp.headers, payload: mp.payload });
  assert.equal(r3.statusCode, 200, r3.body);
  assert.equal(r3.json<{ code_sha256: string }>().code_sha256, sha);
  assert.deepEqual((await blobs.list(`functions/${fn.id}/`)).map((b) => b.key), [`functions/${fn.id}/${sha}.archive`]);
  const kv = await store.get(KEYS.function(fn.id));
  assert.equal((JSON.parse(kv?.value ?? '{}') as FunctionRecord).code_sha256, sha);
});

test('failed uploads leave the previous code and record intact', async (t) => {
  const { app, create, state, blobs } = await setup(t);
  const fn = await create({ name: 'a', runtime: 'node' });
  assert.equal((await upload(app, fn.id, await handlerZip(), 'application/octet-stream')).statusCode, 200);
  const before = await state();
  const big = Buffer.alloc(LIMITS.maxArchiveBytes + 10, 1);
  const cases: [Buffer | { payload: Buffer; headers: Record<string, string> }, number, string, RegExp?][] = [
    [Buffer.from('not an archive at all'), 400, 'AETHER_ERR_ARCHIVE_INVALID'],
    [Buffer.alloc(0), 400, 'AETHER_ERR_ARCHIVE_INVALID'],
    [(await handlerZip()).subarray(0, 40), 400, 'AETHER_ERR_ARCHIVE_INVALID'],
    [await makeZip([{ name: 'index.js', data: 'x' }]), 400, 'AETHER_ERR_ENTRYPOINT_MISSING', /handler\.js/],
    [await makeZip([{ name: 'handler.js', data: '' }, { name: 'zz/x', data: 'x' }], [['zz/x', '../x']]), 400, 'AETHER_ERR_ARCHIVE_UNSAFE'],
    [await makeTarGz([{ name: 'handler.js', data: '' }, { name: 'l', type: 'symlink', linkname: '/etc/passwd' }]), 400, 'AETHER_ERR_ARCHIVE_UNSAFE'],
    [await makeZip([{ name: 'handler.js', data: Buffer.alloc(LIMITS.maxUnpackedBytes + 1) }]), 400, 'AETHER_ERR_ARCHIVE_TOO_LARGE'],
    [big, 413, 'AETHER_ERR_PAYLOAD_TOO_LARGE'],
    [multipart('file', big), 413, 'AETHER_ERR_PAYLOAD_TOO_LARGE'],
    [multipart('archive', await handlerZip()), 400, 'AETHER_ERR_VALIDATION', /file/],
    [multipart('file', Buffer.from('garbage')), 400, 'AETHER_ERR_ARCHIVE_INVALID'],
  ];
  for (const [body, status, code, msg] of cases) {
    const res = Buffer.isBuffer(body)
      ? await upload(app, fn.id, body, 'application/octet-stream')
      : await app.inject({ method: 'POST', url: `/api/functions/${fn.id}/code`, headers: body.headers, payload: body.payload });
    const e = errorOf(res);
    assert.deepEqual([e.status, e.code], [status, code], res.body);
    if (msg) assert.match(e.message, msg);
    assert.deepEqual(await state(), before);
  }
  // a raw body without content-length (chunked) over the limit is cut off by the meter
  const { Readable } = await import('node:stream');
  const chunked = await app.inject({ method: 'POST', url: `/api/functions/${fn.id}/code`, headers: { ...AUTH, 'content-type': 'application/octet-stream' }, payload: Readable.from([big.subarray(0, 100_000), big.subarray(100_000)]) });
  assert.equal(errorOf(chunked).status, 413);
  assert.deepEqual(await state(), before);

  // the blob store failing is a 503 and changes nothing
  blobs.failing = true;
  const down = errorOf(await upload(app, fn.id, await makeZip([{ name: 'handler.js', data: 'new' }]), 'application/octet-stream'));
  assert.deepEqual([down.status, down.code], [503, 'AETHER_ERR_UNAVAILABLE']);
  blobs.failing = false;
  assert.deepEqual(await state(), before);

  const missing = errorOf(await upload(app, 'nope', await handlerZip(), 'application/octet-stream'));
  assert.deepEqual([missing.status, missing.code], [404, 'AETHER_ERR_FUNCTION_NOT_FOUND']);
});

test('upload checks the entrypoint of the function (python: main.py)', async (t) => {
  const { app, create } = await setup(t);
  const fn = await create({ name: 'py', runtime: 'python' });
  const e = errorOf(await upload(app, fn.id, await handlerZip(), 'application/octet-stream'));
  assert.equal(e.code, 'AETHER_ERR_ENTRYPOINT_MISSING');
  assert.match(e.message, /main\.py/);
  const ok = await upload(app, fn.id, await makeZip([{ name: 'myfn/', dir: true }, { name: 'myfn/main.py', data: 'print(1)' }]), 'application/octet-stream');
  assert.equal(ok.statusCode, 200, ok.body);
});

test('delete removes record, name, invocations and code blobs', async (t) => {
  const { app, create, store, blobs } = await setup(t);
  const fn = await create({ name: 'a', runtime: 'node' });
  const keep = await create({ name: 'b', runtime: 'node' });
  assert.equal((await upload(app, fn.id, await handlerZip(), 'application/octet-stream')).statusCode, 200);
  assert.equal((await upload(app, keep.id, await handlerZip(), 'application/octet-stream')).statusCode, 200);
  await store.put(KEYS.invocation(fn.id, newId('inv')), JSON.stringify({ id: 'x' }));
  await store.put(KEYS.invocation(keep.id, newId('inv')), JSON.stringify({ id: 'y' }));

  const res = await app.inject({ method: 'DELETE', url: '/api/functions/a', headers: AUTH });
  assert.equal(res.statusCode, 204);
  assert.equal(res.body, '');
  assert.equal((await app.inject({ method: 'GET', url: `/api/functions/${fn.id}`, headers: AUTH })).statusCode, 404);
  assert.equal(await store.get(KEYS.functionName('a')), undefined);
  assert.equal((await store.list(KEYS.invocationsOf(fn.id))).kvs.length, 0);
  assert.deepEqual(await blobs.list(`functions/${fn.id}/`), []);
  // the other function is untouched
  assert.equal((await store.list(KEYS.invocationsOf(keep.id))).kvs.length, 1);
  assert.equal((await blobs.list(`functions/${keep.id}/`)).length, 1);
  // the name can be reused
  await create({ name: 'a', runtime: 'python' });
  const again = errorOf(await app.inject({ method: 'DELETE', url: `/api/functions/${fn.id}`, headers: AUTH }));
  assert.deepEqual([again.status, again.code], [404, 'AETHER_ERR_FUNCTION_NOT_FOUND']);
});

test('invocations: newest first, limit', async (t) => {
  const { app, create, store, clock } = await setup(t);
  const fn = await create({ name: 'a', runtime: 'node' });
  const ids: string[] = [];
  for (let i = 0; i < 5; i++) {
    const id = newInvocationId(clock.now() + i * 1000);
    ids.push(id);
    const rec: InvocationRecord = { id, function_id: fn.id, status: 'success', status_code: 200, duration_ms: i, cold_start: i === 0, instance_id: 'inst-1', started_at: new Date(clock.now() + i * 1000).toISOString(), error: null };
    await store.put(KEYS.invocation(fn.id, id), JSON.stringify(rec));
  }
  const all = (await app.inject({ method: 'GET', url: `/api/functions/${fn.id}/invocations`, headers: AUTH })).json<InvocationRecord[]>();
  assert.deepEqual(
    all.map((r) => r.id),
    [...ids].reverse(),
  );
  assert.equal(all[4]?.cold_start, true);
  const two = (await app.inject({ method: 'GET', url: '/api/functions/a/invocations?limit=2', headers: AUTH })).json<InvocationRecord[]>();
  assert.deepEqual(
    two.map((r) => r.id),
    [ids[4], ids[3]],
  );
  assert.equal((await app.inject({ method: 'GET', url: '/api/functions/a/invocations?limit=5000', headers: AUTH })).json<unknown[]>().length, 5);
  for (const q of ['limit=0', 'limit=abc', 'limit=-1', 'limit=1.5', 'limit=1&limit=2']) {
    const e = errorOf(await app.inject({ method: 'GET', url: `/api/functions/a/invocations?${q}`, headers: AUTH }));
    assert.deepEqual([e.status, e.code], [400, 'AETHER_ERR_VALIDATION'], q);
    assert.match(e.message, /^limit/);
  }
  assert.equal((await app.inject({ method: 'GET', url: '/api/functions/nope/invocations', headers: AUTH })).statusCode, 404);
  assert.deepEqual((await app.inject({ method: 'GET', url: '/api/functions/a/invocations', headers: AUTH })).statusCode, 200);
});

test('logs: NDJSON tail with ISO times', async (t) => {
  const { app, create, logs } = await setup(t);
  const fn = await create({ name: 'a', runtime: 'node' });
  for (let i = 0; i < 150; i++) logs.entries.push({ time: Date.UTC(2025, 0, 1, 0, 0, i % 60), instance_id: 'inst-1', stream: i % 2 ? 'stderr' : 'stdout', text: `line ${i}` });
  const res = await app.inject({ method: 'GET', url: `/api/functions/${fn.id}/logs`, headers: AUTH });
  assert.equal(res.statusCode, 200);
  assert.match(String(res.headers['content-type']), /^application\/x-ndjson/);
  const lines = res.body.trimEnd().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
  assert.equal(lines.length, 100);
  assert.deepEqual(logs.tailCalls, [100]);
  assert.deepEqual(lines[99], { time: '2025-01-01T00:00:29.000Z', instance_id: 'inst-1', stream: 'stderr', text: 'line 149' });
  const two = await app.inject({ method: 'GET', url: '/api/functions/a/logs?tail=2', headers: AUTH });
  assert.equal(two.body.trimEnd().split('\n').length, 2);
  assert.equal((await app.inject({ method: 'GET', url: '/api/functions/a/logs?tail=0', headers: AUTH })).body, '');
  assert.equal(errorOf(await app.inject({ method: 'GET', url: '/api/functions/a/logs?tail=x', headers: AUTH })).code, 'AETHER_ERR_VALIDATION');
  assert.equal(errorOf(await app.inject({ method: 'GET', url: '/api/functions/a/logs?follow=maybe', headers: AUTH })).code, 'AETHER_ERR_VALIDATION');
  assert.equal(errorOf(await app.inject({ method: 'GET', url: '/api/functions/nope/logs', headers: AUTH })).code, 'AETHER_ERR_FUNCTION_NOT_FOUND');
});

test('an unexpected failure is a 500 without details', async (t) => {
  const { app, create, logs } = await setup(t);
  await create({ name: 'a', runtime: 'node' });
  logs.tail = async () => {
    throw new Error('secret internal detail at /srv/x.ts:12');
  };
  const res = await app.inject({ method: 'GET', url: '/api/functions/a/logs', headers: AUTH });
  const e = errorOf(res);
  assert.deepEqual([e.status, e.code, e.message], [500, 'AETHER_ERR_INTERNAL', 'internal error']);
  assert.doesNotMatch(res.body, /secret/);
  // The id the server log files the details under.
  assert.match(String(res.headers['x-aether-request-id']), /^req-[0-9a-v]{20}$/);
});

test('a store outage is a 503', async (t) => {
  const { app, store } = await setup(t);
  const broken = store as Store & { list: Store['list'] };
  broken.list = async () => {
    throw new Error('database is locked');
  };
  const e = errorOf(await app.inject({ method: 'GET', url: '/api/functions', headers: AUTH }));
  assert.deepEqual([e.status, e.code], [503, 'AETHER_ERR_UNAVAILABLE']);
});

test('openapi.json is OpenAPI 3.1 built from the zod schemas', async (t) => {
  const { app } = await setup(t);
  const res = await app.inject({ method: 'GET', url: '/api/openapi.json' });
  assert.equal(res.statusCode, 200);
  const doc = res.json<{ openapi: string; paths: Record<string, Record<string, unknown>>; components: { schemas: Record<string, { properties: Record<string, Record<string, unknown>>; required?: string[] }> } }>();
  assert.equal(doc.openapi, '3.1.0');
  for (const p of ['/api/functions', '/api/functions/{id}', '/api/functions/{id}/code', '/api/functions/{id}/invocations', '/api/functions/{id}/logs', '/healthz', '/metrics']) {
    assert.ok(doc.paths[p], p);
  }
  const create = doc.components.schemas['CreateFunction'];
  assert.equal(create?.properties['name']?.['pattern'], '^[a-z][a-z0-9-]{0,62}$');
  assert.equal(create?.properties['vcpu']?.['default'], 1);
  assert.equal(create?.properties['memory_mb']?.['maximum'], 8192);
  assert.deepEqual(create?.required?.sort(), ['name', 'runtime']);
  assert.equal((create as unknown as { additionalProperties: unknown }).additionalProperties, false);
  assert.ok(doc.components.schemas['Function']?.properties['code_sha256']);
});

test('over a real socket: create, raw upload, log follow until disconnect', async (t) => {
  const { app, logs } = await setup(t);
  await app.listen({ port: 0, host: '127.0.0.1' });
  const base = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
  const created = await fetch(`${base}/api/functions`, { method: 'POST', headers: JSON_H, body: JSON.stringify({ name: 'sock', runtime: 'node' }) });
  assert.equal(created.status, 201);
  const fn = (await created.json()) as FunctionRecord;
  // like curl --data-binary @code.zip (form-urlencoded content type)
  const up = await fetch(`${base}/api/functions/sock/code`, { method: 'POST', headers: { ...AUTH, 'content-type': 'application/x-www-form-urlencoded' }, body: await handlerZip() });
  assert.equal(up.status, 200);
  assert.equal(((await up.json()) as { message: string }).message, 'code uploaded');
  // an oversized raw body over the socket gets its 413
  const tooBig = await fetch(`${base}/api/functions/sock/code`, { method: 'POST', headers: { ...AUTH, 'content-type': 'application/octet-stream' }, body: Buffer.alloc(LIMITS.maxArchiveBytes + 1) });
  assert.equal(tooBig.status, 413);
  assert.equal(((await tooBig.json()) as { error: { code: string } }).error.code, 'AETHER_ERR_PAYLOAD_TOO_LARGE');

  logs.entries.push({ time: 0, instance_id: 'i1', stream: 'stdout', text: 'old' });
  const ac = new AbortController();
  const res = await fetch(`${base}/api/functions/${fn.id}/logs?follow=true&tail=5`, { headers: AUTH, signal: ac.signal });
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type') ?? '', /application\/x-ndjson/);
  const reader = (res.body as ReadableStream<Uint8Array>).getReader();
  const dec = new TextDecoder();
  let buf = '';
  const nextLine = async (): Promise<Record<string, unknown>> => {
    while (!buf.includes('\n')) {
      const { value, done } = await reader.read();
      if (done) throw new Error('stream ended');
      buf += dec.decode(value, { stream: true });
    }
    const i = buf.indexOf('\n');
    const line = buf.slice(0, i);
    buf = buf.slice(i + 1);
    return JSON.parse(line) as Record<string, unknown>;
  };
  assert.equal((await nextLine())['text'], 'old');
  assert.equal(logs.followers.size, 1);
  logs.emit({ time: 1000, instance_id: 'i1', stream: 'stderr', text: 'live' });
  assert.deepEqual(await nextLine(), { time: '1970-01-01T00:00:01.000Z', instance_id: 'i1', stream: 'stderr', text: 'live' });
  ac.abort();
  await reader.cancel().catch(() => undefined);
  // the server notices the disconnect and stops following
  for (let i = 0; i < 200 && logs.aborted === 0; i++) await new Promise((r) => setTimeout(r, 10));
  assert.equal(logs.aborted, 1);
  assert.equal(logs.followers.size, 0);
});
