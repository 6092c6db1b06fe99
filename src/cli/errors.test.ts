import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { Command, CommanderError } from 'commander';
import { addGlobalOptions, configureCliErrors, registerClientCommands, registerDoctor, registerImage } from './index.ts';
import { registerServeCommands } from './serve.ts';
import { capturingIo, type CliRun } from './testing.ts';

type Run = CliRun;

/** The whole program wired as src/bin/aether.ts does, output captured, commander throwing instead of exiting. */
async function cli(args: string[]): Promise<Run> {
  const r: Run = { out: '', err: '', code: 0 };
  const io = capturingIo(r);
  const program = new Command('aether').showHelpAfterError();
  addGlobalOptions(program);
  registerServeCommands(program, () => Promise.reject(new Error('no node is started in this test')));
  // Nothing here may reach a platform: a closed port makes a stray request fail loudly.
  const deps = { io, env: { AETHER_URL: 'http://127.0.0.1:1', AETHER_ADMIN_TOKEN: 't' } };
  registerClientCommands(program, deps);
  registerDoctor(program, deps);
  registerImage(program, deps);
  configureCliErrors(program, { io, exitOverride: true });
  try {
    await program.parseAsync(args, { from: 'user' });
  } catch (err) {
    assert.ok(err instanceof CommanderError, String(err));
    r.code = err.exitCode;
  }
  return r;
}

const firstLine = (s: string): string => s.split('\n')[0] ?? '';

test('an unknown option: a coded error line, the usage after it, exit 1', async () => {
  const r = await cli(['fn', 'ls', '--bogus']);
  assert.equal(r.code, 1);
  assert.equal(firstLine(r.err), "error: AETHER_ERR_VALIDATION: unknown option '--bogus'");
  assert.match(r.err, /\nUsage: aether fn ls/);
  const up = await cli(['up', '--no-such-flag']);
  assert.equal(up.code, 1);
  assert.equal(firstLine(up.err), "error: AETHER_ERR_VALIDATION: unknown option '--no-such-flag'");
});

test('a missing argument and an unknown command: coded error lines, exit 1', async () => {
  const r = await cli(['fn', 'get']);
  assert.equal(r.code, 1);
  assert.match(firstLine(r.err), /^error: AETHER_ERR_VALIDATION: missing required argument '\w+'$/);
  assert.match(r.err, /\nUsage: aether fn get/);
  const unknown = await cli(['fn', 'frobnicate']);
  assert.equal(unknown.code, 1);
  assert.match(firstLine(unknown.err), /^error: AETHER_ERR_VALIDATION: unknown command 'frobnicate'/);
});

test('a bad integer option value: a coded error line naming the option, exit 1', async () => {
  const r = await cli(['up', '--port', 'abc']);
  assert.equal(r.code, 1);
  assert.equal(firstLine(r.err), "error: AETHER_ERR_VALIDATION: option '--port <port>' argument 'abc' is invalid. must be an integer");
  const fn = await cli(['fn', 'create', 'x', '--memory', '12.5']);
  assert.equal(fn.code, 1);
  assert.match(firstLine(fn.err), /^error: AETHER_ERR_VALIDATION: option '--memory <mb>' argument '12\.5' is invalid/);
});

test('aether deploy <source> without --dry-run, and --dry-run without a source: AETHER_ERR_VALIDATION, exit 1', async () => {
  const r = await cli(['deploy', './specs']);
  assert.equal(r.code, 1);
  assert.match(r.err, /^error: AETHER_ERR_VALIDATION: the platform deploys from its --source; run `aether deploy <source> --dry-run` to preview/);
  assert.equal(r.err.split('\n').length, 2, 'one line');
  const noSource = await cli(['deploy', '--dry-run']);
  assert.equal(noSource.code, 1);
  assert.equal(noSource.err, 'error: AETHER_ERR_VALIDATION: give the specs to plan: aether deploy <dir|git-url[#branch]> --dry-run\n');
});

test('the aether binary prints the coded line on stderr and exits 1', async () => {
  const bin = fileURLToPath(new URL('../bin/aether.ts', import.meta.url));
  const r = await new Promise<{ code: number | null; stderr: string }>((resolve) => {
    execFile(process.execPath, [bin, 'fn', 'ls', '--bogus'], { env: { ...process.env, AETHER_URL: 'http://127.0.0.1:1' } }, (err, _stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? null) : 0, stderr });
    });
  });
  assert.equal(r.code, 1);
  assert.equal(firstLine(r.stderr), "error: AETHER_ERR_VALIDATION: unknown option '--bogus'");
});
