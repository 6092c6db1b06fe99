/**
 * The initramfs every Aether VM boots: aether-init as /init plus the virtio modules (the cloud
 * kernel builds them as modules) and overlayfs. aether-init loads them in name order, so each file
 * is prefixed with its position in MODULES.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { AetherError } from '../core/index.ts';
import { ensureGuestInit } from '../guest/index.ts';
import { cached, contentKey, exists, imageCacheDir } from './cache.ts';
import type { CpioEntry } from './cpio.ts';
import { writeCpio } from './cpio.ts';
import { findGuestKernel } from './kernel.ts';
import type { GuestKernel } from './kernel.ts';

/** Load order matters (dependencies first); paths under /lib/modules/<ver>/kernel/. */
export const MODULES: { name: string; path: string; optional?: boolean; pci?: boolean }[] = [
  { name: 'virtio_ring', path: 'drivers/virtio/virtio_ring.ko' },
  { name: 'virtio', path: 'drivers/virtio/virtio.ko' },
  { name: 'virtio_mmio', path: 'drivers/virtio/virtio_mmio.ko' },
  { name: 'virtio_pci_legacy_dev', path: 'drivers/virtio/virtio_pci_legacy_dev.ko', optional: true, pci: true },
  { name: 'virtio_pci_modern_dev', path: 'drivers/virtio/virtio_pci_modern_dev.ko', optional: true, pci: true },
  { name: 'virtio_pci', path: 'drivers/virtio/virtio_pci.ko', optional: true, pci: true },
  { name: 'failover', path: 'net/core/failover.ko' },
  { name: 'net_failover', path: 'drivers/net/net_failover.ko' },
  { name: 'virtio_net', path: 'drivers/net/virtio_net.ko' },
  { name: 'virtio_console', path: 'drivers/char/virtio_console.ko' },
  { name: 'virtio_blk', path: 'drivers/block/virtio_blk.ko' },
  { name: 'virtio-rng', path: 'drivers/char/hw_random/virtio-rng.ko', optional: true },
  { name: 'overlay', path: 'fs/overlayfs/overlay.ko' },
  // The ACPI power button as an input device: QEMU's system_powerdown then stops the program.
  { name: 'evdev', path: 'drivers/input/evdev.ko', optional: true },
  { name: 'button', path: 'drivers/acpi/button.ko', optional: true },
];

export interface Initramfs {
  path: string;
  kernel: GuestKernel;
}

export interface InitramfsOptions {
  kernelPath?: string;
  modulesDir?: string;
  cacheDir?: string;
  /** Also load virtio-pci (q35/pc machines); microvm and Firecracker use virtio-mmio only. */
  pci?: boolean;
}

/** Builds (or finds in the image cache) the initramfs for the guest kernel. */
export async function ensureInitramfs(opts: InitramfsOptions = {}): Promise<Initramfs> {
  const kernel = await findGuestKernel(opts);
  const init = await ensureGuestInit();
  const mods: { file: string; data: Buffer }[] = [];
  for (const [i, m] of MODULES.entries()) {
    if (m.pci === true && opts.pci !== true) continue; // each module costs boot time under TCG
    const p = join(kernel.modulesDir, 'kernel', m.path);
    if (!(await exists(p))) {
      if (m.optional === true) continue;
      throw new AetherError('AETHER_ERR_GUEST_BUILD', `kernel module ${p} not found (modules must match ${kernel.kernel})`);
    }
    mods.push({ file: `${String(i).padStart(2, '0')}-${m.name}.ko`, data: await readFile(p) });
  }
  const key = contentKey(['initramfs-v1', init.sha256, ...mods.flatMap((m) => [m.file, m.data])]);
  const path = await cached(opts.cacheDir ?? imageCacheDir(), `initramfs-${kernel.version}-${key}.cpio`, async (tmp) => {
    const entries: CpioEntry[] = [
      { name: 'dev', type: 'dir', mode: 0o755 },
      { name: 'dev/console', type: 'chardev', mode: 0o600, rdev: [5, 1] },
      { name: 'etc', type: 'dir', mode: 0o755 },
      { name: 'etc/aether-initramfs', type: 'file', mode: 0o644, data: Buffer.from(`${kernel.version}\n`) },
      { name: 'init', type: 'file', mode: 0o755, data: await readFile(init.path) },
      { name: 'lib', type: 'dir', mode: 0o755 },
      { name: 'lib/modules', type: 'dir', mode: 0o755 },
      { name: 'lib/modules/aether', type: 'dir', mode: 0o755 },
      ...mods.map((m): CpioEntry => ({ name: `lib/modules/aether/${m.file}`, type: 'file', mode: 0o644, data: m.data })),
      { name: 'mnt', type: 'dir', mode: 0o755 },
      { name: 'newroot', type: 'dir', mode: 0o755 },
      { name: 'proc', type: 'dir', mode: 0o755 },
      { name: 'sys', type: 'dir', mode: 0o755 },
    ];
    // Uncompressed: it is small, and decompressing costs more than reading under TCG.
    await writeFile(tmp, writeCpio(entries));
  });
  return { path, kernel };
}
