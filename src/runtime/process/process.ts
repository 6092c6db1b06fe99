import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readdirSync, readlinkSync, realpathSync, rmdirSync, unlinkSync } from 'node:fs';
import net from 'node:net';
import { constants as osConstants } from 'node:os';
import { dirname, isAbsolute, join, relative, resolve } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { AetherError, createLogger, systemClock, type Clock, type Logger } from '../../core/index.ts';
import { findV1Mounts, InstanceCgroups, leftoverInstanceIds, v1Usable, type Controller } from '../cgroup.ts';
import { findBin } from '../host.ts';
import { LineSplitter, LogHub } from '../logs.ts';
import type { Endpoint, ExitInfo, InstanceSpec, InstanceState, LogLine, Runtime, RuntimeInstance } from './legacy.ts';

export interface ProcessRuntimeOptions {
  /** The platform's data dir: hidden from instances; sockets live in `<dataDir>/sockets`. Code dirs should be under it. */
  dataDir: string;
  agentId: string;
  /** 'auto' (default): namespaces when root and the host has the pieces, else none. */
  isolation?: 'auto' | 'namespaces' | 'none';
  clock?: Clock;
  logger?: Logger;
  /** Interpreter for node functions (default: this process's node). */
  nodeBin?: string;
  /** Interpreter for python functions (default /usr/bin/python3). */
  pythonBin?: string;
  /**
   * More host dirs to hide from instances (tmpfs over them), e.g. the platform's data dir when
   * dataDir is inside it. The parent of each instance's code dir (the code cache) is always hidden.
   */
  hidePaths?: string[];
}

const SANDBOX_DIR = join(dirname(fileURLToPath(import.meta.url)), 'sandbox');
const LAUNCHER = join(SANDBOX_DIR, 'launch.pl');
const FORWARDER = join(SANDBOX_DIR, 'forwarder.mjs');
const TOOL_PATH = '/usr/sbin:/usr/bin:/sbin:/bin';
const USER_PATH = '/usr/local/bin:/usr/bin:/bin';
/**
 * Readiness and netns polls: fast, since they sit on the cold-start path. Polls of OS state use
 * real (ref'd) timers so a pending start or teardown keeps the process alive; timeouts use the clock.
 */
const POLL_MS = 3;
/** The instance's own namespaces; the network one comes from its forwarder (see SparePool). */
const NS_FLAGS = ['--pid', '--fork', '--kill-child', '--mount-proc', '--mount', '--uts', '--ipc'];
/** Warm spares (forwarder + launcher) kept ready (each ~45 MB RSS). */
const POOL_SIZE = 1;
/** How long after a program is ready the pool is refilled (see SparePool.refillSoon). */
const REFILL_DELAY_MS = 100;
const UID_BASE = 200_000;
/** Room in the launcher's command line for the code dir it names once assigned (perl's $0 cannot grow it). */
const PS_PAD = ' '.repeat(512);
/** Where launch.pl mounts the code inside the sandbox. */
const SANDBOX_CODE = '/run/aether/code';
/** mount, setgroups, setresgid, setresuid, prctl: the syscalls launch.pl makes, by architecture. */
const SYSCALLS: Record<string, string> = { x64: '165,116,119,117,157', arm64: '40,159,149,147,167' };

let warnedNone = false;

interface Tools {
  setpriv: string | undefined;
  unshare: string | undefined;
  nsenter: string | undefined;
  perl: string | undefined;
}

/** Tools present (checked by namespacesBlocker before namespaces mode is chosen). */
type SandboxTools = { [K in keyof Tools]: string };

function which(name: string): string | undefined {
  return findBin(name, TOOL_PATH.split(':'));
}

/** Why namespaces mode cannot run here, or undefined when it can. */
function namespacesBlocker(tools: Tools, mounts: Partial<Record<Controller, string>>): string | undefined {
  if (process.getuid?.() !== 0) return 'not running as root';
  for (const [k, v] of Object.entries(tools)) if (!v) return `${k} not found`;
  if (!SYSCALLS[process.arch]) return `unsupported architecture ${process.arch}`;
  if (!v1Usable(mounts)) return 'cgroup v1 memory/cpu/pids controllers are not mounted and writable';
  const r = spawnSync(tools.unshare as string, [...NS_FLAGS, '--net', 'true'], { env: { PATH: TOOL_PATH }, timeout: 5000, stdio: 'ignore' });
  if (r.status !== 0) return 'unshare of pid/mount/uts/ipc/net namespaces failed';
  return undefined;
}

