import { randomBytes } from 'node:crypto';
import { mkdir, rename, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { normalizeHost, type PeerRoute } from './router.ts';

/**
 * firework's Traefik integration (B11): the node's routes as a Traefik file-provider dynamic
 * config, so a Traefik on the node or elsewhere (the load balancer's) can route by Host as the
 * edge router does. Every server in it is reachable from other hosts: an edge router or a
 * published port at a node address, never an instance's own address (a process sandbox's veth
 * address exists only on its node). One file, replaced atomically (temp file + rename):
 * Traefik's watcher never reads a half-written file, which firework's direct writes allowed.
 */
export interface TraefikRoute {
  host: string;
  /** Backends, e.g. http://10.0.0.3:8088 (a node's edge router) or http://10.0.0.3:18080 (a published port). */
  servers: string[];
}

export interface TraefikInputs {
  /** Services with a Host running on this node. */
  local: readonly { service: string; host: string }[];
  /** This node's edge router as other hosts reach it (its advertised address), if it runs one. */
  routerUrl: string | null;
  /** This node's address as other hosts reach it (the agent's --advertise). */
  nodeAddress: string;
  /** Host ports listening now for a service's port forward, by service. */
  published: ReadonlyMap<string, number>;
  /** Peers' routers and the hosts running there. */
  peers: readonly PeerRoute[];
}

const urlHost = (h: string): string => (h.includes(':') && !h.startsWith('[') ? `[${h}]` : h);

/**
 * Pure: the node's routes in Traefik's terms. A local service goes to this node's edge router
 * (it routes by the Host Traefik passes on, and falls over to a peer's router while the local
 * instance restarts); without a router, to its published port at the node address; with
 * neither, it is left out and named in `unreachable`. A Host that runs only on peers goes to
 * their routers.
 */
export function traefikRoutes(i: TraefikInputs): { routes: TraefikRoute[]; unreachable: string[] } {
  const byHost = new Map<string, Set<string>>();
  const add = (host: string, url: string): void => {
    const h = normalizeHost(host);
    let set = byHost.get(h);
    if (!set) byHost.set(h, (set = new Set()));
    set.add(url.replace(/\/+$/, ''));
  };
  const unreachable: string[] = [];
  for (const r of i.local) {
    const port = i.published.get(r.service);
    if (i.routerUrl) add(r.host, i.routerUrl);
    else if (port !== undefined) add(r.host, `http://${urlHost(i.nodeAddress)}:${port}`);
    else unreachable.push(r.service);
  }
  const local = new Set(byHost.keys());
  for (const p of i.peers) for (const h of p.hosts) if (!local.has(normalizeHost(h))) add(h, p.router_url);
  return { routes: [...byHost].map(([host, servers]) => ({ host, servers: [...servers] })), unreachable: [...new Set(unreachable)].sort() };
}

export const TRAEFIK_FILE = 'aether.yaml';

/** A Traefik router/service name from a host name: letters, digits and dashes. */
export function traefikName(host: string): string {
  return `aether-${host.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-+|-+$/g, '')}`;
}

/** Pure: routes -> the YAML text (sorted, so equal tables render equal text). */
export function renderTraefikConfig(routes: readonly TraefikRoute[], entryPoints: readonly string[] = ['web']): string {
  const routers: Record<string, unknown> = {};
  const services: Record<string, unknown> = {};
  for (const r of [...routes].sort((a, b) => (a.host < b.host ? -1 : a.host > b.host ? 1 : 0))) {
    if (r.servers.length === 0) continue;
    const name = traefikName(r.host);
    routers[name] = { rule: `Host(\`${r.host}\`)`, entryPoints: [...entryPoints], service: name };
    services[name] = { loadBalancer: { passHostHeader: true, servers: [...new Set(r.servers)].sort().map((url) => ({ url })) } };
  }
  const body = Object.keys(routers).length ? { http: { routers, services } } : { http: {} };
  return `# Written by the aether agent; replaced on every route change.\n${stringify(body, { lineWidth: 0 })}`;
}

/** Write `text` to dir/name so a reader sees the old file or the new one, never a part. */
export async function writeFileAtomic(dir: string, name: string, text: string): Promise<void> {
  await mkdir(dir, { recursive: true });
  // Not *.yaml: Traefik's file provider ignores it while it exists.
  const tmp = join(dir, `.${name}.${randomBytes(4).toString('hex')}.tmp`);
  try {
    await writeFile(tmp, text, { mode: 0o644 });
    await rename(tmp, join(dir, name));
  } catch (err) {
    await unlink(tmp).catch(() => undefined);
    throw err;
  }
}
