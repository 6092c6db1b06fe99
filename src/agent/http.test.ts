/**
 * The agent's HTTP surface never lets one request end the process: malformed escapes are a 400,
 * an unexpected failure a 500 (logged with a request id), and a bounded fuzz run over its routes
 * gets no 500 and no hang. A stub agent stands behind handleAgentHttp.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, request, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import fc from 'fast-check';
import { pino } from 'pino';
import { AetherError } from '../core/index.ts';
import { handleAgentHttp } from './http.ts';
import type { LogEntry } from './logs.ts';
import type { Agent } from './types.ts';

const TOKEN = 'agent-secret';
const SEED = Number(process.env['FUZZ_SEED'] ?? 8_2026);
const logged: Record<string, unknown>[] = [];
const log = pino({ level: 'error' }, { write: (s: string) => void logged.push(JSON.parse(s) as Record<string, unknown>) });

/** forward() behaves by instance id: ok echoes, throw-* fail in the ways a bug would. */
const stub = {
  id: 'agent-stub',
  async forward(instanceId: string, _req: IncomingMessage, res: ServerResponse): Promise<{ status: number }> {
    if (instanceId === 'inst-ok') {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end('ok');
      return { status: 200 };
    }
    if (instanceId === 'inst-bug') throw new TypeError('cannot read properties of undefined');
    throw new AetherError('AETHER_ERR_UPSTREAM', `instance ${instanceId.slice(0, 100)} is not running on agent agent-stub`);
  },
  tailLogs(fnId: string): LogEntry[] {
    if (fnId === 'fn-bug') throw new RangeError('a bug in the log store');
    return [{ time: 0, instance_id: 'inst-ok', stream: 'stdout', text: 'hi' }];
  },
  followLogs(): () => void {
    return () => undefined;
  },
} as unknown as Agent;

let server: Server;
let port: number;

before(async () => {
  const followers = new Set<ServerResponse>();
  server = createServer((req, res) => handleAgentHttp(stub, TOKEN, followers, req, res, log));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  port = (server.address() as AddressInfo).port;
});

after(async () => {
  server.closeAllConnections();
  await new Promise<void>((r) => server.close(() => r()));
});

function send(method: string, path: string, headers: Record<string, string> = {}, body?: Buffer): Promise<{ status: number; body: string; headers: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, method, path, headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        clearTimeout(timer);
        resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString(), headers: res.headers });
      });
    });
    const timer = setTimeout(() => {
      req.destroy();
      reject(new Error(`no answer: ${method} ${path}`));
    }, 10_000);
    req.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    req.end(body);
  });
}

// The cluster token: as a bearer token off the forwarding hop, in x-aether-cluster-token on it.
const AUTH = { authorization: `Bearer ${TOKEN}`, 'x-aether-cluster-token': TOKEN };

test('a malformed escape on the logs route is a 400, and the agent goes on', async () => {
  for (const bad of ['%E0%A4%A', '%', '%zz']) {
    const r = await send('GET', `/internal/logs/${bad}?tail=1`, AUTH);
    assert.equal(r.status, 400, r.body);
    assert.match(r.body, /AETHER_ERR_VALIDATION/);
  }
  assert.equal((await send('GET', '/healthz')).status, 200);
});

test('an unexpected error is a 500 without details, logged with its request id', async () => {
  logged.length = 0;
  for (const path of ['/internal/forward/inst-bug/x', '/internal/logs/fn-bug?tail=1']) {
    const r = await send('GET', path, AUTH);
    assert.equal(r.status, 500, r.body);
    assert.deepEqual(JSON.parse(r.body), { error: { code: 'AETHER_ERR_INTERNAL', message: 'internal error' } });
    const id = r.headers['x-aether-request-id'];
    assert.ok(typeof id === 'string' && id.startsWith('req-'));
    assert.ok(logged.some((l) => l['request_id'] === id), 'logged under the same request id');
  }
  assert.equal((await send('GET', '/internal/forward/inst-ok/', AUTH)).body, 'ok');
  assert.equal((await send('GET', '/internal/forward/inst-ok/')).status, 401, 'no cluster token, no forwarding');
});

