import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isAetherError } from '../../core/index.ts';
import { canTransition, INSTANCE_STATES, transition, TRANSITIONS, type InstanceState } from './state.ts';

test('instance states: the happy path and the failure exits are legal', () => {
  const path: InstanceState[] = ['starting', 'ready', 'draining', 'stopping', 'stopped'];
  let s = path[0] as InstanceState;
  for (const next of path.slice(1)) s = transition(s, next);
  assert.equal(s, 'stopped');
  for (const from of ['starting', 'ready', 'draining', 'stopping'] as const) assert.ok(canTransition(from, 'failed'), `${from} -> failed`);
  assert.ok(canTransition('failed', 'stopped'));
  assert.ok(canTransition('starting', 'stopping'), 'a start can be cancelled');
});

test('instance states: illegal transitions throw a coded error, stopped is terminal', () => {
  for (const to of INSTANCE_STATES) assert.equal(canTransition('stopped', to), false, `stopped -> ${to}`);
  for (const [from, to] of [['ready', 'starting'], ['draining', 'ready'], ['stopping', 'ready'], ['failed', 'ready'], ['starting', 'draining'], ['ready', 'ready']] as const) {
    assert.throws(
      () => transition(from, to, 'inst-1'),
      (err: unknown) => isAetherError(err) && err.code === 'AETHER_ERR_INSTANCE_STATE' && err.message.includes(`${from} -> ${to}`) && err.message.includes('inst-1'),
    );
  }
});

test('instance states: every state has an entry and every edge names a known state', () => {
  assert.deepEqual(Object.keys(TRANSITIONS).sort(), [...INSTANCE_STATES].sort());
  for (const tos of Object.values(TRANSITIONS)) for (const to of tos) assert.ok(INSTANCE_STATES.includes(to));
  // everything can reach stopped
  const reach = (s: InstanceState, seen = new Set<InstanceState>()): boolean => s === 'stopped' || (!seen.has(s) && (seen.add(s), TRANSITIONS[s].some((t) => reach(t, seen))));
  for (const s of INSTANCE_STATES) assert.ok(reach(s), `${s} reaches stopped`);
});
