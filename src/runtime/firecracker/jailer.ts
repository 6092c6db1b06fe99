/**
 * Firecracker under its jailer (chroot + cgroups + dropped privileges). The jail root is
 * `<chrootBase>/<exec name>/<id>/root`; every file the VM opens is hard-linked (copied across
 * filesystems) into it and named jail-relative, to the API or on Firecracker's command line (its
 * logger and metrics files: linked before the jailer runs, which keeps a jail root that exists and
 * hands it to the jail user). Not daemonized and no new PID
 * namespace: the child we spawn is Firecracker itself, and its stdout stays the serial console.
 */
import { copyFile, chown, link, mkdir } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

export interface JailerOptions {
  /** The jailer binary. */
  bin: string;
  uid: number;
  gid: number;
  /** Default /srv/jailer. */
  chrootBase?: string;
  /** Default 2. */
  cgroupVersion?: 1 | 2;
}

/** The API socket as Firecracker is told it: inside the jail (every jailed VM has the same one). */
const JAILED_API_SOCK = '/run/firecracker.socket';

/** `apiSock`: the socket's host path; `apiArg`: Firecracker's `--api-sock` argument. */
export function jailerArgv(j: JailerOptions, vm: { id: string; firecracker: string; netns?: string }): { argv: string[]; root: string; apiSock: string; apiArg: string; jailDir: string } {
  const base = j.chrootBase ?? '/srv/jailer';
  const jailDir = join(base, basename(vm.firecracker), vm.id);
  const root = join(jailDir, 'root');
  const argv = [
    j.bin,
    '--id', vm.id,
    '--exec-file', vm.firecracker,
    '--uid', String(j.uid),
    '--gid', String(j.gid),
    '--chroot-base-dir', base,
    '--cgroup-version', String(j.cgroupVersion ?? 2),
    ...(vm.netns ? ['--netns', vm.netns] : []),
    '--',
    '--api-sock', JAILED_API_SOCK,
  ];
  return { argv, root, apiSock: join(root, JAILED_API_SOCK), apiArg: JAILED_API_SOCK, jailDir };
}

/** Link `hostPath` into the jail root (same name), owned by the jail's uid:gid; returns the path Firecracker sees. */
export async function stageIntoJail(root: string, hostPath: string, j: JailerOptions): Promise<string> {
  const inJail = `/${basename(hostPath)}`;
  const target = join(root, inJail);
  await mkdir(dirname(target), { recursive: true });
  try {
    await link(hostPath, target);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EXDEV') await copyFile(hostPath, target);
    else if (code !== 'EEXIST') throw err;
  }
  await chown(target, j.uid, j.gid);
  return inJail;
}
