import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, request, type Server } from 'node:http';
import { connect, type AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import { buildRouteTable, EdgeRouter, normalizeHost, type RouteTable } from './router.ts';

async function backend(t: TestContext, name: string): Promise<{ port: number; server: Server }> {
  const server = createServer((req, res) => res.end(JSON.stringify({ name, url: req.url, host: req.headers.host, xff: req.headers['x-forwarded-for'], routed: req.headers['x-aether-routed'] ?? null })));
  const upgraded = new Set<Duplex>();
  server.on('upgrade', (_req, socket) => {
    upgraded.add(socket);
    socket.write('HTTP/1.1 101 Switching Protocols\r\nupgrade: echo\r\nconnection: upgrade\r\n\r\n');
    socket.on('data', (d: Buffer) => socket.write(Buffer.from(`${name}:${d.toString()}`)));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  t.after(() => {
    // Upgraded sockets are no longer the server's: close them ourselves.
    for (const s of upgraded) s.destroy();
    server.closeAllConnections();
    return new Promise<void>((r) => server.close(() => r()));
  });
  return { port: (server.address() as AddressInfo).port, server };
}

async function router(t: TestContext, table: () => RouteTable): Promise<string> {
  const r = new EdgeRouter({ table });
  const url = await r.listen(0, '127.0.0.1');
  t.after(() => r.close());
  return url;
}

function get(url: string, host: string, path = '/x?y=1'): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(url + path, { headers: { host } }, (res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

test('route table: hosts normalized, local instances and peers, never itself as a peer', () => {
  assert.equal(normalizeHost('Web.Example.TEST:8080'), 'web.example.test');
  assert.equal(normalizeHost('web.test.'), 'web.test');
  const e = { kind: 'tcp' as const, host: '127.0.0.1', port: 1 };
  const t = buildRouteTable(
    [{ service: 'web', host: 'Web.test', endpoint: e }, { service: 'db', host: null, endpoint: e }],
    [{ node: 'n2', router_url: 'http://n2:8088/', hosts: ['web.test', 'api.test'] }, { node: 'n1', router_url: 'http://self', hosts: ['web.test'] }],
    'n1',
  );
  assert.deepEqual([...t.keys()].sort(), ['api.test', 'web.test']);
  assert.deepEqual(t.get('web.test'), { local: [e], peers: ['http://n2:8088'] });
  assert.deepEqual(t.get('api.test'), { local: [], peers: ['http://n2:8088'] });
});

test('edge router: by Host to a local instance, else through a peer router (one hop), else a JSON 404', async (t) => {
  const web = await backend(t, 'web');
  const api = await backend(t, 'api');
  // node 2 runs api; node 1 runs web and knows node 2 runs api.
  const r2 = await router(t, () => buildRouteTable([{ service: 'api', host: 'api.test', endpoint: { kind: 'tcp', host: '127.0.0.1', port: api.port } }], [], 'n2'));
  const r1 = await router(t, () =>
    buildRouteTable([{ service: 'web', host: 'web.test', endpoint: { kind: 'tcp', host: '127.0.0.1', port: web.port } }], [{ node: 'n2', router_url: r2, hosts: ['api.test', 'ghost.test'] }], 'n1'),
  );
  const a = await get(r1, 'web.test:80');
  assert.equal(a.status, 200);
  const aj = JSON.parse(a.body) as { name: string; url: string; xff: string; routed: string | null };
  assert.deepEqual([aj.name, aj.url, aj.routed], ['web', '/x?y=1', null]);
  assert.match(aj.xff, /127\.0\.0\.1/);
  const b = JSON.parse((await get(r1, 'API.test')).body) as { name: string; routed: string | null };
  assert.deepEqual([b.name, b.routed], ['api', '1'], 'cross-node through the peer router');
  // The peer does not have ghost.test locally and must not bounce it back: 404, no loop.
  const ghost = await get(r1, 'ghost.test');
  assert.equal(ghost.status, 404);
  const none = await get(r1, 'nothing.test');
  assert.equal(none.status, 404);
  assert.equal((JSON.parse(none.body) as { error: { code: string } }).error.code, 'AETHER_ERR_ROUTE_NOT_FOUND');
});

test('edge router: a dead instance answers 502 in our JSON shape; WebSocket-style upgrades pass through', async (t) => {
  const web = await backend(t, 'web');
  const url = await router(t, () =>
    buildRouteTable(
      [
        { service: 'dead', host: 'dead.test', endpoint: { kind: 'tcp', host: '127.0.0.1', port: 1 } },
        { service: 'web', host: 'web.test', endpoint: { kind: 'tcp', host: '127.0.0.1', port: web.port } },
      ],
      [],
      'n1',
    ),
  );
  const dead = await get(url, 'dead.test');
  assert.equal(dead.status, 502);
  assert.equal((JSON.parse(dead.body) as { error: { code: string } }).error.code, 'AETHER_ERR_UPSTREAM');
  const port = Number(new URL(url).port);
  const reply = await new Promise<string>((resolve, reject) => {
    const s = connect({ host: '127.0.0.1', port });
    let got = '';
    s.on('data', (d: Buffer) => {
      got += d.toString();
      if (got.includes('\r\n\r\n') && !got.includes('web:')) s.write('ping');
      if (got.includes('web:ping')) {
        s.destroy();
        resolve(got);
      }
    });
    s.on('error', reject);
    s.write('GET /ws HTTP/1.1\r\nHost: web.test\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n');
  });
  assert.match(reply, /^HTTP\/1\.1 101/);
  assert.match(reply, /web:ping$/);
});

test('edge router: an upgrade through a peer router carries X-Forwarded-* (the client, the first Host) and the loop guard', async (t) => {
  const seen: Record<string, string | string[] | undefined>[] = [];
  const server = createServer();
  const upgraded = new Set<Duplex>();
  server.on('upgrade', (req, socket: Duplex) => {
    upgraded.add(socket);
    seen.push(req.headers);
    socket.write('HTTP/1.1 101 Switching Protocols\r\nupgrade: echo\r\nconnection: upgrade\r\n\r\n');
    socket.on('data', (d: Buffer) => socket.write(Buffer.from(`ws:${d.toString()}`)));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  t.after(() => {
    for (const s of upgraded) s.destroy();
    return new Promise<void>((r) => server.close(() => r()));
  });
  const port = (server.address() as AddressInfo).port;
  const r2 = await router(t, () => buildRouteTable([{ service: 'ws', host: 'ws.test', endpoint: { kind: 'tcp', host: '127.0.0.1', port } }], [], 'n2'));
  const r1 = await router(t, () => buildRouteTable([], [{ node: 'n2', router_url: r2, hosts: ['ws.test'] }], 'n1'));
  const reply = await new Promise<string>((resolve, reject) => {
    const s = connect({ host: '127.0.0.1', port: Number(new URL(r1).port) });
    let got = '';
    s.on('data', (d: Buffer) => {
      got += d.toString();
      if (got.includes('\r\n\r\n') && !got.includes('ws:')) s.write('ping');
      if (got.includes('ws:ping')) {
        s.destroy();
        resolve(got);
      }
    });
    s.on('error', reject);
    s.write('GET /socket HTTP/1.1\r\nHost: WS.test:8088\r\nX-Forwarded-For: 203.0.113.7\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n');
  });
  assert.match(reply, /^HTTP\/1\.1 101/);
  assert.equal(seen.length, 1);
  const h = seen[0] ?? {};
  assert.equal(h['x-forwarded-for'], '203.0.113.7, 127.0.0.1, 127.0.0.1', 'each hop appends its client');
  assert.equal(h['x-forwarded-host'], 'WS.test:8088', 'the Host the client asked for, kept across the hop');
  assert.equal(h['x-forwarded-proto'], 'http');
  assert.equal(h['x-aether-routed'], '1', 'the peer hop is marked');
  assert.equal(h.host, 'WS.test:8088');
});

test('edge router: plain requests through a peer carry X-Forwarded-* of the first hop', async (t) => {
  const web = await backend(t, 'web');
  const r2 = await router(t, () => buildRouteTable([{ service: 'web', host: 'web.test', endpoint: { kind: 'tcp', host: '127.0.0.1', port: web.port } }], [], 'n2'));
  const r1 = await router(t, () => buildRouteTable([], [{ node: 'n2', router_url: r2, hosts: ['web.test'] }], 'n1'));
  const res = await get(r1, 'web.test');
  const j = JSON.parse(res.body) as { xff: string; routed: string | null; host: string };
  assert.equal(j.xff, '127.0.0.1, 127.0.0.1');
  assert.equal(j.routed, '1');
  assert.equal(j.host, 'web.test');
});
