import { test } from 'node:test';
import assert from 'node:assert/strict';
import { newId, newInvocationId } from './ids.ts';

test('invocation ids: fixed width, sorted by time, after every id of the older base32 form', () => {
  const t = Date.UTC(2026, 11, 2);
  const a = newInvocationId(t);
  const b = newInvocationId(t + 1);
  assert.match(a, /^inv-[0-9A-F]{28}$/);
  assert.equal(a.length, b.length);
  assert.ok(a < b);
  assert.notEqual(newInvocationId(t), newInvocationId(t), 'random part');
  // What HAProxy's unique-id-format gives for the same millisecond: (ms + 2^45) as 12 hex digits.
  assert.equal(a.slice(4, 16), (t + 2 ** 45).toString(16).toUpperCase().padStart(12, '0'));
  // Records written before the change keep sorting first (trimming drops them first).
  assert.ok(newId('inv', t + 365 * 86_400_000) < newInvocationId(t));
});
