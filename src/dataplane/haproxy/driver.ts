import type { Server as HttpServer } from 'node:http';
import { chmodSync, mkdirSync } from 'node:fs';
import { isIP } from 'node:net';
import { lookup } from 'node:dns/promises';
import { sameSecret, type Clock, type Logger } from '../../core/index.ts';
import { computeRoutes, type RouteAddress, type RouteTable } from '../table.ts';
import type { DataPlane, DataPlaneSinks, RouteSource } from '../types.ts';
import { commandFailed } from './admin.ts';
import { ACTIVATOR_SERVER, HOP_SERVER, hopName, hopTokenUsable, INSTANCE_SERVER_OPTIONS, POOL_OPTIONS, paths, renderConfig, slotName } from './config.ts';
import { listenActivatorBackup } from './backup.ts';
import { parseLogLine, parseShowStat } from './parse.ts';
import { LogSampler } from './sampling.ts';
import { ProgramLoop } from './program-loop.ts';
import { HaproxySupervisor } from './supervisor.ts';


export interface HaproxyOptions {
  /** Private state directory (created 0700). */
  dir: string;
  /** Public listener: HAProxy binds it; the platform binds it too while HAProxy is down. */
  host: string;
  port: number;
  /** The Node gateway's internal listener and server (activator; fallback for the public port). */
  activator: { host: string; port: number; server: HttpServer };
  source: RouteSource;
  sinks: DataPlaneSinks;
  /** Instances of this agent are reached at their own socket. */
  localAgentId?: string | undefined;
  clock: Clock;
  logger: Logger;
  binary?: string;
  /** Function backends declared up front (HAProxy cannot add backends at run time). */
  slots?: number;
  statsIntervalMs?: number;
  /** The largest log sampling N of a busy function (sampling.ts); 1: every request logged. */
  logSamplingMax?: number;
  /**
   * With it, instances on other nodes are routed by HAProxy too, through a hop listener per agent
   * that adds this token (never seen by local functions). Without it they go through the activator.
   */
  clusterToken?: string | undefined;
  /** Hop listeners declared up front (one per remote agent in use). */
  hops?: number;
}

interface ServerState {
  addr: string;
  state: 'ready' | 'drain';
  maxConn: number;
}

interface Slot {
  fnId: string | undefined;
  servers: Map<string, ServerState>;
  /** Servers in maintenance, deleted once their last connection ends. */
  deleting: Set<string>;
}

/** How long an agent's resolved host name is trusted before it is looked up again. */
const HOST_TTL_MS = 30_000;
const agentKey = (a: { host: string; port: number }): string => `${a.host}:${a.port}`;

function formatAddress(a: RouteAddress): string {
  if (a.kind === 'unix') return `unix@${a.path}`;
  return a.host.includes(':') ? `ipv6@${a.host}:${a.port}` : `${a.host}:${a.port}`;
}

/**
 * The `haproxy` data plane: an HAProxy process this platform starts, programs over its runtime API
 * (servers added, drained and deleted, the route map updated; never a reload) and supervises.
 * Warm requests go proxy -> instance socket; a reference without a ready instance goes to the
 * activator (the Node gateway). While HAProxy is down the platform itself listens on the public
 * port and serves through the Node path (supervisor.ts).
 */
export class HaproxyDataPlane implements DataPlane {
  readonly kind = 'haproxy' as const;
  readonly #o: HaproxyOptions;
  readonly #sup: HaproxySupervisor;
  readonly #loop: ProgramLoop;
  readonly #p: ReturnType<typeof paths>;
  readonly #slots: Slot[];
  readonly #slotOf = new Map<string, number>();
  /** What the route map holds now: reference -> "slot|fnId|timeoutMs|log sampling". */
  readonly #map = new Map<string, string>();
  #closing = false;
  #statsTimer: ReturnType<Clock['setTimeout']> | undefined;
  #unwatch: (() => void) | undefined;
  readonly #reported = new Map<string, number>();
  readonly #stot = new Map<string, number>();
  #warnedFull = false;
  /** Hop listener -> the agent (host:port) it is set to, or undefined while free. */
  readonly #hops: (string | undefined)[];
  readonly #hopsEnabled: boolean;
  /** The address each hop listener's server was set to (its agent's name resolved). */
  readonly #hopAddrs: (string | undefined)[] = [];
  readonly #resolved = new Map<string, { ip: string; at: number }>();
  /** Servers that are instances on other nodes (their load is their agent's business). */
  readonly #remote = new Set<string>();
  #backup: { close(): void } | undefined;
  readonly #sampler: LogSampler;

