import { ServerResponse, type IncomingHttpHeaders, type IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { Pool, type Dispatcher } from 'undici';
import { preambleConnector } from '../runtime/index.ts';
import type { Endpoint } from '../spec/index.ts';

/**
 * The forwarding primitive of the warm path (gateway -> instance, gateway -> agent -> instance).
 * Streams both ways (nothing is buffered), keeps pooled keep-alive connections per upstream, and
 * strips hop-by-hop headers. It never writes error bodies itself: the caller owns error responses.
 */
export type Upstream = Endpoint | { kind: 'http'; origin: string };

export interface ForwardTarget {
  endpoint: Upstream;
  /** Path plus query string to request upstream. */
  path: string;
  /** Request headers to add or override (e.g. X-Forwarded-*). */
  headers?: Record<string, string>;
}

/**
 * On an agent's own error answers: its error code. Trustworthy only from an agent: every `x-aether-*`
 * header of an upstream response is dropped here, so a function's answer relayed by an agent never
 * carries one.
 */
export const AGENT_ERROR_HEADER = 'x-aether-error-code';
/** The agent's code for "the request never reached the program": safe to send elsewhere. */
export const UNREACHED_CODE = 'AETHER_ERR_UPSTREAM_UNREACHED';

export interface ForwardOptions {
  /**
   * The upstream is an agent: its answer with AGENT_ERROR_HEADER = UNREACHED_CODE rejects as a
   * connect failure (phase 'connect') instead of being relayed.
   */
  fromAgent?: boolean;
  signal?: AbortSignal;
  /** Extra response headers (e.g. x-aether-invocation-id). */
  responseHeaders?: Record<string, string>;
}

export class ProxyError extends Error {
  /** 'connect': nothing reached the upstream (safe to retry elsewhere); 'upstream': it failed mid-way. */
  readonly phase: 'connect' | 'upstream' | 'aborted';
  readonly headersSent: boolean;
  constructor(message: string, phase: 'connect' | 'upstream' | 'aborted', headersSent: boolean, cause?: unknown) {
    super(message, { cause });
    this.name = 'ProxyError';
    this.phase = phase;
    this.headersSent = headersSent;
  }
}

const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'expect',
]);

const pools = new Map<string, Pool>();

/** How long a response head may wait for its first body bytes before it is sent alone. */
const HEAD_HOLD_MS = 5;

function keyOf(u: Upstream): string {
  switch (u.kind) {
    case 'tcp':
      return `tcp:${u.host}:${u.port}`;
    case 'unix':
      return `unix:${u.path}`;
    case 'http':
      return `http:${u.origin}`;
  }
}

function poolFor(u: Upstream): Pool {
  const key = keyOf(u);
  let pool = pools.get(key);
  if (!pool) {
    // Body/headers timeouts are off: the caller's signal carries the function's timeout_ms.
    // keepAliveTimeout stays under Node's 5 s server default so we never reuse a closing socket.
    const common = { headersTimeout: 0, bodyTimeout: 0, keepAliveTimeout: 4000, keepAliveMaxTimeout: 4000, connectTimeout: 5000 };
    if (u.kind === 'unix' && u.preamble) pool = new Pool('http://localhost', { ...common, connect: preambleConnector(u.path, common.connectTimeout) });
    else if (u.kind === 'unix') pool = new Pool('http://localhost', { ...common, socketPath: u.path });
    else if (u.kind === 'tcp') pool = new Pool(`http://${u.host.includes(':') ? `[${u.host}]` : u.host}:${u.port}`, common);
    else pool = new Pool(u.origin, common);
    pools.set(key, pool);
  }
  return pool;
}

/**
 * Drop the pooled connections of an upstream that went away. Gracefully: a request still queued
 * in the pool then fails to connect (a coded 'connect' failure, sent elsewhere) instead of being
 * aborted like one that reached the upstream.
 */
export async function closeEndpoint(u: Upstream): Promise<void> {
  const pool = pools.get(keyOf(u));
  if (pool) await dropPool(pool, u);
}

/** Retire `pool` if it still serves `u`: new requests get a new pool, the old one closes once idle. */
function dropPool(pool: Pool, u: Upstream): Promise<void> {
  const key = keyOf(u);
  if (pools.get(key) !== pool) return Promise.resolve();
  pools.delete(key);
  return pool.close().catch(() => pool.destroy().catch(() => undefined));
}

export async function closeAllEndpoints(): Promise<void> {
  const all = [...pools.values()];
  pools.clear();
  await Promise.all(all.map((p) => p.destroy().catch(() => undefined)));
}

function requestHeaders(req: IncomingMessage, extra: Record<string, string> | undefined): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  const listed = connectionListed(req.headers);
  for (const [k, v] of Object.entries(req.headers)) {
    if (v === undefined || HOP_BY_HOP.has(k) || listed?.has(k)) continue;
    out[k] = v;
  }
  if (extra) for (const [k, v] of Object.entries(extra)) out[k] = v;
  return out;
}

