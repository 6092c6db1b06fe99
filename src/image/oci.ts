/**
 * OCI / docker-save image archives → a root filesystem directory, without a Docker engine.
 * Layers are applied in order with whiteouts (`.wh.NAME`) and opaque directories (`.wh..wh..opq`);
 * every path is resolved inside the root, following the image's own symlinks as a chroot would,
 * so no entry can write outside it.
 */
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { chmod, lchown, link, lstat, mkdir, open, readFile, readdir, readlink, realpath, rm, symlink, utimes } from 'node:fs/promises';
import { join, posix } from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import * as zlib from 'node:zlib';
import * as tar from 'tar-stream';
import { z } from 'zod';
import { AetherError } from '../core/index.ts';

const invalid = (msg: string): AetherError => new AetherError('AETHER_ERR_IMAGE_INVALID', msg);

/** firework's /etc/firework/runtime.json (plus `cmd`, the image's entrypoint + cmd). */
export interface RuntimeJson {
  user?: string;
  workdir?: string;
  env?: Record<string, string>;
  writable_paths?: string[];
  cmd?: string[];
}

async function head(path: string, n: number): Promise<Buffer> {
  const fh = await open(path, 'r');
  try {
    const b = Buffer.alloc(n);
    const { bytesRead } = await fh.read(b, 0, n, 0);
    return b.subarray(0, bytesRead);
  } finally {
    await fh.close();
  }
}

/** A readable of the file's tar bytes, decompressing gzip or zstd by magic bytes. */
async function tarStream(path: string): Promise<Readable[]> {
  const h = await head(path, 4);
  const src = createReadStream(path);
  if (h[0] === 0x1f && h[1] === 0x8b) return [src, zlib.createGunzip()];
  if (h.readUInt32LE(0) === 0xfd2fb528) {
    const mk = (zlib as unknown as { createZstdDecompress?: () => Readable }).createZstdDecompress;
    if (!mk) throw invalid('zstd layers need Node >= 22.15');
    return [src, mk()];
  }
  return [src];
}

/** Iterates tar entries of a file; `each` must consume or drain the entry stream. */
async function forEachEntry(path: string, each: (h: tar.Header, body: Readable) => Promise<void>): Promise<void> {
  const extract = tar.extract();
  const streams = await tarStream(path);
  const piping = pipeline([...streams, extract] as unknown as [Readable, Readable]).catch((e: unknown) => {
    throw invalid(`${path.split('/').pop() ?? 'archive'}: not a readable tar (${e instanceof Error ? e.message : String(e)})`);
  });
  try {
    for await (const entry of extract) await each(entry.header, entry as unknown as Readable);
  } catch (e) {
    extract.destroy();
    await piping.catch(() => undefined);
    throw e;
  }
  await piping;
}

/** Normalized relative path parts of a tar entry name; throws on `..` escaping the root. */
export function entryParts(name: string): string[] {
  const parts: string[] = [];
  for (const p of name.split('/')) {
    if (p === '' || p === '.') continue;
    if (p === '..') throw invalid(`layer entry ${JSON.stringify(name)} climbs out of the root`);
    parts.push(p);
  }
  return parts;
}

/**
 * Resolves `parts` under `root` the way the path would resolve inside the image (symlinks are
 * followed relative to the image root, `..` stops at it). The last part is not followed
 * unless `followLast`. Returns an absolute host path inside root.
 */
export async function resolveInRoot(root: string, parts: string[], followLast = false): Promise<string> {
  const cur: string[] = [];
  const todo = [...parts];
  let hops = 0;
  while (todo.length > 0) {
    const p = todo.shift() as string;
    if (p === '' || p === '.') continue;
    if (p === '..') {
      cur.pop();
      continue;
    }
    const host = join(root, ...cur, p);
    if (todo.length > 0 || followLast) {
      const st = await lstat(host).catch(() => undefined);
      if (st?.isSymbolicLink()) {
        if (++hops > 40) throw invalid(`too many symlinks resolving /${parts.join('/')}`);
        const target = await readlink(host);
        if (target.startsWith('/')) cur.length = 0;
        todo.unshift(...target.split('/'));
        continue;
      }
    }
    cur.push(p);
  }
  return join(root, ...cur);
}

