/**
 * The Firecracker driver (sandbox "firecracker"): one Firecracker process per instance, driven over
 * its API socket (./api.ts). Boot: logger → metrics → machine-config → boot-source → drives (root
 * image ro, code image ro) → network-interfaces (a TAP in the VM's own netns) → mmds/config (V2) →
 * MMDS data → InstanceStart. The program's config (env included) reaches the guest only through
 * MMDS; boot_args carry console/quiet flags, the per-boot token, `aether.config=mmds` and `aether.vmm=firecracker`.
 * Snapshots: a template VM per (owner, version) boots to `AETHER-INIT READY` (waiting for config),
 * is paused and snapshotted; later instances load it, get their own config in MMDS (with the
 * template's token), and resume. Stop: SendCtrlAltDel, then SIGTERM, then SIGKILL.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes, createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { constants as osConstants } from 'node:os';
import { join } from 'node:path';
import { AetherError, systemClock, type Clock } from '../../core/index.ts';
import { makeExt4 } from '../../image/index.ts';
import { LineSplitter } from '../logs.ts';
import { entryCommand, programEnv, type Endpoint, type ExitInfo, type InstanceSpec, type Runtime, type RuntimeInstance, type SnapshotCapability } from '../index.ts';
import { FirecrackerClient, type JsonObject } from './api.ts';
import { jailerArgv, stageIntoJail, type JailerOptions } from './jailer.ts';
import { netnsNetwork, type Exposed, type VmLink, type VmNetwork } from './network.ts';
import { InstanceBase } from '../instance.ts';

export interface FirecrackerRuntimeOptions {
  /** VM dirs (`vms/`) and snapshot templates (`templates/`); owned by this runtime. */
  stateDir: string;
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
  clock?: Clock;
}

export const GUEST_CODE_DIR = '/run/aether/code';
/** Kernel flags besides the token: console, quiet, reboot=k (a guest reboot ends Firecracker), keyboard for Ctrl+Alt+Del. */
export const BASE_BOOT_ARGS = 'console=ttyS0 quiet loglevel=0 reboot=k panic=1 pci=off i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd';
const READY_LINE = 'AETHER-INIT READY';
/** After aether-init reports the program's exit, the VM should be gone this soon. */
const HALT_GRACE_MS = 3000;

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
}

export function createFirecrackerRuntime(opts: FirecrackerRuntimeOptions): FirecrackerRuntime {
  const clock = opts.clock ?? systemClock;
  const network = opts.network ?? netnsNetwork();
  const vmsDir = join(opts.stateDir, 'vms');
  const tplDir = join(opts.stateDir, 'templates');
  const live = new Set<FcInstance>();
  const building = new Map<string, Promise<Template>>();
  const useSnapshots = opts.snapshots !== false && !opts.jailer;
  const ctx: Ctx = { opts, clock, network, vmsDir };

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
      const inst = new FcInstance(ctx, spec, useSnapshots && spec.version !== undefined ? () => template(spec) : undefined);
      live.add(inst);
      void inst.exited.then(() => live.delete(inst));
      return inst;
    },
    async cleanupLeftovers(): Promise<void> {
      const ids = safeList(vmsDir);
      for (const id of ids) {
        const dir = join(vmsDir, id);
        try {
          const pid = Number(readFileSync(join(dir, 'vmm.pid'), 'utf8'));
          // only a process that still holds this VM's API socket path is ours
          if (pid > 0 && readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(dir)) process.kill(pid, 'SIGKILL');
        } catch {
          // gone already
        }
        rmSync(dir, { recursive: true, force: true });
      }
      for (const owner of safeList(tplDir))
        for (const v of safeList(join(tplDir, owner))) if (!existsSync(join(tplDir, owner, v, 'meta.json'))) rmSync(join(tplDir, owner, v), { recursive: true, force: true });
      await network.cleanupLeftovers(ids);
    },
    async close(): Promise<void> {
      await Promise.all([...live].map((i) => i.stop(2000)));
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
}

