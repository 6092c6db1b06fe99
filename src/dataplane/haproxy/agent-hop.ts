import { chmodSync, mkdirSync, rmSync } from 'node:fs';
import type { Server as HttpServer } from 'node:http';
import type { Clock, Logger } from '../../core/index.ts';
import type { LocalInstanceSource } from '../types.ts';
import { agentHopPaths, instanceSlotName, renderAgentHopConfig, SLOT_SERVER } from './agent-config.ts';
import { planSlots, slotAddress, type SlotView } from './agent-slots.ts';
import { parseShowStat } from './parse.ts';
import { ProgramLoop } from './program-loop.ts';
import { HaproxySupervisor } from './supervisor.ts';

export interface AgentHopOptions {
  /** Private state directory (created 0700). */
  dir: string;
  /** The agent's public listener: HAProxy binds it; the agent binds it too while HAProxy is down. */
  host: string;
  port: number;
  /** The agent's Node server on a loopback port (everything the proxy does not carry; fallback). */
  node: { host: string; port: number; server: HttpServer };
  /** The agent Node's forwarding-only server (agent.handleTrustedForward): listened on here, in the private directory. */
  forwarder: HttpServer;
  clusterToken: string;
  clock: Clock;
  logger: Logger;
  binary?: string;
  /** Per-instance backends declared up front (HAProxy cannot add backends at run time). */
  slots?: number;
  statsIntervalMs?: number;
}

interface Slot extends SlotView {
  releasedAt: number;
  /** Its server's request count at the last stats poll (kept across instances: the counter is the server's). */
  stot: number;
}

/** A released slot is reused only this long after its release, so no request that read the map before can meet the next instance. */
const RELEASE_GRACE_MS = 1000;

/**
 * The agent's hop through its own HAProxy: the proxy binds the agent's port and carries a forward
 * from a gateway (`/internal/forward/<instance>/...` with the cluster token) straight to the
 * instance's address; everything else goes to the agent's Node server behind it. Instances are
 * programmed over the runtime API as they become routable and go (never a reload); the proxy's
 * per-instance load goes back to the agent (idle scale-down, drain waits). Supervision and the port
 * hand-over are the gateway data plane's (supervisor.ts).
 */
export class AgentHop {
  readonly kind = 'haproxy' as const;
  readonly #o: AgentHopOptions;
  readonly #p: ReturnType<typeof agentHopPaths>;
  readonly #sup: HaproxySupervisor;
  readonly #loop: ProgramLoop;
  readonly #slots: Slot[];
  /** Instance -> the slot routing it (not the ones releasing). */
  readonly #slotOf = new Map<string, number>();
  #source: LocalInstanceSource | undefined;
  #unwatch: (() => void) | undefined;
  #closing = false;
  #statsTimer: ReturnType<Clock['setTimeout']> | undefined;
  /** Instances that found no free slot at the last pass (they go through the Node path meanwhile). */
  #waiting = 0;
  #warnedFull = false;

