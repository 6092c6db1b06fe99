import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from 'node:http';
import { Pool, type Dispatcher } from 'undici';
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

/** Set by an agent on an error answer when the request never reached an instance (safe to retry). */
export const RETRYABLE_HEADER = 'x-aether-retryable';

export interface ForwardOptions {
  /** Treat an upstream answer carrying RETRYABLE_HEADER as a connect failure instead of relaying it. */
  retryable?: boolean;
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
    if (u.kind === 'unix') pool = new Pool('http://localhost', { ...common, socketPath: u.path });
    else if (u.kind === 'tcp') pool = new Pool(`http://${u.host.includes(':') ? `[${u.host}]` : u.host}:${u.port}`, common);
    else pool = new Pool(u.origin, common);
    pools.set(key, pool);
  }
  return pool;
}

/** Drop the pooled connections of an upstream that went away. */
export async function closeEndpoint(u: Upstream): Promise<void> {
  const key = keyOf(u);
  const pool = pools.get(key);
  if (!pool) return;
  pools.delete(key);
  await pool.destroy().catch(() => undefined);
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
    const handler: Dispatcher.DispatchHandler = {
      onRequestStart(c) {
        controller = c;
        if (signal?.aborted) c.abort(signal.reason);
      },
      onResponseStart(c, statusCode, headers) {
        if (opts.retryable && headers[RETRYABLE_HEADER] !== undefined) {
          c.abort(new ProxyError('instance unavailable at its agent', 'connect', false));
          return;
        }
        status = statusCode;
        const out: Record<string, string | string[]> = {};
        for (const k in headers) {
          const v = headers[k];
          if (v === undefined || HOP_BY_HOP.has(k)) continue;
          out[k] = v;
        }
        if (opts.responseHeaders) Object.assign(out, opts.responseHeaders);
        res.writeHead(statusCode, out);
        // Head, body and end usually arrive in one tick: send them in one write.
        res.cork();
        process.nextTick(uncork, res);
      },
      onResponseData(c, chunk) {
        // Backpressure: a slow client pauses the upstream instead of buffering in memory.
        if (!res.write(chunk)) {
          c.pause();
          res.once('drain', onDrain);
        }
      },
      onResponseEnd() {
        res.end();
        done();
      },
      onResponseError(_c, err) {
        if (err instanceof ProxyError) return done(err);
        const e = err as { code?: string; message?: string };
        if (signal?.aborted) return done(new ProxyError('request aborted', 'aborted', res.headersSent, err));
        const connect = !res.headersSent && isConnectError(e.code);
        done(new ProxyError(e.message ?? 'upstream failed', connect ? 'connect' : 'upstream', res.headersSent, err));
      },
    };
    signal?.addEventListener('abort', onAbort, { once: true });
    pool.dispatch(
      {
        path: target.path,
        method: (req.method ?? 'GET') as Dispatcher.HttpMethod,
        headers: requestHeaders(req, target.headers),
        body: hasBody(req) ? req : null,
      },
      handler,
    );
  });
}

function uncork(res: ServerResponse): void {
  res.uncork();
}

function isConnectError(code: string | undefined): boolean {
  return code === 'ECONNREFUSED' || code === 'ENOENT' || code === 'UND_ERR_CONNECT_TIMEOUT' || code === 'EHOSTUNREACH' || code === 'ECONNRESET_BEFORE';
}
