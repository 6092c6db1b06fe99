import { isIP } from 'node:net';
import type { Endpoint } from '../../spec/index.ts';

/** One slot backend of the agent's HAProxy as the agent last programmed it. */
export interface SlotView {
  /** The instance it holds (also while releasing, for its last load report). */
  id: string | undefined;
  /** `ip:port` its server was set to. */
  addr: string | undefined;
  /** Unmapped and in maintenance: free again once its connections ended and the grace has passed. */
  releasing: boolean;
}

export type SlotChange =
  /** `del map`, server to maintenance (in-flight requests finish, idle connections close). */
  | { op: 'release'; slot: number; id: string }
  /** Server to the instance's address, ready, then `add map`. */
  | { op: 'assign'; slot: number; id: string; ip: string; port: number }
  /** No free slot: the instance stays on the Node path. */
  | { op: 'full'; id: string };

/**
 * Where the proxy can send a forward itself: a TCP endpoint at an IP address (`set server addr`
 * takes no names, and no unix socket: forwarder sockets stay on the Node path, see detect.ts).
 */
export function slotAddress(e: Endpoint): { ip: string; port: number } | undefined {
  return e.kind === 'tcp' && isIP(e.host) !== 0 ? { ip: e.host, port: e.port } : undefined;
}

/**
 * What to change so that the proxy routes exactly `wanted` (instance id -> address): instances that
 * left (or moved) are released first, then new ones take the lowest free slots. Pure: the driver
 * turns the changes into runtime API commands.
 */
export function planSlots(slots: readonly SlotView[], wanted: ReadonlyMap<string, { ip: string; port: number }>): SlotChange[] {
  const out: SlotChange[] = [];
  const held = new Set<string>();
  const free: number[] = [];
  slots.forEach((s, i) => {
    if (s.releasing) return;
    if (s.id === undefined) {
      free.push(i);
      return;
    }
    const w = wanted.get(s.id);
    if (w && `${w.ip}:${w.port}` === s.addr) held.add(s.id);
    else out.push({ op: 'release', slot: i, id: s.id });
  });
  for (const [id, a] of wanted) {
    if (held.has(id)) continue;
    const slot = free.shift();
    out.push(slot === undefined ? { op: 'full', id } : { op: 'assign', slot, id, ip: a.ip, port: a.port });
  }
  return out;
}
