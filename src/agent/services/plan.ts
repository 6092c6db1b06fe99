/**
 * What an agent does to make its node match its assignment: a pure diff (firework's reconciler,
 * B5), fixed where firework was wrong: an instance that died is recreated even when the config is
 * unchanged (firework skipped the tick on an unchanged revision), and health-check or metadata
 * changes apply in place instead of being ignored.
 */
export interface DesiredService {
  name: string;
  /** serviceConfigKey(): a different key means recreate. */
  config_key: string;
}

export type InstanceState = 'starting' | 'running' | 'unhealthy' | 'stopping' | 'exited';

export interface RunningService {
  name: string;
  config_key: string;
  state: InstanceState;
}

export type Action =
  | { kind: 'create'; service: string }
  | { kind: 'update'; service: string; reason: 'config' | 'dead' }
  | { kind: 'delete'; service: string };

export type UpdateStrategy = 'all-at-once' | 'rolling';

export function planReconcile(desired: readonly DesiredService[], actual: readonly RunningService[]): Action[] {
  const have = new Map(actual.map((a) => [a.name, a]));
  const want = new Set(desired.map((d) => d.name));
  const actions: Action[] = [];
  for (const a of [...actual].sort((x, y) => (x.name < y.name ? -1 : 1))) {
    if (!want.has(a.name) && a.state !== 'stopping') actions.push({ kind: 'delete', service: a.name });
  }
  for (const d of [...desired].sort((x, y) => (x.name < y.name ? -1 : 1))) {
    const a = have.get(d.name);
    if (!a) actions.push({ kind: 'create', service: d.name });
    else if (a.state === 'exited') actions.push({ kind: 'update', service: d.name, reason: 'dead' });
    else if (a.config_key !== d.config_key && a.state !== 'stopping') actions.push({ kind: 'update', service: d.name, reason: 'config' });
  }
  return actions;
}

/**
 * The order actions run in. all-at-once: everything now. rolling: deletes and creates first, then
 * config updates one at a time, each waiting until the new instance is healthy (the caller gates
 * on health; firework's rolling only slept). A dead instance is always replaced at once.
 */
export function orderActions(actions: readonly Action[], strategy: UpdateStrategy): Action[][] {
  if (strategy === 'all-at-once') return actions.length ? [[...actions]] : [];
  const now = actions.filter((a) => a.kind !== 'update' || a.reason === 'dead');
  const rolling = actions.filter((a) => a.kind === 'update' && a.reason === 'config');
  return [...(now.length ? [now] : []), ...rolling.map((a) => [a])];
}
