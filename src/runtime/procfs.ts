import { readFileSync } from 'node:fs';

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
