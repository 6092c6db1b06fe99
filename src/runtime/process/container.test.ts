import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { isAetherError } from '../../core/index.ts';
import type { InstanceSpec } from '../types.ts';
import { containerPlan, resolveUser } from './container.ts';

const PASSWD = 'root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001:app:/home/app:/bin/sh\n';
const GROUP = 'root:x:0:\nstaff:x:50:\napp:x:1001:\n';

test('resolveUser: name, uid, name:group, uid:gid, unknown', () => {
  assert.deepEqual(resolveUser('app', PASSWD, GROUP), { uid: 1000, gid: 1001, home: '/home/app' });
  assert.deepEqual(resolveUser('1000', PASSWD, GROUP), { uid: 1000, gid: 1001, home: '/home/app' });
  assert.deepEqual(resolveUser('app:staff', PASSWD, GROUP), { uid: 1000, gid: 50, home: '/home/app' });
  assert.deepEqual(resolveUser('4242:7', PASSWD, GROUP), { uid: 4242, gid: 7, home: undefined });
  assert.equal(resolveUser('nobody', PASSWD, GROUP), undefined);
  assert.equal(resolveUser('app:nogroup', PASSWD, GROUP), undefined);
});

function rootfs(rt: object | string | undefined): string {
  const dir = mkdtempSync(join(tmpdir(), 'aether-plan-'));
  mkdirSync(join(dir, 'etc', 'firework'), { recursive: true });
  writeFileSync(join(dir, 'etc', 'passwd'), PASSWD);
  writeFileSync(join(dir, 'etc', 'group'), GROUP);
  if (rt !== undefined) writeFileSync(join(dir, 'etc', 'firework', 'runtime.json'), typeof rt === 'string' ? rt : JSON.stringify(rt));
  return dir;
}

function spec(dir: string, over: Partial<InstanceSpec> = {}): InstanceSpec {
  return { instanceId: 'i1', owner: { kind: 'service', id: 's1', name: 'web' }, artifact: { kind: 'rootfs', dir }, env: {}, resources: { memoryMb: 64, vcpu: 1, pidsMax: 32 }, listen: { port: 9000 }, ...over };
}

test('containerPlan: command from the spec, else cmd, else /sbin/init; spec env over the image env; root maps to the instance uid', async () => {
  const dir = rootfs({ user: 'app', workdir: 'srv', env: { A: 'image', B: 'image' }, cmd: ['/bin/app'], writable_paths: ['data', '/var/cache'] });
  const noRt = rootfs(undefined);
  try {
    const p = await containerPlan(spec(dir, { env: { B: 'spec' } }));
    assert.deepEqual(p.argv, ['/bin/app']);
    assert.equal(p.workdir, '/srv');
    assert.equal(p.uid, 1000);
    assert.equal(p.gid, 1001);
    assert.deepEqual(p.writable, ['/data', '/var/cache']);
    assert.equal(p.env['A'], 'image');
    assert.equal(p.env['B'], 'spec');
    assert.equal(p.env['HOME'], '/home/app');
    assert.equal(p.env['PORT'], '9000');
    assert.equal(p.env['AETHER_SERVICE_NAME'], 'web');
    assert.deepEqual((await containerPlan(spec(dir, { command: ['/bin/sh'], cwd: '/x' }))).argv, ['/bin/sh']);
    const bare = await containerPlan(spec(noRt));
    assert.deepEqual(bare.argv, ['/sbin/init']);
    assert.equal(bare.uid, undefined, 'root (no user) runs as the instance uid');
    assert.equal(bare.workdir, '/');
  } finally {
    rmSync(dir, { recursive: true, force: true });
    rmSync(noRt, { recursive: true, force: true });
  }
});

test('containerPlan: a NUL byte in the command is refused (the launcher protocol is NUL-separated)', async () => {
  const dir = rootfs(undefined);
  try {
    await assert.rejects(containerPlan(spec(dir, { command: ['/bin/sh', 'a\0b'] })), (e: unknown) => isAetherError(e) && e.code === 'AETHER_ERR_VALIDATION');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('containerPlan: a bad runtime.json or an unknown user fails the start, coded', async () => {
  for (const rt of ['{not json', { cmd: 'not-an-array' }, { user: 'ghost' }]) {
    const dir = rootfs(rt);
    try {
      await assert.rejects(containerPlan(spec(dir)), (e: unknown) => isAetherError(e) && e.code === 'AETHER_ERR_COLD_START_FAILED');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }
});
