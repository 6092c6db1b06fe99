import type { Readable } from 'node:stream';
import Fastify, { type FastifyError, type FastifyInstance, type FastifyReply, type FastifyRequest, type FastifyServerFactory } from 'fastify';
import multipart from '@fastify/multipart';
import { AetherError, clientErrorHandler, clip, closeAfterEarlyResponse, isAetherError, newId, registry, silentLogger, type Logger } from '../core/index.ts';
import type { Store } from '../store/index.ts';
import type { ArchiveLimits } from '../archive/index.ts';
import { MAX_INVOCATIONS_LIMIT, type FunctionService } from './functions.ts';
import { buildOpenApi } from './openapi.ts';
import { checkBearer } from './token.ts';
import { registerServiceRoutes, type ServiceRoutesDeps } from './services.ts';

export interface LogEntry {
  /** ms since epoch */
  time: number;
  instance_id: string;
  stream: 'stdout' | 'stderr' | 'system';
  text: string;
}

/** Where /api/functions/{id}/logs reads instance output (the agent side implements it). */
export interface LogSource {
  /** The last `n` entries of a function, oldest first. */
  tail(fnId: string, n: number): Promise<LogEntry[]>;
  /** Call `onEntry` for every new entry until `signal` aborts. */
  follow(fnId: string, onEntry: (e: LogEntry) => void, signal: AbortSignal): void;
}

export interface ApiDeps {
  functions: FunctionService;
  store: Store;
  adminToken: string;
  logs: LogSource;
  /** true when the server listens on loopback only: /metrics then needs no token. */
  metricsOpen: boolean;
  limits: ArchiveLimits;
  logger?: Logger;
  /** Limit for JSON bodies (default 1 MiB). */
  jsonBodyLimit?: number;
  /** Reported in /api/openapi.json. */
  version?: string;
  /** Services, nodes and the deploy webhook (absent: those routes answer 404). */
  services?: ServiceRoutesDeps;
}

export const DEFAULT_LOG_TAIL = 100;
export const MAX_LOG_TAIL = 10_000;
/** A follower that does not read is cut off once this much output is queued for it. */
const MAX_FOLLOW_BUFFER = 4 * 1024 * 1024;

/** Known paths and their methods: another method on one of these is a 405, not a 404. */
const ROUTE_METHODS: [RegExp, string[]][] = [
  [/^\/healthz\/?$/, ['GET', 'HEAD']],
  [/^\/metrics\/?$/, ['GET', 'HEAD']],
  [/^\/api\/openapi\.json\/?$/, ['GET', 'HEAD']],
  [/^\/api\/functions\/?$/, ['GET', 'HEAD', 'POST']],
  [/^\/api\/functions\/[^/]+\/?$/, ['GET', 'HEAD', 'PUT', 'DELETE']],
  [/^\/api\/functions\/[^/]+\/code\/?$/, ['POST']],
  [/^\/api\/functions\/[^/]+\/invocations\/?$/, ['GET', 'HEAD']],
  [/^\/api\/functions\/[^/]+\/logs\/?$/, ['GET', 'HEAD']],
  [/^\/api\/functions\/[^/]+\/instances\/?$/, ['GET', 'HEAD']],
  [/^\/api\/services\/?$/, ['GET', 'HEAD']],
  [/^\/api\/services\/[^/]+\/?$/, ['GET', 'HEAD']],
  [/^\/api\/services\/[^/]+\/restart\/?$/, ['POST']],
  [/^\/api\/services\/[^/]+\/logs\/?$/, ['GET', 'HEAD']],
  [/^\/api\/nodes\/?$/, ['GET', 'HEAD']],
  [/^\/api\/deploy\/?$/, ['GET', 'HEAD', 'POST']],
  [/^\/api\/deploy\/assignments\/?$/, ['GET', 'HEAD']],
  [/^\/api\/deploy\/webhook\/?$/, ['POST']],
];

interface IdParams {
  Params: { id: string };
}

/**
 * The management API (/api/*, /healthz, /metrics) on fastify. Invocation traffic (/functions/*)
 * never reaches it: the composition root's serverFactory routes that first.
 */
