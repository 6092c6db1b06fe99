import { readFileSync, statSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import { join, resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { AetherError, deriveClusterToken, sameSecret } from '../core/index.ts';
import { describeZodError } from '../spec/index.ts';
import { isGitUrl, parseDuration } from '../deploy/index.ts';

/**
 * Options for `aether up | gateway | agent`, from (highest first) flags, AETHER_* env, a YAML file
 * (--config), defaults; validated once and frozen. Driver URLs:
 *   store: sqlite:///path/store.db | etcd://host:2379[,host:2379]
 *   queue: memory:// | redis://host:6379
 *   blob:  file:///path | s3://bucket?endpoint=http://host:port&region=r
 */
export type Role = 'up' | 'gateway' | 'agent' | 'deployer';

const MiB = 1024 * 1024;

const FileSchema = z.strictObject({
  host: z.string().min(1),
  port: z.number().int().min(0).max(65535),
  data_dir: z.string().min(1),
  store: z.string().min(1),
  queue: z.string().min(1),
  blob: z.string().min(1),
  sandbox: z.enum(['process', 'qemu', 'firecracker']),
  /** "auto" or a comma list of process, qemu, firecracker. */
  sandboxes: z.union([
    z.literal('auto'),
    z.string().regex(/^(process|qemu|firecracker)(,(process|qemu|firecracker))*$/, 'must be auto or a comma list of process, qemu, firecracker'),
  ]),
  isolation: z.enum(['auto', 'namespaces', 'none']),
  sandbox_network: z.enum(['auto', 'veth', 'forwarder']),
  sandbox_net_pool: z.string().regex(/^\d{1,3}\.\d{1,3}\.0\.0\/16$/, 'must be a /16 such as 10.213.0.0/16'),
  data_plane: z.enum(['auto', 'haproxy', 'node']),
  advertise: z.string().min(1),
  admin_token_file: z.string().min(1),
  cluster_token_file: z.string().min(1),
  agent_id: z.string().regex(/^[a-z0-9][a-z0-9-]{0,62}$/),
  capacity_instances: z.number().int().min(1),
  capacity_memory_mb: z.number().int().min(16),
  capacity_vcpu: z.number().int().min(1),
  startup_timeout_ms: z.number().int().min(100),
  lease_ttl_ms: z.number().int().min(2000),
  pids_max: z.number().int().min(8),
  max_archive_mb: z.number().int().min(1),
  max_unpacked_mb: z.number().int().min(1),
  max_entries: z.number().int().min(1),
  log_level: z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']),
  /** A file for the JSON logs, or "-" for stderr. */
  log_file: z.string().min(1),
  source: z.string().min(1),
  poll: z.string().regex(/^(\d+(\.\d+)?(ms|s|m|h))+$/, 'must be a duration such as 2s, 500ms or 1m'),
  export_dir: z.string().min(1),
  node_type: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/),
  router_port: z.number().int().min(0).max(65535),
  traefik_config_dir: z.string().min(1),
}).partial();

export type ConfigInput = z.infer<typeof FileSchema>;

export interface Config {
  role: Role;
  host: string;
  port: number;
  dataDir: string;
  /** Driver URLs as given (etcd://h1:2379,h2:2379 is not a WHATWG URL, so these stay strings). */
  store: string;
  queue: string;
  blob: string;
  sandbox: 'process' | 'qemu' | 'firecracker';
  /** Sandbox kinds an agent offers: 'auto' (what the host probe finds) or the named ones. */
  sandboxes: 'auto' | ('process' | 'qemu' | 'firecracker')[];
  isolation: 'auto' | 'namespaces' | 'none';
  /** How process sandboxes are reached: veth pair per sandbox, or a forwarder process; auto = veth when root with ip + nft. */
  sandboxNetwork: 'auto' | 'veth' | 'forwarder';
  /** The /16 the veth network's per-sandbox /30s come from. */
  sandboxNetPool: string;
  /** Who carries warm invocation traffic (an agent: gateways' forwards to its instances): auto = haproxy when its binary is found, else node. */
  dataPlane: 'auto' | 'haproxy' | 'node';
  advertise: string | undefined;
  adminTokenFile: string | undefined;
  clusterTokenFile: string | undefined;
  agentId: string | undefined;
  capacity: { instances: number; memoryMb: number; vcpu: number };
  startupTimeoutMs: number;
  leaseTtlMs: number;
  pidsMax: number;
  limits: { maxArchiveBytes: number; maxUnpackedBytes: number; maxEntries: number };
  logLevel: string;
  /** --log-file as given, resolved ("-": stderr); undefined: the default (see logFileFor). */
  logFile: string | undefined;
  /** Service specs (firework layout): a directory or git-url[#branch]; deployer and up only. */
  source: string | undefined;
  pollMs: number;
  /** Also write firework's nodes/<node>.yaml here. */
  exportDir: string | undefined;
  /** firework's node_type label of this agent; undefined takes services of any type. */
  nodeType: string | undefined;
  /** Edge router port for services (0: any free port; undefined: no router). */
  routerPort: number | undefined;
  /** firework's traefik_config_dir: the node's routes as a Traefik file-provider config (undefined: not written). */
  traefikConfigDir: string | undefined;
  /** AETHER_WEBHOOK_SECRET (env only: secrets stay out of flags and files). */
  webhookSecret: string | undefined;
}

const ENV: Record<keyof ConfigInput, string> = {
  host: 'AETHER_HOST',
  port: 'AETHER_PORT',
  data_dir: 'AETHER_DATA_DIR',
  store: 'AETHER_STORE',
  queue: 'AETHER_QUEUE',
  blob: 'AETHER_BLOB',
  sandbox: 'AETHER_SANDBOX',
  sandboxes: 'AETHER_SANDBOXES',
  isolation: 'AETHER_ISOLATION',
  sandbox_network: 'AETHER_SANDBOX_NETWORK',
  sandbox_net_pool: 'AETHER_SANDBOX_NET_POOL',
  data_plane: 'AETHER_DATA_PLANE',
  advertise: 'AETHER_ADVERTISE',
  admin_token_file: 'AETHER_ADMIN_TOKEN_FILE',
  cluster_token_file: 'AETHER_CLUSTER_TOKEN_FILE',
  agent_id: 'AETHER_AGENT_ID',
  capacity_instances: 'AETHER_CAPACITY_INSTANCES',
  capacity_memory_mb: 'AETHER_CAPACITY_MEMORY_MB',
  capacity_vcpu: 'AETHER_CAPACITY_VCPU',
  startup_timeout_ms: 'AETHER_STARTUP_TIMEOUT_MS',
  lease_ttl_ms: 'AETHER_LEASE_TTL_MS',
  pids_max: 'AETHER_PIDS_MAX',
  max_archive_mb: 'AETHER_MAX_ARCHIVE_MB',
  max_unpacked_mb: 'AETHER_MAX_UNPACKED_MB',
  max_entries: 'AETHER_MAX_ENTRIES',
  log_level: 'AETHER_LOG_LEVEL',
  log_file: 'AETHER_LOG_FILE',
  source: 'AETHER_SOURCE',
  poll: 'AETHER_POLL',
  export_dir: 'AETHER_EXPORT_DIR',
  node_type: 'AETHER_NODE_TYPE',
  router_port: 'AETHER_ROUTER_PORT',
  traefik_config_dir: 'AETHER_TRAEFIK_CONFIG_DIR',
};

const NUMERIC = new Set<keyof ConfigInput>(['router_port', 'port', 'capacity_instances', 'capacity_memory_mb', 'capacity_vcpu', 'startup_timeout_ms', 'lease_ttl_ms', 'pids_max', 'max_archive_mb', 'max_unpacked_mb', 'max_entries']);

function fromEnv(env: NodeJS.ProcessEnv): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, name] of Object.entries(ENV) as [keyof ConfigInput, string][]) {
    const v = env[name];
    if (v === undefined || v === '') continue;
    out[k] = NUMERIC.has(k) ? Number(v) : v;
  }
  return out;
}

