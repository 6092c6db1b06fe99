import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdir, mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command } from 'commander';
import { addGlobalOptions, registerImage } from './index.ts';
import type { CliIo } from './index.ts';

function cli(): { program: Command; out: string[]; err: string[]; code: () => number } {
  const out: string[] = [];
  const err: string[] = [];
  let code = 0;
  const io: CliIo = { out: (c) => out.push(String(c)), err: (t) => err.push(t), setExitCode: (c) => (code = c) };
  const program = addGlobalOptions(new Command('aether').exitOverride());
  registerImage(program, { io });
  return { program, out, err, code: () => code };
}

test('aether image base: an unknown kind is one error line and exit 1', async () => {
  const c = cli();
  await c.program.parseAsync(['node', 'aether', 'image', 'base', 'ruby']);
  assert.equal(c.code(), 1);
  assert.match(c.err.join(''), /^error: AETHER_ERR_VALIDATION: unknown base image "ruby" \(expected node or python\)\n$/);
});

test('aether image build: a bad --env and a missing source are reported, not thrown', async () => {
  const c = cli();
  await c.program.parseAsync(['node', 'aether', 'image', 'build', '/nonexistent-dir', '-o', '/tmp/x.ext4']);
  assert.equal(c.code(), 1);
  assert.match(c.err.join(''), /AETHER_ERR_IMAGE_INVALID: \/nonexistent-dir does not exist/);
  const d = cli();
  await d.program.parseAsync(['node', 'aether', 'image', 'build', '/nonexistent-dir', '-o', '/tmp/x.ext4', '--env', 'NOEQUALS']);
  assert.match(d.err.join(''), /--env NOEQUALS: expected KEY=VALUE/);
});

const tools = spawnSync('mke2fs', ['-V']).status === 0 && spawnSync('musl-gcc', ['--version']).status === 0 && spawnSync('debugfs', ['-V']).status === 0;

test('aether image build <dir> --json writes the image and prints its runtime.json', { skip: tools ? false : 'needs mke2fs, debugfs, musl-gcc' }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'aether-cli-image-'));
  try {
    const src = join(dir, 'src');
    await mkdir(join(src, 'etc'), { recursive: true });
    await writeFile(join(src, 'etc', 'hello'), 'hi');
    const out = join(dir, 'root.ext4');
    const c = cli();
    await c.program.parseAsync(['node', 'aether', '--json', 'image', 'build', src, '-o', out, '--user', '1000:1000', '--env', 'A=b=c']);
    assert.equal(c.code(), 0, c.err.join(''));
    assert.deepEqual(JSON.parse(c.out.join('')), { image: out, runtime: { user: '1000:1000', env: { A: 'b=c' } } });
    assert.ok((await stat(out)).size > 0);
    assert.equal(spawnSync('debugfs', ['-R', 'cat /etc/hello', out], { encoding: 'utf8' }).stdout, 'hi');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
