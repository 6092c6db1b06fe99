import { ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, describe, it } from 'node:test';
import { blobContract } from '../src/blob/contract.ts';
import { createS3BlobStore, s3OptionsFromUrl } from '../src/blob/s3.ts';
import type { BlobStore } from '../src/blob/types.ts';
import { cephAvailable, startRadosgw } from './support/ceph.ts';

const skip = cephAvailable();

it('s3OptionsFromUrl parses bucket, endpoint, region and path style', () => {
  assert.deepEqual(s3OptionsFromUrl('s3://code?endpoint=http://127.0.0.1:7480&region=eu-1&path_style=true'), {
    bucket: 'code',
    endpoint: 'http://127.0.0.1:7480',
    region: 'eu-1',
    forcePathStyle: true,
  });
  assert.deepEqual(s3OptionsFromUrl('s3://b'), { bucket: 'b' });
  for (const bad of ['http://b', 's3://b/prefix', 's3://b?path_style=yes', 's3://b?bogus=1', 'nonsense']) {
    assert.throws(() => s3OptionsFromUrl(bad), { code: 'AETHER_ERR_VALIDATION' }, bad);
  }
});

if (skip) {
  it('s3 blob store on radosgw', { skip }, () => {});
} else {
  // One Ceph for the whole file (~15-20 s to start).
  const rgw = await startRadosgw();
  after(() => rgw.stop());
  const credentials = { accessKeyId: rgw.accessKeyId, secretAccessKey: rgw.secretAccessKey };
  const bucket = (): string => `aether-${randomBytes(4).toString('hex')}`;
  const store = (b: string, secret = rgw.secretAccessKey): BlobStore =>
    createS3BlobStore({ bucket: b, endpoint: rgw.endpoint, credentials: { accessKeyId: rgw.accessKeyId, secretAccessKey: secret } });

  blobContract('s3 (Ceph radosgw)', async () => {
    const blob = createS3BlobStore({ bucket: bucket(), endpoint: rgw.endpoint, region: 'us-east-1', forcePathStyle: true, credentials });
    return { blob, cleanup: () => blob.close() };
  });

  describe('s3 blob store on radosgw', () => {
    it('creates its bucket lazily and reads credentials from the standard env chain', async () => {
      const saved = { id: process.env['AWS_ACCESS_KEY_ID'], secret: process.env['AWS_SECRET_ACCESS_KEY'] };
      process.env['AWS_ACCESS_KEY_ID'] = rgw.accessKeyId;
      process.env['AWS_SECRET_ACCESS_KEY'] = rgw.secretAccessKey;
      const b = createS3BlobStore({ ...s3OptionsFromUrl(`s3://${bucket()}?endpoint=${rgw.endpoint}&path_style=true`) });
      try {
        assert.deepEqual(await b.list(''), []);
        await b.put('k', Buffer.from('v'));
        assert.deepEqual((await b.list('')).map((i) => i.key), ['k']);
      } finally {
        await b.close();
        for (const [k, v] of [['AWS_ACCESS_KEY_ID', saved.id], ['AWS_SECRET_ACCESS_KEY', saved.secret]] as const) {
          if (v === undefined) delete process.env[k];
          else process.env[k] = v;
        }
      }
    });

    it('lists more than one page (1000 keys per page)', { timeout: 120_000 }, async () => {
      const b = store(bucket());
      try {
        const keys = Array.from({ length: 1005 }, (_, i) => `p/${String(i).padStart(4, '0')}`);
        for (let i = 0; i < keys.length; i += 50) await Promise.all(keys.slice(i, i + 50).map((k) => b.put(k, Buffer.from(k))));
        const listed = await b.list('p/');
        assert.deepEqual(listed.map((i) => i.key), keys);
      } finally {
        await b.close();
      }
    });

    it('a wrong secret is rejected (real SigV4 check)', async () => {
      const name = bucket();
      const good = store(name);
      await good.put('secret', Buffer.from('x'));
      const bad = store(name, 'not-the-secret');
      const rawBad = new S3Client({
        endpoint: rgw.endpoint, region: 'us-east-1', forcePathStyle: true,
        credentials: { accessKeyId: rgw.accessKeyId, secretAccessKey: 'not-the-secret' },
      });
      try {
        await assert.rejects(bad.get('secret'), (err: Error & { code?: string }) => {
          assert.equal(err.code, 'AETHER_ERR_UNAVAILABLE');
          assert.match(err.message, /HTTP 403/);
          return true;
        });
        await assert.rejects(bad.put('other', Buffer.from('y')), { code: 'AETHER_ERR_UNAVAILABLE' });
        assert.equal(await good.head('other'), undefined);
        // The reason, from a request whose error carries a body: the signature itself.
        await assert.rejects(rawBad.send(new ListObjectsV2Command({ Bucket: name })), { name: 'SignatureDoesNotMatch' });
      } finally {
        await good.close();
        await bad.close();
        rawBad.destroy();
      }
    });

    it('while radosgw is down calls reject within seconds, and work again after it is back', { timeout: 180_000 }, async () => {
      const b = store(bucket());
      try {
        await b.put('before', Buffer.from('1'));
        await rgw.stopRgw();
        for (const call of [() => b.get('before'), () => b.put('during', Buffer.from('2')), () => b.list('')]) {
          const t0 = performance.now();
          await assert.rejects(call(), { code: 'AETHER_ERR_UNAVAILABLE' });
          assert.ok(performance.now() - t0 < 10_000, `took ${Math.round(performance.now() - t0)} ms`);
        }
        await rgw.startRgw();
        const got = await b.get('before');
        assert.ok(got);
        let text = '';
        for await (const c of got) text += String(c);
        assert.equal(text, '1');
        await b.put('after', Buffer.from('3'));
        assert.deepEqual((await b.list('')).map((i) => i.key), ['after', 'before']);
      } finally {
        await b.close();
      }
    });
  });
}
