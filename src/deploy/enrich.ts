import { createHash } from 'node:crypto';
import { parseDuration } from './duration.ts';
import type { CrossNodeLink, Defaults, HealthCheckSpec, Link, ParsedRepo, PortForward, ServiceSpec, SpecError } from './format.ts';

/**
 * Enrichment: firework's precedence (service -> defaults.yaml -> built-in fallback; zero or empty
 * means unset) applied to every service, plus validation of the result. Pure.
 */
export const FALLBACK = Object.freeze({
  vcpus: 1,
  memory_mb: 256,
  health_interval_ms: 10_000,
  health_timeout_ms: 5_000,
  health_retries: 3,
});

export const SERVICE_NAME = /^[a-z0-9]([a-z0-9._-]{0,126}[a-z0-9])?$/;

export interface HealthCheck {
  type: 'http' | 'tcp';
  port: number;
  path: string;
  /** Explicit target (URL for http, host:port for tcp); else composed from the instance address. */
  target: string | null;
  interval_ms: number;
  timeout_ms: number;
  retries: number;
}

/** A service ready to place and run: every default applied, every field checked. */
export interface ServiceConfig {
  name: string;
  image: string;
  node_type: string;
  /** Guest kernel for VM sandboxes; null means the platform's default. */
  kernel: string | null;
  kernel_args: string;
  vcpus: number;
  memory_mb: number;
  network: boolean;
  port_forwards: PortForward[];
  health_check: HealthCheck | null;
  env: Record<string, string>;
  links: Link[];
  metadata: Record<string, string>;
  anti_affinity_group: string;
  cross_node_links: CrossNodeLink[];
  node_host_ip_env: string;
  sandbox: 'process' | 'qemu' | 'firecracker' | null;
  /** argv; empty means the image's `/etc/firework/runtime.json` command or `/sbin/init`. */
  command: string[];
  tenant: string | null;
  /** Where it was declared (for errors and `aether deploy --dry-run`). */
  file: string;
}

export interface EnrichResult {
  services: ServiceConfig[];
  errors: SpecError[];
  warnings: SpecError[];
}

function enrichHealth(spec: HealthCheckSpec | null | undefined, defaults: HealthCheckSpec | null | undefined, file: string, errors: SpecError[]): HealthCheck | null {
  if (!spec) return null;
  const pick = <K extends keyof HealthCheckSpec>(k: K): HealthCheckSpec[K] => (spec[k] ? spec[k] : defaults?.[k]);
  const type = pick('type') ?? 'http';
  if (type !== 'http' && type !== 'tcp') {
    errors.push({ file, field: 'health_check.type', message: `must be http or tcp, got ${JSON.stringify(type)}` });
    return null;
  }
  const duration = (field: 'interval' | 'timeout', fallback: number): number => {
    const text = pick(field);
    if (text === undefined) return fallback;
    const ms = parseDuration(text);
    if (ms === null) {
      errors.push({ file, field: `health_check.${field}`, message: `not a duration: ${JSON.stringify(text)} (e.g. "10s", "500ms")` });
      return fallback;
    }
    return ms === 0 ? fallback : ms;
  };
  const port = pick('port') ?? 0;
  const target = spec.target ?? null;
  if (!port && !target) errors.push({ file, field: 'health_check.port', message: 'is required (or set health_check.target)' });
  return {
    type,
    port,
    path: pick('path') || '/',
    target,
    interval_ms: duration('interval', FALLBACK.health_interval_ms),
    timeout_ms: duration('timeout', FALLBACK.health_timeout_ms),
    retries: pick('retries') || FALLBACK.health_retries,
  };
}

