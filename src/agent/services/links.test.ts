import assert from 'node:assert/strict';
import { test } from 'node:test';
import { linkTargets, parseLinkValue } from './links.ts';

test('a link value gives its IPv4 address and port, with or without a scheme and path', () => {
  assert.deepEqual(parseLinkValue('http://127.0.0.1:18080'), { host: '127.0.0.1', port: 18080 });
  assert.deepEqual(parseLinkValue('redis://10.0.0.5:6379/0'), { host: '10.0.0.5', port: 6379 });
  assert.deepEqual(parseLinkValue('10.0.0.5:9000'), { host: '10.0.0.5', port: 9000 });
  assert.deepEqual(parseLinkValue(' tcp://192.168.1.2:1?x#y '), { host: '192.168.1.2', port: 1 });
  for (const bad of ['', 'http://db:5432', 'http://[::1]:80', '10.0.0.5', '10.0.0.256:80', 'http://10.0.0.5:0', '10.0.0.5:70000', '0.0.0.0:80', '10.0.0.5:80; rm -rf /', 'http://10.0.0.5:80 x'])
    assert.equal(parseLinkValue(bad), undefined, bad);
});

test("a service's link targets: its links' and cross-node links' env values, deduplicated, others ignored", () => {
  const svc = {
    links: [
      { service: 'db', env: 'DB_URL', port: 5432, protocol: 'postgres' },
      { service: 'web', env: 'WEB_URL', port: 8080, protocol: 'http' },
      { service: 'web', env: 'WEB_AGAIN', port: 8080, protocol: 'http' },
      { service: 'ghost', env: 'UNSET', port: 1, protocol: 'http' },
    ],
    cross_node_links: [{ service: 'cache', env: 'CACHE', host_port: 6379 }],
  };
  const env = { DB_URL: 'postgres://10.0.0.7:15432', WEB_URL: 'http://127.0.0.1:18080', WEB_AGAIN: 'http://127.0.0.1:18080/', CACHE: '10.0.0.8:6379', OTHER: 'http://10.9.9.9:1' };
  assert.deepEqual(linkTargets(svc, env), [
    { host: '10.0.0.7', port: 15432 },
    { host: '127.0.0.1', port: 18080 },
    { host: '10.0.0.8', port: 6379 },
  ]);
  assert.deepEqual(linkTargets({ links: [], cross_node_links: [] }, env), []);
});
