import { join } from 'node:path';
import { errorBody, AetherError, FORWARD_PREFIX, type ErrorCode } from '../../core/index.ts';

/**
 * The HAProxy configuration, rendered once per process start. Everything that changes at run
 * time (servers, routes) goes through the runtime API; the config only declares a fixed pool of
 * function backends ("slots": HAProxy cannot create backends at run time) and the activator.
 */
export interface HaproxyConfigInput {
  /** Private directory (0700): admin socket, maps, error pages. */
  dir: string;
  /** Public listener. */
  host: string;
  port: number;
  /** The Node gateway's internal loopback listener (cold path, API, everything not routed). */
  activator: { host: string; port: number };
  slots: number;
  /**
   * Listeners that carry requests to other nodes' agents (one per agent, addresses set at run time),
   * adding the cluster token on that hop only. Absent: remote instances stay with the activator.
   */
  hops?: { count: number; clusterToken: string };
  threads?: number;
  /** Connections the process accepts (bounded by its descriptor limit). */
  maxConn?: number;
}

export const LOG_TAG = 'AETHER';

export const paths = (dir: string) => ({
  config: join(dir, 'haproxy.cfg'),
  admin: join(dir, 'admin.sock'),
  routes: join(dir, 'routes.map'),
  errors: join(dir, 'errors'),
  hop: (i: number) => join(dir, `hop${i}.sock`),
  /** The activator's listener for the function backends' backup servers (and the hop listeners'). */
  backup: join(dir, 'backup.sock'),
});

export const hopName = (i: number): string => `h${i}`;
/** The server of a hop listener (static, so instance servers can `track` it). */
export const HOP_SERVER = 'agent';
/** Set by each function backend to the chosen server (instance id), read by the hop listener. */
export const HOP_INSTANCE_HEADER = 'x-aether-hop-instance';

/** A token HAProxy's config can carry inside double quotes without escapes. */
export function hopTokenUsable(token: string): boolean {
  return /^[\x21\x23-\x5b\x5d-\x7e]+$/.test(token) && !token.includes('%');
}

export const slotName = (i: number): string => `f${i}`;

/**
 * Each function backend's backup server: the activator, for requests no instance could take. It is
 * reached on a listener of its own (`paths().backup`), so only requests HAProxy handed over this
 * way are routed by their `Via` element (a client's copy through the public port is not).
 */
export const ACTIVATOR_SERVER = 'activator';
/**
 * Its id in each function backend (instance servers added at run time get others): the response
 * rules tell its answers apart by `srv_id`, an integer compare, where `srv_name` cost twice as much
 * (0.85k instructions per request for the three rules, callgrind).
 */
const ACTIVATOR_SERVER_ID = 1;
/**
 * The `Via` element each function backend adds (RFC 9110 7.6.3: a gateway sends one): `1.1
 * aether-haproxy (<function id>)`. The comment is for the activator backup: the backend strips
 * /functions/<ref> before it picks a server, so a request handed to the activator needs the function
 * named somewhere; a field of a header the request carries anyway costs HAProxy a fifth of a header
 * of its own (callgrind: 1.5k instructions per request less) and the program one header less to parse.
 */
export const VIA_PSEUDONYM = 'aether-haproxy';
const VIA_ELEMENT = new RegExp(`(^|,\\s*)1\\.1 ${VIA_PSEUDONYM} \\(([\\w-]+)\\)$`);

/** The function id in the last `Via` element, when that element is a function backend's (else undefined). */
export function viaFunction(via: string | string[] | undefined): { fnId: string; before: string } | undefined {
  const v = Array.isArray(via) ? via.join(', ') : via;
  if (v === undefined) return undefined;
  const m = VIA_ELEMENT.exec(v);
  if (!m) return undefined;
  return { fnId: m[2] as string, before: v.slice(0, m.index) };
}

