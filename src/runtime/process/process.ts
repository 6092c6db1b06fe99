import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, closeSync, constants as fsConstants, existsSync, mkdirSync, openSync, readdirSync, readFileSync, readlinkSync, realpathSync, renameSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import type { Readable } from 'node:stream';
import { constants as osConstants } from 'node:os';
import { basename, dirname, isAbsolute, join, relative, resolve } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { AetherError, createLogger, freePort, systemClock, type Clock, type Logger } from '../../core/index.ts';
import { findV1Mounts, InstanceCgroups, leftoverInstanceIds, removeAgentCgroups, sweepDeadAgents, v1Usable, type Controller } from '../cgroup.ts';
import { findBin } from '../host.ts';
import { procGone, procRef, signalPid, type ProcRef } from '../procfs.ts';
import { DEFAULT_LOG_LIMITS, LineSplitter, LogPump, type LogLimits } from '../logs.ts';
import { seccompFilter } from './seccomp.ts';
import { releaseContainer, releaseLeftoverContainers, writeContainerRecord, type ContainerPlan } from './container.ts';
import type { Endpoint, ExitInfo, InstanceSpec, Runtime, RuntimeInstance } from './legacy.ts';
import { InstanceBase } from '../instance.ts';
import { DEFAULT_NET_POOL, VethPool, vethBlocker, vethTools, type VethNet } from './veth.ts';
import { LinkRelays } from './links.ts';

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
  /** Per-instance limits on reading the program's output (defaults: DEFAULT_LOG_LIMITS). */
  logLimits?: Partial<LogLimits>;
  /**
   * How the platform reaches a sandboxed program (namespaces mode): 'veth' (a veth pair and a /30 per
   * sandbox, see veth.ts), 'forwarder' (a per-instance forwarder process and a unix socket), 'auto'
   * (default): veth when root with `ip` and `nft`, else the forwarder.
   */
  network?: 'auto' | 'veth' | 'forwarder';
  /** The /16 the veth network's /30s come from (default 10.213.0.0/16). */
  netPool?: string;
}

const SANDBOX_DIR = join(dirname(fileURLToPath(import.meta.url)), 'sandbox');
const LAUNCHER = join(SANDBOX_DIR, 'launch.pl');
const FORWARDER = join(SANDBOX_DIR, 'forwarder.mjs');
const CONTAINER_LAUNCHER = join(SANDBOX_DIR, 'container.pl');
const TOOL_PATH = '/usr/sbin:/usr/bin:/sbin:/bin';
const USER_PATH = '/usr/local/bin:/usr/bin:/bin';
/**
 * Readiness and netns polls: fast, since they sit on the cold-start path. Polls of OS state use
 * real (ref'd) timers so a pending start or teardown keeps the process alive; timeouts use the clock.
 */
const POLL_MS = 3;
/** The instance's own namespaces; the network one comes from its forwarder or, with veth, is made with them (see Spare). */
const NS_FLAGS = ['--pid', '--fork', '--kill-child', '--mount-proc', '--mount', '--uts', '--ipc'];
/** Warm spares kept ready (launcher + veth pair; with the forwarder network also a forwarder, ~45 MB RSS). */
const POOL_SIZE = 1;
/** How long after a program is ready the pool is refilled (see SparePool.refillSoon). */
const REFILL_DELAY_MS = 100;
const UID_BASE = 200_000;
/** How often an adopted instance's processes are checked (it is not our child: no exit event). */
const ADOPT_POLL_MS = 100;
/** Room in the launcher's command line for the code dir it names once assigned (perl's $0 cannot grow it). */
const PS_PAD = ' '.repeat(512);
/** Where launch.pl mounts the code inside the sandbox. */
const SANDBOX_CODE = '/run/aether/code';
/** mount, setgroups, setresgid, setresuid, prctl: the syscalls launch.pl makes, by architecture. */
const SYSCALLS: Record<string, string> = { x64: '165,116,119,117,157', arm64: '40,159,149,147,167' };
/** container.pl's: the same, then pivot_root, umount2, mknodat. */
const CONTAINER_SYSCALLS: Record<string, string> = { x64: '165,116,119,117,157,155,166,259', arm64: '40,159,149,147,167,41,39,33' };

