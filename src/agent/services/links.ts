import type { ServiceConfig } from '../../deploy/index.ts';

/**
 * Where a service's links point, for the runtime (InstanceSpec.links): the address and port of
 * each link's env value as the program gets it (`protocol://host:port[/…]` for links,
 * `host:port` for cross_node_links). Only IPv4 literals: that is what the deployer writes (and the
 * node's fallback, an instance address), and a process sandbox has no IPv6 or DNS; anything else
 * (a hand-set value, a name) is left alone.
 */
export function linkTargets(svc: Pick<ServiceConfig, 'links' | 'cross_node_links'>, env: Readonly<Record<string, string>>): { host: string; port: number }[] {
  const out: { host: string; port: number }[] = [];
  const seen = new Set<string>();
  for (const name of [...svc.links.map((l) => l.env), ...svc.cross_node_links.map((l) => l.env)]) {
    const t = parseLinkValue(env[name] ?? '');
    if (!t || seen.has(`${t.host}:${t.port}`)) continue;
    seen.add(`${t.host}:${t.port}`);
    out.push(t);
  }
  return out;
}

const OCTET = '(?:25[0-5]|2[0-4]\\d|1\\d\\d|[1-9]?\\d)';
const VALUE = new RegExp(`^(?:[A-Za-z][A-Za-z0-9+.-]*://)?(${OCTET}(?:\\.${OCTET}){3}):(\\d{1,5})(?:[/?#].*)?$`);

/** `http://10.0.0.5:18080/x` or `10.0.0.5:18080` -> its address and port; undefined for anything else. */
export function parseLinkValue(value: string): { host: string; port: number } | undefined {
  const m = VALUE.exec(value.trim());
  if (!m?.[1] || !m[2]) return undefined;
  const port = Number(m[2]);
  if (port < 1 || port > 65535 || m[1] === '0.0.0.0') return undefined;
  return { host: m[1], port };
}
