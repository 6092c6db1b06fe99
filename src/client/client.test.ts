import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AetherClient, ClientError, resolveConnection } from './index.ts';
import type { LogEntry } from './index.ts';

const TOKEN = 'secret-token';

interface Seen {
  method: string;
  url: string;
  auth: string | undefined;
  contentType: string | undefined;
  body: Buffer;
}

/** A stand-in for the gateway speaking the documented API for the routes exercised here. */
let server: Server;
let base: string;
const seen: Seen[] = [];
let releaseFollow: (() => void) | undefined;

function send(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  res.writeHead(status, { 'content-type': 'application/json', ...headers });
  res.end(JSON.stringify(body));
}

async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  const body = Buffer.concat(chunks);
  seen.push({ method: req.method ?? '', url: req.url ?? '', auth: req.headers.authorization, contentType: req.headers['content-type'], body });
  const url = new URL(req.url ?? '/', 'http://x');
  const p = url.pathname;

  if (p === '/healthz') return send(res, 200, { status: 'ok' });
  if (p.startsWith('/functions/')) {
    if (p.startsWith('/functions/broken/')) {
      res.writeHead(502, { 'content-type': 'text/plain', 'x-aether-invocation-id': 'inv-2' });
      res.end('bad gateway\n');
      return;
    }
    res.writeHead(201, { 'content-type': 'text/plain', 'x-aether-invocation-id': 'inv-1', 'x-aether-cold-start': 'true', 'x-echo': String(req.headers['x-echo']) });
    res.end(`${req.method} ${p}${url.search} ${body.toString()}`);
    return;
  }
  if (p === '/plain-error/api/functions') {
    res.writeHead(500, { 'content-type': 'text/html' });
    res.end('<html>\nInternal Server Error</html>');
    return;
  }
  if (!p.startsWith('/api/')) return send(res, 404, { error: { code: 'AETHER_ERR_ROUTE_NOT_FOUND', message: 'no such route' } });
  if (req.headers.authorization !== `Bearer ${TOKEN}`) {
    return send(res, 401, { error: { code: 'AETHER_ERR_UNAUTHORIZED', message: 'missing or wrong bearer token' } });
  }
  if (p === '/api/functions' && req.method === 'POST') {
    const input = JSON.parse(body.toString()) as { name: string };
    return send(res, 201, { id: 'fn-1', name: input.name, runtime: 'node' });
  }
  if (p === '/api/functions' && req.method === 'GET') return send(res, 200, [{ id: 'fn-1', name: 'hello' }]);
  if (p === '/api/functions/nope') return send(res, 404, { error: { code: 'AETHER_ERR_FUNCTION_NOT_FOUND', message: 'no such function "nope"' } });
  if (p === '/api/functions/hello' && req.method === 'DELETE') {
    res.writeHead(204);
    res.end();
    return;
  }
  if (p === '/api/functions/hello' && req.method === 'PUT') return send(res, 200, { id: 'fn-1', ...JSON.parse(body.toString()) });
  if (p === '/api/functions/hello/code') {
    return send(res, 200, { message: 'uploaded', code_path: 'code/fn-1.zip', code_sha256: 'abc', code_size: body.length });
  }
  if (p === '/api/functions/hello/invocations') return send(res, 200, [{ id: 'inv-1', limit: url.searchParams.get('limit') }]);
  if (p === '/api/functions/hello/logs') {
    res.writeHead(200, { 'content-type': 'application/x-ndjson' });
    const line = (i: number): string => JSON.stringify({ time: 1000 + i, instance_id: 'i-1', stream: 'stdout', text: `line ${i}` }) + '\n';
    // Split one line across writes to exercise reassembly.
    const first = line(1) + line(2);
    res.write(first.slice(0, 10));
    res.write(first.slice(10));
    if (url.searchParams.get('follow') === 'true') {
      await new Promise<void>((resolve) => {
        releaseFollow = resolve;
      });
      res.write(line(3));
      // Keep the stream open: the client must stop by aborting.
      return;
    }
    res.end(`${JSON.stringify({ time: 1003, instance_id: 'i-1', stream: 'stderr', text: 'last (no newline)' })}`);
    return;
  }
  return send(res, 404, { error: { code: 'AETHER_ERR_ROUTE_NOT_FOUND', message: 'no such route' } });
}