/** One Firecracker process with its dir, network link and API client. */
class Vmm {
  readonly dir: string;
  readonly id: string;
  readonly link: VmLink;
  readonly client: FirecrackerClient;
  readonly child: ChildProcess;
  readonly exited: Promise<ExitInfo>;
  /** Host paths → paths as Firecracker sees them (jail-relative under the jailer). */
  readonly path: (hostPath: string) => Promise<string>;
  /** The jail (removed with the VM), when jailed. */
  jailDir: string | undefined;
  #lines: ((text: string) => void)[] = [];

  private constructor(dir: string, id: string, link: VmLink, child: ChildProcess, sock: string, path: (p: string) => Promise<string>) {
    this.dir = dir;
    this.id = id;
    this.link = link;
    this.child = child;
    this.path = path;
    this.client = new FirecrackerClient(sock);
    this.exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
    child.once('error', () => undefined);
    const out = new LineSplitter((t) => this.#lines.forEach((l) => l(t)));
    const err = new LineSplitter((t) => this.#lines.forEach((l) => l(t)));
    child.stdout?.on('data', (c: Buffer) => out.write(c));
    child.stderr?.on('data', (c: Buffer) => err.write(c));
  }

  onLine(fn: (text: string) => void): void {
    this.#lines.push(fn);
  }

  /** Spawn Firecracker for a fresh VM dir (its network already attached) and wait for its API. */
  static async launch(ctx: Ctx, dir: string, id: string, link: VmLink, log: (t: string) => void): Promise<Vmm> {
    const { opts } = ctx;
    await mkdir(dir, { recursive: true, mode: 0o700 });
    let argv: string[];
    let sock: string;
    let path: (p: string) => Promise<string> = async (p) => p;
    let jailDir: string | undefined;
    if (opts.jailer) {
      const j = jailerArgv(opts.jailer, { id, firecracker: opts.firecracker ?? 'firecracker', ...(link.netns ? { netns: `/var/run/netns/${link.netns}` } : {}) });
      argv = j.argv;
      sock = j.apiSock;
      path = (p) => stageIntoJail(j.root, p, opts.jailer as JailerOptions);
      jailDir = j.jailDir;
      rmSync(j.jailDir, { recursive: true, force: true }); // a jail left by a crashed run
    } else {
      sock = join(dir, 'api.sock');
      const vmm = opts.vmmCommand ?? [opts.firecracker ?? 'firecracker'];
      argv = [...vmm, '--api-sock', sock, '--id', id];
      if (link.netns) argv = ['ip', 'netns', 'exec', link.netns, ...argv];
    }
    rmSync(sock, { force: true }); // Firecracker refuses an existing socket path
    log(`firecracker: ${argv.join(' ')}`);
    const child = spawn(argv[0] as string, argv.slice(1), { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'], env: { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin' } });
    const vmm = new Vmm(dir, id, link, child, sock, path);
    vmm.jailDir = jailDir;
    if (child.pid) await writeFile(join(dir, 'vmm.pid'), String(child.pid));
    let gone = false;
    void vmm.exited.then(() => (gone = true));
    const deadline = ctx.clock.now() + 10_000;
    for (;;) {
      if (gone) throw new AetherError('AETHER_ERR_VMM', `firecracker exited before its API socket was up`);
      if (existsSync(sock)) {
        try {
          await vmm.client.describe();
          break;
        } catch {
          // socket bound, server not answering yet
        }
      }
      if (ctx.clock.now() > deadline) {
        child.kill('SIGKILL');
        throw new AetherError('AETHER_ERR_VMM', 'firecracker API socket did not come up within 10 s');
      }
      await ctx.clock.sleep(10);
    }
    await vmm.client.putLogger({ log_path: await path(await touch(join(dir, 'firecracker.log'))), level: 'Warning', show_level: true });
    await vmm.client.putMetrics({ metrics_path: await path(await touch(join(dir, 'metrics.ndjson'))) });
    return vmm;
  }

  /** The boot-path configuration (everything before InstanceStart). */
  async configure(spec: InstanceSpec, token: string, drives: string[], guest: { kernel: string; initrd?: string }): Promise<void> {
    const { kernel, initrd } = guest;
    const c = this.client;
    await c.putMachineConfig({ vcpu_count: Math.max(1, Math.min(32, Math.round(spec.resources.vcpu))), mem_size_mib: Math.max(64, spec.resources.memoryMb), smt: false });
    await c.putBootSource({ kernel_image_path: await this.path(kernel), ...(initrd ? { initrd_path: await this.path(initrd) } : {}), boot_args: bootArgs(token) });
    // vda = root image, vdb = code (aether-init mounts them itself: no is_root_device / root=)
    for (const [i, p] of drives.entries()) await c.putDrive({ drive_id: i === 0 ? 'rootfs' : 'code', path_on_host: await this.path(p), is_root_device: false, is_read_only: true });
    await c.putNetworkInterface({ iface_id: 'eth0', host_dev_name: this.link.tap, guest_mac: this.link.guestMac });
    await c.putMmdsConfig({ version: 'V2', network_interfaces: ['eth0'], ipv4_address: '169.254.169.254' });
  }

  /** Ctrl+Alt+Del, then SIGTERM, then SIGKILL, each given part of `graceMs`. */
  async shutdown(clock: Clock, graceMs: number): Promise<ExitInfo> {
    const wait = (ms: number): Promise<boolean> =>
      Promise.race([this.exited.then(() => true), clock.sleep(ms).then(() => false)]);
    if (this.child.exitCode === null && this.child.signalCode === null) {
      await this.client.action('SendCtrlAltDel').catch(() => undefined);
      if (!(await wait(graceMs / 2))) {
        this.child.kill('SIGTERM');
        if (!(await wait(graceMs / 2))) this.child.kill('SIGKILL');
      }
    }
    return this.exited;
  }
}

async function touch(p: string): Promise<string> {
  await writeFile(p, '', { flag: 'a' });
  return p;
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
  const link = await ctx.network.attach(id, vmDir);
  let vmm: Vmm | undefined;
  try {
    const token = randomBytes(16).toString('hex');
    // drives live in the template dir: a snapshot re-opens them at the same paths
    const drives = await drivesFor(ctx, spec, dir);
    vmm = await Vmm.launch(ctx, vmDir, id, link, () => undefined);
    const ready = new Promise<void>((resolve) => vmm?.onLine((t) => t.includes(READY_LINE) && resolve()));
    await vmm.configure(spec, token, drives, await ctx.opts.guest());
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
    vmm?.child.kill('SIGKILL');
    await vmm?.exited;
    await vmm?.client.close();
    await link.detach();
    await rm(vmDir, { recursive: true, force: true });
  }
}

class FcInstance extends InstanceBase<InstanceSpec> implements RuntimeInstance {
  #ctx: Ctx;
  #template: (() => Promise<Template>) | undefined;
  #vmm: Vmm | undefined;
  #link: VmLink | undefined;
  #exposed: Exposed | undefined;
  #dir: string;
  #stopping: Promise<void> | undefined;
  #exiting = false;
  /** How the program ended, as aether-init reported it on the console. */
  #program: ExitInfo | undefined;
  #reason: string | undefined;

