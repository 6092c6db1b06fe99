import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isoTime, parseLogLine, parseShowStat } from './parse.ts';
import { errorPage, renderConfig } from './config.ts';

const t0 = 1796101432;
const cases: { name: string; line: string; want: { status: string; code: number; error: RegExp | null } | undefined }[] = [
  { name: 'success', line: `AETHER inv-1k8nvpp345o8g9f3ttoq fn-x f0 inst-1 200 7 ---- ${t0} 123 0`, want: { status: 'success', code: 200, error: null } },
  { name: 'function 500', line: `AETHER inv-1k8nvpp345o8g9f3ttoq fn-x f0 inst-1 500 7 ---- ${t0} 123 0`, want: { status: 'error', code: 500, error: /answered 500/ } },
  { name: 'server timeout', line: `AETHER inv-1k8nvpp345o8g9f3ttoq fn-x f0 inst-1 504 1002 sH-- ${t0} 5 0`, want: { status: 'timeout', code: 504, error: /AETHER_ERR_TIMEOUT/ } },
  { name: 'crash mid-request', line: `AETHER inv-1k8nvpp345o8g9f3ttoq fn-x f0 inst-1 502 3 SH-- ${t0} 5 0`, want: { status: 'error', code: 502, error: /AETHER_ERR_UPSTREAM/ } },
  { name: 'queue timeout', line: `AETHER inv-1k8nvpp345o8g9f3ttoq fn-x f0 <NOSRV> 503 30000 sQ-- ${t0} 5 0`, want: { status: 'error', code: 503, error: /AETHER_ERR_UNAVAILABLE/ } },
  { name: 'client went away', line: `AETHER inv-1k8nvpp345o8g9f3ttoq fn-x f0 inst-1 -1 30 CD-- ${t0} 5 0`, want: { status: 'error', code: 502, error: /client closed/ } },
  { name: 'no function (API through the proxy)', line: `AETHER inv-1k8nvpp345o8g9f3ttoq - activator node 200 1 ---- ${t0} 5 0`, want: undefined },
  { name: 'handed to the activator backup (it writes its own record)', line: `AETHER inv-1k8nvpp345o8g9f3ttoq fn-x f0 activator 200 9 ---- ${t0} 5 1`, want: undefined },
  { name: "HAProxy's own notice", line: 'Server f0/inst-1 is UP/READY (leaving forced maintenance).', want: undefined },
];

for (const c of cases) {
  test(`log line: ${c.name}`, () => {
    const r = parseLogLine(c.line);
    if (!c.want) return assert.equal(r, undefined);
    assert.ok(r);
    assert.equal(r.record.status, c.want.status);
    assert.equal(r.record.status_code, c.want.code);
    if (c.want.error) assert.match(r.record.error ?? '', c.want.error);
    else assert.equal(r.record.error, null);
    assert.equal(r.record.function_id, 'fn-x');
    assert.equal(r.record.cold_start, false);
    assert.equal(r.record.started_at, new Date(t0 * 1000 + Number(c.line.split(' ')[9])).toISOString());
  });
}

test('log line: instance id from the server name, null without one', () => {
  assert.equal(parseLogLine(`AETHER inv-a fn-x f0 inst-9 200 1 ---- ${t0} 0 0`)?.record.instance_id, 'inst-9');
  assert.equal(parseLogLine(`AETHER inv-a fn-x f0 <NOSRV> 503 1 sQ-- ${t0} 0 0`)?.record.instance_id, null);
});

test('show stat: per server and backend counts', () => {
  const csv = '# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin\nf0,inst-1,0,0,3,4,8,17,0\nf0,BACKEND,2,2,3,4,1,17,0\n';
  assert.deepEqual(parseShowStat(csv), [
    { backend: 'f0', server: 'inst-1', qcur: 0, scur: 3, stot: 17 },
    { backend: 'f0', server: 'BACKEND', qcur: 2, scur: 3, stot: 17 },
  ]);
  assert.deepEqual(parseShowStat('garbage'), []);
});

test('error pages are the platform JSON shape with a correct length', () => {
  const page = errorPage(504);
  const [head, body] = page.split('\r\n\r\n') as [string, string];
  assert.match(head, /^HTTP\/1.1 504 /);
  assert.deepEqual(JSON.parse(body), { error: { code: 'AETHER_ERR_TIMEOUT', message: 'the function did not answer within its timeout_ms' } });
  assert.match(head, new RegExp(`content-length: ${Buffer.byteLength(body)}`));
});

