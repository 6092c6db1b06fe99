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
  /** `aether gateway`: no agent in this process, so no instance HAProxy could reach directly. */
  remoteOnly = false,
): { kind: 'haproxy' | 'node'; binary: string | undefined; reason: string } {
  const binary = find(env);
  if (wanted === 'node') return { kind: 'node', binary, reason: 'asked for (--data-plane node)' };
  if (wanted === 'haproxy') return { kind: 'haproxy', binary, reason: binary ? `asked for (${binary})` : 'asked for, but no haproxy binary was found' };
  // HAProxy carries warm traffic for less CPU than the Node path (bench/README.md); without it
  // (or if it fails to start, see src/bin/platform.ts) the Node path serves everything.
  // A gateway without an agent reaches every instance through an agent hop. HAProxy does that too
  // (docs/dataplane.md, "Distributed mode"), but a request that meets a dead agent or a vanished
  // instance fails there, where the Node path retries it on another instance: opt-in for now.
  if (binary && remoteOnly) return { kind: 'node', binary, reason: `auto: node (a gateway without a local agent; haproxy at ${binary} is opt-in there: --data-plane haproxy)` };
  return binary ? { kind: 'haproxy', binary, reason: `auto: haproxy found at ${binary}` } : { kind: 'node', binary, reason: 'auto: no haproxy binary found (install haproxy for the native data plane)' };
}
