import { spawn, spawnSync } from 'node:child_process';
import { AetherError } from '../../core/index.ts';
import { findBin } from '../host.ts';

/**
 * The `veth` network of process sandboxes: each sandbox's network namespace (made by its launcher
 * chain) gets a veth pair, host side `ae<n>` with the /30's .1, sandbox side `eth0` with .2, and no
 * default route. The platform's proxies reach the program at <.2>:<port> through the kernel only.
 *
 * Isolation, the same claims as the forwarder's namespace with only loopback:
 * - the host's `inet aether` table (below): input from `ae*` accepts only replies (established,
 *   related): a sandbox opens no connection to any host address or port, the platform's included;
 *   forwarding from and to `ae*` is dropped: no sandbox-to-sandbox traffic, no way out;
 * - the sandbox knows only its /30 (no default route): other sandboxes' addresses are unreachable.
 * Inside, an `ip aether` table DNATs everything arriving on eth0 to 127.0.0.1, same port
 * (`route_localnet` on eth0 lets the kernel route it), so a program that listens on loopback only,
 * as with the forwarder, is still reachable; one on 0.0.0.0 or `::` too. IPv6 is off on eth0.
 *
 * Allocation is derived from the kernel, not persisted: the link name `ae<n>` is the lock (creating
 * an existing one fails, the next n is tried) and the /30 follows from n, so a restarted agent never
 * reuses a live /30 and an adopted instance keeps its address (the record has it). Each link's
 * alias names its owner (`aether:<agent>:<instance or spare>`), for cleanupLeftovers.
 */

const TOOL_PATH = '/usr/sbin:/usr/bin:/sbin:/bin';
export const DEFAULT_NET_POOL = '10.213.0.0/16';
const TABLE = 'aether';
const PREFIX = 'ae';
const LINKS_SET = 'links';

export interface VethTools {
  ip: string;
  nft: string;
  nsenter: string;
}

/** Why the veth network cannot run here (undefined when it can). */
export function vethBlocker(): string | undefined {
  if (process.getuid?.() !== 0) return 'not running as root';
  for (const t of ['ip', 'nft', 'nsenter']) if (!findBin(t, TOOL_PATH.split(':'))) return `${t} not found${t === 'nft' ? ' (Debian package nftables)' : ''}`;
  return undefined;
}

export function vethTools(): VethTools {
  const f = (n: string): string => findBin(n, TOOL_PATH.split(':')) as string;
  return { ip: f('ip'), nft: f('nft'), nsenter: f('nsenter') };
}

/** A /16 (a.b.0.0/16) as its base address. */
export function parsePool(cidr: string): number {
  const m = /^(\d{1,3})\.(\d{1,3})\.0\.0\/16$/.exec(cidr);
  if (!m || Number(m[1]) > 255 || Number(m[2]) > 255) throw new AetherError('AETHER_ERR_VALIDATION', `sandbox network pool ${JSON.stringify(cidr)}: must be a /16 such as ${DEFAULT_NET_POOL}`);
  return ((Number(m[1]) << 24) >>> 0) + (Number(m[2]) << 16);
}

/** /30s in a /16. */
export const SLOTS = 16384;

