import { test } from 'node:test';
import assert from 'node:assert/strict';
import { resolveDataPlane } from './detect.ts';

const found = (): string => '/usr/sbin/haproxy';
const missing = (): undefined => undefined;

test('data plane: auto means haproxy when its binary is found, node otherwise', () => {
  assert.equal(resolveDataPlane('auto', {}, found).kind, 'haproxy');
  assert.match(resolveDataPlane('auto', {}, found).reason, /haproxy found at \/usr\/sbin\/haproxy/);
  const none = resolveDataPlane('auto', {}, missing);
  assert.equal(none.kind, 'node');
  assert.match(none.reason, /no haproxy binary/);
});

test('data plane: an explicit choice is kept (haproxy without a binary is refused by the caller)', () => {
  assert.equal(resolveDataPlane('node', {}, found).kind, 'node');
  const h = resolveDataPlane('haproxy', {}, missing);
  assert.equal(h.kind, 'haproxy');
  assert.equal(h.binary, undefined);
});

test('data plane: auto stays node for a gateway without a local agent (no instance HAProxy could reach)', () => {
  const g = resolveDataPlane('auto', {}, found, true);
  assert.equal(g.kind, 'node');
  assert.match(g.reason, /without a local agent/);
  assert.equal(resolveDataPlane('haproxy', {}, found, true).kind, 'haproxy');
});
