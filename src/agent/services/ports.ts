import { connect, createServer, type Server, type Socket } from 'node:net';
import { silentLogger, type Logger } from '../../core/index.ts';
import type { Endpoint } from '../../spec/index.ts';

/**
 * firework's `port_forwards` (host_port -> vm_port, a DNAT rule per port on the node) without
 * iptables: the agent listens on each host port and pipes every connection to the service's
 * current instance. The listener lives as long as the service is assigned to this node, so an
 * instance replaced (crash, update, health restart) keeps its published port; a connection while
 * no instance runs is closed at once. Only the port the instance listens on can be published: a
 * sandbox exposes that one port to the platform.
 */
export interface PublishedPort {
  service: string;
  host_port: number;
  vm_port: number;
}

/** A sandbox forwarder's socket prefixes answers with a status byte; its `.raw` twin is a plain byte pipe. */
export const plainSocketPath = (e: Endpoint & { kind: 'unix' }): string => (e.preamble ? `${e.path}.raw` : e.path);

export function connectEndpoint(e: Endpoint): Socket {
  return e.kind === 'tcp' ? connect({ host: e.host, port: e.port }) : connect({ path: plainSocketPath(e) });
}

interface Listener {
  key: string;
  port: PublishedPort;
  server: Server;
  sockets: Set<Socket>;
}

export class PortPublisher {
  readonly #host: string;
  readonly #endpointOf: (service: string) => Endpoint | undefined;
  readonly #log: Logger;
  readonly #listeners = new Map<string, Listener>();
  /** Ports that failed to bind, said once each (a busy port is retried on every sync). */
  readonly #failed = new Set<string>();

  constructor(o: { host?: string; endpointOf: (service: string) => Endpoint | undefined; logger?: Logger }) {
    this.#host = o.host ?? '0.0.0.0';
    this.#endpointOf = o.endpointOf;
    this.#log = o.logger ?? silentLogger();
  }

  /** Host ports listening now. */
  published(): PublishedPort[] {
    return [...this.#listeners.values()].map((l) => l.port);
  }

  /** Make the listeners match `want`: close what is no longer wanted, open what is new. */
  async sync(want: readonly PublishedPort[]): Promise<void> {
    const keys = new Map(want.map((p) => [`${p.service}:${p.host_port}`, p]));
    for (const [key, l] of this.#listeners) if (!keys.has(key)) await this.#close(l);
    for (const [key, p] of keys) {
      if (this.#listeners.has(key)) continue;
      try {
        await this.#open(key, p);
        this.#failed.delete(key);
      } catch (err) {
        if (!this.#failed.has(key)) this.#log.warn({ service: p.service, host_port: p.host_port, err: String(err) }, 'could not publish a port forward');
        this.#failed.add(key);
      }
    }
  }

  async close(): Promise<void> {
    for (const l of [...this.#listeners.values()]) await this.#close(l);
  }

  async #open(key: string, p: PublishedPort): Promise<void> {
    const sockets = new Set<Socket>();
    const server = createServer((client) => {
      sockets.add(client);
      client.once('close', () => sockets.delete(client));
      client.on('error', () => client.destroy());
      const e = this.#endpointOf(p.service);
      if (!e) {
        client.destroy();
        return;
      }
      const upstream = connectEndpoint(e);
      sockets.add(upstream);
      upstream.once('close', () => {
        sockets.delete(upstream);
        client.destroy();
      });
      upstream.on('error', () => upstream.destroy());
      client.once('close', () => upstream.destroy());
      client.pipe(upstream);
      upstream.pipe(client);
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(p.host_port, this.#host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    server.on('error', (err) => this.#log.warn({ service: p.service, host_port: p.host_port, err: String(err) }, 'port forward listener failed'));
    this.#listeners.set(key, { key, port: p, server, sockets });
    this.#log.info({ service: p.service, host_port: p.host_port, vm_port: p.vm_port }, 'port forward published');
  }

  async #close(l: Listener): Promise<void> {
    this.#listeners.delete(l.key);
    await new Promise<void>((r) => {
      l.server.close(() => r());
      for (const s of l.sockets) s.destroy();
    });
  }
}
