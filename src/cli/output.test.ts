import { test } from 'node:test';
import assert from 'node:assert/strict';
import { AetherError } from '../core/index.ts';
import { ClientError } from '../client/index.ts';
import { errorLine, formatAge, formatBytes, formatFields, formatTable } from './output.ts';
import { functionsTable } from './fn-ls.ts';
import { invocationsTable } from './fn-invocations.ts';
import { sampleFunction, type FunctionRecord } from '../spec/index.ts';

test('formatTable aligns columns and does not pad the last one', () => {
  const out = formatTable(['NAME', 'ID', 'NOTE'], [['hello', 'fn-1', 'x'], ['a-much-longer-name', 'fn-22', '']]);
  assert.equal(out, 'NAME                ID     NOTE\nhello               fn-1   x\na-much-longer-name  fn-22\n');
});

test('formatFields aligns values', () => {
  assert.equal(formatFields([['name', 'a'], ['entrypoint', 'b']]), 'name:        a\nentrypoint:  b\n');
});

test('formatBytes and formatAge', () => {
  assert.equal(formatBytes(null), '-');
  assert.equal(formatBytes(512), '512B');
  assert.equal(formatBytes(1536), '1.5KiB');
  assert.equal(formatBytes(200 * 1024 * 1024), '200MiB');
  const now = Date.parse('2025-01-02T00:00:00Z');
  assert.equal(formatAge('2025-01-01T23:59:15Z', now), '45s ago');
  assert.equal(formatAge('2025-01-01T23:57:00Z', now), '3m ago');
  assert.equal(formatAge('2025-01-01T21:00:00Z', now), '3h ago');
  assert.equal(formatAge('2024-12-28T00:00:00Z', now), '5d ago');
  assert.equal(formatAge('garbage', now), 'garbage');
  assert.equal(formatAge(null, now), '-');
});

test('errorLine is one line with the code and no stack', () => {
  assert.equal(errorLine(new ClientError(404, 'AETHER_ERR_FUNCTION_NOT_FOUND', 'no such function "x"')), 'error: AETHER_ERR_FUNCTION_NOT_FOUND: no such function "x"');
  assert.equal(errorLine(new AetherError('AETHER_ERR_VALIDATION', 'bad\nthing')), 'error: AETHER_ERR_VALIDATION: bad thing');
  assert.equal(errorLine(new Error('boom')), 'error: AETHER_ERR_INTERNAL: boom');
  assert.equal(errorLine(Object.assign(new Error('open x: no such file'), { code: 'ENOENT' })), 'error: ENOENT: open x: no such file');
});

const fnRec = (over: Partial<FunctionRecord>): FunctionRecord =>
  sampleFunction({ created_at: '2025-01-01T00:00:00Z', updated_at: '2025-01-01T00:00:00Z', ...over });

test('functions table', () => {
  const now = Date.parse('2025-01-01T00:02:00Z');
  const out = functionsTable([fnRec({}), fnRec({ id: 'fn-22', name: 'py', runtime: 'python', memory_mb: 1024, code_size: 2048 })], now);
  assert.deepEqual(out.split('\n'), [
    'NAME   ID     RUNTIME  MEMORY  SCALE  CODE    UPDATED',
    'hello  fn-1   node     128MB   0-10   -       2m ago',
    'py     fn-22  python   1024MB  0-10   2.0KiB  2m ago',
    '',
  ]);
});

test('invocations table', () => {
  const now = Date.parse('2025-01-01T00:00:10Z');
  const out = invocationsTable(
    [
      { id: 'inv-2', function_id: 'fn-1', status: 'error', status_code: 502, duration_ms: 7, cold_start: false, instance_id: null, started_at: '2025-01-01T00:00:05Z', error: 'upstream died' },
      { id: 'inv-1', function_id: 'fn-1', status: 'success', status_code: 200, duration_ms: 1234, cold_start: true, instance_id: 'i-1', started_at: '2025-01-01T00:00:00Z', error: null },
    ],
    now,
  );
  assert.deepEqual(out.split('\n'), [
    'ID     STATUS   CODE  DURATION  COLD  INSTANCE  STARTED  ERROR',
    'inv-2  error    502   7ms       no    -         5s ago   upstream died',
    'inv-1  success  200   1234ms    yes   i-1       10s ago',
    '',
  ]);
});
