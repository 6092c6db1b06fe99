import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, request as httpRequest, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import net, { type AddressInfo } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AGENT_ERROR_HEADER, closeAllEndpoints, forward, ProxyError, UNREACHED_CODE, type ForwardTarget } from './index.ts';

let upstream: Server;
let upPort = 0;
let gateway: Server;
let gwPort = 0;
let route: (req: IncomingMessage, res: ServerResponse) => ForwardTarget;
const events: string[] = [];
let lastProxyError: unknown;

async function listen(s: Server): Promise<number> {
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  return (s.address() as AddressInfo).port;
}

before(async () => {
  upstream = createServer((req, res) => {
    if (req.url === '/headers') return res.end(JSON.stringify(req.headers));
    if (req.url?.startsWith('/unreached')) {
      // what an agent answers when the instance could not be reached (or a function faking it)
      res.writeHead(503, { [AGENT_ERROR_HEADER]: UNREACHED_CODE, 'x-aether-retryable': '1', 'x-aether-cold-start': 'forged', 'x-other': 'kept' });
      return res.end('{}');
    }
    if (req.url === '/hop') {
      res.writeHead(200, { connection: 'keep-alive', 'keep-alive': 'timeout=99', 'x-kept': 'yes' });
      return res.end('ok');
    }
    if (req.url === '/drip') {
      // Streams the response: the second chunk only after the client saw the first.
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write('first;');
      events.push('upstream wrote first');
      const wait = setInterval(() => {
        if (events.includes('client got first')) {
          clearInterval(wait);
          res.end('second');
        }
      }, 5);
      return;
    }
    // /upload: count bytes as they arrive
    let n = 0;
    req.on('data', (c: Buffer) => {
      if (n === 0) events.push('upstream got first bytes');
      n += c.length;
    });
    req.on('end', () => res.end(String(n)));
  });
  upPort = await listen(upstream);
  route = (req, _res) => ({ endpoint: { kind: 'tcp', host: '127.0.0.1', port: upPort }, path: req.url ?? '/', headers: { 'x-forwarded-host': 'gw' } });
  gateway = createServer((req, res) => {
    const fromAgent = req.url === '/unreached?from=agent';
    forward(req, res, route(req, res), { responseHeaders: { 'x-aether-invocation-id': 'inv-1' }, fromAgent }).catch((err: unknown) => {
      lastProxyError = err;
      if (!res.headersSent) res.writeHead(599).end();
      else res.destroy();
    });
  });
  gwPort = await listen(gateway);
});

after(async () => {
  await closeAllEndpoints();
  gateway.close();
  upstream.close();
});

