import net from 'node:net';
import { AetherError, type Logger } from '../../core/index.ts';
import { isIpv4, type LinkElement, type VethNet, type VethPool } from './veth.ts';

/**
 * A service's links from inside its process sandbox (veth network). The sandbox has no route out
 * and the host's table lets nothing new in from it, so for each link target (the deployer's
 * resolved `host:port`, e.g. 127.0.0.1:18080 in `aether up` or a peer node's address) the agent
 * runs a relay listening on the sandbox's host-side address (its /30's .1, a kernel-chosen port)
 * that pipes each connection to the target, which the agent can reach. Inside the sandbox an nft
 * table DNATs the target address and port to that relay (and, for a loopback target, SNATs the
 * loopback source to eth0's address; route_localnet is on), and a /32 route via .1 makes a
 * non-loopback target routable at all: the program connects to the env value it was given,
 * unchanged. On the host, the `links` set of the `inet aether` table (veth.ts) admits exactly
 * (this link, its .1, each relay port), to a socket bound to that address only.
 *
 * Nothing here is persisted: the targets are in the instance's spec (and so in its adoption
 * record), and an adopting agent opens new relays and rewrites the sandbox's table in one atomic
 * nft transaction. The program cannot change any of it (no CAP_NET_ADMIN).
 */

export interface LinkTarget {
  host: string;
  port: number;
}

export interface Relay {
  target: LinkTarget;
  /** The relay's port on the sandbox's host-side address. */
  port: number;
}

const TABLE = 'aether_links';

const isLoopback = (host: string): boolean => host.startsWith('127.');

/** Targets as the runtime accepts them: IPv4 literals (IPv6 is off in the sandbox), ports 1..65535, no duplicates. */
export function checkTargets(targets: readonly LinkTarget[]): LinkTarget[] {
  const seen = new Set<string>();
  const out: LinkTarget[] = [];
  for (const t of targets) {
    if (!isIpv4(t.host) || t.host === '0.0.0.0' || !Number.isInteger(t.port) || t.port < 1 || t.port > 65535) throw new AetherError('AETHER_ERR_VALIDATION', `link target ${JSON.stringify(t)}: must be an IPv4 address and a port`);
    const k = `${t.host}:${t.port}`;
    if (seen.has(k)) continue;
    seen.add(k);
    out.push({ host: t.host, port: t.port });
  }
  return out;
}

/** The sandbox side: its nat table (replaced whole, atomically) and the routes to non-loopback targets. */
export function sandboxLinkConfig(sb: VethNet, relays: readonly Relay[]): { nft: string; routes: string[] } {
  for (const a of [sb.host, sb.address, ...relays.map((r) => r.target.host)]) if (!isIpv4(a)) throw new AetherError('AETHER_ERR_INTERNAL', `not an IPv4 address: ${JSON.stringify(a)}`);
  const nft = [
    `add table ip ${TABLE}`,
    `delete table ip ${TABLE}`,
    `table ip ${TABLE} {`,
    '  chain out {',
    '    type nat hook output priority -100; policy accept;',
    ...relays.map((r) => `    ip daddr ${r.target.host} tcp dport ${r.target.port} dnat to ${sb.host}:${r.port}`),
    '  }',
    '  chain post {',
    '    type nat hook postrouting priority 100; policy accept;',
    // a loopback target DNAT'd out of eth0 keeps its 127.0.0.1 source: make it eth0's address
    `    oifname "eth0" ip saddr 127.0.0.0/8 snat to ${sb.address}`,
    '  }',
    '}',
    '',
  ].join('\n');
  const hosts = [...new Set(relays.map((r) => r.target.host).filter((h) => !isLoopback(h)))];
  return { nft, routes: hosts.map((h) => `ip route replace ${h}/32 via ${sb.host} dev eth0`) };
}

/** An instance's open relays; close() ends them and their set elements. */
export class LinkRelays {
  readonly relays: Relay[];
  readonly #servers: net.Server[];
  readonly #conns = new Set<net.Socket>();
  readonly #pool: VethPool;
  readonly #net: VethNet;
  #closed = false;

  private constructor(pool: VethPool, sb: VethNet, servers: net.Server[], relays: Relay[]) {
    this.#pool = pool;
    this.#net = sb;
    this.#servers = servers;
    this.relays = relays;
  }

  /**
   * Open relays for `targets` on the sandbox's host side (its namespace is that of `pid`), admit
   * them in the host's set (dropping whatever an earlier run left for this link) and point the
   * sandbox's table at them.
   */
  static async open(pool: VethPool, sb: VethNet, pid: number, targets: readonly LinkTarget[], logger: Logger): Promise<LinkRelays> {
    const want = checkTargets(targets);
    const servers: net.Server[] = [];
    const relays: Relay[] = [];
    const self = new LinkRelays(pool, sb, servers, relays);
    try {
      for (const target of want) {
        const srv = net.createServer({ allowHalfOpen: true }, (c) => self.#pipe(c, target, logger));
        servers.push(srv);
        await new Promise<void>((res, rej) => {
          srv.once('error', rej);
          srv.listen({ host: sb.host, port: 0 }, () => res());
        });
        srv.on('error', (err) => logger.warn({ err, link: sb.ifname }, 'link relay error'));
        relays.push({ target, port: (srv.address() as net.AddressInfo).port });
      }
      pool.deleteLinkElements((e) => e.ifname === sb.ifname);
      await pool.addLinkElements(self.#elements());
      const cfg = sandboxLinkConfig(sb, relays);
      const r = await pool.inNetns(pid, ['set -e', ...cfg.routes, 'nft -f -'].join('\n'), cfg.nft);
      if (!r.ok) throw new AetherError('AETHER_ERR_INTERNAL', `cannot set up the sandbox's links (${sb.ifname}): ${r.err}`);
      return self;
    } catch (err) {
      self.close();
      throw err;
    }
  }

  #elements(): LinkElement[] {
    return this.relays.map((r) => ({ ifname: this.#net.ifname, host: this.#net.host, port: r.port }));
  }

  #pipe(c: net.Socket, target: LinkTarget, logger: Logger): void {
    if (this.#closed) return void c.destroy();
    const up = net.connect({ host: target.host, port: target.port, allowHalfOpen: true });
    this.#conns.add(c);
    this.#conns.add(up);
    const end = (): void => {
      c.destroy();
      up.destroy();
      this.#conns.delete(c);
      this.#conns.delete(up);
    };
    c.on('error', end);
    up.on('error', (err) => {
      logger.debug({ err: String(err), target }, 'link relay: target unreachable');
      end();
    });
    // each side ends its half when the other does (half-close passes through); both done: gone
    c.on('close', end);
    up.on('close', end);
    c.pipe(up);
    up.pipe(c);
  }

  /** End the relays and their connections, and take their elements out of the host's set. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const s of this.#servers) s.close();
    for (const c of this.#conns) c.destroy();
    this.#conns.clear();
    const mine = new Set(this.relays.map((r) => r.port));
    this.#pool.deleteLinkElements((e) => e.ifname === this.#net.ifname && e.host === this.#net.host && mine.has(e.port));
  }
}