test('config: a slot per function backend, the activator as default, private admin socket', () => {
  const cfg = renderConfig({ dir: '/d', host: '127.0.0.1', port: 8080, activator: { host: '127.0.0.1', port: 9000 }, slots: 3 });
  assert.match(cfg, /stats socket \/d\/admin.sock mode 600 level admin/);
  assert.match(cfg, /bind 127.0.0.1:8080\n/);
  assert.match(cfg, /default_backend activator/);
  assert.match(cfg, /server node 127.0.0.1:9000/);
  assert.equal(cfg.match(/^backend f\d+$/gm)?.length, 3);
  assert.match(cfg, /retry-on conn-failure\n/);
  // every function backend falls back to the activator when no instance can take a request
  assert.equal(cfg.match(/^ {2}server activator unix@\/d\/backup\.sock backup id 1$/gm)?.length, 3);
  // on its own socket: only what HAProxy hands over there is routed by its Via element
  assert.ok(!/server activator 127/.test(cfg));
});

test('config: hop listeners carry the cluster token on their own hop only; an unusable token disables them', () => {
  const token = 'c'.repeat(32);
  const base = { dir: '/d', host: '127.0.0.1', port: 8080, activator: { host: '127.0.0.1', port: 9000 }, slots: 2 };
  const cfg = renderConfig({ ...base, hops: { count: 2, clusterToken: token } });
  assert.equal(cfg.match(/^listen h\d+$/gm)?.length, 2);
  assert.match(cfg, /bind unix@\/d\/hop0.sock mode 600/);
  assert.match(cfg, /set-path \/internal\/forward\/%\[req.hdr\(x-aether-hop-instance\)\]%\[path\]/);
  // a request that meets a dead agent goes on to the activator (nothing reached the agent)
  for (const block of cfg.split('\n\n').filter((b) => /^listen h/m.test(b))) assert.match(block, /^ {2}server activator unix@\/d\/backup\.sock backup$/m);
  // The token appears once per hop listener and nowhere else (never in a function backend).
  assert.equal(cfg.split(token).length - 1, 2);
  for (const block of cfg.split('\n\n').filter((b) => /^backend f/m.test(b))) {
    assert.ok(!block.includes(token));
    assert.match(block, /http-send-name-header x-aether-hop-instance/);
  }
  for (const bad of ['has"quote'.padEnd(20, 'x'), 'has space'.padEnd(20, 'x'), 'pct%'.padEnd(20, 'x')]) {
    const off = renderConfig({ ...base, hops: { count: 2, clusterToken: bad } });
    assert.ok(!off.includes('listen h0') && !off.includes(bad) && !off.includes('http-send-name-header'));
  }
  assert.ok(!renderConfig(base).includes('listen h0'));
});

test('isoTime is Date#toISOString, its second cached', () => {
  for (const ms of [0, 5, 42, 999, 1000, 1764690000123, 1764690000007, 1764690001070, 1764690000999, 253402300799999]) {
    assert.equal(isoTime(ms), new Date(ms).toISOString(), String(ms));
  }
});

test('log line: a sampled success stands for N requests; a failure, or a line without the field, for one', () => {
  const w = (line: string): number | undefined => parseLogLine(line)?.weight;
  assert.equal(w(`AETHER inv-1 fn-x f0 inst-1 200 7 ---- ${t0} 123 0 8`), 8);
  assert.equal(w(`AETHER inv-1 fn-x f0 inst-1 404 7 ---- ${t0} 123 0 8`), 8, 'a 4xx is the function answering: success');
  assert.equal(w(`AETHER inv-1 fn-x f0 inst-1 502 3 SH-- ${t0} 5 0 8`), 1);
  assert.equal(w(`AETHER inv-1 fn-x f0 inst-1 200 30 CD-- ${t0} 5 0 8`), 1, 'client went away after the answer began');
  assert.equal(w(`AETHER inv-1 fn-x f0 inst-1 200 7 ---- ${t0} 123 0 1`), 1);
  assert.equal(w(`AETHER inv-1 fn-x f0 inst-1 200 7 ---- ${t0} 123 0 `), 1, 'route without the field (empty)');
  assert.equal(w(`AETHER inv-1 fn-x f0 inst-1 200 7 ---- ${t0} 123 0`), 1);
});