/** Applies defaults and validates every service; errors are aggregated, never thrown. */
export function enrich(repo: ParsedRepo): EnrichResult {
  const errors: SpecError[] = [...repo.errors];
  const warnings: SpecError[] = [];
  const d: Defaults = repo.defaults;
  const seen = new Map<string, string>();
  const services: ServiceConfig[] = [];

  for (const s of repo.services) {
    const before = errors.length;
    const req = (field: keyof ServiceSpec, value: string | undefined): void => {
      if (!value) errors.push({ file: s.file, field, message: 'is required' });
    };
    req('name', s.name);
    req('image', s.image);
    req('node_type', s.node_type);
    if (s.name && !SERVICE_NAME.test(s.name)) {
      errors.push({ file: s.file, field: 'name', message: 'must be lowercase letters, digits, ".", "_" or "-" (at most 128), starting and ending with a letter or digit' });
    }
    if (s.name && seen.has(s.name)) {
      errors.push({ file: s.file, field: 'name', message: `duplicate service name ${JSON.stringify(s.name)} (also in ${seen.get(s.name)})` });
    }
    if (s.name) seen.set(s.name, s.file);
    const health = enrichHealth(s.health_check, d.health_check, s.file, errors);
    if (health && !s.network && !s.port_forwards?.length) {
      warnings.push({ file: s.file, field: 'health_check', message: 'health check on a service without network: it can only pass through port_forwards' });
    }
    for (const [i, pf] of (s.port_forwards ?? []).entries()) {
      const dup = (s.port_forwards ?? []).findIndex((o) => o.host_port === pf.host_port);
      if (dup !== i) errors.push({ file: s.file, field: `port_forwards.${i}.host_port`, message: `host_port ${pf.host_port} is forwarded twice` });
    }
    if (errors.length > before) continue;
    services.push({
      name: s.name,
      image: s.image ?? '',
      node_type: s.node_type ?? '',
      kernel: s.kernel || d.kernel || null,
      kernel_args: s.kernel_args || d.kernel_args || '',
      vcpus: s.vcpus || d.vcpus || FALLBACK.vcpus,
      memory_mb: s.memory_mb || d.memory_mb || FALLBACK.memory_mb,
      network: s.network ?? false,
      port_forwards: s.port_forwards ?? [],
      health_check: health,
      env: s.env ?? {},
      links: s.links ?? [],
      metadata: s.metadata ?? {},
      anti_affinity_group: s.anti_affinity_group ?? '',
      cross_node_links: s.cross_node_links ?? [],
      node_host_ip_env: s.node_host_ip_env ?? '',
      sandbox: s.sandbox ?? d.sandbox ?? null,
      command: s.command ?? [],
      tenant: s.tenant ?? null,
      file: s.file,
    });
  }

  // Links name services of the same deployment: a missing target is the user's error, not a crash.
  const names = new Set(services.map((s) => s.name));
  for (const s of services) {
    for (const [i, l] of s.links.entries()) {
      if (!names.has(l.service)) errors.push({ file: s.file, field: `links.${i}.service`, message: `links to ${JSON.stringify(l.service)}, which is not deployed` });
    }
    for (const [i, l] of s.cross_node_links.entries()) {
      if (!names.has(l.service)) errors.push({ file: s.file, field: `cross_node_links.${i}.service`, message: `links to ${JSON.stringify(l.service)}, which is not deployed` });
    }
  }
  services.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  return { services, errors, warnings };
}

/**
 * What an instance was created from: a change here means recreate; metadata or health-check
 * changes do not (as in firework's reconciler), they apply in place.
 */
export function serviceConfigKey(s: ServiceConfig, resolvedEnv: Record<string, string> = s.env): string {
  const material = JSON.stringify([s.image, s.kernel, s.kernel_args, s.vcpus, s.memory_mb, s.network, s.port_forwards, s.sandbox, s.command, Object.entries(resolvedEnv).sort()]);
  return createHash('sha256').update(material).digest('hex').slice(0, 16);
}

export function formatErrors(errors: readonly SpecError[]): string {
  return errors.map((e) => `${e.file}: ${e.field}: ${e.message}`).join('\n');
}
