// aether-init's JSON parser and config checks, run through the built binary's self-test modes
// (outside PID 1 it only parses: `--json` and `--plan TOKEN [runtime.json]`).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ensureGuestInit } from './index.ts';

const haveMusl = spawnSync(process.env['AETHER_MUSL_GCC'] ?? 'musl-gcc', ['--version']).status === 0;
const skip = haveMusl ? false : 'musl-gcc not installed (apt-get install musl-tools)';

let bin = '';
async function init(): Promise<string> {
  if (bin === '') bin = (await ensureGuestInit()).path;
  return bin;
}

function run(args: string[], input: string | Buffer): { code: number; out: string } {
  const r = spawnSync(bin, args, { input, encoding: 'utf8' });
  return { code: r.status ?? -1, out: r.stdout };
}

function parses(text: string | Buffer): unknown {
  const r = run(['--json'], text);
  if (r.code !== 0) return { rejected: r.out.trim() };
  return { value: JSON.parse(r.out) as unknown };
}

test('builds a small static binary', { skip }, async () => {
  const g = await ensureGuestInit();
  assert.ok(g.size > 10_000 && g.size < 400_000, `size ${g.size}`);
  const file = spawnSync('file', [g.path], { encoding: 'utf8' }).stdout;
  if (file !== '') assert.match(file, /statically linked|static-pie/);
});

test('JSON: valid documents parse to the same value as JSON.parse', { skip }, async () => {
  await init();
  const docs = [
    '{}', '[]', 'null', 'true', 'false', '0', '-0', '12', '-3.25', '1e3', '2E-2', '1.5e+10', '""',
    '"a\\"b\\\\c\\/d\\b\\f\\n\\r\\t"', '"\\u00e9\\u20AC\\ud83d\\ude00"', '"é€😀"',
    ' { "a" : [ 1 , { "b" : null } ] , "c" : "x" } ',
    '{"token":"ab12","cmd":["node","index.js"],"env":{"A":"1","B":"two words","C":""},"port":8080,"net":null}',
    JSON.stringify({ deep: [[[[[[[[[[1]]]]]]]]]], s: 'x'.repeat(5000) }),
  ];
  for (const d of docs) assert.deepEqual(parses(d), { value: JSON.parse(d) as unknown }, d);
});

test('JSON: malformed documents are rejected', { skip }, async () => {
  await init();
  const bad = [
    '', ' ', '{', '}', '[1,]', '{"a":1,}', "{'a':1}", '{a:1}', '01', '1.', '.5', '+1', '-', '1e', '1e+',
    'tru', 'nul', 'NaN', 'Infinity', '"abc', '"\\x"', '"\\u12"', '"\\u12G4"', '{"a" 1}', '{"a":1 "b":2}',
    '[1 2]', '1 2', '"a"x', '"tab\there"', '"nl\nhere"', '{"a":}', '[,]', '\u00a0{}',
  ];
  for (const b of bad) assert.match(String((parses(b) as { rejected?: string }).rejected ?? 'ACCEPTED'), /^ERR /, JSON.stringify(b));
  // Invalid UTF-8: a stray byte, an overlong '/', a UTF-16 surrogate encoded in UTF-8.
  for (const bytes of [[0x22, 0xff, 0x22], [0x22, 0xc0, 0xaf, 0x22], [0x22, 0xed, 0xa0, 0x80, 0x22], [0x22, 0xe2, 0x82, 0x22]]) {
    assert.match(String((parses(Buffer.from(bytes)) as { rejected?: string }).rejected), /^ERR invalid UTF-8/, JSON.stringify(bytes));
  }
});

test('JSON: stricter than JSON.parse where C strings or ambiguity would bite', { skip }, async () => {
  await init();
  // NUL cannot live in a C string; a duplicate key could smuggle a second token past a proxy.
  for (const b of ['"a\\u0000b"', '{"token":"a","token":"b"}', '"\\ud800"', '"\\udc00x"', '"\\ud800\\u0041"']) {
    assert.match(String((parses(b) as { rejected?: string }).rejected ?? 'ACCEPTED'), /^ERR /, b);
  }
  const deep = (n: number): string => '['.repeat(n) + ']'.repeat(n);
  assert.ok('value' in (parses(deep(32)) as object));
  assert.match(String((parses(deep(33)) as { rejected?: string }).rejected), /nested too deeply/);
});

test('JSON: random mutations never accept what JSON.parse rejects, and agree on values', { skip }, async () => {
  await init();
  const base = '{"token":"ab","cmd":["a","b"],"env":{"K":"v\\n"},"port":80,"x":[true,false,null,-1.5e2]}';
  const alphabet = '{}[]",:\\0123456789.eE+-truefalsnul \tx';
  let seed = 12345;
  const rnd = (n: number): number => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed % n;
  };
  for (let i = 0; i < 300; i++) {
    const chars = [...base];
    for (let k = 0; k <= rnd(3); k++) {
      const pos = rnd(chars.length);
      const op = rnd(3);
      const c = alphabet[rnd(alphabet.length)] as string;
      if (op === 0) chars.splice(pos, 1);
      else if (op === 1) chars.splice(pos, 0, c);
      else chars[pos] = c;
    }
    const doc = chars.join('');
    let expected: unknown;
    try {
      expected = JSON.parse(doc);
    } catch {
      expected = undefined;
    }
    const got = parses(doc) as { value?: unknown; rejected?: string };
    if (expected === undefined) assert.ok(got.rejected !== undefined, `accepted invalid ${doc}`);
    else if (got.value !== undefined) assert.deepEqual(got.value, expected, doc);
    else assert.match(String(got.rejected), /duplicate key/, `rejected valid ${doc}: ${got.rejected}`);
  }
});

