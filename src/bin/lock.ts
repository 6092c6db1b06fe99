import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { AetherError } from '../core/index.ts';
import { isGone, procStart, readProc } from '../runtime/procfs.ts';

interface Holder {
  pid: number;
  /** /proc start time, so a pid reused by another process is not taken for the holder. */
  start: string | null;
  role: string;
}

function readHolder(file: string): { text: string; holder: Holder | undefined } | undefined {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  try {
    const h = JSON.parse(text) as Partial<Holder>;
    if (typeof h.pid === 'number' && Number.isInteger(h.pid) && h.pid > 0) return { text, holder: { pid: h.pid, start: typeof h.start === 'string' ? h.start : null, role: typeof h.role === 'string' ? h.role : 'up' } };
  } catch {
    // half-written or foreign: stale
  }
  return { text, holder: undefined };
}

function alive(h: Holder): boolean {
  if (h.pid === process.pid) return false;
  // With /proc: the pid and its start time name the process (a zombie counts as gone).
  if (h.start !== null && procStart(process.pid) !== undefined) return !isGone({ pid: h.pid, start: h.start }, readProc(h.pid));
  try {
    process.kill(h.pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Claims `<dataDir>/lock` for this process: one `aether up` or `aether agent` per data dir (two
 * would share the agent id, the store, the HAProxy config and the sandboxes' state). A lock whose
 * holder is gone (killed, crashed) is taken over. Returns the release, for a clean stop.
 */
export function lockDataDir(dataDir: string, role: string): () => void {
  const file = join(dataDir, 'lock');
  const mine = JSON.stringify({ pid: process.pid, start: procStart(process.pid) ?? null, role } satisfies Holder) + '\n';
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      writeFileSync(file, mine, { flag: 'wx', mode: 0o600 });
      return () => {
        // Only our own: never a lock someone took over after a forced exit.
        if (readHolder(file)?.text === mine) rmSync(file, { force: true });
      };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    const seen = readHolder(file);
    if (seen?.holder && alive(seen.holder)) {
      throw new AetherError(
        'AETHER_ERR_VALIDATION',
        `config: the data dir ${dataDir} is in use by \`aether ${seen.holder.role}\` (pid ${seen.holder.pid}); stop it first, or start this one in another directory (or with another --data-dir)`,
      );
    }
    // Stale: removed only if it is still the one judged (another starter may have just replaced it).
    if (seen && readHolder(file)?.text === seen.text) rmSync(file, { force: true });
  }
  throw new AetherError('AETHER_ERR_VALIDATION', `config: could not lock the data dir ${dataDir} (another process is starting on it)`);
}
