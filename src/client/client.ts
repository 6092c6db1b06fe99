import { Agent } from 'undici';
import type { Dispatcher } from 'undici';
import type { AgentRecord, CreateFunctionInput, FunctionRecord, InvocationRecord, ServiceView, UpdateFunctionInput } from '../spec/index.ts';
import type { Assignments, DeployStatus, ServiceConfig } from '../deploy/index.ts';

/** A non-2xx answer, or a failure to get one at all (then `status` is 0). */
export class ClientError extends Error {
  readonly status: number;
  /** The API's `AETHER_ERR_*` code; `HTTP_<status>` for a body that is not our error JSON; a socket error code (e.g. `ECONNREFUSED`) or `TIMEOUT` when status is 0. */
  readonly code: string;
  constructor(status: number, code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ClientError';
    this.status = status;
    this.code = code;
  }
}

export function isClientError(err: unknown): err is ClientError {
  return err instanceof ClientError;
}

export interface ClientOptions {
  /** Base URL of a gateway, e.g. http://127.0.0.1:8080 */
  url: string;
  /** Admin token for /api/* */
  token?: string | undefined;
  /** Per request: time to the response headers and between body chunks. Default 60 s. */
  timeoutMs?: number | undefined;
}

export interface UploadResult {
  message: string;
  code_path: string;
  code_sha256: string;
  code_size: number;
}

export interface LogEntry {
  /** ms since epoch (or an ISO string, which the client passes through as is) */
  time: number | string;
  instance_id: string;
  stream: 'stdout' | 'stderr' | 'system';
  text: string;
}

export interface LogsOptions {
  tail?: number | undefined;
  follow?: boolean | undefined;
  signal?: AbortSignal | undefined;
}

export interface InvokeOptions {
  method?: string | undefined;
  /** Path (and query) after /functions/<fn>; default "/" */
  path?: string | undefined;
  body?: string | Uint8Array | undefined;
  headers?: Record<string, string> | undefined;
  timeoutMs?: number | undefined;
}

export interface InvokeResult {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
  invocationId: string | undefined;
  coldStart: boolean | undefined;
}

export interface HealthResult {
  status: number;
  ok: boolean;
  body: unknown;
}

type Method = Dispatcher.HttpMethod;

interface Call {
  method: Method;
  path: string;
  body?: string | Uint8Array;
  headers?: Record<string, string>;
  auth?: boolean;
  timeoutMs?: number;
  /** 0 = no limit between body chunks (log following). */
  bodyTimeoutMs?: number;
  signal?: AbortSignal | undefined;
  /** false: hand back any status instead of throwing for non-2xx. */
  throwOnError?: boolean;
}

/** Typed client for the Aether HTTP API (used by the CLI and tests). Call close() when done. */
export class AetherClient {
  readonly url: string;
  readonly #origin: string;
  readonly #basePath: string;
  readonly #token: string | undefined;
  readonly #timeoutMs: number;
  readonly #agent: Agent;

  constructor(opts: ClientOptions) {
    let u: URL;
    try {
      u = new URL(opts.url);
    } catch {
      throw new ClientError(0, 'AETHER_ERR_VALIDATION', `invalid URL: ${opts.url}`);
    }
    this.#origin = u.origin;
    // Allow a gateway mounted under a path prefix.
    this.#basePath = u.pathname.replace(/\/+$/, '');
    this.url = this.#origin + this.#basePath;
    this.#token = opts.token;
    this.#timeoutMs = opts.timeoutMs ?? 60_000;
    this.#agent = new Agent({ keepAliveTimeout: 4_000 });
  }

  createFunction(input: CreateFunctionInput): Promise<FunctionRecord> {
    return this.#json('POST', '/api/functions', input);
  }

  listFunctions(): Promise<FunctionRecord[]> {
    return this.#json('GET', '/api/functions');
  }

  getFunction(idOrName: string): Promise<FunctionRecord> {
    return this.#json('GET', `/api/functions/${seg(idOrName)}`);
  }

  updateFunction(idOrName: string, patch: UpdateFunctionInput): Promise<FunctionRecord> {
    return this.#json('PUT', `/api/functions/${seg(idOrName)}`, patch);
  }

  async deleteFunction(idOrName: string): Promise<void> {
    const res = await this.#call({ method: 'DELETE', path: `/api/functions/${seg(idOrName)}`, auth: true });
    await res.body.dump();
  }

