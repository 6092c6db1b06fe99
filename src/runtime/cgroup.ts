import { accessSync, constants, existsSync, mkdirSync, readdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { procStart } from './procfs.ts';

/** The cgroup v1 controllers an instance is limited by. */
export const CONTROLLERS = ['memory', 'cpu', 'pids'] as const;
export type Controller = (typeof CONTROLLERS)[number];

/** Mount points of the v1 hierarchies that carry each controller (from /proc/mounts). */
export function findV1Mounts(mountsText?: string): Partial<Record<Controller, string>> {
  let text = mountsText;
  if (text === undefined) {
    try {
      text = readFileSync('/proc/mounts', 'utf8');
    } catch {
      return {};
    }
  }
  const out: Partial<Record<Controller, string>> = {};
  for (const line of text.split('\n')) {
    const [, dir, type, options] = line.split(' ');
    if (type !== 'cgroup' || !dir || !options) continue;
    const opts = options.split(',');
    for (const c of CONTROLLERS) if (opts.includes(c) && !out[c]) out[c] = dir.replace(/\\040/g, ' ');
  }
  return out;
}

/** True when a cgroup v2 hierarchy carries the memory, cpu and pids controllers. */
export function v2HasControllers(): boolean {
  try {
    const mounts = readFileSync('/proc/mounts', 'utf8').split('\n');
    for (const line of mounts) {
      const [, dir, type] = line.split(' ');
      if (type !== 'cgroup2' || !dir) continue;
      const ctl = readFileSync(join(dir, 'cgroup.controllers'), 'utf8').split(/\s+/);
      if (ctl.includes('memory') && ctl.includes('cpu') && ctl.includes('pids')) return true;
    }
  } catch {
    // fall through
  }
  return false;
}

/** All three v1 controllers mounted and writable by us. */
export function v1Usable(mounts = findV1Mounts()): mounts is Record<Controller, string> {
  for (const c of CONTROLLERS) {
    const dir = mounts[c];
    if (!dir) return false;
    try {
      accessSync(join(dir, 'cgroup.procs'), constants.W_OK);
    } catch {
      return false;
    }
  }
  return true;
}

export interface Limits {
  memoryMb: number;
  vcpu: number;
  pidsMax: number;
}

const CFS_PERIOD_US = 100_000;

/** One instance's cgroups: `<mount>/aether/<agentId>/<instanceId>` in each controller. */
export class InstanceCgroups {
  readonly dirs: Record<Controller, string>;
  constructor(mounts: Record<Controller, string>, agentId: string, instanceId: string) {
    this.dirs = {
      memory: join(mounts.memory, 'aether', agentId, instanceId),
      cpu: join(mounts.cpu, 'aether', agentId, instanceId),
      pids: join(mounts.pids, 'aether', agentId, instanceId),
    };
  }

  create(limits: Limits): { memswLimited: boolean } {
    // The marker first: a sweep never sees this agent's dir unmarked while an instance dir is new and empty.
    this.claim();
    for (const c of CONTROLLERS) mkdirSync(this.dirs[c], { recursive: true });
    const mem = this.dirs.memory;
    const bytes = String(Math.max(4, Math.floor(limits.memoryMb)) * 1024 * 1024);
    writeFileSync(join(mem, 'memory.limit_in_bytes'), bytes);
    // memsw = memory + swap: setting it equal to the limit allows no swap beyond the limit
    let memswLimited = false;
    const memsw = join(mem, 'memory.memsw.limit_in_bytes');
    if (existsSync(memsw)) {
      try {
        writeFileSync(memsw, bytes);
        memswLimited = true;
      } catch {
        // accounting for swap disabled at boot: fall back to swappiness below
      }
    }
    if (!memswLimited) {
      try {
        writeFileSync(join(mem, 'memory.swappiness'), '0');
      } catch {
        // not fatal: the memory limit still applies
      }
    }
    const cpu = this.dirs.cpu;
    writeFileSync(join(cpu, 'cpu.cfs_period_us'), String(CFS_PERIOD_US));
    const quota = limits.vcpu > 0 ? Math.max(1000, Math.round(limits.vcpu * CFS_PERIOD_US)) : -1;
    writeFileSync(join(cpu, 'cpu.cfs_quota_us'), String(quota));
    writeFileSync(join(this.dirs.pids, 'pids.max'), limits.pidsMax > 0 ? String(Math.floor(limits.pidsMax)) : 'max');
    return { memswLimited };
  }

  /**
   * Mark `aether/<agentId>` as this process's (see ownerMarker). An adopted instance's dir carries
   * only the marker of the agent that started it, which the restarted agent's sweep removes as
   * dead: unmarked, the dir would never be swept once this agent is gone too.
   */
  claim(): void {
    for (const c of CONTROLLERS) mkdirSync(join(dirname(this.dirs[c]), ownerMarker()), { recursive: true });
  }

  /**
   * The files the launcher writes itself into (before it execs anything else): `tasks`, which
   * moves only the writing thread and so skips the kernel's global threadgroup lock (an RCU grace
   * period, ~10 ms); the launcher is single-threaded, so its whole process moves.
   */
  joinFiles(): string[] {
    return CONTROLLERS.map((c) => join(this.dirs[c], 'tasks'));
  }

  /** Host pids of every process in the instance (the pids controller holds them all). */
  pids(): number[] {
    const seen = new Set<number>();
    for (const c of CONTROLLERS) for (const p of readPids(this.dirs[c])) seen.add(p);
    return [...seen];
  }

  /** The memory cgroup's OOM-kill count (0 when unknown). */
  oomKills(): number {
    try {
      const text = readFileSync(join(this.dirs.memory, 'memory.oom_control'), 'utf8');
      const m = /^oom_kill (\d+)/m.exec(text);
      if (m?.[1]) return Number(m[1]);
    } catch {
      // the cgroup is gone
    }
    return 0;
  }

  /** How often usage hit the memory limit. */
  memoryFailcnt(): number {
    try {
      return Number(readFileSync(join(this.dirs.memory, 'memory.failcnt'), 'utf8').trim()) || 0;
    } catch {
      return 0;
    }
  }

  /** SIGKILL every process; true once all are gone. */
  killAll(): boolean {
    const pids = this.pids();
    for (const p of pids) {
      try {
        process.kill(p, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    return pids.length === 0;
  }

  /** rmdir the three cgroups; false if one is still busy. */
  remove(): boolean {
    let ok = true;
    for (const c of CONTROLLERS) {
      try {
        rmdirSync(this.dirs[c]);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') ok = false;
      }
    }
    return ok;
  }
}

export function readPids(dir: string): number[] {
  try {
    return readFileSync(join(dir, 'cgroup.procs'), 'utf8')
      .split('\n')
      .filter((s) => s !== '')
      .map(Number);
  } catch {
    return [];
  }
}

/** Instance cgroup dirs left under `<mount>/aether/<agentId>/` in any controller. */
export function leftoverInstanceIds(mounts: Record<Controller, string>, agentId: string): string[] {
  const ids = new Set<string>();
  for (const c of CONTROLLERS) {
    try {
      for (const e of readdirSync(join(mounts[c], 'aether', agentId), { withFileTypes: true })) if (e.isDirectory() && !e.name.startsWith('.')) ids.add(e.name);
    } catch {
      // no such agent dir
    }
  }
  return [...ids];
}

/*
 * Which process owns `aether/<agentId>`: cgroupfs holds no files of ours, so an agent marks its dir
 * with an empty child cgroup `.owner-<pid>-<start time>`. Dirs whose owners are all gone (an agent
 * killed with SIGKILL on a data dir nobody reuses, as tests do) can then be removed by any other
 * agent; dirs with a live owner, or instance dirs but no marker, are never touched (an empty one
 * holds nothing to keep).
 */
const OWNER = /^\.owner-(\d+)-(\d+)$/;
let ownMarker: string | undefined;

export function ownerMarker(): string {
  ownMarker ??= `.owner-${process.pid}-${procStart(process.pid) ?? 0}`;
  return ownMarker;
}

function ownerAlive(name: string): boolean {
  const m = OWNER.exec(name);
  return m !== null && procStart(Number(m[1])) === m[2];
}

function subdirs(dir: string): string[] {
  try {
    return readdirSync(dir, { withFileTypes: true })
      .filter((e) => e.isDirectory())
      .map((e) => e.name);
  } catch {
    return [];
  }
}

function rmdirQuiet(dir: string): boolean {
  try {
    rmdirSync(dir);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ENOENT';
  }
}

function mkdirQuiet(dir: string): void {
  try {
    mkdirSync(dir);
  } catch {
    // there already, or the hierarchy refuses: the next start tries again
  }
}

/** rmdir our `aether/<agentId>` dirs (and the owner markers) once no instance dir is left in them. */
export function removeAgentCgroups(mounts: Record<Controller, string>, agentId: string): void {
  for (const c of CONTROLLERS) {
    const dir = join(mounts[c], 'aether', agentId);
    const subs = subdirs(dir);
    if (subs.some((n) => !OWNER.test(n))) continue; // instances left: keep the marker too
    for (const n of subs) rmdirQuiet(join(dir, n));
    rmdirQuiet(dir);
  }
}

/**
 * Remove the empty cgroup dirs of agents whose owner processes are all gone; returns their ids.
 * Busy cgroups (a process still in them) stay: rmdir refuses them.
 */
export function sweepDeadAgents(mounts: Record<Controller, string>, ownAgentId?: string): string[] {
  const swept = new Set<string>();
  for (const c of CONTROLLERS) {
    const root = join(mounts[c], 'aether');
    for (const agentId of subdirs(root)) {
      const dir = join(root, agentId);
      const subs = subdirs(dir);
      const markers = subs.filter((n) => OWNER.test(n));
      if (agentId === ownAgentId) {
        // Our id from an earlier life of this data dir: only its dead owners' markers go, and
        // instances left in it (adopted, or not removable) make it ours.
        for (const n of markers) if (n !== ownerMarker() && !ownerAlive(n)) rmdirQuiet(join(dir, n));
        if (subs.some((n) => !OWNER.test(n)) && !markers.includes(ownerMarker())) mkdirQuiet(join(dir, ownerMarker()));
        continue;
      }
      // Nothing in it, not even a marker (an adopter's from before adopters claimed their dir): nothing to keep.
      if (subs.length === 0) {
        if (rmdirQuiet(dir)) swept.add(agentId);
        continue;
      }
      if (markers.length === 0 || markers.some(ownerAlive)) continue;
      // A busy instance cgroup (its processes still run, e.g. waiting to be adopted) stays, and so
      // do the markers: a later sweep takes the dir once it is empty.
      if (subs.filter((n) => !OWNER.test(n) && !rmdirQuiet(join(dir, n))).length > 0) continue;
      for (const n of markers) rmdirQuiet(join(dir, n));
      if (rmdirQuiet(dir)) swept.add(agentId);
    }
  }
  return [...swept];
}