/**
 * The public URI of a request a backup server handed to the activator, and the `Via` to leave on it
 * (what the client sent, or none); undefined when the last `Via` element is not a function backend's.
 * From a function backend the path arrives stripped; from a hop listener (its agent is gone) behind
 * `/internal/forward/<instance>`, with the cluster token the listener added (`tokenOk` checks it).
 */
export function activatorRequest(url: string, via: string | string[] | undefined, tokenOk: () => boolean): { url: string; via: string | undefined } | undefined {
  const v = viaFunction(via);
  if (v === undefined) return undefined;
  let rest = url;
  if (rest.startsWith(FORWARD_PREFIX) && tokenOk()) {
    const end = rest.indexOf('/', FORWARD_PREFIX.length);
    rest = end < 0 ? '/' : rest.slice(end);
  }
  return { url: `/functions/${v.fnId}${rest.startsWith('/') ? rest : `/${rest}`}`, via: v.before === '' ? undefined : v.before };
}
/**
 * Options of every instance server (`add server`). A failed connection marks the server down at once
 * (the forwarder removes its socket as soon as the program is gone), so the retry (`option
 * redispatch`) goes to another instance or, with none left, to the activator backup, which retries
 * elsewhere or cold-starts. Checks are plain connects: rare while up, every second while down, so a
 * server marked down by a transient failure comes back.
 */
export const INSTANCE_SERVER_OPTIONS = 'check observe layer4 error-limit 1 on-error mark-down inter 60s fastinter 1s downinter 1s rise 1 fall 1';
/**
 * Keep-alive connections to a server, reused across requests: a server added over the runtime API
 * keeps none unless given both (HAProxy 2.6), so each request was a new connection. The 1 s purge
 * closes a connection idle for 2-3 s, before a program's own keep-alive timeout (Node: 5 s) could
 * close it under a request on its way. Only for addresses where a dying program's connections close
 * at once (TCP to the program): the forwarder's socket passes a close on only after its 10 ms
 * liveness check, and a request sent over a pooled connection in that window is lost without a
 * retry (docs/dataplane.md).
 */
export const POOL_OPTIONS = 'pool-max-conn -1 pool-purge-delay 1s';

/** HAProxy's own errors, in the platform's JSON shape. */
export const ERROR_PAGES: Record<number, { code: ErrorCode; message: string }> = {
  400: { code: 'AETHER_ERR_VALIDATION', message: 'malformed HTTP request' },
  408: { code: 'AETHER_ERR_REQUEST_TIMEOUT', message: 'the client did not send its request in time' },
  500: { code: 'AETHER_ERR_INTERNAL', message: 'internal error in the data plane' },
  502: { code: 'AETHER_ERR_UPSTREAM', message: 'the instance failed while answering' },
  503: { code: 'AETHER_ERR_UNAVAILABLE', message: 'no instance could take the request in time; retry later' },
  504: { code: 'AETHER_ERR_TIMEOUT', message: 'the function did not answer within its timeout_ms' },
};

export function errorPage(status: number): string {
  const p = ERROR_PAGES[status];
  if (!p) throw new Error(`no error page for ${status}`);
  const { body } = errorBody(new AetherError(p.code, p.message));
  const reason = { 400: 'Bad Request', 408: 'Request Timeout', 500: 'Internal Server Error', 502: 'Bad Gateway', 503: 'Service Unavailable', 504: 'Gateway Timeout' }[status];
  return `HTTP/1.1 ${status} ${reason}\r\ncontent-type: application/json\r\ncache-control: no-store\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`;
}

/** Per request: the route's log sampling N (1 = log every request). */
const SAMPLE_VAR = 'txn.w';
/** Answers of a function backend while sampled (HAProxy has no per-backend variables: one per slot). */
const sampleCounter = (slot: number): string => `proc.sampled_${slotName(slot)}`;

