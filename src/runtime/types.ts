import type { Endpoint } from '../spec/index.ts';

/**
 * Runtime: runs one workload instance in a sandbox. One driver per sandbox kind, each in its own
 * folder (process/, fake/, qemu/, firecracker/), chosen only in src/bin/. Every driver passes
 * ./contract.ts. An agent holds one Runtime per kind it offers.
 */
export type { Endpoint, GuestAddress } from '../spec/index.ts';

/** What the instance runs from. */
export type Artifact =
  /**
   * A function's unpacked code: a host dir the instance must not be able to write. The program is
   * the language runtime's interpreter on `entrypoint` (relative to the dir) unless `command` says
   * otherwise. Process sandboxes see it at /run/aether/code; VMs get it as a read-only drive
   * mounted there, on the runtime's base image.
   */
  | { kind: 'code'; dir: string; runtime: 'node' | 'python'; entrypoint: string }
  /** An ext4 root filesystem image (e.g. built by `aether image build`); shared read-only. */
  | { kind: 'image'; path: string }
  /** A root filesystem directory. */
  | { kind: 'rootfs'; dir: string };

/** Who the instance belongs to: becomes AETHER_FUNCTION_ID / _NAME for functions, labels logs. */
export interface Owner {
  kind: 'function' | 'service';
  id: string;
  name: string;
}

export interface Resources {
  memoryMb: number;
  vcpu: number;
  pidsMax: number;
}

/** A workload: what to run, from what, with what, listening where. Functions and services alike. */
export interface InstanceSpec {
  instanceId: string;
  owner: Owner;
  artifact: Artifact;
  /** argv of the program; default: from the artifact (code: interpreter + entrypoint; image: its runtime.json). */
  command?: string[];
  /** Working directory inside the sandbox; default: the code dir for code, the image's workdir else. */
  cwd?: string;
  /** The workload's env; the driver adds PORT and the AETHER_* variables. */
  env: Record<string, string>;
  resources: Resources;
  /**
   * TCP destinations (IPv4 address and port) the program must be able to connect to at exactly
   * these addresses: a service's resolved links. A driver whose sandbox has no route out relays
   * them (process, veth network: links.ts); others, whose programs reach them anyway, ignore it.
   */
  links?: { host: string; port: number }[];
  /** TCP port the program listens on inside its sandbox (the function's `port`). */
  listen: { port: number };
  /**
   * Identifies the workload's version (code + config): drivers with snapshots keep one template
   * per (owner, version). Absent: no snapshot is made or used.
   */
  version?: string;
}

export interface LogLine {
  /** ms since epoch */
  time: number;
  stream: 'stdout' | 'stderr' | 'system';
  text: string;
  /** On the notice line of the log rate limit: how many lines were dropped. */
  dropped?: number;
}

export interface ExitInfo {
  code: number | null;
  signal: string | null;
  /** e.g. "killed by the memory limit (oom)" when the driver knows. */
  reason?: string;
}

export type InstanceState = 'created' | 'starting' | 'running' | 'stopping' | 'exited';

export interface RuntimeInstance {
  readonly id: string;
  readonly spec: InstanceSpec;
  /** Valid after start() resolves. */
  readonly endpoint: Endpoint;
  /** Launch the program; resolves once it is spawned (not yet ready). */
  start(): Promise<void>;
  /**
   * Resolves when the program accepts connections on its port; rejects (with the reason) if it
   * exits first, if `timeoutMs` passes, or if `signal` aborts.
   */
  waitReady(timeoutMs: number, signal?: AbortSignal): Promise<void>;
  /** Ask the program to end (SIGTERM, ACPI powerdown), force after graceMs; resolves when the sandbox is gone and cleaned up. */
  stop(graceMs?: number): Promise<void>;
  inspect(): { state: InstanceState; pid: number | undefined; exit: ExitInfo | undefined };
  /** Every stdout/stderr line (and driver notes as 'system'). */
  onLog(listener: (line: LogLine) => void): void;
  /**
   * Called once, the moment the driver knows the program is gone or unreachable (before its last
   * output is read and the sandbox cleaned up, so before `exited` settles): stop routing to it.
   */
  onGone(listener: () => void): void;
  /** Settles once, when the program has exited (for any reason). */
  readonly exited: Promise<ExitInfo>;
}

