import type { IncomingMessage, ServerResponse } from 'node:http';
import { AetherError, bearerToken, CLUSTER_TOKEN_HEADER, errorBody, sameSecret } from '../core/index.ts';
import { RETRYABLE_HEADER, ProxyError } from '../proxy/index.ts';
import type { Agent } from './types.ts';

const FORWARD_PREFIX = '/internal/forward/';
const LOGS_PREFIX = '/internal/logs/';
const MAX_TAIL = 1000;

/**
 * The agent's own HTTP surface: health, the gateway -> agent forwarding hop, and logs. Plain
 * node:http (no framework) because /internal/forward is on the warm path. Every /internal/ route
 * needs the cluster token: in the x-aether-cluster-token header (the forwarding hop, whose
 * `Authorization` is the caller's and goes to the function), or as a bearer token elsewhere.
 */
export function handleAgentHttp(
  agent: Agent,
  clusterToken: string,
  followers: Set<ServerResponse>,
  req: IncomingMessage,
  res: ServerResponse,
): void {
  const url = req.url ?? '/';
  if (url.startsWith('/internal/')) {
    const given = header(req, CLUSTER_TOKEN_HEADER) ?? (url.startsWith(FORWARD_PREFIX) ? undefined : bearerToken(req.headers.authorization));
    if (given === undefined || !sameSecret(given, clusterToken)) return sendError(res, new AetherError('AETHER_ERR_UNAUTHORIZED', 'missing or wrong cluster token'));
    delete req.headers[CLUSTER_TOKEN_HEADER]; // never passed on to a function
  }
  if (url.startsWith(FORWARD_PREFIX)) {
    forwardRoute(agent, url.slice(FORWARD_PREFIX.length), req, res);
    return;
  }
  const q = url.indexOf('?');
  const path = q < 0 ? url : url.slice(0, q);
  if (path === '/healthz') {
    if (req.method !== 'GET' && req.method !== 'HEAD') return sendError(res, new AetherError('AETHER_ERR_METHOD_NOT_ALLOWED'));
    sendJson(res, 200, { ok: true, agent_id: agent.id });
    return;
  }
  if (path.startsWith(LOGS_PREFIX)) {
    if (req.method !== 'GET') return sendError(res, new AetherError('AETHER_ERR_METHOD_NOT_ALLOWED'));
    const fnId = decodeURIComponent(path.slice(LOGS_PREFIX.length));
    const params = new URLSearchParams(q < 0 ? '' : url.slice(q + 1));
    logsRoute(agent, followers, fnId, params, req, res);
    return;
  }
  sendError(res, new AetherError('AETHER_ERR_ROUTE_NOT_FOUND', `no route ${req.method ?? 'GET'} ${path}`));
}

/** `<instanceId>/<path...>[?query]`: the gateway already set X-Forwarded-*; headers pass through. */
function forwardRoute(agent: Agent, rest: string, req: IncomingMessage, res: ServerResponse): void {
  let cut = rest.length;
  for (const c of ['/', '?']) {
    const i = rest.indexOf(c);
    if (i >= 0 && i < cut) cut = i;
  }
  const instanceId = rest.slice(0, cut);
  let path = rest.slice(cut);
  if (!path.startsWith('/')) path = `/${path}`;
  const ac = new AbortController();
  // The caller went away (gateway timeout or client gone): stop the upstream request too.
  res.on('close', () => {
    if (!res.writableFinished) ac.abort();
  });
  agent.forward(instanceId, req, res, { path }, { signal: ac.signal }).catch((err: unknown) => {
    if (res.headersSent) {
      res.destroy();
      return;
    }
    if (err instanceof ProxyError) {
      // 'connect': nothing reached the instance, so the gateway may retry on another one.
      sendError(res, new AetherError('AETHER_ERR_UPSTREAM', `instance ${instanceId}: ${err.message} (${err.phase})`), err.phase === 'connect');
      return;
    }
    sendError(res, err, err instanceof AetherError && err.code === 'AETHER_ERR_UPSTREAM');
  });
}

function logsRoute(agent: Agent, followers: Set<ServerResponse>, fnId: string, params: URLSearchParams, req: IncomingMessage, res: ServerResponse): void {
  const tailParam = params.get('tail');
  const n = tailParam === null ? 100 : Number(tailParam);
  if (!Number.isInteger(n) || n < 0) return sendError(res, new AetherError('AETHER_ERR_VALIDATION', 'tail: must be a non-negative integer'));
  const follow = params.get('follow') === '1' || params.get('follow') === 'true';
  res.writeHead(200, { 'content-type': 'application/x-ndjson', 'cache-control': 'no-store' });
  let buf = '';
  for (const e of agent.tailLogs(fnId, Math.min(n, MAX_TAIL))) buf += `${JSON.stringify(e)}\n`;
  if (!follow) {
    res.end(buf);
    return;
  }
  if (buf) res.write(buf);
  res.flushHeaders();
  followers.add(res);
  const unsubscribe = agent.followLogs(fnId, (e) => res.write(`${JSON.stringify(e)}\n`));
  const done = (): void => {
    unsubscribe();
    followers.delete(res);
  };
  req.on('close', done);
  res.on('close', done);
}

function header(req: IncomingMessage, name: string): string | undefined {
  const v = req.headers[name];
  return Array.isArray(v) ? v[0] : v;
}

function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const s = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(s) });
  res.end(s);
}

function sendError(res: ServerResponse, err: unknown, nothingSent = false): void {
  const { status, body } = errorBody(err);
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(body),
    // The gateway retries on another instance only when the request never reached this one.
    ...(nothingSent ? { [RETRYABLE_HEADER]: '1' } : {}),
  });
  res.end(body);
}