  constructor(o: HaproxyOptions) {
    this.#o = o;
    this.#p = paths(o.dir);
    this.#sampler = new LogSampler(o.clock.now(), o.logSamplingMax);
    this.#slots = Array.from({ length: o.slots ?? 128 }, () => ({ fnId: undefined, servers: new Map(), deleting: new Set() }));
    this.#hopsEnabled = o.clusterToken !== undefined && hopTokenUsable(o.clusterToken);
    if (o.clusterToken !== undefined && !this.#hopsEnabled) o.logger.warn('the cluster token has characters HAProxy config cannot carry; instances on other nodes go through the Node path');
    this.#hops = Array.from({ length: this.#hopsEnabled ? (o.hops ?? 16) : 0 }, () => undefined);
    this.#sup = new HaproxySupervisor({
      dir: o.dir,
      host: o.host,
      port: o.port,
      fallback: o.activator.server,
      maps: [this.#p.routes],
      render: ({ port, threads, maxConn }) =>
        renderConfig({ dir: o.dir, host: o.host, port, activator: { host: o.activator.host, port: o.activator.port }, slots: this.#slots.length, threads, maxConn, ...(this.#hopsEnabled ? { hops: { count: this.#hops.length, clusterToken: o.clusterToken as string } } : {}) }),
      onReady: async () => {
        this.#resetState();
        await this.#loop.run();
      },
      onLog: (line) => this.#onLog(line),
      clock: o.clock,
      logger: o.logger,
      ...(o.binary ? { binary: o.binary } : {}),
    });
    this.#loop = new ProgramLoop({
      pass: () => this.#program(computeRoutes({ functions: o.source.functions(), instancesOf: (id) => o.source.instancesOf(id), localAgentId: o.localAgentId, localOnly: !this.#hopsEnabled })),
      running: () => this.#running,
      closing: () => this.#closing,
      logger: o.logger,
    });
  }

  get url(): string {
    return this.#sup.url;
  }