let warnedNone = false;
let warnedForwarder = false;

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
  /** Set in namespaces mode with the veth network; else instances are reached through forwarders. */
  veth: VethPool | undefined;
  dataDir: string;
  agentId: string;
  socketsDir: string;
  /** Records of container instances' loop devices (container.ts). */
  containersDir: string;
  tools: Tools;
  mounts: Record<Controller, string>;
  nodeBin: string;
  pythonBin: string;
  uidBase: number;
  nextUid: number;
  pool: SparePool | undefined;
  /** Dirs hidden from every instance (dataDir + hidePaths, the ones safe to hide). */
  hide: string[];
  /** The seccomp filter launch.pl installs before exec (hex of its BPF instructions). */
  seccomp: string;
  logLimits: LogLimits;
  /** `<dataDir>/instances/<agentId>`: one dir per instance (adoption record, log FIFOs); spares' dirs start with a dot. */
  instancesDir: string;
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
  else if (want === 'namespaces') throw new AetherError('AETHER_ERR_VALIDATION', `config: --isolation namespaces, but this host cannot isolate: ${blocker} (see \`aether doctor\`)`);
  else if (!warnedNone) {
    warnedNone = true;
    logger.warn({ reason: blocker }, `process runtime: NO ISOLATION (${blocker}): functions run as plain child processes with this process's user and full access to its files and network`);
  }
  let veth: VethPool | undefined;
  if (mode === 'namespaces' && opts.network !== 'forwarder') {
    const why = vethBlocker();
    if (!why) veth = new VethPool(vethTools(), opts.netPool ?? DEFAULT_NET_POOL);
    else if (opts.network === 'veth') throw new AetherError('AETHER_ERR_VALIDATION', `config: --sandbox-network veth, but this host cannot give sandboxes a veth: ${why} (see \`aether doctor\`)`);
    else if (!warnedForwarder) {
      warnedForwarder = true;
      logger.warn({ reason: why }, `process runtime: sandboxes are reached through a forwarder process each (no veth network: ${why})`);
    }
  }
  const socketsDir = join(dataDir, 'sockets');
  const ctx: Ctx = {
    clock,
    logger,
    mode,
    veth,
    dataDir,
    agentId,
    socketsDir,
    containersDir: join(dataDir, 'containers'),
    tools,
    mounts: mounts as Record<Controller, string>,
    nodeBin: opts.nodeBin ?? process.execPath,
    pythonBin: opts.pythonBin ?? (existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3'),
    uidBase: UID_BASE + (createHash('sha256').update(agentId).digest().readUInt16BE(0) % 64) * 10_000,
    nextUid: 0,
    pool: undefined,
    hide: [],
    seccomp: mode === 'namespaces' ? seccompFilter(process.arch).toString('hex') : '',
    logLimits: { ...DEFAULT_LOG_LIMITS, ...opts.logLimits },
    instancesDir: join(dataDir, 'instances', agentId),
  };
  for (const d of [dataDir, ...(opts.hidePaths ?? []).map((p) => resolve(p))]) {
    if (safeToHide(ctx, d)) ctx.hide.push(d);
    else if (mode === 'namespaces') logger.warn({ dir: d }, 'process runtime: not hiding a system dir or one holding an interpreter');
  }
  if (mode === 'namespaces') {
    // root-owned 0700: only the agent (root) may connect to instances' sockets
    mkdirSync(socketsDir, { recursive: true, mode: 0o700 });
    chmodSync(socketsDir, 0o700);
    mkdirSync(ctx.instancesDir, { recursive: true, mode: 0o700 });
    veth?.installHostTable();
    ctx.pool = new SparePool(ctx, POOL_SIZE);
    ctx.pool.fill();
  }
  const live = new Map<string, ProcessInstance>();
  const track = (inst: ProcessInstance): ProcessInstance => {
    live.set(inst.id, inst);
    void inst.exited.then(() => live.delete(inst.id));
    return inst;
  };
  return {
    kind: 'process',
    isolation: mode === 'namespaces' ? 'namespaces+cgroups' : 'none',
    reach: mode === 'namespaces' && !veth ? 'forwarder' : 'tcp',
    async create(spec: InstanceSpec): Promise<RuntimeInstance> {
      if (live.has(spec.instanceId)) throw new AetherError('AETHER_ERR_CONFLICT', `instance ${spec.instanceId} exists`);
      return track(new ProcessInstance(ctx, spec));
    },
    adoption: {
      async list(): Promise<AdoptionRecord[]> {
        // an AdoptionRecord has spec, endpoint and startedAt, as the interface asks
        if (mode !== 'namespaces') return [];
        return readRecords(ctx).filter((r) => !live.has(r.spec.instanceId) && recordAlive(r));
      },
      async adopt(instanceId: string): Promise<RuntimeInstance> {
        if (live.has(instanceId)) throw new AetherError('AETHER_ERR_CONFLICT', `instance ${instanceId} exists`);
        const rec = mode === 'namespaces' ? readRecords(ctx).find((r) => r.spec.instanceId === instanceId) : undefined;
        if (!rec || !recordAlive(rec)) throw new AetherError('AETHER_ERR_INTERNAL', `no live instance ${instanceId} to adopt`);
        const inst = track(new ProcessInstance(ctx, rec.spec));
        inst.adopt(rec);
        return inst;
      },
    },
    async cleanupLeftovers(): Promise<void> {
      if (mode !== 'namespaces') return;
      // Instances of an earlier run that nobody adopted: their forwarders live outside the cgroups.
      for (const rec of readRecords(ctx)) {
        if (live.has(rec.spec.instanceId)) continue;
        for (const p of [rec.forwarder, rec.launcher]) if (p && sameProcess(p)) signalPid(p.pid, 'SIGKILL');
        if (rec.net) ctx.veth?.detach(rec.net.ifname);
        logger.info({ instanceId: rec.spec.instanceId }, 'stopped an instance nobody adopted');
      }
      try {
        for (const name of readdirSync(ctx.instancesDir)) {
          // our own spares and live instances keep their dirs
          if (name.startsWith(`.spare-${process.pid}-`) || live.has(name)) continue;
          rmSync(join(ctx.instancesDir, name), { recursive: true, force: true });
        }
      } catch {
        // no instances dir
      }
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
          if (name.startsWith(`.fwd-${process.pid}-`) || live.has(name.replace(/\.sock(\.raw)?$/, ''))) continue;
          const path = join(socketsDir, name);
          unlinkSync(path);
        }
      } catch {
        // no sockets dir
      }
      for (const id of await releaseLeftoverContainers(ctx.containersDir, (i) => live.has(i))) logger.info({ instanceId: id }, 'released a leftover container');
      // veth pairs of this agent's earlier runs (a pair goes with its namespace; this catches the rest)
      const liveLinks = new Set([...live.values()].flatMap((i) => i.netIfname ?? []));
      const stray = ctx.veth?.sweep(agentId, (owner, ifname) => liveLinks.has(ifname) || owner.startsWith(`.spare-${process.pid}-`)) ?? [];
      if (stray.length > 0) logger.info({ links: stray }, 'removed leftover sandbox veth pairs');
      // link relays' firewall elements of links that are gone or not live (after the sweep above)
      const elements = ctx.veth?.sweepLinkElements(agentId, (ifname) => liveLinks.has(ifname)) ?? [];
      if (elements.length > 0) logger.info({ elements }, 'removed leftover link relay firewall elements');
      if (live.size === 0) removeAgentDirs(ctx);
      for (const id of sweepDeadAgents(ctx.mounts, agentId)) logger.info({ agent: id }, 'removed the empty cgroups of an agent that is gone');
    },
    async close(): Promise<void> {
      ctx.pool?.close();
      await Promise.all([...live.values()].map((i) => i.stop(1000)));
      removeAgentDirs(ctx);
      // the host's sandbox table is shared by every agent here: the last one out removes it
      ctx.veth?.removeHostTableIfUnused();
    },
  };
}

