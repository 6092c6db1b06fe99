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

/**
 * What `--data-plane` resolves to here, and why (said at start and by `aether doctor`). `auto` is
 * haproxy when there is a binary, unless this node's instances are reached only through forwarder
 * sockets (`viaForwarders`): HAProxy then opens a connection per request (reusing them could lose a
 * request sent as a program dies) and is slower than the Node path (bench/README.md).
 */
export function resolveDataPlane(
  wanted: 'auto' | 'haproxy' | 'node',
  env: NodeJS.ProcessEnv = process.env,
  find: (env: NodeJS.ProcessEnv) => string | undefined = findHaproxy,
  viaForwarders = false,
): { kind: 'haproxy' | 'node'; binary: string | undefined; reason: string } {
  const binary = find(env);
  if (wanted === 'node') return { kind: 'node', binary, reason: 'asked for (--data-plane node)' };
  if (wanted === 'haproxy') return { kind: 'haproxy', binary, reason: binary ? `asked for (${binary})` : 'asked for, but no haproxy binary was found' };
  if (!binary) return { kind: 'node', binary, reason: 'auto: no haproxy binary found' };
  if (viaForwarders) return { kind: 'node', binary, reason: `auto: node (instances here are reached through forwarder sockets, where haproxy at ${binary} is slower; --data-plane haproxy to use it anyway)` };
  return { kind: 'haproxy', binary, reason: `auto: haproxy (${binary})` };
}