/** The format of newInvocationId(): see src/core/ids.ts (same offset, same widths). */
const UNIQUE_ID_FORMAT = 'inv-%[date(0,ms),add(35184372088832),bytes(2),hex]%[rand,bytes(4),hex]%[rand,bytes(4),hex]';

export function bindAddress(host: string, port: number): string {
  if (host === '::') return `:::${port} v4v6`;
  return host.includes(':') ? `ipv6@${host}:${port}` : `${host}:${port}`;
}

/**
 * One log line per proxied request, read by the platform off the request path:
 * tag, invocation id, function id, backend, server (instance), status, active ms, termination
 * state, start (s), start ms part, retries, the function's log sampling (1: every request logged;
 * N: a successful request's line stands for N).
 */
export const LOG_FORMAT = `${LOG_TAG} %ID %[var(txn.route),field(2,|)] %b %s %ST %Ta %tsc %Ts %ms %rc %[var(${SAMPLE_VAR})]`;

/**
 * The `global` and `defaults` sections both HAProxies (the gateway's, an agent's hop) share; `log`
 * absent: no log lines (the agent's hop: the gateways' data planes record what passes there).
 */
export function commonSections(c: { dir: string; threads?: number; maxConn?: number; log?: string; timeouts: { client: string; server: string } }): string[] {
  const p = paths(c.dir);
  return [
    '# Written by Aether at every start; runtime state comes over the admin socket.',
    'global',
    `  stats socket ${p.admin} mode 600 level admin`,
    '  stats timeout 10s',
    ...(c.log ? ['  log stdout format raw daemon'] : []),
    ...(c.threads ? [`  nbthread ${c.threads}`] : []),
    `  maxconn ${c.maxConn ?? 20_000}`,
    '  hard-stop-after 30s',
    '',
    'defaults',
    '  mode http',
    ...(c.log ? ['  log global', `  log-format "${c.log}"`] : []),
    '  timeout connect 2s',
    `  timeout client ${c.timeouts.client}`,
    '  timeout http-request 30s',
    '  timeout http-keep-alive 65s',
    '  timeout queue 30s',
    `  timeout server ${c.timeouts.server}`,
    '  timeout tunnel 1h',
    '  retries 3',
    '  option redispatch 1',
    // Retry elsewhere only when nothing reached the instance: a crash after the request was
    // delivered must answer 502, never replay the request (empty-response would replay it).
    '  retry-on conn-failure',
    ...Object.keys(ERROR_PAGES).map((s) => `  errorfile ${s} ${join(p.errors, `${s}.http`)}`),
  ];
}

