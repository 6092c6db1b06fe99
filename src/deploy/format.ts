import { z } from 'zod';
import { parseDocument } from 'yaml';

/**
 * firework's GitOps input format, read unchanged: `defaults.yaml`, `services/*.yaml|yml`,
 * `tenants/<tenant>/*.yaml|yml`. Field names and meanings follow firework's enricher; Aether adds
 * a few optional fields (`sandbox`, `command`) that firework repos simply do not set.
 *
 * Parsing is pure (file texts in, specs + every error out) so that one bad file is reported with
 * its path and field, and an invalid commit can be refused as a whole before anything runs.
 */

/** env values may hold any character (firework broke on whitespace); YAML scalars become strings. */
const scalarString = z.union([z.string(), z.number(), z.boolean()]).transform((v) => String(v));
const stringMap = z.record(z.string().min(1), scalarString);
const port = z.number().int().min(1).max(65535);

export const HealthCheckSpecSchema = z.object({
  type: z.string().optional(),
  port: z.number().int().min(0).max(65535).optional(),
  path: z.string().optional(),
  target: z.string().optional(),
  interval: z.string().optional(),
  timeout: z.string().optional(),
  retries: z.number().int().min(0).optional(),
});

export const PortForwardSchema = z.object({ host_port: port, vm_port: port });
export const LinkSchema = z.object({ service: z.string().min(1), env: z.string().min(1), port, protocol: z.string().optional() });
export const CrossNodeLinkSchema = z.object({ service: z.string().min(1), env: z.string().min(1), host_port: port });

const serviceFields = {
  name: z.string().optional(),
  image: z.string().optional(),
  node_type: z.string().optional(),
  kernel: z.string().optional(),
  vcpus: z.number().int().min(0).optional(),
  memory_mb: z.number().int().min(0).optional(),
  kernel_args: z.string().optional(),
  network: z.boolean().optional(),
  port_forwards: z.array(PortForwardSchema).optional(),
  health_check: HealthCheckSpecSchema.nullable().optional(),
  env: stringMap.nullable().optional(),
  links: z.array(LinkSchema).nullable().optional(),
  metadata: stringMap.nullable().optional(),
  anti_affinity_group: z.string().optional(),
  cross_node_links: z.array(CrossNodeLinkSchema).nullable().optional(),
  node_host_ip_env: z.string().optional(),
  // CI-only fields of firework repos, accepted and ignored.
  source_image: z.string().optional(),
  rootfs_size_mb: z.number().optional(),
  // Aether additions.
  sandbox: z.enum(['process', 'qemu', 'firecracker']).optional(),
  command: z.array(z.string()).optional(),
};

/** A service file (or tenant file) as written; unknown keys are ignored as firework's YAML decoder does. */
export const ServiceFileSchema = z.object(serviceFields);
export type ServiceFile = z.infer<typeof ServiceFileSchema>;

export const DefaultsSchema = z.object({
  kernel: z.string().optional(),
  vcpus: z.number().int().min(0).optional(),
  memory_mb: z.number().int().min(0).optional(),
  kernel_args: z.string().optional(),
  health_check: HealthCheckSpecSchema.nullable().optional(),
  sandbox: z.enum(['process', 'qemu', 'firecracker']).optional(),
});
export type Defaults = z.infer<typeof DefaultsSchema>;

export type HealthCheckSpec = z.infer<typeof HealthCheckSpecSchema>;
export type PortForward = z.infer<typeof PortForwardSchema>;
export type Link = z.infer<typeof LinkSchema>;
export type CrossNodeLink = z.infer<typeof CrossNodeLinkSchema>;

/** One service as the user declared it, after tenant expansion, before defaults. */
export interface ServiceSpec extends ServiceFile {
  name: string;
  /** The file it came from, for error messages. */
  file: string;
  tenant?: string;
}

export interface SpecError {
  file: string;
  field: string;
  message: string;
}

export interface RepoFile {
  /** Path relative to the repo root, with forward slashes. */
  path: string;
  text: string;
}

export interface ParsedRepo {
  defaults: Defaults;
  services: ServiceSpec[];
  errors: SpecError[];
}

const isYaml = (p: string): boolean => p.endsWith('.yaml') || p.endsWith('.yml');
const baseName = (p: string): string => (p.split('/').pop() ?? p).replace(/\.ya?ml$/, '');