function call(path: string, opts: { method?: string; headers?: Record<string, string> } = {}): Promise<{ status: number; headers: IncomingMessage['headers']; body: string }> {
  return new Promise((resolve, reject) => {
    const r = httpRequest({ host: '127.0.0.1', port: gwPort, path, method: opts.method ?? 'GET', headers: opts.headers }, (res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    r.on('error', reject);
    r.end();
  });
}

describe('forward', () => {
  test('end-to-end headers pass, hop-by-hop headers do not, extra headers are added both ways', async () => {
    const r = await call('/headers', { headers: { authorization: 'Bearer user', 'x-custom': '1', 'proxy-authorization': 'secret', te: 'trailers' } });
    const seen = JSON.parse(r.body) as Record<string, string>;
    assert.equal(seen['authorization'], 'Bearer user');
    assert.equal(seen['x-custom'], '1');
    assert.equal(seen['x-forwarded-host'], 'gw');
    assert.equal(seen['proxy-authorization'], undefined);
    assert.equal(seen['te'], undefined);
    assert.equal(r.headers['x-aether-invocation-id'], 'inv-1');
    const hop = await call('/hop');
    assert.equal(hop.headers['x-kept'], 'yes');
    assert.notEqual(hop.headers['keep-alive'], 'timeout=99'); // ours, not the upstream's
  });

  test('a request body streams: the upstream sees bytes before the client has finished sending', async () => {
    events.length = 0;
    const total = 100 * 1024 * 1024;
    const chunk = Buffer.alloc(1024 * 1024, 97);
    const result = await new Promise<string>((resolve, reject) => {
      const r = httpRequest({ host: '127.0.0.1', port: gwPort, path: '/upload', method: 'POST', headers: { 'content-length': String(total) } }, (res) => {
        let body = '';
        res.on('data', (c: Buffer) => (body += c.toString()));
        res.on('end', () => resolve(body));
      });
      r.on('error', reject);
      r.write(chunk);
      const wait = setInterval(() => {
        if (!events.includes('upstream got first bytes')) return;
        clearInterval(wait);
        events.push('client sends the rest');
        let sent = chunk.length;
        const pump = (): void => {
          while (sent < total) {
            sent += chunk.length;
            if (!r.write(chunk)) return void r.once('drain', pump);
          }
          r.end();
        };
        pump();
      }, 2);
    });
    assert.equal(result, String(total));
    assert.deepEqual(events.slice(0, 2), ['upstream got first bytes', 'client sends the rest']);
  });

  test('a response streams: the client gets the first chunk before the upstream ends', async () => {
    events.length = 0;
    const body = await new Promise<string>((resolve, reject) => {
      const r = httpRequest({ host: '127.0.0.1', port: gwPort, path: '/drip' }, (res) => {
        let b = '';
        res.on('data', (c: Buffer) => {
          if (b === '') events.push('client got first');
          b += c.toString();
        });
        res.on('end', () => resolve(b));
      });
      r.on('error', reject);
      r.end();
    });
    assert.equal(body, 'first;second');
    assert.deepEqual(events, ['upstream wrote first', 'client got first']);
  });

  test('an unreachable upstream is a connect failure (safe to retry elsewhere)', async () => {
    const saved = route;
    route = (_req, _res) => ({ endpoint: { kind: 'unix', path: '/nonexistent/aether.sock' }, path: '/' });
    try {
      const r = await call('/x');
      assert.equal(r.status, 599);
      assert.ok(lastProxyError instanceof ProxyError);
      assert.equal(lastProxyError.phase, 'connect');
      assert.equal(lastProxyError.headersSent, false);
    } finally {
      route = saved;
    }
  });

  test("a sandbox forwarder's status byte: answered -> relayed without it; closed before it -> connect failure", async () => {
    const dir = mkdtempSync(join(tmpdir(), 'aether-fwd-'));
    const path = join(dir, 'f.sock');
    let mode: 'answer' | 'refuse' = 'answer';
    let got = '';
    // a stand-in forwarder: reads the request, then either answers (0x01 + the program's bytes) or
    // closes without the byte (the program could not be reached)
    const fwd = net.createServer((c) => {
      c.once('data', (b: Buffer) => {
        got = b.toString();
        if (mode === 'refuse') return void c.destroy();
        c.end(Buffer.concat([Buffer.from([1]), Buffer.from('HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-aether-error-code: forged\r\nconnection: close\r\n\r\nhi')]));
      });
    });
    await new Promise<void>((r) => fwd.listen(path, () => r()));
    const saved = route;
    route = (_req, _res) => ({ endpoint: { kind: 'unix', path, preamble: true }, path: '/p' });
    try {
      const ok = await call('/p');
      assert.equal(ok.status, 200);
      assert.equal(ok.body, 'hi');
      assert.equal(ok.headers['x-aether-error-code'], undefined);
      mode = 'refuse';
      lastProxyError = undefined;
      const r = await call('/p');
      assert.match(got, /^GET \/p HTTP\/1.1/, 'the request was sent');
      assert.equal(r.status, 599);
      assert.ok(lastProxyError instanceof ProxyError);
      assert.equal(lastProxyError.phase, 'connect', 'no status byte: it reached no program');
    } finally {
      route = saved;
      fwd.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("an agent's coded 'unreached' answer becomes a connect failure instead of being relayed", async () => {
    const r = await call('/unreached?from=agent');
    assert.equal(r.status, 599);
    assert.ok(lastProxyError instanceof ProxyError);
    assert.equal(lastProxyError.phase, 'connect');
  });

  test("a function's x-aether-* response headers are dropped: it cannot fake the platform's signals", async () => {
    lastProxyError = undefined;
    const r = await call('/unreached');
    assert.equal(r.status, 503, 'relayed as the function answered');
    assert.equal(lastProxyError, undefined);
    assert.equal(r.headers[AGENT_ERROR_HEADER], undefined);
    assert.equal(r.headers['x-aether-retryable'], undefined);
    assert.equal(r.headers['x-aether-cold-start'], undefined);
    assert.equal(r.headers['x-aether-invocation-id'], 'inv-1', 'ours are added after');
    assert.equal(r.headers['x-other'], 'kept');
  });
});
