// aether-init's JSON parser and config checks, run through the built binary's self-test modes
// (outside PID 1 it only parses: `--json` and `--plan TOKEN [runtime.json]`).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
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

test('power: reboot under Firecracker (aether.vmm=firecracker), power off elsewhere', { skip }, async () => {
  await init();
  const how = (cmdline: string): string => run(['--power', cmdline], '').out.trim();
  // Firecracker on x86 only exits on a guest reboot (reboot=k); a power-off merely halts the guest
  assert.equal(how('console=ttyS0 reboot=k aether.token=ab aether.config=mmds aether.vmm=firecracker'), 'reboot');
  assert.equal(how('aether.vmm=firecracker'), 'reboot');
  for (const other of ['console=ttyS0 reboot=t aether.config=vport', 'aether.config=mmds', 'aether.vmm=qemu', 'aether.vmm=firecracker2', 'xaether.vmm=firecracker', '']) {
    assert.equal(how(other), 'poweroff', other);
  }
});

/** A stand-in MMDS v2: session tokens from PUT /latest/api/token, config at /aether/config once `config` is set. */
async function fakeMmds(): Promise<{ port: number; seen: string[]; setConfig(c: string | undefined): void; rotate(): void; close(): Promise<void> }> {
  let config: string | undefined;
  let tokens = new Set<string>();
  let n = 0;
  const seen: string[] = [];
  // Firecracker's MMDS always sends Content-Length (never chunked)
  const send = (res: ServerResponse, status: number, body = ''): void => {
    res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) }).end(body);
  };
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    seen.push(`${req.method} ${req.url}`);
    if (req.method === 'PUT' && req.url === '/latest/api/token' && req.headers['x-metadata-token-ttl-seconds'] === '300') {
      const t = `tok${++n}`;
      tokens.add(t);
      return send(res, 200, t);
    }
    if (req.method === 'GET' && req.url === '/aether/config') {
      if (!tokens.has(String(req.headers['x-metadata-token']))) return send(res, 401);
      if (config === undefined) return send(res, 404, '{"error":"not found"}');
      return send(res, 200, config);
    }
    send(res, 400);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as AddressInfo).port,
    seen,
    setConfig: (c) => (config = c),
    // a restored snapshot runs in a new VMM: tokens issued before are unknown to it
    rotate: () => (tokens = new Set()),
    close: () => new Promise((r) => server.close(() => r())),
  };
}

function runAsync(args: string[]): { done: Promise<{ code: number; out: string; err: string }>; err: () => string } {
  const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  return { done: new Promise((r) => child.on('close', (code) => r({ code: code ?? -1, out, err }))), err: () => err };
}

test('MMDS: READY first, then polls past 5 s without config (a template waiting for its restore), fresh token each try', { skip }, async () => {
  await init();
  const mmds = await fakeMmds();
  try {
    const doc = JSON.stringify({ token: 'ab12', cmd: ['x'] });
    const guest = runAsync(['--mmds', `127.0.0.1:${mmds.port}`]);
    while (!guest.err().includes('AETHER-INIT READY')) await new Promise((r) => setTimeout(r, 10));
    // the host pauses + snapshots here; much later a restore puts this instance's config in
    await new Promise((r) => setTimeout(r, 6000));
    const before = mmds.seen.length;
    assert.ok(before >= 4, `polled while waiting (${before} requests)`);
    mmds.rotate();
    mmds.setConfig(doc);
    const r = await guest.done;
    assert.equal(r.code, 0, r.out + r.err);
    assert.equal(r.out, doc);
    assert.equal(r.err, 'AETHER-INIT READY\n', 'one exact READY line on the console');
    assert.deepEqual(mmds.seen.slice(0, 2), ['PUT /latest/api/token', 'GET /aether/config']);
    assert.deepEqual(mmds.seen.slice(-2), ['PUT /latest/api/token', 'GET /aether/config']);
  } finally {
    await mmds.close();
  }
});

test('MMDS: gives up after its wait budget with a reason; a config that arrives at once is taken at once', { skip }, async () => {
  await init();
  const mmds = await fakeMmds();
  try {
    const r = await runAsync(['--mmds', `127.0.0.1:${mmds.port}`, '300']).done;
    assert.equal(r.code, 2);
    assert.equal(r.out, 'FAIL no config in MMDS\n');
    assert.ok(mmds.seen.length >= 4, 'it retried before giving up');
    mmds.seen.length = 0;
    mmds.setConfig('"{\\"token\\":\\"ab\\"}"');
    const ok = await runAsync(['--mmds', `127.0.0.1:${mmds.port}`, '300']).done;
    assert.equal(ok.code, 0);
    assert.deepEqual(mmds.seen, ['PUT /latest/api/token', 'GET /aether/config']);
  } finally {
    await mmds.close();
  }
});

test('--reap PID (a process sandbox\'s PID 1): reaps orphans, exits with PID\'s status, 128+n for signal n', { skip }, async () => {
  const b = await init();
  // perl forks the "program" and an orphan-to-be, then becomes the reaper, as common.pl does
  const reapAs = (program: string): number => {
    const script = `my $o = fork(); if ($o == 0) { exit 0 } my $p = fork(); if ($p == 0) { select(undef, undef, undef, 0.2); ${program} } exec { $ARGV[0] } 'aether-reap', '--reap', $p, '--', 'label' or exit 99;`;
    return spawnSync('perl', ['-e', script, b], { timeout: 10_000 }).status ?? -1;
  };
  assert.equal(reapAs('exit 7'), 7);
  assert.equal(reapAs("kill 'KILL', $$"), 137);
  assert.equal(reapAs('exit 0'), 0);
});
