import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { accessSync, chmodSync, constants, existsSync, mkdirSync, readdirSync, readFileSync, readlinkSync, rmdirSync, unlinkSync } from 'node:fs';
import net from 'node:net';
import { constants as osConstants } from 'node:os';
import { dirname, isAbsolute, join, relative, resolve } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { AetherError, createLogger, systemClock, type Clock, type Logger } from '../core/index.ts';
import { findV1Mounts, InstanceCgroups, leftoverInstanceIds, v1Usable, type Controller } from './cgroup.ts';
import { LineSplitter, LogHub } from './logs.ts';
import type { Endpoint, ExitInfo, InstanceSpec, InstanceState, LogLine, Runtime, RuntimeInstance } from './types.ts';

export interface ProcessRuntimeOptions {
  /** The platform's data dir: hidden from instances; sockets live in `<dataDir>/sockets`. */
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
const NS_FLAGS = ['--pid', '--fork', '--kill-child', '--mount-proc', '--mount', '--uts', '--ipc', '--net'];
const UID_BASE = 200_000;

let warnedNone = false;

interface Tools {
  setpriv: string | undefined;
  unshare: string | undefined;
  nsenter: string | undefined;
  perl: string | undefined;
}

/** mount, setgroups, setresgid, setresuid, prctl: the syscalls launch.pl makes, by architecture. */
const SYSCALLS: Record<string, string> = { x64: '165,116,119,117,157', arm64: '40,159,149,147,167' };

function which(name: string): string | undefined {
  for (const dir of TOOL_PATH.split(':')) {
    const p = join(dir, name);
    try {
      accessSync(p, constants.X_OK);
      return p;
    } catch {
      // next
    }
  }
  return undefined;
}

/** Why namespaces mode cannot run here, or undefined when it can. */
function namespacesBlocker(tools: Tools, mounts: Partial<Record<Controller, string>>): string | undefined {
  if (process.getuid?.() !== 0) return 'not running as root';
  for (const [k, v] of Object.entries(tools)) if (!v) return `${k} not found`;
  if (!SYSCALLS[process.arch]) return `unsupported architecture ${process.arch}`;
  if (!v1Usable(mounts)) return 'cgroup v1 memory/cpu/pids controllers are not mounted and writable';
  const r = spawnSync(tools.unshare as string, [...NS_FLAGS, 'true'], { env: { PATH: TOOL_PATH }, timeout: 5000, stdio: 'ignore' });
  if (r.status !== 0) return 'unshare of pid/mount/uts/ipc/net namespaces failed';
  return undefined;
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
  if (want !== 'none') {
    const blocker = namespacesBlocker(tools, mounts);
    if (!blocker) mode = 'namespaces';
    else if (want === 'namespaces') throw new AetherError('AETHER_ERR_INTERNAL', `process runtime: namespaces isolation unavailable: ${blocker}`);
    else if (!warnedNone) {
      warnedNone = true;
      logger.warn({ reason: blocker }, `process runtime: NO ISOLATION (${blocker}); functions run as plain child processes with this process's privileges`);
    }
  } else if (!warnedNone) {
    warnedNone = true;
    logger.warn('process runtime: NO ISOLATION (forced); functions run as plain child processes with this process\'s privileges');
  }
  const socketsDir = join(dataDir, 'sockets');
  if (mode === 'namespaces') {
    mkdirSync(socketsDir, { recursive: true, mode: 0o700 });
    chmodSync(socketsDir, 0o700);
  }
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
  };
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
          const id = name.replace(/\.sock(\..*)?$/, '');
          if (!live.has(id)) unlinkSync(join(socketsDir, name));
        }
      } catch {
        // no sockets dir
      }
      if (live.size === 0) removeAgentDirs(ctx);
    },
    async close(): Promise<void> {
      await Promise.all([...live.values()].map((i) => i.stop(1000)));
      removeAgentDirs(ctx);
    },
  };
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

