import { execFile } from 'node:child_process';
import { accessSync, closeSync, constants, existsSync, openSync, readdirSync, readFileSync, readSync } from 'node:fs';
import { join } from 'node:path';
import { findV1Mounts, v1Usable, v2HasControllers } from './cgroup.ts';

/** What this host can give functions; printed by `aether doctor --json`, logged by `aether up`. */
export interface HostReport {
  root: boolean;
  namespaces: boolean;
  cgroups: 'v1' | 'v2' | 'none';
  kvm: boolean;
  qemu: boolean;
  firecracker: boolean;
  isolation: 'namespaces+cgroups' | 'none';
  /** How process sandboxes are reached with `--sandbox-network auto` (namespaces only): a veth pair each, or a forwarder process each. */
  sandbox_network?: 'veth' | 'forwarder';
  notes: string[];
  /** Which sandbox kinds this host can run, and why not (what `--sandboxes auto` offers). */
  sandboxes: SandboxProbe[];
}

const PATHS = ['/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin'];

/** First executable `name` in `dirs` (a fixed list, not the caller's PATH). */
export function findBin(name: string, dirs: readonly string[] = PATHS): string | undefined {
  for (const dir of dirs) {
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

function run(cmd: string, args: string[]): Promise<boolean> {
  return new Promise((res) => {
    execFile(cmd, args, { env: { PATH: PATHS.join(':') }, timeout: 5000 }, (err) => res(!err));
  });
}

/** Probe the pieces the process runtime (namespaces + cgroups) and the VM runtimes need. */
export async function probeHost(): Promise<HostReport> {
  const notes: string[] = [];
  const root = process.getuid?.() === 0;
  if (!root) notes.push('not running as root: the process runtime falls back to plain child processes (no isolation)');

  const unshare = findBin('unshare');
  let namespaces = false;
  if (!unshare) notes.push('unshare (util-linux) not found');
  else if (root) {
    namespaces = await run(unshare, ['--pid', '--fork', '--mount', '--uts', '--ipc', '--net', 'true']);
    if (!namespaces) notes.push('unshare --pid --fork --mount --uts --ipc --net failed');
  }

  const mounts = findV1Mounts();
  let cgroups: HostReport['cgroups'] = 'none';
  if (v1Usable(mounts)) cgroups = 'v1';
  else if (v2HasControllers()) {
    cgroups = 'v2';
    notes.push('cgroup v2 with memory/cpu/pids: the process runtime uses cgroup v1 only, so it runs without limits here');
  } else notes.push('no writable cgroup v1 memory/cpu/pids controllers');

  const tools = ['setpriv', 'nsenter', 'perl'].filter((t) => !findBin(t));
  if (tools.length > 0) notes.push(`missing: ${tools.join(', ')}`);

  let kvm = false;
  try {
    accessSync('/dev/kvm', constants.R_OK | constants.W_OK);
    // A /dev/kvm node can exist inside a VM without nested virtualisation: KVM then fails to start.
    const cpu = process.arch === 'x64' ? readFileSync('/proc/cpuinfo', 'utf8') : 'vmx';
    kvm = /\b(vmx|svm)\b/.test(cpu);
    if (!kvm) notes.push('/dev/kvm exists but the CPU exposes no vmx/svm (no nested virtualisation): KVM cannot run');
  } catch {
    notes.push(existsSync('/dev/kvm') ? '/dev/kvm exists but is not accessible' : 'no /dev/kvm: VMs only through QEMU TCG (slow), no Firecracker');
  }
  const qemu = findBin('qemu-system-x86_64') !== undefined || findBin('qemu-system-aarch64') !== undefined;
  const firecracker = findBin('firecracker') !== undefined;

  const isolation = root && namespaces && cgroups === 'v1' && tools.length === 0 ? 'namespaces+cgroups' : 'none';
  let sandboxNetwork: 'veth' | 'forwarder' | undefined;
  if (isolation !== 'none') {
    const missing = ['ip', 'nft'].filter((t) => !findBin(t));
    sandboxNetwork = missing.length === 0 ? 'veth' : 'forwarder';
    if (missing.length > 0) notes.push(`sandbox network: forwarder (a ~90 MiB process per instance): ${missing.join(', ')} not found (Debian packages iproute2, nftables) for the veth network`);
  }
  const report = { root, namespaces, cgroups, kvm, qemu, firecracker, isolation, ...(sandboxNetwork ? { sandbox_network: sandboxNetwork } : {}), notes } as const;
  return { ...report, sandboxes: probeSandboxes(report) };
}

/** Whether this host can run one sandbox kind, and why not. */
export interface SandboxProbe {
  kind: 'process' | 'qemu' | 'firecracker';
  ok: boolean;
  /** What it gives here ("namespaces+cgroups", "microvm, KVM", "microvm, TCG (slow)"), or why not. */
  detail: string;
}

/**
 * The guest kernel for microVMs: `AETHER_GUEST_KERNEL`, else the newest Debian cloud kernel in /boot
 * (package linux-image-cloud-amd64).
 */
export function findGuestKernel(env: NodeJS.ProcessEnv = process.env): string | undefined {
  const set = env['AETHER_GUEST_KERNEL'];
  if (set) return existsSync(set) ? set : undefined;
  try {
    const found = readdirSync('/boot')
      .filter((f) => /^vmlinuz-.*-cloud-(amd64|arm64)$/.test(f))
      .sort((a, b) => a.localeCompare(b, undefined, { numeric: true }));
    const last = found.at(-1);
    return last ? join('/boot', last) : undefined;
  } catch {
    return undefined;
  }
}

/** Which sandbox kinds this host can run (what `--sandboxes auto` offers), from a host report. */
export function probeSandboxes(h: Pick<HostReport, 'isolation' | 'kvm'> & { root?: boolean }, env: NodeJS.ProcessEnv = process.env): SandboxProbe[] {
  const out: SandboxProbe[] = [{ kind: 'process', ok: true, detail: h.isolation === 'none' ? 'plain child processes (no isolation)' : h.isolation }];
  const kernel = findGuestKernel(env);
  const qemuBin = env['AETHER_QEMU'] ?? findBin(process.arch === 'arm64' ? 'qemu-system-aarch64' : 'qemu-system-x86_64');
  if (!qemuBin) out.push({ kind: 'qemu', ok: false, detail: 'qemu-system-x86_64 not found (apt install qemu-system-x86)' });
  else if (!kernel) out.push({ kind: 'qemu', ok: false, detail: 'no guest kernel: set AETHER_GUEST_KERNEL or apt install linux-image-cloud-amd64' });
  else if (!findBin('mke2fs')) out.push({ kind: 'qemu', ok: false, detail: 'mke2fs not found (apt install e2fsprogs)' });
  else if (!env['AETHER_MUSL_GCC'] && !findBin('musl-gcc')) out.push({ kind: 'qemu', ok: false, detail: 'musl-gcc not found: aether-init cannot be built (apt install musl-tools)' });
  else out.push({ kind: 'qemu', ok: true, detail: h.kvm ? `microvm, KVM (${kernel})` : `microvm, TCG without KVM: slow cold boots (10-30 s; snapshot restores are faster) (${kernel})` });
  out.push(probeFirecracker(h, env));
  return out;
}

/** First 4 bytes of a file: an uncompressed kernel starts with the ELF magic. */
function isElf(path: string): boolean {
  try {
    const fd = openSync(path, 'r');
    try {
      const b = Buffer.alloc(4);
      readSync(fd, b, 0, 4, 0);
      return b.equals(Buffer.from([0x7f, 0x45, 0x4c, 0x46]));
    } finally {
      closeSync(fd);
    }
  } catch {
    return false;
  }
}

/**
 * Firecracker needs a usable /dev/kvm, its binary (`AETHER_FIRECRACKER`, else PATH), root (a
 * network namespace and a TAP per VM) and an uncompressed ELF guest kernel (`AETHER_FC_KERNEL`,
 * else `AETHER_GUEST_KERNEL`): v1.16 does not boot the bzImage Debian installs in /boot.
 */
export function probeFirecracker(h: Pick<HostReport, 'kvm'> & { root?: boolean }, env: NodeJS.ProcessEnv = process.env): SandboxProbe {
  const no = (detail: string): SandboxProbe => ({ kind: 'firecracker', ok: false, detail });
  if (!h.kvm) return no('no usable /dev/kvm');
  const bin = env['AETHER_FIRECRACKER'] ?? findBin('firecracker', [...PATHS, ...(env['PATH'] ?? '').split(':').filter(Boolean)]);
  if (!bin) return no('firecracker binary not found on PATH (or AETHER_FIRECRACKER)');
  if (h.root === false) return no('needs root (a network namespace and a TAP per VM)');
  const kernel = env['AETHER_FC_KERNEL'] ?? env['AETHER_GUEST_KERNEL'];
  if (!kernel) return no('no guest kernel: set AETHER_FC_KERNEL to an uncompressed ELF vmlinux (scripts/extract-vmlinux of the cloud kernel)');
  if (!isElf(kernel)) return no(`guest kernel ${kernel} is not an ELF vmlinux (Firecracker v1.16 does not boot bzImage): set AETHER_FC_KERNEL`);
  if (!findBin('mke2fs')) return no('mke2fs not found (apt install e2fsprogs)');
  if (!env['AETHER_MUSL_GCC'] && !findBin('musl-gcc')) return no('musl-gcc not found: aether-init cannot be built (apt install musl-tools)');
  return { kind: 'firecracker', ok: true, detail: `KVM, ${bin}, kernel ${kernel}` };
}
