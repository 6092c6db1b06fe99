import { readdirSync, readFileSync } from 'node:fs';

/**
 * /proc/<pid>/stat from field 3 (state) on, so [0] is the state and [19] the start time; undefined
 * once the process is gone. The command name (field 2) may hold spaces and parentheses: the split
 * starts after the last ')'.
 */
export function statFields(pid: number): string[] | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  } catch {
    return undefined;
  }
}

/** Start time (field 22, clock ticks since boot): with the pid it names a process, so a reused pid is not mistaken for it. */
export function procStart(pid: number): string | undefined {
  return statFields(pid)?.[19];
}

/** A process named by pid and start time: what a record keeps of a process that outlives the agent. */
export interface ProcRef {
  pid: number;
  start: string;
}

/** The process `pid` names now, if any. */
export function procRef(pid: number | undefined): ProcRef | undefined {
  const start = pid === undefined ? undefined : procStart(pid);
  return pid !== undefined && start !== undefined ? { pid, start } : undefined;
}

/** What /proc says of a pid: state letter, start time, argv (NUL-separated). */
export interface ProcInfo {
  state: string;
  start: string;
  cmdline: string;
}

export function readProc(pid: number): ProcInfo | undefined {
  const f = statFields(pid);
  if (!f) return undefined;
  try {
    return { state: f[0] ?? '', start: f[19] ?? '', cmdline: readFileSync(`/proc/${pid}/cmdline`, 'latin1') };
  } catch {
    return undefined;
  }
}

/**
 * The referenced process has ended: no such pid, a zombie, or another process's start time. Not
 * the same as !isSameProcess: an exiting process's cmdline reads empty before it is gone.
 */
export function isGone(ref: ProcRef, proc: ProcInfo | undefined): boolean {
  return !proc || proc.state === 'Z' || proc.state === 'X' || proc.start !== ref.start;
}

export function procGone(ref: ProcRef): boolean {
  return isGone(ref, readProc(ref.pid));
}

/**
 * Whether `proc` is the referenced process: alive (not a zombie), started when the reference says
 * (a reused pid has another start time), and its argv is what `names` expects (the program that
 * serves this instance's socket: the binary's name alone proves nothing).
 */
export function isSameProcess(ref: ProcRef, proc: ProcInfo | undefined, names: (argv: string[]) => boolean): boolean {
  return proc !== undefined && !isGone(ref, proc) && names(proc.cmdline.split('\0'));
}

/** The value of `--flag value` (or `--flag=value`) in an argv. */
export function argValue(argv: readonly string[], flag: string): string | undefined {
  const i = argv.indexOf(flag);
  if (i >= 0) return argv[i + 1];
  return argv.find((a) => a.startsWith(`${flag}=`))?.slice(flag.length + 1);
}

export function signalPid(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    // gone
  }
}

/**
 * Live processes whose argv names a unix socket (`*.sock`) in `dir`: what serves a leftover
 * instance dir that has no usable record (a crash before it was written, an older agent's). Only
 * sockets: an operator's `tail -f` of a file in there is not one of them.
 */
export function processesServingIn(dir: string): number[] {
  const out: number[] = [];
  let pids: string[];
  try {
    pids = readdirSync('/proc').filter((n) => /^\d+$/.test(n));
  } catch {
    return out;
  }
  for (const p of pids) {
    const pid = Number(p);
    if (pid === process.pid) continue;
    let argv: string[];
    try {
      argv = readFileSync(`/proc/${pid}/cmdline`, 'latin1').split('\0');
    } catch {
      continue;
    }
    if (argv.some((a) => a.startsWith(`${dir}/`) && a.endsWith('.sock'))) out.push(pid);
  }
  return out;
}