interface Ctx {
  clock: Clock;
  logger: Logger;
  mode: 'namespaces' | 'none';
  dataDir: string;
  agentId: string;
  socketsDir: string;
  tools: Tools;
  mounts: Record<Controller, string>;
  nodeBin: string;
  pythonBin: string;
  uidBase: number;
  nextUid: number;
  pool: SparePool | undefined;
  /** Dirs hidden from every instance (dataDir + hidePaths, the ones safe to hide). */
  hide: string[];
}

export function createProcessRuntime(opts: ProcessRuntimeOptions): Runtime {
  const clock = opts.clock ?? systemClock;
  const logger = opts.logger ?? createLogger('runtime');
  const dataDir = resolve(opts.dataDir);
  const agentId = opts.agentId.replace(/[^A-Za-z0-9._-]/g, '_');
  const tools: Tools = { setpriv: which('setpriv'), unshare: which('unshare'), nsenter: which('nsenter'), perl: which('perl') };
  const mounts = findV1Mounts();
  const want = opts.isolation ?? 'auto';
  let mode: 'namespaces' | 'none' = 'none';
  const blocker = want === 'none' ? 'forced by configuration' : namespacesBlocker(tools, mounts);
  if (!blocker) mode = 'namespaces';
  else if (want === 'namespaces') throw new AetherError('AETHER_ERR_INTERNAL', `process runtime: namespaces isolation unavailable: ${blocker}`);
  else if (!warnedNone) {
    warnedNone = true;
    logger.warn({ reason: blocker }, `process runtime: NO ISOLATION (${blocker}): functions run as plain child processes with this process's user and full access to its files and network`);
  }
  const socketsDir = join(dataDir, 'sockets');
  const ctx: Ctx = {
    clock,
    logger,
    mode,
    dataDir,
    agentId,
    socketsDir,
    tools,
    mounts: mounts as Record<Controller, string>,
    nodeBin: opts.nodeBin ?? process.execPath,
    pythonBin: opts.pythonBin ?? (existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3'),
    uidBase: UID_BASE + (createHash('sha256').update(agentId).digest().readUInt16BE(0) % 64) * 10_000,
    nextUid: 0,
    pool: undefined,
    hide: [],
  };
  for (const d of [dataDir, ...(opts.hidePaths ?? []).map((p) => resolve(p))]) {
    if (safeToHide(ctx, d)) ctx.hide.push(d);
    else if (mode === 'namespaces') logger.warn({ dir: d }, 'process runtime: not hiding a system dir or one holding an interpreter');
  }
  if (mode === 'namespaces') {
    // root-owned 0700: only the agent (root) may connect to instances' sockets
    mkdirSync(socketsDir, { recursive: true, mode: 0o700 });
    chmodSync(socketsDir, 0o700);
    ctx.pool = new SparePool(ctx, POOL_SIZE);
    ctx.pool.fill();
  }
  const live = new Map<string, ProcessInstance>();
  return {
    kind: 'process',
    isolation: mode === 'namespaces' ? 'namespaces+cgroups' : 'none',
    async create(spec: InstanceSpec): Promise<RuntimeInstance> {
      if (live.has(spec.instanceId)) throw new AetherError('AETHER_ERR_CONFLICT', `instance ${spec.instanceId} exists`);
      const inst = new ProcessInstance(ctx, spec);
      live.set(spec.instanceId, inst);
      void inst.exited.then(() => live.delete(spec.instanceId));
      return inst;
    },
    async cleanupLeftovers(): Promise<void> {
      if (mode !== 'namespaces') return;
      for (const id of leftoverInstanceIds(ctx.mounts, agentId)) {
        if (live.has(id)) continue;
        const cg = new InstanceCgroups(ctx.mounts, agentId, id);
        for (let i = 0; i < 400 && !cg.killAll(); i++) await delay(5);
        for (let i = 0; i < 100 && !cg.remove(); i++) await delay(10);
        logger.info({ instanceId: id }, 'removed a leftover sandbox');
      }
      try {
        for (const name of readdirSync(socketsDir)) {
          // our own forwarders' temporary sockets and live instances' sockets stay
          if (name.startsWith(`.fwd-${process.pid}-`) || live.has(name.replace(/\.sock$/, ''))) continue;
          const path = join(socketsDir, name);
          unlinkSync(path);
        }
      } catch {
        // no sockets dir
      }
      if (live.size === 0) removeAgentDirs(ctx);
    },
    async close(): Promise<void> {
      ctx.pool?.close();
      await Promise.all([...live.values()].map((i) => i.stop(1000)));
      removeAgentDirs(ctx);
    },
  };
}

/** OS dirs, and dirs holding the interpreters: a tmpfs over them would break every program. */
const SYSTEM_DIRS = new Set(['/', '/bin', '/sbin', '/lib', '/lib32', '/lib64', '/libx32', '/usr', '/etc', '/proc', '/sys', '/dev', '/run']);
function safeToHide(ctx: Ctx, dir: string): boolean {
  if (SYSTEM_DIRS.has(dir)) return false;
  const bins = [ctx.nodeBin, ctx.pythonBin].map((b) => {
    try {
      return realpathSync(b);
    } catch {
      return b;
    }
  });
  return !bins.some((b) => b === dir || b.startsWith(`${dir}/`));
}

/** The dirs not inside another one of the list (hiding a parent hides its children). */
function outermost(dirs: string[]): string[] {
  const sorted = [...new Set(dirs)].sort((a, b) => a.length - b.length);
  const out: string[] = [];
  for (const d of sorted) if (!out.some((o) => d === o || d.startsWith(o.endsWith('/') ? o : `${o}/`))) out.push(d);
  return out;
}

/** rmdir the (empty) `aether/<agentId>` cgroup dirs; busy ones stay. */
function removeAgentDirs(ctx: Ctx): void {
  if (ctx.mode !== 'namespaces') return;
  for (const dir of Object.values(ctx.mounts)) {
    try {
      rmdirSync(join(dir, 'aether', ctx.agentId));
    } catch {
      // busy or absent
    }
  }
}

/**
 * A forwarder process in its own fresh network namespace (only loopback). The instance that takes
 * it joins that namespace, so the forwarder's ~50 ms node start happens before the cold start
 * instead of competing with the program's start for the CPU.
 */
class Forwarder {
  readonly child: ChildProcess;
  readonly tmpPath: string;
  listening = false;
  ready = false;
  exited = false;
  /** Set by the instance that takes it. */
  onReady: (() => void) | undefined;
  onLine: ((text: string) => void) | undefined;
  #lines: string[] = [];

  constructor(ctx: Ctx, tmpPath: string) {
    this.tmpPath = tmpPath;
    const t = ctx.tools as SandboxTools;
    this.child = spawn(t.setpriv, ['--pdeathsig', 'KILL', '--', t.unshare, '--net', '--', process.execPath, FORWARDER, tmpPath], {
      env: { PATH: TOOL_PATH },
      cwd: '/',
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    // an idle forwarder must not keep the agent's event loop alive
    this.child.unref();
    for (const s of [this.child.stdin, this.child.stdout, this.child.stderr]) (s as unknown as { unref?: () => void } | null)?.unref?.();
    this.child.stdin?.on('error', () => {});
    this.child.on('error', (err) => this.#line(`forwarder failed to start: ${err.message}`));
    this.child.on('exit', () => {
      this.exited = true;
      try {
        unlinkSync(this.tmpPath);
      } catch {
        // renamed or never bound
      }
    });
    const out = new LineSplitter((text) => {
      if (text === 'listening') this.listening = true;
      else if (text === 'ready') {
        this.ready = true;
        this.onReady?.();
      }
    });
    this.child.stdout?.on('data', (b: Buffer) => out.write(b));
    const err = new LineSplitter((text) => this.#line(text));
    this.child.stderr?.on('data', (b: Buffer) => err.write(b));
  }

  #line(text: string): void {
    if (this.onLine) this.onLine(text);
    else this.#lines.push(text);
  }

  /** Route stderr lines (including ones from before) to the instance's logs. */
  attach(onLine: (text: string) => void, onReady: () => void): void {
    this.onLine = onLine;
    this.onReady = onReady;
    for (const l of this.#lines.splice(0)) onLine(l);
  }

  /** Resolves once the process is in its new network namespace; false if it died first. */
  async netnsReady(): Promise<boolean> {
    const own = readlinkSync('/proc/self/ns/net');
    for (;;) {
      const pid = this.child.pid;
      if (this.exited || pid === undefined) return false;
      try {
        if (readlinkSync(`/proc/${pid}/ns/net`) !== own) return true;
      } catch {
        return false;
      }
      await delay(1);
    }
  }

  assign(sockPath: string, port: number): void {
    this.child.stdin?.write(`${sockPath} ${port}\n`);
  }

  kill(): void {
    if (!this.exited) this.child.kill('SIGKILL');
  }
}

/**
 * An instance's sandbox, started ahead of need: a forwarder in a fresh network namespace and, once
 * that namespace exists, the launcher chain (setpriv → nsenter into it → unshare of the other
 * namespaces → launch.pl as PID 1) blocked on stdin. Nothing of the user runs in it before the
 * assignment, and it joins its cgroups only then. Not an instance: no cgroup, no uid, not in `live`.
 */
class Spare {
  readonly fwd: Forwarder;
  /** The launcher chain; undefined if the forwarder died before its namespace was ready. */
  readonly launcher: Promise<ChildProcess | undefined>;
  #child: ChildProcess | undefined;
  #dead = false;

  constructor(ctx: Ctx, fwd: Forwarder) {
    this.fwd = fwd;
    this.launcher = fwd.netnsReady().then((ok) => {
      if (!ok || this.#dead) return undefined;
      const t = ctx.tools as SandboxTools;
      const args = ['--pdeathsig', 'KILL', '--', t.nsenter, `--net=/proc/${fwd.child.pid}/ns/net`, '--', t.unshare, ...NS_FLAGS, '--', t.perl, LAUNCHER, PS_PAD];
      // root tools run with a bare environment; the assignment (and the program's env) goes through stdin
      const child = spawn(t.setpriv, args, { env: { PATH: TOOL_PATH }, cwd: '/', stdio: ['pipe', 'pipe', 'pipe'] });
      this.#child = child;
      // an idle spare must not keep the agent's event loop alive (the instance refs it)
      child.unref();
      for (const st of [child.stdin, child.stdout, child.stderr]) (st as unknown as { unref?: () => void } | null)?.unref?.();
      child.stdin?.on('error', () => {});
      child.on('error', () => {});
      return child;
    });
  }

  /** True while both processes can still serve an instance. */
  get alive(): boolean {
    const c = this.#child;
    return !this.#dead && !this.fwd.exited && (c === undefined || (c.exitCode === null && c.signalCode === null));
  }

  kill(): void {
    this.#dead = true;
    this.fwd.kill();
    // the chain execs down to `unshare --kill-child`: killing it kills the launcher (PID 1) and the namespace
    const c = this.#child;
    if (c && c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  }
}

class SparePool {
  #ctx: Ctx;
  #size: number;
  #idle: Spare[] = [];
  #n = 0;
  #closed = false;
  #refill: NodeJS.Timeout | undefined;
  constructor(ctx: Ctx, size: number) {
    this.#ctx = ctx;
    this.#size = size;
  }
  #spawn(): Spare {
    const fwd = new Forwarder(this.#ctx, join(this.#ctx.socketsDir, `.fwd-${process.pid}-${this.#n++}.tmp`));
    const spare = new Spare(this.#ctx, fwd);
    const drop = (): void => {
      if (!this.#idle.includes(spare)) return; // taken: the instance handles it
      this.#idle = this.#idle.filter((x) => x !== spare);
      spare.kill();
    };
    fwd.child.once('exit', drop);
    void spare.launcher.then((c) => c?.once('exit', drop));
    return spare;
  }
  fill(): void {
    while (!this.#closed && this.#idle.length < this.#size) this.#idle.push(this.#spawn());
  }
  /**
   * fill() a little later: right after a program is ready the platform registers it and sends it its
   * first request, and a new spare (a node start, ~50 ms of CPU) would compete with that. A real
   * timer, unref'd: it schedules OS work, nothing waits on it.
   */
  refillSoon(): void {
    if (this.#refill || this.#closed) return;
    this.#refill = setTimeout(() => {
      this.#refill = undefined;
      this.fill();
    }, REFILL_DELAY_MS);
    this.#refill.unref();
  }
  /**
   * A warm spare if there is one, else a new one (started now, in parallel with the program's
   * assignment). The caller refills the pool (fill()) once its program is up, so the refill does not
   * compete with the program's start for the CPU.
   */
  take(): Spare {
    // warm first, else one already starting (it is ahead of a new one), else a new one
    let i = this.#idle.findIndex((s) => s.fwd.listening && s.alive);
    if (i < 0) i = this.#idle.findIndex((s) => s.alive);
    return i >= 0 ? this.#idle.splice(i, 1)[0]! : this.#spawn();
  }
  close(): void {
    this.#closed = true;
    if (this.#refill) clearTimeout(this.#refill);
    for (const s of this.#idle.splice(0)) s.kill();
  }
}

function signalName(n: number): string | null {
  for (const [name, num] of Object.entries(osConstants.signals)) if (num === n) return name;
  return null;
}

/** NUL-separated K=V records for launch.pl; entries that cannot be environment variables are dropped. */
function envRecords(env: Record<string, string>): string {
  let out = '';
  for (const [k, v] of Object.entries(env)) if (k !== '' && !/[=\0]/.test(k) && !v.includes('\0')) out += `${k}=${v}\0`;
  return out;
}

function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const srv = net.createServer();
    srv.unref();
    srv.once('error', rej);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      srv.close(() => (addr && typeof addr === 'object' ? res(addr.port) : rej(new Error('no port'))));
    });
  });
}

function tcpAccepts(port: number): Promise<boolean> {
  return new Promise((res) => {
    const s = net.connect({ host: '127.0.0.1', port });
    s.once('connect', () => {
      s.destroy();
      res(true);
    });
    s.once('error', () => res(false));
  });
}

function commandFor(spec: InstanceSpec, ctx: Ctx, entry: string): string[] {
  if (/\.(m|c)?js$/.test(entry)) return [ctx.nodeBin, entry];
  // -u: unbuffered stdout, so print() lines reach the logs at once
  if (entry.endsWith('.py')) return [ctx.pythonBin, '-u', entry];
  if (entry.endsWith('.sh')) return ['/bin/sh', entry];
  return spec.runtime === 'python' ? [ctx.pythonBin, '-u', entry] : [ctx.nodeBin, entry];
}

class ProcessInstance implements RuntimeInstance {
  readonly id: string;
  readonly spec: InstanceSpec;
  readonly exited: Promise<ExitInfo>;
  #ctx: Ctx;
  #state: InstanceState = 'created';
  #endpoint: Endpoint | undefined;
  #child: ChildProcess | undefined;
  #forwarder: Forwarder | undefined;
  #spare: Spare | undefined;
  #cg: InstanceCgroups | undefined;
  #sockPath: string;
  #port = 0;
  #exit: ExitInfo | undefined;
  #resolveExit!: (e: ExitInfo) => void;
  #logs: LogHub;
  #exitStarted = false;
  #stopRequested = false;
  #forwarderLost = false;
  /** Wakes a waitReady poll early (the forwarder reported ready). */
  #wake: (() => void) | undefined;

  constructor(ctx: Ctx, spec: InstanceSpec) {
    this.#ctx = ctx;
    this.spec = spec;
    this.id = spec.instanceId;
    this.#logs = new LogHub(ctx.clock);
    this.#sockPath = join(ctx.socketsDir, `${spec.instanceId}.sock`);
    this.exited = new Promise((r) => (this.#resolveExit = r));
  }

  get endpoint(): Endpoint {
    if (!this.#endpoint) throw new AetherError('AETHER_ERR_INTERNAL', `instance ${this.id} has no endpoint before start()`);
    return this.#endpoint;
  }

  onLog(listener: (line: LogLine) => void): void {
    this.#logs.on(listener);
  }

  inspect(): { state: InstanceState; pid: number | undefined; exit: ExitInfo | undefined } {
    return { state: this.#state, pid: this.#child?.pid, exit: this.#exit };
  }

  async start(): Promise<void> {
    if (this.#state !== 'created') throw new AetherError('AETHER_ERR_INTERNAL', `instance ${this.id} already started`);
    const spec = this.spec;
    if (!/^[A-Za-z0-9._-]+$/.test(spec.instanceId)) throw new AetherError('AETHER_ERR_VALIDATION', `bad instance id ${JSON.stringify(spec.instanceId)}`);
    const codeDir = resolve(spec.codeDir);
    const entry = resolve(codeDir, spec.entrypoint);
    const rel = relative(codeDir, entry);
    if (rel === '' || rel.startsWith('..') || isAbsolute(rel)) throw new AetherError('AETHER_ERR_VALIDATION', `entrypoint ${spec.entrypoint} is outside the code dir`);
    this.#state = 'starting';
    // the sandbox sees the code at SANDBOX_CODE, a plain child at its real path
    const argv = commandFor(spec, this.#ctx, this.#ctx.mode === 'namespaces' ? join(SANDBOX_CODE, rel) : entry);
    try {
      if (this.#ctx.mode === 'namespaces') await this.#startSandboxed(codeDir, argv);
      else await this.#startPlain(codeDir, argv);
    } catch (err) {
      this.#spare?.kill();
      this.#cg?.remove();
      this.#exit = { code: null, signal: null, reason: `could not start: ${(err as Error).message}` };
      this.#state = 'exited';
      this.#resolveExit(this.#exit);
      throw err;
    }
  }

  #programEnv(port: number): Record<string, string> {
    return {
      PATH: USER_PATH,
      HOME: '/tmp',
      LANG: 'C.UTF-8',
      ...this.spec.env,
      PORT: String(port),
      AETHER_FUNCTION_ID: this.spec.functionId,
      AETHER_FUNCTION_NAME: this.spec.functionName,
      AETHER_INSTANCE_ID: this.spec.instanceId,
    };
  }

  async #startSandboxed(codeDir: string, argv: string[]): Promise<void> {
    const ctx = this.#ctx;
    const spec = this.spec;
    this.#port = spec.port;
    const cg = new InstanceCgroups(ctx.mounts, ctx.agentId, spec.instanceId);
    this.#cg = cg;
    try {
      cg.create({ memoryMb: spec.memoryMb, vcpu: spec.vcpu, pidsMax: spec.pidsMax });
    } catch (err) {
      throw new AetherError('AETHER_ERR_COLD_START_FAILED', `cannot create cgroups for ${this.id}: ${(err as Error).message}`, { cause: err });
    }
    try {
      unlinkSync(this.#sockPath);
    } catch {
      // no stale socket
    }
    const spare = (ctx.pool as SparePool).take();
    this.#spare = spare;
    const fwd = spare.fwd;
    this.#forwarder = fwd;
    fwd.attach(
      (text) => this.#logs.emit('system', `forwarder: ${text}`),
      () => this.#wake?.(),
    );
    fwd.child.once('exit', (code, signal) => {
      if (this.#exitStarted) return;
      // without its forwarder the instance is unreachable: end it
      this.#logs.emit('system', `forwarder exited (code ${code}, signal ${signal})`);
      this.#forwarderLost = true;
      this.#signal('SIGKILL');
    });
    const child = await spare.launcher;
    if (!child || !spare.alive) throw new AetherError('AETHER_ERR_COLD_START_FAILED', `instance ${this.id}: the sandbox could not start`);
    if (this.#stopRequested) throw new AetherError('AETHER_ERR_COLD_START_FAILED', `instance ${this.id} was stopped while starting`);
    const uid = ctx.uidBase + (ctx.nextUid++ % 10_000);
    // "over any other function's code": the code dir's parent is the code cache
    const hide = outermost([...ctx.hide, ...[dirname(codeDir)].filter((d) => safeToHide(ctx, d))]);
    const tmpMb = Math.max(16, Math.floor(spec.memoryMb));
    // launch.pl's assignment (see its header), then the program's env; all on stdin, never on a command line
    const assignment = [
      ...cg.joinFiles(), codeDir, String(uid), String(tmpMb), '1', SYSCALLS[process.arch] as string,
      String(hide.length), ...hide, String(argv.length), ...argv,
    ];
    this.#endpoint = { kind: 'unix', path: this.#sockPath };
    child.ref();
    for (const st of [child.stdin, child.stdout, child.stderr]) (st as unknown as { ref?: () => void } | null)?.ref?.();
    this.#attach(child);
    child.stdin?.end(`${assignment.join('\0')}\0${envRecords(this.#programEnv(spec.port))}`);
    fwd.assign(this.#sockPath, spec.port);
  }

  async #startPlain(codeDir: string, argv: string[]): Promise<void> {
    const ctx = this.#ctx;
    this.#port = await freePort();
    this.#endpoint = { kind: 'tcp', host: '127.0.0.1', port: this.#port };
    const env = this.#programEnv(this.#port);
    // setpriv only to tie the child's life to ours; it execs the program (no extra process)
    const [cmd, ...rest] = ctx.tools.setpriv ? [ctx.tools.setpriv, '--pdeathsig', 'KILL', '--', ...argv] : argv;
    const child = spawn(cmd as string, rest, { env, cwd: codeDir, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    this.#attach(child);
  }

  #attach(child: ChildProcess): void {
    this.#child = child;
    this.#logs.emit('system', `starting ${this.spec.entrypoint} (${this.#ctx.mode === 'namespaces' ? 'namespaces+cgroups' : 'no isolation'})`);
    const open = new Set<string>();
    const ended = new Promise<void>((res) => {
      for (const name of ['stdout', 'stderr'] as const) {
        const stream = child[name];
        if (!stream) continue;
        open.add(name);
        const split = new LineSplitter((t) => this.#logs.emit(name, t));
        stream.on('data', (b: Buffer) => split.write(b));
        stream.on('close', () => {
          split.end();
          open.delete(name);
          if (open.size === 0) res();
        });
      }
      if (open.size === 0) res();
    });
    let done = false;
    const finish = (code: number | null, signal: string | null, reason?: string): void => {
      if (done) return;
      done = true;
      this.#exitStarted = true;
      this.#wake?.();
      // wait for the last output (it explains most failures), but not for a grandchild holding the pipe
      void Promise.race([ended, delay(250)]).then(() => this.#finalize(code, signal, reason));
    };
    child.on('error', (err) => finish(null, null, `could not start: ${err.message}`));
    child.on('exit', (code, signal) => finish(code, signal));
  }

  async #finalize(code: number | null, signal: string | null, spawnError?: string): Promise<void> {
    const ctx = this.#ctx;
    const info: ExitInfo = { code, signal };
    this.#spare?.kill();
    ctx.pool?.fill();
    if (ctx.mode === 'namespaces') {
      // the launcher (the namespace's PID 1) exits with 128+n when the program died of signal n
      if (code !== null && code > 128 && code <= 128 + 64 && signal === null) {
        const name = signalName(code - 128);
        if (name) {
          info.code = null;
          info.signal = name;
        }
      }
      const cg = this.#cg;
      if (cg) {
        const oom = cg.oomKills() > 0 || (info.signal === 'SIGKILL' && this.#state !== 'stopping' && cg.memoryFailcnt() > 0);
        if (oom) info.reason = 'killed by the memory limit (oom)';
        for (let i = 0; i < 400 && !cg.killAll(); i++) await delay(5);
        let removed = false;
        for (let i = 0; i < 100 && !(removed = cg.remove()); i++) await delay(10);
        if (!removed) ctx.logger.warn({ instanceId: this.id }, 'could not remove instance cgroups');
      }
      try {
        unlinkSync(this.#sockPath);
      } catch {
        // never published
      }
    }
    if (this.#forwarderLost && !info.reason) info.reason = 'its forwarder exited';
    if (spawnError) info.reason = spawnError;
    this.#exit = info;
    this.#state = 'exited';
    this.#logs.emit('system', `exited (code ${info.code}, signal ${info.signal}${info.reason ? `, ${info.reason}` : ''})`);
    this.#resolveExit(info);
  }

  #exitError(info: ExitInfo): AetherError {
    const how = info.reason ?? (info.signal ? `signal ${info.signal}` : `code ${info.code}`);
    const tail = this.#logs.tail();
    return new AetherError(
      'AETHER_ERR_COLD_START_FAILED',
      `instance ${this.id} exited (${how}) before listening on port ${this.#port}${tail ? `; last output:\n${tail}` : ''}`,
    );
  }

  async #ready(): Promise<boolean> {
    // namespaces: the forwarder saw the program accept a connection and published the socket
    if (this.#ctx.mode === 'namespaces') return this.#forwarder?.ready === true && existsSync(this.#sockPath);
    return tcpAccepts(this.#port);
  }

  async waitReady(timeoutMs: number, signal?: AbortSignal): Promise<void> {
    if (this.#state === 'created') throw new AetherError('AETHER_ERR_INTERNAL', `instance ${this.id} not started`);
    if (this.#state === 'running') return;
    const clock = this.#ctx.clock;
    let settled = false;
    return new Promise<void>((res, rej) => {
      const done = (err?: unknown): void => {
        if (settled) return;
        settled = true;
        clock.clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        if (err) rej(err);
        else res();
      };
      const timer = clock.setTimeout(() => {
        const tail = this.#logs.tail();
        done(new AetherError('AETHER_ERR_COLD_START_FAILED', `instance ${this.id} did not listen on port ${this.#port} within ${timeoutMs} ms${tail ? `; last output:\n${tail}` : ''}`));
      }, timeoutMs);
      const onAbort = (): void => done(signal?.reason ?? new Error('aborted'));
      if (signal?.aborted) return onAbort();
      signal?.addEventListener('abort', onAbort, { once: true });
      void this.exited.then((info) => done(this.#exitError(info)));
      const poll = async (): Promise<void> => {
        while (!settled) {
          if (this.#exitStarted) return; // the exited handler rejects, with the output
          if (await this.#ready()) {
            if (this.#exitStarted) return;
            if (this.#state === 'starting') this.#state = 'running';
            done();
            this.#ctx.pool?.refillSoon();
            return;
          }
          await new Promise<void>((r) => {
            this.#wake = r;
            void delay(POLL_MS).then(r);
          });
          this.#wake = undefined;
        }
      };
      poll().catch(done);
    });
  }

  async stop(graceMs = 5000): Promise<void> {
    if (this.#state === 'exited') return;
    if (this.#state === 'created') {
      this.#exit = { code: null, signal: null, reason: 'never started' };
      this.#state = 'exited';
      this.#resolveExit(this.#exit);
      return;
    }
    if (!this.#exitStarted) this.#state = 'stopping';
    this.#stopRequested = true;
    this.#signal('SIGTERM');
    const timer = this.#ctx.clock.setTimeout(() => this.#signal('SIGKILL'), graceMs);
    await this.exited;
    this.#ctx.clock.clearTimeout(timer);
  }

  #signal(sig: 'SIGTERM' | 'SIGKILL'): void {
    const child = this.#child;
    if (!child?.pid || this.#exit) return;
    if (this.#ctx.mode === 'namespaces') {
      // every process of the instance; the launcher (its PID 1) ignores SIGTERM and exits with the program
      const pids = this.#cg?.pids() ?? [];
      for (const p of pids) {
        try {
          process.kill(p, sig);
        } catch {
          // gone
        }
      }
      if (sig === 'SIGKILL' || pids.length === 0) child.kill('SIGKILL');
      return;
    }
    try {
      process.kill(-child.pid, sig); // the program's whole process group
    } catch {
      child.kill(sig);
    }
  }
}