  constructor(o: AgentHopOptions) {
    this.#o = o;
    this.#p = agentHopPaths(o.dir);
    this.#slots = Array.from({ length: o.slots ?? 256 }, () => ({ id: undefined, addr: undefined, releasing: false, releasedAt: 0, stot: 0 }));
    this.#sup = new HaproxySupervisor({
      dir: o.dir,
      host: o.host,
      port: o.port,
      fallback: o.node.server,
      maps: [this.#p.instances],
      render: ({ port, threads, maxConn }) => renderAgentHopConfig({ dir: o.dir, host: o.host, port, node: { host: o.node.host, port: o.node.port }, slots: this.#slots.length, clusterToken: o.clusterToken, threads, maxConn }),
      onReady: async () => {
        this.#resetState();
        await this.#loop.run();
      },
      clock: o.clock,
      logger: o.logger,
      ...(o.binary ? { binary: o.binary } : {}),
    });
    this.#loop = new ProgramLoop({ pass: () => this.#program(), running: () => this.#sup.running, closing: () => this.#closing, logger: o.logger });
  }

  /** The agent's public URL (its port resolved). */
  get url(): string {
    return this.#sup.url;
  }

  get port(): number {
    return this.#sup.port;
  }

  status(): { kind: 'haproxy'; proxy: 'running' | 'restarting'; restarts: number; routes: number } {
    return { kind: 'haproxy', proxy: this.#sup.running ? 'running' : 'restarting', restarts: this.#sup.restarts, routes: this.#slotOf.size };
  }

  async start(): Promise<void> {
    mkdirSync(this.#o.dir, { recursive: true, mode: 0o700 });
    chmodSync(this.#o.dir, 0o700);
    // The slots' backup: only root (HAProxy) can connect in the 0700 directory, so it trusts its caller.
    rmSync(this.#p.forward, { force: true });
    const fwd = this.#o.forwarder;
    await new Promise<void>((resolve, reject) => {
      fwd.once('error', reject);
      fwd.listen(this.#p.forward, () => resolve());
    });
    chmodSync(this.#p.forward, 0o600);
    await this.#sup.start();
    this.#pollStats();
  }

  /** The agent's instances to route (once it exists: it needs the URL this hop's port gives it). */
  attach(source: LocalInstanceSource): void {
    this.#unwatch?.();
    this.#source = source;
    this.#unwatch = source.onChange(() => this.#loop.schedule());
    this.#loop.schedule();
  }

  /** Resolves once every change known so far is in effect in the proxy. */
  async sync(): Promise<void> {
    if (this.#sup.running) await this.#loop.run();
  }

  // ---------------------------------------------------------------- programming

  #resetState(): void {
    for (const s of this.#slots) Object.assign(s, { id: undefined, addr: undefined, releasing: false, releasedAt: 0, stot: 0 });
    this.#slotOf.clear();
  }

  async #program(): Promise<void> {
    const wanted = new Map<string, { ip: string; port: number }>();
    for (const r of this.#source?.routable() ?? []) {
      const a = slotAddress(r.endpoint);
      if (a) wanted.set(r.id, a);
    }
    const map = this.#p.instances;
    let waiting = 0;
    for (const c of planSlots(this.#slots, wanted)) {
      if (c.op === 'full') {
        waiting++;
        if (!this.#warnedFull) this.#o.logger.warn({ slots: this.#slots.length }, "all of the agent's haproxy instance backends in use; further instances are forwarded by the Node path");
        this.#warnedFull = true;
        continue;
      }
      const slot = this.#slots[c.slot] as Slot;
      const srv = `${instanceSlotName(c.slot)}/${SLOT_SERVER}`;
      if (c.op === 'release') {
        // Unmapped first (new requests go to the Node path), then in-flight requests finish; idle connections close.
        await this.#sup.command(`del map ${map} ${c.id}; set server ${srv} state maint`);
        slot.releasing = true;
        slot.releasedAt = this.#o.clock.now();
        if (this.#slotOf.get(c.id) === c.slot) this.#slotOf.delete(c.id);
      } else {
        // Leaving maintenance the server is up at once (no check to wait for); mapped once it is.
        await this.#sup.command(`set server ${srv} addr ${c.ip} port ${c.port}; set server ${srv} state ready; add map ${map} ${c.id} ${instanceSlotName(c.slot)}`);
        Object.assign(slot, { id: c.id, addr: `${c.ip}:${c.port}`, releasing: false });
        this.#slotOf.set(c.id, c.slot);
      }
    }
    this.#waiting = waiting;
  }

  // ---------------------------------------------------------------- load, off the request path

  #pollStats(): void {
    const every = this.#o.statsIntervalMs ?? 200;
    const tick = async (): Promise<void> => {
      if (this.#closing) return;
      if (this.#sup.running && !this.#loop.current) {
        try {
          await this.#poll();
        } catch (err) {
          this.#o.logger.debug({ err: String(err) }, 'haproxy stats poll failed');
        }
      }
      if (!this.#closing) this.#statsTimer = this.#o.clock.setTimeout(() => void tick(), every);
    };
    this.#statsTimer = this.#o.clock.setTimeout(() => void tick(), every);
  }

  /**
   * Per instance: requests in flight at the proxy, and whether it got any since the last poll. That
   * is also what "routed" means here: the proxy sends an instance whatever the gateways send, so a
   * drain waits until a poll finds it idle and unused since the one before. Only the instance's own
   * server counts: requests its backup carried went through the Node path, which counts its own.
   */
  async #poll(): Promise<void> {
    const used = this.#slots.flatMap((s, i) => (s.id !== undefined ? [`show stat ${instanceSlotName(i)} 4 -1`] : []));
    if (used.length === 0) return;
    const rows = parseShowStat(await this.#sup.ask(used.join('; '), 2000));
    const now = this.#o.clock.now();
    let freed = false;
    for (const r of rows) {
      if (r.server !== SLOT_SERVER || !/^i\d+$/.test(r.backend)) continue;
      const i = Number(r.backend.slice(1));
      const slot = this.#slots[i];
      const id = slot?.id;
      if (!slot || id === undefined) continue;
      const active = r.stot !== slot.stot || r.scur > 0;
      slot.stot = r.stot;
      if (!slot.releasing) {
        this.#source?.instanceLoad(id, r.scur, active, active);
      } else if (r.scur === 0 && now - slot.releasedAt >= RELEASE_GRACE_MS) {
        Object.assign(slot, { id: undefined, addr: undefined, releasing: false });
        if (!this.#slotOf.has(id)) this.#source?.instanceLoad(id, 0, false, false);
        freed = true;
      }
    }
    if (freed && this.#waiting > 0) this.#loop.schedule();
  }

  async close(): Promise<void> {
    this.#closing = true;
    this.#unwatch?.();
    if (this.#statsTimer) this.#o.clock.clearTimeout(this.#statsTimer);
    await this.#sup.close(() => this.#loop.current ?? Promise.resolve());
    // Nothing routes to the instances through the proxy any more: their drains need not wait for it.
    for (const s of this.#slots) if (s.id !== undefined) this.#source?.instanceLoad(s.id, 0, false, false);
    const fwd = this.#o.forwarder;
    if (fwd.listening) {
      fwd.closeAllConnections();
      await new Promise<void>((r) => fwd.close(() => r()));
    }
  }
}

export async function startAgentHop(o: AgentHopOptions): Promise<AgentHop> {
  const hop = new AgentHop(o);
  try {
    await hop.start();
  } catch (err) {
    await hop.close().catch(() => undefined);
    throw err;
  }
  return hop;
}
