import { createServer, METHODS, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import Router, { type HTTPMethod } from 'find-my-way';
import type { Duplex } from 'node:stream';
import { AetherError, answerUnexpected, bearerToken, CLUSTER_TOKEN_HEADER, FORWARD_INSTANCE_HEADER, FORWARD_PREFIX, clientErrorHandler, clip, closeAfterEarlyResponse, decodePathPart, errorBody, isAetherError, refuseConnect, sameSecret, silentLogger, type Logger } from '../core/index.ts';
import { AGENT_ERROR_HEADER, ProxyError, acceptUpgrade } from '../proxy/index.ts';
import type { Agent } from './types.ts';

const LOGS_PREFIX = '/internal/logs/';
const MAX_TAIL = 1000;
const MAX_FOLLOW_BUFFER = 4 * 1024 * 1024;

/**
 * The agent's HTTP server around `serve` (normally agent.handleHttp): WebSocket upgrades on the
 * forwarding route (`forwardsOnly`: on every request, for the private forwarding listener) are
 * handed over as request/response pairs (then tunnelled to the instance), parser errors and
 * CONNECT get our JSON error shape.
 */
export function createAgentServer(serve: (req: IncomingMessage, res: ServerResponse) => void, forwardsOnly = false): Server {
  const server = createServer({ shouldUpgradeCallback: (req) => forwardsOnly || (req.url?.startsWith(FORWARD_PREFIX) ?? false) }, serve);
  server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => serve(req, acceptUpgrade(req, socket, head)));
  server.on('clientError', clientErrorHandler);
  server.on('connect', refuseConnect);
  return server;
}

type Handler = (req: IncomingMessage, res: ServerResponse) => void;

const ALL_METHODS = [...METHODS] as HTTPMethod[];

/**
 * The route table (find-my-way, the router fastify uses; no framework around it: /internal/forward
 * is on the warm path and streams both ways). Every /internal/ route, known or not, first checks
 * the cluster token: in the x-aether-cluster-token header (the forwarding hop, whose
 * `Authorization` is the caller's and goes to the function), or as a bearer token elsewhere.
 */
function buildRouter(agent: Agent, clusterToken: string, followers: Set<ServerResponse>, log: Logger): Router.Instance<Router.HTTPVersion.V1> {
  /** Token first; on success the header is dropped (never passed on to a function). */
  const guarded =
    (h: Handler, forwarding = false): Handler =>
    (req, res) => {
      const given = header(req, CLUSTER_TOKEN_HEADER) ?? (forwarding ? undefined : bearerToken(req.headers.authorization));
      if (given === undefined || !sameSecret(given, clusterToken)) return sendError(res, new AetherError('AETHER_ERR_UNAUTHORIZED', 'missing or wrong cluster token'));
      delete req.headers[CLUSTER_TOKEN_HEADER];
      h(req, res);
    };
  // The rest of the URL goes to the instance as it came (raw, with its query, even an escape that
  // does not decode): cut, not parsed.
  const forward = guarded((req, res) => {
    const url = req.url ?? '/';
    if (!url.startsWith(FORWARD_PREFIX)) return notFound(req, res); // matched only once decoded: not ours
    const rest = url.slice(FORWARD_PREFIX.length);
    let cut = rest.length;
    for (const c of ['/', '?']) {
      const i = rest.indexOf(c);
      if (i >= 0 && i < cut) cut = i;
    }
    forwardRoute(agent, rest.slice(0, cut), rest.slice(cut), req, res, log);
  }, true);
  const logs = guarded((req, res) => {
    if (req.method !== 'GET') return sendError(res, new AetherError('AETHER_ERR_METHOD_NOT_ALLOWED'));
    const url = req.url ?? '/';
    if (!url.startsWith(LOGS_PREFIX)) return notFound(req, res);
    const q = url.indexOf('?');
    const path = q < 0 ? url : url.slice(0, q);
    const fnId = decodePathPart(path.slice(LOGS_PREFIX.length), 'function id');
    logsRoute(agent, followers, fnId, new URLSearchParams(q < 0 ? '' : url.slice(q + 1)), req, res);
  });
  // unknown /internal/ paths: 401 without the token, 404 with it (nothing about them leaks)
  const internalNotFound = guarded(notFound);
  const badEscape: Handler = (_req, res) => sendError(res, new AetherError('AETHER_ERR_VALIDATION', 'the path holds a malformed escape'));

  const router = Router({
    defaultRoute: notFound,
    // find-my-way cannot decode the path: the forwarding hop does not decode it, the rest says 400 (after the token)
    onBadUrl: (_path, req, res) => {
      const url = req.url ?? '/';
      if (url.startsWith(FORWARD_PREFIX)) forward(req, res);
      else if (url.startsWith(LOGS_PREFIX)) logs(req, res);
      else if (url.startsWith('/internal/')) guarded(badEscape)(req, res);
      else badEscape(req, res);
    },
  });
  router.on(ALL_METHODS, '/healthz', (req, res) => {
    if (req.method !== 'GET' && req.method !== 'HEAD') return sendError(res, new AetherError('AETHER_ERR_METHOD_NOT_ALLOWED'));
    sendJson(res, 200, { ok: true, agent_id: agent.id });
  });
  router.on(ALL_METHODS, '/internal/forward/*', (req, res) => forward(req, res));
  router.on(ALL_METHODS, '/internal/logs/*', (req, res) => logs(req, res));
  router.on(ALL_METHODS, '/internal', (req, res) => internalNotFound(req, res));
  router.on(ALL_METHODS, '/internal/*', (req, res) => internalNotFound(req, res));
  return router;
}

