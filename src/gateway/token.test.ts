import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { checkBearer, loadAdminToken } from './token.ts';

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'aether-token-test-'));
  try {
    await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

test('AETHER_ADMIN_TOKEN wins over any file', () =>
  withDir(async (dir) => {
    await writeFile(join(dir, 'admin.token'), 'from-file\n');
    assert.deepEqual(await loadAdminToken({ dataDir: dir, env: { AETHER_ADMIN_TOKEN: 'from-env' } }), { token: 'from-env', source: 'env' });
  }));

test('an existing token file is read (trimmed)', () =>
  withDir(async (dir) => {
    await writeFile(join(dir, 'admin.token'), '  from-file\n');
    assert.deepEqual(await loadAdminToken({ dataDir: dir, env: {} }), { token: 'from-file', source: 'file', path: join(dir, 'admin.token') });
    const other = join(dir, 'elsewhere.token');
    await writeFile(other, 'explicit');
    assert.deepEqual(await loadAdminToken({ dataDir: dir, tokenFile: other, env: { AETHER_ADMIN_TOKEN: '' } }), { token: 'explicit', source: 'file', path: other });
  }));

test('without either, 32 random bytes are generated into <dataDir>/admin.token with mode 0600', () =>
  withDir(async (dir) => {
    const data = join(dir, 'data');
    const a = await loadAdminToken({ dataDir: data, env: {} });
    assert.equal(a.source, 'generated');
    assert.equal(a.path, join(data, 'admin.token'));
    assert.match(a.token, /^[0-9a-f]{64}$/);
    assert.equal((await readFile(join(data, 'admin.token'), 'utf8')).trim(), a.token);
    assert.equal((await stat(join(data, 'admin.token'))).mode & 0o777, 0o600);
    // the next start reads the same token
    const b = await loadAdminToken({ dataDir: data, env: {} });
    assert.deepEqual(b, { token: a.token, source: 'file', path: a.path });
    // another data dir gets another token
    const c = await loadAdminToken({ dataDir: join(dir, 'other'), env: {} });
    assert.notEqual(c.token, a.token);
  }));

test('an empty token file or no location at all is an error', () =>
  withDir(async (dir) => {
    await writeFile(join(dir, 'admin.token'), '\n');
    await assert.rejects(loadAdminToken({ dataDir: dir, env: {} }), /empty/);
    await assert.rejects(loadAdminToken({ env: {} }), /AETHER_ADMIN_TOKEN/);
  }));

test('checkBearer', () => {
  assert.equal(checkBearer('Bearer abc', 'abc'), true);
  assert.equal(checkBearer('bearer   abc ', 'abc'), true);
  assert.equal(checkBearer('Bearer abcd', 'abc'), false);
  assert.equal(checkBearer('Bearer ab', 'abc'), false);
  assert.equal(checkBearer('Basic abc', 'abc'), false);
  assert.equal(checkBearer('abc', 'abc'), false);
  assert.equal(checkBearer('Bearer', 'abc'), false);
  assert.equal(checkBearer(undefined, 'abc'), false);
  assert.equal(checkBearer('', 'abc'), false);
});