before(async () => {
  server = createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      res.destroy(err as Error);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

after(async () => {
  server.closeAllConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));
});

function client(opts: { anonymous?: boolean } = {}): AetherClient {
  return new AetherClient({ url: base, ...(opts.anonymous ? {} : { token: TOKEN }), timeoutMs: 5_000 });
}

test('sends the bearer token and parses JSON answers', async () => {
  const c = client();
  try {
    seen.length = 0;
    const fn = await c.createFunction({ name: 'hello', runtime: 'node' });
    assert.equal(fn.id, 'fn-1');
    assert.equal(seen[0]?.auth, `Bearer ${TOKEN}`);
    assert.equal(seen[0]?.contentType, 'application/json');
    assert.deepEqual(JSON.parse(seen[0]?.body.toString() ?? ''), { name: 'hello', runtime: 'node' });
    const list = await c.listFunctions();
    assert.deepEqual(list.map((f) => f.name), ['hello']);
    const upd = await c.updateFunction('hello', { memory_mb: 256 });
    assert.equal(upd.memory_mb, 256);
    assert.equal(seen[2]?.method, 'PUT');
  } finally {
    await c.close();
  }
});

test('maps the JSON error shape to ClientError', async () => {
  const c = client();
  try {
    await assert.rejects(c.getFunction('nope'), (err: unknown) => {
      assert.ok(err instanceof ClientError);
      assert.equal(err.status, 404);
      assert.equal(err.code, 'AETHER_ERR_FUNCTION_NOT_FOUND');
      assert.equal(err.message, 'no such function "nope"');
      return true;
    });
  } finally {
    await c.close();
  }
  const anon = client({ anonymous: true });
  try {
    await assert.rejects(anon.listFunctions(), { name: 'ClientError', status: 401, code: 'AETHER_ERR_UNAUTHORIZED' });
  } finally {
    await anon.close();
  }
});

test('non-JSON error bodies fall back to HTTP_<status> and the first line', async () => {
  const c = new AetherClient({ url: `${base}/plain-error`, token: TOKEN });
  try {
    await assert.rejects(c.listFunctions(), { status: 500, code: 'HTTP_500', message: '<html>' });
  } finally {
    await c.close();
  }
});

test('connection failures become a ClientError with status 0', async () => {
  // Listen then close to get a port that refuses connections.
  const s = createServer();
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
  const port = (s.address() as AddressInfo).port;
  await new Promise<void>((resolve) => s.close(() => resolve()));
  const c = new AetherClient({ url: `http://127.0.0.1:${port}` });
  try {
    await assert.rejects(c.listFunctions(), (err: unknown) => {
      assert.ok(err instanceof ClientError);
      assert.equal(err.status, 0);
      assert.equal(err.code, 'ECONNREFUSED');
      assert.match(err.message, /cannot reach http:\/\/127\.0\.0\.1:\d+/);
      return true;
    });
  } finally {
    await c.close();
  }
});

test('delete, upload (raw body), invocations with limit', async () => {
  const c = client();
  try {
    seen.length = 0;
    await c.deleteFunction('hello');
    assert.equal(seen[0]?.method, 'DELETE');
    const zip = Buffer.from([0x50, 0x4b, 3, 4, 9, 9, 9]);
    const up = await c.uploadCode('hello', zip);
    assert.equal(up.code_size, zip.length);
    assert.deepEqual(seen[1]?.body, zip);
    assert.equal(seen[1]?.contentType, 'application/zip');
    const inv = await c.listInvocations('hello', 5);
    assert.equal((inv[0] as unknown as { limit: string }).limit, '5');
  } finally {
    await c.close();
  }
});

