import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AetherError, ManualClock } from '../core/index.ts';
import { KEYS, type FunctionRecord } from '../spec/index.ts';
import type { Store, TxnResult } from '../store/index.ts';
import type { BlobStore } from '../blob/index.ts';
import { createSqliteStore } from '../store/sqlite.ts';
import { createFsBlobStore } from '../blob/fs.ts';
import { makeZip } from '../archive/testing.ts';
import { FunctionService } from './functions.ts';

/** `obj` with some members replaced (methods keep their own `this`, so private fields work). */
function override<T extends object>(obj: T, patch: Partial<T>): T {
  return new Proxy(obj, {
    get(target, prop) {
      if (Object.prototype.hasOwnProperty.call(patch, prop)) return (patch as Record<PropertyKey, unknown>)[prop];
      const v = Reflect.get(target, prop, target) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
}

async function setup() {
  const dir = await mkdtemp(join(tmpdir(), 'aether-fnsvc-test-'));
  const clock = new ManualClock();
  const store = createSqliteStore({ path: ':memory:', clock });
  const blobs = createFsBlobStore({ dir: join(dir, 'blobs') });
  const svc = new FunctionService({ store, blobs, defaultSandbox: 'firecracker', availableSandboxes: ['process', 'firecracker'], clock, tmpDir: join(dir) });
  const close = async (): Promise<void> => {
    await store.close();
    await blobs.close();
    await rm(dir, { recursive: true, force: true });
  };
  return { dir, clock, store, blobs, svc, close };
}

async function code(svc: FunctionService, e: Promise<unknown>, want: string): Promise<void> {
  await assert.rejects(e, (err: unknown) => {
    assert.ok(err instanceof AetherError, String(err));
    assert.equal(err.code, want, err.message);
    return true;
  });
  void svc;
}

test('default sandbox comes from the platform; ids sort by creation time', async (t) => {
  const s = await setup();
  t.after(s.close);
  const a = await s.svc.create({ name: 'a', runtime: 'node' });
  await s.clock.advance(5);
  const b = await s.svc.create({ name: 'b', runtime: 'node' });
  assert.equal(a.sandbox, 'firecracker');
  assert.ok(a.id < b.id);
  assert.equal((await s.svc.find('nope')), undefined);
  assert.equal((await s.svc.find('b'))?.id, b.id);
});

test('updates give up with AETHER_ERR_CONFLICT when the CAS keeps losing', async (t) => {
  const s = await setup();
  t.after(s.close);
  const fn = await s.svc.create({ name: 'a', runtime: 'node' });
  let casCalls = 0;
  const racing = override<Store>(s.store, {
    cas: async (): Promise<TxnResult> => {
      casCalls++;
      return { succeeded: false, revision: 0 };
    },
  });
  const svc = new FunctionService({ store: racing, blobs: s.blobs, defaultSandbox: 'process', maxAttempts: 3 });
  await code(svc, svc.update(fn.id, { vcpu: 2 }), 'AETHER_ERR_CONFLICT');
  assert.equal(casCalls, 3);
  assert.deepEqual(JSON.parse((await s.store.get(KEYS.function(fn.id)))?.value ?? ''), fn);
});

test('an upload whose record write loses removes the new blob and keeps the old code', async (t) => {
  const s = await setup();
  t.after(s.close);
  const fn = await s.svc.create({ name: 'a', runtime: 'node' });
  const first = await s.svc.uploadCode(fn.id, await makeZip([{ name: 'handler.js', data: 'v1' }]));
  const racing = override<Store>(s.store, { cas: async (): Promise<TxnResult> => ({ succeeded: false, revision: 0 }) });
  const svc = new FunctionService({ store: racing, blobs: s.blobs, defaultSandbox: 'process', maxAttempts: 2, tmpDir: s.dir });
  await code(svc, svc.uploadCode(fn.id, await makeZip([{ name: 'handler.js', data: 'v2' }])), 'AETHER_ERR_CONFLICT');
  assert.deepEqual(
    (await s.blobs.list(`functions/${fn.id}/`)).map((b) => b.key),
    [first.code_path],
  );
  assert.equal((await s.svc.get(fn.id)).code_sha256, first.code_sha256);
  // spooled temp files are gone
  assert.deepEqual((await readdir(s.dir)).filter((n) => n.startsWith('aether-upload-')), []);
});

test('an upload racing an entrypoint change is validated against the new entrypoint', async (t) => {
  const s = await setup();
  t.after(s.close);
  const fn = await s.svc.create({ name: 'a', runtime: 'node' });
  // Change the entrypoint right after the blob is stored, before the record is written.
  const blobs = override<BlobStore>(s.blobs, {
    put: async (key, body) => {
      const info = await s.blobs.put(key, body);
      await s.svc.update(fn.id, { entrypoint: 'server.js' });
      return info;
    },
  });
  const svc = new FunctionService({ store: s.store, blobs, defaultSandbox: 'process', tmpDir: s.dir });
  await code(svc, svc.uploadCode(fn.id, await makeZip([{ name: 'handler.js', data: 'x' }])), 'AETHER_ERR_ENTRYPOINT_MISSING');
  const rec: FunctionRecord = await s.svc.get(fn.id);
  assert.equal(rec.entrypoint, 'server.js');
  assert.equal(rec.code_path, null);
  assert.deepEqual(await s.blobs.list(`functions/${fn.id}/`), []);
});

test('deleting a function tolerates a failing blob store', async (t) => {
  const s = await setup();
  t.after(s.close);
  const fn = await s.svc.create({ name: 'a', runtime: 'node' });
  await s.svc.uploadCode(fn.id, await makeZip([{ name: 'handler.js', data: 'v1' }]));
  const blobs = override<BlobStore>(s.blobs, {
    delete: async () => {
      throw new Error('s3 down');
    },
  });
  const svc = new FunctionService({ store: s.store, blobs, defaultSandbox: 'process' });
  await svc.remove('a');
  assert.equal(await svc.find(fn.id), undefined);
});

test('a sandbox without a driver on this platform is refused with a 400 naming it', async () => {
  const s = await setup();
  try {
    const svc = new FunctionService({ store: s.store, blobs: s.blobs, defaultSandbox: 'process' });
    await code(svc, svc.create({ name: 'vm', runtime: 'node', sandbox: 'qemu' }), 'AETHER_ERR_VALIDATION');
    const ok = await svc.create({ name: 'proc', runtime: 'node' });
    assert.equal(ok.sandbox, 'process');
    await code(svc, svc.update('proc', { sandbox: 'firecracker' }), 'AETHER_ERR_VALIDATION');
    assert.equal((await svc.get('proc')).sandbox, 'process');
    assert.deepEqual((await svc.list()).map((f) => f.name), ['proc']);
    // The gateway accepts what its live agents offer, and always process.
    let offered: ('qemu' | 'firecracker')[] = ['qemu'];
    svc.setSandboxSource(() => offered);
    assert.equal((await svc.create({ name: 'vm', runtime: 'node', sandbox: 'qemu' })).sandbox, 'qemu');
    offered = [];
    await code(svc, svc.update('proc', { sandbox: 'qemu' }), 'AETHER_ERR_VALIDATION');
    assert.equal((await svc.create({ name: 'proc2', runtime: 'node', sandbox: 'process' })).sandbox, 'process');
  } finally {
    await s.close();
  }
});
