/**
 * No request can end or wedge the gateway: malformed escapes, unknown methods, huge ids, bodies
 * nobody reads, and a bounded fuzz run (fast-check) over the invocation path and every management
 * route. One real gateway + in-process agent on the fake runtime, on a loopback port.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { request, type IncomingHttpHeaders } from 'node:http';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { agentConfig, createAgent } from '../agent/index.ts';
import type { ArchiveLimits } from '../archive/index.ts';
import { zipOf } from '../archive/testing.ts';
import { createFsBlobStore } from '../blob/fs.ts';
import { silentLogger, systemClock } from '../core/index.ts';
import { closeAllEndpoints } from '../proxy/index.ts';
import { createMemoryQueue } from '../queue/memory.ts';
import { createFakeRuntime } from '../runtime/fake/index.ts';
import { createSqliteStore } from '../store/sqlite.ts';
import { FunctionService } from './functions.ts';
import { startGateway, type Gateway } from './gateway.ts';

const CLUSTER = 'cluster-token-for-tests-0123456789';
const TOKEN = 'fuzz-token';
const LIMITS: ArchiveLimits = { maxArchiveBytes: 512 * 1024, maxUnpackedBytes: 1024 * 1024, maxEntries: 50 };
const SEED = Number(process.env['FUZZ_SEED'] ?? 8_2026);

let dir: string;
let gateway: Gateway;
let host: string;
let port: number;
const closers: (() => Promise<void>)[] = [];

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'aether-hardening-'));
  const store = createSqliteStore({ path: ':memory:' });
  const queue = createMemoryQueue();
  const blob = createFsBlobStore({ dir: join(dir, 'blobs') });
  const runtime = createFakeRuntime({
    behavior: (spec) => {
      if (spec.owner.name === 'hints') {
        return {
          handler: (_req, res) => {
            res.writeEarlyHints({ link: '</app.css>; rel=preload; as=style' });
            res.end('page');
          },
        };
      }
      if (spec.owner.name === 'broken') {
        // A head, then a chunk whose size line is not hex.
        return { handler: (_req, res) => res.socket?.end('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\nnope\r\n') };
      }
      return {};
    },
  });
  const logger = silentLogger();
  const agent = createAgent({ store, queue, blob, runtime, clock: systemClock, logger, archiveLimits: LIMITS, config: agentConfig({ agentId: 'agent-h', url: 'local://', dataDir: dir, scaleIntervalMs: 60_000, clusterToken: CLUSTER }) });
  await agent.start();
  const functions = new FunctionService({ store, blobs: blob, defaultSandbox: 'process', tmpDir: dir, limits: LIMITS });
  gateway = await startGateway({ store, queue, clock: systemClock, logger, functions, adminToken: TOKEN, clusterToken: CLUSTER, limits: LIMITS, host: '127.0.0.1', port: 0, gatewayId: 'gw-h', leaseTtlMs: 10_000, startTimeoutMs: 30_000, localAgent: agent });
  closers.push(() => gateway.close(), () => agent.stop(), () => runtime.close(), () => store.close());
  const u = new URL(gateway.url);
  host = u.hostname;
  port = Number(u.port);
  await functions.create({ name: 'hello', runtime: 'node' });
  await functions.uploadCode('hello', await zipOf({ 'handler.js': '// served by the fake runtime' }));
  await functions.create({ name: 'victim', runtime: 'node' });
  for (const name of ['hints', 'broken']) {
    await functions.create({ name, runtime: 'node' });
    await functions.uploadCode(name, await zipOf({ 'handler.js': '// served by the fake runtime' }));
  }
});

after(async () => {
  for (const c of closers) await c().catch(() => undefined);
  await closeAllEndpoints();
  await rm(dir, { recursive: true, force: true });
});

interface Answer {
  status: number;
  headers: IncomingHttpHeaders;
  body: string;
}

/** One request with node:http (the path is sent exactly as given); rejects after `ms` (a hang). */
function send(method: string, path: string, headers: Record<string, string> = {}, body?: Buffer, ms = 15_000): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request({ host, port, method, path, headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        clearTimeout(timer);
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString() });
      });
      res.on('error', reject);
    });
    const timer = setTimeout(() => {
      req.destroy();
      reject(new Error(`no answer within ${ms} ms: ${method} ${path}`));
    }, ms);
    req.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    req.end(body);
  });
}

