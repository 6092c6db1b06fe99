import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join, posix } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { promisify } from 'node:util';
import { z } from 'zod';
import { AetherError } from '../../core/index.ts';
import { programEnv, type InstanceSpec } from '../types.ts';

/**
 * Image and rootfs artifacts in the process sandbox ("containers"): what to run, read from the
 * image's /etc/firework/runtime.json (written by `aether image build`) before the launch, and the
 * host-side bookkeeping of the loop devices sandbox/container.pl sets up.
 */

const execFileP = promisify(execFile);
const RUNTIME_JSON = '/etc/firework/runtime.json';
const TOOL_ENV = { PATH: '/usr/sbin:/usr/bin:/sbin:/bin' };

/** runtime.json as the image builder writes it (unknown fields ignored). */
const runtimeJsonSchema = z.object({
  user: z.string().max(256).optional(),
  workdir: z.string().max(4096).optional(),
  env: z.record(z.string(), z.string()).optional(),
  writable_paths: z.array(z.string().max(4096)).max(256).optional(),
  cmd: z.array(z.string()).min(1).optional(),
});
type RuntimeJson = z.infer<typeof runtimeJsonSchema>;

/** What container.pl gets, besides the sandbox's own parts (cgroups, seccomp, uid for root). */
export interface ContainerPlan {
  kind: 'image' | 'rootfs';
  /** The image file or the root dir, on the host. */
  source: string;
  argv: string[];
  workdir: string;
  /** The image's user; undefined when it is root: the instance's own unprivileged uid is used (no user namespace). */
  uid: number | undefined;
  gid: number | undefined;
  env: Record<string, string>;
  writable: string[];
}

/** Reads files of the artifact's root without mounting it (debugfs for images). undefined: absent. */
async function readRootFile(kind: 'image' | 'rootfs', source: string, path: string): Promise<string | undefined> {
  if (kind === 'rootfs') return readFile(join(source, path), 'utf8').catch(() => undefined);
  try {
    const { stdout, stderr } = await execFileP('debugfs', ['-R', `cat ${path}`, source], { env: TOOL_ENV, maxBuffer: 8 << 20 });
    // debugfs exits 0 even for a missing file; it says so on stderr
    return /not found|File not found/i.test(stderr) && stdout === '' ? undefined : stdout;
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code === 'ENOENT') throw new AetherError('AETHER_ERR_CONTAINER_UNAVAILABLE', 'running image artifacts needs debugfs (e2fsprogs) on the agent host', { cause: err });
    throw new AetherError('AETHER_ERR_COLD_START_FAILED', `cannot read ${path} from the image ${source}: ${e.message}`, { cause: err });
  }
}

interface Ident {
  uid: number;
  gid: number;
  home: string | undefined;
}

/** Docker-style user (name, uid, name:group, uid:gid) resolved against the root's /etc/passwd and /etc/group. */
export function resolveUser(user: string, passwd: string, group: string): Ident | undefined {
  const [u = '', g] = user.split(':', 2);
  const pw = passwd.split('\n').map((l) => l.split(':'));
  const entry = /^\d+$/.test(u) ? pw.find((f) => f[2] === u) : pw.find((f) => f[0] === u);
  let uid: number;
  let gid: number;
  let home: string | undefined;
  if (entry) {
    uid = Number(entry[2]);
    gid = Number(entry[3]);
    home = entry[5] || undefined;
  } else if (/^\d+$/.test(u)) {
    uid = Number(u);
    gid = uid;
  } else return undefined;
  if (g !== undefined && g !== '') {
    if (/^\d+$/.test(g)) gid = Number(g);
    else {
      const ge = group.split('\n').map((l) => l.split(':')).find((f) => f[0] === g);
      if (!ge) return undefined;
      gid = Number(ge[2]);
    }
  }
  if (!Number.isSafeInteger(uid) || !Number.isSafeInteger(gid) || uid < 0 || gid < 0 || uid > 0xfffffffe || gid > 0xfffffffe) return undefined;
  return { uid, gid, home };
}

