/**
 * Runtime: runs one function instance in a sandbox. Drivers: process (namespaces + cgroups when
 * root, a plain child process otherwise), fake (scriptable, for tests); qemu and firecracker later.
 * Every driver passes ./contract.ts.
 */
export interface InstanceSpec {
  instanceId: string;
  functionId: string;
  functionName: string;
  runtime: 'node' | 'python';
  /** Path of the entrypoint relative to codeDir, e.g. "handler.js". */
  entrypoint: string;
  /** Host directory holding the unpacked code; the instance must not be able to write it. */
  codeDir: string;
  /** The function's env_vars; the driver adds PORT and the AETHER_* variables. */
  env: Record<string, string>;
  /** Port the program listens on inside its sandbox (the function's `port`). */
  port: number;
  memoryMb: number;
  vcpu: number;
  pidsMax: number;
}

/** How the agent reaches the instance's HTTP server. */
export type Endpoint =
  | { kind: 'tcp'; host: string; port: number }
  /**
   * `preamble`: a sandbox forwarder listens there. It answers each new connection with one byte
   * (PREAMBLE_OK) once it has reached the program, before any byte of the program, and closes it
   * without that byte when it could not: a request sent on such a connection never reached the
   * program (see ./endpoint.ts).
   */
  | { kind: 'unix'; path: string; preamble?: boolean };

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
  /** SIGTERM, then SIGKILL after graceMs; resolves when the sandbox is gone and cleaned up. */
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

export interface Runtime {
  readonly kind: string;
  /** "namespaces+cgroups" or "none": what this driver enforces on this host. */
  readonly isolation: string;
  create(spec: InstanceSpec): Promise<RuntimeInstance>;
  /** Remove sandboxes left by an earlier run of this agent (killed agent); called at agent start. */
  cleanupLeftovers(): Promise<void>;
  close(): Promise<void>;
}
