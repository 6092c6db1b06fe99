import { constants as fsc } from 'node:fs';
import { createReadStream, createWriteStream } from 'node:fs';
import { chmod, copyFile, lstat, mkdir, mkdtemp, open, readdir, rename, rm, rmdir, stat, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { Readable, Transform, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import { randomBytes } from 'node:crypto';
import * as yauzl from 'yauzl';
import * as tar from 'tar-stream';
import { AetherError, isAetherError } from '../core/index.ts';

export interface ArchiveLimits {
  /** Size of the archive file itself (upload body). */
  maxArchiveBytes: number;
  /** Sum of the real (decompressed) sizes of every file. */
  maxUnpackedBytes: number;
  /** Files + directories + links. */
  maxEntries: number;
}

const MiB = 1024 * 1024;

export const DEFAULT_LIMITS: Readonly<ArchiveLimits> = Object.freeze({
  maxArchiveBytes: 50 * MiB,
  maxUnpackedBytes: 250 * MiB,
  maxEntries: 10_000,
});

export type ArchiveKind = 'zip' | 'tar.gz';

/** By magic bytes, never by file name. */
export function detectArchive(head: Buffer): ArchiveKind | undefined {
  if (head.length >= 4 && head[0] === 0x50 && head[1] === 0x4b) {
    // local file header, empty archive (end of central directory), spanned-archive marker
    const sig = head.readUInt16BE(2);
    if (sig === 0x0304 || sig === 0x0506 || sig === 0x0708) return 'zip';
  }
  if (head.length >= 3 && head[0] === 0x1f && head[1] === 0x8b && head[2] === 0x08) return 'tar.gz';
  return undefined;
}

export interface ExtractResult {
  /** Archive entries (files, directories, links). */
  entries: number;
  /** Real decompressed bytes written. */
  bytes: number;
}

/**
 * Unpack a zip or tar.gz into `destDir` (which must not exist or be empty), enforcing `limits` on
 * the bytes actually decompressed. Rejects absolute paths, `..`, links that resolve outside the
 * code root, device/fifo entries, corrupt or size-lying archives. If every entry sits under one
 * top-level folder, that folder becomes the root (unless `entrypoint` exists at the archive root
 * as is). Files get 0644 (0755 when executable), directories 0755; no setuid bits, no ownership.
 * On failure nothing is left at `destDir`. Throws AetherError.
 */
export async function extractArchive(
  archive: Buffer | string,
  destDir: string,
  limits: ArchiveLimits,
  opts: { entrypoint?: string } = {},
): Promise<ExtractResult> {
  const size = typeof archive === 'string' ? (await stat(archive)).size : archive.length;
  if (size > limits.maxArchiveBytes) {
    throw new AetherError('AETHER_ERR_PAYLOAD_TOO_LARGE', `archive is ${size} bytes; the limit is ${limits.maxArchiveBytes}`);
  }
  const kind = detectArchive(await readHead(archive));
  if (!kind) throw new AetherError('AETHER_ERR_ARCHIVE_INVALID', 'archive is neither a zip nor a tar.gz (checked by content, not name)');

  const parent = dirname(destDir);
  await mkdir(parent, { recursive: true });
  await ensureEmptyOrAbsent(destDir);
  const staging = join(parent, `.${basename(destDir)}.partial-${randomBytes(6).toString('hex')}`);
  await mkdir(staging, { mode: 0o755 });
  const x = new Extraction(staging, limits);
  try {
    if (kind === 'zip') await extractZip(archive, x);
    else await extractTarGz(archive, x);
    const root = await x.finish(opts.entrypoint);
    await ensureEmptyOrAbsent(destDir);
    await rmdir(destDir).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw err;
    });
    await rename(root, destDir);
    return { entries: x.entries, bytes: x.bytes };
  } catch (err) {
    throw classify(err);
  } finally {
    await rm(staging, { recursive: true, force: true });
  }
}

/**
 * The same checks as extractArchive, unpacking into a temporary directory that is removed; under
 * `tmpDir` when given (the gateway's upload spool, which it cleans after a crash).
 */