function connectionListed(h: IncomingHttpHeaders): Set<string> | undefined {
  const c = h.connection;
  if (!c || c === 'keep-alive' || c === 'close') return undefined;
  return new Set(c.split(',').map((s) => s.trim().toLowerCase()));
}

/** Upgrade requests (WebSocket) taken over from a server's 'upgrade' event: their socket and early bytes. */
const upgrades = new WeakMap<IncomingMessage, { socket: Duplex; head: Buffer; upgraded: boolean }>();

/**
 * Turn an 'upgrade' event into a request/response pair the normal handlers take: errors are
 * answered on the returned response (then the connection closes), and forward() tunnels the
 * connection once the upstream switches protocols.
 */
export function acceptUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): ServerResponse {
  // node leaves upgraded sockets without an error listener: one reset would end the process.
  socket.on('error', () => socket.destroy());
  const res = new ServerResponse(req);
  res.assignSocket(socket as Socket);
  res.shouldKeepAlive = false;
  const state = { socket, head, upgraded: false };
  upgrades.set(req, state);
  res.on('finish', () => {
    if (state.upgraded) return;
    socket.end();
    const t = setTimeout(() => socket.destroy(), 5000);
    t.unref();
    socket.once('close', () => clearTimeout(t));
  });
  return res;
}

/** True for a request that arrived through acceptUpgrade (a WebSocket handshake, say). */
export function isUpgradeRequest(req: IncomingMessage): boolean {
  return upgrades.has(req);
}

function hasBody(req: IncomingMessage): boolean {
  return req.headers['content-length'] !== undefined ? req.headers['content-length'] !== '0' : req.headers['transfer-encoding'] !== undefined;
}

/**
 * Stream `req` to the upstream and its answer into `res`. Built on undici's raw dispatch API (no
 * intermediate streams or promises per chunk): the warm path's hot loop.
 */