export interface ApplyStats {
  entries: number;
  whiteouts: number;
  skipped: number;
}

const isRoot = process.getuid?.() === 0;

async function setOwnerMode(path: string, h: tar.Header, isLink: boolean): Promise<void> {
  if (isRoot) await lchown(path, h.uid ?? 0, h.gid ?? 0).catch(() => undefined);
  if (!isLink) await chmod(path, (h.mode ?? 0o644) & 0o7777);
}

/** Removes everything under `dir` not created by the current layer (an opaque directory). */
async function clearLower(dir: string, created: Set<string>): Promise<void> {
  const names = await readdir(dir).catch(() => [] as string[]);
  for (const n of names) {
    const p = join(dir, n);
    if (!created.has(p)) await rm(p, { recursive: true, force: true });
    else if ((await lstat(p)).isDirectory()) await clearLower(p, created);
  }
}

/** Applies one layer tar (plain, gzip or zstd) onto root. */
export async function applyLayer(root: string, layerPath: string): Promise<ApplyStats> {
  const stats: ApplyStats = { entries: 0, whiteouts: 0, skipped: 0 };
  const created = new Set<string>();
  const opaque: string[] = [];
  await forEachEntry(layerPath, async (h, body) => {
    const parts = entryParts(h.name);
    if (parts.length === 0) {
      body.resume();
      return;
    }
    const base = parts.at(-1) as string;
    const parent = await resolveInRoot(root, parts.slice(0, -1), true);
    if (base === '.wh..wh..opq') {
      body.resume();
      // Applied after the layer: entries of this layer in that directory survive, lower ones do not.
      opaque.push(parent);
      stats.whiteouts++;
      return;
    }
    if (base.startsWith('.wh.')) {
      body.resume();
      const hidden = base.slice(4);
      if (hidden === '' || hidden === '.' || hidden === '..') throw invalid(`bad whiteout ${JSON.stringify(h.name)}`);
      await rm(join(parent, hidden), { recursive: true, force: true });
      stats.whiteouts++;
      return;
    }
    const target = join(parent, base);
    const existing = await lstat(target).catch(() => undefined);
    const type = h.type ?? 'file';
    if (existing && !(type === 'directory' && existing.isDirectory())) await rm(target, { recursive: true, force: true });
    await mkdir(parent, { recursive: true });
    switch (type) {
      case 'directory':
        await mkdir(target, { recursive: true });
        await setOwnerMode(target, h, false);
        break;
      case 'file':
      case 'contiguous-file':
        await pipeline(body, createWriteStream(target, { flags: 'wx' }));
        await setOwnerMode(target, h, false);
        if (h.mtime) await utimes(target, h.mtime, h.mtime).catch(() => undefined);
        break;
      case 'symlink':
        await symlink(h.linkname ?? '', target);
        await setOwnerMode(target, h, true);
        break;
      case 'link': {
        const src = await resolveInRoot(root, entryParts(h.linkname ?? ''));
        await link(src, target).catch((e: unknown) => {
          throw invalid(`hard link ${h.name} → ${h.linkname ?? ''}: ${e instanceof Error ? e.message : String(e)}`);
        });
        break;
      }
      default:
        // Devices and fifos: /dev is a devtmpfs in the guest; nothing else needs them.
        stats.skipped++;
        body.resume();
        return;
    }
    body.resume();
    created.add(target);
    stats.entries++;
  });
  for (const dir of opaque) await clearLower(dir, created);
  return stats;
}

// ---------- archive formats ----------

