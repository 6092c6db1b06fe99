import { test } from 'node:test';
import assert from 'node:assert/strict';
import { bearerToken, deriveClusterToken, sameSecret } from './secrets.ts';

test('bearerToken accepts the scheme in any case and nothing else', () => {
  for (const h of ['Bearer abc', 'bearer abc', 'BEARER abc', 'Bearer \tabc ']) assert.equal(bearerToken(h), 'abc', h);
  for (const h of [undefined, '', 'Basic abc', 'Bearerabc', 'Bearer', 'Bearer a b']) assert.equal(bearerToken(h), undefined, String(h));
});

test('sameSecret compares any lengths without throwing', () => {
  assert.equal(sameSecret('abc', 'abc'), true);
  assert.equal(sameSecret('abc', 'abd'), false);
  assert.equal(sameSecret('a', 'a-much-longer-secret'), false);
  assert.equal(sameSecret('', 'x'), false);
});

test('the derived cluster token is stable, not the admin token, and differs per admin token', () => {
  assert.equal(deriveClusterToken('t1'), deriveClusterToken('t1'));
  assert.notEqual(deriveClusterToken('t1'), 't1');
  assert.notEqual(deriveClusterToken('t1'), deriveClusterToken('t2'));
});
