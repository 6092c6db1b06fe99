/** `aether up` keeps functions, code and invocation records across a restart, and stops cleanly. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { api, startAether, zipFiles, type RunningPlatform } from './support/platform.ts';

const HANDLER = "require('http').createServer((q, s) => s.end('still here ' + q.url)).listen(Number(process.env.PORT));";

test('functions, code and invocation records survive a restart; SIGTERM exits 0 within 10 s', async () => {
  const first = await startAether();
  let second: RunningPlatform | undefined;
  try {
    const created = await api<{ id: string }>(first, 'POST', '/api/functions', { name: 'keeper', runtime: 'node', memory_mb: 256, env_vars: { A: 'b' } });
    assert.equal(created.status, 201);
    const up = await api<{ code_sha256: string }>(first, 'POST', '/api/functions/keeper/code', await zipFiles({ 'handler.js': HANDLER }));
    assert.equal(up.status, 200);
    const r1 = await fetch(`${first.url}/functions/keeper/x`);
    assert.equal(await r1.text(), 'still here /x');
    const before = await api<Record<string, unknown>>(first, 'GET', '/api/functions/keeper');
    // the record is written off the request path: wait until it is there
    for (let i = 0; i < 50 && (await api<unknown[]>(first, 'GET', '/api/functions/keeper/invocations')).body.length === 0; i++) await new Promise((r) => setTimeout(r, 100));

    const t0 = Date.now();
    const code = await first.stop();
    assert.equal(code, 0, first.output().slice(-2000));
    assert.ok(Date.now() - t0 < 10_000, 'clean shutdown within 10 s');

    second = await startAether({ dataDir: first.dataDir, token: first.token });
    const after = await api<Record<string, unknown>>(second, 'GET', '/api/functions/keeper');
    assert.equal(after.status, 200);
    assert.deepEqual(after.body, before.body);
    assert.equal(after.body['code_sha256'], up.body.code_sha256);
    const recs = await api<{ status: string }[]>(second, 'GET', '/api/functions/keeper/invocations');
    assert.ok(recs.body.length >= 1);
    assert.equal(recs.body[0]?.status, 'success');
    const r2 = await fetch(`${second.url}/functions/keeper/y`);
    assert.equal(r2.status, 200);
    assert.equal(await r2.text(), 'still here /y');
    assert.equal(r2.headers.get('x-aether-cold-start'), 'true');
    assert.equal(await second.stop(), 0);
  } finally {
    await first.kill();
    await second?.kill();
  }
});