const Digest = z.string().regex(/^sha(256|512):[a-f0-9]{64,128}$/);
const Descriptor = z.object({ mediaType: z.string().optional(), digest: Digest, platform: z.object({ os: z.string().optional(), architecture: z.string().optional() }).passthrough().optional() }).passthrough();
const OciIndex = z.object({ manifests: z.array(Descriptor).min(1) }).passthrough();
const OciManifest = z.object({ config: Descriptor, layers: z.array(Descriptor) }).passthrough();
const DockerManifest = z.array(z.object({ Config: z.string(), Layers: z.array(z.string()) }).passthrough()).min(1);
const ImageConfig = z
  .object({
    config: z
      .object({
        User: z.string().nullish(),
        WorkingDir: z.string().nullish(),
        Env: z.array(z.string()).nullish(),
        Entrypoint: z.array(z.string()).nullish(),
        Cmd: z.array(z.string()).nullish(),
        Volumes: z.record(z.string(), z.unknown()).nullish(),
      })
      .passthrough()
      .nullish(),
  })
  .passthrough();

export interface ImageLayout {
  /** Layer files in application order (bottom first). */
  layers: { path: string; digest?: string }[];
  runtime: RuntimeJson;
}

async function readJson<T>(path: string, schema: z.ZodType<T>, what: string): Promise<T> {
  const text = await readFile(path, 'utf8').catch(() => {
    throw invalid(`${what} is missing`);
  });
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    throw invalid(`${what} is not JSON`);
  }
  const r = schema.safeParse(raw);
  if (!r.success) throw invalid(`${what}: ${r.error.issues[0]?.path.join('.') ?? ''} ${r.error.issues[0]?.message ?? 'invalid'}`);
  return r.data;
}

export function runtimeFromConfig(cfg: z.infer<typeof ImageConfig>): RuntimeJson {
  const c = cfg.config ?? {};
  const rt: RuntimeJson = {};
  if (c.User) rt.user = c.User;
  if (c.WorkingDir) rt.workdir = c.WorkingDir;
  if (c.Env && c.Env.length > 0) {
    rt.env = {};
    for (const kv of c.Env) {
      const i = kv.indexOf('=');
      if (i > 0) rt.env[kv.slice(0, i)] = kv.slice(i + 1);
    }
  }
  const cmd = [...(c.Entrypoint ?? []), ...(c.Cmd ?? [])];
  if (cmd.length > 0) rt.cmd = cmd;
  const vols = Object.keys(c.Volumes ?? {});
  if (vols.length > 0) rt.writable_paths = vols;
  return rt;
}

function blobPath(dir: string, digest: string): string {
  const [alg, hex] = digest.split(':') as [string, string];
  return join(dir, 'blobs', alg, hex);
}

async function verifyDigest(path: string, digest: string): Promise<void> {
  const [alg, hex] = digest.split(':') as [string, string];
  const h = createHash(alg);
  await pipeline(createReadStream(path), h);
  if (h.digest('hex') !== hex) throw invalid(`blob ${digest} does not match its digest`);
}

function insideDir(dir: string, rel: string): string {
  const norm = posix.normalize(rel);
  if (norm.startsWith('../') || norm === '..' || norm.startsWith('/')) throw invalid(`manifest names a path outside the archive: ${rel}`);
  return join(dir, norm);
}

/** The file's real path, which must lie inside dir (archives may hold symlinks). */
async function within(dir: string, p: string): Promise<string> {
  const base = await realpath(dir);
  const real = await realpath(p).catch(() => {
    throw invalid(`${p.slice(dir.length + 1)} is missing from the archive`);
  });
  if (!real.startsWith(`${base}/`)) throw invalid(`${p.slice(dir.length + 1)} points outside the archive`);
  return real;
}

/** Reads an unpacked archive directory: docker-save (manifest.json) or OCI layout (index.json). */
export async function readImageLayout(dir: string, platform = { os: 'linux', architecture: 'amd64' }): Promise<ImageLayout> {
  const layout = await readLayout(dir, platform);
  for (const l of layout.layers) l.path = await within(dir, l.path);
  return layout;
}

