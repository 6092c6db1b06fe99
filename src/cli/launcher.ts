import { readFileSync } from 'node:fs';
import type { Clock } from '../core/index.ts';

/**
 * `npx aether up` runs as npm -> sh -c -> node. A process manager signals npm; npm forwards the
 * signal to the shell only, the shell dies and node would go on as an orphan (and if npm itself is
 * killed, the shell stays and so would node). So a server remembers the chain of processes that
 * launched it (up to npm, or up to our Node-version re-exec wrapper, which names itself in
 * AETHER_LAUNCHER_PID) and stops when any link of that chain goes away.
 */
export interface ProcInfo {
  ppid: number;
  /** "Z" for a zombie: dead, only not reaped yet. */
  state: string;
  /** argv as /proc shows it (npm retitles itself "npm exec …"). */
  cmdline: string;
}

export type ReadProc = (pid: number) => ProcInfo | undefined;

/** Linux /proc reader; undefined when the process is gone (or /proc is not there). */
export const readProc: ReadProc = (pid) => {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // "pid (comm) state ppid …": comm may hold spaces and parentheses, so split after the last ')'.
    const [state = '', ppidText = ''] = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const ppid = Number(ppidText);
    if (!Number.isInteger(ppid)) return undefined;
    const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0+$/, '').replaceAll('\0', ' ');
    return { ppid, state, cmdline };
  } catch {
    return undefined;
  }
};

const MAX_DEPTH = 4; // node -> wrapper -> sh -> npm
const isNpm = (cmdline: string): boolean => /^(\S*\/)?(npm|npx)(\s|$)/.test(cmdline) || /\bnpm-cli\.js\b|\bnpx-cli\.js\b/.test(cmdline);

/**
 * The launcher chain, nearest first: [parent, …, launcher] with each link's parent, or [] when we
 * were not started by npm or the wrapper (then signals reach us directly and nothing is watched).
 */
export function launcherChain(ppid: number, env: NodeJS.ProcessEnv, read: ReadProc = readProc): { pid: number; ppid: number }[] {
  const wrapper = Number(env['AETHER_LAUNCHER_PID'] ?? NaN);
  const underNpm = Boolean(env['npm_execpath'] || env['npm_command']);
  const chain: { pid: number; ppid: number }[] = [];
  let last = -1;
  let pid = ppid;
  for (let depth = 0; depth < MAX_DEPTH && pid > 1; depth++) {
    const p = read(pid);
    if (!p) break;
    chain.push({ pid, ppid: p.ppid });
    if (pid === wrapper || (underNpm && isNpm(p.cmdline))) last = depth;
    pid = p.ppid;
  }
  return chain.slice(0, last + 1);
}

/** Calls onGone once when our parent changes or a link of the chain ends; returns a stop function. */
export function watchLauncher(opts: { chain: { pid: number; ppid: number }[]; clock: Clock; onGone: (pid: number) => void; ppid?: () => number; read?: ReadProc; everyMs?: number }): () => void {
  const { chain, clock, onGone } = opts;
  const read = opts.read ?? readProc;
  const ppid = opts.ppid ?? (() => process.ppid);
  const first = chain[0];
  if (!first) return () => undefined;
  let timer: ReturnType<Clock['setTimeout']> | undefined;
  const goneLink = (): number | undefined => {
    if (ppid() !== first.pid) return first.pid;
    for (const [i, link] of chain.entries()) {
      const p = read(link.pid);
      // The launcher itself may be re-parented (its own shell ended under nohup): only its end counts.
      if (!p || p.state === 'Z' || (i < chain.length - 1 && p.ppid !== link.ppid)) return link.pid;
    }
    return undefined;
  };
  const check = (): void => {
    timer = undefined;
    const gone = goneLink();
    if (gone !== undefined) onGone(gone);
    else timer = clock.setTimeout(check, opts.everyMs ?? 500);
  };
  timer = clock.setTimeout(check, opts.everyMs ?? 500);
  return () => {
    if (timer) clock.clearTimeout(timer);
    timer = undefined;
  };
}