export function buildApi(deps: ApiDeps, opts: { serverFactory?: FastifyServerFactory; logger?: boolean } = {}): FastifyInstance {
  const log = deps.logger ?? silentLogger();
  const app = Fastify({
    logger: opts.logger ?? false,
    ...(opts.serverFactory ? { serverFactory: opts.serverFactory } : {}),
    bodyLimit: deps.jsonBodyLimit ?? 1024 * 1024,
    // Long ids still reach the routes (and get a 404 that does not echo them), not the 405 fallback.
    routerOptions: { ignoreTrailingSlash: true, maxParamLength: 2048 },
    frameworkErrors: (err, req, reply) => {
      closeAfterEarlyResponse(req.raw, reply.raw);
      void sendError(reply, toAetherError(err));
    },
    // Requests node's parser refuses (unknown method, bad syntax) get our error shape too.
    clientErrorHandler,
    // Unique across gateways and restarts: a 500's x-aether-request-id finds its log line.
    genReqId: () => newId('req'),
  }) as unknown as FastifyInstance;

  // The webhook authenticates by its HMAC signature (GitHub cannot send our bearer token).
  const publicRoutes = new Set(['/healthz', '/api/openapi.json', '/api/deploy/webhook']);
  if (deps.metricsOpen) publicRoutes.add('/metrics');

  app.addHook('onRequest', async (req, reply) => {
    const route = req.routeOptions.url;
    let needsAuth: boolean;
    if (route !== undefined) needsAuth = !publicRoutes.has(route);
    else needsAuth = safeDecode(req.url.split('?')[0] ?? '').toLowerCase().startsWith('/api');
    if (needsAuth && !checkBearer(req.headers.authorization, deps.adminToken)) {
      reply.header('www-authenticate', 'Bearer realm="aether"');
      return sendError(reply, new AetherError('AETHER_ERR_UNAUTHORIZED', 'missing or wrong bearer token (Authorization: Bearer <admin token>)'));
    }
  });

  app.setErrorHandler((err, req, reply) => {
    const e = toAetherError(err);
    if (e.status >= 500) {
      log.error({ err, request_id: req.id, url: clip(req.url, 200), method: req.method }, 'api request failed');
      reply.header('x-aether-request-id', req.id);
    }
    return sendError(reply, e);
  });

  // Any answer sent before its request body was read (an oversized upload, a GET /healthz with a
  // body, an early 401/404): close the connection afterwards, gracefully and bounded, instead of
  // draining the body without limit or resetting a client that is still sending.
  app.addHook('onSend', async (req, reply, payload) => {
    closeAfterEarlyResponse(req.raw, reply.raw);
    return payload;
  });

  app.setNotFoundHandler((req, reply) => {
    const path = req.url.split('?')[0] ?? '';
    const known = ROUTE_METHODS.find(([re]) => re.test(path));
    if (known) {
      reply.header('allow', known[1].join(', '));
      return sendError(reply, new AetherError('AETHER_ERR_METHOD_NOT_ALLOWED', `${req.method} is not allowed on ${clip(path)}; use ${known[1].join(', ')}`));
    }
    return sendError(reply, new AetherError('AETHER_ERR_ROUTE_NOT_FOUND', `no route ${req.method} ${clip(path)}`));
  });

  // Bodies of other types are left unread; JSON routes answer 415 for them (see requireJson).
  app.removeContentTypeParser('text/plain');
  app.addContentTypeParser('*', (_req, _payload, done) => done(null, undefined));

  app.get('/healthz', async () => ({ status: 'ok' }));

  app.get('/metrics', async (_req, reply) => {
    const text = await registry.metrics();
    return reply.type(registry.contentType).send(text);
  });

  let openapi: string | undefined;
  app.get('/api/openapi.json', async (_req, reply) => {
    openapi ??= JSON.stringify(buildOpenApi(deps.version === undefined ? {} : { version: deps.version }));
    return reply.type('application/json; charset=utf-8').send(openapi);
  });

  app.get('/api/functions', async () => deps.functions.list());

  app.post('/api/functions', { preHandler: requireJson }, async (req, reply) => {
    const fn = await deps.functions.create(req.body);
    return reply.code(201).send(fn);
  });

  app.get<IdParams>('/api/functions/:id', async (req) => deps.functions.get(req.params.id));

  app.put<IdParams>('/api/functions/:id', { preHandler: requireJson }, async (req) => deps.functions.update(req.params.id, req.body));

  app.delete<IdParams>('/api/functions/:id', async (req, reply) => {
    await deps.functions.remove(req.params.id);
    return reply.code(204).send();
  });

  app.get<IdParams & { Querystring: Record<string, unknown> }>('/api/functions/:id/invocations', async (req) => {
    const limit = intQuery(req.query, 'limit', 100, 1, MAX_INVOCATIONS_LIMIT);
    return deps.functions.invocations(req.params.id, limit);
  });

  app.get<IdParams>('/api/functions/:id/instances', async (req) => deps.functions.instances(req.params.id));

  app.get<IdParams & { Querystring: Record<string, unknown> }>('/api/functions/:id/logs', async (req, reply) => {
    const tail = intQuery(req.query, 'tail', DEFAULT_LOG_TAIL, 0, MAX_LOG_TAIL);
    // HEAD never follows: there is no body to stream.
    const follow = boolQuery(req.query, 'follow') && req.method === 'GET';
    const fn = await deps.functions.get(req.params.id);
    if (!follow) {
      const entries = tail === 0 ? [] : await deps.logs.tail(fn.id, tail);
      return reply.type('application/x-ndjson').send(entries.map(ndjson).join(''));
    }
    return followLogs(deps.logs, fn.id, tail, reply);
  });

  if (deps.services) registerServiceRoutes(app, deps.services);

  // The upload route gets its own parsers: multipart, and the raw body for every other type.
  app.register(async (scope) => {
    scope.removeAllContentTypeParsers();
    await scope.register(multipart, {
      // One byte over the limit so our own meter (which answers 413) trips before busboy truncates.
      limits: { fileSize: deps.limits.maxArchiveBytes + 1, files: 1, fields: 16, parts: 32, fieldSize: 64 * 1024 },
    });
    scope.addContentTypeParser('*', (_req, payload, done) => done(null, payload));
    scope.post<IdParams>('/api/functions/:id/code', async (req) => {
      const declared = Number(req.headers['content-length']);
      if (Number.isFinite(declared) && declared > deps.limits.maxArchiveBytes + (req.isMultipart() ? 64 * 1024 : 0)) {
        throw new AetherError('AETHER_ERR_PAYLOAD_TOO_LARGE', `archive exceeds the limit of ${deps.limits.maxArchiveBytes} bytes`);
      }
      if (req.isMultipart()) {
        const part = await req.file();
        if (!part) throw new AetherError('AETHER_ERR_VALIDATION', 'file: is required (multipart field "file" with the archive)');
        if (part.fieldname !== 'file') {
          part.file.resume();
          throw new AetherError('AETHER_ERR_VALIDATION', `file: is required (got multipart field "${clip(part.fieldname)}")`);
        }
        const result = await deps.functions.uploadCode(req.params.id, part.file);
        if (part.file.truncated) throw new AetherError('AETHER_ERR_PAYLOAD_TOO_LARGE', `archive exceeds the limit of ${deps.limits.maxArchiveBytes} bytes`);
        return result;
      }
      const body = req.body as Readable | undefined;
      return deps.functions.uploadCode(req.params.id, body ?? Buffer.alloc(0));
    });
  });

  return app;
}

