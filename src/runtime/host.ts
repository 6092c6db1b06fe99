import { execFile } from 'node:child_process';
import { accessSync, constants, existsSync, readFileSync } from 'node:fs';
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
  notes: string[];
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
  return { root, namespaces, cgroups, kvm, qemu, firecracker, isolation, notes };
}
