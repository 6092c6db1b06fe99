import { readdir, readFile, realpath, stat } from 'node:fs/promises';
import { basename, join, relative, resolve, sep } from 'node:path';
import ignore from 'ignore';
import yazl from 'yazl';
import { AetherError } from '../core/index.ts';

export const IGNORE_FILE = '.aetherignore';
// Fixed timestamps make the archive (and so code_sha256) depend on the contents only.
const FIXED_MTIME = new Date(2000, 0, 1);

export interface PackResult {
  archive: Buffer;
  /** Paths inside the archive, in order, relative to its root. */
  files: string[];
}

/**
 * Zip a directory's contents at the archive root. Honours `.aetherignore` (gitignore syntax);
 * always leaves out `.git` and the ignore file itself; keeps node_modules (functions need them).
 * Symlinks are followed only when they stay inside the directory (the server refuses links).
 */
export async function packDirectory(dir: string): Promise<PackResult> {
  const root = resolve(dir);
  const rootReal = await realpath(root).catch(() => {
    throw new AetherError('AETHER_ERR_VALIDATION', `no such directory: ${dir}`);
  });
  if (!(await stat(rootReal)).isDirectory()) throw new AetherError('AETHER_ERR_VALIDATION', `not a directory: ${dir}`);

  const ig = ignore().add(['.git', IGNORE_FILE]);
  const rules = await readFile(join(rootReal, IGNORE_FILE), 'utf8').catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return '';
    throw err;
  });
  ig.add(rules);

  const files: { abs: string; rel: string; mode: number }[] = [];
  const walk = async (absDir: string, relDir: string): Promise<void> => {
    const entries = await readdir(absDir, { withFileTypes: true });
    entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    for (const e of entries) {
      const abs = join(absDir, e.name);
      const rel = relDir ? `${relDir}/${e.name}` : e.name;
      let isDir = e.isDirectory();
      let isFile = e.isFile();
      if (e.isSymbolicLink()) {
        const target = await realpath(abs).catch(() => undefined);
        if (!target || !(target === rootReal || target.startsWith(rootReal + sep))) continue;
        const st = await stat(target);
        // A linked directory could loop; a linked file is stored as a copy.
        isDir = false;
        isFile = st.isFile();
      }
      if (isDir) {
        if (ig.ignores(`${rel}/`)) continue;
        await walk(abs, rel);
      } else if (isFile) {
        if (ig.ignores(rel)) continue;
        const st = await stat(abs);
        files.push({ abs, rel, mode: st.mode & 0o777 });
      }
    }
  };
  await walk(rootReal, '');
  if (files.length === 0) throw new AetherError('AETHER_ERR_VALIDATION', `nothing to deploy in ${dir} (empty, or everything ignored)`);

  const zip = new yazl.ZipFile();
  for (const f of files) zip.addBuffer(await readFile(f.abs), f.rel, { mtime: FIXED_MTIME, mode: 0o100000 | f.mode });
  zip.end();
  const chunks: Buffer[] = [];
  for await (const c of zip.outputStream) chunks.push(c as Buffer);
  return { archive: Buffer.concat(chunks), files: files.map((f) => f.rel) };
}

/** A directory name made into a valid function name ([a-z][a-z0-9-]{0,62}). */
export function sanitizeName(raw: string): string {
  const s = raw
    .toLowerCase()
    .replace(/[^a-z0-9-]+/g, '-')
    .replace(/-+/g, '-')
    .replace(/^[^a-z]+/, '')
    .slice(0, 63)
    .replace(/-+$/, '');
  return s || 'fn';
}

export function nameForDir(dir: string): string {
  return sanitizeName(basename(resolve(dir)));
}

/** python when the code looks like a Python function (main.py and no handler.js, or only .py files), else node. */
export async function guessRuntime(dir: string, entrypoint?: string): Promise<'node' | 'python'> {
  if (entrypoint) return entrypoint.endsWith('.py') ? 'python' : 'node';
  const names = await readdir(dir).catch(() => [] as string[]);
  const has = (n: string): boolean => names.includes(n);
  if (has('handler.js')) return 'node';
  if (has('main.py')) return 'python';
  if (has('package.json')) return 'node';
  const py = names.some((n) => n.endsWith('.py'));
  const js = names.some((n) => /\.(c|m)?js$/.test(n));
  return py && !js ? 'python' : 'node';
}

/** Entrypoint to set on a new function when the default (handler.js) is absent but package.json names one. */
export async function guessEntrypoint(dir: string, runtime: 'node' | 'python'): Promise<string | undefined> {
  if (runtime !== 'node') return undefined;
  const exists = (p: string): Promise<boolean> =>
    stat(join(dir, p)).then(
      (s) => s.isFile(),
      () => false,
    );
  if (await exists('handler.js')) return undefined;
  try {
    const pkg = JSON.parse(await readFile(join(dir, 'package.json'), 'utf8')) as { main?: unknown };
    if (typeof pkg.main === 'string') {
      const main = relative('.', pkg.main).split(sep).join('/');
      if (main && !main.startsWith('..') && (await exists(main))) return main;
    }
  } catch {
    // no or unreadable package.json: fall through
  }
  for (const c of ['index.js', 'server.js', 'main.js', 'index.mjs']) if (await exists(c)) return c;
  return undefined;
}
