import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { AetherError, ERROR_CODES, errorBody, type ErrorCode } from './errors.ts';

const DOC = new URL('../../docs/errors.md', import.meta.url);

/** Rows of the table in docs/errors.md: code -> status. */
async function documented(): Promise<Map<string, number>> {
  const text = await readFile(DOC, 'utf8');
  const rows = new Map<string, number>();
  for (const line of text.split('\n')) {
    const m = /^\|\s*`?(AETHER_ERR_[A-Z_]+)`?\s*\|\s*(\d{3})\s*\|(.*)\|(.*)\|\s*$/.exec(line);
    if (!m) continue;
    assert.ok(!rows.has(m[1] as string), `${m[1]} is documented twice`);
    assert.ok((m[3] as string).trim() && (m[4] as string).trim(), `${m[1]}: meaning and when must be filled in`);
    rows.set(m[1] as string, Number(m[2]));
  }
  return rows;
}

test('every error code is documented in docs/errors.md with its status', async () => {
  const doc = await documented();
  for (const [code, { status }] of Object.entries(ERROR_CODES)) {
    assert.ok(doc.has(code), `${code} is missing from docs/errors.md`);
    assert.equal(doc.get(code), status, `${code}: docs say ${doc.get(code)}, code says ${status}`);
  }
});

test('docs/errors.md lists no code that does not exist', async () => {
  for (const code of (await documented()).keys()) assert.ok(code in ERROR_CODES, `${code} is documented but not in ERROR_CODES`);
});

test('AetherError carries the status of its code and serialises to the API shape', () => {
  for (const code of Object.keys(ERROR_CODES) as ErrorCode[]) {
    const e = new AetherError(code);
    assert.equal(e.status, ERROR_CODES[code].status);
    assert.deepEqual(e.toJSON(), { error: { code, message: ERROR_CODES[code].text } });
  }
  assert.equal(new AetherError('AETHER_ERR_VALIDATION', 'name: is required').message, 'name: is required');
  const unknown = errorBody(new TypeError('boom at /srv/secret.ts'));
  assert.equal(unknown.status, 500);
  assert.deepEqual(JSON.parse(unknown.body), { error: { code: 'AETHER_ERR_INTERNAL', message: 'internal error' } });
});