async function requireJson(req: FastifyRequest): Promise<void> {
  const type = (req.headers['content-type'] ?? '').split(';')[0]?.trim().toLowerCase();
  if (type !== 'application/json') {
    throw new AetherError('AETHER_ERR_UNSUPPORTED_MEDIA_TYPE', `send the body as application/json (got ${type ? type : 'no content type'})`);
  }
}

function sendError(reply: FastifyReply, e: AetherError): FastifyReply {
  return reply.code(e.status).type('application/json; charset=utf-8').send(JSON.stringify(e.toJSON()));
}

const FASTIFY_CODES: Record<string, AetherError['code']> = {
  FST_ERR_CTP_INVALID_JSON_BODY: 'AETHER_ERR_INVALID_JSON',
  FST_ERR_CTP_EMPTY_JSON_BODY: 'AETHER_ERR_INVALID_JSON',
  FST_ERR_CTP_BODY_TOO_LARGE: 'AETHER_ERR_PAYLOAD_TOO_LARGE',
  FST_ERR_CTP_INVALID_MEDIA_TYPE: 'AETHER_ERR_UNSUPPORTED_MEDIA_TYPE',
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: 'AETHER_ERR_VALIDATION',
  FST_REQ_FILE_TOO_LARGE: 'AETHER_ERR_PAYLOAD_TOO_LARGE',
  FST_FILES_LIMIT: 'AETHER_ERR_PAYLOAD_TOO_LARGE',
  FST_PARTS_LIMIT: 'AETHER_ERR_PAYLOAD_TOO_LARGE',
  FST_FIELDS_LIMIT: 'AETHER_ERR_PAYLOAD_TOO_LARGE',
  FST_INVALID_MULTIPART_CONTENT_TYPE: 'AETHER_ERR_UNSUPPORTED_MEDIA_TYPE',
  FST_PROTO_VIOLATION: 'AETHER_ERR_VALIDATION',
  FST_ERR_BAD_URL: 'AETHER_ERR_VALIDATION',
};

