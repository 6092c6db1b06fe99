import { randomBytes } from 'node:crypto';
import { mkdir, rename, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { stringify } from 'yaml';

/**
 * firework's Traefik integration (B11): the node's routes as a Traefik file-provider dynamic
 * config, so a Traefik on the node (or the load balancer's) can route by Host as the edge router
 * does. One file, replaced atomically (temp file + rename): Traefik's watcher never reads a
 * half-written file, which firework's direct writes allowed.
 */
export interface TraefikRoute {
  host: string;
  /** Backends, e.g. http://127.0.0.1:18080 (a published port) or a peer's router URL. */
  servers: string[];
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
