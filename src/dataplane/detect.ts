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
export function resolveDataPlane(
  wanted: 'auto' | 'haproxy' | 'node',
  env: NodeJS.ProcessEnv = process.env,
  find: (env: NodeJS.ProcessEnv) => string | undefined = findHaproxy,
): { kind: 'haproxy' | 'node'; binary: string | undefined; reason: string } {
  const binary = find(env);
  if (wanted === 'node') return { kind: 'node', binary, reason: 'asked for (--data-plane node)' };
  if (wanted === 'haproxy') return { kind: 'haproxy', binary, reason: binary ? `asked for (${binary})` : 'asked for, but no haproxy binary was found' };
  // HAProxy beats the Node path only with kept-alive connections to instances, which it uses where a
  // program is reached over TCP (the planned veth per sandbox); through today's forwarder sockets it
  // opens a connection per request (docs/dataplane.md, bench/README.md). Until then `auto` stays on
  // the reference path.
  return { kind: 'node', binary, reason: binary ? `auto: node (haproxy at ${binary} is opt-in until instances are reached over TCP: --data-plane haproxy)` : 'auto: no haproxy binary found' };
}
