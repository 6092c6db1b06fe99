import { test } from 'node:test';
import assert from 'node:assert/strict';
import { lstat, mkdtemp, readFile, readdir, readlink, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { AetherError } from '../core/index.ts';
import { makeTarGz, makeZip, type TarItem } from './testing.ts';
import { DEFAULT_LIMITS, detectArchive, extractArchive, resolvesInside, validateArchive, type ArchiveLimits } from './index.ts';

const small: ArchiveLimits = { maxArchiveBytes: 1024 * 1024, maxUnpackedBytes: 64 * 1024, maxEntries: 20 };

async function tmp(): Promise<string> {
  return mkdtemp(join(tmpdir(), 'aether-archive-test-'));
}

async function expectCode(p: Promise<unknown>, code: string, msg?: RegExp): Promise<AetherError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof AetherError, `expected AetherError, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    if (msg) assert.match(err.message, msg);
    return err;
  }
  assert.fail(`expected ${code}`);
}

/** Extract into <tmp>/out and check that a failure leaves nothing behind, inside or outside. */
async function extractFails(archive: Buffer, code: string, limits: ArchiveLimits = small, entrypoint = 'handler.js'): Promise<AetherError> {
  const dir = await tmp();
  try {
    const err = await expectCode(extractArchive(archive, join(dir, 'out'), limits, { entrypoint }), code);
    assert.deepEqual(await readdir(dir), [], 'no partial output left');
    return err;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

test('detectArchive looks at bytes, not names', async () => {
  assert.equal(detectArchive(await makeZip([{ name: 'a', data: 'x' }])), 'zip');
  assert.equal(detectArchive(await makeTarGz([{ name: 'a', data: 'x' }])), 'tar.gz');
  assert.equal(detectArchive(Buffer.from('PK')), undefined);
  assert.equal(detectArchive(Buffer.from('hello world')), undefined);
  assert.equal(detectArchive(Buffer.alloc(0)), undefined);
});

test('zip: extracts files with safe modes and counts real bytes', async () => {
  const dir = await tmp();
  try {
    const zip = await makeZip([
      { name: 'handler.js', data: 'console.log(1)', mode: 0o104755 /* setuid + exec */ },
      { name: 'lib/', dir: true },
      { name: 'lib/util.js', data: 'x'.repeat(1000), mode: 0o100600 },
    ]);
    const out = join(dir, 'code');
    const r = await extractArchive(zip, out, small, { entrypoint: 'handler.js' });
    assert.deepEqual(r, { entries: 3, bytes: 1014 });
    assert.equal(await readFile(join(out, 'handler.js'), 'utf8'), 'console.log(1)');
    assert.equal((await stat(join(out, 'handler.js'))).mode & 0o7777, 0o755);
    assert.equal((await stat(join(out, 'lib/util.js'))).mode & 0o7777, 0o644);
    assert.equal((await stat(join(out, 'lib'))).mode & 0o7777, 0o755);
    assert.equal((await stat(out)).mode & 0o7777, 0o755);
    assert.deepEqual((await readdir(dir)).sort(), ['code'], 'staging directory removed');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('tar.gz: extracts files, directories and links inside the root', async () => {
  const dir = await tmp();
  try {
    const tgz = await makeTarGz([
      { name: 'handler.js', data: 'hi' },
      { name: 'node_modules/.bin', type: 'directory' },
      { name: 'node_modules/pkg/cli.js', data: '#!/bin/sh', mode: 0o755 },
      { name: 'node_modules/.bin/cli', type: 'symlink', linkname: '../pkg/cli.js' },
      { name: 'copy.js', type: 'link', linkname: 'handler.js' },
    ]);
    const out = join(dir, 'code');
    const r = await extractArchive(tgz, out, small, { entrypoint: 'handler.js' });
    assert.equal(r.entries, 5);
    assert.equal(r.bytes, 2 + 9 + 2);
    assert.equal(await readlink(join(out, 'node_modules/.bin/cli')), '../pkg/cli.js');
    assert.equal(await readFile(join(out, 'node_modules/.bin/cli'), 'utf8'), '#!/bin/sh');
    assert.equal(await readFile(join(out, 'copy.js'), 'utf8'), 'hi');
    assert.ok((await lstat(join(out, 'copy.js'))).isFile());
    assert.equal((await stat(join(out, 'node_modules/pkg/cli.js'))).mode & 0o7777, 0o755);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('archive path on disk works like a buffer', async () => {
  const dir = await tmp();
  try {
    const file = join(dir, 'a.bin');
    await writeFile(file, await makeZip([{ name: 'main.py', data: 'print(1)' }]));
    assert.deepEqual(await validateArchive(file, small, 'main.py'), { entries: 1, bytes: 8 });
    const tfile = join(dir, 'b.bin');
    await writeFile(tfile, await makeTarGz([{ name: 'main.py', data: 'print(1)' }]));
    assert.deepEqual(await validateArchive(tfile, small, 'main.py'), { entries: 1, bytes: 8 });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('a single top-level folder becomes the code root (zip -r code.zip myfn/)', async () => {
  const dir = await tmp();
  try {
    const zip = await makeZip([
      { name: 'myfn/', dir: true },
      { name: 'myfn/handler.js', data: 'a' },
      { name: 'myfn/lib/x.js', data: 'b' },
    ]);
    const out = join(dir, 'code');
    await extractArchive(zip, out, small, { entrypoint: 'handler.js' });
    assert.deepEqual((await readdir(out)).sort(), ['handler.js', 'lib']);
    // tar with implicit top folder
    const out2 = join(dir, 'code2');
    await extractArchive(await makeTarGz([{ name: './myfn/handler.js', data: 'a' }]), out2, small, { entrypoint: 'handler.js' });
    assert.deepEqual(await readdir(out2), ['handler.js']);
    // entrypoint given as a path inside that folder: keep the folder
    const out3 = join(dir, 'code3');
    await extractArchive(zip, out3, small, { entrypoint: 'myfn/handler.js' });
    assert.deepEqual(await readdir(out3), ['myfn']);
    // two top-level entries: nothing stripped
    const out4 = join(dir, 'code4');
    await extractArchive(await makeZip([{ name: 'handler.js', data: '' }, { name: 'lib/a.js', data: '' }]), out4, small);
    assert.deepEqual((await readdir(out4)).sort(), ['handler.js', 'lib']);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('zip-slip ../ and absolute paths are rejected and nothing is written outside', async () => {
  const dir = await tmp();
  try {
    const slip = await makeZip([{ name: 'handler.js', data: 'ok' }, { name: 'zz/zz/evil.txt', data: 'pwned' }], [['zz/zz/evil.txt', '../../evil.txt']]);
    const err = await expectCode(extractArchive(slip, join(dir, 'a', 'out'), small, { entrypoint: 'handler.js' }), 'AETHER_ERR_ARCHIVE_UNSAFE');
    assert.match(err.message, /\.\./);
    assert.deepEqual(await readdir(join(dir, 'a')), []);
    await assert.rejects(stat(join(dir, 'evil.txt')));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  await extractFails(await makeZip([{ name: 'xetc/x', data: 'x' }], [['xetc/x', '/etc/x']]), 'AETHER_ERR_ARCHIVE_UNSAFE');
  await extractFails(await makeTarGz([{ name: 'handler.js', data: '' }, { name: '../x', data: 'x' }]), 'AETHER_ERR_ARCHIVE_UNSAFE');
  await extractFails(await makeTarGz([{ name: '/etc/x', data: 'x' }]), 'AETHER_ERR_ARCHIVE_UNSAFE');
  await extractFails(await makeTarGz([{ name: 'a/../../x', data: 'x' }]), 'AETHER_ERR_ARCHIVE_UNSAFE');
});

test('links that leave the root are rejected', async () => {
  // symlink to /etc/passwd (zip, via unix mode bits)
  await extractFails(await makeZip([{ name: 'handler.js', data: '' }, { name: 'pw', data: '/etc/passwd', mode: 0o120777 }]), 'AETHER_ERR_ARCHIVE_UNSAFE');
  // symlink to /etc/passwd (tar)
  await extractFails(await makeTarGz([{ name: 'handler.js', data: '' }, { name: 'pw', type: 'symlink', linkname: '/etc/passwd' }]), 'AETHER_ERR_ARCHIVE_UNSAFE');
  // relative symlink escaping the root
  await extractFails(await makeTarGz([{ name: 'handler.js', data: '' }, { name: 'a/up', type: 'symlink', linkname: '../../etc' }]), 'AETHER_ERR_ARCHIVE_UNSAFE');
  // a link that escapes only after the single top-level folder is stripped
  await extractFails(await makeTarGz([{ name: 'fn/handler.js', data: '' }, { name: 'fn/up', type: 'symlink', linkname: '../fn/handler.js' }]), 'AETHER_ERR_ARCHIVE_UNSAFE');
  // chained links: sub/a -> .. (fine alone), then l -> sub/a/.. (escapes through the first link)
  await extractFails(
    await makeTarGz([
      { name: 'handler.js', data: '' },
      { name: 'sub/a', type: 'symlink', linkname: '..' },
      { name: 'l', type: 'symlink', linkname: 'sub/a/..' },
    ]),
    'AETHER_ERR_ARCHIVE_UNSAFE',
  );
  // writing through a link: dir -> /tmp-ish, then dir/file
  await extractFails(
    await makeTarGz([
      { name: 'handler.js', data: '' },
      { name: 'd', type: 'symlink', linkname: 'handler.js' },
      { name: 'd/x', data: 'x' },
    ]),
    'AETHER_ERR_ARCHIVE_UNSAFE',
  );
  // hard link out of the archive
  await extractFails(await makeTarGz([{ name: 'handler.js', data: '' }, { name: 'pw', type: 'link', linkname: '/etc/passwd' }]), 'AETHER_ERR_ARCHIVE_UNSAFE');
  await extractFails(await makeTarGz([{ name: 'handler.js', data: '' }, { name: 'pw', type: 'link', linkname: '../../etc/passwd' }]), 'AETHER_ERR_ARCHIVE_UNSAFE');
  // hard link to something that is not a file of the archive
  await extractFails(await makeTarGz([{ name: 'handler.js', data: '' }, { name: 'pw', type: 'link', linkname: 'nothere' }]), 'AETHER_ERR_ARCHIVE_UNSAFE');
  // hard-link chains pointing forward, self-links and cycles: refused (400), never an internal error
  const h = { name: 'handler.js', data: 'x' };
  const chains: TarItem[][] = [
    [h, { name: 'a', type: 'link', linkname: 'b' }, { name: 'b', type: 'link', linkname: 'handler.js' }],
    [h, { name: 'a', type: 'link', linkname: 'a' }],
    [h, { name: 'a', type: 'link', linkname: 'b' }, { name: 'b', type: 'link', linkname: 'a' }],
    [h, { name: 'a', type: 'link', linkname: './a' }],
  ];
  for (const items of chains) {
    const err = await extractFails(await makeTarGz(items), 'AETHER_ERR_ARCHIVE_UNSAFE');
    assert.equal(err.status, 400);
    await expectCode(validateArchive(await makeTarGz(items), small, 'handler.js'), 'AETHER_ERR_ARCHIVE_UNSAFE');
  }
});

test('a hard link to an earlier hard link is copied from the file', async () => {
  const dir = await tmp();
  try {
    const archive = await makeTarGz([
      { name: 'handler.js', data: 'code', mode: 0o755 },
      { name: 'b', type: 'link', linkname: 'handler.js' },
      { name: 'a', type: 'link', linkname: 'b' },
    ]);
    await extractArchive(archive, join(dir, 'out'), small, { entrypoint: 'handler.js' });
    assert.equal(await readFile(join(dir, 'out', 'a'), 'utf8'), 'code');
    assert.equal(((await stat(join(dir, 'out', 'a'))).mode & 0o777).toString(8), '755');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('resolvesInside follows archive links lexically with a floor', () => {
  const links = new Map([
    ['sub/a', '..'],
    ['x', 'sub'],
  ]);
  assert.equal(resolvesInside('l', 'sub/file', links, 0), true);
  assert.equal(resolvesInside('sub/l', '../x/file', links, 0), true);
  assert.equal(resolvesInside('l', 'sub/a/..', links, 0), false);
  assert.equal(resolvesInside('l', 'x/a/../..', links, 0), false);
  assert.equal(resolvesInside('top/l', '../top/f', new Map(), 1), false);
  assert.equal(resolvesInside('top/l', 'f', new Map(), 1), true);
  const loop = new Map([
    ['a', 'b'],
    ['b', 'a'],
  ]);
  assert.equal(resolvesInside('l', 'a', loop, 0), false);
});

test('device and fifo entries are rejected', async () => {
  await extractFails(await makeTarGz([{ name: 'handler.js', data: '' }, { name: 'null', type: 'character-device', devmajor: 1, devminor: 3 }]), 'AETHER_ERR_ARCHIVE_UNSAFE');
  await extractFails(await makeTarGz([{ name: 'handler.js', data: '' }, { name: 'sda', type: 'block-device', devmajor: 8, devminor: 0 }]), 'AETHER_ERR_ARCHIVE_UNSAFE');
  await extractFails(await makeTarGz([{ name: 'handler.js', data: '' }, { name: 'p', type: 'fifo' }]), 'AETHER_ERR_ARCHIVE_UNSAFE');
  await extractFails(await makeZip([{ name: 'handler.js', data: '' }, { name: 'dev', data: '', mode: 0o020644 }]), 'AETHER_ERR_ARCHIVE_UNSAFE');
});

test('zip bombs and tar bombs hit the unpacked limit', async () => {
  const zeros = Buffer.alloc(small.maxUnpackedBytes + 1);
  const zip = await makeZip([{ name: 'handler.js', data: zeros }]);
  assert.ok(zip.length < 2000, 'the bomb is small');
  const err = await extractFails(zip, 'AETHER_ERR_ARCHIVE_TOO_LARGE');
  assert.equal(err.status, 400);
  // many files that are each under the limit
  const parts = Array.from({ length: 5 }, (_, i) => ({ name: `f${i}`, data: Buffer.alloc(20 * 1024) }));
  await extractFails(await makeZip(parts), 'AETHER_ERR_ARCHIVE_TOO_LARGE');
  // tar.gz: real decompressed bytes are counted
  await extractFails(await makeTarGz([{ name: 'handler.js', data: zeros }]), 'AETHER_ERR_ARCHIVE_TOO_LARGE');
  // a gzip of endless zero blocks after the tar (never an entry) is cut off too
  const endless = gzipSync(Buffer.alloc(small.maxUnpackedBytes + small.maxEntries * 4096 + 2 * 1024 * 1024));
  await extractFails(endless, 'AETHER_ERR_ARCHIVE_TOO_LARGE');
});

test('too many entries', async () => {
  const many = Array.from({ length: small.maxEntries + 1 }, (_, i) => ({ name: `f${i}.js`, data: 'x' }));
  await extractFails(await makeZip(many), 'AETHER_ERR_ARCHIVE_TOO_LARGE', small);
  await extractFails(await makeTarGz(many), 'AETHER_ERR_ARCHIVE_TOO_LARGE', small);
  // directories count as entries too
  const dirs = Array.from({ length: small.maxEntries + 1 }, (_, i) => ({ name: `d${i}/`, dir: true }));
  await extractFails(await makeZip(dirs), 'AETHER_ERR_ARCHIVE_TOO_LARGE', small);
});

test('a zip whose headers lie about sizes is rejected', async () => {
  const real = Buffer.alloc(small.maxUnpackedBytes * 4, 'a');
  const zip = await makeZip([{ name: 'handler.js', data: real }]);
  // Patch the uncompressed size in the central directory (offset 24) and local header (offset 22).
  const cd = zip.indexOf(Buffer.from([0x50, 0x4b, 0x01, 0x02]));
  assert.ok(cd > 0);
  assert.equal(zip.readUInt32LE(cd + 24), real.length);
  zip.writeUInt32LE(10, cd + 24);
  if (zip.readUInt32LE(22) === real.length) zip.writeUInt32LE(10, 22);
  const err = await extractFails(zip, 'AETHER_ERR_ARCHIVE_INVALID');
  assert.match(err.message, /size/);
});

test('truncated and garbage archives are invalid', async () => {
  const zip = await makeZip([{ name: 'handler.js', data: 'x'.repeat(5000), compress: true }]);
  await extractFails(zip.subarray(0, Math.floor(zip.length / 2)), 'AETHER_ERR_ARCHIVE_INVALID');
  const tgz = await makeTarGz([{ name: 'handler.js', data: Buffer.alloc(5000, 'x') }]);
  await extractFails(tgz.subarray(0, Math.floor(tgz.length / 2)), 'AETHER_ERR_ARCHIVE_INVALID');
  await extractFails(Buffer.from('definitely not an archive'), 'AETHER_ERR_ARCHIVE_INVALID');
  await extractFails(gzipSync(Buffer.from('gzip of plain text, not a tar')), 'AETHER_ERR_ARCHIVE_INVALID');
  // zip signature followed by junk
  await extractFails(Buffer.concat([Buffer.from([0x50, 0x4b, 0x03, 0x04]), Buffer.alloc(200, 7)]), 'AETHER_ERR_ARCHIVE_INVALID');
});

test('duplicate or conflicting entries are invalid', async () => {
  await extractFails(await makeTarGz([{ name: 'handler.js', data: 'a' }, { name: 'handler.js', data: 'b' }]), 'AETHER_ERR_ARCHIVE_INVALID');
  await extractFails(await makeTarGz([{ name: 'handler.js', data: 'a' }, { name: 'handler.js/x', data: 'b' }]), 'AETHER_ERR_ARCHIVE_INVALID');
});

test('missing entrypoint names it', async () => {
  const err = await extractFails(await makeZip([{ name: 'index.js', data: '' }]), 'AETHER_ERR_ENTRYPOINT_MISSING');
  assert.match(err.message, /handler\.js/);
  // a directory with the entrypoint's name does not count
  await extractFails(await makeTarGz([{ name: 'handler.js/', type: 'directory' }, { name: 'other', data: '' }]), 'AETHER_ERR_ENTRYPOINT_MISSING');
  // an empty archive
  await extractFails(await makeTarGz([]), 'AETHER_ERR_ENTRYPOINT_MISSING');
  // a symlink to a file inside the root is a valid entrypoint
  await validateArchive(await makeTarGz([{ name: 'src/h.js', data: '' }, { name: 'handler.js', type: 'symlink', linkname: 'src/h.js' }]), small, 'handler.js');
});

test('archive larger than maxArchiveBytes is a payload error', async () => {
  const zip = await makeZip([{ name: 'handler.js', data: randomish(4096), compress: false }]);
  await extractFails(zip, 'AETHER_ERR_PAYLOAD_TOO_LARGE', { ...small, maxArchiveBytes: 1000 });
});

test('refuses a non-empty destination and accepts an empty one', async () => {
  const dir = await tmp();
  try {
    const zip = await makeZip([{ name: 'handler.js', data: 'a' }]);
    await extractArchive(zip, join(dir, 'out'), DEFAULT_LIMITS);
    await expectCode(extractArchive(zip, join(dir, 'out'), DEFAULT_LIMITS), 'AETHER_ERR_INTERNAL');
    assert.equal(await readFile(join(dir, 'out', 'handler.js'), 'utf8'), 'a');
    await rm(join(dir, 'out', 'handler.js'));
    await extractArchive(zip, join(dir, 'out'), DEFAULT_LIMITS);
    assert.equal(await readFile(join(dir, 'out', 'handler.js'), 'utf8'), 'a');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

function randomish(n: number): Buffer {
  const b = Buffer.alloc(n);
  let s = 12345;
  for (let i = 0; i < n; i++) {
    s = (s * 1103515245 + 12345) & 0x7fffffff;
    b[i] = s & 0xff;
  }
  return b;
}