export function forward(req: IncomingMessage, res: ServerResponse, target: ForwardTarget, opts: ForwardOptions = {}): Promise<{ status: number }> {
  const pool = poolFor(target.endpoint);
  return new Promise((resolve, reject) => {
    let status = 0;
    let controller: Dispatcher.DispatchController | undefined;
    let settled = false;
    let responded = false;
    const signal = opts.signal;
    const onAbort = (): void => controller?.abort(signal?.reason ?? new Error('aborted'));
    const done = (err?: ProxyError): void => {
      if (settled) return;
      settled = true;
      signal?.removeEventListener('abort', onAbort);
      if (err) reject(err);
      else resolve({ status });
    };
    const onDrain = (): void => controller?.resume();
    // The response head is held until the first body bytes, the end, or a short while, whichever
    // comes first: a response that breaks right after its head (a malformed chunk: undici fails
    // the request when the socket has closed, a loop phase later) is then still answered 502 by
    // the caller instead of an empty reply. Streaming answers get their head within HEAD_HOLD_MS.
    let head: { status: number; headers: Record<string, string | string[]> } | undefined;
    let headTimer: NodeJS.Timeout | undefined;
    const flushHead = (): void => {
      if (headTimer) clearTimeout(headTimer);
      headTimer = undefined;
      if (!head || res.headersSent || res.destroyed) return;
      const h = head;
      head = undefined;
      try {
        res.writeHead(h.status, h.headers);
      } catch (err) {
        // A head node refuses to write (may run from a timer: it must not escape as an exception).
        controller?.abort(new ProxyError('the instance sent a response head that cannot be relayed', 'upstream', false, err));
      }
    };
    const upgrade = upgrades.get(req);
    const handler: Dispatcher.DispatchHandler = {
      onRequestStart(c) {
        controller = c;
        if (signal?.aborted) c.abort(signal.reason);
      },
      onRequestUpgrade(_c, statusCode, headers, upSocket) {
        // The instance switched protocols: relay its 101 and splice the two connections. The
        // tunnel counts as one request in flight until either side closes it; the caller's
        // timeout bounded the handshake only.
        if (!upgrade || res.headersSent || res.destroyed) {
          upSocket.destroy();
          return done(new ProxyError('client went away before the upgrade', 'aborted', res.headersSent));
        }
        status = statusCode;
        upgrade.upgraded = true;
        signal?.removeEventListener('abort', onAbort);
        const client = upgrade.socket;
        res.detachSocket(client as Socket);
        let text = `HTTP/1.1 ${statusCode} Switching Protocols\r\n`;
        const all: Record<string, string | string[] | undefined> = { ...headers, ...opts.responseHeaders };
        for (const [k, v] of Object.entries(all)) {
          if (v === undefined) continue;
          for (const one of Array.isArray(v) ? v : [v]) text += `${k}: ${one}\r\n`;
        }
        client.write(`${text}\r\n`);
        if (upgrade.head.length > 0) upSocket.write(upgrade.head);
        upSocket.on('error', () => undefined);
        const close = (): void => {
          client.destroy();
          upSocket.destroy();
        };
        client.once('close', close);
        upSocket.once('close', close);
        client.once('close', () => done());
        client.pipe(upSocket);
        upSocket.pipe(client);
      },
      onResponseStart(c, statusCode, headers) {
        responded = true;
        if (opts.fromAgent && headers[AGENT_ERROR_HEADER] === UNREACHED_CODE) {
          c.abort(new ProxyError('the instance could not be reached at its agent', 'connect', false));
          return;
        }
        const out: Record<string, string | string[]> = {};
        for (const k in headers) {
          const v = headers[k];
          // x-aether-* are the platform's: a function cannot set them (nor fake an agent's signal)
          if (v === undefined || HOP_BY_HOP.has(k) || k.startsWith('x-aether-')) continue;
          out[k] = v;
        }
        if (statusCode < 200) {
          // 1xx: relayed as informational answers, never as the final one.
          relayInformational(res, statusCode, out);
          return;
        }
        status = statusCode;
        if (opts.responseHeaders) Object.assign(out, opts.responseHeaders);
        head = { status: statusCode, headers: out };
        headTimer = setTimeout(flushHead, HEAD_HOLD_MS);
      },
      onResponseData(c, chunk) {
        if (head) {
          // Head, body and end usually arrive in one tick: send them in one write.
          res.cork();
          flushHead();
          process.nextTick(uncork, res);
        }
        // Backpressure: a slow client pauses the upstream instead of buffering in memory.
        if (!res.write(chunk)) {
          c.pause();
          res.once('drain', onDrain);
        }
      },
      onResponseEnd() {
        flushHead();
        res.end();
        done();
      },
      onResponseError(_c, err) {
        if (headTimer) clearTimeout(headTimer);
        headTimer = undefined;
        head = undefined; // never sent: the caller answers 502 instead
        if (err instanceof ProxyError) return done(err);
        const e = err as { code?: string; message?: string };
        if (signal?.aborted) return done(new ProxyError('request aborted', 'aborted', res.headersSent, err));
        const connect = !res.headersSent && (isConnectError(e.code) || (unreadByForwarder(target.endpoint, e.code) && !responded));
        // The upstream broke a connection: it is most likely dying, and the other idle connections
        // to it are dead too although their close may not have been read yet. A fresh pool makes the
        // next request connect anew, so it fails as 'connect' (sent elsewhere) instead of being
        // written into a dead connection and lost. In-flight requests finish on the old pool.
        if (!isConnectError(e.code)) void dropPool(pool, target.endpoint);
        done(new ProxyError(e.message ?? 'upstream failed', connect ? 'connect' : 'upstream', res.headersSent, err));
      },
    };
    signal?.addEventListener('abort', onAbort, { once: true });
    const upgradeTo = upgrade ? req.headers.upgrade : undefined;
    pool.dispatch(
      {
        path: target.path,
        method: (req.method ?? 'GET') as Dispatcher.HttpMethod,
        headers: requestHeaders(req, target.headers),
        body: upgradeTo === undefined && hasBody(req) ? req : null,
        ...(upgradeTo === undefined ? {} : { upgrade: upgradeTo }),
      },
      handler,
    );
  });
}

/** 103 Early Hints and 102 Processing go to the client as such; other 1xx have no Node API and are dropped. */
function relayInformational(res: ServerResponse, status: number, headers: Record<string, string | string[]>): void {
  if (res.headersSent || res.destroyed) return;
  try {
    if (status === 103 && headers['link'] !== undefined) res.writeEarlyHints(headers);
    else if (status === 102) res.writeProcessing();
  } catch {
    // hints node refuses to write are dropped: they are optional by definition
  }
}

function uncork(res: ServerResponse): void {
  res.uncork();
}

function isConnectError(code: string | undefined): boolean {
  return code === 'ECONNREFUSED' || code === 'ENOENT' || code === 'UND_ERR_CONNECT_TIMEOUT' || code === 'EHOSTUNREACH' || code === 'ENETUNREACH' || code === 'ECONNRESET_BEFORE';
}

/**
 * A sandbox forwarder closed our connection without reading what we wrote (EPIPE: it was closed
 * before the write; ECONNRESET on a unix socket: closed with our bytes unread, which it does when
 * its program's side went away). Those bytes never reached the program. Only for forwarder sockets,
 * whose peer is ours and never half-reads a request.
 */
function unreadByForwarder(u: Upstream, code: string | undefined): boolean {
  return u.kind === 'unix' && u.preamble === true && (code === 'EPIPE' || code === 'ECONNRESET');
}
