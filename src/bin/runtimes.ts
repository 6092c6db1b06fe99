import { join } from 'node:path';
import type { Config } from '../config/index.ts';
import type { Clock, Logger } from '../core/index.ts';
import { probeSandboxes, type HostReport, type Runtime, type SandboxProbe } from '../runtime/index.ts';
import { createProcessRuntime } from '../runtime/process/index.ts';
import { createQemuRuntime } from '../runtime/qemu/index.ts';
import { createFirecrackerRuntime } from '../runtime/firecracker/index.ts';
import { ensureBaseImage, ensureInitramfs } from '../image/index.ts';
import type { SandboxKind } from '../spec/index.ts';

export interface RuntimeChoice {
  runtimes: Partial<Record<SandboxKind, Runtime>>;
  /** Lines for the operator (what is offered, warnings). */
  notes: string[];
}

/**
 * The only place sandbox kinds map to drivers. `auto` offers what the host probe accepts; a kind
 * named explicitly is offered even when the probe rejects it (with a warning), so an operator can
 * override a wrong probe.
 */
export function openRuntimes(cfg: Config, host: HostReport, agentId: string, clock: Clock, logger: Logger): RuntimeChoice {
  const probes = probeSandboxes(host);
  const probe = (k: SandboxKind): SandboxProbe => probes.find((p) => p.kind === k) as SandboxProbe;
  const notes: string[] = [];
  const kinds = cfg.sandboxes === 'auto' ? probes.filter((p) => p.ok).map((p) => p.kind) : cfg.sandboxes;
  const runtimes: Partial<Record<SandboxKind, Runtime>> = {};
  for (const kind of kinds) {
    const p = probe(kind);
    if (cfg.sandboxes !== 'auto' && !p.ok) notes.push(`WARNING: sandbox ${kind} offered as asked, but the host probe says: ${p.detail}`);
    switch (kind) {
      case 'process':
        runtimes.process = createProcessRuntime({ dataDir: join(cfg.dataDir, 'runtime'), agentId, isolation: cfg.isolation, network: cfg.sandboxNetwork, netPool: cfg.sandboxNetPool, clock, logger, hidePaths: [cfg.dataDir] });
        if (runtimes.process.isolation === 'none') notes.push('WARNING: process sandboxes are plain child processes (no namespaces/cgroups): run as root for isolation; see `aether doctor`');
        break;
      case 'qemu':
        try {
          runtimes.qemu = createQemuRuntime({ dataDir: join(cfg.dataDir, 'runtime-qemu'), agentId, clock, logger, onProgress: (m) => logger.info(m) });
        } catch (err) {
          notes.push(`WARNING: sandbox qemu not offered: ${(err as Error).message}`);
        }
        break;
      case 'firecracker': {
        // env: AETHER_FIRECRACKER, AETHER_FC_KERNEL (ELF vmlinux), AETHER_FC_JAILER + AETHER_FC_UID/GID (docs/firecracker.md)
        const env = process.env;
        const kernel = env['AETHER_FC_KERNEL'] ?? env['AETHER_GUEST_KERNEL'] ?? '';
        const jailer = env['AETHER_FC_JAILER'];
        const cacheOpts = { onProgress: (m: string) => logger.info(m) };
        runtimes.firecracker = createFirecrackerRuntime({
          stateDir: join(cfg.dataDir, 'runtime-firecracker'),
          agentId,
          firecracker: env['AETHER_FIRECRACKER'] ?? 'firecracker',
          // the initramfs carries the modules of the Debian cloud kernel this vmlinux was extracted from
          guest: async () => ({ kernel, initrd: (await ensureInitramfs()).path }),
          baseImage: (runtime) => ensureBaseImage(runtime, cacheOpts),
          ...(jailer ? { jailer: { bin: jailer, uid: Number(env['AETHER_FC_UID'] ?? 0), gid: Number(env['AETHER_FC_GID'] ?? 0) } } : {}),
          clock,
          logger,
        });
        break;
      }
      default:
        notes.push(`WARNING: sandbox ${kind}: no driver in this build; not offered`);
    }
  }
  notes.unshift(`sandboxes: ${Object.entries(runtimes).map(([k, rt]) => `${k} (${rt.isolation})`).join(', ') || 'none'}`);
  return { runtimes, notes };
}