/** The plan for an image or rootfs artifact: spec.command, else runtime.json's cmd, else /sbin/init; spec env over the image's. */
export async function containerPlan(spec: InstanceSpec): Promise<ContainerPlan> {
  const a = spec.artifact;
  if (a.kind === 'code') throw new AetherError('AETHER_ERR_INTERNAL', 'containerPlan of a code artifact');
  const kind = a.kind;
  const given = a.kind === 'image' ? a.path : a.dir;
  if (!existsSync(given)) throw new AetherError('AETHER_ERR_COLD_START_FAILED', `the ${kind} ${given} does not exist`);
  // the path the kernel reports as the loop device's backing file
  const source = realpathSync(given);
  const text = await readRootFile(kind, source, RUNTIME_JSON);
  let rt: RuntimeJson = {};
  if (text !== undefined && text.trim() !== '') {
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      throw new AetherError('AETHER_ERR_COLD_START_FAILED', `${RUNTIME_JSON} in ${source} is not valid JSON`);
    }
    const r = runtimeJsonSchema.safeParse(parsed);
    if (!r.success) throw new AetherError('AETHER_ERR_COLD_START_FAILED', `${RUNTIME_JSON} in ${source} is invalid: ${r.error.issues[0]?.message ?? 'bad shape'}`);
    rt = r.data;
  }
  let ident: Ident | undefined;
  if (rt.user && rt.user !== 'root' && rt.user !== '0' && rt.user !== '0:0') {
    const [passwd, group] = await Promise.all([readRootFile(kind, source, '/etc/passwd'), readRootFile(kind, source, '/etc/group')]);
    ident = resolveUser(rt.user, passwd ?? '', group ?? '');
    if (!ident) throw new AetherError('AETHER_ERR_COLD_START_FAILED', `the image's user ${JSON.stringify(rt.user)} is not in its /etc/passwd or /etc/group`);
  }
  const own = ident && ident.uid !== 0 ? ident : undefined;
  const root = own === undefined;
  const imageEnv: Record<string, string> = { HOME: ident?.home ?? (root ? '/root' : '/'), ...rt.env };
  const workdir = posix.resolve('/', spec.cwd ?? rt.workdir ?? '/');
  const argv = spec.command?.length ? spec.command : rt.cmd?.length ? rt.cmd : ['/sbin/init'];
  const writable = (rt.writable_paths ?? []).map((p) => posix.resolve('/', p));
  // the launcher's assignment is NUL-separated
  if ([...argv, workdir, ...writable].some((x) => x.includes('\0'))) throw new AetherError('AETHER_ERR_VALIDATION', 'a command, workdir or writable path contains a NUL byte');
  return {
    kind,
    source,
    argv,
    workdir,
    uid: own?.uid,
    gid: own?.gid,
    env: programEnv({ ...spec, env: { ...imageEnv, ...spec.env } }, spec.listen.port),
    writable,
  };
}

/**
 * An instance's record, `<dir>/<instanceId>/`: `source` (the artifact, written here) and `loop`
 * (its loop device, written by container.pl). Returns the path container.pl writes.
 */
export function writeContainerRecord(dir: string, instanceId: string, source: string): string {
  mkdirSync(join(dir, instanceId), { recursive: true, mode: 0o700 });
  writeFileSync(join(dir, instanceId, 'source'), source);
  return join(dir, instanceId, 'loop');
}

function recordedLoop(dir: string, instanceId: string): { loop: string; source: string } | undefined {
  try {
    const m = /^(loop\d+)\s*$/.exec(readFileSync(join(dir, instanceId, 'loop'), 'utf8'));
    const source = readFileSync(join(dir, instanceId, 'source'), 'utf8');
    return m?.[1] ? { loop: m[1], source } : undefined;
  } catch {
    return undefined;
  }
}

function loopBacking(loop: string): string | undefined {
  try {
    return readFileSync(`/sys/block/${loop}/loop/backing_file`, 'utf8').trim();
  } catch {
    return undefined;
  }
}

/** Detach a loop device: if still mounted somewhere the kernel makes it autoclear instead. */
async function detach(loop: string): Promise<void> {
  await execFileP('losetup', ['-d', `/dev/${loop}`], { env: TOOL_ENV }).catch(() => undefined);
}

/**
 * After an instance's sandbox is gone: its mounts went with its mount namespace and the loop device
 * detaches itself (autoclear, possibly a moment later, from a kernel worker). Waits for that (a real
 * timer: OS state), detaches it if it lingers, removes the record.
 */
export async function releaseContainer(dir: string, instanceId: string): Promise<void> {
  const r = recordedLoop(dir, instanceId);
  if (r) {
    for (let i = 0; i < 200 && loopBacking(r.loop) === r.source; i++) await delay(10);
    if (loopBacking(r.loop) === r.source) await detach(r.loop);
  }
  rmSync(join(dir, instanceId), { recursive: true, force: true });
}

/**
 * cleanupLeftovers: records of instances not live (a crashed agent). Their sandboxes were killed
 * with the agent (pdeathsig), so their mounts are gone; a loop device still attached to the recorded
 * image and not in use by a live instance is detached.
 */
export async function releaseLeftoverContainers(dir: string, live: (id: string) => boolean): Promise<string[]> {
  let ids: string[];
  try {
    ids = readdirSync(dir);
  } catch {
    return [];
  }
  const liveLoops = new Set(ids.filter(live).map((id) => recordedLoop(dir, id)?.loop));
  const out: string[] = [];
  for (const id of ids) {
    if (live(id)) continue;
    const r = recordedLoop(dir, id);
    if (r && !liveLoops.has(r.loop) && loopBacking(r.loop) === r.source) await detach(r.loop);
    rmSync(join(dir, id), { recursive: true, force: true });
    out.push(id);
  }
  return out;
}
