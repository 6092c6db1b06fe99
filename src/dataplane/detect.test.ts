import { test } from 'node:test';
import assert from 'node:assert/strict';
import { resolveDataPlane } from './detect.ts';

const found = (): string => '/usr/sbin/haproxy';
const missing = (): undefined => undefined;

test('data plane: auto is haproxy when found, node without a binary or through forwarder sockets, and says why', () => {
  const a = resolveDataPlane('auto', {}, found);
  assert.equal(a.kind, 'haproxy');
  assert.match(a.reason, /auto: haproxy \(\/usr\/sbin\/haproxy\)/);
  const none = resolveDataPlane('auto', {}, missing);
  assert.equal(none.kind, 'node');
  assert.match(none.reason, /no haproxy binary/);
  const fwd = resolveDataPlane('auto', {}, found, true);
  assert.equal(fwd.kind, 'node');
  assert.match(fwd.reason, /forwarder sockets/);
  assert.equal(resolveDataPlane('haproxy', {}, found, true).kind, 'haproxy', 'an explicit choice wins');
});

test('data plane: an explicit choice is kept (haproxy without a binary is refused by the caller)', () => {
  assert.equal(resolveDataPlane('node', {}, found).kind, 'node');
  assert.equal(resolveDataPlane('haproxy', {}, found).binary, '/usr/sbin/haproxy');
  const h = resolveDataPlane('haproxy', {}, missing);
  assert.equal(h.kind, 'haproxy');
  assert.equal(h.binary, undefined);
});