/** What an instance persists in its dir (record.json) so a restarted agent can adopt it. */
export interface AdoptionRecord {
  v: 1;
  spec: InstanceSpec;
  endpoint: Endpoint;
  /** The launcher chain (unshare; its child launch.pl is the namespace's PID 1) and the forwarder (forwarder network only). */
  launcher: ProcRef;
  forwarder?: ProcRef;
  /** The veth network's pair and addresses (veth network only): an adopted instance keeps them. */
  net?: VethNet;
  /** The program's uid: not handed to another instance while this one lives. */
  uid: number;
  /** ms since epoch */
  startedAt: number;
}

/** Still the same process (not exited, not a zombie, pid not reused). */
const sameProcess = (p: ProcRef): boolean => !procGone(p);

function recordAlive(r: AdoptionRecord): boolean {
  return sameProcess(r.launcher) && (!r.forwarder || sameProcess(r.forwarder));
}

function readRecords(ctx: Ctx): AdoptionRecord[] {
  const out: AdoptionRecord[] = [];
  let names: string[];
  try {
    names = readdirSync(ctx.instancesDir);
  } catch {
    return out;
  }
  for (const name of names) {
    if (name.startsWith('.')) continue;
    try {
      const r = JSON.parse(readFileSync(join(ctx.instancesDir, name, 'record.json'), 'utf8')) as AdoptionRecord;
      if (r.v === 1 && r.spec.instanceId === name && r.launcher?.pid > 0 && (r.forwarder ? r.forwarder.pid > 0 : typeof r.net?.address === 'string')) out.push(r);
    } catch {
      // not (yet) a complete record: cleanupLeftovers removes it
    }
  }
  return out;
}

/**
 * An instance's stdout and stderr are FIFOs in its dir, not pipes to the agent, so its output
 * outlives a restarting agent: the sandbox holds them open read-write (writes never fail for want
 * of a reader; with nobody reading, the program blocks once the pipe buffer is full) and each
 * agent that owns the instance reads them.
 */
function makeFifos(dir: string): [number, number] {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const r = spawnSync('mkfifo', ['-m', '0600', join(dir, 'out'), join(dir, 'err')], { env: { PATH: TOOL_PATH }, stdio: 'ignore' });
  if (r.status !== 0) throw new AetherError('AETHER_ERR_INTERNAL', `cannot make the log FIFOs in ${dir}`);
  return [openSync(join(dir, 'out'), fsConstants.O_RDWR), openSync(join(dir, 'err'), fsConstants.O_RDWR)];
}

