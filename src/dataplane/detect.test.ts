import { test } from 'node:test';
import assert from 'node:assert/strict';
import { resolveDataPlane } from './detect.ts';

const found = (): string => '/usr/sbin/haproxy';
const missing = (): undefined => undefined;

test('data plane: auto stays node (haproxy opt-in) and says why, with or without a binary', () => {
  const a = resolveDataPlane('auto', {}, found);
  assert.equal(a.kind, 'node');
  assert.match(a.reason, /haproxy at \/usr\/sbin\/haproxy is opt-in/);
  const none = resolveDataPlane('auto', {}, missing);
  assert.equal(none.kind, 'node');
  assert.match(none.reason, /no haproxy binary/);
});

test('data plane: an explicit choice is kept (haproxy without a binary is refused by the caller)', () => {
  assert.equal(resolveDataPlane('node', {}, found).kind, 'node');
  assert.equal(resolveDataPlane('haproxy', {}, found).binary, '/usr/sbin/haproxy');
  const h = resolveDataPlane('haproxy', {}, missing);
  assert.equal(h.kind, 'haproxy');
  assert.equal(h.binary, undefined);
});
