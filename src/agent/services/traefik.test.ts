import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse } from 'yaml';
import { renderTraefikConfig, traefikName, traefikRoutes, writeFileAtomic } from './traefik.ts';

test('traefik: routes render as a file-provider dynamic config, sorted and stable', () => {
  const text = renderTraefikConfig([
    { host: 'web.test', servers: ['http://127.0.0.1:18080', 'http://10.0.0.3:8088', 'http://127.0.0.1:18080'] },
    { host: 'api.example.test', servers: ['http://10.0.0.3:8088'] },
    { host: 'none.test', servers: [] },
  ]);
  assert.equal(
    text,
    renderTraefikConfig([
      { host: 'api.example.test', servers: ['http://10.0.0.3:8088'] },
      { host: 'web.test', servers: ['http://10.0.0.3:8088', 'http://127.0.0.1:18080'] },
    ]),
    'order and duplicates do not change the text',
  );
  const doc = parse(text) as { http: { routers: Record<string, unknown>; services: Record<string, unknown> } };
  assert.deepEqual(Object.keys(doc.http.routers), ['aether-api-example-test', 'aether-web-test'], 'a host without servers gets no router');
  assert.deepEqual(doc.http.routers['aether-web-test'], { rule: 'Host(`web.test`)', entryPoints: ['web'], service: 'aether-web-test' });
  assert.deepEqual(doc.http.services['aether-web-test'], {
    loadBalancer: { passHostHeader: true, servers: [{ url: 'http://10.0.0.3:8088' }, { url: 'http://127.0.0.1:18080' }] },
  });
  assert.deepEqual(parse(renderTraefikConfig([])), { http: {} }, 'no routes: a valid, empty config');
  assert.equal(traefikName('Web.Example.test'), 'aether-web-example-test');
});

test('traefik: the file is replaced atomically: a reader sees the old or the new text, never a part; no temp file stays', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'aether-traefik-test-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const a = 'a'.repeat(512 * 1024);
  const b = 'b'.repeat(512 * 1024);
  await writeFileAtomic(dir, 'aether.yaml', a);
  let stop = false;
  const seen = new Set<string>();
  const reader = (async () => {
    while (!stop) {
      const text = await readFile(join(dir, 'aether.yaml'), 'utf8');
      seen.add(text === a ? 'a' : text === b ? 'b' : `torn (${text.length})`);
    }
  })();
  for (let i = 0; i < 40; i++) await writeFileAtomic(dir, 'aether.yaml', i % 2 ? a : b);
  stop = true;
  await reader;
  assert.deepEqual([...seen].filter((s) => s.startsWith('torn')), []);
  assert.ok(seen.size >= 1);
  assert.deepEqual(await readdir(dir), ['aether.yaml']);
  // A write that cannot complete leaves the previous file as it was.
  await writeFile(join(dir, 'blocked'), 'x');
  await assert.rejects(writeFileAtomic(join(dir, 'blocked'), 'aether.yaml', 'new'));
  assert.equal(await readFile(join(dir, 'aether.yaml'), 'utf8'), a);
});

test('traefik: every server is reachable from other hosts: the node router, else the published port at the node address, never an instance address', () => {
  const peers = [
    { node: 'n2', router_url: 'http://10.0.0.2:8088/', hosts: ['api.test', 'Web.test'] },
    { node: 'n3', router_url: 'http://10.0.0.3:8088', hosts: ['api.test'] },
  ];
  const local = [
    { service: 'web', host: 'web.test' },
    { service: 'db', host: 'db.test' },
  ];
  const withRouter = traefikRoutes({ local, routerUrl: 'http://10.0.0.1:8088', nodeAddress: '10.0.0.1', published: new Map([['db', 15432]]), peers });
  assert.deepEqual(withRouter, {
    routes: [
      { host: 'web.test', servers: ['http://10.0.0.1:8088'] },
      { host: 'db.test', servers: ['http://10.0.0.1:8088'] },
      { host: 'api.test', servers: ['http://10.0.0.2:8088', 'http://10.0.0.3:8088'] },
    ],
    unreachable: [],
  }, 'local hosts through this node router (the peers serve web.test too, but the local one wins); peers by their routers');
  // No router on this node: the published port at the node address; a service with neither is left out and named.
  const noRouter = traefikRoutes({ local, routerUrl: null, nodeAddress: 'fd00::1', published: new Map([['db', 15432]]), peers: [] });
  assert.deepEqual(noRouter, { routes: [{ host: 'db.test', servers: ['http://[fd00::1]:15432'] }], unreachable: ['web'] });
});
