import assert from 'node:assert/strict';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { it } from 'node:test';
import { blobContract } from './contract.ts';
import { createFsBlobStore } from './fs.ts';

blobContract('fs', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'aether-blob-'));
  const blob = createFsBlobStore({ dir });
  return { blob, cleanup: async () => { await blob.close(); await rm(dir, { recursive: true, force: true }); } };
});

async function withStore(fn: (dir: string, blob: ReturnType<typeof createFsBlobStore>) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'aether-blob-'));
  try {
    await fn(dir, createFsBlobStore({ dir }));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

it('fs: keys map to files under dir, and nothing escapes it', async () => {
  await withStore(async (dir, blob) => {
    await blob.put('functions/fn-x/abc.archive', Buffer.from('zip'));
    assert.deepEqual(await readdir(join(dir, 'functions', 'fn-x')), ['abc.archive']);
    for (const bad of ['../outside', 'a/../../outside', '/etc/passwd', 'a/.tmp-x']) {
      await assert.rejects(blob.put(bad, Buffer.from('x')), { code: 'AETHER_ERR_VALIDATION' });
      await assert.rejects(blob.head(bad), { code: 'AETHER_ERR_VALIDATION' });
      await assert.rejects(blob.delete(bad), { code: 'AETHER_ERR_VALIDATION' });
    }
    await assert.rejects(blob.list('../'), { code: 'AETHER_ERR_VALIDATION' });
    assert.equal((await readdir(join(dir, '..'))).includes('outside'), false);
  });
});

it('fs: a failed streaming put leaves the old object and no temp file', async () => {
  await withStore(async (dir, blob) => {
    await blob.put('k/v', Buffer.from('old'));
    const failing = Readable.from(
      (async function* () {
        yield Buffer.from('partial');
        throw new Error('client went away');
      })(),
    );
    await assert.rejects(blob.put('k/v', failing), /client went away/);
    assert.deepEqual(await readdir(join(dir, 'k')), ['v']);
    assert.equal((await blob.head('k/v'))?.size, 3);
  });
});

it('fs: list skips temp files of puts in progress; a key cannot sit under another key', async () => {
  await withStore(async (dir, blob) => {
    await blob.put('a/b', Buffer.from('1'));
    await writeFile(join(dir, 'a', '.tmp-123'), 'half');
    assert.deepEqual((await blob.list('')).map((i) => i.key), ['a/b']);
    await assert.rejects(blob.put('a/b/c', Buffer.from('2')), { code: 'AETHER_ERR_CONFLICT' });
    await assert.rejects(blob.put('a', Buffer.from('2')), { code: 'AETHER_ERR_CONFLICT' });
  });
});