test('config: the token must be present, hex and equal to the kernel command line one', { skip }, async () => {
  await init();
  const ok = { token: 'ab12', cmd: ['node', 'index.js'] };
  assert.equal(run(['--plan', 'ab12'], JSON.stringify(ok)).code, 0);
  const cases: [string, string, RegExp][] = [
    ['ab13', JSON.stringify(ok), /^REJECT token mismatch/],
    ['ab1', JSON.stringify(ok), /^REJECT token mismatch/],
    ['ab12', JSON.stringify({ cmd: ['x'] }), /^REJECT token missing/],
    ['zz', JSON.stringify({ token: 'zz', cmd: ['x'] }), /^REJECT token missing or not hex/],
    ['', JSON.stringify({ token: '', cmd: ['x'] }), /^REJECT token/],
    ['ab12', JSON.stringify({ ...ok, token: 12 }), /^REJECT token/],
    ['ab12', 'not json', /^REJECT /],
    ['ab12', '[]', /^REJECT config is not an object/],
    ['ab12', JSON.stringify({ ...ok, cmd: [] }), /^REJECT cmd is empty/],
    ['ab12', JSON.stringify({ ...ok, cmd: ['a', 1] }), /^REJECT cmd/],
    ['ab12', JSON.stringify({ ...ok, env: { A: 1 } }), /^REJECT env/],
    ['ab12', JSON.stringify({ ...ok, env: { 'A=B': 'x' } }), /^REJECT env/],
    ['ab12', JSON.stringify({ ...ok, port: 70000 }), /^REJECT port/],
    ['ab12', JSON.stringify({ ...ok, port: 1.5 }), /^REJECT port/],
    ['ab12', JSON.stringify({ ...ok, cwd: 'relative' }), /^REJECT cwd/],
    ['ab12', JSON.stringify({ ...ok, net: { address: '10.0.0.2' } }), /^REJECT net.address/],
    ['ab12', JSON.stringify({ ...ok, net: { address: '10.0.0.2/24', gateway: 'x' } }), /^REJECT net.gateway/],
    ['ab12', JSON.stringify({ ...ok, net: 'eth0' }), /^REJECT net/],
  ];
  for (const [tok, cfg, re] of cases) {
    const r = run(['--plan', tok], cfg);
    assert.notEqual(r.code, 0, `${tok} ${cfg}`);
    assert.match(r.out, re, `${tok} ${cfg}`);
  }
  // A config given as a JSON string holding the document (how MMDS may return it) is unwrapped.
  assert.equal(run(['--plan', 'ab12'], JSON.stringify(JSON.stringify(ok))).code, 0);
});

test('plan: runtime.json gives defaults, the config overrides, PORT from port', { skip }, async () => {
  await init();
  const dir = await mkdtemp(join(tmpdir(), 'aether-guest-test-'));
  try {
    const rt = join(dir, 'runtime.json');
    await writeFile(rt, JSON.stringify({ user: 'nobody', workdir: '/srv', env: { A: 'image', B: 'image' }, writable_paths: ['/data'], cmd: ['/bin/app', '--serve'] }));
    const plan = (cfg: object): string[] => run(['--plan', 'ff', rt], JSON.stringify({ token: 'ff', ...cfg })).out.trim().split('\n');
    const p1 = plan({ env: { B: 'config', C: 'c' }, port: 3000 });
    assert.deepEqual(p1.filter((l) => l.startsWith('argv=')), ['argv=/bin/app', 'argv=--serve']);
    assert.ok(p1.includes('cwd=/srv'));
    assert.ok(p1.includes('env=A=image') && p1.includes('env=B=config') && p1.includes('env=C=c') && p1.includes('env=PORT=3000'), p1.join('\n'));
    assert.ok(p1.some((l) => l.startsWith('user=65534:')), p1.join('\n'));
    const p2 = plan({ cmd: ['node', 'x.js'], cwd: '/run/aether/code', user: '0:0', env: { PORT: '9' }, port: 3000 });
    assert.deepEqual(p2.filter((l) => l.startsWith('argv=')), ['argv=node', 'argv=x.js']);
    assert.ok(p2.includes('cwd=/run/aether/code') && p2.includes('user=0:0') && p2.includes('env=PORT=9') && !p2.includes('env=PORT=3000'));
    const r = run(['--plan', 'ff', rt], JSON.stringify({ token: 'ff', user: 'no-such-user-here' }));
    assert.match(r.out, /^NOPLAN unknown user/);
    const none = run(['--plan', 'ff'], JSON.stringify({ token: 'ff' }));
    assert.match(none.out, /^NOPLAN no command/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