const BY_STATUS: Record<number, AetherError['code']> = {
  400: 'AETHER_ERR_VALIDATION',
  401: 'AETHER_ERR_UNAUTHORIZED',
  404: 'AETHER_ERR_ROUTE_NOT_FOUND',
  405: 'AETHER_ERR_METHOD_NOT_ALLOWED',
  413: 'AETHER_ERR_PAYLOAD_TOO_LARGE',
  415: 'AETHER_ERR_UNSUPPORTED_MEDIA_TYPE',
};

/** Framework and library errors -> our codes; anything unknown is a 500 without details. */
export function toAetherError(err: unknown): AetherError {
  if (isAetherError(err)) return err;
  const fe = err as Partial<FastifyError> | undefined;
  const mapped = fe?.code ? FASTIFY_CODES[fe.code] : undefined;
  // Library messages about JSON mention internals; ours says what to fix.
  if (mapped === 'AETHER_ERR_INVALID_JSON') return new AetherError(mapped, fe?.code === 'FST_ERR_CTP_EMPTY_JSON_BODY' ? 'request body is empty; send a JSON object' : 'request body is not valid JSON');
  // The library's message for a bad URL quotes the whole URL back.
  if (fe?.code === 'FST_ERR_BAD_URL') return new AetherError('AETHER_ERR_VALIDATION', 'malformed URL (bad percent-escape?)');
  if (mapped) return new AetherError(mapped, fe?.message === undefined ? undefined : clip(fe.message, 200));
  const status = fe?.statusCode;
  if (typeof status === 'number' && status >= 400 && status < 500) {
    return new AetherError(BY_STATUS[status] ?? 'AETHER_ERR_VALIDATION', fe?.message === undefined ? undefined : clip(fe.message, 200));
  }
  return new AetherError('AETHER_ERR_INTERNAL');
}

function safeDecode(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

function oneValue(q: Record<string, unknown>, name: string): string | undefined {
  const v = q[name];
  if (v === undefined) return undefined;
  if (typeof v !== 'string') throw new AetherError('AETHER_ERR_VALIDATION', `${name}: give it once`);
  return v;
}

/** Integer query parameter; values above `max` are clamped, anything else invalid is a 400. */
function intQuery(q: Record<string, unknown>, name: string, def: number, min: number, max: number): number {
  const v = oneValue(q, name);
  if (v === undefined || v === '') return def;
  if (!/^\d+$/.test(v)) throw new AetherError('AETHER_ERR_VALIDATION', `${name}: must be an integer >= ${min}`);
  const n = Number(v);
  if (n < min) throw new AetherError('AETHER_ERR_VALIDATION', `${name}: must be an integer >= ${min}`);
  return Math.min(n, max);
}

function boolQuery(q: Record<string, unknown>, name: string): boolean {
  const v = oneValue(q, name);
  if (v === undefined || v === '' || v === 'false' || v === '0') return false;
  if (v === 'true' || v === '1') return true;
  throw new AetherError('AETHER_ERR_VALIDATION', `${name}: must be true or false`);
}

function ndjson(e: LogEntry): string {
  return `${JSON.stringify({ time: new Date(e.time).toISOString(), instance_id: e.instance_id, stream: e.stream, text: e.text })}\n`;
}

const entryKey = (e: LogEntry): string => `${e.time}\0${e.instance_id}\0${e.stream}\0${e.text}`;

/** Tail then live entries until the client goes away. Following starts first so nothing falls in between. */
async function followLogs(logs: LogSource, fnId: string, tail: number, reply: FastifyReply): Promise<FastifyReply> {
  const ac = new AbortController();
  const early: LogEntry[] = [];
  const sink: { write?: (e: LogEntry) => void } = {};
  logs.follow(fnId, (e) => (sink.write ? sink.write(e) : early.push(e)), ac.signal);
  let initial: LogEntry[];
  try {
    initial = tail === 0 ? [] : await logs.tail(fnId, tail);
  } catch (err) {
    ac.abort();
    throw err;
  }
  reply.hijack();
  const res = reply.raw;
  res.writeHead(200, { 'content-type': 'application/x-ndjson', 'cache-control': 'no-cache', 'x-content-type-options': 'nosniff' });
  res.flushHeaders();
  const stop = (): void => ac.abort();
  res.on('close', stop);
  const seen = new Set(initial.map(entryKey));
  for (const e of initial) res.write(ndjson(e));
  for (const e of early) if (!seen.has(entryKey(e))) res.write(ndjson(e));
  sink.write = (e) => {
    if (ac.signal.aborted) return;
    if (res.writableLength > MAX_FOLLOW_BUFFER) {
      res.destroy();
      return;
    }
    res.write(ndjson(e));
  };
  return reply;
}
