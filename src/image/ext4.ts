/** ext4 images from a directory with `mke2fs -d` (no loop mounts, no root needed for the copy). */
import { spawn } from 'node:child_process';
import { lstat, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { AetherError } from '../core/index.ts';

export function runTool(cmd: string, args: string[], env?: NodeJS.ProcessEnv): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: env ?? process.env });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('error', (e) => reject(new AetherError('AETHER_ERR_GUEST_BUILD', `${cmd}: ${e.message}`)));
    child.on('close', (code) => (code === 0 ? resolve(out) : reject(new AetherError('AETHER_ERR_GUEST_BUILD', `${cmd} exited ${code}: ${err.trim().slice(0, 2000)}`))));
  });
}

/** Bytes the tree takes in 4 KiB blocks, and its inode count. */
export async function treeUsage(dir: string): Promise<{ bytes: number; inodes: number }> {
  let bytes = 0;
  let inodes = 0;
  const walk = async (p: string): Promise<void> => {
    const st = await lstat(p);
    inodes++;
    bytes += Math.ceil(st.size / 4096) * 4096;
    if (st.isDirectory()) for (const n of await readdir(p)) await walk(join(p, n));
  };
  await walk(dir);
  return { bytes, inodes };
}

export interface Ext4Options {
  label?: string;
  /** Free space to leave, in MiB (default 8). */
  freeMb?: number;
  /** Fixed size in MiB instead of fitting the tree. */
  sizeMb?: number;
}

export async function makeExt4(dir: string, out: string, opts: Ext4Options = {}): Promise<void> {
  const { bytes, inodes } = await treeUsage(dir);
  const sizeMb = opts.sizeMb ?? Math.ceil((bytes * 1.1) / 2 ** 20 + inodes * 256 / 2 ** 20) + (opts.freeMb ?? 8) + 4;
  // No journal: the root and code images are mounted read-only; -m 0: no reserved blocks.
  await runTool(
    process.env['AETHER_MKE2FS'] ?? 'mke2fs',
    ['-q', '-F', '-t', 'ext4', '-O', '^has_journal', '-m', '0', '-b', '4096', '-N', String(inodes + 1024),
      '-L', opts.label ?? 'aether', '-E', 'root_owner=0:0', '-d', dir, out, `${sizeMb}M`],
    { ...process.env, E2FSPROGS_FAKE_TIME: '1' },
  );
}
