import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { DEFAULT_LIMITS } from '../archive/index.ts';
import { createFsBlobStore } from '../blob/fs.ts';
import { ManualClock, metrics, silentLogger } from '../core/index.ts';
import { createCodeCache } from './code-cache.ts';
import { buildZip, countingBlob, sha256 } from './test-support.ts';

const dirs: string[] = [];
after(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

async function setup(budgetBytes = 1 << 30) {
  const dir = await mkdtemp(join(tmpdir(), 'aether-code-cache-'));
  dirs.push(dir);
  const blobDir = await mkdtemp(join(tmpdir(), 'aether-code-cache-blob-'));
  dirs.push(blobDir);
  const blob = countingBlob(createFsBlobStore({ dir: blobDir }));
  const clock = new ManualClock();
  const make = () => createCodeCache({ dir, blob, clock, logger: silentLogger(), archiveLimits: DEFAULT_LIMITS, budgetBytes });
  return { dir, blob, clock, make, cache: await make() };
}

async function upload(blob: { put(k: string, b: Buffer): Promise<unknown> }, files: Record<string, string>, key = 'functions/fn-1/code.archive') {
  const zip = await buildZip(files);
  await blob.put(key, zip);
  return { code_path: key, code_sha256: sha256(zip), entrypoint: 'handler.js', size: zip.length };
}

async function counter(c: { get(): Promise<{ values: { value: number }[] }> }): Promise<number> {
  return (await c.get()).values.reduce((n, v) => n + v.value, 0);
}

test('concurrent requests for one archive download and unpack it once', async () => {
  const { blob, cache } = await setup();
  const ref = await upload(blob, { 'app/handler.js': 'module.exports = 1;\n', 'app/lib/x.js': 'x' });
  const misses0 = await counter(metrics.codeCacheMisses);
  const open = blob.hold();
  const all = Promise.all([cache.acquire(ref), cache.acquire(ref), cache.acquire(ref)]);
  await new Promise((r) => setImmediate(r));
  open();
  const leases = await all;
  assert.equal(blob.gets.get(ref.code_path), 1);
  assert.equal(await counter(metrics.codeCacheMisses), misses0 + 1);
  assert.equal(new Set(leases.map((l) => l.dir)).size, 1);
  const dir = leases[0]!.dir;
  // the single top folder was stripped
  assert.equal(await readFile(join(dir, 'handler.js'), 'utf8'), 'module.exports = 1;\n');
  assert.equal(await readFile(join(dir, 'lib', 'x.js'), 'utf8'), 'x');
  // a later request is a hit
  const again = await cache.acquire(ref);
  assert.equal(again.dir, dir);
  assert.equal(blob.gets.get(ref.code_path), 1);
  assert.equal(cache.entries()[0]?.users, 4);
});

test('a sha256 mismatch is rejected, leaves nothing behind and is not cached', async () => {
  const { dir, blob, cache } = await setup();
  const ref = await upload(blob, { 'handler.js': 'ok' });
  const bad = { ...ref, code_sha256: 'a'.repeat(64) };
  await assert.rejects(cache.acquire(bad), (err: { code?: string; message: string }) => {
    assert.equal(err.code, 'AETHER_ERR_ARCHIVE_INVALID');
    assert.match(err.message, /sha256 mismatch/);
    return true;
  });
  assert.deepEqual(await readdir(dir), []);
  await assert.rejects(cache.acquire(bad), /sha256 mismatch/);
  assert.equal(blob.gets.get(ref.code_path), 2);
  assert.ok((await cache.acquire(ref)).dir);
});

test('missing blob and missing code are AETHER_ERR_NO_CODE; a bad archive is rejected', async () => {
  const { blob, cache } = await setup();
  await assert.rejects(cache.acquire({ code_path: 'nope', code_sha256: 'b'.repeat(64), entrypoint: 'handler.js' }), { code: 'AETHER_ERR_NO_CODE' });
  await assert.rejects(cache.acquire({ code_path: null, code_sha256: null, entrypoint: 'handler.js' }), { code: 'AETHER_ERR_NO_CODE' });
  const junk = Buffer.from('this is not an archive');
  await blob.put('junk', junk);
  await assert.rejects(cache.acquire({ code_path: 'junk', code_sha256: sha256(junk), entrypoint: 'handler.js' }), { code: 'AETHER_ERR_ARCHIVE_INVALID' });
});

test('entries not used by any instance are evicted (least recently used first) over the budget', async () => {
  const { blob, cache, clock } = await setup(1500);
  const a = await upload(blob, { 'handler.js': 'a'.repeat(1000) }, 'a');
  const b = await upload(blob, { 'handler.js': 'b'.repeat(1000) }, 'b');
  const c = await upload(blob, { 'handler.js': 'c'.repeat(1000) }, 'c');
  const la = await cache.acquire(a);
  await clock.advance(10);
  const lb = await cache.acquire(b);
  // both in use: over budget, but nothing in use is evicted
  await cache.evict();
  assert.ok(existsSync(la.dir) && existsSync(lb.dir));
  la.release();
  await clock.advance(10);
  lb.release();
  await cache.evict();
  // releasing b left 2000 bytes idle: the older (a) goes first, which is enough
  assert.equal(existsSync(la.dir), false);
  assert.equal(existsSync(lb.dir), true);
  const lc = await cache.acquire(c);
  await cache.evict();
  assert.equal(existsSync(lb.dir), false);
  assert.equal(existsSync(lc.dir), true);
  // an evicted entry is downloaded again when needed
  await cache.acquire(a);
  assert.equal(blob.gets.get('a'), 2);
});

test('a new cache adopts entries an earlier run unpacked', async () => {
  const { blob, cache, make } = await setup();
  const ref = await upload(blob, { 'handler.js': 'hi' });
  const first = await cache.acquire(ref);
  const second = await make();
  const lease = await second.acquire(ref);
  assert.equal(lease.dir, first.dir);
  assert.equal(blob.gets.get(ref.code_path), 1);
});