test('logs parses NDJSON across chunk boundaries, including a last line without newline', async () => {
  const c = client();
  try {
    const got: LogEntry[] = [];
    for await (const e of c.logs('hello', { tail: 10 })) got.push(e);
    assert.deepEqual(got.map((e) => e.text), ['line 1', 'line 2', 'last (no newline)']);
    assert.equal(got[2]?.stream, 'stderr');
    assert.equal(got[0]?.time, 1001);
    assert.ok(seen.at(-1)?.url.endsWith('/api/functions/hello/logs?tail=10'));
  } finally {
    await c.close();
  }
});

test('logs follow yields lines as they arrive and stops quietly on abort', async () => {
  const c = client();
  const ac = new AbortController();
  try {
    const got: string[] = [];
    for await (const e of c.logs('hello', { follow: true, signal: ac.signal })) {
      got.push(e.text);
      if (got.length === 2) releaseFollow?.();
      if (got.length === 3) ac.abort();
    }
    assert.deepEqual(got, ['line 1', 'line 2', 'line 3']);
    assert.match(seen.at(-1)?.url ?? '', /follow=true/);
  } finally {
    await c.close();
  }
});

test('invoke sends method/path/body/headers without a token and reads the invocation headers', async () => {
  const c = client();
  try {
    seen.length = 0;
    const r = await c.invoke('hello', { method: 'put', path: 'a/b?x=1', body: 'hi', headers: { 'x-echo': 'yes' } });
    assert.equal(r.status, 201);
    assert.equal(r.body.toString(), 'PUT /functions/hello/a/b?x=1 hi');
    assert.equal(r.invocationId, 'inv-1');
    assert.equal(r.coldStart, true);
    assert.equal(r.headers['x-echo'], 'yes');
    assert.equal(seen[0]?.auth, undefined);

    const def = await c.invoke('hello');
    assert.equal(def.body.toString(), 'GET /functions/hello/ ');

    // An error status is returned, not thrown: the caller decides.
    const bad = await c.invoke('broken', { body: Buffer.from('x') });
    assert.equal(bad.status, 502);
    assert.equal(bad.invocationId, 'inv-2');
    assert.equal(bad.coldStart, undefined);
    assert.equal(seen.at(-1)?.method, 'POST');
  } finally {
    await c.close();
  }
});

test('health reports the status', async () => {
  const c = client({ anonymous: true });
  try {
    const h = await c.health();
    assert.equal(h.ok, true);
    assert.deepEqual(h.body, { status: 'ok' });
  } finally {
    await c.close();
  }
});

test('resolveConnection: flag, then env, then data dir files, then default; says where the URL came from', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'aether-conn-'));
  const resolved = async (o: Parameters<typeof resolveConnection>[0]): Promise<{ url: string; token: string | undefined; urlFrom: string }> => {
    const { url, token, urlFrom } = await resolveConnection(o);
    return { url, token, urlFrom };
  };
  try {
    assert.deepEqual(await resolved({ dataDir: dir, env: {} }), { url: 'http://127.0.0.1:8080', token: undefined, urlFrom: `the default (no ${join(dir, 'url')})` });
    await writeFile(join(dir, 'url'), 'http://127.0.0.1:9999\n');
    await writeFile(join(dir, 'admin.token'), 'file-token\n');
    assert.deepEqual(await resolved({ dataDir: dir, env: {} }), { url: 'http://127.0.0.1:9999', token: 'file-token', urlFrom: join(dir, 'url') });
    // AETHER_DATA_DIR locates the files when no flag is given.
    assert.deepEqual(await resolved({ env: { AETHER_DATA_DIR: dir } }), { url: 'http://127.0.0.1:9999', token: 'file-token', urlFrom: join(dir, 'url') });
    const env = { AETHER_URL: 'http://env:1', AETHER_ADMIN_TOKEN: 'env-token' };
    assert.deepEqual(await resolved({ dataDir: dir, env }), { url: 'http://env:1', token: 'env-token', urlFrom: 'AETHER_URL' });
    assert.deepEqual(await resolved({ dataDir: dir, env, url: 'http://flag:2', token: 'flag-token' }), { url: 'http://flag:2', token: 'flag-token', urlFrom: '--url' });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