  /** Upload a zip or tar.gz archive as the raw request body. */
  uploadCode(idOrName: string, archive: Buffer): Promise<UploadResult> {
    return this.#json('POST', `/api/functions/${seg(idOrName)}/code`, archive, { 'content-type': archiveType(archive) });
  }

  listInvocations(idOrName: string, limit?: number): Promise<InvocationRecord[]> {
    const q = limit === undefined ? '' : `?limit=${encodeURIComponent(String(limit))}`;
    return this.#json('GET', `/api/functions/${seg(idOrName)}/invocations${q}`);
  }

  // Services (firework-format specs placed by the deployer).
  listServices(): Promise<ServiceView[]> {
    return this.#json('GET', '/api/services');
  }

  getService(name: string): Promise<ServiceView & { config: ServiceConfig | null }> {
    return this.#json('GET', `/api/services/${seg(name)}`);
  }

  restartService(name: string): Promise<{ name: string; request_id: string }> {
    return this.#json('POST', `/api/services/${seg(name)}/restart`);
  }

  async serviceLogs(name: string, tail = 100): Promise<LogEntry[]> {
    const res = await this.#call({ method: 'GET', path: `/api/services/${seg(name)}/logs?tail=${tail}`, auth: true });
    const text = await res.body.text();
    return text.split('\n').filter((l) => l.trim() !== '').map((l) => JSON.parse(l) as LogEntry);
  }

  listNodes(): Promise<(AgentRecord & { services: string[] })[]> {
    return this.#json('GET', '/api/nodes');
  }

  deployStatus(): Promise<DeployStatus> {
    return this.#json('GET', '/api/deploy');
  }

  assignments(): Promise<Assignments> {
    return this.#json('GET', '/api/deploy/assignments');
  }

  /** Ask the deployer to read its source and apply it now. */
  triggerDeploy(): Promise<{ status: string }> {
    return this.#json('POST', '/api/deploy');
  }

  /** Log lines (NDJSON from the API). With follow, the iteration lasts until the server ends it or `signal` aborts. */
  async *logs(idOrName: string, opts: LogsOptions = {}): AsyncIterable<LogEntry> {
    const q = new URLSearchParams();
    if (opts.tail !== undefined) q.set('tail', String(opts.tail));
    if (opts.follow) q.set('follow', 'true');
    const qs = q.size > 0 ? `?${q.toString()}` : '';
    const res = await this.#call({
      method: 'GET',
      path: `/api/functions/${seg(idOrName)}/logs${qs}`,
      auth: true,
      signal: opts.signal,
      ...(opts.follow ? { bodyTimeoutMs: 0 } : {}),
    });
    try {
      yield* parseNdjson<LogEntry>(res.body);
    } catch (err) {
      // An abort is how a follower stops: end quietly.
      if (opts.signal?.aborted) return;
      throw toClientError(err, this.url);
    } finally {
      res.body.destroy();
    }
  }

  /** Call the function itself. Never throws for an HTTP status: the caller reads `status`. */
  async invoke(idOrName: string, opts: InvokeOptions = {}): Promise<InvokeResult> {
    let path = opts.path ?? '/';
    if (!path.startsWith('/')) path = `/${path}`;
    const res = await this.#call({
      method: (opts.method ?? (opts.body === undefined ? 'GET' : 'POST')).toUpperCase() as Method,
      path: `/functions/${seg(idOrName)}${path}`,
      ...(opts.body === undefined ? {} : { body: opts.body }),
      ...(opts.headers ? { headers: opts.headers } : {}),
      ...(opts.timeoutMs === undefined ? {} : { timeoutMs: opts.timeoutMs }),
      throwOnError: false,
    });
    const body = Buffer.from(await res.body.arrayBuffer());
    const inv = res.headers['x-aether-invocation-id'];
    const cold = res.headers['x-aether-cold-start'];
    return {
      status: res.statusCode,
      headers: res.headers,
      body,
      invocationId: Array.isArray(inv) ? inv[0] : inv,
      coldStart: cold === undefined ? undefined : String(cold) === 'true' || String(cold) === '1',
    };
  }

  /** GET /healthz; does not throw for a 503 (reports ok: false). */
  async health(): Promise<HealthResult> {
    const res = await this.#call({ method: 'GET', path: '/healthz', throwOnError: false });
    const text = await res.body.text();
    let body: unknown = text;
    try {
      body = JSON.parse(text);
    } catch {
      // plain text health answer
    }
    return { status: res.statusCode, ok: res.statusCode >= 200 && res.statusCode < 300, body };
  }

  async close(): Promise<void> {
    await this.#agent.close();
  }

  async #json<T>(method: Method, path: string, body?: unknown, headers?: Record<string, string>): Promise<T> {
    const isRaw = body instanceof Uint8Array;
    const res = await this.#call({
      method,
      path,
      auth: true,
      ...(body === undefined ? {} : { body: isRaw ? body : JSON.stringify(body) }),
      headers: { accept: 'application/json', ...(body !== undefined && !isRaw ? { 'content-type': 'application/json' } : {}), ...headers },
    });
    const text = await res.body.text();
    try {
      return JSON.parse(text) as T;
    } catch (err) {
      throw new ClientError(res.statusCode, 'AETHER_ERR_INVALID_JSON', `${method} ${path}: answer is not JSON`, { cause: err });
    }
  }

  async #call(c: Call): Promise<Dispatcher.ResponseData> {
    const headers: Record<string, string> = { ...c.headers };
    if (c.auth && this.#token !== undefined) headers.authorization = `Bearer ${this.#token}`;
    const timeout = c.timeoutMs ?? this.#timeoutMs;
    let res: Dispatcher.ResponseData;
    try {
      res = await this.#agent.request({
        origin: this.#origin,
        path: this.#basePath + c.path,
        method: c.method,
        headers,
        body: c.body ?? null,
        headersTimeout: timeout,
        bodyTimeout: c.bodyTimeoutMs ?? timeout,
        signal: c.signal ?? null,
      });
    } catch (err) {
      throw toClientError(err, this.url);
    }
    if (c.throwOnError !== false && (res.statusCode < 200 || res.statusCode >= 300)) {
      const text = await res.body.text().catch(() => '');
      throw errorFromBody(res.statusCode, text);
    }
    return res;
  }
}