async function readLayout(dir: string, platform: { os: string; architecture: string }): Promise<ImageLayout> {
  const hasIndex = await lstat(join(dir, 'index.json')).then(() => true, () => false);
  const hasManifest = await lstat(join(dir, 'manifest.json')).then(() => true, () => false);
  if (hasManifest) {
    // docker save (also writes index.json since Docker 25; manifest.json is simpler and always there).
    const m = (await readJson(await within(dir, join(dir, 'manifest.json')), DockerManifest, 'manifest.json'))[0] as z.infer<typeof DockerManifest>[number];
    const cfg = await readJson(await within(dir, insideDir(dir, m.Config)), ImageConfig, 'image config');
    return { layers: m.Layers.map((l) => ({ path: insideDir(dir, l) })), runtime: runtimeFromConfig(cfg) };
  }
  if (!hasIndex) throw invalid('neither manifest.json (docker save) nor index.json (OCI layout) found');
  let index = await readJson(await within(dir, join(dir, 'index.json')), OciIndex, 'index.json');
  for (let depth = 0; depth < 4; depth++) {
    const pick =
      index.manifests.find((d) => d.platform?.os === platform.os && d.platform.architecture === platform.architecture) ??
      index.manifests.find((d) => d.platform === undefined) ??
      index.manifests[0];
    if (!pick) break;
    const p = await within(dir, blobPath(dir, pick.digest));
    await verifyDigest(p, pick.digest);
    const raw = JSON.parse(await readFile(p, 'utf8')) as { manifests?: unknown; layers?: unknown };
    if (raw.manifests !== undefined) {
      index = await readJson(p, OciIndex, `index ${pick.digest}`);
      continue;
    }
    const man = await readJson(p, OciManifest, `manifest ${pick.digest}`);
    const cfgPath = await within(dir, blobPath(dir, man.config.digest));
    await verifyDigest(cfgPath, man.config.digest);
    const cfg = await readJson(cfgPath, ImageConfig, 'image config');
    return { layers: man.layers.map((l) => ({ path: blobPath(dir, l.digest), digest: l.digest })), runtime: runtimeFromConfig(cfg) };
  }
  throw invalid('index.json names no usable manifest');
}

/** Unpacks the outer archive (regular files only, names kept inside `dest`). */
export async function unpackArchive(archive: string, dest: string): Promise<void> {
  await forEachEntry(archive, async (h, body) => {
    const type = h.type ?? 'file';
    const parts = entryParts(h.name);
    if ((type !== 'file' && type !== 'symlink') || parts.length === 0) {
      body.resume();
      return;
    }
    const target = join(dest, ...parts);
    await mkdir(join(dest, ...parts.slice(0, -1)), { recursive: true });
    if (type === 'file') {
      await pipeline(body, createWriteStream(target));
      return;
    }
    // Older `docker save` links a repeated layer to its first copy (`<id>/layer.tar -> ../<id2>/layer.tar`).
    body.resume();
    const link = h.linkname ?? '';
    const resolved = posix.normalize(posix.join(parts.slice(0, -1).join('/'), link));
    if (link.startsWith('/') || resolved === '..' || resolved.startsWith('../')) throw invalid(`archive link ${h.name} points outside it`);
    await symlink(link, target);
  });
}

/** Applies an archive's (or unpacked layout dir's) layers onto root; returns the image's runtime.json. */
export async function applyImage(layoutDir: string, root: string, onLayer?: (i: number, n: number) => void): Promise<RuntimeJson> {
  const layout = await readImageLayout(layoutDir);
  for (const [i, l] of layout.layers.entries()) {
    onLayer?.(i + 1, layout.layers.length);
    if (l.digest !== undefined) await verifyDigest(l.path, l.digest);
    await applyLayer(root, l.path);
  }
  return layout.runtime;
}