function notFound(req: IncomingMessage, res: ServerResponse): void {
  sendError(res, new AetherError('AETHER_ERR_ROUTE_NOT_FOUND', `no route ${clip(req.method ?? 'GET', 20)} ${clip((req.url ?? '/').split('?')[0] ?? '/')}`));
}

/** One router per agent server (its followers set), built on its first request. */
const routers = new WeakMap<Set<ServerResponse>, Router.Instance<Router.HTTPVersion.V1>>();

/** The agent's own HTTP surface: health, the gateway -> agent forwarding hop, and logs. */
export function handleAgentHttp(
  agent: Agent,
  clusterToken: string,
  followers: Set<ServerResponse>,
  req: IncomingMessage,
  res: ServerResponse,
  log: Logger = silentLogger(),
): void {
  let router = routers.get(followers);
  if (!router) {
    router = buildRouter(agent, clusterToken, followers, log);
    routers.set(followers, router);
  }
  // One request's error never ends the process: it is answered (500 at worst) and logged.
  try {
    router.lookup(req, res);
  } catch (err) {
    if (isAetherError(err) && err.status < 500) sendError(res, err);
    else answerUnexpected(log, 'agent', req, res, err);
  }
}

/**
 * The agent's private forwarding listener: the backup of its own HAProxy's per-instance backends
 * (a unix socket, 0600 in that HAProxy's 0700 directory: only the proxy reaches it, so no token
 * here; the proxy checked it and dropped it). The proxy stripped `/internal/forward/<instance>`
 * before it chose a server, so the URL is the instance's already and the instance comes in
 * FORWARD_INSTANCE_HEADER; from there on, exactly the forwarding route's handling.
 */
export function handleTrustedForward(agent: Agent, req: IncomingMessage, res: ServerResponse, log: Logger = silentLogger()): void {
  const instanceId = header(req, FORWARD_INSTANCE_HEADER);
  delete req.headers[FORWARD_INSTANCE_HEADER];
  if (!instanceId) return notFound(req, res);
  try {
    forwardRoute(agent, instanceId, req.url ?? '/', req, res, log);
  } catch (err) {
    answerUnexpected(log, 'agent forward', req, res, err);
  }
}

/** To `instanceId`, `path` (raw, with its query): the gateway already set X-Forwarded-*; headers pass through. */
function forwardRoute(agent: Agent, instanceId: string, rawPath: string, req: IncomingMessage, res: ServerResponse, log: Logger): void {
  const path = rawPath.startsWith('/') ? rawPath : `/${rawPath}`;
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
    if (!(err instanceof AetherError) && !(err instanceof ProxyError)) return answerUnexpected(log, 'agent forward', req, res, err);
    // AETHER_ERR_UPSTREAM_UNREACHED (nothing reached the program) goes back coded: the gateway
    // sends the request to another instance.
    sendError(res, err instanceof AetherError ? err : new AetherError('AETHER_ERR_UPSTREAM', `instance ${clip(instanceId)}: ${err.message}`));
  });
}

function logsRoute(agent: Agent, followers: Set<ServerResponse>, fnId: string, params: URLSearchParams, req: IncomingMessage, res: ServerResponse): void {
  const tailParam = params.get('tail');
  const n = tailParam === null ? 100 : Number(tailParam);
  if (!Number.isInteger(n) || n < 0) return sendError(res, new AetherError('AETHER_ERR_VALIDATION', 'tail: must be a non-negative integer'));
  const follow = params.get('follow') === '1' || params.get('follow') === 'true';
  let buf = '';
  for (const e of agent.tailLogs(fnId, Math.min(n, MAX_TAIL))) buf += `${JSON.stringify(e)}\n`;
  res.writeHead(200, { 'content-type': 'application/x-ndjson', 'cache-control': 'no-store' });
  if (!follow) {
    res.end(buf);
    return;
  }
  if (buf) res.write(buf);
  res.flushHeaders();
  followers.add(res);
  const unsubscribe = agent.followLogs(fnId, (e) => {
    // a follower that does not read is cut off rather than buffered without bound
    if (res.writableLength > MAX_FOLLOW_BUFFER) res.destroy();
    else res.write(`${JSON.stringify(e)}\n`);
  });
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
  closeAfterEarlyResponse(res.req, res);
  const s = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(s) });
  res.end(s);
}

function sendError(res: ServerResponse, err: unknown): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  closeAfterEarlyResponse(res.req, res);
  const { status, body } = errorBody(err);
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(body),
    // The agent's own answer, coded (a function's x-aether-* headers never get through the agent).
    [AGENT_ERROR_HEADER]: err instanceof AetherError ? err.code : 'AETHER_ERR_INTERNAL',
  });
  res.end(body);
}