test('an unknown route does not echo a long path', async () => {
  const r = await send('GET', `/${'x'.repeat(3000)}`);
  assert.equal(r.status, 404);
  assert.ok(r.body.length < 400, r.body);
});

test('fuzz (bounded): any path, method and body on the agent routes gets no 500 and no hang', async () => {
  const pathChar = fc.constantFrom(...'abcz019-_.~!$&\'()*+,;=:@'.split(''));
  const escape = fc.integer({ min: 0, max: 255 }).map((b) => `%${b.toString(16).padStart(2, '0').toUpperCase()}`);
  const segment = fc.oneof(fc.constantFrom('inst-ok', 'inst-nope', 'fn-1', '', '%E0%A4%A', '%', '..'), fc.string({ unit: fc.oneof(pathChar, escape), maxLength: 12 }));
  const path = fc.oneof(
    fc.tuple(segment, segment).map(([i, p]) => `/internal/forward/${i}/${p}`),
    fc.tuple(segment, fc.constantFrom('', '?tail=1', '?tail=-1', '?tail=1e308', '?tail=abc', '?tail=%zz', '?follow=0&tail=99999999999')).map(([f, q]) => `/internal/logs/${f}${q}`),
    fc.constantFrom('/healthz', '/healthz?x', '/', '/internal', '/internal/'),
    segment.map((s) => `/${s}`),
  );
  const method = fc.constantFrom('GET', 'GET', 'GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'OPTIONS');
  const withAuth = fc.constantFrom(true, true, false);
  const body = fc.option(fc.uint8Array({ maxLength: 128 }).map((a) => Buffer.from(a)), { nil: undefined });
  await fc.assert(
    fc.asyncProperty(method, path, withAuth, body, async (m, p, withAuth, b) => {
      const headers: Record<string, string> = withAuth ? { ...AUTH } : {};
      if (b) headers['content-length'] = String(b.length);
      const r = await send(m, p, headers, b);
      // 502 is the forwarding route's "no such instance here" (the gateway retries elsewhere).
      const ok = r.status < 500 || (r.status === 502 && p.startsWith('/internal/forward/'));
      assert.ok(ok, `${m} ${p} -> ${r.status} ${r.body.slice(0, 200)}`);
    }),
    { numRuns: 200, seed: SEED },
  );
  assert.equal((await send('GET', '/healthz')).status, 200);
});

test('the router: every /internal/ path needs the cluster token first; the forwarded path goes on raw', async () => {
  for (const path of ['/internal/forward/inst-ok/x', '/internal/logs/fn-1', '/internal/nothing', '/internal', '/internal/forward/inst-ok/%zz', '/internal/%66orward/inst-ok/x']) {
    const r = await send('GET', path, { authorization: 'Bearer wrong' });
    assert.equal(r.status, 401, `${path}: ${r.body}`);
    assert.match(r.body, /AETHER_ERR_UNAUTHORIZED/);
  }
  // the forwarding hop takes the token only in its header (Authorization is the caller's)
  assert.equal((await send('GET', '/internal/forward/inst-ok/x', { authorization: `Bearer ${TOKEN}` })).status, 401);
  assert.equal((await send('GET', '/internal/forward/inst-ok/%zz?a=%', AUTH)).body, 'ok', 'an escape that does not decode is forwarded as it came');
  assert.equal((await send('GET', '/internal/%66orward/inst-ok/x', AUTH)).status, 404, 'a route matched only once decoded is not the forwarding route');
  assert.equal((await send('GET', '/internal/nothing', AUTH)).status, 404);
  assert.equal((await send('POST', '/healthz')).status, 405);
  assert.equal((await send('HEAD', '/healthz?x=1')).status, 200);
  assert.equal((await send('GET', '/internal/logs/fn-1?tail=1', { authorization: `Bearer ${TOKEN}` })).status, 200);
  assert.equal((await send('POST', '/internal/logs/fn-1', AUTH)).status, 405);
});
