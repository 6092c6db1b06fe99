import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import type { BlobStore } from './types.ts';

export interface BlobHarness {
  blob: BlobStore;
  cleanup(): Promise<void>;
}

async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(Buffer.isBuffer(c) ? c : Buffer.from(c as Uint8Array));
  return Buffer.concat(chunks);
}

/** `size` random bytes in `chunk`-sized pieces, yielding to the event loop between them. */
function generated(size: number, chunk = 64 * 1024): { stream: Readable; sha256: string } {
  const hash = createHash('sha256');
  const pieces: Buffer[] = [];
  for (let off = 0; off < size; off += chunk) {
    const buf = randomBytes(Math.min(chunk, size - off));
    hash.update(buf);
    pieces.push(buf);
  }
  async function* gen(): AsyncGenerator<Buffer> {
    for (const p of pieces) {
      await new Promise((r) => setImmediate(r));
      yield p;
    }
  }
  return { stream: Readable.from(gen()), sha256: hash.digest('hex') };
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/**
 * The behaviour every BlobStore driver must have. `make` is called once for the suite; each test
 * works under its own key prefix.
 */
export function blobContract(name: string, make: () => Promise<BlobHarness>): void {
  describe(`BlobStore contract: ${name}`, { timeout: 120_000 }, () => {
    let h: BlobHarness;
    let b: BlobStore;
    let n = 0;
    const prefix = (): string => `c${++n}-${randomBytes(3).toString('hex')}/`;
    before(async () => {
      h = await make();
      b = h.blob;
    });
    after(async () => {
      await h.cleanup();
    });

    it('put(Buffer) then get returns the same bytes and head the size', async () => {
      const key = `${prefix()}functions/fn-x/abc.archive`;
      const data = randomBytes(1000);
      const t0 = Date.now();
      const info = await b.put(key, data);
      assert.equal(info.key, key);
      assert.equal(info.size, 1000);
      // Server clocks may be coarse (seconds) or a little off: only check it is a plausible time.
      assert.ok(Math.abs(info.modified - t0) < 10 * 60_000, `modified ${info.modified} vs now ${t0}`);
      const stream = await b.get(key);
      assert.ok(stream);
      assert.ok(data.equals(await readAll(stream)));
      const head = await b.head(key);
      assert.equal(head?.size, 1000);
      assert.equal(head?.key, key);
      assert.ok(data.equals(await readAll((await b.get(key))!)), 'readable twice');
      const empty = `${prefix()}empty`;
      assert.equal((await b.put(empty, Buffer.alloc(0))).size, 0);
      assert.equal((await readAll((await b.get(empty))!)).length, 0);
    });

    it('put(stream) of 12 MiB (multipart for S3) round-trips byte for byte', async () => {
      const key = `${prefix()}big.bin`;
      const size = 12 * 1024 * 1024 + 12345;
      const { stream, sha256 } = generated(size);
      const info = await b.put(key, stream);
      assert.equal(info.size, size);
      assert.equal((await b.head(key))?.size, size);
      const got = await readAll((await b.get(key))!);
      assert.equal(got.length, size);
      assert.equal(sha(got), sha256);
      await b.delete(key);
    });

    it('list returns every key under a prefix in key order, with sizes', async () => {
      const p = prefix();
      const keys = ['list/b', 'list/a/2', 'list/a/1', 'list/c.txt', 'lis', 'listx/1', 'list/a10'];
      for (const [i, k] of keys.entries()) await b.put(`${p}${k}`, Buffer.alloc(i + 1, 'x'));
      const under = await b.list(`${p}list/`);
      assert.deepEqual(
        under.map((i) => [i.key.slice(p.length), i.size]),
        [['list/a/1', 3], ['list/a/2', 2], ['list/a10', 7], ['list/b', 1], ['list/c.txt', 4]],
      );
      assert.deepEqual((await b.list(`${p}list/a`)).map((i) => i.key.slice(p.length)), ['list/a/1', 'list/a/2', 'list/a10']);
      assert.deepEqual((await b.list(`${p}lis`)).map((i) => i.key.slice(p.length)), [
        'lis', 'list/a/1', 'list/a/2', 'list/a10', 'list/b', 'list/c.txt', 'listx/1',
      ]);
      assert.deepEqual(await b.list(`${p}nothing/`), []);
      assert.ok(under.every((i) => i.modified > 0));
    });

    it('delete removes the key; deleting a missing key is fine', async () => {
      const p = prefix();
      await b.put(`${p}a/x`, Buffer.from('1'));
      await b.put(`${p}a/y`, Buffer.from('2'));
      await b.delete(`${p}a/x`);
      assert.equal(await b.head(`${p}a/x`), undefined);
      assert.equal(await b.get(`${p}a/x`), undefined);
      assert.deepEqual((await b.list(p)).map((i) => i.key), [`${p}a/y`]);
      await b.delete(`${p}a/x`);
      await b.delete(`${p}never/was`);
    });

    it('missing keys: get and head resolve undefined', async () => {
      const p = prefix();
      assert.equal(await b.get(`${p}missing`), undefined);
      assert.equal(await b.head(`${p}missing`), undefined);
      await b.put(`${p}dir/file`, Buffer.from('f'));
      assert.equal(await b.get(`${p}dir`), undefined, 'a prefix of a key is not a key');
      assert.equal(await b.head(`${p}dir`), undefined);
    });

    it('overwrite is atomic: a concurrent reader sees the whole old or the whole new object', async () => {
      const key = `${prefix()}swap.bin`;
      const size = 3 * 1024 * 1024;
      const oldData = Buffer.alloc(size, 'a');
      await b.put(key, oldData);
      const slow = Readable.from(
        (async function* () {
          for (let off = 0; off < size; off += 128 * 1024) {
            await new Promise((r) => setTimeout(r, 2));
            yield Buffer.alloc(128 * 1024, 'b');
          }
        })(),
      );
      let done = false;
      const writing = b.put(key, slow).finally(() => (done = true));
      const seen = new Set<string>();
      let reads = 0;
      while (!done || reads === 0) {
        const stream = await b.get(key);
        assert.ok(stream, 'key never disappears during an overwrite');
        const got = await readAll(stream);
        reads++;
        assert.equal(got.length, size, 'partial object read');
        const first = got[0] as number;
        assert.ok(got.every((c) => c === first), 'mixed old and new bytes');
        seen.add(String.fromCharCode(first));
      }
      await writing;
      assert.ok(seen.has('a'), 'the old version was readable while the new one was being written');
      const after = await readAll((await b.get(key))!);
      assert.ok(after.equals(Buffer.alloc(size, 'b')));
      await b.delete(key);
    });

    it('overwrite with a smaller object replaces it entirely', async () => {
      const key = `${prefix()}o`;
      await b.put(key, Buffer.from('a longer first version'));
      await b.put(key, Buffer.from('short'));
      assert.equal((await readAll((await b.get(key))!)).toString(), 'short');
      assert.equal((await b.head(key))?.size, 5);
      assert.equal((await b.list(key)).length, 1);
    });

    it('rejects keys that are empty, absolute or have empty or .. segments', async () => {
      for (const bad of ['', '/abs', 'a//b', 'a/../b', '../up', 'a/./b', 'trailing/', 'back\\slash']) {
        await assert.rejects(b.put(bad, Buffer.from('x')), { code: 'AETHER_ERR_VALIDATION' }, `put ${JSON.stringify(bad)}`);
        await assert.rejects(b.get(bad), { code: 'AETHER_ERR_VALIDATION' }, `get ${JSON.stringify(bad)}`);
      }
    });
  });
}
