import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { ROOT } from './support/platform.ts';

const hasCompose = spawnSync('docker-compose', ['version'], { stdio: 'ignore' }).status === 0;

test('deploy/docker-compose.yml is valid compose', { skip: hasCompose ? false : 'docker-compose (Debian package docker-compose) is not installed' }, () => {
  const file = join(ROOT, 'deploy/docker-compose.yml');
  const r = spawnSync('docker-compose', ['-f', file, 'config'], { env: { ...process.env, AETHER_ADMIN_TOKEN: 'test-admin', AETHER_CLUSTER_TOKEN: 'test-cluster' }, encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  for (const svc of ['etcd', 'redis', 'minio', 'gateway-1', 'gateway-2', 'agent-1', 'agent-2', 'agent-3']) assert.match(r.stdout, new RegExp(`\\n  ${svc}:`));
  // Agents get the cluster token and never the admin token.
  const agent = r.stdout.slice(r.stdout.indexOf('\n  agent-1:'), r.stdout.indexOf('\n  agent-2:'));
  assert.match(agent, /AETHER_CLUSTER_TOKEN/);
  assert.doesNotMatch(agent, /AETHER_ADMIN_TOKEN|test-admin/);
  // A missing admin or cluster token is refused, not silently empty.
  for (const name of ['AETHER_ADMIN_TOKEN', 'AETHER_CLUSTER_TOKEN']) {
    const env: NodeJS.ProcessEnv = { ...process.env, AETHER_ADMIN_TOKEN: 'a', AETHER_CLUSTER_TOKEN: 'c' };
    delete env[name];
    const bad = spawnSync('docker-compose', ['-f', file, 'config'], { env, encoding: 'utf8' });
    assert.notEqual(bad.status, 0, name);
  }
});
