import { existsSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { silentLogger, systemClock, type Clock, type Logger, type TimerHandle } from '../../core/index.ts';

/**
 * Process sandboxes whose data dir is gone. Instances outlive a killed agent on purpose (it adopts
 * them when it comes back on the same data dir), but once that data dir is deleted (a test run
 * killed mid-way, then its temp dirs removed) nobody ever will: they would run forever. This
 * sweep stops them.
 *
 * Ours, and only ours, are recognised by two marks together: the command line names this code's
 * sandbox script (the launcher chain `unshare … -- perl <sandbox>/launch.pl`, or the forwarder
 * `unshare --net -- node <sandbox>/forwarder.mjs <data dir>/sockets/…`), and a path in the
 * runtime's data dir (the launcher's stdout is a FIFO in `<data dir>/instances/<agent>/<id>/`; the
 * forwarder's argument is its socket under `<data dir>/sockets/`). A process is stopped only when
 * both match and that data dir no longer exists, as the kernel also says: the launcher's FIFO is
 * marked deleted, and the forwarder shares our mount namespace (so "no longer exists" means the
 * same to both of us). Anything we cannot attribute is left alone.
 * Killing the launcher chain's `unshare --kill-child` ends the namespace's PID 1 and with it
 * every process of the instance.
 */

const DELETED = ' (deleted)';
const SANDBOX_DIR = join(dirname(fileURLToPath(import.meta.url)), 'sandbox');

export interface OrphanScanOptions {
  /** /proc (tests point it at a fake tree). */
  proc?: string;
  /** The scripts that mark our sandboxes (default: this checkout's). */
  launcher?: string;
  forwarder?: string;
  exists?: (path: string) => boolean;
}

export interface OrphanSandbox {
  pid: number;
  kind: 'launcher' | 'forwarder';
  /** The runtime data dir it belongs to (gone). */
  dataDir: string;
}

/** The runtime data dir a path inside it names: `<data dir>/instances/…` or `<data dir>/sockets/…`. */
function dataDirOf(path: string, marker: '/instances/' | '/sockets/'): string | undefined {
  const p = path;
  if (!p.startsWith('/')) return undefined;
  const i = p.lastIndexOf(marker);
  return i > 0 ? p.slice(0, i) : undefined;
}

function read(fn: () => string): string | undefined {
  try {
    return fn();
  } catch {
    return undefined; // gone meanwhile, or not ours to read
  }
}

/** Our sandbox processes whose data dir no longer exists (pure apart from reading `proc`). */
export function findOrphanSandboxes(o: OrphanScanOptions = {}): OrphanSandbox[] {
  const proc = o.proc ?? '/proc';
  const launcher = o.launcher ?? join(SANDBOX_DIR, 'launch.pl');
  const forwarder = o.forwarder ?? join(SANDBOX_DIR, 'forwarder.mjs');
  const exists = o.exists ?? existsSync;
  const ownMnt = read(() => readlinkSync(join(proc, 'self', 'ns', 'mnt')));
  const found: OrphanSandbox[] = [];
  let pids: string[];
  try {
    pids = readdirSync(proc).filter((n) => /^\d+$/.test(n));
  } catch {
    return [];
  }
  for (const name of pids) {
    const pid = Number(name);
    if (pid === process.pid) continue;
    const argv = read(() => readFileSync(join(proc, name, 'cmdline'), 'utf8'))?.split('\0') ?? [];
    let kind: OrphanSandbox['kind'] | undefined;
    let dataDir: string | undefined;
    if (argv.includes(launcher)) {
      kind = 'launcher';
      for (const fd of ['1', '2']) {
        const target = read(() => readlinkSync(join(proc, name, 'fd', fd))) ?? '';
        if (target.endsWith(DELETED)) dataDir ??= dataDirOf(target.slice(0, -DELETED.length), '/instances/');
      }
    } else if (argv.includes(forwarder)) {
      kind = 'forwarder';
      const arg = argv[argv.indexOf(forwarder) + 1];
      const mnt = read(() => readlinkSync(join(proc, name, 'ns', 'mnt')));
      if (mnt !== undefined && mnt === ownMnt) dataDir = arg ? dataDirOf(arg, '/sockets/') : undefined;
    }
    if (kind && dataDir && !exists(dataDir)) found.push({ pid, kind, dataDir });
  }
  return found;
}

/** Stop what findOrphanSandboxes finds (SIGKILL: nobody is left to drain them). Returns what it stopped. */
export function sweepOrphanSandboxes(o: OrphanScanOptions & { logger?: Logger; kill?: (pid: number) => void } = {}): OrphanSandbox[] {
  const kill = o.kill ?? ((pid: number) => process.kill(pid, 'SIGKILL'));
  const stopped: OrphanSandbox[] = [];
  for (const s of findOrphanSandboxes(o)) {
    try {
      kill(s.pid);
      stopped.push(s);
    } catch {
      // exited meanwhile
    }
  }
  if (stopped.length) o.logger?.warn({ sandboxes: stopped }, 'stopped process sandboxes whose data dir no longer exists');
  return stopped;
}

/** Sweep now and then every `everyMs` (default a minute) of `clock`; stop() ends it. */
export function startOrphanSweep(o: OrphanScanOptions & { clock?: Clock; logger?: Logger; everyMs?: number; kill?: (pid: number) => void } = {}): { stop(): void } {
  const clock = o.clock ?? systemClock;
  const logger = o.logger ?? silentLogger();
  let timer: TimerHandle | undefined;
  let stopped = false;
  const tick = (): void => {
    try {
      sweepOrphanSandboxes({ ...o, logger });
    } catch (err) {
      logger.warn({ err }, 'orphan sandbox sweep failed');
    }
    if (!stopped) timer = clock.setTimeout(tick, o.everyMs ?? 60_000);
  };
  tick();
  return {
    stop() {
      stopped = true;
      if (timer) clock.clearTimeout(timer);
    },
  };
}
