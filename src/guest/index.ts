/**
 * aether-init, the guest's PID 1, is C (src/guest/*.c) built from source into a static musl binary:
 * VM images hold no Node or Python, so it must be self-contained. `npm run build:guest` builds it;
 * the image builder calls ensureGuestInit() and rebuilds when the sources change.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, readFile, rename, stat, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { AetherError } from '../core/index.ts';

const SRC_DIR = dirname(fileURLToPath(import.meta.url));
const SOURCES = ['aether-init.c', 'json.c', 'json.h'];
/** The repository's gitignored build dir (`build/guest/`). */
export const GUEST_BUILD_DIR = join(SRC_DIR, '..', '..', 'build', 'guest');

export interface GuestInit {
  path: string;
  /** sha256 of the binary (part of image and initramfs cache keys). */
  sha256: string;
  size: number;
}

async function sourceHash(cc: string): Promise<string> {
  const h = createHash('sha256').update(`cc=${cc}\n`);
  for (const f of SOURCES) h.update(f).update(await readFile(join(SRC_DIR, f)));
  return h.digest('hex');
}

function run(cmd: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('error', (e) => reject(new AetherError('AETHER_ERR_GUEST_BUILD', `${cmd}: ${e.message} (install musl-tools)`)));
    child.on('close', (code) => (code === 0 ? resolve() : reject(new AetherError('AETHER_ERR_GUEST_BUILD', `${cmd} failed: ${err.trim().slice(0, 2000)}`))));
  });
}

let pending: Promise<GuestInit> | undefined;

/** Builds build/guest/aether-init when missing or when its sources changed (`AETHER_MUSL_GCC` overrides the compiler). */
export function ensureGuestInit(opts: { outDir?: string; force?: boolean } = {}): Promise<GuestInit> {
  if (opts.outDir !== undefined || opts.force === true) return build(opts.outDir ?? GUEST_BUILD_DIR, opts.force === true);
  pending ??= build(GUEST_BUILD_DIR, false).finally(() => (pending = undefined));
  return pending;
}

async function build(outDir: string, force: boolean): Promise<GuestInit> {
  const cc = process.env['AETHER_MUSL_GCC'] ?? 'musl-gcc';
  const out = join(outDir, 'aether-init');
  const stampPath = `${out}.src-sha256`;
  const want = await sourceHash(cc);
  const have = await readFile(stampPath, 'utf8').catch(() => '');
  const exists = await stat(out).then((s) => s.isFile(), () => false);
  if (force || !exists || have.trim() !== want) {
    await mkdir(outDir, { recursive: true });
    const tmp = `${out}.tmp-${process.pid}`;
    await run(cc, [
      '-static', '-Os', '-s', '-Wall', '-Wextra', '-Wno-format-truncation',
      '-ffunction-sections', '-fdata-sections', '-Wl,--gc-sections',
      '-o', tmp, join(SRC_DIR, 'aether-init.c'), join(SRC_DIR, 'json.c'),
    ]);
    await rename(tmp, out);
    await writeFile(stampPath, `${want}\n`);
  }
  const bytes = await readFile(out);
  return { path: out, sha256: createHash('sha256').update(bytes).digest('hex'), size: bytes.length };
}
