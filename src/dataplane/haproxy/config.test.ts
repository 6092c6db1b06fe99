import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { findHaproxy } from '../detect.ts';
import { createServer, type IncomingMessage } from 'node:http';
import { connect, type AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import { spawn } from 'node:child_process';
import { freePort } from '../../core/index.ts';
import { adminCommand } from './admin.ts';
import { listenActivatorBackup } from './backup.ts';
import { parseLogLine, type LoggedRequest } from './parse.ts';
import { activatorRequest, INSTANCE_SERVER_OPTIONS, ERROR_PAGES, errorPage, paths, renderConfig, viaFunction } from './config.ts';

const input = { dir: '/d', host: '0.0.0.0', port: 8080, activator: { host: '127.0.0.1', port: 9000 }, slots: 2 };
const blocks = (cfg: string): string[] => cfg.split('\n\n');
const cfg = renderConfig({ ...input, hops: { count: 1, clusterToken: 'tok' } });

test('gateway config: a function backend names its function in its Via element and sets no header of its own for it', () => {
  const slot = blocks(cfg).find((x) => /^backend f0$/m.test(x)) ?? '';
  assert.ok(slot.includes('http-request add-header via "1.1 aether-haproxy (%[var(txn.route),field(2,|)])"'), slot);
  assert.doesNotMatch(slot, /original-uri/);
  assert.ok(slot.includes('http-request replace-path ^/functions/[^/]*/?(.*)$ /\\1'), slot);
});

test('viaFunction: only a last element of the function backends\' form counts', () => {
  assert.deepEqual(viaFunction('1.1 aether-haproxy (fn-abc_1)'), { fnId: 'fn-abc_1', before: '' });
  assert.deepEqual(viaFunction('1.0 corp, 1.1 aether-haproxy (fn-x)'), { fnId: 'fn-x', before: '1.0 corp' });
  assert.deepEqual(viaFunction(['1.0 corp', '1.1 aether-haproxy (fn-x)']), { fnId: 'fn-x', before: '1.0 corp' });
  assert.equal(viaFunction(undefined), undefined);
  assert.equal(viaFunction('1.1 corp'), undefined);
  assert.equal(viaFunction('1.1 aether-haproxy (fn-x), 1.1 corp'), undefined, 'not the last element: someone else forwarded it since');
  assert.equal(viaFunction('1.1 aether-haproxy'), undefined);
  assert.equal(viaFunction('1.1 aether-haproxy (a/b)'), undefined, 'no path characters');
  assert.equal(viaFunction('1.1 xaether-haproxy (fn-x)'), undefined);
});

test('activatorRequest: the public URI back from the function backend or the hop listener', () => {
  const yes = (): boolean => true;
  const no = (): boolean => false;
  assert.deepEqual(activatorRequest('/a/b?q=1', '1.1 aether-haproxy (fn-x)', yes), { url: '/functions/fn-x/a/b?q=1', via: undefined });
  assert.deepEqual(activatorRequest('/?q=1', '1.0 corp, 1.1 aether-haproxy (fn-x)', no), { url: '/functions/fn-x/?q=1', via: '1.0 corp' });
  // From a hop listener: /internal/forward/<instance> before the stripped path, with the token.
  assert.deepEqual(activatorRequest('/internal/forward/inst-1/a?q', '1.1 aether-haproxy (fn-x)', yes), { url: '/functions/fn-x/a?q', via: undefined });
  assert.deepEqual(activatorRequest('/internal/forward/inst-1', '1.1 aether-haproxy (fn-x)', yes), { url: '/functions/fn-x/', via: undefined });
  // The same path without the hop's token is the function's own path.
  assert.deepEqual(activatorRequest('/internal/forward/inst-1/a', '1.1 aether-haproxy (fn-x)', no), { url: '/functions/fn-x/internal/forward/inst-1/a', via: undefined });
  assert.equal(activatorRequest('/a', '1.1 corp', yes), undefined);
  assert.equal(activatorRequest('/a', undefined, yes), undefined);
});

const haproxy = findHaproxy();

/** A private HAProxy directory as the driver prepares it: error pages and the route map's first lines. */
function haproxyDir(t: { after(fn: () => void): void }, routes: string): { dir: string; p: ReturnType<typeof paths> } {
  const dir = mkdtempSync(join(tmpdir(), 'aether-gw-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const p = paths(dir);
  mkdirSync(p.errors);
  for (const s of Object.keys(ERROR_PAGES)) writeFileSync(join(p.errors, `${s}.http`), errorPage(Number(s)));
  writeFileSync(p.routes, routes);
  return { dir, p };
}

test('gateway config + activator backup: a request no instance can take reaches the activator with its public URI back, upgrades too; a client\'s Via is never read', { skip: haproxy ? false : 'no haproxy binary' }, async (t) => {
  const { dir, p } = haproxyDir(t, 'fnA f0|fn-a|30000\n');
  const seen: { event: string; url: string | undefined; via: string | undefined }[] = [];
  // Like the gateway's server: upgrades taken on /functions/* only.
  const act = createServer({ shouldUpgradeCallback: (req) => req.url?.startsWith('/functions/') ?? false }, (req, res) => {
    seen.push({ event: 'request', url: req.url, via: req.headers.via });
    // The activator's own signals pass as they are (it writes the record under its id).
    res.setHeader('x-aether-invocation-id', 'inv-activator');
    res.setHeader('x-aether-cold-start', 'true');
    res.end('activator');
  });
  act.on('upgrade', (req: IncomingMessage, socket: Duplex) => {
    seen.push({ event: 'upgrade', url: req.url, via: req.headers.via });
    socket.end('HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n'); // RFC 6455's sample key and answer
  });
  await new Promise<void>((r) => act.listen(0, '127.0.0.1', () => r()));
  const backup = await listenActivatorBackup({ path: p.backup, server: act, tokenOk: () => false });
  const port = await freePort();
  writeFileSync(p.config, renderConfig({ ...input, dir, host: '127.0.0.1', port, activator: { host: '127.0.0.1', port: (act.address() as AddressInfo).port }, maxConn: 1000 }));
  const hp = spawn(haproxy as string, ['-f', p.config], { stdio: 'ignore' });
  t.after(() => {
    hp.kill('SIGKILL');
    backup.close();
    act.close();
  });
  for (let i = 0; i < 200; i++) {
    if (await adminCommand(p.admin, 'show info').then(() => true, () => false)) break;
    await new Promise((r) => setTimeout(r, 25));
  }
  // An instance whose connect is refused (marked down at once, as the driver adds them): handed to the backup.
  await adminCommand(p.admin, `add server f0/inst-1 127.0.0.1:1 maxconn 10 ${INSTANCE_SERVER_OPTIONS}; set server f0/inst-1 state ready; enable health f0/inst-1`);
  const r = await fetch(`http://127.0.0.1:${port}/functions/fnA/a/b?q=1`, { headers: { via: '1.0 corp' } });
  assert.equal(r.status, 200);
  assert.equal(await r.text(), 'activator');
  assert.equal(r.headers.get('x-aether-invocation-id'), 'inv-activator');
  assert.equal(r.headers.get('x-aether-cold-start'), 'true');
  // A WebSocket handed over the same way: rebuilt before the server decides it is an upgrade.
  const head = await new Promise<string>((resolve, reject) => {
    const c = connect(port, '127.0.0.1', () => c.write('GET /functions/fnA/ws HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n'));
    let got = '';
    c.setEncoding('utf8');
    c.on('data', (d: string) => (got += d));
    c.on('end', () => resolve(got));
    c.on('error', reject);
  });
  assert.match(head, /^HTTP\/1\.1 101/);
  // No route: the activator's own listener; a client's copy of the Via form is left as it is.
  await (await fetch(`http://127.0.0.1:${port}/functions/other/x`, { headers: { via: '1.1 aether-haproxy (fn-a)' } })).text();
  assert.deepEqual(seen, [
    { event: 'request', url: '/functions/fn-a/a/b?q=1', via: '1.0 corp' },
    { event: 'upgrade', url: '/functions/fn-a/ws', via: undefined },
    { event: 'request', url: '/functions/other/x', via: '1.1 aether-haproxy (fn-a)' },
  ]);
});

test('gateway config: HAProxy accepts it', { skip: haproxy ? false : 'no haproxy binary' }, (t) => {
  const { dir, p } = haproxyDir(t, '');
  writeFileSync(p.config, renderConfig({ ...input, dir, maxConn: 1000, hops: { count: 2, clusterToken: 'tok' } }));
  const r = spawnSync(haproxy as string, ['-c', '-f', p.config], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr + r.stdout);
  // The hop listeners log nothing (the function backend's stream logs the request) but inherit the format.
  const warnings = r.stderr.split('\n').filter((l) => /WARNING/.test(l) && !/log format ignored for proxy 'h\d+' since it has no log address/.test(l));
  assert.deepEqual(warnings, []);
});

test('gateway config: a sampled route logs every Nth success with its N and every failure; N=1 logs all; a function\'s x-aether-* headers are dropped', { skip: haproxy ? false : 'no haproxy binary' }, async (t) => {
  const { dir, p } = haproxyDir(t, 'fnA f0|fn-a|30000|4\n');
  const inst = createServer((req, res) => {
    res.statusCode = req.url === '/fail' ? 500 : 200;
    // A function cannot fake the platform's headers (as on the Node path).
    res.setHeader('x-aether-invocation-id', 'inv-forged');
    res.setHeader('x-aether-retryable', '1');
    res.end('x');
  });
  await new Promise<void>((r) => inst.listen(0, '127.0.0.1', () => r()));
  const port = await freePort();
  writeFileSync(p.config, renderConfig({ ...input, dir, host: '127.0.0.1', port, maxConn: 1000 }));
  const hp = spawn(haproxy as string, ['-f', p.config], { stdio: ['ignore', 'pipe', 'ignore'] });
  let out = '';
  hp.stdout.setEncoding('utf8');
  hp.stdout.on('data', (d: string) => (out += d));
  t.after(() => {
    hp.kill('SIGKILL');
    inst.close();
  });
  for (let i = 0; i < 200; i++) {
    if (await adminCommand(p.admin, 'show info').then(() => true, () => false)) break;
    await new Promise((r) => setTimeout(r, 25));
  }
  await adminCommand(p.admin, `add server f0/inst-1 127.0.0.1:${(inst.address() as AddressInfo).port} ${INSTANCE_SERVER_OPTIONS}; set server f0/inst-1 state ready`);
  const get = async (path: string): Promise<number> => {
    const r = await fetch(`http://127.0.0.1:${port}/functions/fnA${path}`);
    await r.text();
    assert.match(r.headers.get('x-aether-invocation-id') ?? '', /^inv-[0-9A-F]{28}$/);
    assert.equal(r.headers.get('x-aether-cold-start'), 'false');
    assert.equal(r.headers.get('x-aether-retryable'), null);
    return r.status;
  };
  for (let i = 0; i < 20; i++) assert.equal(await get('/'), 200);
  for (let i = 0; i < 3; i++) assert.equal(await get('/fail'), 500);
  await adminCommand(p.admin, `set map ${p.routes} fnA f0|fn-a|30000|1`);
  for (let i = 0; i < 3; i++) assert.equal(await get('/'), 200);
  const lines = async (): Promise<LoggedRequest[]> => out.split('\n').flatMap((l) => parseLogLine(l) ?? []);
  for (let i = 0; i < 100 && (await lines()).length < 11; i++) await new Promise((r) => setTimeout(r, 20));
  const got = (await lines()).map((x) => `${x.record.status_code}x${x.weight}`);
  assert.deepEqual(got, ['200x4', '200x4', '200x4', '200x4', '200x4', '500x1', '500x1', '500x1', '200x1', '200x1', '200x1']);
});
