import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { Command } from 'commander';
import { addFunctionFlags, collectEnv, functionFieldsFromFlags, intArg, parseEnvPair, parseHeader, readDataArg } from './flags.ts';
import type { FunctionFlags } from './flags.ts';

test('parseEnvPair splits at the first = and allows empty values', () => {
  assert.deepEqual(parseEnvPair('A=b=c'), ['A', 'b=c']);
  assert.deepEqual(parseEnvPair('EMPTY='), ['EMPTY', '']);
  assert.throws(() => parseEnvPair('NOEQ'), /KEY=VALUE/);
  assert.throws(() => parseEnvPair('=v'), /KEY=VALUE/);
  assert.deepEqual(collectEnv('B=2', { A: '1' }), { A: '1', B: '2' });
});

test('parseHeader and intArg', () => {
  assert.deepEqual(parseHeader('X-Thing:  a: b '), ['X-Thing', 'a: b']);
  assert.throws(() => parseHeader('nocolon'), /Name: value/);
  assert.throws(() => parseHeader('bad name: x'), /invalid header name/);
  assert.equal(intArg('42'), 42);
  assert.throws(() => intArg('4.2'), /integer/);
  assert.throws(() => intArg('abc'), /integer/);
});

test('readDataArg: text, @file, @-', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'aether-data-'));
  try {
    await writeFile(join(dir, 'body.json'), '{"a":1}');
    assert.equal((await readDataArg('plain text')).toString(), 'plain text');
    assert.equal((await readDataArg(`@${join(dir, 'body.json')}`)).toString(), '{"a":1}');
    assert.equal((await readDataArg('@-', Readable.from([Buffer.from('from '), Buffer.from('stdin')]))).toString(), 'from stdin');
    await assert.rejects(readDataArg(`@${join(dir, 'missing')}`), { code: 'AETHER_ERR_VALIDATION', message: /ENOENT/ });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('function flags parse through commander into API fields', async () => {
  let got: FunctionFlags | undefined;
  const cmd = addFunctionFlags(new Command('x').exitOverride()).action((o: FunctionFlags) => {
    got = o;
  });
  await cmd.parseAsync(
    ['--runtime', 'python', '--memory', '256', '--env', 'A=1', '--env', 'B=x=y', '--timeout-ms', '5000', '--min', '1', '--max', '3', '--concurrency', '2', '--sandbox', 'process'],
    { from: 'user' },
  );
  assert.deepEqual(functionFieldsFromFlags(got ?? {}), {
    runtime: 'python',
    memory_mb: 256,
    env_vars: { A: '1', B: 'x=y' },
    timeout_ms: 5000,
    min_instances: 1,
    max_instances: 3,
    concurrency_target: 2,
    sandbox: 'process',
  });
  const bad = addFunctionFlags(new Command('y').exitOverride().configureOutput({ writeErr: () => {} })).action(() => {});
  await assert.rejects(bad.parseAsync(['--runtime', 'ruby'], { from: 'user' }), /must be one of node, python/);
  await assert.rejects(bad.parseAsync(['--memory', 'lots'], { from: 'user' }), /must be an integer/);
});
