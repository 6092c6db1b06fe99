import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CapacityLedger } from './ledger.ts';

test('ledger: functions and services draw on one capacity', () => {
  const l = new CapacityLedger({ instances: 3, memoryMb: 1000, vcpu: 4 });
  l.charge({ id: 'f1', kind: 'function', owner: 'fn', memoryMb: 256, vcpu: 1 });
  assert.equal(l.tryCharge({ id: 's1', kind: 'service', owner: 'web', memoryMb: 512, vcpu: 2 }), true);
  assert.deepEqual(l.used(), { instances: 2, memoryMb: 768, vcpu: 3 });
  assert.deepEqual(l.used('service'), { instances: 1, memoryMb: 512, vcpu: 2 });
  // memory is the limit now: a service that does not fit is refused and charges nothing
  assert.equal(l.tryCharge({ id: 's2', kind: 'service', owner: 'db', memoryMb: 512, vcpu: 1 }), false);
  assert.equal(l.has('s2'), false);
  assert.match(l.describe({ memoryMb: 512, vcpu: 1 }), /768\/1000 MB/);
  assert.equal(l.fits({ memoryMb: 480, vcpu: 1 }, { instances: 1, memoryMb: 256, vcpu: 1 }), true, 'fits once an eviction frees 256 MB');
  assert.equal(l.release('f1'), true);
  assert.equal(l.release('f1'), false);
  assert.equal(l.tryCharge({ id: 's2', kind: 'service', owner: 'db', memoryMb: 488, vcpu: 2 }), true);
  assert.deepEqual(l.free(), { instances: 1, memoryMb: 0, vcpu: 0 });
  assert.equal(l.fits({ memoryMb: 1, vcpu: 0 }), false);
});

test('ledger: the instance count is a limit too; a charge with a known id is not counted twice', () => {
  const l = new CapacityLedger({ instances: 1, memoryMb: 1000, vcpu: 4 });
  assert.equal(l.tryCharge({ id: 'a', kind: 'function', owner: 'f', memoryMb: 1, vcpu: 0 }), true);
  assert.equal(l.tryCharge({ id: 'a', kind: 'function', owner: 'f', memoryMb: 1, vcpu: 0 }), true);
  assert.equal(l.tryCharge({ id: 'b', kind: 'function', owner: 'f', memoryMb: 1, vcpu: 0 }), false);
  assert.equal(l.charges().length, 1);
});
