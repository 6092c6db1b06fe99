import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { lstat, mkdir, mkdtemp, readFile, readlink, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AetherError } from '../core/index.ts';
import { applyLayer, buildImage, readImageLayout, resolveInRoot, unpackArchive } from './index.ts';
import { makeDockerSave, makeOciLayout, makeTar } from './testing.ts';
import type { LayerEntry } from './testing.ts';

async function tmp(): Promise<string> {
  return mkdtemp(join(tmpdir(), 'aether-oci-test-'));
}

async function layerFile(dir: string, name: string, entries: LayerEntry[]): Promise<string> {
  const p = join(dir, name);
  await writeFile(p, await makeTar(entries));
  return p;
}

const exists = (p: string): Promise<boolean> => lstat(p).then(() => true, () => false);

async function expectInvalid(p: Promise<unknown>, msg: RegExp): Promise<void> {
  await assert.rejects(p, (e: unknown) => e instanceof AetherError && e.code === 'AETHER_ERR_IMAGE_INVALID' && msg.test(e.message));
}

// Layer 1 is the base; layer 2 deletes, hides and replaces parts of it.
const LOWER: LayerEntry[] = [
  { name: 'etc/', type: 'directory' },
  { name: 'etc/keep', data: 'keep' },
  { name: 'etc/gone', data: 'gone' },
  { name: 'opq/', type: 'directory' },
  { name: 'opq/old-file', data: 'old' },
  { name: 'opq/old-dir/', type: 'directory' },
  { name: 'opq/old-dir/nested', data: 'nested' },
  { name: 'tree/', type: 'directory' },
  { name: 'tree/a/', type: 'directory' },
  { name: 'tree/a/b', data: 'b' },
  { name: 'swap', data: 'was a file' },
  { name: 'usr/lib/', type: 'directory' },
  { name: 'lib', type: 'symlink', linkname: 'usr/lib' },
  { name: 'bin/tool', data: '#!/bin/sh\n', mode: 0o4755 },
  { name: 'bin/tool-link', type: 'link', linkname: 'bin/tool' },
];
const UPPER: LayerEntry[] = [
  { name: 'etc/.wh.gone' },
  { name: 'etc/added', data: 'added' },
  // Entries of the same layer written before the opaque marker survive it.
  { name: 'opq/new-before', data: 'nb' },
  { name: 'opq/.wh..wh..opq' },
  { name: 'opq/new-after', data: 'na' },
  { name: 'tree/.wh.a' },
  { name: 'swap/', type: 'directory' },
  { name: 'swap/inside', data: 'now a dir' },
  // Written through the image's /lib → usr/lib symlink, as a chroot would.
  { name: 'lib/libx.so', data: 'lib' },
];