/**
 * Optional capability: start instances from a snapshot of a booted template. A driver offering it
 * builds a template per (owner, version) on first use and restores later instances of that
 * version from it (each with its own identity).
 */
export interface SnapshotCapability {
  /** Remove the owner's templates, except those of the versions in `keep` (an update keeps the new one). */
  removeTemplates(ownerId: string, keep?: readonly string[]): Promise<void>;
  /** Templates on disk: for records and tests. */
  templates(): { ownerId: string; version: string; bytes: number }[];
}

/** An instance an earlier run of this agent left running, found by `adoption.list()`. */
export interface AdoptableInstance {
  /** The spec it was created with (owner, version = the config key it runs). */
  spec: InstanceSpec;
  endpoint: Endpoint;
  /** ms since epoch */
  startedAt: number;
}

/**
 * Optional capability: instances outlive the agent process (no parent-death tie) and a restarted
 * agent re-attaches to them: control, exit, logs (from where the pipe buffer stands). At start the
 * agent lists them, adopts what it still wants, then calls cleanupLeftovers(), which stops the rest.
 */
export interface AdoptionCapability {
  /** Live instances of this agent id that no RuntimeInstance of this process holds. */
  list(): Promise<AdoptableInstance[]>;
  /** Re-attach to one listed instance; it is 'running' (ready) from the start. */
  adopt(instanceId: string): Promise<RuntimeInstance>;
}

export interface Runtime {
  /** The sandbox kind it runs ('process', 'qemu', 'firecracker'; 'fake' in tests). */
  readonly kind: string;
  /** What this driver enforces on this host, e.g. "namespaces+cgroups", "microvm (tcg)", "none". */
  readonly isolation: string;
  /** Present when the driver can start instances from snapshots. */
  readonly snapshots?: SnapshotCapability;
  /**
   * How its instances' programs are reached: 'tcp' (an address and port: veth, VM, plain process)
   * or 'forwarder' (a unix socket through a per-instance forwarder process). A native proxy beats
   * the Node path only over TCP, where it keeps connections alive.
   */
  readonly reach?: 'tcp' | 'forwarder';
  /** The shortest start wait that makes sense on this host (a VM booting without KVM); the agent waits at least this long. */
  readonly minStartupMs?: number;
  create(spec: InstanceSpec): Promise<RuntimeInstance>;
  /** Present when instances survive an agent restart and can be adopted. */
  readonly adoption?: AdoptionCapability;
  /**
   * Remove sandboxes left by an earlier run of this agent (killed agent) that were not adopted;
   * called at agent start, after adoption.
   */
  cleanupLeftovers(): Promise<void>;
  close(): Promise<void>;
}

/** The environment every driver gives a program, before the workload's own env is applied on top of the base. */
export function programEnv(spec: InstanceSpec, port: number): Record<string, string> {
  const own: Record<string, string> = { AETHER_INSTANCE_ID: spec.instanceId };
  if (spec.owner.kind === 'function') {
    own['AETHER_FUNCTION_ID'] = spec.owner.id;
    own['AETHER_FUNCTION_NAME'] = spec.owner.name;
  } else {
    own['AETHER_SERVICE_ID'] = spec.owner.id;
    own['AETHER_SERVICE_NAME'] = spec.owner.name;
  }
  return { PATH: '/usr/local/bin:/usr/bin:/bin', HOME: '/tmp', LANG: 'C.UTF-8', ...spec.env, PORT: String(port), ...own };
}

/**
 * The entrypoint rules shared by every driver: .js/.mjs/.cjs run with node, .py with python -u
 * (unbuffered, so print() reaches the logs at once), .sh with /bin/sh, anything else with the
 * function's runtime.
 */
export function entryCommand(runtime: 'node' | 'python', entry: string, bins: { node: string; python: string }): string[] {
  if (/\.(m|c)?js$/.test(entry)) return [bins.node, entry];
  if (entry.endsWith('.py')) return [bins.python, '-u', entry];
  if (entry.endsWith('.sh')) return ['/bin/sh', entry];
  return runtime === 'python' ? [bins.python, '-u', entry] : [bins.node, entry];
}

/** Short name of what runs, for log lines: the entrypoint, the command or the image. */
export function describeWorkload(spec: InstanceSpec): string {
  if (spec.command?.[0]) return spec.command.join(' ');
  const a = spec.artifact;
  return a.kind === 'code' ? a.entrypoint : a.kind === 'image' ? a.path : a.dir;
}
