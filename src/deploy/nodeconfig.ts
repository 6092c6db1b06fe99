import { parseDocument, stringify } from 'yaml';
import { z } from 'zod';
import { formatDuration, parseDuration } from './duration.ts';
import type { ServiceConfig } from './enrich.ts';
import { CrossNodeLinkSchema, LinkSchema, PortForwardSchema } from './format.ts';

/**
 * firework's resolved node file (`nodes/<node>.yaml`, B3): what firework agents read. Aether keeps
 * assignments in the Store and can also export them in this shape (to a directory or a bucket), so
 * a firework agent, or a tool that reads its files, keeps working. Aether-only fields (node_type,
 * sandbox, command, tenant) ride along; firework's YAML decoder ignores unknown keys.
 */
export interface NodeConfig {
  node: string;
  host_ip?: string;
  services: ServiceConfig[];
}

const str = z.string().optional();
const NodeServiceSchema = z.object({
  name: z.string().min(1),
  image: z.string().min(1),
  kernel: str,
  vcpus: z.number().int().min(1),
  memory_mb: z.number().int().min(1),
  kernel_args: str,
  network: z.object({ interface: str, host_dev_name: str, guest_mac: str, guest_ip: str }).optional(),
  health_check: z
    .object({ type: z.enum(['http', 'tcp']), target: str, port: z.number().int().optional(), path: str, interval: str, timeout: str, retries: z.number().int().optional() })
    .optional(),
  port_forwards: z.array(PortForwardSchema).optional(),
  env: z.record(z.string(), z.union([z.string(), z.number(), z.boolean()]).transform(String)).optional(),
  links: z.array(LinkSchema).optional(),
  metadata: z.record(z.string(), z.string()).optional(),
  anti_affinity_group: str,
  cross_node_links: z.array(CrossNodeLinkSchema).optional(),
  node_host_ip_env: str,
  node_type: str,
  sandbox: z.enum(['process', 'qemu', 'firecracker']).optional(),
  command: z.array(z.string()).optional(),
  tenant: str,
});
const NodeConfigSchema = z.object({ node: z.string().min(1), host_ip: str, services: z.array(NodeServiceSchema).nullable().optional() });

/** A TAP-style interface name that fits IFNAMSIZ (15 chars) and stays stable per service name. */
export function interfaceName(service: string): string {
  const clean = service.replace(/[^a-z0-9]/g, '').slice(0, 8);
  let h = 0;
  for (const c of service) h = (h * 31 + c.charCodeAt(0)) >>> 0;
  return `fw-${clean}-${(h % 0xfff).toString(16).padStart(3, '0')}`.slice(0, 15);
}

export function renderNodeConfig(cfg: NodeConfig): string {
  const services = cfg.services.map((s) => {
    const out: Record<string, unknown> = { name: s.name, image: s.image };
    if (s.kernel) out['kernel'] = s.kernel;
    out['vcpus'] = s.vcpus;
    out['memory_mb'] = s.memory_mb;
    if (s.kernel_args) out['kernel_args'] = s.kernel_args;
    if (s.network) out['network'] = { interface: interfaceName(s.name) };
    if (s.health_check) {
      const h = s.health_check;
      out['health_check'] = {
        type: h.type,
        ...(h.target ? { target: h.target } : {}),
        port: h.port,
        path: h.path,
        interval: formatDuration(h.interval_ms),
        timeout: formatDuration(h.timeout_ms),
        retries: h.retries,
      };
    }
    if (s.port_forwards.length) out['port_forwards'] = s.port_forwards;
    if (Object.keys(s.env).length) out['env'] = s.env;
    if (s.links.length) out['links'] = s.links;
    if (Object.keys(s.metadata).length) out['metadata'] = s.metadata;
    if (s.anti_affinity_group) out['anti_affinity_group'] = s.anti_affinity_group;
    if (s.cross_node_links.length) out['cross_node_links'] = s.cross_node_links;
    if (s.node_host_ip_env) out['node_host_ip_env'] = s.node_host_ip_env;
    out['node_type'] = s.node_type;
    if (s.sandbox) out['sandbox'] = s.sandbox;
    if (s.command.length) out['command'] = s.command;
    if (s.tenant) out['tenant'] = s.tenant;
    return out;
  });
  return stringify({ node: cfg.node, ...(cfg.host_ip ? { host_ip: cfg.host_ip } : {}), services }, { lineWidth: 0 });
}

/** Parses a node file (ours or firework's); throws a readable error naming the field. */
export function parseNodeConfig(text: string, file = 'node config'): NodeConfig {
  const doc = parseDocument(text);
  if (doc.errors.length) throw new Error(`${file}: ${doc.errors[0]?.message ?? 'invalid YAML'}`);
  const parsed = NodeConfigSchema.safeParse(doc.toJS());
  if (!parsed.success) {
    const i = parsed.error.issues[0];
    throw new Error(`${file}: ${i?.path.join('.') ?? ''}: ${i?.message ?? 'invalid'}`);
  }
  const cfg = parsed.data;
  return {
    node: cfg.node,
    ...(cfg.host_ip ? { host_ip: cfg.host_ip } : {}),
    services: (cfg.services ?? []).map((s) => ({
      name: s.name,
      image: s.image,
      node_type: s.node_type ?? '',
      kernel: s.kernel || null,
      kernel_args: s.kernel_args ?? '',
      vcpus: s.vcpus,
      memory_mb: s.memory_mb,
      network: s.network !== undefined,
      port_forwards: s.port_forwards ?? [],
      health_check: s.health_check
        ? {
            type: s.health_check.type,
            port: s.health_check.port ?? 0,
            path: s.health_check.path || '/',
            target: s.health_check.target || null,
            interval_ms: parseDuration(s.health_check.interval ?? '') || 10_000,
            timeout_ms: parseDuration(s.health_check.timeout ?? '') || 5_000,
            retries: s.health_check.retries || 3,
          }
        : null,
      env: s.env ?? {},
      links: s.links ?? [],
      metadata: s.metadata ?? {},
      anti_affinity_group: s.anti_affinity_group ?? '',
      cross_node_links: s.cross_node_links ?? [],
      node_host_ip_env: s.node_host_ip_env ?? '',
      sandbox: s.sandbox ?? null,
      command: s.command ?? [],
      tenant: s.tenant ?? null,
      file: `nodes/${cfg.node}.yaml`,
    })),
  };
}