test('layers apply in order: whiteouts, opaque directories, type changes, links', async () => {
  const dir = await tmp();
  try {
    const root = join(dir, 'root');
    await mkdir(root);
    await applyLayer(root, await layerFile(dir, 'l1.tar', LOWER));
    const s = await applyLayer(root, await layerFile(dir, 'l2.tar', UPPER));
    assert.equal(s.whiteouts, 3);
    assert.equal(await readFile(join(root, 'etc/keep'), 'utf8'), 'keep');
    assert.equal(await readFile(join(root, 'etc/added'), 'utf8'), 'added');
    assert.equal(await exists(join(root, 'etc/gone')), false);
    assert.equal(await exists(join(root, 'etc/.wh.gone')), false);
    assert.deepEqual((await readdir(join(root, 'opq'))).sort(), ['new-after', 'new-before']);
    assert.equal(await exists(join(root, 'tree/a')), false);
    assert.ok(await exists(join(root, 'tree')));
    assert.equal(await readFile(join(root, 'swap/inside'), 'utf8'), 'now a dir');
    assert.equal(await readlink(join(root, 'lib')), 'usr/lib');
    assert.equal(await readFile(join(root, 'usr/lib/libx.so'), 'utf8'), 'lib');
    const tool = await stat(join(root, 'bin/tool'));
    assert.equal(tool.mode & 0o7777, 0o4755);
    assert.equal((await stat(join(root, 'bin/tool-link'))).ino, tool.ino);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('the same layers applied in the other order give a different tree (order matters)', async () => {
  const dir = await tmp();
  try {
    const root = join(dir, 'root');
    await mkdir(root);
    await applyLayer(root, await layerFile(dir, 'l2.tar', UPPER.filter((e) => !e.name.startsWith('swap') && !e.name.startsWith('lib'))));
    await applyLayer(root, await layerFile(dir, 'l1.tar', LOWER));
    // Whiteouts in a lower layer do not hide what a later layer adds.
    assert.equal(await readFile(join(root, 'etc/gone'), 'utf8'), 'gone');
    assert.ok(await exists(join(root, 'opq/old-dir/nested')));
    assert.ok(await exists(join(root, 'tree/a/b')));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('no entry can write outside the root', async () => {
  const dir = await tmp();
  try {
    const root = join(dir, 'root');
    const outside = join(dir, 'outside');
    await mkdir(root);
    await mkdir(outside);
    await expectInvalid(applyLayer(root, await layerFile(dir, 'dotdot.tar', [{ name: '../outside/x', data: 'x' }])), /climbs out/);
    // Symlinks (absolute or relative) resolve inside the image root.
    await applyLayer(root, await layerFile(dir, 'links.tar', [
      { name: 'abs', type: 'symlink', linkname: outside },
      { name: 'rel', type: 'symlink', linkname: '../../outside' },
      { name: 'abs/x', data: 'abs' },
      { name: 'rel/y', data: 'rel' },
      { name: 'abs/.wh.victim' },
      { name: 'sub/deeper/', type: 'directory' },
      { name: 'sub/deeper/up', type: 'symlink', linkname: '/etc' },
      { name: 'sub/deeper/up/z', data: 'z' },
    ]));
    assert.equal(await readFile(join(root, 'etc', 'z'), 'utf8'), 'z');
    await writeFile(join(outside, 'victim'), 'still here');
    assert.deepEqual((await readdir(outside)).sort(), ['victim']);
    assert.equal(await readFile(join(root, outside.slice(1), 'x'), 'utf8'), 'abs');
    assert.equal(await readFile(join(root, 'outside', 'y'), 'utf8'), 'rel');
    assert.equal(await resolveInRoot(root, ['rel', '..', '..', '..', 'etc'], true), join(root, 'etc'));
    await expectInvalid(applyLayer(root, await layerFile(dir, 'wh.tar', [{ name: 'etc/.wh..' }])), /bad whiteout/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

const CONFIG = { User: 'app', WorkingDir: '/srv', Env: ['PATH=/usr/bin:/bin', 'GREETING=a=b'], Entrypoint: ['/bin/app'], Cmd: ['--port', '8080'], Volumes: { '/data': {} } };
const EXPECT_RT = { user: 'app', workdir: '/srv', env: { PATH: '/usr/bin:/bin', GREETING: 'a=b' }, cmd: ['/bin/app', '--port', '8080'], writable_paths: ['/data'] };

test('docker-save and OCI layout archives read the same image', async () => {
  const dir = await tmp();
  try {
    for (const [name, make] of [['docker', makeDockerSave], ['oci', makeOciLayout]] as const) {
      const archive = join(dir, `${name}.tar`);
      await writeFile(archive, await make([LOWER, UPPER], CONFIG));
      const unpacked = join(dir, `${name}-unpacked`);
      await mkdir(unpacked);
      await unpackArchive(archive, unpacked);
      const layout = await readImageLayout(unpacked);
      assert.equal(layout.layers.length, 2, name);
      assert.deepEqual(layout.runtime, EXPECT_RT, name);
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('docker save archives whose repeated layer is a link to its first copy', async () => {
  const dir = await tmp();
  try {
    const layer = await makeTar([{ name: 'f', data: 'x' }]);
    const manifest = JSON.stringify([{ Config: 'c.json', Layers: ['a/layer.tar', 'b/layer.tar'] }]);
    const archive = join(dir, 'ds.tar');
    await writeFile(archive, await makeTar([
      { name: 'a/layer.tar', data: layer },
      { name: 'b/layer.tar', type: 'symlink', linkname: '../a/layer.tar' },
      { name: 'c.json', data: '{"config":{}}' },
      { name: 'manifest.json', data: manifest },
    ]));
    const u = join(dir, 'u');
    await mkdir(u);
    await unpackArchive(archive, u);
    const layout = await readImageLayout(u);
    const root = join(dir, 'root');
    await mkdir(root);
    for (const l of layout.layers) await applyLayer(root, l.path);
    assert.equal(await readFile(join(root, 'f'), 'utf8'), 'x');
    const evil = join(dir, 'evil.tar');
    await writeFile(evil, await makeTar([{ name: 'x/layer.tar', type: 'symlink', linkname: '../../../etc/passwd' }]));
    const u2 = join(dir, 'u2');
    await mkdir(u2);
    await expectInvalid(unpackArchive(evil, u2), /points outside/);
    // Lexically inside, physically outside (through a link to '.'): caught when the layout is read.
    const sneaky = join(dir, 'sneaky.tar');
    await writeFile(sneaky, await makeTar([
      { name: 'd', type: 'symlink', linkname: '.' },
      { name: 'd/x', type: 'symlink', linkname: '..' },
      { name: 'manifest.json', data: JSON.stringify([{ Config: 'c.json', Layers: ['x/outside.tar'] }]) },
      { name: 'c.json', data: '{}' },
    ]));
    await writeFile(join(dir, 'outside.tar'), layer);
    const u3 = join(dir, 'u3');
    await mkdir(u3);
    await unpackArchive(sneaky, u3);
    await expectInvalid(readImageLayout(u3), /points outside the archive/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('a tampered OCI blob or a missing manifest is rejected', async () => {
  const dir = await tmp();
  try {
    const archive = join(dir, 'oci.tar');
    await writeFile(archive, await makeOciLayout([LOWER], CONFIG));
    const unpacked = join(dir, 'u');
    await mkdir(unpacked);
    await unpackArchive(archive, unpacked);
    const blobs = join(unpacked, 'blobs', 'sha256');
    for (const b of await readdir(blobs)) {
      const text = await readFile(join(blobs, b), 'utf8');
      if (text.includes('"User":"app"')) await writeFile(join(blobs, b), text.replace('"User":"app"', '"User":"root"'));
    }
    await expectInvalid(readImageLayout(unpacked), /does not match its digest/);
    const empty = join(dir, 'empty');
    await mkdir(empty);
    await expectInvalid(readImageLayout(empty), /neither manifest.json/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

const haveTools = spawnSync('mke2fs', ['-V']).status === 0 && spawnSync('musl-gcc', ['--version']).status === 0 && spawnSync('debugfs', ['-V']).status === 0;

test('aether image build: an OCI archive becomes an ext4 root with runtime.json and aether-init', { skip: haveTools ? false : 'needs mke2fs, debugfs and musl-gcc' }, async () => {
  const dir = await tmp();
  try {
    const archive = join(dir, 'img.tar');
    await writeFile(archive, await makeOciLayout([LOWER, UPPER], CONFIG));
    const out = join(dir, 'img.ext4');
    const progress: string[] = [];
    const rt = await buildImage({ source: archive, output: out, runtime: { env: { EXTRA: '1' } }, onProgress: (m) => progress.push(m) });
    assert.deepEqual(rt, { ...EXPECT_RT, env: { EXTRA: '1' } });
    assert.ok(progress.some((m) => /applying layer 2\/2/.test(m)), progress.join('\n'));
    const cat = (p: string): string => spawnSync('debugfs', ['-R', `cat ${p}`, out], { encoding: 'utf8' }).stdout;
    assert.deepEqual(JSON.parse(cat('/etc/firework/runtime.json')), rt);
    assert.equal(cat('/etc/added'), 'added');
    assert.equal(cat('/etc/gone'), '');
    const ls = spawnSync('debugfs', ['-R', 'stat /sbin/aether-init', out], { encoding: 'utf8' }).stdout;
    assert.match(ls, /Mode:\s+0755/);
    const label = spawnSync('dumpe2fs', ['-h', out], { encoding: 'utf8' }).stdout;
    assert.match(label, /Filesystem volume name:\s+aether-root/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
