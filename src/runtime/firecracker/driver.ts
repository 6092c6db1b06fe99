/**
 * The Firecracker driver (sandbox "firecracker"): one Firecracker process per instance, driven over
 * its API socket (./api.ts). Its logger and metrics are set on its command line (launchLogging);
 * boot: machine-config → boot-source → drives (root image ro, code image ro) → network-interfaces
 * (a TAP in the VM's own netns) → mmds/config (V2) → MMDS data → InstanceStart. The program's
 * config (env included) reaches the guest only through MMDS; boot_args carry console/quiet flags,
 * the per-boot token, `aether.config=mmds` and `aether.vmm=firecracker`.
 * Snapshots: a template VM per (owner, version) boots to `AETHER-INIT READY` (waiting for config),
 * is paused and snapshotted; later instances load it, get their own config in MMDS (with the
 * template's token), and resume. Stop: SendCtrlAltDel, then SIGTERM, then SIGKILL.
 * VMs outlive the agent process (Firecracker and the forwarder in their own sessions, output to
 * files, a state.json per VM) and a restarted agent adopts them or stops them (docs/firecracker.md#adoption).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes, createHash } from 'node:crypto';
import { closeSync, existsSync, openSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { constants as osConstants } from 'node:os';
import { join } from 'node:path';
import { AetherError, createLogger, systemClock, type Clock, type Logger, type TimerHandle } from '../../core/index.ts';
import { makeExt4 } from '../../image/index.ts';
import {
  entryCommand,
  programEnv,
  type AdoptableInstance,
  type AdoptionCapability,
  type ExitInfo,
  type InstanceSpec,
  type Runtime,
  type RuntimeInstance,
  type SnapshotCapability,
} from '../index.ts';
import { InstanceBase } from '../instance.ts';
import { processesServingIn, procGone, procRef, signalPid, type ProcRef } from '../procfs.ts';
import { FileTail } from '../tail.ts';
import { stopLeftover, writeVmRecord } from '../vmstate.ts';
import { FirecrackerClient, type JsonObject } from './api.ts';
import { jailerArgv, stageIntoJail, type JailerOptions } from './jailer.ts';
import { linkRecord, netnsNetwork, type Exposed, type VmLink, type VmNetwork } from './network.ts';
import { firecrackerAlive, readFcState, type FcState } from './state.ts';

export interface FirecrackerRuntimeOptions {
  /** VM dirs (`vms/`) and snapshot templates (`templates/`); owned by this runtime. */
  stateDir: string;
  /** This agent: a restarted agent with the same id adopts the VMs it left (see docs/firecracker.md#adoption). */
  agentId: string;
  /**
   * Guest kernel — an uncompressed ELF vmlinux: Firecracker v1.16 does not boot a bzImage on x86 —
   * and the initramfs holding aether-init as /init (src/image); resolved on first use.
   */
  guest(): Promise<{ kernel: string; initrd?: string }>;
  /** Base root image for a code artifact's language runtime (shared read-only; the guest keeps writes in tmpfs). */
  baseImage(runtime: 'node' | 'python'): Promise<string>;
  /** Build a read-only ext4 image of a code dir at `out`; default src/image's makeExt4 (`mke2fs -d`, no mounts). */
  codeImage?(dir: string, out: string): Promise<void>;
  network?: VmNetwork;
  /** Firecracker binary; default `firecracker` on PATH. */
  firecracker?: string;
  /** Whole command prefix instead of [firecracker] (the tests run the fake VMM this way). */
  vmmCommand?: string[];
  /** Run Firecracker under the jailer (not with snapshots). */
  jailer?: JailerOptions;
  /** Start instances of versioned workloads from snapshots (default true). */
  snapshots?: boolean;
  /** How the guest finds the language runtimes (the base images put them on PATH). */
  guestBins?: { node: string; python: string };
  /** How long a template may take to reach `AETHER-INIT READY`. */
  templateBootTimeoutMs?: number;
  /**
   * Every file a VM writes whether or not an agent runs (console, Firecracker's stderr, logger and
   * metrics, the forwarder's output) is followed, and its read part's disk blocks are freed each
   * time this many more bytes were read (default 4 MiB): what a file holds on disk stays below this
   * plus what is not read yet, however long the VM runs.
   */
  reclaimBytes?: number;
  clock?: Clock;
  logger?: Logger;
}

export const GUEST_CODE_DIR = '/run/aether/code';
/** Kernel flags besides the token: console, quiet, reboot=k (a guest reboot ends Firecracker), keyboard for Ctrl+Alt+Del. */
export const BASE_BOOT_ARGS = 'console=ttyS0 quiet loglevel=0 reboot=k panic=1 pci=off i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd';
const READY_LINE = 'AETHER-INIT READY';
/** After aether-init reports the program's exit, the VM should be gone this soon. */
const HALT_GRACE_MS = 3000;
/** How often the console and Firecracker's output files are read. */
const TAIL_EVERY_MS = 100;
/** Default reclaimBytes (see FirecrackerRuntimeOptions). */
const RECLAIM_BYTES = 4 * 2 ** 20;
/** How often an adopted VM's pid is checked (not our child: no exit event; the API socket's close usually tells first). */
const ADOPT_POLL_MS = 200;

