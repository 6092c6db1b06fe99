/**
 * End to end: the real `aether up` as a child process, driven over HTTP like an external client.
 * Covers the invocation issue: cold/warm, env, node + python, scale out under 200 concurrent
 * requests, timeouts, crashes, code update under load, delete, scale to zero, records, logs.
 * Runs once per data plane (`node`, `haproxy`): the same behaviour is expected from both.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { get as httpGet } from 'node:http';
import { api, eventually, startAether, zipFiles, type RunningPlatform } from './support/platform.ts';
import { tunnelPing } from './support/tunnel.ts';
import { killHaproxyUnderLoad } from './support/haproxy-kill.ts';

const ECHO = `
const http = require('http');
const started = Date.now();
console.log('echo starting on', process.env.PORT);
http.createServer((req, res) => {
  if (req.url.startsWith('/crash')) { console.error('crashing on purpose'); process.exit(3); }
  if (req.url.startsWith('/slow')) { setTimeout(() => res.end('slow done'), Number(new URL(req.url, 'http://x').searchParams.get('ms') || 300)); return; }
  let body = '';
  req.on('data', (c) => (body += c));
  req.on('end', () => {
    res.setHeader('content-type', 'application/json');
    if (req.url.startsWith('/status')) res.statusCode = 500;
    res.end(JSON.stringify({ version: process.env.VERSION || 'v1', method: req.method, url: req.url, headers: req.headers, body,
      env: { GREETING: process.env.GREETING, PORT: process.env.PORT, AETHER_FUNCTION_NAME: process.env.AETHER_FUNCTION_NAME, AETHER_INSTANCE_ID: process.env.AETHER_INSTANCE_ID }, pid: process.pid, started }));
  });
}).listen(Number(process.env.PORT), () => console.log('listening'));
`;

let p: RunningPlatform;

async function deploy(name: string, files: Record<string, string>, fields: Record<string, unknown> = {}): Promise<{ id: string }> {
  const created = await api<{ id: string }>(p, 'POST', '/api/functions', { name, runtime: 'node', ...fields });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  const up = await api(p, 'POST', `/api/functions/${name}/code`, await zipFiles(files));
  assert.equal(up.status, 200, JSON.stringify(up.body));
  return created.body;
}

async function invoke(name: string, path = '/', init: RequestInit = {}): Promise<{ status: number; json: Record<string, unknown>; text: string; cold: string | null; inv: string | null }> {
  const r = await fetch(`${p.url}/functions/${name}${path}`, init);
  const text = await r.text();
  let json: Record<string, unknown> = {};
  try {
    json = JSON.parse(text) as Record<string, unknown>;
  } catch {
    // not JSON
  }
  return { status: r.status, json, text, cold: r.headers.get('x-aether-cold-start'), inv: r.headers.get('x-aether-invocation-id') };
}

for (const dataPlane of ['node', 'haproxy'] as const) {
  describe(`invocation (data plane: ${dataPlane})`, () => invocationSuite(dataPlane));
}

function invocationSuite(dataPlane: 'node' | 'haproxy'): void {
  before(async () => {
    p = await startAether({ args: ['--data-plane', dataPlane] });
    assert.match(p.output(), new RegExp(`data plane: ${dataPlane}`));
  });
  after(async () => {
    const code = await p.stop();
    assert.equal(code, 0, `aether up should exit cleanly:\n${p.output().slice(-2000)}`);
  });

  test('cold then warm, env delivered, prefix stripped, headers forwarded', async () => {
    await deploy('echo', { 'handler.js': ECHO }, { env_vars: { GREETING: 'hello' } });
    const cold = await invoke('echo', '/a/b?x=1', { method: 'POST', body: 'payload', headers: { authorization: 'Bearer user-token', 'x-custom': 'yes' } });
    assert.equal(cold.status, 200, cold.text);
    assert.equal(cold.cold, 'true');
    assert.match(cold.inv ?? '', /^inv-/);
    assert.equal(cold.json['url'], '/a/b?x=1');
    assert.equal(cold.json['body'], 'payload');
    const headers = cold.json['headers'] as Record<string, string>;
    assert.equal(headers['authorization'], 'Bearer user-token');
    assert.equal(headers['x-custom'], 'yes');
    assert.equal(headers['x-forwarded-host'], new URL(p.url).host);
    assert.ok(headers['x-forwarded-for']);
    const env = cold.json['env'] as Record<string, string>;
    assert.equal(env['GREETING'], 'hello');
    assert.equal(env['AETHER_FUNCTION_NAME'], 'echo');
    const warm = await invoke('echo');
    assert.equal(warm.status, 200);
    assert.equal(warm.cold, 'false');
    assert.equal(warm.json['url'], '/');
    assert.equal(warm.json['pid'], cold.json['pid'], 'warm request served by the same instance');
    // Both data planes mint ids of one time-sortable form (HAProxy's and the activator's records sort together).
    for (const r of [cold, warm]) assert.match(r.inv ?? '', /^inv-[0-9A-F]{28}$/);
    assert.ok((warm.inv ?? '') > (cold.inv ?? ''), `${warm.inv} sorts after ${cold.inv}`);
  });

  test('python function', async () => {
    const created = await api(p, 'POST', '/api/functions', { name: 'py', runtime: 'python' });
    assert.equal(created.status, 201);
    const code = [
      'import os, json',
      'from http.server import BaseHTTPRequestHandler, HTTPServer',
      'class H(BaseHTTPRequestHandler):',
      '    def do_GET(self):',
      "        body = json.dumps({'lang': 'python', 'path': self.path}).encode()",
      '        self.send_response(200)',
      "        self.send_header('content-type', 'application/json')",
      "        self.send_header('content-length', str(len(body)))",
      '        self.end_headers()',
      '        self.wfile.write(body)',
      "HTTPServer(('0.0.0.0', int(os.environ['PORT'])), H).serve_forever()",
    ].join('\n');
    assert.equal((await api(p, 'POST', '/api/functions/py/code', await zipFiles({ 'main.py': code }))).status, 200);
    const r = await invoke('py', '/hi');
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(r.json, { lang: 'python', path: '/hi' });
  });

  test('unknown function 404, no code 400, both JSON', async () => {
    const r = await invoke('nope');
    assert.equal(r.status, 404);
    assert.equal((r.json['error'] as { code: string }).code, 'AETHER_ERR_FUNCTION_NOT_FOUND');
    await api(p, 'POST', '/api/functions', { name: 'nocode', runtime: 'node' });
    const n = await invoke('nocode');
    assert.equal(n.status, 400);
    assert.equal((n.json['error'] as { code: string }).code, 'AETHER_ERR_NO_CODE');
  });

  test('200 concurrent requests to a slow function scale it out and all succeed', async () => {
    await deploy('slow', { 'handler.js': ECHO }, { max_instances: 8, concurrency_target: 5 });
    const results = await Promise.all(Array.from({ length: 200 }, () => invoke('slow', '/slow?ms=400')));
    const bad = results.filter((r) => r.status !== 200);
    assert.equal(bad.length, 0, `failed: ${bad.map((b) => `${b.status} ${b.text}`).slice(0, 3).join(' | ')}`);
    const recs = await eventually(async () => {
      const r = await api<{ instance_id: string }[]>(p, 'GET', '/api/functions/slow/invocations?limit=1000');
      return r.body.length >= 200 ? r.body : undefined;
    });
    const instances = new Set(recs.map((r) => r.instance_id));
    assert.ok(instances.size > 1, `expected scale out, saw ${instances.size} instance(s)`);
    assert.ok(instances.size <= 8, `max_instances respected, saw ${instances.size}`);
  });

  test('timeout_ms answers 504 and is recorded as timeout', async () => {
    await deploy('sleepy', { 'handler.js': ECHO }, { timeout_ms: 1500 });
    assert.equal((await invoke('sleepy')).status, 200); // warm it up
    const r = await invoke('sleepy', '/slow?ms=5000');
    assert.equal(r.status, 504);
    assert.equal((r.json['error'] as { code: string }).code, 'AETHER_ERR_TIMEOUT');
    const recs = await eventually(async () => {
      const x = await api<{ status: string; status_code: number }[]>(p, 'GET', '/api/functions/sleepy/invocations');
      return x.body.find((i) => i.status === 'timeout') ? x.body : undefined;
    });
    assert.equal(recs[0]?.status, 'timeout');
  });

  test('a function that crashes at start answers 503 at once with the reason only; its output goes to the record, once', async () => {
    await deploy('broken', { 'handler.js': "console.log('DATABASE_URL=postgres://admin:hunter2@db'); console.error('boom: missing config'); process.exit(2);" }, { timeout_ms: 20_000 });
    const t0 = Date.now();
    const r = await invoke('broken');
    assert.equal(r.status, 503, r.text);
    assert.equal((r.json['error'] as { code: string }).code, 'AETHER_ERR_COLD_START_FAILED');
    const message = String((r.json['error'] as { message: string }).message);
    assert.match(message, /code 2/, 'the exit code');
    assert.ok(r.inv && message.includes(r.inv), 'the invocation id');
    assert.doesNotMatch(r.text, /hunter2|boom|at Object|node:internal/, 'nothing the program printed');
    assert.ok(Date.now() - t0 < 15_000, 'answered before timeout_ms');
    const recs = await eventually(async () => {
      const x = await api<{ id: string; error: string | null }[]>(p, 'GET', '/api/functions/broken/invocations');
      return x.body.find((i) => i.id === r.inv) ? x.body : undefined;
    });
    const rec = recs.find((i) => i.id === r.inv);
    assert.match(rec?.error ?? '', /boom: missing config/);
    assert.equal((rec?.error ?? '').split('hunter2').length, 2, 'the output appears once');
  });

  test('a malformed escape in the function name is a 400 and aether up goes on', async () => {
    for (const bad of ['%E0%A4%A', '%', '%zz']) {
      const r = await fetch(`${p.url}/functions/${bad}`);
      assert.equal(r.status, 400, await r.text());
    }
    assert.equal((await fetch(`${p.url}/healthz`)).status, 200);
    assert.equal((await invoke('echo')).status, 200, 'instances still serve');
  });

  test('an Upgrade (WebSocket-style) request is tunnelled to the program in its sandbox', async () => {
    const TUNNEL = `
require('http').createServer((req, res) => res.end('plain')).on('upgrade', (req, sock, head) => {
  sock.write('HTTP/1.1 101 Switching Protocols\\r\\nConnection: Upgrade\\r\\nUpgrade: x-echo\\r\\n\\r\\n');
  sock.write('hello ' + req.url + ';');
  if (head.length) sock.write(head);
  sock.pipe(sock);
}).listen(Number(process.env.PORT));
`;
    await deploy('tunnel', { 'handler.js': TUNNEL });
    const got = await tunnelPing(`${p.url}/functions/tunnel/t?x=1`);
    assert.equal(got, 'hello /t?x=1;ping');
  });

  test('an instance dying mid-request gives 502, the next request starts a new one', async () => {
    await deploy('crashy', { 'handler.js': ECHO });
    const first = await invoke('crashy');
    assert.equal(first.status, 200);
    // On a fresh connection: HAProxy answers a crash on a reused keep-alive connection by closing it
    // without an answer (RFC 9112 9.3.1 lets the client retry), see docs/dataplane.md.
    const crash = await new Promise<{ status: number; text: string }>((resolve, reject) => {
      httpGet(`${p.url}/functions/crashy/crash`, { agent: false }, (res) => {
        let text = '';
        res.on('data', (d: Buffer) => (text += d.toString()));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
      }).on('error', reject);
    });
    assert.equal(crash.status, 502, crash.text);
    assert.equal((JSON.parse(crash.text) as { error: { code: string } }).error.code, 'AETHER_ERR_UPSTREAM');
    const again = await eventually(async () => {
      const r = await invoke('crashy');
      return r.status === 200 ? r : undefined;
    });
    assert.notEqual(again.json['pid'] ?? 'x', 'never', 'served');
    assert.notEqual(again.json['started'], first.json['started'], 'a new instance');
  });

  test('status >= 500 from the function is recorded as error', async () => {
    const r = await invoke('echo', '/status');
    assert.equal(r.status, 500);
    const recs = await eventually(async () => {
      const x = await api<{ status: string; status_code: number; id: string }[]>(p, 'GET', '/api/functions/echo/invocations');
      return x.body.find((i) => i.id === r.inv) ? x.body : undefined;
    });
    const rec = recs.find((i) => i.id === r.inv);
    assert.equal(rec?.status, 'error');
    assert.equal(rec?.status_code, 500);
  });

  test('code update under load: zero failed requests, new code served soon', async () => {
    await deploy('rolling', { 'handler.js': ECHO });
    assert.equal((await invoke('rolling')).status, 200);
    let stop = false;
    const failures: string[] = [];
    const versions = new Set<string>();
    const load = (async () => {
      while (!stop) {
        const batch = await Promise.all(Array.from({ length: 4 }, () => invoke('rolling')));
        for (const r of batch) {
          if (r.status !== 200) failures.push(`${r.status} ${r.text}`);
          else versions.add(String(r.json['version']));
        }
      }
    })();
    await new Promise((r) => setTimeout(r, 300));
    const v2 = ECHO.replace("process.env.VERSION || 'v1'", "'v2'");
    assert.equal((await api(p, 'POST', '/api/functions/rolling/code', await zipFiles({ 'handler.js': v2 }))).status, 200);
    await eventually(async () => versions.has('v2'), 20_000);
    stop = true;
    await load;
    assert.deepEqual(failures, []);
    const after = await invoke('rolling');
    assert.equal(after.json['version'], 'v2');
  });

  test('PUT of env takes effect on running instances', async () => {
    await deploy('envy', { 'handler.js': ECHO }, { env_vars: { GREETING: 'one' } });
    assert.equal(((await invoke('envy')).json['env'] as Record<string, string>)['GREETING'], 'one');
    assert.equal((await api(p, 'PUT', '/api/functions/envy', { env_vars: { GREETING: 'two' } })).status, 200);
    await eventually(async () => ((await invoke('envy')).json['env'] as Record<string, string>)['GREETING'] === 'two', 20_000);
  });

  test('DELETE stops instances and invocations get 404 at once', async () => {
    await deploy('doomed', { 'handler.js': ECHO });
    assert.equal((await invoke('doomed')).status, 200);
    assert.equal((await api(p, 'DELETE', '/api/functions/doomed')).status, 204);
    assert.equal((await invoke('doomed')).status, 404);
  });

  test('scale to zero after the idle timer; logs survive; next request is a cold start', async () => {
    await deploy('napper', { 'handler.js': ECHO }, { scale_to_zero_after_s: 1, scale_down_after_s: 1 });
    const r1 = await invoke('napper');
    assert.equal(r1.status, 200);
    const fnId = (await api<{ id: string }>(p, 'GET', '/api/functions/napper')).body.id;
    await eventually(async () => {
      const m = await (await fetch(`${p.url}/metrics`)).text();
      const line = m.split('\n').find((l) => l.startsWith('aether_instances_active{') && l.includes(`"${fnId}"`));
      return line === undefined || line.trim().endsWith(' 0');
    }, 20_000, 250);
    const logs = await fetch(`${p.url}/api/functions/napper/logs?tail=50`, { headers: { authorization: `Bearer ${p.token}` } });
    assert.equal(logs.status, 200);
    assert.match(logs.headers.get('content-type') ?? '', /application\/x-ndjson/);
    const lines = (await logs.text()).trim().split('\n').map((l) => JSON.parse(l) as { text: string; stream: string; instance_id: string; time: string });
    assert.ok(lines.some((l) => l.text.includes('echo starting on')), 'stdout lines kept after scale to zero');
    const r2 = await invoke('napper');
    assert.equal(r2.status, 200);
    assert.equal(r2.cold, 'true');
  });

  test('isolation probes from inside a function', async () => {
    const probe = `
const http = require('http'); const fs = require('fs'); const net = require('net');
const target = new URL(process.env.GATEWAY);
http.createServer(async (req, res) => {
  const out = {};
  try { fs.readFileSync(process.env.TOKEN_FILE, 'utf8'); out.token = 'READ'; } catch (e) { out.token = e.code; }
  try { fs.writeFileSync('handler.js', 'x'); out.write = 'WROTE'; } catch (e) { out.write = e.code; }
  out.gateway = await new Promise((r) => { const s = net.connect(Number(target.port), target.hostname); s.on('connect', () => { s.destroy(); r('CONNECTED'); }); s.on('error', (e) => r(e.code)); });
  res.end(JSON.stringify(out));
}).listen(Number(process.env.PORT));`;
    const secret = join(p.dataDir, 'secret.txt');
    writeFileSync(secret, 's3cret', { mode: 0o600 });
    await deploy('probe', { 'handler.js': probe }, { env_vars: { GATEWAY: p.url, TOKEN_FILE: secret } });
    const r = await invoke('probe');
    assert.equal(r.status, 200, r.text);
    // Without root the sandbox is a plain process (documented); the claims hold only with isolation on.
    if (process.getuid?.() !== 0) return;
    assert.notEqual(r.json['token'], 'READ');
    assert.notEqual(r.json['write'], 'WROTE');
    assert.notEqual(r.json['gateway'], 'CONNECTED');
  });

  test('a renamed function routes by its new name and its id at once, the old name is 404', async () => {
    const { id } = await deploy('before-rename', { 'handler.js': ECHO });
    assert.equal((await invoke('before-rename')).status, 200);
    assert.equal((await api(p, 'PUT', '/api/functions/before-rename', { name: 'after-rename' })).status, 200);
    const old = await eventually(async () => {
      const r = await invoke('before-rename');
      return r.status === 404 ? r : undefined;
    }, 2000, 20);
    assert.equal((old.json['error'] as { code: string }).code, 'AETHER_ERR_FUNCTION_NOT_FOUND');
    const renamed = await invoke('after-rename', '/x');
    assert.equal(renamed.status, 200, renamed.text);
    assert.equal(renamed.cold, 'false');
    assert.equal((await invoke(id, '/y')).json['url'], '/y');
  });

  if (dataPlane === 'haproxy') {
    test('warm requests go through HAProxy; kill -9 of HAProxy under load loses only in-flight requests and it comes back', async () => {
      await deploy('survivor', { 'handler.js': ECHO });
      const viaHaproxy = (r: { json: Record<string, unknown> }): boolean => /aether-haproxy/.test((r.json['headers'] as Record<string, string>)['via'] ?? '');
      assert.equal((await invoke('survivor')).status, 200);
      const viaProxy = await eventually(async () => {
        const r = await invoke('survivor');
        return viaHaproxy(r) ? r : undefined;
      });
      assert.equal(viaProxy.cold, 'false');
      const { ok, okBeforeKill, okAtRecovery, failures } = await killHaproxyUnderLoad({
        pidFile: join(p.dataDir, 'haproxy', 'haproxy.pid'),
        request: () => invoke('survivor'),
        workers: 4,
        // Back by itself: a new HAProxy carries warm requests again.
        recovered: async () => viaHaproxy(await invoke('survivor')),
      });
      assert.ok(okBeforeKill > 0 && ok > okAtRecovery, 'served before, during and after');
      // Refused connects: the instant between the killed HAProxy's socket closing and the platform's
      // fallback listening on the port (nothing was sent; each loop retries every 5 ms, so their
      // number measures that instant, longer on a loaded machine: it failed a 12-in-all limit in
      // CI with 20). Bounded loosely, so only a port left unbound for long fails.
      const refused = failures.filter((f) => /ECONNREFUSED/.test(f));
      const lost = failures.filter((f) => !/ECONNREFUSED/.test(f));
      assert.ok(refused.length <= 200, `refused ${refused.length} times: the port stayed unbound`);
      // What was in flight on the killed process (4 clients) may fail, and (a known gap, see
      // docs/dataplane.md) connections still in the fallback listener's backlog when the port goes
      // back to the restarted HAProxy: a handful, never a stream of failures.
      assert.ok(lost.length <= 12, `lost ${lost.length}: ${lost.slice(0, 5).join(' | ')}`);
    });
  }
}