function invalid(message: string): AetherError {
  return new AetherError('AETHER_ERR_VALIDATION', `config: ${message}`);
}

/** Merge flags > env > file > defaults, validate, freeze. Throws AetherError with a one-line reason. */
export function loadConfig(role: Role, flags: ConfigInput & { config?: string }, env: NodeJS.ProcessEnv = process.env): Readonly<Config> {
  let file: Record<string, unknown> = {};
  const path = flags.config ?? env['AETHER_CONFIG'];
  if (path) {
    try {
      file = (parseYaml(readFileSync(path, 'utf8')) as Record<string, unknown> | null) ?? {};
    } catch (err) {
      throw invalid(`cannot read ${path}: ${(err as Error).message}`);
    }
  }
  const { config: _c, ...flagValues } = flags;
  const merged = { ...file, ...fromEnv(env), ...Object.fromEntries(Object.entries(flagValues).filter(([, v]) => v !== undefined)) };
  const parsed = FileSchema.safeParse(merged);
  if (!parsed.success) throw invalid(describeZodError(parsed.error));
  const c = parsed.data;

  const dataDir = resolve(c.data_dir ?? './.aether');
  const distributed = role !== 'up';
  const storeUrl = parseUrl('store', c.store ?? (distributed ? undefined : `sqlite://${dataDir}/store.db`), ['sqlite:', 'etcd:']);
  // The deployer needs only the store.
  const local = !distributed || role === 'deployer';
  const queueUrl = parseUrl('queue', c.queue ?? (local ? 'memory://' : undefined), ['memory:', 'redis:', 'rediss:']);
  const blobUrl = parseUrl('blob', c.blob ?? (local ? `file://${dataDir}/blobs` : undefined), ['file:', 's3:']);
  if (distributed) {
    if (scheme(storeUrl) !== 'etcd:') throw invalid(`\`aether ${role}\` needs --store etcd://host:2379 (the embedded store works only inside \`aether up\`)`);
    if (scheme(queueUrl) === 'memory:' && role !== 'deployer') throw invalid(`\`aether ${role}\` needs --queue redis://host:6379 (the memory queue works only inside \`aether up\`)`);
  }
  const cores = cpus().length || 1;
  const cfg: Config = {
    role,
    host: c.host ?? (role === 'agent' ? '0.0.0.0' : '127.0.0.1'),
    port: c.port ?? (role === 'agent' ? 0 : 8080),
    dataDir,
    store: storeUrl,
    queue: queueUrl,
    blob: blobUrl,
    sandbox: c.sandbox ?? 'process',
    sandboxes: !c.sandboxes || c.sandboxes === 'auto' ? 'auto' : ([...new Set(c.sandboxes.split(','))] as ('process' | 'qemu' | 'firecracker')[]),
    isolation: c.isolation ?? 'auto',
    sandboxNetwork: c.sandbox_network ?? 'auto',
    sandboxNetPool: c.sandbox_net_pool ?? '10.213.0.0/16',
    dataPlane: c.data_plane ?? 'auto',
    advertise: c.advertise,
    adminTokenFile: c.admin_token_file,
    clusterTokenFile: c.cluster_token_file,
    agentId: c.agent_id,
    capacity: {
      instances: c.capacity_instances ?? 64,
      memoryMb: c.capacity_memory_mb ?? Math.floor((totalmem() / MiB) * 0.75),
      vcpu: c.capacity_vcpu ?? cores * 16,
    },
    startupTimeoutMs: c.startup_timeout_ms ?? 30_000,
    leaseTtlMs: c.lease_ttl_ms ?? 10_000,
    pidsMax: c.pids_max ?? 256,
    limits: {
      maxArchiveBytes: (c.max_archive_mb ?? 50) * MiB,
      maxUnpackedBytes: (c.max_unpacked_mb ?? 250) * MiB,
      maxEntries: c.max_entries ?? 10_000,
    },
    logLevel: c.log_level ?? 'info',
    logFile: c.log_file === undefined || c.log_file === '-' ? c.log_file : resolve(c.log_file),
    source: c.source,
    pollMs: c.poll ? (parseDuration(c.poll) ?? 30_000) : 30_000,
    exportDir: c.export_dir ? resolve(c.export_dir) : undefined,
    nodeType: c.node_type,
    routerPort: c.router_port,
    traefikConfigDir: c.traefik_config_dir ? resolve(c.traefik_config_dir) : undefined,
    webhookSecret: env['AETHER_WEBHOOK_SECRET'] || undefined,
  };
  if (role === 'deployer' && !cfg.source) throw invalid('`aether deployer` needs --source <dir|git-url[#branch]> (env AETHER_SOURCE)');
  // A mistyped directory stops the start, rather than a deployer that refuses every poll.
  if (cfg.source && (role === 'up' || role === 'deployer') && !isGitUrl(cfg.source) && !statSync(cfg.source, { throwIfNoEntry: false })?.isDirectory()) {
    throw invalid(`--source ${cfg.source}: no such directory (a directory in firework layout: defaults.yaml, services/, tenants/; or a git URL such as https://…/specs.git#main)`);
  }
  return deepFreeze(cfg);
}