/** Where how far a followed file was consumed is recorded (beside it, in the VM dir): what a restarted agent resumes from. */
const offsetFileOf = (path: string): string => `${path}.offset`;

/**
 * Firecracker's logger and metrics, configured on its command line rather than by `PUT /logger` and
 * `PUT /metrics`: until configured its logger writes at Info to stdout, which is the guest's serial
 * console, so its own start-up and API request lines would be taken for the program's output.
 * Warning: what a guest can make it warn about; `--show-level` marks each line's level.
 */
export function launchLogging(log: string, metrics: string): string[] {
  return ['--log-path', log, '--level', 'Warning', '--show-level', '--metrics-path', metrics];
}

/** `aether.vmm=firecracker`: aether-init ends the VM by rebooting (Firecracker exits), not by a power-off that only halts it. */
export function bootArgs(token: string): string {
  return `${BASE_BOOT_ARGS} aether.token=${token} aether.config=mmds aether.vmm=firecracker`;
}

/** Firecracker ids: --id allows [A-Za-z0-9-], API path ids [A-Za-z0-9_]; use the intersection. */
function vmIdOf(s: string): string {
  const clean = s.replace(/[^A-Za-z0-9]/g, '');
  return (clean || randomBytes(6).toString('hex')).slice(0, 40);
}

interface Template {
  dir: string;
  token: string;
}

export interface FirecrackerRuntime extends Runtime {
  readonly snapshots?: SnapshotCapability;
  readonly adoption: AdoptionCapability;
}

export function createFirecrackerRuntime(opts: FirecrackerRuntimeOptions): FirecrackerRuntime {
  const clock = opts.clock ?? systemClock;
  const logger = opts.logger ?? createLogger('runtime-firecracker');
  const network = opts.network ?? netnsNetwork();
  const vmsDir = join(opts.stateDir, 'vms');
  const tplDir = join(opts.stateDir, 'templates');
  /** Instances of this process (started or adopted), by instance id. */
  const live = new Map<string, FcInstance>();
  const building = new Map<string, Promise<Template>>();
  const useSnapshots = opts.snapshots !== false && !opts.jailer;
  const ctx: Ctx = { opts, clock, network, vmsDir, templateVms: new Set() };
  const track = (inst: FcInstance): FcInstance => {
    live.set(inst.id, inst);
    void inst.exited.then(() => live.delete(inst.id));
    return inst;
  };
  /** A VM an earlier run of this agent left that can be taken over: ours, ready, its Firecracker and forwarder alive. */
  const adoptable = (instanceId: string): FcState | undefined => {
    if (live.has(instanceId)) return undefined;
    const vmId = vmIdOf(instanceId);
    const rec = readFcState(join(vmsDir, vmId), vmId, instanceId);
    return rec && rec.agentId === opts.agentId && rec.ready && firecrackerAlive(rec) && network.intact(rec.net, rec.endpoint) ? rec : undefined;
  };

  async function template(spec: InstanceSpec): Promise<Template> {
    const key = `${spec.owner.id}/${spec.version}`;
    let p = building.get(key);
    if (!p) {
      p = buildTemplate(ctx, spec, join(tplDir, vmIdOf(spec.owner.id), vmIdOf(spec.version ?? '')));
      // a failed template stays failed for this version (instances cold boot) until removeTemplates
      building.set(key, p);
      p.catch(() => undefined);
    }
    return p;
  }

  const snapshots: SnapshotCapability = {
    async removeTemplates(ownerId, keep = []) {
      const keepIds = new Set(keep.map(vmIdOf));
      const dir = join(tplDir, vmIdOf(ownerId));
      for (const [key] of building) if (key.startsWith(`${ownerId}/`) && !keep.includes(key.slice(ownerId.length + 1))) building.delete(key);
      const versions = safeList(dir);
      // restored VMs map the memory file privately: unlinking it does not disturb them
      for (const v of versions) if (!keepIds.has(v)) await rm(join(dir, v), { recursive: true, force: true });
    },
    templates() {
      const out: { ownerId: string; version: string; bytes: number }[] = [];
      for (const owner of safeList(tplDir))
        for (const version of safeList(join(tplDir, owner))) {
          const d = join(tplDir, owner, version);
          try {
            const meta = JSON.parse(readFileSync(join(d, 'meta.json'), 'utf8')) as { ownerId: string; version: string };
            const bytes = safeList(d).reduce((n, f) => n + statSync(join(d, f)).blocks * 512, 0);
            out.push({ ownerId: meta.ownerId, version: meta.version, bytes });
          } catch {
            // being built
          }
        }
      return out;
    },
  };

  return {
    kind: 'firecracker',
    isolation: opts.jailer ? 'microvm (firecracker, jailer)' : 'microvm (firecracker)',
    ...(useSnapshots ? { snapshots } : {}),
    async create(spec: InstanceSpec): Promise<RuntimeInstance> {
      if (live.has(spec.instanceId)) throw new AetherError('AETHER_ERR_CONFLICT', `instance ${spec.instanceId} exists`);
      return track(new FcInstance(ctx, spec, useSnapshots && spec.version !== undefined ? () => template(spec) : undefined));
    },
    adoption: {
      async list(): Promise<AdoptableInstance[]> {
        const out: AdoptableInstance[] = [];
        for (const vmId of safeList(vmsDir)) {
          const id = readFcState(join(vmsDir, vmId), vmId)?.spec.instanceId;
          const rec = id !== undefined ? adoptable(id) : undefined;
          if (rec) out.push({ spec: rec.spec, endpoint: rec.endpoint, startedAt: rec.startedAt });
        }
        return out;
      },
      async adopt(instanceId: string): Promise<RuntimeInstance> {
        const rec = adoptable(instanceId);
        if (!rec) throw new AetherError('AETHER_ERR_INTERNAL', `no live VM ${instanceId} to adopt`);
        const inst = new FcInstance(ctx, rec.spec, undefined);
        live.set(instanceId, inst);
        try {
          await inst.adopt(rec);
        } catch (err) {
          // not taken: cleanupLeftovers stops it
          live.delete(instanceId);
          throw err;
        }
        return track(inst);
      },
    },
    async cleanupLeftovers(): Promise<void> {
      // VMs of an earlier run that nobody adopted, and half-built templates' VMs
      const liveIds = new Set([...live.values()].map((i) => i.vmId));
      const ids = safeList(vmsDir).filter((id) => !liveIds.has(id));
      for (const id of ids) {
        const dir = join(vmsDir, id);
        const rec = readFcState(dir, id);
        if (rec && firecrackerAlive(rec)) {
          const client = new FirecrackerClient(rec.api);
          await stopLeftover(rec.firecracker, () => client.action('SendCtrlAltDel'));
          await client.close();
          logger.info({ instanceId: rec.spec.instanceId, pid: rec.firecracker.pid }, 'stopped a VM nobody adopted');
        }
        // what still serves a socket in there: its forwarder; a VMM with no record (a template's, an older agent's)
        for (const pid of processesServingIn(dir)) {
          signalPid(pid, 'SIGKILL');
          logger.info({ vm: id, pid }, 'killed a leftover VM process');
        }
        if (rec?.jailDir) rmSync(rec.jailDir, { recursive: true, force: true });
        rmSync(dir, { recursive: true, force: true });
      }
      for (const owner of safeList(tplDir))
        for (const v of safeList(join(tplDir, owner))) if (!existsSync(join(tplDir, owner, v, 'meta.json'))) rmSync(join(tplDir, owner, v), { recursive: true, force: true });
      await network.cleanupLeftovers(ids);
    },
    async close(): Promise<void> {
      for (const vmm of ctx.templateVms) vmm.kill('SIGKILL');
      await Promise.all([...live.values()].map((i) => i.stop(2000)));
      await Promise.allSettled(building.values());
    },
  };
}