function dotted(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

/** The addresses of slot n (0 <= n < SLOTS) of the pool. */
export function slotAddresses(base: number, n: number): { ifname: string; host: string; sandbox: string } {
  return { ifname: `${PREFIX}${n}`, host: dotted(base + n * 4 + 1), sandbox: dotted(base + n * 4 + 2) };
}

/** What an instance (and its adoption record) knows of its network. */
export interface VethNet {
  ifname: string;
  /** Host side (.1) */
  host: string;
  /** Sandbox side (.2): the endpoint's host. */
  address: string;
}

/**
 * The host's table: replies only from sandboxes, nothing forwarded to or from them; the one
 * exception is a service's link relays (links.ts): new TCP from `ae<n>` to an element of the
 * `links` set (that link, its own .1, a relay's port), and only to a socket bound to that address
 * itself (`socket wildcard 0`), so a stale element can never open a host-wide (0.0.0.0) listener.
 * Chains are flushed and refilled, not the table deleted: the set's elements (other instances'
 * relays) survive a reinstall. `guard` false drops the socket match (kernels without it, < 5.4).
 */
export function hostRuleset(guard = true): string {
  return [
    // add + flush + define in one transaction: idempotent and atomic (other runtimes share it)
    `add table inet ${TABLE}`,
    `add set inet ${TABLE} ${LINKS_SET} { type ifname . ipv4_addr . inet_service; }`,
    `add chain inet ${TABLE} input { type filter hook input priority filter - 10; policy accept; }`,
    `add chain inet ${TABLE} forward { type filter hook forward priority filter - 10; policy accept; }`,
    `flush chain inet ${TABLE} input`,
    `flush chain inet ${TABLE} forward`,
    `table inet ${TABLE} {`,
    '  chain input {',
    `    iifname "${PREFIX}*" ct state established,related accept`,
    `    iifname "${PREFIX}*" meta l4proto tcp ct state new iifname . ip daddr . tcp dport @${LINKS_SET}${guard ? ' socket wildcard 0' : ''} accept`,
    // a reset, not a silent drop: a refused connect fails at once
    `    iifname "${PREFIX}*" meta l4proto tcp reject with tcp reset`,
    `    iifname "${PREFIX}*" drop`,
    '  }',
    '  chain forward {',
    `    iifname "${PREFIX}*" drop`,
    `    oifname "${PREFIX}*" drop`,
    '  }',
    '}',
    '',
  ].join('\n');
}

/** One link relay a sandbox may connect to: its host link, that link's .1, the relay's port. */
export interface LinkElement {
  ifname: string;
  host: string;
  port: number;
}

const IPV4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;
/** A dotted IPv4 address (what goes into nft and ip scripts is checked with this first). */
export const isIpv4 = (s: string): boolean => IPV4.test(s);

/** Set elements in nft's syntax; refuses anything that is not an ae<n>, an IPv4 address and a port. */
export function linkElementsText(els: readonly LinkElement[]): string {
  return els
    .map((e) => {
      if (!/^ae\d+$/.test(e.ifname) || !isIpv4(e.host) || !Number.isInteger(e.port) || e.port < 1 || e.port > 65535) throw new AetherError('AETHER_ERR_INTERNAL', `bad link element ${JSON.stringify(e)}`);
      return `"${e.ifname}" . ${e.host} . ${e.port}`;
    })
    .join(', ');
}

/** The elements of the `links` set in `nft -j list set` output (empty when there is none). */
export function parseLinkElements(json: string): LinkElement[] {
  try {
    const doc = JSON.parse(json) as { nftables?: { set?: { elem?: unknown[] } }[] };
    const elems = doc.nftables?.find((x) => x.set)?.set?.elem ?? [];
    return elems.flatMap((e) => {
      const c = (e as { concat?: unknown[] }).concat ?? (e as { elem?: { val?: { concat?: unknown[] } } }).elem?.val?.concat;
      const [ifname, host, port] = c ?? [];
      return typeof ifname === 'string' && typeof host === 'string' && typeof port === 'number' ? [{ ifname, host, port }] : [];
    });
  } catch {
    return [];
  }
}

/** The sandbox's own table: whatever arrives on eth0 goes to loopback, same port. */
const SANDBOX_RULESET = [
  `table ip ${TABLE} {`,
  '  chain pre { type nat hook prerouting priority dstnat; policy accept; iifname "eth0" dnat to 127.0.0.1; }',
  // (an empty postrouting nat chain: older kernels undo the DNAT on replies only with one)
  '  chain post { type nat hook postrouting priority srcnat; policy accept; }',
  '}',
  '',
].join('\n');

function run(cmd: string, args: string[], input?: string): Promise<{ ok: boolean; err: string }> {
  return new Promise((res) => {
    const c = spawn(cmd, args, { env: { PATH: TOOL_PATH }, cwd: '/', stdio: ['pipe', 'ignore', 'pipe'] });
    let err = '';
    c.stderr.on('data', (b: Buffer) => (err += b.toString()));
    c.stdin.on('error', () => {});
    c.stdin.end(input ?? '');
    c.on('error', (e) => res({ ok: false, err: e.message }));
    c.on('close', (code) => res({ ok: code === 0, err: err.trim() }));
  });
}

function runSync(cmd: string, args: string[], input?: string): { ok: boolean; err: string } {
  const r = spawnSync(cmd, args, { env: { PATH: TOOL_PATH }, cwd: '/', input: input ?? '', encoding: 'utf8', timeout: 10_000 });
  return { ok: r.status === 0, err: (r.stderr ?? '').trim() };
}

/**
 * `ae<n>` links of this network namespace with their aliases. Through netlink (`ip -j`), not
 * /sys/class/net: sysfs shows the namespace it was mounted in, not necessarily ours.
 */
export function hostLinks(ip = findBin('ip', TOOL_PATH.split(':')) ?? 'ip'): { ifname: string; alias: string }[] {
  const r = spawnSync(ip, ['-j', 'link', 'show'], { env: { PATH: TOOL_PATH }, encoding: 'utf8', timeout: 10_000 });
  try {
    const all = JSON.parse(r.stdout) as { ifname?: string; ifalias?: string }[];
    return all.flatMap((l) => (l.ifname && /^ae\d+$/.test(l.ifname) ? [{ ifname: l.ifname, alias: l.ifalias ?? '' }] : []));
  } catch {
    return [];
  }
}

export class VethPool {
  readonly tools: VethTools;
  readonly #base: number;
  #cursor: number;
  /** Whether this kernel has nft's `socket wildcard` match (see hostRuleset). */
  #guard = true;

  constructor(tools: VethTools, pool: string) {
    this.tools = tools;
    this.#base = parsePool(pool);
    // start somewhere per process: agents sharing a host rarely race for the same name
    this.#cursor = process.pid % SLOTS;
  }

  /** Create (or re-create) the host's table. */
  installHostTable(): void {
    let r = runSync(this.tools.nft, ['-f', '-'], hostRuleset(this.#guard));
    if (!r.ok && this.#guard) {
      this.#guard = false;
      r = runSync(this.tools.nft, ['-f', '-'], hostRuleset(false));
    }
    if (!r.ok) throw new AetherError('AETHER_ERR_INTERNAL', `process runtime: cannot install the sandbox firewall (nft): ${r.err}`);
  }

  /**
   * Remove the host's table once no sandbox of any agent is left on this host. Another runtime may
   * be making a pair meanwhile (it installs the table after creating its link): a link that shows up
   * after the first check belongs to a spare that runs nothing yet, and the second check puts the
   * table back for it.
   */
  removeHostTableIfUnused(): boolean {
    if (hostLinks(this.tools.ip).length > 0) return false;
    runSync(this.tools.nft, ['delete', 'table', 'inet', TABLE]);
    if (hostLinks(this.tools.ip).length === 0) return true;
    this.installHostTable();
    return false;
  }

  /**
   * Give the network namespace of `pid` its veth pair (eth0 inside), addresses, loopback and DNAT.
   * `owner` (`<agent>:<name>`) goes into the link's alias.
   */
  async attach(pid: number, owner: string): Promise<VethNet> {
    let net: VethNet | undefined;
    const taken = new Set(hostLinks(this.tools.ip).map((l) => l.ifname));
    for (let tries = 0; tries < SLOTS && !net; tries++) {
      const n = this.#cursor;
      this.#cursor = (this.#cursor + 1) % SLOTS;
      const a = slotAddresses(this.#base, n);
      if (taken.has(a.ifname)) continue;
      const r = await run(this.tools.ip, ['-b', '-'], [
        `link add ${a.ifname} type veth peer name eth0 netns ${pid}`,
        `link set ${a.ifname} alias aether:${owner}`,
        `addr add ${a.host}/30 dev ${a.ifname}`,
        `link set ${a.ifname} up`,
        '',
      ].join('\n'));
      if (r.ok) net = { ifname: a.ifname, host: a.host, address: a.sandbox };
      else if (!/exists/i.test(r.err)) {
        this.detach(a.ifname);
        throw new AetherError('AETHER_ERR_INTERNAL', `cannot create the sandbox's veth ${a.ifname}: ${r.err}`);
      }
    }
    if (!net) throw new AetherError('AETHER_ERR_NO_CAPACITY', 'the sandbox network pool is exhausted');
    // (again, after the link exists: see removeHostTableIfUnused; atomic, so never a moment without it)
    const t = await run(this.tools.nft, ['-f', '-'], hostRuleset(this.#guard));
    if (!t.ok) {
      this.detach(net.ifname);
      throw new AetherError('AETHER_ERR_INTERNAL', `cannot install the sandbox firewall (nft): ${t.err}`);
    }
    const script = [
      'set -e',
      `ip addr add ${net.address}/30 dev eth0`,
      'echo 1 > /proc/sys/net/ipv4/conf/eth0/route_localnet',
      '[ ! -e /proc/sys/net/ipv6/conf/eth0/disable_ipv6 ] || echo 1 > /proc/sys/net/ipv6/conf/eth0/disable_ipv6',
      'ip link set lo up',
      'ip link set eth0 up',
      'nft -f -',
    ].join('\n');
    const r = await run(this.tools.nsenter, [`--net=/proc/${pid}/ns/net`, '--', '/bin/sh', '-c', script], SANDBOX_RULESET);
    if (!r.ok) {
      this.detach(net.ifname);
      throw new AetherError('AETHER_ERR_INTERNAL', `cannot set up the sandbox's network (${net.ifname}): ${r.err}`);
    }
    return net;
  }

  /** The link relays' set elements of this host (every agent's). */
  linkElements(): LinkElement[] {
    const r = spawnSync(this.tools.nft, ['-j', 'list', 'set', 'inet', TABLE, LINKS_SET], { env: { PATH: TOOL_PATH }, encoding: 'utf8', timeout: 10_000 });
    return r.status === 0 ? parseLinkElements(r.stdout) : [];
  }

  async addLinkElements(els: readonly LinkElement[]): Promise<void> {
    if (els.length === 0) return;
    const r = await run(this.tools.nft, ['-f', '-'], `add element inet ${TABLE} ${LINKS_SET} { ${linkElementsText(els)} }\n`);
    if (!r.ok) throw new AetherError('AETHER_ERR_INTERNAL', `cannot open the sandbox firewall for its links (nft): ${r.err}`);
  }

  /** Delete the elements of the links `drop` picks (quiet when they are gone already). */
  deleteLinkElements(drop: (e: LinkElement) => boolean): LinkElement[] {
    const els = this.linkElements().filter(drop);
    // one command per element: a batch fails whole when one of them went meanwhile
    for (const e of els) runSync(this.tools.nft, ['delete', 'element', 'inet', TABLE, LINKS_SET, `{ ${linkElementsText([e])} }`]);
    return els;
  }

  /** Delete the elements of links that are gone, and of `agent`'s links that `keep` rejects (an earlier run's). */
  sweepLinkElements(agent: string, keep: (ifname: string) => boolean): LinkElement[] {
    const links = new Map(hostLinks(this.tools.ip).map((l) => [l.ifname, l.alias]));
    const prefix = `aether:${agent}:`;
    return this.deleteLinkElements((e) => {
      const alias = links.get(e.ifname);
      return alias === undefined || (alias.startsWith(prefix) && !keep(e.ifname));
    });
  }

  /** Run a shell script (tools from the host) in the network namespace of `pid`, `input` on its stdin. */
  async inNetns(pid: number, script: string, input: string): Promise<{ ok: boolean; err: string }> {
    return run(this.tools.nsenter, [`--net=/proc/${pid}/ns/net`, '--', '/bin/sh', '-c', script], input);
  }

  /** Delete a sandbox's pair (both ends). Quiet when it is already gone (its namespace went). */
  detach(ifname: string): void {
    if (!/^ae\d+$/.test(ifname)) return;
    runSync(this.tools.ip, ['link', 'del', ifname]);
  }

  /** Delete the links of `agent` that `keep` rejects (leftovers of an earlier run); returns their names. */
  sweep(agent: string, keep: (owner: string, ifname: string) => boolean): string[] {
    const out: string[] = [];
    const prefix = `aether:${agent}:`;
    for (const { ifname, alias } of hostLinks(this.tools.ip)) {
      if (!alias.startsWith(prefix) || keep(alias.slice(prefix.length), ifname)) continue;
      this.detach(ifname);
      out.push(ifname);
    }
    return out;
  }
}