/** Map an error answer to a ClientError: our JSON error shape if present, else the first line of the body. */
export function errorFromBody(status: number, text: string): ClientError {
  try {
    const parsed = JSON.parse(text) as { error?: { code?: unknown; message?: unknown } };
    const e = parsed.error;
    if (e && typeof e.code === 'string') {
      return new ClientError(status, e.code, typeof e.message === 'string' ? e.message : e.code);
    }
  } catch {
    // not JSON: fall through
  }
  const line = text.trim().split('\n')[0]?.trim().slice(0, 200) ?? '';
  return new ClientError(status, `HTTP_${status}`, line || `request failed with HTTP ${status}`);
}

function toClientError(err: unknown, url: string): ClientError {
  if (err instanceof ClientError) return err;
  const e = err as { code?: unknown; name?: unknown; message?: unknown };
  const code = typeof e.code === 'string' ? e.code : undefined;
  const msg = typeof e.message === 'string' ? e.message : String(err);
  if (e.name === 'AbortError' || code === 'UND_ERR_ABORTED') return new ClientError(0, 'ABORTED', 'request aborted', { cause: err });
  if (code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT' || code === 'UND_ERR_CONNECT_TIMEOUT') {
    return new ClientError(0, 'TIMEOUT', `no answer from ${url} in time`, { cause: err });
  }
  return new ClientError(0, code ?? 'CONNECTION_FAILED', `cannot reach ${url}: ${msg}`, { cause: err });
}

async function* parseNdjson<T>(body: AsyncIterable<Buffer | string>): AsyncIterable<T> {
  let buf = '';
  const decoder = new TextDecoder();
  for await (const chunk of body) {
    buf += typeof chunk === 'string' ? chunk : decoder.decode(chunk, { stream: true });
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl).trim();
      buf = buf.slice(nl + 1);
      if (line) yield JSON.parse(line) as T;
    }
  }
  buf += decoder.decode();
  if (buf.trim()) yield JSON.parse(buf) as T;
}

function seg(idOrName: string): string {
  return encodeURIComponent(idOrName);
}

function archiveType(b: Buffer): string {
  if (b[0] === 0x50 && b[1] === 0x4b) return 'application/zip';
  if (b[0] === 0x1f && b[1] === 0x8b) return 'application/gzip';
  return 'application/octet-stream';
}
