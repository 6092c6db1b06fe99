import { AetherError } from '../../core/index.ts';

/**
 * The life of every instance on a node (function or service), one table for all:
 *
 *   starting -> ready -> draining -> stopping -> stopped
 *       \         \          \           ^
 *        `---------`----------`-> failed-'
 *
 * `starting`: created, launching, waiting for its port. `ready`: serving. `draining`: no new work,
 * in-flight work finishing. `stopping`: the sandbox is being torn down (asked for). `failed`: the
 * start failed or the program died on its own; torn down from there. `stopped`: gone, capacity
 * released (terminal). Pure: the core applies it, the table is the contract.
 */
export type InstanceState = 'starting' | 'ready' | 'draining' | 'stopping' | 'stopped' | 'failed';

export const INSTANCE_STATES: readonly InstanceState[] = ['starting', 'ready', 'draining', 'stopping', 'stopped', 'failed'];

export const TRANSITIONS: Readonly<Record<InstanceState, readonly InstanceState[]>> = {
  starting: ['ready', 'stopping', 'failed'],
  ready: ['draining', 'stopping', 'failed'],
  draining: ['stopping', 'failed'],
  stopping: ['stopped', 'failed'],
  failed: ['stopping', 'stopped'],
  stopped: [],
};

export function canTransition(from: InstanceState, to: InstanceState): boolean {
  return TRANSITIONS[from].includes(to);
}

/** The next state, or AETHER_ERR_INSTANCE_STATE when the table has no such edge (a bug in the caller). */
export function transition(from: InstanceState, to: InstanceState, instanceId = '?'): InstanceState {
  if (!canTransition(from, to)) throw new AetherError('AETHER_ERR_INSTANCE_STATE', `instance ${instanceId}: illegal transition ${from} -> ${to}`);
  return to;
}

/** Serving states: a request may still be sent to (ready) or finish on (draining) the instance. */
export const isServing = (s: InstanceState): boolean => s === 'ready' || s === 'draining';
/** Holds node capacity: everything until the sandbox is gone. */
export const holdsCapacity = (s: InstanceState): boolean => s !== 'stopped';
