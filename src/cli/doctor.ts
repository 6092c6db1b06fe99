import type { Command } from 'commander';
import type { HostReport } from '../runtime/index.ts';
import { runAction } from './output.ts';
import type { CliDeps, GlobalOptions } from './output.ts';

/** What src/runtime's probeHost() reports about this machine, plus what `--data-plane auto` picks. */
export type HostProbe = HostReport & { data_plane?: 'haproxy' | 'node' };

/** Exactly the documented keys, in order (a probe may carry more). */
export function doctorJson(p: HostProbe): string {
  const { root, namespaces, cgroups, kvm, qemu, firecracker, isolation, sandbox_network, notes, sandboxes, data_plane } = p;
  return JSON.stringify({ root, namespaces, cgroups, kvm, qemu, firecracker, isolation, sandbox_network, sandboxes, notes, data_plane });
}

export function doctorReport(p: HostProbe): string {
  const mark = (ok: boolean): string => (ok ? '[ok]' : '[--]');
  const lines = [
    `${mark(p.root)} running as root${p.root ? '' : ' (needed for namespaces and cgroups)'}`,
    `${mark(p.namespaces)} linux namespaces (mount, pid, ipc, uts, net)`,
    `${mark(p.cgroups !== 'none')} cgroups ${p.cgroups === 'none' ? 'not usable' : p.cgroups}`,
    `${mark(p.kvm)} /dev/kvm`,
    `${mark(p.qemu)} qemu`,
    `${mark(p.firecracker)} firecracker`,
    '',
    p.isolation === 'none'
      ? 'isolation: none - functions run as plain child processes, NOT sandboxed'
      : `isolation: ${p.isolation}${p.sandbox_network ? `, sandbox network: ${p.sandbox_network}` : ''}`,
    '',
    'sandboxes this host can run (`--sandboxes auto` offers the [ok] ones):',
    ...p.sandboxes.map((s) => `  ${mark(s.ok)} ${s.kind}: ${s.detail}`),
  ];
  if (p.data_plane) lines.push(`data plane (--data-plane auto): ${p.data_plane}${p.data_plane === 'node' ? ' (the native data plane needs haproxy installed and sandboxes reached over TCP: the veth network)' : ''}`);
  if (p.notes.length > 0) lines.push('', 'notes:', ...p.notes.map((n) => `  - ${n}`));
  return `${lines.join('\n')}\n`;
}

export function registerDoctorWith(program: Command, deps: CliDeps, probe?: () => Promise<HostProbe>): void {
  program
    .command('doctor')
    .description('check what isolation and which sandboxes (process, qemu, firecracker) this host can give functions')
    .option('--json', 'print one JSON object')
    .action(
      runAction(deps, async (_opts: unknown, cmd: Command) => {
        const g = cmd.optsWithGlobals<GlobalOptions>();
        // Loaded on demand so other commands never pay for the runtime module.
        const p: HostProbe = probe ? await probe() : await probeWithDataPlane();
        deps.io.out(g.json ? `${doctorJson(p)}\n` : doctorReport(p));
      }),
    );
}

/** The host probe plus what `--data-plane auto` would pick on it (node when sandboxes are reached through forwarders). */
async function probeWithDataPlane(): Promise<HostProbe> {
  const host = await (await import('../runtime/index.ts')).probeHost();
  const { resolveDataPlane } = await import('../dataplane/index.ts');
  return { ...host, data_plane: resolveDataPlane('auto', process.env, undefined, host.sandbox_network === 'forwarder').kind };
}
