import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, existsSync, openSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { mkdir, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { join, resolve } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { AetherError, createLogger, freePort, systemClock, type Clock, type Logger, type TimerHandle } from '../../core/index.ts';
import { ensureBaseImage, ensureInitramfs, makeExt4 } from '../../image/index.ts';
import { findBin } from '../host.ts';
import { LineSplitter } from '../logs.ts';
import {
  describeWorkload,
  entryCommand,
  programEnv,
  type AdoptableInstance,
  type AdoptionCapability,
  type ExitInfo,
  type InstanceSpec,
  type Runtime,
  type RuntimeInstance,
  type SnapshotCapability,
} from '../types.ts';
import { Qmp } from './qmp.ts';
import { InstanceBase } from '../instance.ts';
import { procRef, signalPid } from '../procfs.ts';
import { FileTail } from '../tail.ts';
import { stopLeftover, within, writeVmRecord } from '../vmstate.ts';
import { qemuAlive, qemuGone, readVmState, type VmState } from './state.ts';

export interface QemuRuntimeOptions {
  /** This driver's own dir (instances, per-version code drives, snapshot templates). */
  dataDir: string;
  agentId: string;
  clock?: Clock;
  logger?: Logger;
  /** Default: qemu-system-x86_64 (env AETHER_QEMU). */
  qemuBin?: string;
  /** Guest kernel (default: env AETHER_GUEST_KERNEL, else the newest /boot/vmlinuz-*-cloud-amd64). */
  kernelPath?: string;
  /** 'auto' (default): KVM when /dev/kvm works, else TCG. */
  accel?: 'auto' | 'kvm' | 'tcg';
  /** Start instances from per-version snapshot templates (default true). */
  snapshots?: boolean;
  /** Where base images and the initramfs are cached (default: the image cache). */
  imageCacheDir?: string;
  /** Progress of first-use builds (base image, initramfs). */
  onProgress?: (message: string) => void;
  /** Tests only: send configs with a wrong token (the guest must refuse to start the program). */
  wrongTokenForTests?: boolean;
}

/** QEMU user networking: the guest's fixed address and the host as seen from the guest. */
const GUEST_ADDRESS = '10.0.2.15';
const GUEST_NET = { address: `${GUEST_ADDRESS}/24`, gateway: '10.0.2.2' };
/** RAM for the guest kernel, aether-init and page cache on top of the workload's memory. */
const VM_OVERHEAD_MB = 96;
/** A probe connection that slirp keeps open this long reached a listening guest (a refused one is closed at once). */
const PROBE_QUIET_MS = 400;
const PROBE_EVERY_MS = 100;
const TCG_MIN_STARTUP_MS = 180_000;
/** How often an adopted VM's pid is checked (not our child: no exit event; QMP's close usually tells first). */
const ADOPT_POLL_MS = 200;
/** How often the console and QEMU output files are read. */
const TAIL_EVERY_MS = 100;
/** Where how far a followed file was consumed is recorded (beside it, in the instance dir): what a restarted agent resumes from. */
const offsetFileOf = (path: string): string => `${path}.offset`;
/** How long adoption waits for an adopted VM's QMP to answer. */
const ADOPT_QMP_MS = 10_000;
/** Bumped when the qemu command line changes shape: older templates cannot be restored. */
const TEMPLATE_FORMAT = 'qemu-microvm-v1';

interface Ctx {
  agentId: string;
  clock: Clock;
  logger: Logger;
  dataDir: string;
  qemuBin: string;
  accel: 'kvm' | 'tcg';
  snapshots: boolean;
  kernelPath: string | undefined;
  imageCacheDir: string | undefined;
  onProgress: ((m: string) => void) | undefined;
  wrongToken: boolean;
  templates: Templates;
  /** One build per code drive. */
  building: Map<string, Promise<void>>;
}

function kvmUsable(): boolean {
  try {
    const fd = readFileSync('/proc/cpuinfo', 'utf8');
    return existsSync('/dev/kvm') && /\b(vmx|svm)\b/.test(fd);
  } catch {
    return false;
  }
}

/** Host TSC in kHz: microvm under TCG has no HPET/PIT to calibrate against and hangs without it. */
function tscKhz(): number {
  try {
    const m = /cpu MHz\s*:\s*([\d.]+)/.exec(readFileSync('/proc/cpuinfo', 'utf8'));
    if (m?.[1]) return Math.round(Number(m[1]) * 1000);
  } catch {
    // fall through
  }
  return 2_000_000;
}

const sha = (s: string): string => createHash('sha256').update(s).digest('hex').slice(0, 24);

/** Shell-quoted for QEMU's exec: migration URIs (paths are ours, but may hold spaces). */
function shq(p: string): string {
  return `'${p.replace(/'/g, `'\\''`)}'`;
}

/**
 * The QEMU microVM sandbox: `-M microvm`, KVM when present else TCG, one vCPU; QMP for control;
 * user networking with `restrict=on` (the guest reaches no host service) and one forwarded loopback
 * port; config and program output over virtio-serial; the workload's code as a read-only ext4
 * drive on a shared read-only base image (the guest keeps its writes in RAM). Instances of one
 * function version start from a snapshot of a template booted once (see docs/qemu.md). VMs
 * outlive the agent process (own session, every channel served by QEMU, a state.json per VM) and a
 * restarted agent adopts them or stops them (docs/qemu.md#adoption).
 */
export function createQemuRuntime(opts: QemuRuntimeOptions): Runtime & { snapshots: SnapshotCapability; adoption: AdoptionCapability } {
  const logger = opts.logger ?? createLogger('runtime-qemu');
  const qemuBin = opts.qemuBin ?? process.env['AETHER_QEMU'] ?? findBin('qemu-system-x86_64');
  if (!qemuBin) throw new AetherError('AETHER_ERR_INTERNAL', 'qemu runtime: qemu-system-x86_64 not found (apt install qemu-system-x86)');
  const want = opts.accel ?? 'auto';
  const accel = want === 'auto' ? (kvmUsable() ? 'kvm' : 'tcg') : want;
  const dataDir = resolve(opts.dataDir);
  const ctx: Ctx = {
    agentId: opts.agentId,
    clock: opts.clock ?? systemClock,
    logger,
    dataDir,
    qemuBin,
    accel,
    snapshots: opts.snapshots ?? true,
    kernelPath: opts.kernelPath,
    imageCacheDir: opts.imageCacheDir,
    onProgress: opts.onProgress,
    wrongToken: opts.wrongTokenForTests === true,
    templates: new Templates(join(dataDir, 'versions')),
    building: new Map(),
  };
  const live = new Map<string, QemuInstance>();
  const instancesDir = join(dataDir, 'instances');
  /** A VM an earlier run of this agent left that can be taken over: ours, ready, its QEMU alive. */
  const adoptable = (id: string): VmState | undefined => {
    if (live.has(id)) return undefined;
    const rec = readVmState(join(instancesDir, id), id);
    return rec && rec.agentId === ctx.agentId && rec.ready && qemuAlive(rec) ? rec : undefined;
  };
  return {
    kind: 'qemu',
    isolation: `microvm (${accel})`,
    // Without KVM a cold boot takes 10-30 s on a busy 2-core host: never give up on it sooner.
    ...(accel === 'tcg' ? { minStartupMs: TCG_MIN_STARTUP_MS } : {}),
    snapshots: {
      removeTemplates: (ownerId, keep = []) => ctx.templates.remove(ownerId, keep),
      templates: () => ctx.templates.list(),
    },
    async create(spec: InstanceSpec): Promise<RuntimeInstance> {
      if (!/^[A-Za-z0-9._-]+$/.test(spec.instanceId)) throw new AetherError('AETHER_ERR_VALIDATION', `bad instance id ${JSON.stringify(spec.instanceId)}`);
      if (live.has(spec.instanceId)) throw new AetherError('AETHER_ERR_CONFLICT', `instance ${spec.instanceId} exists`);
      const inst = new QemuInstance(ctx, spec);
      live.set(spec.instanceId, inst);
      void inst.exited.then(() => live.delete(spec.instanceId));
      return inst;
    },
    adoption: {
      async list(): Promise<AdoptableInstance[]> {
        const out: AdoptableInstance[] = [];
        for (const name of await readdir(instancesDir).catch(() => [] as string[])) {
          const rec = adoptable(name);
          if (rec) out.push({ spec: rec.spec, endpoint: rec.endpoint, startedAt: rec.startedAt });
        }
        return out;
      },
      async adopt(instanceId: string): Promise<RuntimeInstance> {
        const rec = adoptable(instanceId);
        if (!rec) throw new AetherError('AETHER_ERR_INTERNAL', `no live VM ${instanceId} to adopt`);
        const inst = new QemuInstance(ctx, rec.spec);
        live.set(instanceId, inst);
        try {
          await inst.adopt(rec);
        } catch (err) {
          // not taken: cleanupLeftovers stops it
          live.delete(instanceId);
          throw err;
        }
        void inst.exited.then(() => live.delete(instanceId));
        return inst;
      },
    },
    async cleanupLeftovers(): Promise<void> {
      // VMs of an earlier run that nobody adopted: QMP quit, SIGKILL if that does not end them.
      // Templates and code drives are rebuilt on demand: with no VM left, none is kept.
      for (const name of await readdir(instancesDir).catch(() => [] as string[])) {
        if (live.has(name)) continue;
        const idir = join(instancesDir, name);
        const rec = readVmState(idir, name);
        if (rec && qemuAlive(rec)) {
          await stopLeftover(rec.qemu, async () => {
            const qmp = await Qmp.connect(rec.qmp);
            try {
              await qmp.execute('quit');
            } finally {
              qmp.close();
            }
          });
          logger.info({ instanceId: name, pid: rec.qemu.pid }, 'stopped a VM nobody adopted');
        }
        // older agents wrote only a pid file (their VMs died with them: pdeathsig)
        const pid = Number((await readFile(join(idir, 'qemu.pid'), 'utf8').catch(() => '')).trim());
        if (pid > 0) {
          const cmd = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
          if (cmd.includes(idir)) {
            try {
              process.kill(pid, 'SIGKILL');
            } catch {
              // gone
            }
            logger.info({ instanceId: name, pid }, 'killed a leftover VM');
          }
        }
        await rm(idir, { recursive: true, force: true });
      }
      if (live.size === 0) await rm(join(dataDir, 'versions'), { recursive: true, force: true });
    },
    async close(): Promise<void> {
      await Promise.all([...live.values()].map((i) => i.stop(2000)));
    },
  };
}

interface TemplateMeta {
  format: string;
  ownerId: string;
  version: string;
  /** The kernel command line the template booted with (its token): restores reuse it. */
  append: string;
  /** The qemu arguments that must match on restore (machine, drives, devices). */
  fixedArgs: string[];
}

/** Per-(owner, version) dirs: the read-only code drive, and the snapshot template once made. */
class Templates {
  readonly root: string;
  /** Template builds in progress (key -> true). */
  readonly building = new Set<string>();
  constructor(root: string) {
    this.root = root;
  }
  dir(ownerId: string, version: string): string {
    return join(this.root, ownerId.replace(/[^A-Za-z0-9._-]/g, '_'), sha(version));
  }
  async ready(dir: string): Promise<TemplateMeta | undefined> {
    try {
      const meta = JSON.parse(await readFile(join(dir, 'template.json'), 'utf8')) as TemplateMeta;
      if (meta.format !== TEMPLATE_FORMAT) return undefined;
      await stat(join(dir, 'snapshot.bin'));
      return meta;
    } catch {
      return undefined;
    }
  }
  async remove(ownerId: string, keep: readonly string[]): Promise<void> {
    const odir = join(this.root, ownerId.replace(/[^A-Za-z0-9._-]/g, '_'));
    const keepDirs = new Set(keep.map((v) => this.dir(ownerId, v)));
    for (const name of await readdir(odir).catch(() => [] as string[])) {
      const d = join(odir, name);
      // Running VMs keep their open drive and snapshot files: unlinking them is safe.
      if (!keepDirs.has(d)) await rm(d, { recursive: true, force: true });
    }
    if ((await readdir(odir).catch(() => [])).length === 0) await rm(odir, { recursive: true, force: true });
  }
  list(): { ownerId: string; version: string; bytes: number }[] {
    const out: { ownerId: string; version: string; bytes: number }[] = [];
    for (const o of readdirSyncSafe(this.root)) {
      for (const v of readdirSyncSafe(join(this.root, o))) {
        try {
          const meta = JSON.parse(readFileSync(join(this.root, o, v, 'template.json'), 'utf8')) as TemplateMeta;
          const bytes = statSizeSafe(join(this.root, o, v, 'snapshot.bin'));
          out.push({ ownerId: meta.ownerId, version: meta.version, bytes });
        } catch {
          // no template (yet) in this version dir
        }
      }
    }
    return out;
  }
}

function readdirSyncSafe(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}
function statSizeSafe(p: string): number {
  try {
    return statSync(p).size;
  } catch {
    return 0;
  }
}

/**
 * One connection through the forwarded port: slirp accepts at once, then closes it when the
 * guest refuses (nothing listening); one that stays open reached the program.
 */
function probe(port: number): Promise<boolean> {
  return new Promise((res) => {
    const s = net.connect({ host: '127.0.0.1', port });
    let done = false;
    const finish = (ok: boolean): void => {
      if (done) return;
      done = true;
      clearTimeout(t);
      s.destroy();
      res(ok);
    };
    const t = setTimeout(() => finish(true), PROBE_QUIET_MS);
    s.once('error', () => finish(false));
    s.once('end', () => finish(false));
    s.once('close', () => finish(false));
  });
}

class QemuInstance extends InstanceBase<InstanceSpec> implements RuntimeInstance {
  #ctx: Ctx;
  #dir: string;
  #child: ChildProcess | undefined;
  #qmp: Qmp | undefined;
  /** Our connections to the ctl and log ports (QEMU serves them: a restarted agent connects again). */
  #conns: net.Socket[] = [];
  #ctlConn: net.Socket | undefined;
  #tails: FileTail[] = [];
  /** What state.json holds (rewritten when the program is ready). */
  #record: VmState | undefined;
  /** Set when this VM was adopted from an earlier run: not our child, its exit is watched by pid. */
  #adopted: VmState | undefined;
  #adoptPoll: TimerHandle | undefined;
  #hostPort = 0;
  #guestExit: number | undefined;
  #reason: string | undefined;
  /** An adopted VM's QEMU was seen gone (finalize follows). */
  #gone = false;
  /** The program was started by aether-init (its STARTED line). */
  #started = false;
  #startedWaiters = new Set<() => void>();
  #stopRequested = false;
  #restored = false;
  /** Launch → config sent, for the cold-start split in logs and the benchmark. */
  readonly timings: Record<string, number> = {};
  #t0 = 0;

  constructor(ctx: Ctx, spec: InstanceSpec) {
    super(spec, ctx.clock);
    this.#ctx = ctx;
    this.#dir = join(ctx.dataDir, 'instances', spec.instanceId);
  }

  /** Whether this instance was restored from a snapshot template (else cold-booted). */
  get restored(): boolean {
    return this.#restored;
  }

  protected pid(): number | undefined {
    return this.#child?.pid ?? this.#adopted?.qemu.pid;
  }

  #mark(what: string): void {
    this.timings[what] = performance.now() - this.#t0;
  }

  async start(): Promise<void> {
    if (this.state !== 'created') throw new AetherError('AETHER_ERR_INTERNAL', `instance ${this.id} already started`);
    this.state = 'starting';
    this.#t0 = performance.now();
    try {
      await this.#launch();
    } catch (err) {
      this.#finalize(null, null, `could not start: ${(err as Error).message}`);
      throw err instanceof AetherError ? err : new AetherError('AETHER_ERR_COLD_START_FAILED', `instance ${this.id}: ${(err as Error).message}`, { cause: err });
    }
  }

  /** Root image, code drive and program for the spec's artifact. */
  async #disks(): Promise<{ root: string; code: string | undefined; cmd: string[] | undefined; cwd: string | undefined; versionDir: string | undefined }> {
    const ctx = this.#ctx;
    const spec = this.spec;
    const a = spec.artifact;
    const versionDir = spec.version !== undefined ? ctx.templates.dir(spec.owner.id, spec.version) : undefined;
    const cacheOpts = { ...(ctx.imageCacheDir ? { cacheDir: ctx.imageCacheDir } : {}), ...(ctx.onProgress ? { onProgress: ctx.onProgress } : {}) };
    if (a.kind === 'image') return { root: resolve(a.path), code: undefined, cmd: spec.command, cwd: spec.cwd, versionDir };
    const src = a.kind === 'code' ? a.dir : a.dir;
    const drive = join(versionDir ?? this.#dir, a.kind === 'code' ? 'code.ext4' : 'root.ext4');
    let build = ctx.building.get(drive);
    if (!build) {
      build = (async () => {
        if (existsSync(drive)) return;
        await mkdir(join(drive, '..'), { recursive: true });
        const tmp = `${drive}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
        await makeExt4(src, tmp, { label: a.kind === 'code' ? 'aether-code' : 'aether-root', freeMb: 1 });
        await rename(tmp, drive);
      })().finally(() => ctx.building.delete(drive));
      ctx.building.set(drive, build);
    }
    await build;
    if (a.kind === 'rootfs') return { root: drive, code: undefined, cmd: spec.command, cwd: spec.cwd, versionDir };
    const root = await ensureBaseImage(a.runtime, cacheOpts);
    const cmd = spec.command ?? entryCommand(a.runtime, a.entrypoint, { node: 'node', python: 'python3' });
    return { root, code: drive, cmd, cwd: spec.cwd ?? '/run/aether/code', versionDir };
  }

  async #launch(): Promise<void> {
    const ctx = this.#ctx;
    const spec = this.spec;
    await rm(this.#dir, { recursive: true, force: true });
    await mkdir(this.#dir, { recursive: true, mode: 0o700 });
    const [disks, initrd] = await Promise.all([this.#disks(), ensureInitramfs({ ...(ctx.kernelPath ? { kernelPath: ctx.kernelPath } : {}), ...(ctx.imageCacheDir ? { cacheDir: ctx.imageCacheDir } : {}) })]);
    this.#mark('prepared');
    if (this.#stopRequested) throw new AetherError('AETHER_ERR_COLD_START_FAILED', `instance ${this.id} was stopped while starting`);

    const memMb = spec.resources.memoryMb + VM_OVERHEAD_MB;
    const fixedArgs = [
      '-M', 'microvm', '-accel', ctx.accel, '-cpu', ctx.accel === 'kvm' ? 'host' : 'max', '-m', String(memMb), '-smp', '1',
      '-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot',
      '-kernel', initrd.kernel.kernel, '-initrd', initrd.path,
      '-drive', `id=root,file=${disks.root},format=raw,if=none,readonly=on`, '-device', 'virtio-blk-device,drive=root',
      ...(disks.code ? ['-drive', `id=code,file=${disks.code},format=raw,if=none,readonly=on`, '-device', 'virtio-blk-device,drive=code'] : []),
      '-device', 'virtio-net-device,netdev=n0', '-device', 'virtio-serial-device',
      '-device', 'virtserialport,chardev=ctl,name=aether.ctl', '-device', 'virtserialport,chardev=log,name=aether.log',
      '-device', 'virtio-rng-device',
    ];
    // A template of this version, made from the same drives, can be restored instead of booting.
    const tmplDir = ctx.snapshots ? disks.versionDir : undefined;
    let meta = tmplDir ? await ctx.templates.ready(tmplDir) : undefined;
    if (meta && JSON.stringify(meta.fixedArgs) !== JSON.stringify(fixedArgs)) meta = undefined; // made for other drives or memory
    const token = meta ? tokenOf(meta.append) : randomBytes(16).toString('hex');
    const clock = ctx.accel === 'tcg' ? ` tsc_early_khz=${tscKhz()} tsc=reliable` : '';
    const append = meta?.append ?? `console=ttyS0 quiet loglevel=0${clock} reboot=t panic=-1 aether.token=${token} aether.config=vport`;
    const buildTemplate = tmplDir !== undefined && !meta && !ctx.templates.building.has(tmplDir);
    if (buildTemplate) ctx.templates.building.add(tmplDir);

    this.#hostPort = await freePort();
    this.endpointValue = { kind: 'tcp', host: '127.0.0.1', port: this.#hostPort, guest: { address: GUEST_ADDRESS, port: spec.listen.port } };
    const ctlPath = join(this.#dir, 'ctl.sock');
    const logPath = join(this.#dir, 'log.sock');
    const qmpPath = join(this.#dir, 'qmp.sock');
    const consolePath = join(this.#dir, 'console.log');
    const outputPath = join(this.#dir, 'qemu.log');
    const config = (): string =>
      `${JSON.stringify({
        token: ctx.wrongToken ? token.replace(/^./, (c) => (c === '0' ? '1' : '0')) : token,
        instance_id: spec.instanceId,
        hostname: spec.instanceId.slice(0, 63),
        // no cmd: the image's runtime.json names the program
        ...(disks.cmd && disks.cmd.length > 0 ? { cmd: disks.cmd } : {}),
        ...(disks.cwd ? { cwd: disks.cwd } : {}),
        env: programEnv(spec, spec.listen.port),
        seed: randomBytes(64).toString('base64'),
        net: GUEST_NET,
        port: spec.listen.port,
        time_ms: Date.now(),
      })}\n`;

    // QEMU serves every channel and writes the console and its own output to files, so none of
    // them depends on this process: a restarted agent connects again and reads on (adoption).
    // While no agent is connected, the guest's writes to a port block (its program waits, as a
    // process sandbox's does on a full pipe); nothing is lost but what the dead agent had not read.
    const args = [
      ...fixedArgs,
      '-append', append,
      '-chardev', `file,id=con,path=${consolePath}`, '-serial', 'chardev:con',
      '-netdev', `user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:${this.#hostPort}-:${spec.listen.port}`,
      '-chardev', `socket,id=ctl,path=${ctlPath},server=on,wait=off`, '-chardev', `socket,id=log,path=${logPath},server=on,wait=off`,
      '-qmp', `unix:${qmpPath},server=on,wait=off`,
      '-name', `aether-${spec.instanceId},process=aether-vm`,
      ...(meta && tmplDir ? ['-incoming', `exec:cat ${shq(join(tmplDir, 'snapshot.bin'))}`] : []),
    ];
    this.#restored = meta !== undefined;
    // Its own session and no parent-death signal: the VM outlives a killed agent, which adopts it
    // when it comes back (or stops it: cleanupLeftovers).
    await writeFile(consolePath, '', { mode: 0o600 });
    const out = openSync(outputPath, 'a', 0o600);
    let child: ChildProcess;
    try {
      child = spawn(ctx.qemuBin, args, { detached: true, stdio: ['ignore', out, out], env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin' } });
    } finally {
      closeSync(out);
    }
    this.#child = child;
    this.logs.emit('system', `starting ${describeWorkload(spec)} in a QEMU microVM (${ctx.accel}, ${memMb} MiB, ${this.#restored ? 'restored from its snapshot template' : 'cold boot'})`);
    this.#follow(consolePath, outputPath, false);
    child.on('error', (e) => this.#finalize(null, null, `qemu could not start: ${e.message}`));
    child.on('exit', (code, signal) => {
      if (buildTemplate && tmplDir) ctx.templates.building.delete(tmplDir);
      // the last program output may trail the exit by a moment
      void delay(100).then(() => this.#finalize(code, signal));
    });
    // The record a restarted agent adopts (or stops) it by, written before the guest can run anything.
    const qemu = procRef(child.pid);
    if (qemu) {
      this.#record = {
        v: 1, agentId: ctx.agentId, spec, endpoint: this.endpointValue, qemu,
        qmp: qmpPath, ctl: ctlPath, log: logPath, console: consolePath, output: outputPath,
        net: { kind: 'user', hostPort: this.#hostPort, guest: { address: GUEST_ADDRESS, port: spec.listen.port } },
        accel: ctx.accel, restored: this.#restored, startedAt: ctx.clock.now(), ready: false,
      };
      this.#persist();
    }
    const ready = new Promise<void>((resolveReady) => {
      void this.#attach(ctlPath, logPath, resolveReady).catch((e: unknown) => {
        if (this.exitInfo) return;
        this.#reason = `VM channels failed: ${(e as Error).message}`;
        this.logs.emit('system', this.#reason);
        this.#kill();
      });
    });

    // Background: restore → cont, or boot → (template) → config. waitReady() follows it.
    void (async () => {
      if (this.#restored) {
        this.#qmp = await this.#connectQmp(qmpPath);
        for (;;) {
          const st = await this.#qmp.execute<{ status: string }>('query-status');
          if (st.status !== 'inmigrate') break;
          await delay(10);
        }
        this.#mark('restored');
        await this.#qmp.execute('cont');
        // The guest waits in read() on its port: the config line wakes it.
        await this.#waitCtl();
        this.#ctlConn?.write(config());
        this.#mark('config');
        return;
      }
      await ready;
      this.#mark('guest-ready');
      this.#qmp = await this.#connectQmp(qmpPath);
      if (buildTemplate && tmplDir) {
        await this.#snapshot(tmplDir, { format: TEMPLATE_FORMAT, ownerId: spec.owner.id, version: spec.version as string, append, fixedArgs }).catch((e: unknown) => {
          this.logs.emit('system', `snapshot template not made: ${(e as Error).message}`);
        });
        ctx.templates.building.delete(tmplDir);
      }
      this.#ctlConn?.write(config());
      this.#mark('config');
    })().catch((e: unknown) => {
      if (this.exitInfo) return;
      this.#reason = `VM control failed: ${(e as Error).message}`;
      this.logs.emit('system', this.#reason);
      this.#kill();
    });
  }

  /**
   * Follow the console and QEMU's output files, each from where the last agent recorded it had
   * handed lines on (`<file>.offset`, see FileTail): what aether-init and QEMU wrote while no agent
   * ran is logged, once. `fromEnd` (adoption) only for a VM whose agent kept no record.
   */
  #follow(consolePath: string, outputPath: string, fromEnd: boolean): void {
    const clock = this.#ctx.clock;
    this.#tails.push(
      new FileTail({
        path: consolePath, clock, everyMs: TAIL_EVERY_MS, fromEnd, offsetFile: offsetFileOf(consolePath),
        onLine: (line) => {
          if (line.trim() === '') return;
          if (line.includes('config rejected')) this.#reason = 'the guest rejected its config';
          this.logs.emit('system', `console: ${line}`);
        },
      }),
      new FileTail({ path: outputPath, clock, everyMs: TAIL_EVERY_MS, fromEnd, offsetFile: offsetFileOf(outputPath), onLine: (line) => this.logs.emit('system', `qemu: ${line}`) }),
    );
  }

  /**
   * Connect to the ctl and log ports QEMU serves: at launch (retried until QEMU is up) and on
   * adoption, which passes `paused` and resumes the log port itself (its program output must not
   * be read before anyone listens). Returns the log connection.
   */
  async #attach(ctlPath: string, logPath: string, onReady: () => void, tries = 2000, paused = false): Promise<net.Socket | undefined> {
    const [ctl, log] = await Promise.all([this.#connect(ctlPath, tries), this.#connect(logPath, tries)]);
    if (this.exitInfo) {
      ctl.destroy();
      log.destroy();
      return undefined;
    }
    this.#conns.push(ctl, log);
    this.#ctlConn = ctl;
    const ctlSplit = new LineSplitter((line) => this.#ctlLine(line, onReady));
    ctl.on('data', (b: Buffer) => ctlSplit.write(b));
    const logSplit = new LineSplitter((line) => this.logs.emit('stdout', line));
    log.on('data', (b: Buffer) => logSplit.write(b));
    log.on('close', () => logSplit.end());
    if (paused) log.pause();
    return log;
  }

  /** A unix socket QEMU serves; it listens a moment after spawn: retried every 5 ms, `tries` times. */
  async #connect(path: string, tries: number): Promise<net.Socket> {
    for (let i = 0; ; i++) {
      if (this.exitInfo) throw new Error('QEMU exited');
      try {
        return await new Promise<net.Socket>((res, rej) => {
          const s = net.connect(path);
          s.once('connect', () => {
            s.off('error', rej);
            s.on('error', () => undefined);
            res(s);
          });
          s.once('error', rej);
        });
      } catch (e) {
        if (i >= tries) throw e;
        await delay(5);
      }
    }
  }

  /** Rewrite state.json (atomically) from #record. */
  #persist(): void {
    if (!this.#record || this.exitInfo) return;
    try {
      writeVmRecord(this.#dir, this.#record);
    } catch (err) {
      this.logs.emit('system', `state record not written: ${(err as Error).message}`);
    }
  }

  /**
   * Re-attach to a VM an earlier run of this agent left running (see VmState): QMP, the ctl and log
   * ports, the console files (from where the last agent recorded it had read them); its exit is
   * noticed through QMP's close and a pid poll. The endpoint is QEMU's own hostfwd listener:
   * nothing to re-create on the host.
   */
  async adopt(rec: VmState): Promise<void> {
    if (this.state !== 'created') throw new AetherError('AETHER_ERR_INTERNAL', `instance ${this.id} already started`);
    this.#adopted = rec;
    this.#record = rec;
    this.#restored = rec.restored;
    this.#started = true;
    this.#hostPort = rec.net.hostPort;
    this.endpointValue = rec.endpoint;
    this.state = 'starting';
    let log: net.Socket | undefined;
    try {
      // the program's output waits in the log port (paused) until the caller can listen
      log = await this.#attach(rec.ctl, rec.log, () => undefined, 20, true);
      // bounded: a hung QEMU must not hold up the agent's start (it is then stopped as a leftover)
      const qmp = await within(Qmp.connect(rec.qmp), ADOPT_QMP_MS, 'QMP did not answer');
      this.#qmp = qmp;
      qmp.onClose(() => this.#checkAdopted());
      // a VM the dead agent had paused (it pauses only to snapshot, before ready) runs on
      const st = await within(qmp.execute<{ status: string }>('query-status'), ADOPT_QMP_MS, 'QMP did not answer');
      if (st.status === 'paused') await within(qmp.execute('cont'), ADOPT_QMP_MS, 'QMP did not answer');
    } catch (err) {
      // not ours after all: leave the VM to cleanupLeftovers, keep nothing of it open
      this.#qmp?.close();
      for (const c of this.#conns) c.destroy();
      this.#adopted = undefined;
      this.state = 'created';
      throw new AetherError('AETHER_ERR_INTERNAL', `instance ${this.id}: could not re-attach to its VM: ${(err as Error).message}`, { cause: err });
    }
    // Followed and read only now, with no await left before the caller attaches its log listener:
    // the first reads are a clock tick away, and lines read before anyone listens would be lost
    // (for the files, also recorded as read).
    this.#follow(rec.console, rec.output, true);
    this.#ctx.clock.setTimeout(() => log?.resume(), 0);
    this.state = 'running';
    this.logs.emit('system', `adopted (qemu pid ${rec.qemu.pid}, ${rec.endpoint.kind === 'tcp' ? `${rec.endpoint.host}:${rec.endpoint.port}` : 'endpoint'})`);
    const poll = (): void => {
      this.#adoptPoll = this.#ctx.clock.setTimeout(() => {
        this.#checkAdopted();
        if (!this.exitInfo) poll();
      }, ADOPT_POLL_MS);
    };
    poll();
  }

  /** An adopted VM's QEMU is gone: finish it (its status went to the dead agent, unless the guest said). */
  #checkAdopted(): void {
    const a = this.#adopted;
    if (!a || this.exitInfo || this.#gone || !qemuGone(a)) return;
    this.#gone = true;
    this.markGone();
    if (this.#adoptPoll) this.#ctx.clock.clearTimeout(this.#adoptPoll);
    const reason = this.#stopRequested || this.#guestExit !== undefined ? undefined : 'the VM exited (status unknown: adopted instance)';
    // the last program output may trail the exit by a moment
    void delay(100).then(() => this.#finalize(null, null, reason));
  }

  async #waitCtl(): Promise<void> {
    for (let i = 0; i < 2000 && !this.#ctlConn; i++) await delay(5);
    if (!this.#ctlConn) throw new Error('QEMU did not connect the control channel');
  }

  async #connectQmp(path: string): Promise<Qmp> {
    for (let i = 0; ; i++) {
      if (this.exitInfo) throw new Error('QEMU exited');
      try {
        return await Qmp.connect(path);
      } catch (e) {
        if (i > 2000) throw e;
        await delay(5);
      }
    }
  }

  /** Pause at READY, write RAM and device state to the template, resume. */
  async #snapshot(dir: string, meta: TemplateMeta): Promise<void> {
    const qmp = this.#qmp as Qmp;
    const t0 = performance.now();
    await mkdir(dir, { recursive: true });
    const tmp = join(dir, `snapshot.bin.tmp-${process.pid}`);
    await qmp.execute('stop');
    try {
      await qmp.execute('migrate', { uri: `exec:cat > ${shq(tmp)}` });
      for (;;) {
        const m = await qmp.execute<{ status?: string; 'error-desc'?: string }>('query-migrate');
        if (m.status === 'completed') break;
        if (m.status === 'failed' || m.status === 'cancelled') throw new Error(`migration ${m.status}: ${m['error-desc'] ?? ''}`);
        await delay(20);
      }
      await rename(tmp, join(dir, 'snapshot.bin'));
      await writeFile(join(dir, 'template.json'), JSON.stringify(meta));
      this.#mark('snapshot');
      this.logs.emit('system', `snapshot template saved in ${Math.round(performance.now() - t0)} ms (${Math.round(statSizeSafe(join(dir, 'snapshot.bin')) / 2 ** 20)} MiB)`);
    } finally {
      await rm(tmp, { force: true });
      await qmp.execute('cont');
    }
  }

  #ctlLine(line: string, onReady: () => void): void {
    if (line === 'AETHER-INIT READY') onReady();
    else if (line.startsWith('AETHER-INIT STARTED')) {
      this.#started = true;
      this.#mark('program-started');
      for (const w of this.#startedWaiters) w();
    } else if (line.startsWith('AETHER-INIT EXIT')) {
      const n = Number(line.split(' ')[2]);
      if (Number.isInteger(n)) {
        this.#guestExit = n;
        this.markGone();
      }
    }
  }

  async waitReady(timeoutMs: number, signal?: AbortSignal): Promise<void> {
    if (this.state === 'created') throw new AetherError('AETHER_ERR_INTERNAL', `instance ${this.id} not started`);
    if (this.state === 'running') return;
    const port = this.spec.listen.port;
    if (this.exitInfo) throw this.exitError(this.exitInfo, port);
    return this.waitListening(timeoutMs, signal, () => port, async (settled, done) => {
      if (!this.#started) await new Promise<void>((r) => this.#startedWaiters.add(r));
      while (!settled() && !this.exitInfo) {
        if (await probe(this.#hostPort)) {
          if (this.exitInfo || settled()) return;
          if (this.state === 'starting') this.state = 'running';
          this.#mark('listening');
          // from now on a restarted agent may adopt it
          if (this.#record) {
            this.#record = { ...this.#record, ready: true };
            this.#persist();
          }
          this.logs.emit('system', `listening after ${Math.round(this.timings['listening'] ?? 0)} ms (${this.#restored ? 'restored' : 'cold boot'}; ${Object.entries(this.timings).map(([k, v]) => `${k} ${Math.round(v)}`).join(', ')})`);
          return done();
        }
        await delay(PROBE_EVERY_MS);
      }
    });
  }

  async stop(graceMs = 5000): Promise<void> {
    if (this.state === 'exited') return;
    if (this.state === 'created') {
      this.#finalize(null, null, 'never started');
      return;
    }
    this.#stopRequested = true;
    if (!this.exitInfo) this.state = 'stopping';
    // ACPI power button: aether-init sends SIGTERM to the program and powers off when it exits.
    const qmp = this.#qmp;
    if (qmp && graceMs > 0) await qmp.execute('system_powerdown').catch(() => this.#kill());
    else this.#kill();
    const timer = this.#ctx.clock.setTimeout(() => this.#kill(), graceMs);
    await this.exited;
    this.#ctx.clock.clearTimeout(timer);
  }

  #kill(): void {
    const c = this.#child;
    const a = this.#adopted;
    if (c) {
      if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    } else if (a) {
      // not our child: signal it by pid only while it is still the same QEMU; the poll sees it go
      if (!qemuGone(a)) signalPid(a.qemu.pid, 'SIGKILL');
      this.#checkAdopted();
    } else if (!this.exitInfo) this.#finalize(null, null, this.#reason ?? 'stopped');
  }

  #finalize(code: number | null, signal: string | null, reason?: string): void {
    if (this.exitInfo) return;
    this.markGone();
    if (this.#adoptPoll) this.#ctx.clock.clearTimeout(this.#adoptPoll);
    this.#qmp?.close();
    for (const c of this.#conns) c.destroy();
    this.#ctlConn?.destroy();
    // the rest of the console first: it may say why the VM ended (config rejected)
    for (const t of this.#tails) t.close();
    const info: ExitInfo = this.#guestExit !== undefined ? { code: this.#guestExit, signal: null } : { code, signal };
    const why = reason ?? this.#reason;
    if (why) info.reason = why;
    else if (this.#guestExit === undefined && !this.#stopRequested) info.reason = 'the VM stopped before its program exited';
    this.exitInfo = info;
    this.state = 'exited';
    for (const w of this.#startedWaiters) w();
    this.logs.emit('system', `exited (code ${info.code}, signal ${info.signal}${info.reason ? `, ${info.reason}` : ''})`);
    // Nothing of the instance stays on disk; the version's code drive and template are shared.
    void rm(this.#dir, { recursive: true, force: true }).finally(() => this.resolveExit(info));
  }
}

function tokenOf(append: string): string {
  return /aether\.token=([0-9a-f]+)/.exec(append)?.[1] ?? '';
}
