/**
 * The agent's hop (gateway -> agent -> instance) on each agent data plane: `aether agent
 * --data-plane haproxy` (its own HAProxy on its port carries forwards straight to instances) and
 * `--data-plane node` (its Node server does). Real etcd, Redis and radosgw; one `aether gateway
 * --data-plane haproxy` and, per suite, one agent. Requests go through the gateway and straight to
 * the agent with the cluster token, on loopback. Every wait and count is bounded; nothing asserts speed.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { request } from 'node:http';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { api, CLUSTER_TOKEN, eventually, startAether, zipFiles, type RunningPlatform } from './support/platform.ts';
import { backendsMissing, startBackends, type Backends } from './support/backends.ts';
import { sandboxPids } from './support/procs.ts';
import { tunnelPing } from './support/tunnel.ts';
import { killHaproxyUnderLoad } from './support/haproxy-kill.ts';

const TOKEN = randomBytes(16).toString('hex');
const skip = backendsMissing() ?? false;

/** Echoes what it got; logs each request's x-test-id (to count deliveries); streams on /stream and /upload; echoes an Upgrade's bytes. */
const HANDLER = `
const http = require('http');
http.createServer((req, res) => {
  const id = req.headers['x-test-id'];
  if (id) console.log('req ' + id);
  if (req.url.startsWith('/stream')) {
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.write('first\\n');
    setTimeout(() => res.end('second\\n'), 600);
    return;
  }
  if (req.url.startsWith('/upload')) {
    res.writeHead(200, { 'content-type': 'text/plain' });
    req.on('data', (c) => res.write('got ' + c.length + '\\n'));
    req.on('end', () => res.end('end\\n'));
    return;
  }
  if (req.url.startsWith('/fake')) {
    res.statusCode = 503;
    res.setHeader('x-aether-error-code', 'AETHER_ERR_UPSTREAM_UNREACHED');
  }
  res.setHeader('content-type', 'application/json');
  res.end(JSON.stringify({ instance: process.env.AETHER_INSTANCE_ID, url: req.url, headers: req.headers }));
}).on('upgrade', (req, sock, head) => {
  sock.write('HTTP/1.1 101 Switching Protocols\\r\\nConnection: Upgrade\\r\\nUpgrade: x-echo\\r\\n\\r\\n');
  sock.write('hello ' + req.url + ';');
  if (head.length) sock.write(head);
  sock.pipe(sock);
}).listen(Number(process.env.PORT));
`;

interface Echo {
  instance: string;
  url: string;
  headers: Record<string, string>;
}

interface Answer {
  status: number;
  headers: Headers;
  text: string;
  json: Echo | undefined;
}

async function get(url: string, headers: Record<string, string> = {}): Promise<Answer> {
  const r = await fetch(url, { headers, signal: AbortSignal.timeout(60_000) });
  const text = await r.text();
  let json: Echo | undefined;
  try {
    json = JSON.parse(text) as Echo;
  } catch {
    // not JSON
  }
  return { status: r.status, headers: r.headers, text, json };
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** One request whose body is sent in two parts, the second only once the answer to the first arrived. */
function duplexUpload(url: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method: 'POST', headers: { 'x-aether-cluster-token': CLUSTER_TOKEN, 'content-type': 'text/plain' } }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => {
        body += c;
        // The instance answered the first part while the request is still open: now the second.
        if (body === 'got 5\n') req.end('67890123');
      });
      res.on('end', () => resolve(body));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.setTimeout(20_000, () => req.destroy(new Error('upload did not stream both ways')));
    req.write('12345');
    req.flushHeaders();
  });
}

/** Milliseconds from the request to the first body chunk, and the whole body. */
async function firstChunk(url: string, headers: Record<string, string>): Promise<{ ms: number; body: string }> {
  const t0 = Date.now();
  const r = await fetch(url, { headers, signal: AbortSignal.timeout(20_000) });
  const reader = (r.body as ReadableStream<Uint8Array>).getReader();
  const dec = new TextDecoder();
  let body = '';
  let ms = -1;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (ms < 0) ms = Date.now() - t0;
    body += dec.decode(value, { stream: true });
  }
  return { ms, body };
}