  constructor(ctx: Ctx, spec: InstanceSpec, template: (() => Promise<Template>) | undefined) {
    super(spec, ctx.clock);
    this.#ctx = ctx;
    this.#template = template;
    this.#dir = join(ctx.vmsDir, vmIdOf(spec.instanceId));
  }

  override get endpoint(): Endpoint {
    if (!this.#exposed || !this.#link) throw new AetherError('AETHER_ERR_INTERNAL', `instance ${this.id} has no endpoint before start()`);
    // the host side is the forwarder's socket; the program itself listens on the guest's address
    return { ...this.#exposed.endpoint, guest: { address: this.#link.net.address.split('/')[0] as string, port: this.spec.listen.port } };
  }

  protected pid(): number | undefined {
    return this.#vmm?.child.pid;
  }

  async start(): Promise<void> {
    if (this.state !== 'created') throw new AetherError('AETHER_ERR_INTERNAL', `instance ${this.id} already started`);
    this.state = 'starting';
    const { opts } = this.#ctx;
    const vmId = vmIdOf(this.spec.instanceId);
    try {
      let tpl: Template | undefined;
      if (this.#template) {
        try {
          tpl = await this.#template();
        } catch (err) {
          this.logs.emit('system', `no snapshot template (${(err as Error).message}): cold boot`);
        }
      }
      await rm(this.#dir, { recursive: true, force: true });
      await mkdir(this.#dir, { recursive: true, mode: 0o700 });
      this.#link = await this.#ctx.network.attach(vmId, this.#dir);
      const vmm = await Vmm.launch(this.#ctx, this.#dir, vmId, this.#link, (t) => this.logs.emit('system', t));
      this.#vmm = vmm;
      // the serial console (ttyS0) is the program's output (kernel messages are quiet); aether-init's own lines are notes
      vmm.onLine((t) => this.#console(t));
      void vmm.exited.then((info) => this.#onExit(this.#program ? { ...this.#program } : { ...info, ...(this.#reason ? { reason: this.#reason } : {}) }));
      const bins = opts.guestBins ?? { node: 'node', python: 'python3' };
      if (tpl) {
        await vmm.client.loadSnapshot({
          snapshot_path: join(tpl.dir, 'vmstate'),
          mem_backend: { backend_type: 'File', backend_path: join(tpl.dir, 'memory') },
          network_overrides: [{ iface_id: 'eth0', host_dev_name: this.#link.tap }],
          resume_vm: false,
        });
        // MMDS data is not in the snapshot: this instance's own identity, the template's token
        await vmm.client.putMmds({ aether: { config: guestConfig(this.spec, tpl.token, this.#link, bins, this.#ctx.clock.now()) } });
        await vmm.client.resume();
        this.logs.emit('system', `restored from snapshot ${this.spec.owner.id}@${this.spec.version ?? ''}`);
      } else {
        const token = randomBytes(16).toString('hex');
        const [drives, guest] = await Promise.all([drivesFor(this.#ctx, this.spec, this.#dir), opts.guest()]);
        await vmm.configure(this.spec, token, drives, guest);
        await vmm.client.putMmds({ aether: { config: guestConfig(this.spec, token, this.#link, bins, this.#ctx.clock.now()) } });
        await vmm.client.action('InstanceStart');
      }
      this.#exposed = await this.#link.expose(this.spec.listen.port, (t) => this.logs.emit('system', t));
      if (this.state === 'starting') this.state = 'running';
    } catch (err) {
      this.logs.emit('system', `start failed: ${(err as Error).message}`);
      this.#vmm?.child.kill('SIGKILL');
      if (!this.#vmm) this.#onExit({ code: null, signal: null, reason: (err as Error).message });
      await this.exited;
      throw err;
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
      this.#ctx.clock.setTimeout(() => vmm?.child.kill('SIGKILL'), HALT_GRACE_MS);
    } else if (/config rejected|cannot start|fatal/i.test(said)) this.#reason = `guest: ${said}`;
  }

  async waitReady(timeoutMs: number, signal?: AbortSignal): Promise<void> {
    const deadline = this.#ctx.clock.now() + timeoutMs;
    for (;;) {
      if (this.exitInfo) throw new AetherError('AETHER_ERR_COLD_START_FAILED', `the VM exited before its port accepted (${this.exitInfo.reason ?? (this.exitInfo.signal ? `signal ${this.exitInfo.signal}` : `code ${this.exitInfo.code}`)})${this.logs.tail(5) ? `: ${this.logs.tail(5)}` : ''}`);
      if (this.#exposed?.ready()) return;
      if (signal?.aborted) throw signal.reason instanceof Error ? signal.reason : new AetherError('AETHER_ERR_COLD_START_FAILED', 'waiting for the VM was aborted');
      if (this.#ctx.clock.now() >= deadline) throw new AetherError('AETHER_ERR_COLD_START_FAILED', `the program did not listen on port ${this.spec.listen.port} within ${timeoutMs} ms`);
      await this.#ctx.clock.sleep(10, signal).catch(() => undefined);
    }
  }

  stop(graceMs = 5000): Promise<void> {
    this.#stopping ??= (async () => {
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
      await this.#vmm?.client.close();
      await this.#link?.detach().catch(() => undefined);
      if (this.#vmm?.jailDir) await rm(this.#vmm.jailDir, { recursive: true, force: true });
      await rm(this.#dir, { recursive: true, force: true });
      this.exitInfo = info;
      this.state = 'exited';
      this.logs.emit('system', `VM exited (code ${info.code}, signal ${info.signal})`);
      this.resolveExit(info);
    })();
  }
}
