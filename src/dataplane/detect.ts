import { existsSync } from 'node:fs';
import { join } from 'node:path';

/** `haproxy` on PATH or in the usual sbin directories, or undefined. */
export function findHaproxy(env: NodeJS.ProcessEnv = process.env): string | undefined {
  for (const dir of [...(env['PATH'] ?? '').split(':'), '/usr/sbin', '/usr/local/sbin', '/sbin']) {
    if (!dir) continue;
    const p = join(dir, 'haproxy');
    if (existsSync(p)) return p;
  }
  return undefined;
}

/** What `--data-plane` resolves to here, and why (said at start and by `aether doctor`). */
export function resolveDataPlane(wanted: 'auto' | 'haproxy' | 'node', env: NodeJS.ProcessEnv = process.env): { kind: 'haproxy' | 'node'; binary: string | undefined; reason: string } {
  const binary = findHaproxy(env);
  if (wanted === 'node') return { kind: 'node', binary, reason: 'asked for (--data-plane node)' };
  if (wanted === 'haproxy') return { kind: 'haproxy', binary, reason: binary ? `asked for (${binary})` : 'asked for, but no haproxy binary was found' };
  // HAProxy stays opt-in until it has had a quiet-machine benchmark and more mileage: the Node path
  // is the reference behaviour (docs/dataplane.md).
  return { kind: 'node', binary, reason: binary ? `auto: node (haproxy at ${binary} is opt-in: --data-plane haproxy)` : 'auto: no haproxy binary found' };
}
