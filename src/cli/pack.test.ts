import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import yauzl from 'yauzl';
import { guessEntrypoint, guessRuntime, nameForDir, packDirectory, sanitizeName } from './pack.ts';

async function tree(files: Record<string, string>): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'aether-pack-'));
  for (const [p, content] of Object.entries(files)) {
    await mkdir(dirname(join(dir, p)), { recursive: true });
    await writeFile(join(dir, p), content);
  }
  return dir;
}

/** Entry names and contents, read back with a real unzip implementation. */
async function unzip(buf: Buffer): Promise<Map<string, string>> {
  const zip = await new Promise<yauzl.ZipFile>((resolve, reject) =>
    yauzl.fromBuffer(buf, { lazyEntries: true }, (err, z) => (err ? reject(err) : resolve(z))),
  );
  const out = new Map<string, string>();
  await new Promise<void>((resolve, reject) => {
    zip.on('error', reject);
    zip.on('end', resolve);
    zip.on('entry', (entry: yauzl.Entry) => {
      zip.openReadStream(entry, (err, stream) => {
        if (err) return reject(err);
        const chunks: Buffer[] = [];
        stream.on('data', (c: Buffer) => chunks.push(c));
        stream.on('end', () => {
          out.set(entry.fileName, Buffer.concat(chunks).toString());
          zip.readEntry();
        });
      });
    });
    zip.readEntry();
  });
  return out;
}

test('packDirectory zips at the root, honours .aetherignore, skips .git, keeps node_modules', async () => {
  const dir = await tree({
    'handler.js': 'server',
    'lib/util.js': 'util',
    'node_modules/dep/index.js': 'dep',
    '.git/HEAD': 'ref',
    '.aetherignore': '# comment\n*.log\nsecrets/\n!keep.log\n',
    'debug.log': 'noise',
    'keep.log': 'kept',
    'secrets/key.pem': 'k',
    'lib/deep/trace.log': 'noise',
  });
  try {
    const { archive, files } = await packDirectory(dir);
    const entries = await unzip(archive);
    assert.deepEqual([...entries.keys()].sort(), ['handler.js', 'keep.log', 'lib/util.js', 'node_modules/dep/index.js']);
    assert.deepEqual([...files].sort(), [...entries.keys()].sort());
    assert.equal(entries.get('node_modules/dep/index.js'), 'dep');
    assert.equal(entries.get('handler.js'), 'server');
    // Deterministic: same tree, same bytes (so the same code_sha256).
    assert.deepEqual((await packDirectory(dir)).archive, archive);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('packDirectory keeps in-tree symlinked files as copies and drops links that leave the tree', async () => {
  const outside = await tree({ 'secret.txt': 'nope' });
  const dir = await tree({ 'handler.js': 'x', 'real.txt': 'real' });
  try {
    await symlink('real.txt', join(dir, 'alias.txt'));
    await symlink(join(outside, 'secret.txt'), join(dir, 'escape.txt'));
    const entries = await unzip((await packDirectory(dir)).archive);
    assert.equal(entries.get('alias.txt'), 'real');
    assert.equal(entries.has('escape.txt'), false);
  } finally {
    await rm(dir, { recursive: true, force: true });
    await rm(outside, { recursive: true, force: true });
  }
});

test('packDirectory refuses a missing or fully ignored directory', async () => {
  await assert.rejects(packDirectory('/nonexistent/aether-x'), { code: 'AETHER_ERR_VALIDATION', message: /no such directory/ });
  const dir = await tree({ '.aetherignore': '*\n', 'a.js': '' });
  try {
    await assert.rejects(packDirectory(dir), { code: 'AETHER_ERR_VALIDATION', message: /nothing to deploy/ });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('names, runtime and entrypoint guesses', async () => {
  assert.equal(sanitizeName('My_Cool.App'), 'my-cool-app');
  assert.equal(sanitizeName('123-abc'), 'abc');
  assert.equal(sanitizeName('___'), 'fn');
  assert.equal(sanitizeName('a'.repeat(80)).length, 63);
  assert.equal(nameForDir('/tmp/Hello World/'), 'hello-world');

  const py = await tree({ 'main.py': '', 'requirements.txt': '' });
  const js = await tree({ 'package.json': JSON.stringify({ main: 'src/server.js' }), 'src/server.js': '' });
  const both = await tree({ 'handler.js': '', 'main.py': '' });
  try {
    assert.equal(await guessRuntime(py), 'python');
    assert.equal(await guessRuntime(js), 'node');
    assert.equal(await guessRuntime(both), 'node');
    assert.equal(await guessRuntime(js, 'app.py'), 'python');
    assert.equal(await guessEntrypoint(js, 'node'), 'src/server.js');
    assert.equal(await guessEntrypoint(both, 'node'), undefined);
    assert.equal(await guessEntrypoint(py, 'python'), undefined);
  } finally {
    for (const d of [py, js, both]) await rm(d, { recursive: true, force: true });
  }
});