export async function validateArchive(archive: Buffer | string, limits: ArchiveLimits, entrypoint: string, tmpDir: string = tmpdir()): Promise<ExtractResult> {
  const tmp = await mkdtemp(join(tmpDir, 'aether-validate-'));
  try {
    return await extractArchive(archive, join(tmp, 'code'), limits, { entrypoint });
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}

async function readHead(archive: Buffer | string): Promise<Buffer> {
  if (typeof archive !== 'string') return archive.subarray(0, 8);
  const fh = await open(archive, 'r');
  try {
    const buf = Buffer.alloc(8);
    const { bytesRead } = await fh.read(buf, 0, 8, 0);
    return buf.subarray(0, bytesRead);
  } finally {
    await fh.close();
  }
}

async function ensureEmptyOrAbsent(dir: string): Promise<void> {
  try {
    const entries = await readdir(dir);
    if (entries.length > 0) throw new AetherError('AETHER_ERR_INTERNAL', 'extraction target directory is not empty');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
}

const unsafe = (msg: string): AetherError => new AetherError('AETHER_ERR_ARCHIVE_UNSAFE', msg);
const invalid = (msg: string): AetherError => new AetherError('AETHER_ERR_ARCHIVE_INVALID', msg);

/** fs errors that an archive's contents can provoke (bad input, not our fault). */
const INPUT_ERRNOS = new Set(['ENAMETOOLONG', 'ENOTDIR', 'EISDIR', 'EEXIST', 'ELOOP', 'EINVAL']);

function classify(err: unknown): AetherError {
  if (isAetherError(err)) return err;
  const e = err as NodeJS.ErrnoException;
  if (e && typeof e === 'object' && typeof e.syscall === 'string') {
    // System errors carry host paths: never echo them.
    if (e.code && INPUT_ERRNOS.has(e.code)) return invalid(`archive cannot be unpacked (${e.code})`);
    if (e.code === 'ENOSPC' || e.code === 'EDQUOT') return new AetherError('AETHER_ERR_UNAVAILABLE', 'no space left to unpack the archive', { cause: err });
    return new AetherError('AETHER_ERR_INTERNAL', 'unpacking failed', { cause: err });
  }
  const msg = err instanceof Error ? err.message : String(err);
  if (/too many bytes in the stream|not enough bytes in the stream/.test(msg)) {
    return invalid('archive is corrupt: an entry does not match the size in its header');
  }
  return invalid(`archive is corrupt or truncated: ${msg}`);
}

/** Archive member name -> normalized relative path; undefined for the root itself. */
export function normalizeEntryName(raw: string): string | undefined {
  if (raw.includes('\0')) throw unsafe('entry name contains a NUL byte');
  if (raw.startsWith('/') || /^[a-zA-Z]:/.test(raw)) throw unsafe(`absolute path in archive: ${raw}`);
  if (raw.includes('\\')) throw unsafe(`backslash in archive entry name: ${raw}`);
  const parts = raw.split('/').filter((p) => p !== '' && p !== '.');
  if (parts.includes('..')) throw unsafe(`'..' in archive entry name: ${raw}`);
  return parts.length ? parts.join('/') : undefined;
}

type Kind = 'dir' | 'file' | 'symlink' | 'hardlink';

/**
 * Staged extraction shared by both formats. Regular files and directories are written as they
 * stream; links are only recorded and created at the end, so no write ever goes through a link.
 */
class Extraction {
  readonly staging: string;
  readonly limits: ArchiveLimits;
  entries = 0;
  bytes = 0;
  readonly #names = new Map<string, Kind>();
  readonly #symlinks: { rel: string; target: string }[] = [];
  readonly #hardlinks: { rel: string; target: string }[] = [];
  readonly #execs = new Set<string>();

  constructor(staging: string, limits: ArchiveLimits) {
    this.staging = staging;
    this.limits = limits;
  }

  countEntry(): void {
    this.entries++;
    if (this.entries > this.limits.maxEntries) {
      throw new AetherError('AETHER_ERR_ARCHIVE_TOO_LARGE', `archive has more than ${this.limits.maxEntries} entries`);
    }
  }

  addBytes(n: number): void {
    this.bytes += n;
    if (this.bytes > this.limits.maxUnpackedBytes) {
      throw new AetherError('AETHER_ERR_ARCHIVE_TOO_LARGE', `archive unpacks to more than ${this.limits.maxUnpackedBytes} bytes`);
    }
  }

  #register(rel: string, kind: Kind): void {
    const parts = rel.split('/');
    for (let i = 1; i < parts.length; i++) {
      const anc = parts.slice(0, i).join('/');
      const k = this.#names.get(anc);
      if (k === undefined) this.#names.set(anc, 'dir');
      else if (k === 'symlink') throw unsafe(`archive entry ${rel} lies inside the link ${anc}`);
      else if (k !== 'dir') throw invalid(`archive entry ${rel} lies inside the file ${anc}`);
    }
    const existing = this.#names.get(rel);
    if (existing === undefined) this.#names.set(rel, kind);
    else if (!(existing === 'dir' && kind === 'dir')) throw invalid(`duplicate archive entry: ${rel}`);
  }

  async dir(rel: string): Promise<void> {
    this.#register(rel, 'dir');
    await mkdir(join(this.staging, rel), { recursive: true, mode: 0o755 });
  }

  /** `open` is called only once the file can be written: some sources error if left unread. */
  async file(rel: string, open: () => Readable | Promise<Readable>, mode: number): Promise<void> {
    this.#register(rel, 'file');
    const abs = join(this.staging, rel);
    await mkdir(dirname(abs), { recursive: true, mode: 0o755 });
    const data = await open();
    const counter = new Transform({
      transform: (chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void => {
        try {
          this.addBytes(chunk.length);
          cb(null, chunk);
        } catch (err) {
          cb(err as Error);
        }
      },
    });
    // 'wx': never follow or replace an existing path.
    await pipeline(data, counter, createWriteStream(abs, { flags: 'wx', mode: 0o600 }));
    const exec = (mode & 0o111) !== 0;
    if (exec) this.#execs.add(rel);
    await chmod(abs, exec ? 0o755 : 0o644);
  }

  symlink(rel: string, target: string): void {
    if (target === '' || target.includes('\0')) throw unsafe(`link ${rel} has an empty or invalid target`);
    if (target.startsWith('/')) throw unsafe(`link ${rel} points outside the code root (${target})`);
    this.#register(rel, 'symlink');
    this.#symlinks.push({ rel, target });
  }

  hardlink(rel: string, rawTarget: string): void {
    let target: string | undefined;
    try {
      target = normalizeEntryName(rawTarget);
    } catch {
      throw unsafe(`link ${rel} points outside the code root (${rawTarget})`);
    }
    if (target === undefined) throw unsafe(`link ${rel} points at the code root`);
    // As tar extracts: only to a file (or hard link) already seen, so self-links, cycles and
    // forward chains are refused here, and finish() copies every link from an existing file.
    const k = this.#names.get(target);
    if (k !== 'file' && k !== 'hardlink') throw unsafe(`hard link ${rel} does not point at a file earlier in the archive (${target})`);
    this.#register(rel, 'hardlink');
    this.#hardlinks.push({ rel, target });
  }

  /** Create links, check the entrypoint, fix modes; returns the directory that is the code root. */
  async finish(entrypoint: string | undefined): Promise<string> {
    const prefix = this.#stripPrefix(entrypoint);
    const floor = prefix ? 1 : 0;
    const links = new Map(this.#symlinks.map((l) => [l.rel, l.target]));
    for (const { rel, target } of this.#symlinks) {
      if (!resolvesInside(rel, target, links, floor)) throw unsafe(`link ${rel} points outside the code root (${target})`);
    }
    for (const { rel, target } of this.#hardlinks) {
      // Only to a regular file that appeared in the archive (hard links are copied, not linked).
      const k = this.#names.get(target);
      if (k !== 'file' && k !== 'hardlink') throw unsafe(`hard link ${rel} does not point at a file in the archive (${target})`);
      const src = join(this.staging, target);
      const dst = join(this.staging, rel);
      await mkdir(dirname(dst), { recursive: true, mode: 0o755 });
      this.addBytes((await lstat(src)).size);
      await copyFile(src, dst, fsc.COPYFILE_EXCL);
      const exec = this.#execs.has(target);
      if (exec) this.#execs.add(rel); // a later link to this link keeps the mode
      await chmod(dst, exec ? 0o755 : 0o644);
    }
    for (const { rel, target } of this.#symlinks) {
      const abs = join(this.staging, rel);
      await mkdir(dirname(abs), { recursive: true, mode: 0o755 });
      await symlink(target, abs);
    }
    for (const [rel, k] of this.#names) if (k === 'dir') await chmod(join(this.staging, rel), 0o755);
    const root = prefix ? join(this.staging, prefix) : this.staging;
    await chmod(root, 0o755);
    if (entrypoint !== undefined) {
      const ok = await stat(join(root, entrypoint)).then(
        (s) => s.isFile(),
        () => false,
      );
      if (!ok) throw new AetherError('AETHER_ERR_ENTRYPOINT_MISSING', `archive does not contain the entrypoint ${entrypoint}`);
    }
    return root;
  }

  /** The single top-level folder to strip, if every entry sits under one. */
  #stripPrefix(entrypoint: string | undefined): string | undefined {
    const tops = new Set<string>();
    for (const rel of this.#names.keys()) tops.add(rel.split('/')[0] as string);
    if (tops.size !== 1) return undefined;
    const top = [...tops][0] as string;
    if (this.#names.get(top) !== 'dir') return undefined;
    if (entrypoint !== undefined) {
      const k = this.#names.get(entrypoint);
      if (k !== undefined && k !== 'dir') return undefined; // the archive already has it at its root
    }
    return top;
  }
}

/**
 * Resolve a symlink's target inside the archive's own tree (following other archive links) and
 * tell whether it stays inside the code root. `floor` = number of leading components that are
 * stripped (the root is that deep in the staging tree).
 */
export function resolvesInside(rel: string, target: string, links: ReadonlyMap<string, string>, floor: number): boolean {
  const cur = rel.split('/').slice(0, -1);
  if (cur.length < floor) return false;
  let pending = target.split('/');
  let hops = 0;
  while (pending.length) {
    const c = pending.shift() as string;
    if (c === '' || c === '.') continue;
    if (c === '..') {
      if (cur.length <= floor) return false;
      cur.pop();
      continue;
    }
    cur.push(c);
    const t = links.get(cur.join('/'));
    if (t !== undefined) {
      if (++hops > 40 || t.startsWith('/')) return false;
      cur.pop();
      pending = [...t.split('/'), ...pending];
    }
  }
  return true;
}

const S_IFMT = 0o170000;
const S_IFREG = 0o100000;
const S_IFDIR = 0o040000;
const S_IFLNK = 0o120000;

async function extractZip(archive: Buffer | string, x: Extraction): Promise<void> {
  const opts = { autoClose: false, validateEntrySizes: true, strictFileNames: true } as const;
  let zip: yauzl.ZipFile;
  try {
    zip = typeof archive === 'string' ? await yauzl.openPromise(archive, opts) : await yauzl.fromBufferPromise(archive, opts);
  } catch (err) {
    throw zipError(err);
  }
  try {
    if (zip.entryCount > x.limits.maxEntries) {
      throw new AetherError('AETHER_ERR_ARCHIVE_TOO_LARGE', `archive has ${zip.entryCount} entries; the limit is ${x.limits.maxEntries}`);
    }
    // The central directory first: names, types and declared sizes, before writing anything.
    const entries: yauzl.Entry[] = [];
    let declared = 0;
    try {
      for await (const e of zip.eachEntry()) {
        entries.push(e);
        declared += e.uncompressedSize;
      }
    } catch (err) {
      throw zipError(err);
    }
    if (declared > x.limits.maxUnpackedBytes) {
      throw new AetherError('AETHER_ERR_ARCHIVE_TOO_LARGE', `archive declares ${declared} unpacked bytes; the limit is ${x.limits.maxUnpackedBytes}`);
    }
    for (const e of entries) {
      x.countEntry();
      const rel = normalizeEntryName(e.fileName);
      const mode = (e.externalFileAttributes >>> 16) & 0xffff;
      const type = mode & S_IFMT;
      const isDir = e.fileName.endsWith('/') || type === S_IFDIR;
      if (type !== 0 && type !== S_IFREG && type !== S_IFDIR && type !== S_IFLNK) {
        throw unsafe(`archive entry ${e.fileName} is a device, fifo or socket`);
      }
      if (rel === undefined) continue;
      if (isDir) {
        await x.dir(rel);
        continue;
      }
      if (e.isEncrypted()) throw invalid(`archive entry ${e.fileName} is encrypted`);
      const openEntry = (): Promise<Readable> => zip.openReadStreamPromise(e).catch((err: unknown) => Promise.reject(zipError(err)));
      if (type === S_IFLNK) {
        if (e.uncompressedSize > 4096) throw unsafe(`link ${rel} has an oversized target`);
        const target = (await readAll(await openEntry(), 4096)).toString('utf8');
        x.symlink(rel, target);
      } else {
        await x.file(rel, openEntry, mode);
      }
    }
  } finally {
    zip.close();
  }
}

function zipError(err: unknown): AetherError {
  if (isAetherError(err)) return err;
  const msg = err instanceof Error ? err.message : String(err);
  if (/^(absolute path|invalid relative path|invalid characters in fileName)/.test(msg)) return unsafe(`unsafe archive entry name (${msg})`);
  return classify(err);
}

async function readAll(stream: Readable, max: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of stream as AsyncIterable<Buffer>) {
    n += c.length;
    if (n > max) throw invalid('archive link target is too long');
    chunks.push(c);
  }
  return Buffer.concat(chunks);
}

async function extractTarGz(archive: Buffer | string, x: Extraction): Promise<void> {
  const src = typeof archive === 'string' ? createReadStream(archive) : Readable.from([archive]);
  // Bound the raw tar stream too (headers, padding, trailing blocks), not only file contents.
  const rawLimit = x.limits.maxUnpackedBytes + x.limits.maxEntries * 4096 + MiB;
  let raw = 0;
  const rawCounter = new Transform({
    transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
      raw += chunk.length;
      if (raw > rawLimit) cb(new AetherError('AETHER_ERR_ARCHIVE_TOO_LARGE', `archive unpacks to more than ${x.limits.maxUnpackedBytes} bytes`));
      else cb(null, chunk);
    },
  });
  const ex = tar.extract();
  const feeding = pipeline(src, createGunzip(), rawCounter, ex);
  let feedErr: unknown;
  feeding.catch((err: unknown) => {
    feedErr = err;
  });
  try {
    for await (const entry of ex) {
      const h = entry.header;
      x.countEntry();
      const rel = normalizeEntryName(h.name);
      switch (h.type) {
        case 'directory':
          entry.resume();
          if (rel !== undefined) await x.dir(rel);
          break;
        case 'file':
        case 'contiguous-file':
          if (rel === undefined) throw invalid('archive has a file entry without a name');
          await x.file(rel, () => Readable.from(entry), h.mode ?? 0o644);
          break;
        case 'symlink':
          entry.resume();
          if (rel === undefined) throw unsafe('archive has a link at its root');
          x.symlink(rel, h.linkname ?? '');
          break;
        case 'link':
          entry.resume();
          if (rel === undefined) throw unsafe('archive has a link at its root');
          x.hardlink(rel, h.linkname ?? '');
          break;
        default:
          // character-device, block-device, fifo, and anything unknown
          throw unsafe(`archive entry ${h.name} is a ${h.type ?? 'special file'}; only files, directories and links are allowed`);
      }
    }
    await feeding;
  } catch (err) {
    src.destroy();
    // A decompression error surfaces as a generic stream error on the extractor: report the cause.
    throw feedErr !== undefined && !isAetherError(err) ? feedErr : err;
  }
}