if (skip) {
  it("the agent's hop on each data plane", { skip }, () => {});
} else {
  let backends: Backends | undefined;
  let flags: string[];
  let env: Record<string, string>;
  let gw: RunningPlatform;

  before(async () => {
    backends = await startBackends();
    ({ flags } = backends);
    env = { ...backends.env, AETHER_LEASE_TTL_MS: '4000' };
    gw = await startAether({ role: 'gateway', token: TOKEN, args: [...flags, '--data-plane', 'haproxy'], env });
  }, { timeout: 120_000 });

  after(async () => {
    await gw?.stop();
    await backends?.stop();
  }, { timeout: 60_000 });

  for (const dataPlane of ['haproxy', 'node'] as const) {
    describe(`the agent's hop: aether agent --data-plane ${dataPlane}`, { timeout: 240_000 }, () => {
      let agent: RunningPlatform;
      const fn = (name: string): string => `${dataPlane.slice(0, 1)}-${name}`;
      const T = { 'x-aether-cluster-token': CLUSTER_TOKEN };

      async function deploy(name: string, fields: Record<string, unknown> = {}): Promise<void> {
        const created = await api(gw, 'POST', '/api/functions', { name, runtime: 'node', ...fields });
        assert.equal(created.status, 201, JSON.stringify(created.body));
        const up = await api(gw, 'POST', `/api/functions/${name}/code`, await zipFiles({ 'handler.js': HANDLER }));
        assert.equal(up.status, 200, JSON.stringify(up.body));
      }
      const instances = async (name: string): Promise<{ instance_id: string; status: string }[]> => (await api<{ instance_id: string; status: string }[]>(gw, 'GET', `/api/functions/${name}/instances`)).body;
      const forward = (inst: string, rest = '/'): string => `${agent.url}/internal/forward/${inst}${rest}`;
      /** A warm request through the gateway, once its HAProxy routes it (not the activator). */
      const warm = (name: string, rest = '/'): Promise<Answer> =>
        eventually(async () => {
          const r = await get(`${gw.url}/functions/${name}${rest}`);
          assert.equal(r.status, 200, r.text);
          return /aether-haproxy/.test(r.json?.headers['via'] ?? '') ? r : undefined;
        }, 30_000, 100);

      before(async () => {
        agent = await startAether({ role: 'agent', token: TOKEN, args: [...flags, '--port', '0', '--advertise', '127.0.0.1', '--data-plane', dataPlane], env });
      }, { timeout: 60_000 });

      after(async () => {
        assert.equal(await agent.stop(), 0, agent.output().slice(-2000));
      }, { timeout: 60_000 });

      it('says which data plane carries the hop', () => {
        assert.match(agent.output(), new RegExp(`data plane: ${dataPlane} \\(asked for`));
      });

      it('routes through the gateway: path and query kept, the function sees neither the token nor the hop header', { timeout: 90_000 }, async () => {
        await deploy(fn('echo'));
        const r = await warm(fn('echo'), '/a/b?q=1');
        const echo = r.json as Echo;
        assert.equal(echo.url, '/a/b?q=1');
        assert.equal(echo.headers['x-aether-cluster-token'], undefined);
        assert.equal(echo.headers['x-aether-hop-instance'], undefined);
        assert.ok(!r.text.includes(CLUSTER_TOKEN), 'the token appears nowhere the function can see');
        // Which hop carried it: the agent's HAProxy names the instance for its backup; the Node hop adds nothing.
        if (dataPlane === 'haproxy') assert.equal(echo.headers['x-aether-forward-instance'], echo.instance);
        else assert.equal(echo.headers['x-aether-forward-instance'], undefined);
      });

      it('straight to the agent: prefix stripped, query kept; wrong or missing token 401, unknown instance coded 503, other routes answered by Node', async () => {
        const inst = (await instances(fn('echo')))[0]?.instance_id as string;
        const ok = await get(forward(inst, '/x/y?z=2&w'), { ...T, 'x-aether-hop-instance': 'leak' });
        assert.equal(ok.status, 200, ok.text);
        assert.equal(ok.json?.url, '/x/y?z=2&w');
        assert.equal(ok.json?.headers['x-aether-cluster-token'], undefined);
        if (dataPlane === 'haproxy') assert.equal(ok.json?.headers['x-aether-hop-instance'], undefined);
        assert.equal((await get(forward(inst, ''), T)).json?.url, '/');
        assert.equal((await get(forward(inst, '?only=query'), T)).json?.url, '/?only=query');
        for (const h of [{}, { 'x-aether-cluster-token': 'wrong' }, { 'x-aether-cluster-token': `${CLUSTER_TOKEN}x` }]) {
          const r = await get(forward(inst, '/a'), h);
          assert.equal(r.status, 401, r.text);
          assert.match(r.text, /AETHER_ERR_UNAUTHORIZED/);
        }
        const unknown = await get(forward('inst-nope', '/a'), T);
        assert.equal(unknown.status, 503, unknown.text);
        assert.equal(unknown.headers.get('x-aether-error-code'), 'AETHER_ERR_UPSTREAM_UNREACHED');
        const health = await get(`${agent.url}/healthz`);
        assert.equal(health.status, 200, health.text);
        // A function cannot fake the agent's "not reached" signal (the Node gateway would replay the request).
        const fake = await get(forward(inst, '/fake'), T);
        assert.equal(fake.status, 503);
        assert.equal(fake.headers.get('x-aether-error-code'), null);
      });

      it('streams both ways; an Upgrade is tunnelled', { timeout: 60_000 }, async () => {
        const inst = (await instances(fn('echo')))[0]?.instance_id as string;
        assert.equal(await duplexUpload(forward(inst, '/upload')), 'got 5\ngot 8\nend\n');
        assert.equal(await tunnelPing(forward(inst, '/t?x=1'), { 'x-aether-cluster-token': CLUSTER_TOKEN }), 'hello /t?x=1;ping');
        for (const url of [forward(inst, '/stream'), `${gw.url}/functions/${fn('echo')}/stream`]) {
          const s = await firstChunk(url, T);
          assert.equal(s.body, 'first\nsecond\n');
          assert.ok(s.ms >= 0 && s.ms < 500, `the first chunk arrived before the instance ended its answer (${s.ms} ms, ${url})`);
        }
      });

      it('a killed instance: forwards to it go to a sibling (or the one in flight fails), none is delivered twice', { timeout: 120_000 }, async (t) => {
        const name = fn('pair');
        await deploy(name, { min_instances: 2, max_instances: 2 });
        await get(`${gw.url}/functions/${name}/`);
        const pair = await eventually(async () => {
          const xs = (await instances(name)).filter((i) => i.status === 'ready');
          return xs.length === 2 ? xs : undefined;
        }, 60_000, 200);
        const [victim, sibling] = pair.map((i) => i.instance_id) as [string, string];
        let n = 0;
        let stop = false;
        const results: { id: string; status: number; instance: string | undefined; err?: string }[] = [];
        const client = async (): Promise<void> => {
          while (!stop) {
            const id = `t${n++}`;
            try {
              const r = await get(forward(victim, '/'), { ...T, 'x-test-id': id });
              results.push({ id, status: r.status, instance: r.json?.instance });
            } catch (err) {
              results.push({ id, status: 0, instance: undefined, err: String((err as Error).cause ?? err) });
            }
            await sleep(5);
          }
        };
        const load = client();
        await sleep(400);
        const pids = sandboxPids(victim);
        assert.ok(pids.length > 0, 'the victim runs');
        for (const pid of pids) process.kill(pid, 'SIGKILL');
        await sleep(1500);
        stop = true;
        await load;
        const failed = results.filter((r) => r.status !== 200);
        t.diagnostic(`${results.length} forwards, ${failed.length} failed: ${JSON.stringify(failed.slice(0, 3))}`);
        assert.ok(results.some((r) => r.instance === victim) && results.some((r) => r.instance === sibling), 'served by the victim, then by its sibling');
        assert.ok(failed.length <= 1, `only a request in flight at the kill may fail: ${JSON.stringify(failed)}`);
        // Every request reached a program at most once (no replays): count the ids in the function's logs.
        const logs = await eventually(async () => {
          const r = await fetch(`${gw.url}/api/functions/${name}/logs?tail=1000`, { headers: { authorization: `Bearer ${TOKEN}` } });
          const text = await r.text();
          return text.includes(`"req ${results.at(-1)?.id}"`) ? text : undefined;
        }, 10_000, 200);
        const seen = new Map<string, number>();
        for (const m of logs.matchAll(/"req (t\d+)"/g)) seen.set(m[1] as string, (seen.get(m[1] as string) ?? 0) + 1);
        const twice = [...seen].filter(([, c]) => c > 1);
        assert.deepEqual(twice, [], 'no request delivered twice');
      });

      it('a killed instance without a sibling: forwards to it are answered coded (a gateway sends them elsewhere)', { timeout: 90_000 }, async () => {
        const name = fn('solo');
        await deploy(name, { max_instances: 1 });
        const inst = (await warm(name)).json?.instance as string;
        for (const pid of sandboxPids(inst)) process.kill(pid, 'SIGKILL');
        const gone = await eventually(async () => {
          const r = await get(forward(inst, '/'), { ...T, 'x-test-id': 'after-kill' });
          return r.status === 503 ? r : undefined;
        }, 10_000, 50);
        assert.equal(gone.headers.get('x-aether-error-code'), 'AETHER_ERR_UPSTREAM_UNREACHED', gone.text);
        // Through the gateway a new instance serves it once the gateway's view has dropped the dead one
        // (the agent deregisters it); until then the gateway's HAProxy passes the agent's coded answer
        // on, where the Node path would retry elsewhere (docs/dataplane.md, "Distributed mode").
        const again = await eventually(async () => {
          const r = await get(`${gw.url}/functions/${name}/`);
          if (r.status === 200) return r;
          assert.equal(r.status, 503, r.text);
          assert.match(r.text, /AETHER_ERR_UPSTREAM_UNREACHED/);
          return undefined;
        }, 10_000, 100);
        assert.notEqual(again.json?.instance, inst);
      });

      it('load carried by the proxy keeps an instance from idling out; once idle it scales to zero', { timeout: 90_000 }, async () => {
        const name = fn('idle');
        await deploy(name, { scale_to_zero_after_s: 2, scale_down_after_s: 2 });
        const first = await warm(name);
        const inst = first.json?.instance as string;
        const until = Date.now() + 5000;
        while (Date.now() < until) {
          const r = await get(`${gw.url}/functions/${name}/`);
          assert.equal(r.status, 200, r.text);
          await sleep(100);
        }
        assert.ok((await instances(name)).some((i) => i.instance_id === inst), 'busy for longer than scale_to_zero_after_s: still there');
        await eventually(async () => (await instances(name)).length === 0, 20_000, 200);
      });

      if (dataPlane === 'haproxy') {
        it("kill -9 of the agent's HAProxy under light load: it comes back by itself, only requests in flight may fail", { timeout: 60_000 }, async (t) => {
          const name = fn('echo');
          await warm(name);
          const { ok, failures } = await killHaproxyUnderLoad({
            pidFile: join(agent.dataDir, 'haproxy', 'haproxy.pid'),
            request: () => get(`${gw.url}/functions/${name}/`),
            workers: 2,
            pauseMs: 20,
            // Back by itself: a new HAProxy carries forwards straight to the instance again.
            recovered: async () => Boolean((await get(`${gw.url}/functions/${name}/`)).json?.headers['x-aether-forward-instance']),
          });
          t.diagnostic(`${ok} served, ${failures.length} failed: ${failures.slice(0, 3).join(' | ')}`);
          assert.ok(ok > 0);
          assert.ok(failures.length <= 4, `lost ${failures.length}: ${failures.slice(0, 5).join(' | ')}`);
        });
      }
    });
  }
}
