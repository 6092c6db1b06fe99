/** The guest kernel (Debian's linux-image-cloud-amd64) and its module tree. */
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { AetherError } from '../core/index.ts';

export interface GuestKernel {
  /** bzImage path (QEMU `-kernel`). */
  kernel: string;
  /** e.g. 6.1.0-57-cloud-amd64 */
  version: string;
  /** /lib/modules/<version> */
  modulesDir: string;
}

function compareVersions(a: string, b: string): number {
  const pa = a.split(/[.-]/).map((x) => Number.parseInt(x, 10) || 0);
  const pb = b.split(/[.-]/).map((x) => Number.parseInt(x, 10) || 0);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}

/**
 * `kernelPath` (or env AETHER_GUEST_KERNEL) names a kernel; else the newest /boot/vmlinuz-*-cloud-amd64.
 * Its version is taken from the file name; modules from `modulesDir` or /lib/modules/<version>.
 */
export async function findGuestKernel(opts: { kernelPath?: string; modulesDir?: string; bootDir?: string } = {}): Promise<GuestKernel> {
  const bootDir = opts.bootDir ?? '/boot';
  let kernel = opts.kernelPath ?? process.env['AETHER_GUEST_KERNEL'];
  if (kernel === undefined) {
    const names = (await readdir(bootDir).catch(() => [] as string[])).filter((n) => /^vmlinuz-.*-cloud-amd64$/.test(n));
    names.sort((a, b) => compareVersions(a.slice(8), b.slice(8)));
    const newest = names.at(-1);
    if (newest === undefined) throw new AetherError('AETHER_ERR_GUEST_BUILD', `no guest kernel: ${bootDir}/vmlinuz-*-cloud-amd64 not found (install linux-image-cloud-amd64)`);
    kernel = join(bootDir, newest);
  }
  const version = /vmlinuz-(.+)$/.exec(kernel)?.[1] ?? '';
  const modulesDir = opts.modulesDir ?? process.env['AETHER_GUEST_MODULES'] ?? join('/lib/modules', version);
  const ok = await stat(kernel).then((s) => s.isFile(), () => false);
  if (!ok) throw new AetherError('AETHER_ERR_GUEST_BUILD', `guest kernel ${kernel} not found`);
  return { kernel, version, modulesDir };
}