/** A non-blocking reader of a FIFO (EOF once every writer, i.e. the whole sandbox, is gone). */
function fifoReader(path: string): net.Socket | undefined {
  try {
    const fd = openSync(path, fsConstants.O_RDONLY | fsConstants.O_NONBLOCK);
    return new net.Socket({ fd, readable: true, writable: false });
  } catch {
    return undefined;
  }
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
  removeAgentCgroups(ctx.mounts, ctx.agentId);
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
    // Its own session, no parent-death signal: an assigned forwarder outlives a restarting agent
    // (an unassigned one exits when its stdin closes).
    this.child = spawn(t.unshare, ['--net', '--', process.execPath, FORWARDER, tmpPath], {
      env: { PATH: TOOL_PATH },
      cwd: '/',
      detached: true,
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
 * An instance's sandbox, started ahead of need: the launcher chain (unshare of the namespaces →
 * launch.pl as PID 1) blocked on stdin, and its network. With the veth network the chain makes its
 * own network namespace and the spare gets its veth pair and addresses (veth.ts) as soon as that
 * namespace exists; with the forwarder network a forwarder makes the namespace first and the chain
 * joins it (setpriv → nsenter → unshare → launch.pl). Nothing of the user runs in it before the
 * assignment, and it joins its cgroups only then. Not an instance: no cgroup, no uid, not in `live`.
 */
class Spare {
  /** The forwarder (forwarder network only). */
  readonly fwd: Forwarder | undefined;
  /** The launcher chain, once its network is ready; undefined if the sandbox could not be made. */
  readonly launcher: Promise<ChildProcess | undefined>;
  /** Its dir (log FIFOs); the instance that takes it renames it to its own. */
  readonly dir: string;
  /** Its veth pair and addresses (veth network), once made. */
  net: VethNet | undefined;
  #child: ChildProcess | undefined;
  #dead = false;
  #ctx: Ctx;

  constructor(ctx: Ctx, dir: string, fwd: Forwarder | undefined, launcher = LAUNCHER) {
    this.#ctx = ctx;
    this.fwd = fwd;
    this.dir = dir;
    this.launcher = fwd ? fwd.netnsReady().then((ok) => (ok ? this.#spawn(launcher, `/proc/${fwd.child.pid}/ns/net`) : undefined)) : this.#withVeth(launcher);
  }

  async #withVeth(launcher: string): Promise<ChildProcess | undefined> {
    const ctx = this.#ctx;
    const child = this.#spawn(launcher, undefined);
    const pid = child?.pid;
    if (!child || pid === undefined || !(await netnsOf(child))) return undefined;
    if (this.#dead) return undefined;
    try {
      this.net = await (ctx.veth as VethPool).attach(pid, `${ctx.agentId}:${basename(this.dir)}`);
    } catch (err) {
      ctx.logger.warn({ err }, 'process runtime: a sandbox network could not be made');
      this.kill();
      return undefined;
    }
    if (this.#dead) {
      ctx.veth?.detach(this.net.ifname);
      return undefined;
    }
    return child;
  }

  /** Start the launcher chain, in the namespace `netns` or (undefined) in a new one of its own. */
  #spawn(launcher: string, netns: string | undefined): ChildProcess | undefined {
    if (this.#dead) return undefined;
    const ctx = this.#ctx;
    const t = ctx.tools as SandboxTools;
    // No parent-death signal and its own session: an instance outlives a restarting agent, which
    // adopts it or stops it (cleanupLeftovers). `--kill-child` still ties launch.pl to unshare.
    // An unassigned spare ends by itself when its stdin closes (launch.pl: no assignment).
    const chain = [t.unshare, ...(netns ? [] : ['--net']), ...NS_FLAGS, '--', t.perl, launcher, PS_PAD];
    const [cmd, ...args] = netns ? [t.nsenter, `--net=${netns}`, '--', ...chain] : chain;
    let out: number, err: number;
    try {
      [out, err] = makeFifos(this.dir);
    } catch (e) {
      ctx.logger.warn({ err: e, dir: this.dir }, 'process runtime: a spare could not be made');
      return undefined;
    }
    // root tools run with a bare environment; the assignment (and the program's env) goes through stdin
    let child: ChildProcess;
    try {
      child = spawn(cmd as string, args, { env: { PATH: TOOL_PATH }, cwd: '/', detached: true, stdio: ['pipe', out, err] });
    } finally {
      closeSync(out);
      closeSync(err);
    }
    this.#child = child;
    // an idle spare must not keep the agent's event loop alive (the instance refs it)
    child.unref();
    for (const st of [child.stdin, child.stdout, child.stderr]) (st as unknown as { unref?: () => void } | null)?.unref?.();
    child.stdin?.on('error', () => {});
    child.on('error', () => {});
    return child;
  }

  /** Ready to take an assignment at once (its network is there). */
  get warm(): boolean {
    return this.fwd ? this.fwd.listening : this.net !== undefined;
  }

  /** True while its processes can still serve an instance. */
  get alive(): boolean {
    const c = this.#child;
    return !this.#dead && !(this.fwd?.exited ?? false) && (c === undefined || (c.exitCode === null && c.signalCode === null));
  }

  /** End it: its processes, its spare dir, its veth pair (the instance that took it calls this once it exited). */
  kill(): void {
    this.#dead = true;
    this.fwd?.kill();
    if (this.dir.includes('/.spare-')) rmSync(this.dir, { recursive: true, force: true });
    // the chain execs down to `unshare --kill-child`: killing it kills the launcher (PID 1) and the namespace
    const c = this.#child;
    if (c && c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    if (this.net) this.#ctx.veth?.detach(this.net.ifname);
  }
}

/** Resolves true once `child` is in a network namespace other than ours; false if it died first. */
async function netnsOf(child: ChildProcess): Promise<boolean> {
  const own = readlinkSync('/proc/self/ns/net');
  for (;;) {
    const pid = child.pid;
    if (pid === undefined || child.exitCode !== null || child.signalCode !== null) return false;
    try {
      if (readlinkSync(`/proc/${pid}/ns/net`) !== own) return true;
    } catch {
      return false;
    }
    await delay(1);
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
    const n = this.#n++;
    const ctx = this.#ctx;
    const fwd = ctx.veth ? undefined : new Forwarder(ctx, join(ctx.socketsDir, `.fwd-${process.pid}-${n}.tmp`));
    const spare = new Spare(ctx, join(ctx.instancesDir, `.spare-${process.pid}-${n}`), fwd);
    const drop = (): void => {
      if (!this.#idle.includes(spare)) return; // taken: the instance handles it
      this.#idle = this.#idle.filter((x) => x !== spare);
      spare.kill();
    };
    fwd?.child.once('exit', drop);
    void spare.launcher.then((c) => {
      if (c) c.once('exit', drop);
      else drop();
    });
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
    let i = this.#idle.findIndex((s) => s.warm && s.alive);
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

function tcpAccepts(host: string, port: number): Promise<boolean> {
  return new Promise((res) => {
    const s = net.connect({ host, port });
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

class ProcessInstance extends InstanceBase<InstanceSpec> implements RuntimeInstance {
  #ctx: Ctx;
  #child: ChildProcess | undefined;
  #forwarder: Forwarder | undefined;
  #spare: Spare | undefined;
  #cg: InstanceCgroups | undefined;
  #sockPath: string;
  #port = 0;
  #exitStarted = false;
  #stopRequested = false;
  #forwarderLost = false;
  /** Wakes a waitReady poll early (the forwarder reported ready). */
  #wake: (() => void) | undefined;
  /** Set when this instance was adopted from an earlier run: not our child, watched by polling. */
  #adopted: AdoptionRecord | undefined;
  #adoptPoll: NodeJS.Timeout | undefined;
  /** The relays of its links (veth network, see links.ts). */
  #links: LinkRelays | undefined;

  constructor(ctx: Ctx, spec: InstanceSpec) {
    super(spec, ctx.clock);
    this.#ctx = ctx;
    this.#sockPath = join(ctx.socketsDir, `${spec.instanceId}.sock`);
  }

  protected pid(): number | undefined {
    return this.#child?.pid ?? this.#adopted?.launcher.pid;
  }

  get #dir(): string {
    return join(this.#ctx.instancesDir, this.id);
  }

  /** Its veth pair's host-side name (veth network), for cleanupLeftovers. */
  get netIfname(): string | undefined {
    return (this.#spare?.net ?? this.#adopted?.net)?.ifname;
  }

  /** Re-attach to a sandbox an earlier run of this agent left (see AdoptionRecord). */
  adopt(rec: AdoptionRecord): void {
    this.#adopted = rec;
    this.endpointValue = rec.endpoint;
    this.#port = rec.spec.port;
    this.#cg = new InstanceCgroups(this.#ctx.mounts, this.#ctx.agentId, this.id);
    try {
      this.#cg.claim();
    } catch (err) {
      // not fatal: the instance serves on; only the sweep after a crash of ours would miss its dir
      this.#ctx.logger.warn({ instanceId: this.id, err: String(err) }, 'could not mark the adopted instance\'s cgroups as ours');
    }
    this.state = 'running';
    const n = rec.uid - this.#ctx.uidBase;
    if (n >= 0 && n < 10_000 && n >= this.#ctx.nextUid) this.#ctx.nextUid = n + 1;
    this.logs.emit('system', `adopted (launcher pid ${rec.launcher.pid})`);
    // the relays died with the agent that made them: new ones, and the sandbox's table pointed at them
    void this.#openLinks(rec.launcher.pid, rec.net).catch((err: unknown) => this.logs.emit('system', `links not reachable: ${(err as Error).message}`));
    const finish = this.#pump(fifoReader(join(this.#dir, 'out')), fifoReader(join(this.#dir, 'err')));
    // Not our child: no exit event. Poll both processes (a real timer: OS state, not time).
    this.#adoptPoll = setInterval(() => {
      if (rec.forwarder && !sameProcess(rec.forwarder) && !this.#exitStarted && !this.#forwarderLost) {
        this.markGone();
        this.logs.emit('system', 'forwarder exited');
        this.#forwarderLost = true;
        this.#signal('SIGKILL');
      }
      if (!sameProcess(rec.launcher)) {
        clearInterval(this.#adoptPoll);
        // its exit status went to the agent that started it
        finish(null, null, this.#stopRequested || this.#forwarderLost ? undefined : 'exited (status unknown: adopted instance)');
      }
    }, ADOPT_POLL_MS);
  }

  async start(): Promise<void> {
    if (this.state !== 'created') throw new AetherError('AETHER_ERR_INTERNAL', `instance ${this.id} already started`);
    const spec = this.spec;
    if (!/^[A-Za-z0-9._-]+$/.test(spec.instanceId)) throw new AetherError('AETHER_ERR_VALIDATION', `bad instance id ${JSON.stringify(spec.instanceId)}`);
    if (spec.container) return this.#startContainer(spec.container);
    const codeDir = resolve(spec.codeDir);
    const entry = resolve(codeDir, spec.entrypoint);
    const rel = relative(codeDir, entry);
    if (rel === '' || rel.startsWith('..') || isAbsolute(rel)) throw new AetherError('AETHER_ERR_VALIDATION', `entrypoint ${spec.entrypoint} is outside the code dir`);
    this.state = 'starting';
    // the sandbox sees the code at SANDBOX_CODE, a plain child at its real path
    const argv = commandFor(spec, this.#ctx, this.#ctx.mode === 'namespaces' ? join(SANDBOX_CODE, rel) : entry);
    try {
      if (this.#ctx.mode === 'namespaces') await this.#startSandboxed(codeDir, argv);
      else await this.#startPlain(codeDir, argv);
    } catch (err) {
      this.markGone();
      this.#links?.close();
      this.#spare?.kill();
      this.#cg?.remove();
      if (this.#ctx.mode === 'namespaces') rmSync(this.#dir, { recursive: true, force: true });
      this.exitInfo = { code: null, signal: null, reason: `could not start: ${(err as Error).message}` };
      this.state = 'exited';
      this.resolveExit(this.exitInfo);
      throw err;
    }
  }

  async #startContainer(plan: ContainerPlan): Promise<void> {
    if (this.#ctx.mode !== 'namespaces') throw new AetherError('AETHER_ERR_CONTAINER_UNAVAILABLE', `instance ${this.id}: ${plan.kind} artifacts need the namespaces sandbox (root)`);
    this.state = 'starting';
    try {
      await this.#startSandboxed(plan.source, plan.argv, plan);
    } catch (err) {
      this.markGone();
      this.#links?.close();
      this.#spare?.kill();
      this.#cg?.remove();
      await releaseContainer(this.#ctx.containersDir, this.id);
      this.exitInfo = { code: null, signal: null, reason: `could not start: ${(err as Error).message}` };
      this.state = 'exited';
      this.resolveExit(this.exitInfo);
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

  async #startSandboxed(codeDir: string, argv: string[], plan?: ContainerPlan): Promise<void> {
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
    if (!ctx.veth) {
      for (const path of [this.#sockPath, `${this.#sockPath}.raw`]) {
        try {
          unlinkSync(path);
        } catch {
          // no stale socket
        }
      }
    }
    // a container gets a chain of its own (container.pl), started now: services start rarely
    const spare = plan
      ? new Spare(
          ctx,
          join(ctx.instancesDir, `.spare-${process.pid}-${spec.instanceId}`),
          ctx.veth ? undefined : new Forwarder(ctx, join(ctx.socketsDir, `.fwd-${process.pid}-${spec.instanceId}.tmp`)),
          CONTAINER_LAUNCHER,
        )
      : (ctx.pool as SparePool).take();
    this.#spare = spare;
    const fwd = spare.fwd;
    this.#forwarder = fwd;
    fwd?.attach(
      (text) => this.logs.emit('system', `forwarder: ${text}`),
      () => this.#wake?.(),
    );
    fwd?.child.once('exit', (code, signal) => {
      if (this.#exitStarted) return;
      // without its forwarder the instance is unreachable: end it
      this.markGone();
      this.logs.emit('system', `forwarder exited (code ${code}, signal ${signal})`);
      this.#forwarderLost = true;
      this.#signal('SIGKILL');
    });
    const child = await spare.launcher;
    if (!child || !spare.alive) throw new AetherError('AETHER_ERR_COLD_START_FAILED', `instance ${this.id}: the sandbox could not start`);
    if (this.#stopRequested) throw new AetherError('AETHER_ERR_COLD_START_FAILED', `instance ${this.id} was stopped while starting`);
    // before the program runs: its first connection to a link already finds the relay
    await this.#openLinks(child.pid, spare.net);
    const uid = ctx.uidBase + (ctx.nextUid++ % 10_000);
    if (plan) {
      const record = writeContainerRecord(ctx.containersDir, spec.instanceId, plan.source);
      // container.pl's assignment (see its header), then the program's env
      const assignment = [
        ...cg.joinFiles(), plan.kind, plan.source, record, String(plan.uid ?? uid), String(plan.gid ?? uid), String(Math.max(16, Math.floor(spec.memoryMb))),
        CONTAINER_SYSCALLS[process.arch] as string, ctx.seccomp, plan.workdir, String(plan.writable.length), ...plan.writable, String(argv.length), ...argv,
      ];
      this.#launch(child, `${assignment.join('\0')}\0${envRecords(plan.env)}`, spare, uid);
      return;
    }
    // "over any other function's code": the code dir's parent is the code cache
    const hide = outermost([...ctx.hide, ...[dirname(codeDir)].filter((d) => safeToHide(ctx, d))]);
    const tmpMb = Math.max(16, Math.floor(spec.memoryMb));
    // launch.pl's assignment (see its header), then the program's env; all on stdin, never on a command line
    const assignment = [
      ...cg.joinFiles(), codeDir, String(uid), String(tmpMb), '1', SYSCALLS[process.arch] as string, ctx.seccomp,
      String(hide.length), ...hide, String(argv.length), ...argv,
    ];
    this.#launch(child, `${assignment.join('\0')}\0${envRecords(this.#programEnv(spec.port))}`, spare, uid);
  }

  /** The relays of the spec's links, when it has any (veth network; elsewhere only a note in its log). */
  async #openLinks(pid: number | undefined, sandboxNet: VethNet | undefined): Promise<void> {
    const targets = this.spec.links ?? [];
    if (targets.length === 0) return;
    const veth = this.#ctx.veth;
    if (!veth || !sandboxNet || pid === undefined) {
      this.logs.emit('system', 'links are not reachable from this sandbox: the host has no veth network (see docs/sandbox.md)');
      return;
    }
    try {
      this.#links = await LinkRelays.open(veth, sandboxNet, pid, targets, this.#ctx.logger);
    } catch (err) {
      throw new AetherError('AETHER_ERR_COLD_START_FAILED', `instance ${this.id}: ${(err as Error).message}`, { cause: err });
    }
    // stopped meanwhile (an adoption's relays open after the instance is live)
    if (this.#exitStarted || this.exitInfo) this.#links.close();
    else this.logs.emit('system', `links: ${this.#links.relays.map((r) => `${r.target.host}:${r.target.port} via ${sandboxNet.host}:${r.port}`).join(', ')}`);
  }

  /** Hand the waiting launcher its assignment (and the forwarder its socket); record what adoption needs. */
  #launch(child: ChildProcess, input: string, spare: Spare, uid: number): void {
    const ctx = this.#ctx;
    const spec = this.spec;
    const fwd = spare.fwd;
    const net = spare.net;
    // veth: the program's port on its sandbox's address, straight through the kernel
    this.endpointValue = net ? { kind: 'tcp', host: net.address, port: spec.port } : { kind: 'unix', path: this.#sockPath, preamble: true };
    rmSync(this.#dir, { recursive: true, force: true });
    renameSync(spare.dir, this.#dir);
    const launcher = procRef(child.pid);
    const forwarder = fwd ? procRef(fwd.child.pid) : undefined;
    if (!launcher || (fwd && !forwarder) || (!fwd && !net)) throw new AetherError('AETHER_ERR_COLD_START_FAILED', `instance ${this.id}: the sandbox exited before its assignment`);
    // what a restarted agent needs to adopt it (written before the program runs: a crash of the
    // agent from here on leaves an instance that is adopted or stopped, never forgotten)
    const rec: AdoptionRecord = { v: 1, spec, endpoint: this.endpointValue, launcher, ...(forwarder ? { forwarder } : {}), ...(net ? { net } : {}), uid, startedAt: ctx.clock.now() };
    writeFileSync(join(this.#dir, 'record.json.tmp'), JSON.stringify(rec), { mode: 0o600 });
    renameSync(join(this.#dir, 'record.json.tmp'), join(this.#dir, 'record.json'));
    child.ref();
    for (const st of [child.stdin, child.stdout, child.stderr]) (st as unknown as { ref?: () => void } | null)?.ref?.();
    this.#attach(child);
    child.stdin?.end(input);
    fwd?.assign(this.#sockPath, this.spec.port);
  }

  async #startPlain(codeDir: string, argv: string[]): Promise<void> {
    const ctx = this.#ctx;
    this.#port = await freePort();
    this.endpointValue = { kind: 'tcp', host: '127.0.0.1', port: this.#port };
    const env = this.#programEnv(this.#port);
    // setpriv only to tie the child's life to ours; it execs the program (no extra process)
    const [cmd, ...rest] = ctx.tools.setpriv ? [ctx.tools.setpriv, '--pdeathsig', 'KILL', '--', ...argv] : argv;
    const child = spawn(cmd as string, rest, { env, cwd: codeDir, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    this.#attach(child);
  }

  #attach(child: ChildProcess): void {
    this.#child = child;
    this.logs.emit('system', `starting ${this.spec.entrypoint} (${this.#ctx.mode === 'namespaces' ? 'namespaces+cgroups' : 'no isolation'})`);
    // namespaces: the output goes to the instance's FIFOs (see makeFifos), else to pipes
    const sandboxed = this.#ctx.mode === 'namespaces';
    const finish = this.#pump(sandboxed ? fifoReader(join(this.#dir, 'out')) : child.stdout, sandboxed ? fifoReader(join(this.#dir, 'err')) : child.stderr);
    child.on('error', (err) => finish(null, null, `could not start: ${err.message}`));
    child.on('exit', (code, signal) => finish(code, signal));
  }

  /** Read the program's output; returns what to call once it has exited. */
  #pump(stdout: Readable | null | undefined, stderr: Readable | null | undefined): (code: number | null, signal: string | null, reason?: string) => void {
    const pump = new LogPump(
      this.#ctx.clock,
      this.#ctx.logLimits,
      (name, text) => this.logs.emit(name, text),
      (text, dropped) => this.logs.emit('system', text, dropped),
    );
    pump.add('stdout', stdout);
    pump.add('stderr', stderr);
    pump.sealed();
    let done = false;
    const finish = (code: number | null, signal: string | null, reason?: string): void => {
      if (done) return;
      done = true;
      this.#exitStarted = true;
      this.markGone();
      this.#wake?.();
      // wait for the last output (it explains most failures), but not for a grandchild holding the pipe
      pump.drain();
      void Promise.race([pump.ended, delay(250)]).then(() => {
        pump.close();
        return this.#finalize(code, signal, reason);
      });
    };
    return finish;
  }

  async #finalize(code: number | null, signal: string | null, spawnError?: string): Promise<void> {
    const ctx = this.#ctx;
    const info: ExitInfo = { code, signal };
    this.#links?.close();
    this.#spare?.kill();
    if (this.#adoptPoll) clearInterval(this.#adoptPoll);
    const adopted = this.#adopted;
    if (adopted?.forwarder && sameProcess(adopted.forwarder)) signalPid(adopted.forwarder.pid, 'SIGKILL');
    // (a taken spare's kill() above deleted its veth pair; an adopted instance has no spare)
    if (adopted?.net) ctx.veth?.detach(adopted.net.ifname);
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
        const oom = cg.oomKills() > 0 || (info.signal === 'SIGKILL' && this.state !== 'stopping' && cg.memoryFailcnt() > 0);
        if (oom) info.reason = 'killed by the memory limit (oom)';
        for (let i = 0; i < 400 && !cg.killAll(); i++) await delay(5);
        let removed = false;
        for (let i = 0; i < 100 && !(removed = cg.remove()); i++) await delay(10);
        if (!removed) ctx.logger.warn({ instanceId: this.id }, 'could not remove instance cgroups');
      }
      for (const path of [this.#sockPath, `${this.#sockPath}.raw`]) {
        try {
          unlinkSync(path);
        } catch {
          // never published
        }
      }
      if (this.spec.container) await releaseContainer(ctx.containersDir, this.id);
      rmSync(this.#dir, { recursive: true, force: true });
    }
    if (this.#forwarderLost && !info.reason) info.reason = 'its forwarder exited';
    if (spawnError) info.reason = spawnError;
    this.exitInfo = info;
    this.state = 'exited';
    this.logs.emit('system', `exited (code ${info.code}, signal ${info.signal}${info.reason ? `, ${info.reason}` : ''})`);
    this.resolveExit(info);
  }

  async #ready(): Promise<boolean> {
    // veth: the program accepts on its address (DNAT'd to its loopback)
    const e = this.endpointValue;
    if (this.#ctx.mode === 'namespaces' && e?.kind === 'tcp') return tcpAccepts(e.host, e.port);
    // forwarder: it saw the program accept a connection and published the socket
    if (this.#ctx.mode === 'namespaces') return this.#forwarder?.ready === true && existsSync(this.#sockPath);
    return tcpAccepts('127.0.0.1', this.#port);
  }

  async waitReady(timeoutMs: number, signal?: AbortSignal): Promise<void> {
    if (this.state === 'created') throw new AetherError('AETHER_ERR_INTERNAL', `instance ${this.id} not started`);
    if (this.state === 'running') return;
    return this.waitListening(timeoutMs, signal, () => this.#port, async (settled, done) => {
      while (!settled()) {
        if (this.#exitStarted) return; // the exited handler rejects, with the output
        if (await this.#ready()) {
          if (this.#exitStarted) return;
          if (this.state === 'starting') this.state = 'running';
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
    });
  }

  async stop(graceMs = 5000): Promise<void> {
    if (this.state === 'exited') return;
    if (this.state === 'created') {
      this.markGone();
      this.exitInfo = { code: null, signal: null, reason: 'never started' };
      this.state = 'exited';
      this.resolveExit(this.exitInfo);
      return;
    }
    if (!this.#exitStarted) this.state = 'stopping';
    this.#stopRequested = true;
    this.#signal('SIGTERM');
    const timer = this.#ctx.clock.setTimeout(() => this.#signal('SIGKILL'), graceMs);
    await this.exited;
    this.#ctx.clock.clearTimeout(timer);
  }

  #signal(sig: 'SIGTERM' | 'SIGKILL'): void {
    const adopted = this.#adopted;
    if (adopted && !this.exitInfo) {
      // as below, with pids instead of a child: the forwarder is not in the cgroup
      const pids = this.#cg?.pids() ?? [];
      for (const p of pids) signalPid(p, sig);
      if (sig === 'SIGKILL' || pids.length === 0) {
        for (const p of [adopted.launcher, adopted.forwarder]) if (p && sameProcess(p)) signalPid(p.pid, 'SIGKILL');
      }
      return;
    }
    const child = this.#child;
    if (!child?.pid || this.exitInfo) return;
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
