import { execFile } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { AetherError } from '../core/index.ts';
import type { RepoFile } from './format.ts';

const run = promisify(execFile);

/** Where specs come from: a local directory, or a Git repository (URL + branch). */
export interface SpecSource {
  /** A description for logs and the API ("dir /srv/specs", "git https://…#main"). */
  readonly describe: string;
  /** For git sources: the branch, so webhook pushes to other branches are ignored. */
  readonly branch?: string;
  /** Reads the current specs and a revision that changes whenever they do. */
  read(): Promise<{ revision: string; files: RepoFile[] }>;
}

const MAX_FILE_BYTES = 1 << 20;

/** Reads firework's files (defaults.yaml, services/*, tenants/<t>/*) under `root`, which must be a directory. */
export async function readSpecFiles(root: string): Promise<RepoFile[]> {
  // A mistyped path is said as such, not planned as an empty repo ("no services found").
  const st = await stat(root).catch(() => undefined);
  if (!st?.isDirectory()) throw new AetherError('AETHER_ERR_VALIDATION', `specs: ${root} is not a directory (give a directory in firework layout: defaults.yaml, services/, tenants/; or a git URL)`);
  const files: RepoFile[] = [];
  const add = async (rel: string): Promise<void> => {
    const buf = await readFile(join(root, rel));
    if (buf.length > MAX_FILE_BYTES) throw new Error(`${rel}: larger than ${MAX_FILE_BYTES} bytes`);
    files.push({ path: rel, text: buf.toString('utf8') });
  };
  const list = async (rel: string): Promise<{ name: string; dir: boolean }[]> => {
    try {
      return (await readdir(join(root, rel), { withFileTypes: true })).map((d) => ({ name: d.name, dir: d.isDirectory() }));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw err;
    }
  };
  const yaml = (n: string): boolean => n.endsWith('.yaml') || n.endsWith('.yml');
  if ((await list('')).some((e) => e.name === 'defaults.yaml' && !e.dir)) await add('defaults.yaml');
  for (const e of await list('services')) if (!e.dir && yaml(e.name)) await add(`services/${e.name}`);
  for (const t of await list('tenants')) {
    if (!t.dir) continue;
    for (const e of await list(`tenants/${t.name}`)) if (!e.dir && yaml(e.name)) await add(`tenants/${t.name}/${e.name}`);
  }
  return files;
}

export function directorySource(dir: string): SpecSource {
  return {
    describe: `dir ${dir}`,
    async read() {
      const files = await readSpecFiles(dir);
      const { createHash } = await import('node:crypto');
      const h = createHash('sha256');
      for (const f of files) h.update(f.path).update('\0').update(f.text).update('\0');
      return { revision: h.digest('hex').slice(0, 12), files };
    },
  };
}

/** `url#branch` -> parts; the branch defaults to main as in firework. */
export function parseGitRef(ref: string): { url: string; branch: string } {
  const hash = ref.lastIndexOf('#');
  return hash > 0 ? { url: ref.slice(0, hash), branch: ref.slice(hash + 1) || 'main' } : { url: ref, branch: 'main' };
}

export function isGitUrl(ref: string): boolean {
  return /^(https?|ssh|git|file):\/\//.test(ref) || /^[\w.-]+@[\w.-]+:/.test(ref) || /\.git(#.*)?$/.test(ref);
}

/**
 * A Git repo read with the `git` CLI: a shallow single-branch fetch into a private work dir on
 * each read (cheap for spec repos), the revision is the commit hash.
 */
export function gitSource(ref: string, workRoot?: string): SpecSource {
  const { url, branch } = parseGitRef(ref);
  return {
    describe: `git ${url}#${branch}`,
    branch,
    async read() {
      const dir = await mkdtemp(join(workRoot ?? tmpdir(), 'aether-specs-'));
      try {
        const env = { ...process.env, GIT_TERMINAL_PROMPT: '0' };
        await run('git', ['clone', '--quiet', '--depth', '1', '--single-branch', '--branch', branch, '--', url, dir], { env, timeout: 60_000 });
        const { stdout } = await run('git', ['-C', dir, 'rev-parse', 'HEAD'], { env });
        return { revision: stdout.trim(), files: await readSpecFiles(dir) };
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    },
  };
}

export function specSource(ref: string): SpecSource {
  return isGitUrl(ref) ? gitSource(ref) : directorySource(ref);
}