/**
 * Where the JSON logs go: the --log-file given, else, for an `aether up` whose stderr is a terminal,
 * `<data-dir>/aether.log` (a person starting it wants the startup lines and what goes wrong, not
 * every info line; warnings and errors still reach the terminal). Undefined: JSON lines on stderr,
 * as a process manager or log shipper expects.
 */
export function logFileFor(cfg: Pick<Config, 'role' | 'dataDir' | 'logFile'>, stderrIsTTY: boolean): string | undefined {
  if (cfg.logFile === '-') return undefined;
  if (cfg.logFile) return cfg.logFile;
  return cfg.role === 'up' && stderrIsTTY ? join(cfg.dataDir, 'aether.log') : undefined;
}

/**
 * The secret gateways and agents authenticate each other with (never the admin token, which agents
 * do not hold). `aether up`: AETHER_CLUSTER_TOKEN or derived from the admin token. Gateways and
 * agents: AETHER_CLUSTER_TOKEN or the file; without one they refuse to start.
 */
export function clusterTokenFor(role: Role, o: { env: NodeJS.ProcessEnv; file: string | undefined; adminToken: string | undefined }): string {
  let t = o.env['AETHER_CLUSTER_TOKEN']?.trim();
  if (!t && o.file) {
    try {
      t = readFileSync(o.file, 'utf8').trim();
    } catch (err) {
      throw invalid(`cannot read the cluster token file ${o.file}: ${(err as Error).message}`);
    }
  }
  if (!t) {
    if (role === 'up' && o.adminToken) return deriveClusterToken(o.adminToken);
    throw invalid(`\`aether ${role}\` needs AETHER_CLUSTER_TOKEN or --cluster-token-file: the secret gateways and agents share (the same on every node, not the admin token; e.g. openssl rand -hex 32)`);
  }
  if (t.length < 16) throw invalid('the cluster token must be at least 16 characters');
  if (o.adminToken && sameSecret(t, o.adminToken)) throw invalid('the cluster token must differ from the admin token (agents must never hold the admin token)');
  return t;
}

/** "etcd://h:1" -> "etcd:" */
export function scheme(url: string): string {
  return /^([a-z][a-z0-9+.-]*:)\/\//i.exec(url)?.[1]?.toLowerCase() ?? '';
}

function parseUrl(name: string, value: string | undefined, protocols: string[]): string {
  if (!value) throw invalid(`--${name} is required (one of ${protocols.map((p) => `${p}//…`).join(', ')})`);
  if (!protocols.includes(scheme(value))) throw invalid(`--${name} "${value}": scheme must be one of ${protocols.join(' ')}`);
  return value;
}

function deepFreeze<T>(o: T): Readonly<T> {
  if (o && typeof o === 'object') {
    for (const v of Object.values(o)) deepFreeze(v);
    Object.freeze(o);
  }
  return o;
}