/** True if some socket in a /proc/<pid>/net/tcp{,6} file is LISTENing on `port`. */
function listeningIn(pid: number, port: number): boolean {
  const hex = port.toString(16).toUpperCase().padStart(4, '0');
  for (const f of ['tcp', 'tcp6']) {
    let text: string;
    try {
      text = readFileSync(`/proc/${pid}/net/${f}`, 'latin1');
    } catch {
      continue;
    }
    for (const line of text.split('\n')) {
      const cols = line.trim().split(/\s+/);
      if (cols[3] === '0A' && cols[1]?.endsWith(`:${hex}`)) return true;
    }
  }
  return false;
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
  #forwarder: ChildProcess | undefined;
  #cg: InstanceCgroups | undefined;
  #sockPath: string;
  #port = 0;
  #exit: ExitInfo | undefined;
  #resolveExit!: (e: ExitInfo) => void;
  #logs: LogHub;
  #exitStarted = false;

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
    const argv = commandFor(spec, this.#ctx, entry);
    if (this.#ctx.mode === 'namespaces') this.#startSandboxed(codeDir, argv);
    else await this.#startPlain(codeDir, argv);
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

  #startSandboxed(codeDir: string, argv: string[]): void {
    const ctx = this.#ctx;
    const spec = this.spec;
    this.#port = spec.port;
    const cg = new InstanceCgroups(ctx.mounts, ctx.agentId, spec.instanceId);
    try {
      cg.create({ memoryMb: spec.memoryMb, vcpu: spec.vcpu, pidsMax: spec.pidsMax });
    } catch (err) {
      cg.remove();
      throw new AetherError('AETHER_ERR_COLD_START_FAILED', `cannot create cgroups for ${this.id}: ${(err as Error).message}`, { cause: err });
    }
    this.#cg = cg;
    const uid = ctx.uidBase + (ctx.nextUid++ % 10_000);
    const tools = ctx.tools as Required<Tools>;
    const tmpMb = Math.max(16, Math.floor(spec.memoryMb));
    const args = [
      '--pdeathsig', 'KILL', '--', tools.unshare, ...NS_FLAGS, '--', tools.perl, LAUNCHER,
      ...cg.procsFiles(), codeDir, ctx.dataDir, String(uid), String(tmpMb), '1', SYSCALLS[process.arch] as string, ...argv,
    ];
    this.#endpoint = { kind: 'unix', path: this.#sockPath };
    try {
      unlinkSync(this.#sockPath);
    } catch {
      // no stale socket
    }
    // root tools run with a bare environment; the program's env goes through stdin (see launch.pl)
    const child = spawn(tools.setpriv, args, { env: { PATH: TOOL_PATH }, cwd: '/', stdio: ['pipe', 'pipe', 'pipe'] });
    this.#attach(child);
    child.stdin?.on('error', () => {});
    child.stdin?.end(envRecords(this.#programEnv(spec.port)));
    void this.#startForwarder(child);
  }

  /** Start the forwarder once the launcher has entered its new netns; runs beside the program's start. */
  async #startForwarder(child: ChildProcess): Promise<void> {
    if (process.env.NOFWD) return;
    const pid = child.pid;
    if (pid === undefined) return;
    const own = readlinkSync('/proc/self/ns/net');
    for (;;) {
      if (this.#exitStarted) return;
      let ns: string | undefined;
      try {
        ns = readlinkSync(`/proc/${pid}/ns/net`);
      } catch {
        return;
      }
      if (ns !== own) break;
      await delay(1);
    }
    const tools = this.#ctx.tools as Required<Tools>;
    const fwd = spawn(
      tools.setpriv,
      ['--pdeathsig', 'KILL', '--', tools.nsenter, `--net=/proc/${pid}/ns/net`, '--', process.execPath, FORWARDER, this.#sockPath, String(this.#port)],
      { env: { PATH: TOOL_PATH }, cwd: '/', stdio: ['ignore', 'ignore', 'pipe'] },
    );
    this.#forwarder = fwd;
    const split = new LineSplitter((t) => this.#logs.emit('system', t));
    fwd.stderr?.on('data', (b: Buffer) => split.write(b));
    fwd.on('error', (err) => this.#logs.emit('system', `forwarder failed to start: ${err.message}`));
    fwd.on('exit', (code, signal) => {
      if (!this.#exitStarted) this.#logs.emit('system', `forwarder exited (code ${code}, signal ${signal})`);
    });
    if (this.#exitStarted) fwd.kill('SIGKILL');
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
      // wait for the last output (it explains most failures), but not for a grandchild holding the pipe
      const grace = new Promise<void>((r) => this.#ctx.clock.setTimeout(r, 250));
      void Promise.race([ended, grace]).then(() => this.#finalize(code, signal, reason));
    };
    child.on('error', (err) => finish(null, null, `could not start: ${err.message}`));
    child.on('exit', (code, signal) => finish(code, signal));
  }

  async #finalize(code: number | null, signal: string | null, spawnError?: string): Promise<void> {
    const ctx = this.#ctx;
    const info: ExitInfo = { code, signal };
    if (this.#forwarder) this.#forwarder.kill('SIGKILL');
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
        const ooms = cg.oomKills();
        if (ooms > 0 || (info.signal === 'SIGKILL' && cg.memoryFailcnt() > 0 && this.#state !== 'stopping')) info.reason = 'killed by the memory limit (oom)';
        for (let i = 0; i < 400 && !cg.killAll(); i++) await delay(5);
        let removed = false;
        for (let i = 0; i < 100 && !(removed = cg.remove()); i++) await delay(10);
        if (!removed) ctx.logger.warn({ instanceId: this.id }, 'could not remove instance cgroups');
      }
      try {
        unlinkSync(this.#sockPath);
      } catch {
        // never created
      }
    }
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
    if (this.#ctx.mode === 'namespaces') {
      const pid = this.#child?.pid;
      return pid !== undefined && listeningIn(pid, this.#port) && (!!process.env.NOFWD || existsSync(this.#sockPath));
    }
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
          if (this.#exitStarted) return; // exited handler rejects with the output
          if (await this.#ready()) {
            if (this.#exitStarted) return;
            if (this.#state === 'starting') this.#state = 'running';
            return done();
          }
          await delay(POLL_MS);
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
