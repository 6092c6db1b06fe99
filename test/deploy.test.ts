import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { ROOT } from './support/platform.ts';

const hasCompose = spawnSync('docker-compose', ['version'], { stdio: 'ignore' }).status === 0;

test('deploy/docker-compose.yml is valid compose', { skip: hasCompose ? false : 'docker-compose (Debian package docker-compose) is not installed' }, () => {
  const file = join(ROOT, 'deploy/docker-compose.yml');
  const r = spawnSync('docker-compose', ['-f', file, 'config'], { env: { ...process.env, AETHER_ADMIN_TOKEN: 'test' }, encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  for (const svc of ['etcd', 'redis', 'minio', 'gateway-1', 'gateway-2', 'agent-1', 'agent-2', 'agent-3']) assert.match(r.stdout, new RegExp(`\\n  ${svc}:`));
  // A missing admin token is refused, not silently empty.
  const env = { ...process.env };
  delete env['AETHER_ADMIN_TOKEN'];
  const bad = spawnSync('docker-compose', ['-f', file, 'config'], { env, encoding: 'utf8' });
  assert.notEqual(bad.status, 0);
});