export function renderConfig(c: HaproxyConfigInput): string {
  const p = paths(c.dir);
  const lines = [
    ...commonSections({ ...c, log: LOG_FORMAT, timeouts: { client: '65s', server: '30s' } }),
    '',
    'frontend aether',
    `  bind ${bindAddress(c.host, c.port)}`,
    `  unique-id-format ${UNIQUE_ID_FORMAT}`,
    // One rule and one variable (`<backend>|<fn id>|<timeout_ms>`); its fields are cut where used
    // (backend here, timeout in the backend, fn id in the log line): each rule costs ~1-2k
    // instructions per request (callgrind), a fifth of what nginx spends on a whole request.
    `  http-request set-var(txn.route) path,field(3,/),url_dec,map(${p.routes}) if { path_beg /functions/ }`,
    '  use_backend %[var(txn.route),field(1,|)] if { var(txn.route) -m found }',
    '  default_backend activator',
    '',
    '# The Node gateway: cold starts, waiting, the API. It writes its own records.',
    'backend activator',
    '  no log',
    '  option forwardfor',
    '  timeout server 16m',
    `  server node ${c.activator.host}:${c.activator.port}`,
  ];
  const hops = c.hops && hopTokenUsable(c.hops.clusterToken) ? c.hops : undefined;
  for (let i = 0; i < (hops?.count ?? 0); i++) {
    lines.push(
      '',
      // Only HAProxy reaches this socket (0600 in a 0700 directory): local functions never see the token.
      `listen ${hopName(i)}`,
      `  bind unix@${p.hop(i)} mode 600`,
      '  no log',
      '  timeout server 16m',
      `  http-request set-path /internal/forward/%[req.hdr(${HOP_INSTANCE_HEADER})]%[path]`,
      `  http-request del-header ${HOP_INSTANCE_HEADER}`,
      `  http-request set-header x-aether-cluster-token "${hops?.clusterToken ?? ''}"`,
      // Marked down at the first failed connect (a dead agent): the instance servers tracking it
      // go down with it, so later requests go to other instances or the activator.
      `  server ${HOP_SERVER} 127.0.0.1:1 disabled check inter 2s fastinter 500ms downinter 500ms rise 1 fall 1 observe layer4 error-limit 1 on-error mark-down`,
      // The request that met the dead agent: its function backend's connection to this listener
      // succeeded, so only this listener can retry it. Nothing reached the agent (retry-on
      // conn-failure), so the activator may take it: it finds the function in the Via comment and
      // the path after /internal/forward/<instance>, drops the token, and retries on another
      // instance or cold-starts, as the Node path does.
      `  server ${ACTIVATOR_SERVER} unix@${p.backup} backup`,
    );
  }
  for (let i = 0; i < c.slots; i++) {
    lines.push(
      '',
      `backend ${slotName(i)}`,
      '  balance leastconn',
      // Read by the hop listeners (remote instances); replaced if a client sent it.
      ...(hops ? [`  http-send-name-header ${HOP_INSTANCE_HEADER}`] : []),
      '  http-request set-timeout server var(txn.route),field(3,|)',
      // Log sampling (sampling.ts): the route's 4th field N; past 1, only every Nth answer below
      // 500 is logged (counted per backend: exact, unlike rand), and its line stands for N
      // requests. Failures are always logged.
      `  http-request set-var(${SAMPLE_VAR}) var(txn.route),field(4,|)`,
      '  http-request replace-path ^/functions/[^/]*/?(.*)$ /\\1',
      '  option forwardfor',
      '  http-request set-header x-forwarded-host %[req.hdr(host)]',
      '  http-request set-header x-forwarded-proto http',
      // RFC 9110 7.6.3 (tells the instance, and tests, the native path carried it); its comment names
      // the function for the activator backup (viaFunction).
      `  http-request add-header via "1.1 ${VIA_PSEUDONYM} (%[var(txn.route),field(2,|)])"`,
      // Hop-by-hop, as the Node path strips it.
      '  http-response del-header keep-alive',
      `  http-response set-var(${sampleCounter(i)}) var(${sampleCounter(i)},0),add(1) if { var(${SAMPLE_VAR}) -m int gt 1 }`,
      `  http-response set-log-level silent if { var(${SAMPLE_VAR}) -m int gt 1 } { status lt 500 } { var(${sampleCounter(i)}),mod(${SAMPLE_VAR}) -m int gt 0 }`,
      // x-aether-* are the platform's: a function's own are dropped, as on the Node path (the
      // activator's are its signals). Then ours are added, not set: nothing is left to replace.
      `  http-response del-header x-aether- -m beg unless { srv_id ${ACTIVATOR_SERVER_ID} }`,
      // The activator answers with its own invocation id and cold-start flag (and writes its own record).
      `  http-after-response add-header x-aether-invocation-id %[unique-id] unless { srv_id ${ACTIVATOR_SERVER_ID} }`,
      `  http-after-response add-header x-aether-cold-start false unless { srv_id ${ACTIVATOR_SERVER_ID} }`,
      `  server ${ACTIVATOR_SERVER} unix@${p.backup} backup id ${ACTIVATOR_SERVER_ID}`,
    );
  }
  return lines.join('\n') + '\n';
}