function safeList(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

interface Ctx {
  opts: FirecrackerRuntimeOptions;
  clock: Clock;
  network: VmNetwork;
  vmsDir: string;
  /** Template VMs being built: they outlive the agent like any VM, so close() ends them. */
  templateVms: Set<Vmm>;
}

/**
 * One Firecracker process: its API client and output files. Spawned here (then our child) or
 * adopted from its record (then watched by pid and API socket). Nothing of it depends on this
 * process: its own session, no parent-death signal, stdout (the guest's serial console) and stderr
 * to files in its dir, which are followed.
 */
class Vmm {
  readonly client: FirecrackerClient;
  /** The API socket's host path, and the `--api-sock` argument (jail-relative under the jailer). */
  readonly api: string;
  readonly apiArg: string;
  readonly files: FcState['files'];
  /** Host paths → paths as Firecracker sees them (jail-relative under the jailer). */
  readonly path: (hostPath: string) => Promise<string>;
  /** The jail (removed with the VM), when jailed. */
  readonly jailDir: string | undefined;
  /** Our child, when spawned here. */
  readonly child: ChildProcess | undefined;
  /** Its pid and start time, once known (a spawned child that died at once has none). */
  readonly ref: ProcRef | undefined;
  /** Settles once the process is gone and its output files are read to the end. */
  readonly exited: Promise<ExitInfo>;
  #resolveExit!: (info: ExitInfo) => void;
  #done = false;
  #clock: Clock;
  #reclaimBytes: number;
  #tails: FileTail[] = [];
  #console: ((text: string) => void)[] = [];
  #output: ((text: string) => void)[] = [];
  #poll: TimerHandle | undefined;
  #watch: net.Socket | undefined;

  private constructor(o: { clock: Clock; reclaimBytes: number | undefined; api: string; apiArg: string; files: FcState['files']; path: (p: string) => Promise<string>; jailDir: string | undefined; child: ChildProcess | undefined; ref: ProcRef | undefined }) {
    this.#clock = o.clock;
    this.#reclaimBytes = o.reclaimBytes ?? RECLAIM_BYTES;
    this.api = o.api;
    this.apiArg = o.apiArg;
    this.files = o.files;
    this.path = o.path;
    this.jailDir = o.jailDir;
    this.child = o.child;
    this.ref = o.ref;
    this.client = new FirecrackerClient(o.api);
    this.exited = new Promise((resolve) => (this.#resolveExit = resolve));
  }

  /**
   * Follow every file Firecracker writes, each from where the last agent recorded it had handed
   * lines on (`<file>.offset`, see FileTail): output written while no agent ran is logged, once
   * (`fromEnd` only for a VM whose agent kept no record). The read part is freed by punching holes
   * (reclaimBytes), which keeps sizes and offsets: Firecracker writes its logger and metrics files
   * without O_APPEND at its own offset and never reopens them, so a truncation would only leave a
   * hole and lose what was unread; a FIFO would drop what comes while no agent reads.
   */
  #follow(fromEnd: boolean): void {
    const tail = (path: string, onLine: (text: string) => void): FileTail =>
      new FileTail({ path, clock: this.#clock, everyMs: TAIL_EVERY_MS, fromEnd, offsetFile: offsetFileOf(path), onLine, reclaimBytes: this.#reclaimBytes });
    const to = (listeners: ((text: string) => void)[]) => (t: string) => listeners.forEach((l) => l(t));
    this.#tails.push(
      tail(this.files.console, to(this.#console)),
      tail(this.files.output, to(this.#output)),
      // its logger (warnings: a guest can provoke them) as notes like its stderr; metrics are read only to be freed
      tail(this.files.log, to(this.#output)),
      tail(this.files.metrics, () => undefined),
    );
  }

  /** Lines of the guest's serial console (Firecracker's stdout). */
  onConsole(fn: (text: string) => void): void {
    this.#console.push(fn);
  }

  /** Lines Firecracker itself writes: its stderr and its logger's file. */
  onOutput(fn: (text: string) => void): void {
    this.#output.push(fn);
  }

  /** The process is gone: read the rest of its output, then settle `exited`. */
  #finish(info: ExitInfo): void {
    if (this.#done) return;
    this.#done = true;
    if (this.#poll) this.#clock.clearTimeout(this.#poll);
    this.#watch?.destroy();
    for (const t of this.#tails) t.close();
    this.#resolveExit(info);
  }

  /** Stop following without touching the VM (an adoption that did not take). */
  release(): void {
    if (this.#poll) this.#clock.clearTimeout(this.#poll);
    this.#watch?.destroy();
    for (const t of this.#tails) t.close();
    void this.client.close();
  }

  /** Signal it: our child directly; an adopted one by pid, only while it is still the same process. */
  kill(sig: NodeJS.Signals): void {
    if (this.child) {
      if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(sig);
    } else if (this.ref && !procGone(this.ref)) signalPid(this.ref.pid, sig);
  }

  /**
   * Spawn Firecracker for a fresh VM dir (its network already attached); `ready()` then waits for its
   * API. Every file it writes is created here first, in the VM dir (where the agent follows them);
   * under the jailer the logger and metrics files are linked into the jail before it runs, as its
   * command line names them from inside.
   */
  static async spawn(ctx: Ctx, dir: string, id: string, link: VmLink, log: (t: string) => void): Promise<Vmm> {
    const { opts } = ctx;
    const files = { console: join(dir, 'console.log'), output: join(dir, 'firecracker.out'), log: join(dir, 'firecracker.log'), metrics: join(dir, 'metrics.ndjson') };
    for (const f of Object.values(files)) closeSync(openSync(f, 'a', 0o600));
    let argv: string[];
    let api: string;
    let apiArg: string;
    let path: (p: string) => Promise<string> = async (p) => p;
    let jailDir: string | undefined;
    if (opts.jailer) {
      const jailer = opts.jailer;
      const j = jailerArgv(jailer, { id, firecracker: opts.firecracker ?? 'firecracker', ...(link.netns ? { netns: `/var/run/netns/${link.netns}` } : {}) });
      rmSync(j.jailDir, { recursive: true, force: true }); // a jail left by a crashed run
      // the jailer keeps a jail root that exists (and makes it the jail user's)
      path = (p) => stageIntoJail(j.root, p, jailer);
      argv = [...j.argv, ...launchLogging(await path(files.log), await path(files.metrics))];
      api = j.apiSock;
      apiArg = j.apiArg;
      jailDir = j.jailDir;
    } else {
      api = join(dir, 'api.sock');
      apiArg = api;
      const vmm = opts.vmmCommand ?? [opts.firecracker ?? 'firecracker'];
      argv = [...vmm, '--api-sock', api, '--id', id, ...launchLogging(files.log, files.metrics)];
      // `ip netns exec` execs Firecracker in place: the pid stays the VMM's
      if (link.netns) argv = ['ip', 'netns', 'exec', link.netns, ...argv];
    }
    rmSync(api, { force: true }); // Firecracker refuses an existing socket path
    log(`firecracker: ${argv.join(' ')}`);
    // Its own session, no parent-death signal, output to files: the VM outlives a killed agent,
    // which adopts it when it comes back (or stops it: cleanupLeftovers).
    const out = openSync(files.console, 'a', 0o600);
    const err = openSync(files.output, 'a', 0o600);
    let child: ChildProcess;
    try {
      child = spawn(argv[0] as string, argv.slice(1), { cwd: dir, detached: true, stdio: ['ignore', out, err], env: { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin' } });
    } finally {
      closeSync(out);
      closeSync(err);
    }
    const vmm = new Vmm({ clock: ctx.clock, reclaimBytes: ctx.opts.reclaimBytes, api, apiArg, files, path, jailDir, child, ref: procRef(child.pid) });
    vmm.#follow(false);
    child.once('error', (e) => vmm.#finish({ code: null, signal: null, reason: `firecracker could not start: ${e.message}` }));
    child.once('exit', (code, signal) => vmm.#finish({ code, signal }));
    return vmm;
  }

  /** Wait for the API socket to answer (the logger and metrics were set at launch). */
  async ready(clock: Clock): Promise<void> {
    const deadline = clock.now() + 10_000;
    for (;;) {
      if (this.#done) throw new AetherError('AETHER_ERR_VMM', `firecracker exited before its API socket was up`);
      if (existsSync(this.api)) {
        try {
          await this.client.describe();
          break;
        } catch {
          // socket bound, server not answering yet
        }
      }
      if (clock.now() > deadline) {
        this.kill('SIGKILL');
        throw new AetherError('AETHER_ERR_VMM', 'firecracker API socket did not come up within 10 s');
      }
      await clock.sleep(10);
    }
  }

  /**
   * Take over the Firecracker of a record (see FcState): its API must answer (a paused VM is
   * resumed), its files are followed from where the last agent left them (#follow), and its exit is
   * noticed by a pid check every ADOPT_POLL_MS and by the loss of a connection held open on its API socket.
   */
  static async adopt(ctx: Ctx, rec: FcState): Promise<Vmm> {
    const vmm = new Vmm({ clock: ctx.clock, reclaimBytes: ctx.opts.reclaimBytes, api: rec.api, apiArg: rec.apiArg, files: rec.files, path: async (p) => p, jailDir: rec.jailDir, child: undefined, ref: rec.firecracker });
    try {
      // the client's own timeout bounds it: a hung VMM must not hold up the agent's start
      const info = await vmm.client.describe();
      if (info.state === 'Paused') await vmm.client.resume();
      else if (info.state !== 'Running') throw new Error(`the VM is ${info.state}`);
    } catch (err) {
      vmm.release();
      throw err;
    }
    // Followed only now, with no await left before the caller attaches its log listener: the first
    // read (the output written while no agent ran) is a clock tick away, and lines read before
    // anyone listens would be lost.
    vmm.#follow(true);
    const poll = (): void => {
      vmm.#poll = ctx.clock.setTimeout(() => {
        vmm.#check();
        if (vmm.#done) return;
        vmm.#watchApi();
        poll();
      }, ADOPT_POLL_MS);
    };
    vmm.#watchApi();
    poll();
    return vmm;
  }

  /** An adopted VMM is gone (no exit status: it is not our child). */
  #check(): void {
    if (!this.#done && this.ref && procGone(this.ref)) this.#finish({ code: null, signal: null });
  }

  /** An idle connection to the API socket: Firecracker closes it when it exits. Reopened on the next poll if it closes otherwise. */
  #watchApi(): void {
    if (this.#done || this.#watch) return;
    const s = net.connect(this.api);
    this.#watch = s;
    s.on('error', () => undefined);
    s.on('close', () => {
      if (this.#watch === s) this.#watch = undefined;
      this.#check();
    });
  }

  /** The boot-path configuration (everything before InstanceStart). */
  async configure(spec: InstanceSpec, link: VmLink, token: string, drives: string[], guest: { kernel: string; initrd?: string }): Promise<void> {
    const { kernel, initrd } = guest;
    const c = this.client;
    await c.putMachineConfig({ vcpu_count: Math.max(1, Math.min(32, Math.round(spec.resources.vcpu))), mem_size_mib: Math.max(64, spec.resources.memoryMb), smt: false });
    await c.putBootSource({ kernel_image_path: await this.path(kernel), ...(initrd ? { initrd_path: await this.path(initrd) } : {}), boot_args: bootArgs(token) });
    // vda = root image, vdb = code (aether-init mounts them itself: no is_root_device / root=)
    for (const [i, p] of drives.entries()) await c.putDrive({ drive_id: i === 0 ? 'rootfs' : 'code', path_on_host: await this.path(p), is_root_device: false, is_read_only: true });
    await c.putNetworkInterface({ iface_id: 'eth0', host_dev_name: link.tap, guest_mac: link.guestMac });
    await c.putMmdsConfig({ version: 'V2', network_interfaces: ['eth0'], ipv4_address: '169.254.169.254' });
  }

  /** Ctrl+Alt+Del, then SIGTERM, then SIGKILL, each given part of `graceMs`. */
  async shutdown(clock: Clock, graceMs: number): Promise<ExitInfo> {
    const wait = (ms: number): Promise<boolean> => Promise.race([this.exited.then(() => true), clock.sleep(ms).then(() => false)]);
    if (!this.#done) {
      await this.client.action('SendCtrlAltDel').catch(() => undefined);
      if (!(await wait(graceMs / 2))) {
        this.kill('SIGTERM');
        if (!(await wait(graceMs / 2))) this.kill('SIGKILL');
      }
    }
    return this.exited;
  }
}

/** The guest's config (contract: MMDS v2 at /aether/config). */
function guestConfig(spec: InstanceSpec, token: string, link: VmLink, bins: { node: string; python: string }, now: number): JsonObject {
  const a = spec.artifact;
  const cmd = spec.command ?? (a.kind === 'code' ? entryCommand(a.runtime, a.entrypoint, bins) : []);
  return {
    token,
    instance_id: spec.instanceId,
    hostname: vmIdOf(spec.instanceId).slice(0, 32),
    cmd,
    ...(spec.cwd ?? a.kind === 'code' ? { cwd: spec.cwd ?? GUEST_CODE_DIR } : {}),
    env: programEnv(spec, spec.listen.port),
    seed: randomBytes(64).toString('base64'),
    // a restored guest's clock is the template's: set it
    time_ms: now,
    net: link.net,
    port: spec.listen.port,
  };
}

/** vda = root image (read-only), vdb = the code image (read-only) for code artifacts. */
async function drivesFor(ctx: Ctx, spec: InstanceSpec, dir: string): Promise<string[]> {
  const a = spec.artifact;
  const ext4 = ctx.opts.codeImage ?? ((d: string, o: string) => makeExt4(d, o, { label: 'aether-code', freeMb: 1 }));
  if (a.kind === 'image') return [a.path];
  if (a.kind === 'rootfs') {
    const root = join(dir, 'root.ext4');
    await ext4(a.dir, root);
    return [root];
  }
  const code = join(dir, 'code.ext4');
  const [root] = await Promise.all([ctx.opts.baseImage(a.runtime), ext4(a.dir, code)]);
  return [root, code];
}

/** Boot a template VM to READY, snapshot it, keep vmstate + memory + drives + token in `dir`. */
async function buildTemplate(ctx: Ctx, spec: InstanceSpec, dir: string): Promise<Template> {
  try {
    const meta = JSON.parse(await readFile(join(dir, 'meta.json'), 'utf8')) as { token: string };
    return { dir, token: meta.token };
  } catch {
    // not built yet (or half built by a crashed run)
  }
  await rm(dir, { recursive: true, force: true });
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const id = `t${createHash('sha256').update(dir).digest('hex').slice(0, 16)}`;
  const vmDir = join(ctx.vmsDir, id);
  await mkdir(vmDir, { recursive: true, mode: 0o700 });
  const link = await ctx.network.attach(id, vmDir);
  let vmm: Vmm | undefined;
  try {
    const token = randomBytes(16).toString('hex');
    // drives live in the template dir: a snapshot re-opens them at the same paths
    const drives = await drivesFor(ctx, spec, dir);
    // no record: a template VM is never adopted; cleanupLeftovers finds it by its API socket
    vmm = await Vmm.spawn(ctx, vmDir, id, link, () => undefined);
    ctx.templateVms.add(vmm);
    const ready = new Promise<void>((resolve) => vmm?.onConsole((t) => t.includes(READY_LINE) && resolve()));
    await vmm.ready(ctx.clock);
    await vmm.configure(spec, link, token, drives, await ctx.opts.guest());
    await vmm.client.action('InstanceStart');
    const timeout = ctx.opts.templateBootTimeoutMs ?? 120_000;
    const ok = await Promise.race([ready.then(() => true), vmm.exited.then(() => false), ctx.clock.sleep(timeout).then(() => false)]);
    if (!ok) throw new AetherError('AETHER_ERR_VMM', `template VM did not reach "${READY_LINE}" within ${timeout} ms`);
    await vmm.client.pause();
    await vmm.client.createSnapshot({ snapshot_path: join(dir, 'vmstate'), mem_file_path: join(dir, 'memory'), snapshot_type: 'Full' });
    await writeFile(join(dir, 'meta.json'), JSON.stringify({ ownerId: spec.owner.id, version: spec.version, token }));
    return { dir, token };
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  } finally {
    vmm?.kill('SIGKILL');
    await vmm?.exited;
    if (vmm) ctx.templateVms.delete(vmm);
    await vmm?.client.close();
    await link.detach();
    await rm(vmDir, { recursive: true, force: true });
  }
}

class FcInstance extends InstanceBase<InstanceSpec> implements RuntimeInstance {
  /** Its Firecracker id and VM dir name. */
  readonly vmId: string;
  #ctx: Ctx;
  #template: (() => Promise<Template>) | undefined;
  #vmm: Vmm | undefined;
  #link: VmLink | undefined;
  #exposed: Exposed | undefined;
  #dir: string;
  #stopping: Promise<void> | undefined;
  #stopRequested = false;
  #exiting = false;
  /** How the program ended, as aether-init reported it on the console. */
  #program: ExitInfo | undefined;
  #reason: string | undefined;
  /** What state.json holds (rewritten when the program is ready). */
  #record: FcState | undefined;
  /** Taken over from an earlier run: not our child, its exit status is unknown. */
  #adopted = false;
  /** The forwarder's output file, followed. */
  #tails: FileTail[] = [];

  constructor(ctx: Ctx, spec: InstanceSpec, template: (() => Promise<Template>) | undefined) {
    super(spec, ctx.clock);
    this.#ctx = ctx;
    this.#template = template;
    this.vmId = vmIdOf(spec.instanceId);
    this.#dir = join(ctx.vmsDir, this.vmId);
  }

  protected pid(): number | undefined {
    return this.#vmm?.ref?.pid;
  }

  async start(): Promise<void> {
    if (this.state !== 'created') throw new AetherError('AETHER_ERR_INTERNAL', `instance ${this.id} already started`);
    this.state = 'starting';
    const { opts } = this.#ctx;
    try {
      let tpl: Template | undefined;
      if (this.#template) {
        try {
          tpl = await this.#template();
        } catch (err) {
          this.logs.emit('system', `no snapshot template (${(err as Error).message}): cold boot`);
        }
      }
      if (this.#stopRequested) throw new AetherError('AETHER_ERR_COLD_START_FAILED', `instance ${this.id} was stopped while starting`);
      await rm(this.#dir, { recursive: true, force: true });
      await mkdir(this.#dir, { recursive: true, mode: 0o700 });
      const link = await this.#ctx.network.attach(this.vmId, this.#dir);
      this.#link = link;
      // The endpoint first (the forwarder waits for the guest): the record names it from the start.
      const exposed = await link.expose(this.spec.listen.port);
      this.#expose(exposed, false);
      const vmm = await Vmm.spawn(this.#ctx, this.#dir, this.vmId, link, (t) => this.logs.emit('system', t));
      this.#attach(vmm);
      // The record a restarted agent adopts (or stops) it by, written before the guest runs anything.
      if (vmm.ref) {
        this.#record = {
          v: 1, agentId: opts.agentId, spec: this.spec, endpoint: this.endpoint, firecracker: vmm.ref, vmId: this.vmId, api: vmm.api, apiArg: vmm.apiArg,
          files: vmm.files, net: linkRecord(link, exposed, this.spec.listen.port), ...(vmm.jailDir ? { jailDir: vmm.jailDir } : {}),
          restored: tpl !== undefined, startedAt: this.#ctx.clock.now(), ready: false,
        };
        this.#persist();
      }
      await vmm.ready(this.#ctx.clock);
      const bins = opts.guestBins ?? { node: 'node', python: 'python3' };
      if (tpl) {
        await vmm.client.loadSnapshot({
          snapshot_path: join(tpl.dir, 'vmstate'),
          mem_backend: { backend_type: 'File', backend_path: join(tpl.dir, 'memory') },
          network_overrides: [{ iface_id: 'eth0', host_dev_name: link.tap }],
          resume_vm: false,
        });
        // MMDS data is not in the snapshot: this instance's own identity, the template's token
        await vmm.client.putMmds({ aether: { config: guestConfig(this.spec, tpl.token, link, bins, this.#ctx.clock.now()) } });
        await vmm.client.resume();
        this.logs.emit('system', `restored from snapshot ${this.spec.owner.id}@${this.spec.version ?? ''}`);
      } else {
        const token = randomBytes(16).toString('hex');
        const [drives, guest] = await Promise.all([drivesFor(this.#ctx, this.spec, this.#dir), opts.guest()]);
        await vmm.configure(this.spec, link, token, drives, guest);
        await vmm.client.putMmds({ aether: { config: guestConfig(this.spec, token, link, bins, this.#ctx.clock.now()) } });
        await vmm.client.action('InstanceStart');
      }
      if (this.state === 'starting') this.state = 'running';
    } catch (err) {
      this.logs.emit('system', `start failed: ${(err as Error).message}`);
      this.#vmm?.kill('SIGKILL');
      if (!this.#vmm) this.#onExit({ code: null, signal: null, reason: (err as Error).message });
      await this.exited;
      throw err;
    }
  }

  /**
   * Re-attach to a VM an earlier run of this agent left running (see FcState): its API socket,
   * its files (from where the last agent recorded it had read them), its network and forwarder as
   * they are; 'running' from the start.
   */
  async adopt(rec: FcState): Promise<void> {
    if (this.state !== 'created') throw new AetherError('AETHER_ERR_INTERNAL', `instance ${this.id} already started`);
    this.state = 'starting';
    let vmm: Vmm;
    try {
      vmm = await Vmm.adopt(this.#ctx, rec);
    } catch (err) {
      // not ours after all: leave the VM to cleanupLeftovers
      this.state = 'created';
      throw new AetherError('AETHER_ERR_INTERNAL', `instance ${this.id}: could not re-attach to its VM: ${(err as Error).message}`, { cause: err });
    }
    this.#adopted = true;
    this.#record = rec;
    const { link, exposed } = this.#ctx.network.adopt(rec.net, rec.endpoint);
    this.#link = link;
    this.#expose(exposed, true);
    this.#attach(vmm);
    this.state = 'running';
    this.logs.emit('system', `adopted (firecracker pid ${rec.firecracker.pid}, ${rec.endpoint.kind === 'unix' ? rec.endpoint.path : 'endpoint'})`);
  }

  /** The endpoint (the program listens on the guest's address) and the forwarder's output. */
  #expose(exposed: Exposed, fromEnd: boolean): void {
    this.#exposed = exposed;
    const guest = { address: (this.#link?.net.address ?? '').split('/')[0] as string, port: this.spec.listen.port };
    this.endpointValue = { ...exposed.endpoint, guest };
    if (exposed.output) {
      const reclaimBytes = this.#ctx.opts.reclaimBytes ?? RECLAIM_BYTES;
      this.#tails.push(new FileTail({ path: exposed.output, clock: this.#ctx.clock, everyMs: TAIL_EVERY_MS, fromEnd, offsetFile: offsetFileOf(exposed.output), reclaimBytes, onLine: (t) => this.logs.emit('system', `forwarder: ${t}`) }));
    }
  }

  #attach(vmm: Vmm): void {
    this.#vmm = vmm;
    // the serial console (ttyS0) is the program's output (kernel messages are quiet); aether-init's own lines are notes
    vmm.onConsole((t) => this.#console(t));
    vmm.onOutput((t) => this.logs.emit('system', `firecracker: ${t}`));
    void vmm.exited.then((info) => this.#onExit(this.#exitInfo(info)));
  }

  /** The program's status when aether-init said it; else the VMM's (unknown for an adopted one). */
  #exitInfo(vmm: ExitInfo): ExitInfo {
    if (this.#program) return { ...this.#program };
    const reason = this.#reason ?? vmm.reason ?? (this.#adopted && !this.#stopRequested ? 'the VM exited (status unknown: adopted instance)' : undefined);
    return { code: vmm.code, signal: vmm.signal, ...(reason ? { reason } : {}) };
  }

  /** Rewrite state.json (atomically) from #record. */
  #persist(): void {
    if (!this.#record || this.#exiting) return;
    try {
      writeVmRecord(this.#dir, this.#record);
    } catch (err) {
      this.logs.emit('system', `state record not written: ${(err as Error).message}`);
    }
  }

  #console(text: string): void {
    // READY (printed on every boot; only template builds wait for it) is aether-init's, not the program's
    if (text === READY_LINE) return this.logs.emit('system', text);
    const m = /^AETHER-INIT: (.*)$/.exec(text);
    if (!m) return this.logs.emit('stdout', text);
    this.logs.emit('system', text);
    const said = m[1] as string;
    const exit = /^program exited with (status|signal) (\d+)/.exec(said);
    if (exit) {
      const n = Number(exit[2]);
      const sig = exit[1] === 'signal' ? Object.entries(osConstants.signals).find(([, v]) => v === n)?.[0] : undefined;
      this.#program = exit[1] === 'status' ? { code: n, signal: null } : { code: null, signal: sig ?? `signal ${n}` };
      this.markGone();
      // a guest that halts instead of rebooting leaves Firecracker running: end it ourselves
      const vmm = this.#vmm;
      this.#ctx.clock.setTimeout(() => vmm?.kill('SIGKILL'), HALT_GRACE_MS);
    } else if (/config rejected|cannot start|fatal/i.test(said)) this.#reason = `guest: ${said}`;
  }

  async waitReady(timeoutMs: number, signal?: AbortSignal): Promise<void> {
    const deadline = this.#ctx.clock.now() + timeoutMs;
    for (;;) {
      if (this.exitInfo) throw new AetherError('AETHER_ERR_COLD_START_FAILED', `the VM exited before its port accepted (${this.exitInfo.reason ?? (this.exitInfo.signal ? `signal ${this.exitInfo.signal}` : `code ${this.exitInfo.code}`)})${this.logs.tail(5) ? `: ${this.logs.tail(5)}` : ''}`);
      if (this.#exposed?.ready()) {
        // from now on a restarted agent may adopt it
        if (this.#record && !this.#record.ready) {
          this.#record = { ...this.#record, ready: true };
          this.#persist();
        }
        return;
      }
      if (signal?.aborted) throw signal.reason instanceof Error ? signal.reason : new AetherError('AETHER_ERR_COLD_START_FAILED', 'waiting for the VM was aborted');
      if (this.#ctx.clock.now() >= deadline) throw new AetherError('AETHER_ERR_COLD_START_FAILED', `the program did not listen on port ${this.spec.listen.port} within ${timeoutMs} ms`);
      await this.#ctx.clock.sleep(10, signal).catch(() => undefined);
    }
  }

  stop(graceMs = 5000): Promise<void> {
    this.#stopping ??= (async () => {
      this.#stopRequested = true;
      if (this.state !== 'exited') this.state = 'stopping';
      if (this.#vmm) await this.#vmm.shutdown(this.#ctx.clock, graceMs);
      else if (!this.exitInfo) this.#onExit({ code: null, signal: null, reason: 'stopped before start' });
      await this.exited;
    })();
    return this.#stopping;
  }

  #onExit(info: ExitInfo): void {
    if (this.#exiting) return;
    this.#exiting = true;
    this.markGone();
    void (async () => {
      // whatever way the VM ended, nothing of it stays: forwarder, TAP + netns, jail, VM dir
      await this.#exposed?.close();
      for (const t of this.#tails) t.close();
      await this.#vmm?.client.close();
      await this.#link?.detach().catch(() => undefined);
      if (this.#vmm?.jailDir) await rm(this.#vmm.jailDir, { recursive: true, force: true });
      await rm(this.#dir, { recursive: true, force: true });
      this.exitInfo = info;
      this.state = 'exited';
      this.logs.emit('system', `VM exited (code ${info.code}, signal ${info.signal}${info.reason ? `, ${info.reason}` : ''})`);
      this.resolveExit(info);
    })();
  }
}