/** Raw bytes in, everything the server sent until it closed (or `ms`) out. */
function raw(bytes: string, ms = 5000): Promise<string> {
  return new Promise((resolve) => {
    const s = connect(port, host);
    const out: Buffer[] = [];
    const done = (): void => {
      clearTimeout(timer);
      s.destroy();
      resolve(Buffer.concat(out).toString());
    };
    const timer = setTimeout(done, ms);
    s.on('data', (c: Buffer) => {
      out.push(c);
      if (Buffer.concat(out).includes('\r\n\r\n{') && Buffer.concat(out).toString().endsWith('}}')) done();
    });
    s.on('error', done);
    s.on('close', done);
    s.write(bytes);
  });
}

function errorCode(a: Answer): string {
  const j = JSON.parse(a.body) as { error: { code: string; message: string } };
  assert.equal(typeof j.error.message, 'string');
  return j.error.code;
}

async function alive(): Promise<void> {
  assert.equal((await send('GET', '/healthz')).status, 200);
  const r = await send('GET', '/functions/hello/ping');
  assert.equal(r.status, 200, r.body);
}

describe('gateway hardening', { timeout: 120_000 }, () => {
  test('malformed percent-escapes are a 400 on every route, and the gateway goes on', async () => {
    for (const bad of ['%E0%A4%A', '%', '%zz', '%C0%AF', '%ED%A0%80']) {
      const inv = await send('GET', `/functions/${bad}`);
      assert.equal(inv.status, 400, `${bad}: ${inv.body}`);
      assert.equal(errorCode(inv), 'AETHER_ERR_VALIDATION');
      assert.equal((await send('GET', `/functions/${bad}/x?y=1`)).status, 400);
      for (const path of [`/api/functions/${bad}`, `/api/functions/${bad}/invocations`, `/api/${bad}`, `/${bad}`]) {
        const r = await send('GET', path, { authorization: `Bearer ${TOKEN}` });
        assert.ok(r.status >= 400 && r.status < 500, `${path}: ${r.status} ${r.body}`);
        errorCode(r);
      }
    }
    await alive();
  });

  test('unknown methods get our JSON error shape', async () => {
    const foo = await raw(`FOO /api/functions HTTP/1.1\r\nhost: x\r\n\r\n`);
    assert.match(foo, /^HTTP\/1\.1 405 /);
    assert.match(foo, /"code":"AETHER_ERR_METHOD_NOT_ALLOWED"/);
    const connectReq = await raw(`CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\n\r\n`);
    assert.match(connectReq, /^HTTP\/1\.1 405 /);
    assert.match(connectReq, /"code":"AETHER_ERR_METHOD_NOT_ALLOWED"/);
    const patch = await send('PATCH', '/api/functions/hello', { authorization: `Bearer ${TOKEN}` });
    assert.equal(patch.status, 405);
    assert.equal(errorCode(patch), 'AETHER_ERR_METHOD_NOT_ALLOWED');
    const garbage = await raw(`GET /healthz HTTP/1.1\r\nbad header\r\n\r\n`);
    assert.match(garbage, /^HTTP\/1\.1 400 /);
    assert.match(garbage, /"code":"AETHER_ERR_VALIDATION"/);
    await alive();
  });

  test('a function sending 103 Early Hints: the client gets the hints, then the answer', async () => {
    const r = await new Promise<{ hints: unknown[]; status: number; body: string }>((resolve, reject) => {
      const hints: unknown[] = [];
      const req = request({ host, port, path: '/functions/hints/', agent: false }, (res) => {
        let body = '';
        res.on('data', (c: Buffer) => (body += c.toString()));
        res.on('end', () => resolve({ hints, status: res.statusCode ?? 0, body }));
      });
      req.on('information', (i) => hints.push([i.statusCode, i.headers['link']]));
      req.on('error', reject);
      req.end();
    });
    assert.deepEqual(r.hints, [[103, '</app.css>; rel=preload; as=style']]);
    assert.equal(r.status, 200);
    assert.equal(r.body, 'page');
  });

  test('a function sending a broken chunk right after its head: 502 AETHER_ERR_UPSTREAM, not an empty reply', async () => {
    const r = await send('GET', '/functions/broken/');
    assert.equal(r.status, 502, r.body);
    assert.equal(errorCode(r), 'AETHER_ERR_UPSTREAM');
    await alive();
  });

  test('a 2000-character id is a 404 that does not echo it', async () => {
    const long = 'a'.repeat(2000);
    for (const [method, path, expect] of [
      ['GET', `/api/functions/${long}`, 'AETHER_ERR_FUNCTION_NOT_FOUND'],
      ['PUT', `/api/functions/${long}`, 'AETHER_ERR_FUNCTION_NOT_FOUND'],
      ['POST', `/api/functions/${long}/code`, 'AETHER_ERR_FUNCTION_NOT_FOUND'],
      ['GET', `/api/functions/${long}/logs`, 'AETHER_ERR_FUNCTION_NOT_FOUND'],
      ['GET', `/functions/${long}/x`, 'AETHER_ERR_FUNCTION_NOT_FOUND'],
      ['GET', `/api/${long}`, 'AETHER_ERR_ROUTE_NOT_FOUND'],
      ['GET', `/${long}`, 'AETHER_ERR_ROUTE_NOT_FOUND'],
    ] as const) {
      const r = await send(method, path, { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' }, method === 'PUT' ? Buffer.from('{}') : undefined);
      assert.equal(errorCode(r), expect, `${method} ${path.slice(0, 40)}: ${r.body.slice(0, 200)}`);
      assert.ok(r.body.length < 400, `${method} ${path.slice(0, 40)} echoes: ${r.body.length} bytes`);
    }
  });

  test('validation: NUL characters are refused, type errors say so, huge numbers get the real bound', async () => {
    const post = (body: unknown): Promise<Answer> => send('POST', '/api/functions', { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' }, Buffer.from(JSON.stringify(body)));
    const cases: [unknown, RegExp][] = [
      [{ name: 'nul1', runtime: 'node', env_vars: { A: 'a\u0000b' } }, /^env_vars\.A: .*NUL/],
      [{ name: 'nul2', runtime: 'node', entrypoint: 'handler\u0000.js' }, /^entrypoint: .*NUL/],
      [{ name: 'typ1', runtime: 'node', memory_mb: 'big' }, /^memory_mb: must be an integer from 16 to 8192 \(got string\)$/],
      [{ name: 7, runtime: 'node' }, /^name: expected string, got number$/],
      [{ name: 'big1', runtime: 'node', memory_mb: 1e308 }, /^memory_mb: must be an integer from 16 to 8192$/],
      [{ name: 'big2', runtime: 'node', timeout_ms: -1e308 }, /^timeout_ms: must be an integer from 100 to 900000$/],
      [{ runtime: 'node' }, /^name: is required$/],
      [{ name: 'norun' }, /^runtime: is required$/],
      [{ name: 'badrun', runtime: 'go' }, /^runtime: Invalid option: expected one of "node"\|"python"$/],
    ];
    for (const [body, re] of cases) {
      const r = await post(body);
      assert.equal(r.status, 400, r.body);
      const j = JSON.parse(r.body) as { error: { code: string; message: string } };
      assert.equal(j.error.code, 'AETHER_ERR_VALIDATION');
      assert.match(j.error.message, re);
    }
    const put = await send('PUT', '/api/functions/victim', { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' }, Buffer.from(JSON.stringify({ env_vars: { K: 'x\u0000' } })));
    assert.equal(put.status, 400);
  });

  test('a client that keeps sending after an early 413 still receives it (lingering close)', async () => {
    const answer = await new Promise<{ text: string; error: string | undefined }>((resolve) => {
      // Like curl uploading: it keeps sending after the server's FIN (half-open) and reads at leisure.
      const s = connect({ port, host, allowHalfOpen: true });
      let text = '';
      let error: string | undefined;
      const chunk = Buffer.alloc(64 * 1024, 120);
      s.write(`POST /api/functions/hello/code HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ${TOKEN}\r\ncontent-type: application/zip\r\ncontent-length: ${100 * 1024 * 1024}\r\n\r\n`);
      for (let i = 0; i < 8; i++) s.write(chunk);
      s.on('data', (c: Buffer) => {
        const first = text === '';
        text += c.toString();
        if (!first) return;
        // The answer is here: go on sending a little (well under the linger budget), as a client
        // that does not watch for early answers does, then read to the end.
        setTimeout(() => {
          for (let i = 0; i < 8; i++) s.write(chunk);
          s.end();
        }, 50);
      });
      s.on('error', (err: NodeJS.ErrnoException) => (error = err.code ?? err.message));
      s.on('close', () => resolve({ text, error }));
    });
    assert.equal(answer.error, undefined, 'the connection was reset');
    assert.match(answer.text, /^HTTP\/1\.1 413 /);
    assert.match(answer.text, /connection: close/i);
    assert.match(answer.text, /AETHER_ERR_PAYLOAD_TOO_LARGE/);
  });

  test('/healthz with a huge body answers and stops reading it (bounded)', async () => {
    const total = 256 * 1024 * 1024;
    const r = await new Promise<{ text: string; written: number }>((resolve) => {
      const s = connect(port, host);
      let text = '';
      let written = 0;
      let open = true;
      const chunk = Buffer.alloc(256 * 1024, 120);
      s.write(`GET /healthz HTTP/1.1\r\nhost: x\r\ncontent-type: application/octet-stream\r\ncontent-length: ${total}\r\n\r\n`);
      const pump = (): void => {
        while (open && written < total) {
          written += chunk.length;
          if (!s.write(chunk)) return void s.once('drain', pump);
        }
      };
      s.on('data', (c: Buffer) => (text += c.toString()));
      s.on('error', () => undefined);
      s.on('close', () => {
        open = false;
        resolve({ text, written });
      });
      pump();
    });
    assert.match(r.text, /^HTTP\/1\.1 200 /);
    assert.match(r.text, /connection: close/i);
    assert.ok(r.written < 64 * 1024 * 1024, `the server kept reading: ${r.written} bytes`);
  });
});

// ------------------------------------------------------------------------------------ fuzzing

const pathChar = fc.constantFrom(...'abcz019-_.~!$&\'()*+,;=:@'.split(''));
const escape = fc.integer({ min: 0, max: 255 }).map((b) => `%${b.toString(16).padStart(2, '0').toUpperCase()}`);
const segment = fc.oneof(
  fc.constantFrom('hello', 'victim', 'fn-x', '', '%', '%E0%A4%A', '%00', '%2F', '..', '.', '%zz', '%C0%AF', 'a'.repeat(300)),
  fc.string({ unit: fc.oneof(pathChar, escape), maxLength: 12 }),
  fc.stringMatching(/^[a-z][a-z0-9-]{0,20}$/),
);
const query = fc.oneof(
  fc.constant(''),
  fc.array(fc.tuple(fc.constantFrom('limit', 'tail', 'follow', 'x', '%', ''), fc.oneof(fc.constantFrom('', '0', '1', '-1', '1e308', 'true', 'abc', '99999999999999999999', '%zz'), fc.string({ unit: pathChar, maxLength: 6 }))), { maxLength: 3 }).map(
    (kv) => `?${kv.map(([k, v]) => `${k}=${v}`).join('&')}`,
  ),
);
const jsonBody = fc.oneof(
  fc.json({ maxDepth: 2 }),
  fc
    .record(
      {
        name: fc.oneof(fc.stringMatching(/^[a-z][a-z0-9-]{0,10}$/), fc.string({ maxLength: 5 }), fc.integer()),
        runtime: fc.constantFrom('node', 'python', 'java', 1),
        memory_mb: fc.oneof(fc.integer(), fc.double(), fc.constantFrom(1e308, -0, '128')),
        env_vars: fc.dictionary(fc.string({ maxLength: 4 }), fc.oneof(fc.string({ maxLength: 4 }), fc.integer())),
        entrypoint: fc.string({ maxLength: 8 }),
        min_instances: fc.integer({ min: -2, max: 3 }),
        __proto__: fc.constant({ polluted: true }),
      },
      { requiredKeys: [] },
    )
    .map((o) => JSON.stringify(o)),
);
const body = fc.oneof(
  fc.constant(undefined),
  jsonBody.map((s) => Buffer.from(s)),
  fc.uint8Array({ maxLength: 256 }).map((a) => Buffer.from(a)),
  fc.constant(Buffer.from('--x\r\ncontent-disposition: form-data; name="file"; filename="a.zip"\r\n\r\nPK\x03\x04junk\r\n--x--\r\n')),
);
const contentType = fc.constantFrom(undefined, 'application/json', 'text/plain', 'multipart/form-data; boundary=x', 'multipart/form-data', 'application/zip', 'application/json; charset=utf-16', '*/*', '');
const auth = fc.constantFrom(`Bearer ${TOKEN}`, `Bearer ${TOKEN}`, undefined, 'Bearer nope', 'Basic abc', `bearer ${TOKEN}`);

function headersOf(ct: string | undefined, a: string | undefined, b: Buffer | undefined): Record<string, string> {
  const h: Record<string, string> = {};
  if (ct !== undefined) h['content-type'] = ct;
  if (a !== undefined) h['authorization'] = a;
  if (b !== undefined) h['content-length'] = String(b.length);
  return h;
}

/** No 5xx (the fake function only answers 200), and every error is in our JSON shape. */
function clean(method: string, path: string, r: Answer): void {
  assert.ok(r.status >= 200 && r.status < 500, `${method} ${path} -> ${r.status} ${r.body.slice(0, 300)}`);
  if (r.status >= 400 && method !== 'HEAD') {
    const j = JSON.parse(r.body) as { error?: { code?: unknown } };
    assert.match(String(j.error?.code), /^AETHER_ERR_/, `${method} ${path}: ${r.body.slice(0, 200)}`);
  }
}

describe('fuzz (bounded)', { timeout: 180_000 }, () => {
  test('the invocation path: any path, method, headers and body', async () => {
    const method = fc.constantFrom('GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS', 'PROPFIND', 'MKCOL');
    const rest = fc.oneof(fc.constant(''), fc.array(segment, { maxLength: 3 }).map((ss) => `/${ss.join('/')}`));
    await fc.assert(
      fc.asyncProperty(method, segment, rest, query, contentType, body, async (m, ref, r, q, ct, b) => {
        const path = `/functions/${ref}${r}${q}`;
        clean(m, path, await send(m, path, headersOf(ct, undefined, b), b));
      }),
      { numRuns: 150, seed: SEED },
    );
    await alive();
  });

  test('every management route: any id, method, query, headers and body', async () => {
    const method = fc.constantFrom('GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS', 'PROPFIND');
    const id = segment.filter((s) => s !== 'hello');
    const path = fc.oneof(
      fc.constantFrom('/healthz', '/metrics', '/api/openapi.json', '/api/functions', '/api/functions/'),
      fc.tuple(id, fc.constantFrom('', '/', '/code', '/invocations', '/logs', '/instances', '/nope')).map(([i, s]) => `/api/functions/${i}${s}`),
      segment.map((s) => `/api/${s}`),
      segment.map((s) => `/${s}`),
    );
    await fc.assert(
      fc.asyncProperty(method, path, query, contentType, auth, body, async (m, p, q, ct, a, b) => {
        // Following logs streams until the client goes away: not a request/answer exchange.
        const url = /\/logs\/?$/.test(p) && /follow=(1|true)/.test(q) ? p : `${p}${q}`;
        clean(m, url, await send(m, url, headersOf(ct, a, b), b));
      }),
      { numRuns: 300, seed: SEED },
    );
    await alive();
  });

  test('raw request lines the HTTP parser may refuse', async () => {
    const token = fc.string({ unit: fc.constantFrom(...'GETPOSXZabc-_!'.split('')), minLength: 1, maxLength: 8 });
    const target = fc.string({ unit: fc.constantFrom(...'/afunctionshelo%E0A4?#\\ \t"<>{}|^`'.split('')), minLength: 1, maxLength: 30 });
    await fc.assert(
      fc.asyncProperty(token, target, async (m, t) => {
        const out = await raw(`${m} ${t} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n`);
        const status = Number(/^HTTP\/1\.1 (\d{3}) /.exec(out)?.[1]);
        assert.ok(status >= 200 && status < 500, `${m} ${t} -> ${out.slice(0, 200)}`);
      }),
      { numRuns: 100, seed: SEED },
    );
    await alive();
  });
});
