import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { connect, type AddressInfo, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { AetherError, errorBody, silentLogger, type Logger } from '../../core/index.ts';
import { forward, ProxyError, type Upstream } from '../../proxy/index.ts';
import type { Endpoint } from '../../spec/index.ts';
import { connectEndpoint } from './ports.ts';

/**
 * The edge router every agent runs: HTTP by Host name (`metadata.host` of a service) to the
 * service's instances on this node, else to a peer agent's router that has one (the cross-node
 * proxy), so a load balancer may send any request to any node. The table is a pure function of
 * the watched state, so a native data plane can consume the same table later.
 */
export interface LocalRoute {
  service: string;
  host: string | null;
  endpoint: Endpoint;
}

export interface PeerRoute {
  node: string;
  /** The peer's router, e.g. http://10.0.0.3:8088 */
  router_url: string;
  /** Hosts of services running on that peer. */
  hosts: string[];
}

export interface HostRoute {
  local: Endpoint[];
  peers: string[];
}

export type RouteTable = ReadonlyMap<string, HostRoute>;

/** Host names compare without port and case; a trailing dot is the same name. */
export function normalizeHost(h: string | undefined): string {
  if (!h) return '';
  const noPort = h.startsWith('[') ? h.slice(0, h.indexOf(']') + 1) : (h.split(':')[0] ?? '');
  return noPort.toLowerCase().replace(/\.$/, '');
}

export function buildRouteTable(local: readonly LocalRoute[], peers: readonly PeerRoute[], self: string): RouteTable {
  const table = new Map<string, HostRoute>();
  const entry = (host: string): HostRoute => {
    const key = normalizeHost(host);
    let e = table.get(key);
    if (!e) table.set(key, (e = { local: [], peers: [] }));
    return e;
  };
  for (const r of [...local].sort((a, b) => (a.service < b.service ? -1 : 1))) if (r.host) entry(r.host).local.push(r.endpoint);
  for (const p of [...peers].sort((a, b) => (a.node < b.node ? -1 : 1))) {
    if (p.node === self) continue;
    for (const h of p.hosts) entry(h).peers.push(p.router_url.replace(/\/+$/, ''));
  }
  return table;
}

/** X-Forwarded-* for the hop: the client's address appended, the first router's host and scheme kept. */
function forwardedHeaders(req: IncomingMessage): Record<string, string> {
  const first = (v: string | string[] | undefined): string | undefined => (Array.isArray(v) ? v.join(', ') : v);
  return {
    'x-forwarded-for': [first(req.headers['x-forwarded-for']), req.socket.remoteAddress ?? ''].filter(Boolean).join(', '),
    'x-forwarded-host': first(req.headers['x-forwarded-host']) ?? req.headers.host ?? '',
    'x-forwarded-proto': first(req.headers['x-forwarded-proto']) ?? 'http',
  };
}

/** Set on a request one router sends to another: the peer serves it locally or not at all (no loops). */
export const ROUTED_HEADER = 'x-aether-routed';

export interface EdgeRouterOptions {
  /** Current table; called per request (cheap: the owner rebuilds it on changes). */
  table: () => RouteTable;
  /** Requests whose Host routes nowhere go here first (the node's own status API); true = answered. */
  fallback?: (req: IncomingMessage, res: ServerResponse) => Promise<boolean>;
  logger?: Logger;
}

export class EdgeRouter {
  readonly #o: EdgeRouterOptions;
  readonly #log: Logger;
  #server: Server | undefined;
  #rr = 0;
  readonly #sockets = new Set<Socket | Duplex>();

  constructor(o: EdgeRouterOptions) {
    this.#o = o;
    this.#log = o.logger ?? silentLogger();
  }

  async listen(port: number, host: string): Promise<string> {
    const server = createServer((req, res) => void this.handle(req, res));
    server.keepAliveTimeout = 65_000;
    server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => this.#upgrade(req, socket, head));
    server.on('connection', (s: Socket) => {
      this.#sockets.add(s);
      s.once('close', () => this.#sockets.delete(s));
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => resolve());
    });
    this.#server = server;
    const a = server.address() as AddressInfo;
    return `http://${host === '0.0.0.0' || host === '::' ? '127.0.0.1' : host}:${a.port}`;
  }

  async close(): Promise<void> {
    const s = this.#server;
    if (!s) return;
    await new Promise<void>((r) => {
      s.close(() => r());
      s.closeIdleConnections();
      for (const sock of this.#sockets) sock.destroy();
    });
  }

  #pick(req: IncomingMessage): { upstream: Upstream; peer: boolean } | undefined {
    const route = this.#o.table().get(normalizeHost(req.headers.host));
    if (!route) return undefined;
    const n = this.#rr++;
    if (route.local.length > 0) return { upstream: route.local[n % route.local.length] as Endpoint, peer: false };
    if (req.headers[ROUTED_HEADER] !== undefined || route.peers.length === 0) return undefined;
    return { upstream: { kind: 'http', origin: route.peers[n % route.peers.length] as string }, peer: true };
  }

  async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    try {
      const target = this.#pick(req);
      if (!target && this.#o.fallback && !this.#o.table().has(normalizeHost(req.headers.host)) && (await this.#o.fallback(req, res))) return;
      if (!target) throw new AetherError('AETHER_ERR_ROUTE_NOT_FOUND', `no service routes host ${JSON.stringify(normalizeHost(req.headers.host))}`);
      const headers = forwardedHeaders(req);
      if (target.peer) headers[ROUTED_HEADER] = '1';
      await forward(req, res, { endpoint: target.upstream, path: req.url ?? '/', headers });
    } catch (err) {
      if (err instanceof ProxyError && err.phase === 'aborted') return;
      const e = err instanceof AetherError ? err : new AetherError('AETHER_ERR_UPSTREAM', err instanceof ProxyError && err.phase === 'connect' ? 'the service is not reachable' : 'the service failed while answering');
      if (!(err instanceof AetherError)) this.#log.warn({ err: String(err), host: req.headers.host }, 'edge route failed');
      if (res.headersSent) {
        res.destroy();
        return;
      }
      const { status, body } = errorBody(e);
      res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(body) }).end(body);
    }
  }

  /** WebSocket and other upgrades: the request head is replayed to the instance, then bytes flow both ways. */
  #upgrade(req: IncomingMessage, client: Duplex, head: Buffer): void {
    const target = this.#pick(req);
    client.on('error', () => client.destroy());
    if (!target) {
      const { body } = errorBody(new AetherError('AETHER_ERR_ROUTE_NOT_FOUND', 'no service routes this host'));
      client.end(`HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`);
      return;
    }
    const u = target.upstream;
    let upstream: Socket;
    // A sandbox forwarder's preamble socket would prefix the answer with its status byte: the raw twin.
    if (u.kind === 'unix' || u.kind === 'tcp') upstream = connectEndpoint(u);
    else {
      const url = new URL(u.origin);
      upstream = connect({ host: url.hostname, port: Number(url.port || 80) });
    }
    upstream.once('connect', () => {
      const lines = [`${req.method ?? 'GET'} ${req.url ?? '/'} HTTP/1.1`];
      const fwd = forwardedHeaders(req);
      for (let i = 0; i < req.rawHeaders.length; i += 2) {
        const name = String(req.rawHeaders[i]);
        if (name.toLowerCase() in fwd) continue;
        lines.push(`${name}: ${req.rawHeaders[i + 1]}`);
      }
      for (const [k, v] of Object.entries(fwd)) lines.push(`${k}: ${v}`);
      if (target.peer) lines.push(`${ROUTED_HEADER}: 1`);
      upstream.write(lines.join('\r\n') + '\r\n\r\n');
      if (head.length) upstream.write(head);
      upstream.pipe(client);
      client.pipe(upstream);
    });
    const bail = (): void => {
      upstream.destroy();
      client.destroy();
    };
    upstream.once('error', () => {
      if (upstream.bytesRead === 0 && client.writable) client.end('HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\nconnection: close\r\n\r\n');
      else bail();
    });
    upstream.once('close', bail);
    client.once('close', bail);
  }
}
