import { test } from 'node:test';
import assert from 'node:assert/strict';
import { clusterTokenFor, loadConfig, logFileFor } from './index.ts';

test('up defaults to embedded drivers in the data dir', () => {
  const c = loadConfig('up', { data_dir: '/tmp/x' }, {});
  assert.equal(c.port, 8080);
  assert.equal(c.host, '127.0.0.1');
  assert.equal(c.store, 'sqlite:///tmp/x/store.db');
  assert.equal(c.queue, 'memory://');
  assert.equal(c.blob, 'file:///tmp/x/blobs');
  assert.ok(Object.isFrozen(c));
});

test('flags beat env, env beats defaults', () => {
  const c = loadConfig('up', { port: 9000 }, { AETHER_PORT: '9100', AETHER_HOST: '0.0.0.0' });
  assert.equal(c.port, 9000);
  assert.equal(c.host, '0.0.0.0');
});

test('distributed roles refuse embedded drivers with a clear message', () => {
  assert.throws(() => loadConfig('gateway', { store: 'etcd://127.0.0.1:2379' }, {}), /--queue/);
  assert.throws(() => loadConfig('agent', { store: 'sqlite:///x', queue: 'redis://h:1', blob: 'file:///b' }, {}), /etcd/);
  const c = loadConfig('agent', { store: 'etcd://127.0.0.1:2379', queue: 'redis://127.0.0.1:6379', blob: 's3://code?endpoint=http://127.0.0.1:9000' }, {});
  assert.equal(c.port, 0);
});

test('bad values name the field', () => {
  assert.throws(() => loadConfig('up', {}, { AETHER_PORT: 'abc' }), /port/);
  assert.throws(() => loadConfig('up', { store: 'mysql://x' }, {}), /scheme/);
});

test('gateways and agents refuse to start without a cluster token; up derives one', () => {
  for (const role of ['agent', 'gateway'] as const) {
    assert.throws(() => clusterTokenFor(role, { env: {}, file: undefined, adminToken: 'admin-token-0123456789' }), /AETHER_CLUSTER_TOKEN/);
  }
  const t = 'c'.repeat(32);
  assert.equal(clusterTokenFor('agent', { env: { AETHER_CLUSTER_TOKEN: t }, file: undefined, adminToken: undefined }), t);
  assert.throws(() => clusterTokenFor('gateway', { env: { AETHER_CLUSTER_TOKEN: t }, file: undefined, adminToken: t }), /differ from the admin token/);
  assert.throws(() => clusterTokenFor('agent', { env: { AETHER_CLUSTER_TOKEN: 'short' }, file: undefined, adminToken: undefined }), /16/);
  const up = clusterTokenFor('up', { env: {}, file: undefined, adminToken: 'admin-token-0123456789' });
  assert.notEqual(up, 'admin-token-0123456789');
  assert.equal(up, clusterTokenFor('up', { env: {}, file: undefined, adminToken: 'admin-token-0123456789' }));
});

test('--sandboxes: auto by default, else a list of known kinds', () => {
  assert.equal(loadConfig('up', {}, {}).sandboxes, 'auto');
  assert.deepEqual(loadConfig('up', { sandboxes: 'process,qemu,qemu' }, {}).sandboxes, ['process', 'qemu']);
  assert.deepEqual(loadConfig('up', {}, { AETHER_SANDBOXES: 'firecracker' }).sandboxes, ['firecracker']);
  assert.throws(() => loadConfig('up', { sandboxes: 'process,docker' }, {}), /sandboxes/);
});

test('--source: a directory that does not exist stops the start; git URLs are not checked', () => {
  assert.throws(() => loadConfig('up', { source: '/nonexistent/specs' }, {}), /config: --source \/nonexistent\/specs: no such directory/);
  assert.throws(() => loadConfig('deployer', { store: 'etcd://127.0.0.1:2379' }, { AETHER_SOURCE: '/nonexistent/specs' }), /no such directory/);
  assert.equal(loadConfig('up', { source: '/tmp' }, {}).source, '/tmp');
  assert.equal(loadConfig('up', { source: 'https://example.test/specs.git#main' }, {}).source, 'https://example.test/specs.git#main');
  assert.equal(loadConfig('up', { source: 'file:///nonexistent/repo#main' }, {}).source, 'file:///nonexistent/repo#main');
});

test('--log-file: given, or <data-dir>/aether.log for an `aether up` on a terminal; - or elsewhere: JSON on stderr', () => {
  const up = loadConfig('up', { data_dir: '/d' }, {});
  assert.equal(logFileFor(up, true), '/d/aether.log');
  assert.equal(logFileFor(up, false), undefined, 'a pipe (process manager, tests): stderr');
  assert.equal(logFileFor(loadConfig('up', { data_dir: '/d', log_file: '-' }, {}), true), undefined);
  assert.equal(logFileFor(loadConfig('up', { data_dir: '/d' }, { AETHER_LOG_FILE: '/var/log/aether.log' }), false), '/var/log/aether.log');
  const agent = loadConfig('agent', { data_dir: '/d', store: 'etcd://e:2379', queue: 'redis://r:6379', blob: 'file:///b' }, {});
  assert.equal(logFileFor(agent, true), undefined, 'distributed roles: stderr unless told');
});
