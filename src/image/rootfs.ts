/**
 * Root filesystem images: `aether image build <dir | archive>` and the `node` / `python` base
 * images built from what the host already has (the platform's Node, the host's python3, their
 * shared libraries, busybox-static). Every image gets aether-init at /sbin/aether-init and
 * firework's /etc/firework/runtime.json.
 */
import { execFile } from 'node:child_process';
import { copyFile, chmod, lstat, mkdir, mkdtemp, readFile, readdir, readlink, realpath, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { AetherError } from '../core/index.ts';
import { ensureGuestInit } from '../guest/index.ts';
import { cached, contentKey, exists, imageCacheDir } from './cache.ts';
import { makeExt4, runTool } from './ext4.ts';
import { applyImage, unpackArchive } from './oci.ts';
import type { RuntimeJson } from './oci.ts';

const execFileP = promisify(execFile);

export type Progress = (message: string) => void;

export const RUNTIME_JSON = 'etc/firework/runtime.json';

/** The directories every root needs (mount points for a root booted without the overlay). */
async function skeleton(root: string): Promise<void> {
  for (const d of ['dev', 'proc', 'sys', 'run', 'etc/firework', 'sbin', 'root', 'mnt']) await mkdir(join(root, d), { recursive: true });
  await mkdir(join(root, 'tmp'), { recursive: true });
  await chmod(join(root, 'tmp'), 0o1777);
}

async function installInit(root: string): Promise<void> {
  const init = await ensureGuestInit();
  const dest = join(root, 'sbin', 'aether-init');
  await rm(dest, { force: true });
  await copyFile(init.path, dest);
  await chmod(dest, 0o755);
}

async function writeRuntime(root: string, rt: RuntimeJson): Promise<void> {
  await mkdir(join(root, 'etc', 'firework'), { recursive: true });
  const p = join(root, RUNTIME_JSON);
  await rm(p, { force: true });
  await writeFile(p, `${JSON.stringify(rt, null, 2)}\n`, { mode: 0o644 });
}

async function readRuntime(root: string): Promise<RuntimeJson> {
  const text = await readFile(join(root, RUNTIME_JSON), 'utf8').catch(() => undefined);
  if (text === undefined) return {};
  try {
    return JSON.parse(text) as RuntimeJson;
  } catch {
    return {};
  }
}

export interface BuildImageOptions {
  /** Directory (a root filesystem or an unpacked OCI layout) or an archive file (docker save / OCI layout tar, optionally gzip). */
  source: string;
  output: string;
  /** Fields that override the image's runtime.json. */
  runtime?: RuntimeJson;
  /** Where the staging tree goes (default: next to the output). */
  workDir?: string;
  onProgress?: Progress;
}

/** Builds an ext4 root image; returns the runtime.json written into it. */
export async function buildImage(opts: BuildImageOptions): Promise<RuntimeJson> {
  const say = opts.onProgress ?? (() => undefined);
  const st = await stat(opts.source).catch(() => undefined);
  if (!st) throw new AetherError('AETHER_ERR_IMAGE_INVALID', `${opts.source} does not exist`);
  const work = await mkdtemp(join(opts.workDir ?? dirname(opts.output), '.aether-image-'));
  try {
    const root = join(work, 'root');
    await mkdir(root);
    let rt: RuntimeJson;
    const isLayout = st.isDirectory() && ((await exists(join(opts.source, 'index.json'))) || (await exists(join(opts.source, 'manifest.json')))) && !(await exists(join(opts.source, 'etc')));
    if (st.isDirectory() && !isLayout) {
      say(`copying ${opts.source}`);
      await runTool('cp', ['-a', `${opts.source}/.`, `${root}/`]);
      rt = await readRuntime(root);
    } else {
      let layoutDir = opts.source;
      if (!st.isDirectory()) {
        say(`unpacking ${opts.source}`);
        layoutDir = join(work, 'layout');
        await mkdir(layoutDir);
        await unpackArchive(opts.source, layoutDir);
      }
      rt = await applyImage(layoutDir, root, (i, n) => say(`applying layer ${i}/${n}`));
      await rm(join(work, 'layout'), { recursive: true, force: true });
    }
    rt = { ...rt, ...opts.runtime };
    await skeleton(root);
    await installInit(root);
    await writeRuntime(root, rt);
    say(`writing ${opts.output} (mke2fs)`);
    const tmp = `${opts.output}.tmp-${process.pid}`;
    await makeExt4(root, tmp, { label: 'aether-root' });
    await runTool('mv', ['-f', tmp, opts.output]);
    return rt;
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

// ---------- base images ----------

export type BaseKind = 'node' | 'python';
export const BASE_KINDS: readonly BaseKind[] = ['node', 'python'];

/** Shared libraries a binary needs (ldd), as absolute host paths. */
async function sharedLibs(bin: string): Promise<string[]> {
  const { stdout } = await execFileP('ldd', [bin]).catch(() => ({ stdout: '' }));
  const libs: string[] = [];
  for (const line of stdout.split('\n')) {
    const m = /=>\s+(\/\S+)/.exec(line) ?? /^\s*(\/\S+)\s+\(/.exec(line);
    if (m?.[1]) libs.push(m[1]);
  }
  return libs;
}

/** Copies host files to the same paths in root (symlinks resolved: the content lands at the path asked for). */
async function copyHostFile(root: string, hostPath: string, destPath = hostPath, opts: { strip?: boolean } = {}): Promise<void> {
  const dest = join(root, destPath);
  if (await exists(dest)) return;
  await mkdir(dirname(dest), { recursive: true });
  if (opts.strip === true && (await runTool('strip', ['-o', dest, await realpath(hostPath)]).then(() => true, () => false))) return;
  await copyFile(await realpath(hostPath), dest);
  await chmod(dest, (await stat(hostPath)).mode & 0o7777);
}

async function copyTree(src: string, dest: string, skip: (rel: string, isDir: boolean) => boolean, rel = ''): Promise<void> {
  await mkdir(dest, { recursive: true });
  for (const n of await readdir(src)) {
    const r = rel === '' ? n : `${rel}/${n}`;
    const s = join(src, n);
    const st = await lstat(s);
    if (skip(r, st.isDirectory())) continue;
    if (st.isDirectory()) await copyTree(s, join(dest, n), skip, r);
    else if (st.isSymbolicLink()) await symlink(await readlink(s), join(dest, n));
    else if (st.isFile()) await copyFile(s, join(dest, n));
  }
}

/** Stat identity of every file under the given roots (cheap content key for host inputs). */
async function statKey(paths: string[]): Promise<string> {
  const out: string[] = [];
  const walk = async (p: string): Promise<void> => {
    const st = await lstat(p).catch(() => undefined);
    if (!st) return;
    out.push(`${p}:${st.size}:${Math.floor(st.mtimeMs)}`);
    if (st.isDirectory()) for (const n of (await readdir(p)).sort()) await walk(join(p, n));
  };
  for (const p of paths) await walk(p);
  return out.join('\n');
}

const PASSWD = 'root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n';
const GROUP = 'root:x:0:\napp:x:1000:\nnogroup:x:65534:\n';

async function busybox(root: string): Promise<void> {
  const bb = process.env['AETHER_BUSYBOX'] ?? '/bin/busybox';
  if (!(await exists(bb))) throw new AetherError('AETHER_ERR_GUEST_BUILD', `${bb} not found (install busybox-static)`);
  await copyHostFile(root, bb, '/bin/busybox');
  const list = await runTool(join(root, 'bin', 'busybox'), ['--list-full']).catch(() => '');
  for (const applet of list.split('\n').map((l) => l.trim()).filter((l) => l !== '')) {
    const dest = join(root, applet);
    if (await exists(dest)) continue;
    await mkdir(dirname(dest), { recursive: true });
    await symlink('/bin/busybox', dest).catch(() => undefined);
  }
}

async function commonEtc(root: string): Promise<void> {
  await mkdir(join(root, 'etc'), { recursive: true });
  await writeFile(join(root, 'etc', 'passwd'), PASSWD);
  await writeFile(join(root, 'etc', 'group'), GROUP);
  await writeFile(join(root, 'etc', 'hosts'), '127.0.0.1 localhost\n::1 localhost\n');
  await writeFile(join(root, 'etc', 'nsswitch.conf'), 'passwd: files\ngroup: files\nhosts: files dns\n');
  await mkdir(join(root, 'home', 'app'), { recursive: true });
  if (process.getuid?.() === 0) await runTool('chown', ['1000:1000', join(root, 'home', 'app')]);
}

interface BaseRecipe {
  /** Host paths whose identity keys the cache. */
  inputs: string[];
  fill: (root: string, say: Progress) => Promise<void>;
  runtime: RuntimeJson;
}

/** The platform's own Node (the `node` npm package), not whatever `node` is first on PATH. */
export async function platformNodeBinary(): Promise<string> {
  try {
    return await realpath(createRequire(import.meta.url).resolve('node/bin/node'));
  } catch {
    return process.execPath;
  }
}

async function hostPython(): Promise<{ bin: string; stdlib: string }> {
  const bin = process.env['AETHER_PYTHON'] ?? '/usr/bin/python3';
  const { stdout } = await execFileP(bin, ['-c', 'import sys,sysconfig;print(sys.executable);print(sysconfig.get_paths()["stdlib"])']).catch(() => {
    throw new AetherError('AETHER_ERR_GUEST_BUILD', `${bin} not found or not runnable (install python3)`);
  });
  const [exe, stdlib] = stdout.trim().split('\n');
  return { bin: await realpath(exe ?? bin), stdlib: stdlib ?? '' };
}

async function recipe(kind: BaseKind): Promise<BaseRecipe> {
  const bb = process.env['AETHER_BUSYBOX'] ?? '/bin/busybox';
  if (kind === 'node') {
    const node = await platformNodeBinary();
    const libs = await sharedLibs(node);
    return {
      inputs: [node, bb, ...libs],
      runtime: { user: 'app', workdir: '/run/aether/code', env: {}, writable_paths: [], cmd: ['node'] },
      fill: async (root, say) => {
        say(`copying node (${node})`);
        await copyHostFile(root, node, '/usr/bin/node', { strip: true });
        for (const l of libs) await copyHostFile(root, l);
      },
    };
  }
  const py = await hostPython();
  const skip = (rel: string, isDir: boolean): boolean =>
    (isDir && /^(test|idlelib|tkinter|turtledemo|ensurepip|lib2to3\/tests|unittest\/test|distutils\/tests)$/.test(rel)) || rel.endsWith('.a');
  const dynload = join(py.stdlib, 'lib-dynload');
  const extLibs = new Set<string>(await sharedLibs(py.bin));
  for (const n of await readdir(dynload).catch(() => [] as string[])) if (n.endsWith('.so')) for (const l of await sharedLibs(join(dynload, n))) extLibs.add(l);
  return {
    inputs: [py.bin, py.stdlib, bb, ...extLibs],
    runtime: { user: 'app', workdir: '/run/aether/code', env: { PYTHONDONTWRITEBYTECODE: '1', PYTHONUNBUFFERED: '1' }, writable_paths: [], cmd: ['python3'] },
    fill: async (root, say) => {
      say(`copying python (${py.bin}) and its standard library (${py.stdlib})`);
      await copyHostFile(root, py.bin, py.bin);
      const name = py.bin.split('/').pop() as string;
      for (const alias of ['/usr/bin/python3', '/usr/bin/python']) if (!(await exists(join(root, alias)))) await symlink(name, join(root, alias));
      await copyTree(py.stdlib, join(root, py.stdlib), skip);
      for (const l of extLibs) await copyHostFile(root, l);
    },
  };
}

export interface BaseImageOptions {
  onProgress?: Progress;
  cacheDir?: string;
}

/**
 * The `node` or `python` base root image, built on first use into the image cache (keyed by the
 * host inputs, aether-init and this recipe's version). Returns its path.
 */
export function ensureBaseImage(kind: BaseKind, opts: BaseImageOptions = {}): Promise<string> {
  // Computing the key stats the host inputs (and runs ldd): once per process and cache dir.
  const memo = `${kind}\0${opts.cacheDir ?? imageCacheDir()}`;
  const hit = resolved.get(memo);
  // A memoized path whose file was removed (cache cleaned) is rebuilt.
  if (hit) return hit.then(async (path) => ((await exists(path)) ? path : (resolved.delete(memo), ensureBaseImage(kind, opts))));
  const p = buildBase(kind, opts);
  resolved.set(memo, p);
  p.catch(() => resolved.delete(memo));
  return p;
}

const resolved = new Map<string, Promise<string>>();

async function buildBase(kind: BaseKind, opts: BaseImageOptions): Promise<string> {
  const say = opts.onProgress ?? (() => undefined);
  const init = await ensureGuestInit();
  const r = await recipe(kind);
  const key = contentKey([`base-${kind}-v1`, init.sha256, await statKey(r.inputs), JSON.stringify(r.runtime)]);
  const dir = opts.cacheDir ?? imageCacheDir();
  const name = `base-${kind}-${key}.ext4`;
  if (await exists(join(dir, name))) return join(dir, name);
  return cached(dir, name, async (tmp) => {
    const t0 = Date.now();
    say(`building the ${kind} base image in ${dir} (first use; later starts reuse it)`);
    await mkdir(dir, { recursive: true });
    const work = await mkdtemp(join(dir, `.build-${kind}-`));
    try {
      const root = join(work, 'root');
      await skeleton(root);
      await commonEtc(root);
      say('installing busybox');
      await busybox(root);
      await r.fill(root, say);
      await installInit(root);
      await writeRuntime(root, r.runtime);
      say('writing the ext4 image (mke2fs)');
      await makeExt4(root, tmp, { label: 'aether-root' });
      say(`${kind} base image ready in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    } finally {
      await rm(work, { recursive: true, force: true });
    }
  });
}
