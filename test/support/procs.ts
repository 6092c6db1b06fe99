import { readdirSync, readFileSync } from 'node:fs';
import { statFields } from '../../src/runtime/procfs.ts';

/** A process as /proc shows it; `start` (clock ticks since boot) tells a reused pid apart. */
export interface Proc {
  pid: number;
  ppid: number;
  state: string;
  start: string;
  cmdline: string;
}

function read(pid: number): Proc | undefined {
  const f = statFields(pid);
  if (!f) return undefined;
  try {
    const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' ').trim();
    return { pid, ppid: Number(f[1]), state: f[0] ?? '', start: f[19] ?? '', cmdline };
  } catch {
    return undefined;
  }
}

export function allProcs(): Proc[] {
  return readdirSync('/proc')
    .filter((d) => /^\d+$/.test(d))
    .map((d) => read(Number(d)))
    .filter((p): p is Proc => p !== undefined);
}

/** pid and everything below it, now. */
export function descendants(pid: number): Proc[] {
  const procs = allProcs();
  const out: Proc[] = [];
  const todo = [pid];
  while (todo.length > 0) {
    const p = todo.pop() as number;
    for (const c of procs) {
      if (c.ppid !== p) continue;
      out.push(c);
      todo.push(c.pid);
    }
  }
  return out;
}

/** Those of `procs` still running (same pid and start time, not a zombie). */
export function stillAlive(procs: Proc[]): Proc[] {
  return procs.filter((p) => {
    const now = read(p.pid);
    return now !== undefined && now.start === p.start && now.state !== 'Z';
  });
}

/** qemu processes whose command line names `dir`. */
export function qemuProcsUnder(dir: string): number[] {
  const out: number[] = [];
  for (const p of readdirSync('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    try {
      const cmd = readFileSync(`/proc/${p}/cmdline`, 'utf8');
      if (cmd.includes('qemu-system') && cmd.includes(dir)) out.push(Number(p));
    } catch {
      // gone
    }
  }
  return out;
}

/** Live (not zombie) processes whose environment carries AETHER_INSTANCE_ID=<id>: the sandbox of that instance. */
export function sandboxPids(instanceId: string): number[] {
  const needle = Buffer.from(`AETHER_INSTANCE_ID=${instanceId}\0`);
  const out: number[] = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    if (statFields(Number(d))?.[0] === 'Z') continue;
    try {
      if (readFileSync(`/proc/${d}/environ`).includes(needle)) out.push(Number(d));
    } catch {
      // gone meanwhile
    }
  }
  return out;
}
