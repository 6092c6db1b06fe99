/**
 * The README's install + five-minute tour, as a new user runs it: `npm link` puts `aether` on PATH
 * (into a temporary prefix here, not the machine's), the tour runs in a directory of its own, and
 * the checkout is left exactly as it was. Lint covers only the project's own files.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, execFileSync, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { ESLint } from 'eslint';
import { ROOT, eventually } from './support/platform.ts';

const dirs: string[] = [];
after(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});
const tempDir = (prefix: string): string => {
  const d = mkdtempSync(join(tmpdir(), prefix));
  dirs.push(d);
  return d;
};

const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
const gitStatus = (): string => execFileSync('git', ['status', '--porcelain', '--ignored'], { cwd: ROOT, encoding: 'utf8' });
const hasGit = ((): boolean => {
  try {
    gitStatus();
    return true;
  } catch {
    return false;
  }
})();

test('README tour: npm link, then the tour in a directory of its own; the checkout is untouched', { skip: hasGit ? false : 'not a git checkout', timeout: 240_000 }, async () => {
  // What the README says, so this test follows it.
  assert.match(readme, /\nnpm link +# `aether` on PATH/);
  assert.match(readme, /\nmkdir -p ~\/aether-tour && cd ~\/aether-tour\naether up --port 8080/);
  const handler = /mkdir hello && cat > hello\/handler\.js <<'JS'\n([\s\S]*?)\nJS\n/.exec(readme)?.[1];
  assert.ok(handler, 'the tour writes hello/handler.js');

  const before = gitStatus();
  const prefix = tempDir('aether-e2e-prefix-');
  const env: Record<string, string> = { HOME: tempDir('aether-e2e-home-'), PATH: `${join(prefix, 'bin')}:/usr/local/bin:/usr/bin:/bin`, npm_config_prefix: prefix, AETHER_LOG_LEVEL: 'warn', ...(process.env['AETHER_SANDBOX_NETWORK'] ? { AETHER_SANDBOX_NETWORK: process.env['AETHER_SANDBOX_NETWORK'] } : {}) };
  execFileSync('npm', ['link', '--no-audit', '--no-fund'], { cwd: ROOT, env, stdio: 'pipe', timeout: 120_000 });
  assert.ok(existsSync(join(prefix, 'bin', 'aether')), 'npm link put aether on PATH');

  const tour = tempDir('aether-e2e-tour-');
  const up = spawn('aether', ['up', '--port', '0'], { cwd: tour, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  up.stdout.on('data', (d: Buffer) => (log += d.toString()));
  up.stderr.on('data', (d: Buffer) => (log += d.toString()));
  const exited = new Promise((r) => up.once('exit', r));
  const aether = (args: string[]): Promise<{ code: number; out: string; err: string }> =>
    new Promise((resolve) => execFile('aether', args, { cwd: tour, env, timeout: 120_000 }, (err, out, e) => resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, out, err: e })));
  try {
    await eventually(async () => /is up at http/.test(log) || (up.exitCode !== null && assert.fail(log)), 90_000);
    assert.ok(existsSync(join(tour, '.aether', 'admin.token')), 'state in ./.aether of the tour directory');
    mkdirSync(join(tour, 'hello'));
    writeFileSync(join(tour, 'hello', 'handler.js'), handler);

    const deploy = await aether(['fn', 'deploy', 'hello', '--name', 'hello']);
    assert.equal(deploy.code, 0, `${deploy.err}\n${log}`);
    const invoke = await aether(['fn', 'invoke', 'hello', '--path', '/there']);
    assert.equal(invoke.code, 0, `${invoke.err}\n${log}`);
    assert.equal(invoke.out, 'hello world from /there\n');
    assert.match((await aether(['fn', 'ls'])).out, /\nhello\s/);
    // Delete: the README's last tour step.
    assert.match(readme, /\naether fn rm hi\n/);
    const rm = await aether(['fn', 'rm', 'hello']);
    assert.equal(rm.code, 0, rm.err);
    const gone = await aether(['fn', 'invoke', 'hello']);
    assert.equal(gone.code, 1);
    assert.match(gone.out, /AETHER_ERR_FUNCTION_NOT_FOUND/);
  } finally {
    up.kill('SIGTERM');
    await exited;
  }
  assert.equal(gitStatus(), before, 'the tour wrote nothing into the checkout');
});

test('lint covers the project files only: a stray file in the checkout cannot fail `npm test`', async () => {
  const eslint = new ESLint({ cwd: ROOT });
  for (const stray of ['hello/handler.js', 'hello.js', 'scratch/x.ts', '.aether/x.js', 'bench/results/x.js']) assert.equal(await eslint.isPathIgnored(join(ROOT, stray)), true, stray);
  for (const own of ['src/bin/aether.ts', 'test/tour.test.ts', 'bin/aether.mjs', 'bench/run.ts', 'eslint.config.js']) assert.equal(await eslint.isPathIgnored(join(ROOT, own)), false, own);
});

test('docs cite only files of the repository, and those exist', () => {
  const docs = ['README.md', 'bench/README.md', ...readdirSync(join(ROOT, 'docs')).filter((f) => f.endsWith('.md')).map((f) => `docs/${f}`)];
  const problems: string[] = [];
  for (const doc of docs) {
    const text = readFileSync(join(ROOT, doc), 'utf8');
    // Absolute paths of the machine the docs were written on.
    for (const m of text.matchAll(/(?<![\w.])\/(?:work|home|root|mnt|opt\/shared)\/[\w./-]+/g)) problems.push(`${doc}: ${m[0]}`);
    for (const m of text.matchAll(/\]\(([^)#\s]+)(?:#[^)]*)?\)/g)) {
      const target = m[1] as string;
      if (/^[a-z]+:/.test(target)) continue; // a URL
      const abs = resolve(dirname(join(ROOT, doc)), target);
      if (relative(ROOT, abs).startsWith('..') || !existsSync(abs)) problems.push(`${doc}: link to ${target}`);
    }
  }
  assert.deepEqual(problems, []);
});
