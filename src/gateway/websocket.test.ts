/**
 * WebSocket upgrades through /functions/{name}/...: tunnelled to the instance on both paths, the
 * in-process agent of `aether up` and gateway -> agent over HTTP. One agent (with its HTTP server),
 * two gateways sharing its store and queue: one forwards in-process, one over HTTP.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { request, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { WebSocket, WebSocketServer } from 'ws';
import { agentConfig, createAgent, createAgentServer } from '../agent/index.ts';
import { DEFAULT_LIMITS } from '../archive/index.ts';
import { zipOf } from '../archive/testing.ts';
import { createFsBlobStore } from '../blob/fs.ts';
import { silentLogger, systemClock } from '../core/index.ts';
import { closeAllEndpoints } from '../proxy/index.ts';
import { createMemoryQueue } from '../queue/memory.ts';
import { createFakeRuntime } from '../runtime/fake/index.ts';
import { createSqliteStore } from '../store/sqlite.ts';
import { FunctionService } from './functions.ts';
import { startGateway, type Gateway } from './gateway.ts';

let dir: string;
let local: Gateway;
let remote: Gateway;
let functions: FunctionService;
const CLUSTER = 'cluster-token-for-tests-0123456789';
const closers: (() => Promise<void>)[] = [];

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'aether-ws-'));
  const store = createSqliteStore({ path: ':memory:' });
  const queue = createMemoryQueue();
  const blob = createFsBlobStore({ dir: join(dir, 'blobs') });
  const wss = new WebSocketServer({ noServer: true });
  wss.on('connection', (ws, req) => {
    ws.send(`hello ${req.url ?? ''}`);
    ws.on('message', (m, binary) => ws.send(binary ? m : `echo:${String(m)}`));
  });
  const runtime = createFakeRuntime({
    behavior: (spec) => (spec.owner.name === 'chat' ? { onUpgrade: (req, socket, head) => wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req)) } : {}),
  });
  const logger = silentLogger();
  // The agent's HTTP server listens first: its URL goes into the agent's records.
  const to: { handle?: (req: IncomingMessage, res: ServerResponse) => void } = {};
  const agentServer = createAgentServer((req, res) => (to.handle ? to.handle(req, res) : res.writeHead(503).end()));
  await new Promise<void>((r) => agentServer.listen(0, '127.0.0.1', () => r()));
  const agentUrl = `http://127.0.0.1:${(agentServer.address() as AddressInfo).port}`;
  const agent = createAgent({ store, queue, blob, runtime, clock: systemClock, logger, archiveLimits: DEFAULT_LIMITS, config: agentConfig({ agentId: 'agent-ws', url: agentUrl, dataDir: dir, scaleIntervalMs: 60_000, clusterToken: CLUSTER }) });
  to.handle = (req, res) => agent.handleHttp(req, res);
  await agent.start();
  functions = new FunctionService({ store, blobs: blob, defaultSandbox: 'process', tmpDir: dir });
  const common = { store, queue, clock: systemClock, logger, functions, adminToken: 't', clusterToken: CLUSTER, limits: DEFAULT_LIMITS, host: '127.0.0.1', port: 0, leaseTtlMs: 10_000, startTimeoutMs: 30_000 };
  local = await startGateway({ ...common, gatewayId: 'gw-local', localAgent: agent });
  remote = await startGateway({ ...common, gatewayId: 'gw-remote' });
  closers.push(
    () => local.close(),
    () => remote.close(),
    () => agent.stop(),
    () => runtime.close(),
    () =>
      new Promise<void>((r) => {
        agentServer.closeAllConnections();
        agentServer.close(() => r());
      }),
    () => store.close(),
  );
  for (const name of ['chat', 'plain']) {
    await functions.create({ name, runtime: 'node' });
    await functions.uploadCode(name, await zipOf({ 'handler.js': '// served by the fake runtime' }));
  }
});

after(async () => {
  for (const c of closers) await c().catch(() => undefined);
  await closeAllEndpoints();
  await rm(dir, { recursive: true, force: true });
});

/** Open a WebSocket, collect `n` messages while sending `send`, close. */
function converse(url: string, send: (string | Buffer)[], n: number): Promise<{ messages: (string | Buffer)[]; headers: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    const messages: (string | Buffer)[] = [];
    let headers: Record<string, unknown> = {};
    ws.on('upgrade', (res) => (headers = res.headers));
    ws.on('open', () => {
      for (const m of send) ws.send(m);
    });
    ws.on('message', (data, binary) => {
      messages.push(binary ? Buffer.from(data as Buffer) : String(data));
      if (messages.length === n) ws.close();
    });
    ws.on('close', () => resolve({ messages, headers }));
    ws.on('error', reject);
  });
}

/** The HTTP answer a failed handshake got. */
function refused(url: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    ws.on('unexpected-response', (_req, res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    ws.on('open', () => reject(new Error('the handshake succeeded')));
    ws.on('error', () => undefined);
  });
}

const wsUrl = (g: Gateway, path: string): string => g.url.replace(/^http/, 'ws') + path;

describe('WebSocket through /functions/*', { timeout: 60_000 }, () => {
  for (const [label, gw] of [
    ['in-process agent (aether up)', () => local],
    ['gateway -> agent over HTTP', () => remote],
  ] as const) {
    test(`${label}: messages both ways, text and binary, the path and query reach the function`, async () => {
      const big = Buffer.alloc(256 * 1024, 7);
      const r = await converse(wsUrl(gw(), '/functions/chat/room/1?user=ann'), ['ping', big], 3);
      assert.equal(r.messages[0], 'hello /room/1?user=ann');
      assert.equal(r.messages[1], 'echo:ping');
      assert.ok(Buffer.isBuffer(r.messages[2]) && r.messages[2].equals(big), 'binary echoed intact');
      assert.match(String(r.headers['x-aether-invocation-id']), /^inv-/);
    });

    test(`${label}: a function that does not speak WebSocket, or no function, is a clear HTTP answer`, async () => {
      const plain = await refused(wsUrl(gw(), '/functions/plain/'));
      assert.equal(plain.status, 200, 'the function answered as HTTP: no protocol switch');
      const none = await refused(wsUrl(gw(), '/functions/nobody/'));
      assert.equal(none.status, 404);
      assert.match(none.body, /AETHER_ERR_FUNCTION_NOT_FOUND/);
    });
  }

  test('plain requests still work next to tunnels, and an upgrade header elsewhere is a plain request', async () => {
    const ws = new WebSocket(wsUrl(local, '/functions/chat/held'));
    await new Promise((r, j) => {
      ws.on('message', r);
      ws.on('error', j);
    });
    const r = await fetch(`${local.url}/functions/plain/x`);
    assert.equal(r.status, 200);
    const u = new URL(local.url);
    const health = await new Promise<number>((resolve, reject) => {
      const req = request({ host: u.hostname, port: u.port, path: '/healthz', headers: { connection: 'upgrade', upgrade: 'websocket' } }, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      req.on('upgrade', () => reject(new Error('switched protocols on /healthz')));
      req.on('error', reject);
      req.end();
    });
    assert.equal(health, 200);
    ws.close();
  });
});