  get #running(): boolean {
    return this.#sup.running;
  }

  status(): ReturnType<DataPlane['status']> {
    return { kind: 'haproxy', proxy: this.#running ? 'running' : 'restarting', restarts: this.#sup.restarts, routes: this.#map.size };
  }

  async sync(): Promise<void> {
    // Watch events arrive in microtasks / I/O callbacks: let the ones already due land first.
    await new Promise((r) => setImmediate(r));
    if (!this.#running) return;
    await this.#loop.run();
  }

  async start(): Promise<void> {
    mkdirSync(this.#o.dir, { recursive: true, mode: 0o700 });
    chmodSync(this.#o.dir, 0o700);
    // Requests no instance could take (a function backend's backup server, or a hop listener's).
    const clusterToken = this.#o.clusterToken;
    this.#backup = await listenActivatorBackup({ path: this.#p.backup, server: this.#o.activator.server, tokenOk: (t) => clusterToken !== undefined && sameSecret(t, clusterToken) });
    this.#unwatch = this.#o.source.onChange(() => this.#loop.schedule());
    await this.#sup.start();
    this.#pollStats();
  }

  // ---------------------------------------------------------------- programming

  #resetState(): void {
    for (const s of this.#slots) {
      s.fnId = undefined;
      s.servers.clear();
      s.deleting.clear();
    }
    this.#slotOf.clear();
    this.#map.clear();
    this.#hops.fill(undefined);
    this.#hopAddrs.length = 0;
    this.#remote.clear();
  }

  #cmd(command: string): Promise<void> {
    return this.#sup.command(command);
  }

  async #program(t: RouteTable): Promise<void> {
    const map = this.#p.routes;
    const want = new Map<string, string>();
    // Slots for routed functions; a function without a free slot stays on the Node path.
    for (const fr of t.functions.values()) {
      let i = this.#slotOf.get(fr.id);
      if (i === undefined) {
        i = this.#slots.findIndex((s) => s.fnId === undefined && s.servers.size === 0 && s.deleting.size === 0);
        if (i < 0) {
          if (!this.#warnedFull) this.#o.logger.warn({ slots: this.#slots.length }, 'all haproxy function backends in use; further functions go through the Node path');
          this.#warnedFull = true;
          continue;
        }
        (this.#slots[i] as Slot).fnId = fr.id;
        this.#slotOf.set(fr.id, i);
      }
    }
    for (const [ref, fnId] of t.refs) {
      const i = this.#slotOf.get(fnId);
      const fr = t.functions.get(fnId);
      if (i !== undefined && fr) want.set(ref, `${slotName(i)}|${fnId}|${fr.timeoutMs}|${this.#sampler.of(fnId)}`);
    }
    // 1. Routes that go away or change first: scale to zero / delete / rename reach the activator at once.
    for (const [ref, v] of this.#map) {
      const w = want.get(ref);
      if (w === undefined) {
        await this.#cmd(`del map ${map} ${ref}`);
        this.#map.delete(ref);
      } else if (w !== v) {
        await this.#cmd(`set map ${map} ${ref} ${w}`);
        this.#map.set(ref, w);
      }
    }
    // 2. Hop listeners for the agents of remote instances (before the servers that track them).
    const hopOf = await this.#programHops(t);
    // 3. Servers.
    for (let i = 0; i < this.#slots.length; i++) {
      const slot = this.#slots[i] as Slot;
      if (slot.fnId === undefined && slot.servers.size === 0) continue;
      const be = slotName(i);
      const fr = slot.fnId !== undefined ? t.functions.get(slot.fnId) : undefined;
      // A remote instance whose agent got no hop listener (all in use, or not an IP address) stays with the activator.
      const wanted = new Map((fr?.instances ?? []).filter((x) => x.address.kind !== 'agent' || hopOf.has(agentKey(x.address))).map((x) => [x.id, x]));
      const maxConn = fr?.maxConn ?? 1;
      // Capacity first, then drains: a rolling update never leaves the backend without a ready server.
      const order = [...wanted.values()].sort((x, y) => (x.state === y.state ? 0 : x.state === 'ready' ? -1 : 1));
      for (const inst of order) {
        const id = inst.id;
        const hop = inst.address.kind === 'agent' ? hopOf.get(agentKey(inst.address)) : undefined;
        const addr = hop !== undefined ? `unix@${this.#p.hop(hop)}` : formatAddress(inst.address);
        const cur = slot.servers.get(id);
        if (!cur) {
          if (slot.deleting.has(id)) {
            slot.deleting.delete(id); // came back before its deletion: keep it
            await this.#cmd(`set server ${be}/${id} state ${inst.state}`);
          } else {
            // New servers start in maintenance: add and enable in one round trip.
            // Checks of dynamic servers start disabled: `enable health` arms the mark-down on a failed connect.
            if (hop !== undefined) {
              // Up and down with its agent's hop (a dead agent is noticed at the first failed connect).
              await this.#cmd(`add server ${be}/${id} ${addr} maxconn ${maxConn} track ${hopName(hop)}/${HOP_SERVER} ${POOL_OPTIONS}; set server ${be}/${id} state ${inst.state}`);
              this.#remote.add(id);
            } else {
              const pool = inst.address.kind === 'tcp' ? ` ${POOL_OPTIONS}` : '';
              await this.#cmd(`add server ${be}/${id} ${addr} maxconn ${maxConn} ${INSTANCE_SERVER_OPTIONS}${pool}; set server ${be}/${id} state ${inst.state}; enable health ${be}/${id}`);
            }
          }
          slot.servers.set(id, { addr, state: inst.state, maxConn });
          continue;
        }
        if (cur.state !== inst.state) {
          await this.#cmd(`set server ${be}/${id} state ${inst.state}`);
          cur.state = inst.state;
        }
        if (cur.maxConn !== maxConn) {
          await this.#cmd(`set maxconn server ${be}/${id} ${maxConn}`);
          cur.maxConn = maxConn;
        }
      }
      for (const id of [...slot.servers.keys()]) {
        if (wanted.has(id)) continue;
        await this.#cmd(`set server ${be}/${id} state maint`);
        slot.servers.delete(id);
        slot.deleting.add(id);
      }
      if (!fr && slot.fnId !== undefined) {
        this.#slotOf.delete(slot.fnId);
        slot.fnId = undefined;
      }
      await this.#reap(i);
    }
    // 4. Hop listeners no server uses any more.
    await this.#releaseHops();
    // 5. New routes last: their servers exist by now.
    for (const [ref, w] of want) {
      if (this.#map.has(ref)) continue;
      await this.#cmd(`add map ${map} ${ref} ${w}`);
      this.#map.set(ref, w);
    }
  }

  /** Assign and address a hop listener per agent that remote instances need; agent key -> hop index. */
  async #programHops(t: RouteTable): Promise<Map<string, number>> {
    const out = new Map<string, number>();
    if (!this.#hopsEnabled) return out;
    for (const fr of t.functions.values()) {
      for (const inst of fr.instances) {
        const a = inst.address;
        if (a.kind !== 'agent') continue;
        const key = agentKey(a);
        if (out.has(key)) continue;
        // `set server addr` takes addresses: an agent advertised by name is resolved here.
        const ip = await this.#addressOf(a.host);
        if (ip === undefined) continue; // unresolvable: its instances go through the activator
        let i = this.#hops.indexOf(key);
        if (i < 0) {
          i = this.#hops.findIndex((h, n) => h === undefined && !this.#hopInUse(n));
          if (i < 0) continue; // all in use: this agent's instances go through the activator
          await this.#cmd(`set server ${hopName(i)}/${HOP_SERVER} addr ${ip} port ${a.port}; set server ${hopName(i)}/${HOP_SERVER} state ready`);
          this.#hops[i] = key;
          this.#hopAddrs[i] = ip;
        } else if (this.#hopAddrs[i] !== ip) {
          // The name now resolves elsewhere (an agent's node replaced): follow it.
          await this.#cmd(`set server ${hopName(i)}/${HOP_SERVER} addr ${ip} port ${a.port}`);
          this.#hopAddrs[i] = ip;
        }
        out.set(key, i);
      }
    }
    return out;
  }

  /** An IP literal as is; a name through the resolver, cached for HOST_TTL_MS (the last answer kept while lookups fail). */
  async #addressOf(host: string): Promise<string | undefined> {
    if (isIP(host) !== 0) return host;
    const now = this.#o.clock.now();
    const c = this.#resolved.get(host);
    if (c && now - c.at < HOST_TTL_MS) return c.ip;
    try {
      // IPv4 first when the name has both (agents usually listen on one address of each family at most).
      const all = await lookup(host, { all: true });
      const address = (all.find((x) => x.family === 4) ?? all[0])?.address;
      if (address === undefined) throw new Error('no address');
      this.#resolved.set(host, { ip: address, at: now });
      return address;
    } catch (err) {
      if (!c) this.#o.logger.warn({ host, err: String(err) }, 'agent address does not resolve; its instances go through the activator');
      return c?.ip;
    }
  }

  #hopInUse(i: number): boolean {
    const sock = `unix@${this.#p.hop(i)}`;
    return this.#slots.some((s) => [...s.servers.values()].some((v) => v.addr === sock) || [...s.deleting].some((id) => this.#remote.has(id)));
  }

  async #releaseHops(): Promise<void> {
    for (let i = 0; i < this.#hops.length; i++) {
      if (this.#hops[i] === undefined || this.#hopInUse(i)) continue;
      await this.#cmd(`set server ${hopName(i)}/${HOP_SERVER} state maint`);
      this.#hops[i] = undefined;
    }
  }

  /** Delete servers in maintenance whose last connection ended (HAProxy refuses otherwise). */
  async #reap(i: number): Promise<void> {
    const slot = this.#slots[i] as Slot;
    for (const id of [...slot.deleting]) {
      const a = await this.#sup.ask(`del server ${slotName(i)}/${id}`);
      if (!commandFailed('del server', a) || /No such server/i.test(a)) {
        slot.deleting.delete(id);
        this.#remote.delete(id);
      }
    }
  }

  // ---------------------------------------------------------------- off the request path: logs and stats

  #onLog(line: string): void {
    const r = parseLogLine(line);
    if (!r) return;
    this.#o.sinks.record(r.record);
    this.#o.sinks.observed?.(r.record, r.weight);
    this.#sampler.note(r.record.function_id, r.weight);
  }

  #pollStats(): void {
    const every = this.#o.statsIntervalMs ?? 200;
    const tick = async (): Promise<void> => {
      if (this.#closing) return;
      if (this.#sampler.evaluate(this.#o.clock.now())) this.#loop.schedule();
      if (this.#running && !this.#loop.current) {
        try {
          // Only the backends in use: the whole pool's CSV (a few hundred rows) five times a second
          // cost both processes CPU for nothing.
          const used = this.#slots.flatMap((s, i) => (s.fnId !== undefined || s.servers.size > 0 || s.deleting.size > 0 ? [`show stat ${slotName(i)} -1 -1`] : []));
          const rows = used.length === 0 ? [] : parseShowStat(await this.#sup.ask(used.join('; '), 2000));
          const fnLoad = new Map<string, number>();
          const seen = new Set<string>();
          for (const r of rows) {
            if (!/^f\d+$/.test(r.backend)) continue;
            const i = Number(r.backend.slice(1));
            const slot = this.#slots[i];
            if (!slot) continue;
            if (r.server === 'BACKEND') {
              if (slot.fnId !== undefined) fnLoad.set(slot.fnId, r.scur + r.qcur);
              continue;
            }
            if (r.server === ACTIVATOR_SERVER) continue;
            seen.add(r.server);
            const prev = this.#stot.get(r.server) ?? r.stot;
            this.#stot.set(r.server, r.stot);
            if (!this.#remote.has(r.server)) this.#o.sinks.instanceLoad?.(r.server, r.scur, r.stot !== prev || r.scur > 0, slot.servers.get(r.server)?.state === 'ready');
            if (slot.deleting.has(r.server) && r.scur === 0) await this.#reap(i);
          }
          for (const id of this.#stot.keys()) if (!seen.has(id)) this.#stot.delete(id);
          // Report changes only; a function that went idle is reported once as 0.
          for (const [fnId, n] of fnLoad) {
            if ((this.#reported.get(fnId) ?? 0) === n) continue;
            this.#o.sinks.functionLoad(fnId, n);
            if (n === 0) this.#reported.delete(fnId);
            else this.#reported.set(fnId, n);
          }
          for (const fnId of [...this.#reported.keys()]) {
            if (fnLoad.has(fnId)) continue;
            this.#o.sinks.functionLoad(fnId, 0);
            this.#reported.delete(fnId);
          }
        } catch (err) {
          this.#o.logger.debug({ err: String(err) }, 'haproxy stats poll failed');
        }
      }
      if (!this.#closing) this.#statsTimer = this.#o.clock.setTimeout(() => void tick(), every);
    };
    this.#statsTimer = this.#o.clock.setTimeout(() => void tick(), every);
  }

  async close(): Promise<void> {
    this.#closing = true;
    this.#unwatch?.();
    this.#backup?.close();
    if (this.#statsTimer) this.#o.clock.clearTimeout(this.#statsTimer);
    await this.#sup.close(() => this.#loop.current ?? Promise.resolve());
    // Nothing routes to the instances any more: their drains need not wait for us.
    for (const slot of this.#slots) for (const id of [...slot.servers.keys(), ...slot.deleting]) if (!this.#remote.has(id)) this.#o.sinks.instanceLoad?.(id, 0, false, false);
  }
}

export async function startHaproxyDataPlane(o: HaproxyOptions): Promise<HaproxyDataPlane> {
  const dp = new HaproxyDataPlane(o);
  try {
    await dp.start();
  } catch (err) {
    await dp.close().catch(() => undefined);
    throw err;
  }
  return dp;
}