function parseYaml<T>(file: RepoFile, schema: z.ZodType<T>, errors: SpecError[]): T | null {
  const doc = parseDocument(file.text, { uniqueKeys: true });
  if (doc.errors.length > 0) {
    for (const e of doc.errors) errors.push({ file: file.path, field: '(yaml)', message: e.message.split('\n')[0] ?? e.message });
    return null;
  }
  const value: unknown = doc.toJS() ?? {};
  if (typeof value !== 'object' || Array.isArray(value)) {
    errors.push({ file: file.path, field: '(root)', message: 'must be a mapping of fields' });
    return null;
  }
  const parsed = schema.safeParse(value);
  if (!parsed.success) {
    for (const issue of parsed.error.issues) {
      errors.push({ file: file.path, field: issue.path.map(String).join('.') || '(root)', message: issue.message });
    }
    return null;
  }
  return parsed.data;
}

/** Reads firework's layout from a list of files (a checkout or a directory listing). */
export function parseRepo(files: readonly RepoFile[]): ParsedRepo {
  const errors: SpecError[] = [];
  const sorted = [...files].sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  const defaultsFile = sorted.find((f) => f.path === 'defaults.yaml');
  const defaults = (defaultsFile && parseYaml(defaultsFile, DefaultsSchema, errors)) ?? {};

  const base: ServiceSpec[] = [];
  for (const f of sorted) {
    const parts = f.path.split('/');
    if (parts.length !== 2 || parts[0] !== 'services' || !isYaml(f.path)) continue;
    const spec = parseYaml(f, ServiceFileSchema, errors);
    if (spec) base.push({ ...spec, name: spec.name ?? '', file: f.path });
  }

  const tenantFiles = new Map<string, { file: RepoFile; spec: ServiceFile }[]>();
  for (const f of sorted) {
    const parts = f.path.split('/');
    if (parts.length !== 3 || parts[0] !== 'tenants' || !isYaml(f.path)) continue;
    const spec = parseYaml(f, ServiceFileSchema, errors);
    if (!spec) continue;
    const tenant = parts[1] ?? '';
    const list = tenantFiles.get(tenant) ?? [];
    list.push({ file: f, spec });
    tenantFiles.set(tenant, list);
  }

  const services = [...base, ...expandTenants(base, tenantFiles)];
  return { defaults, services, errors };
}

/**
 * firework's tenant rules (B3): a tenant file named like a base service overrides it (override
 * mode); otherwise a tenant file with `node_type` is a whole service (standalone mode); otherwise
 * it is ignored. Names become `<tenant>-<name>` and links are rewritten into the tenant.
 */
export function expandTenants(base: readonly ServiceSpec[], tenants: ReadonlyMap<string, { file: RepoFile; spec: ServiceFile }[]>): ServiceSpec[] {
  const byName = new Map(base.map((s) => [s.name, s]));
  const out: ServiceSpec[] = [];
  for (const [tenant, files] of [...tenants].sort(([a], [b]) => (a < b ? -1 : 1))) {
    for (const { file, spec: ov } of files) {
      const fileBase = baseName(file.path);
      const baseSvc = byName.get(fileBase);
      const prefix = (svc: string): string => `${tenant}-${svc}`;
      if (baseSvc) {
        const image = baseSvc.image ?? '';
        const slash = image.lastIndexOf('/');
        const svc: ServiceSpec = {
          ...structuredClone(baseSvc),
          name: prefix(baseSvc.name),
          image: slash >= 0 ? `${image.slice(0, slash + 1)}${tenant}-${image.slice(slash + 1)}` : `${tenant}-${image}`,
          file: file.path,
          tenant,
        };
        if (ov.vcpus) svc.vcpus = ov.vcpus;
        if (ov.memory_mb) svc.memory_mb = ov.memory_mb;
        if (ov.kernel_args) svc.kernel_args = ov.kernel_args;
        if (ov.health_check) svc.health_check = ov.health_check;
        if (ov.env && Object.keys(ov.env).length > 0) svc.env = { ...(svc.env ?? {}), ...ov.env };
        if (ov.metadata && Object.keys(ov.metadata).length > 0) svc.metadata = { ...(svc.metadata ?? {}), ...ov.metadata };
        if (ov.port_forwards && ov.port_forwards.length > 0) svc.port_forwards = ov.port_forwards;
        if (svc.links) svc.links = svc.links.map((l) => ({ ...l, service: prefix(l.service) }));
        out.push(svc);
      } else if (ov.node_type) {
        const { name: _ignored, ...rest } = ov;
        out.push({
          ...rest,
          name: prefix(fileBase),
          image: ov.image || `/var/lib/images/${tenant}-${fileBase}-rootfs.ext4`,
          ...(ov.links ? { links: ov.links.map((l) => ({ ...l, service: prefix(l.service) })) } : {}),
          ...(ov.cross_node_links ? { cross_node_links: ov.cross_node_links.map((l) => ({ ...l, service: prefix(l.service) })) } : {}),
          file: file.path,
          tenant,
        });
      }
    }
  }
  return out;
}
