import { test } from 'node:test';
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { pino } from 'pino';
import { AetherError } from './errors.ts';
import type { Logger } from './log.ts';
import { clip, decodePathPart, guardHandler, installRejectionSafetyNet } from './http.ts';

function capture(): { log: Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const log: Logger = pino({ level: 'info' }, { write: (s: string) => void lines.push(JSON.parse(s) as Record<string, unknown>) });
  return { log, lines };
}

test('guardHandler: a throw or a rejection answers 500 with a request id, is logged, and the server goes on', async (t) => {
  const { log, lines } = capture();
  const server = createServer(
    guardHandler(log, 'test', (req, res) => {
      if (req.url === '/sync') throw new Error('secret detail /etc/x');
      if (req.url === '/async') return Promise.reject(new Error('secret async detail'));
      if (req.url === '/coded') throw new AetherError('AETHER_ERR_VALIDATION', 'bad input');
      res.end('fine');
    }),
  );
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  t.after(() => new Promise<void>((r) => server.close(() => r())));
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  for (const path of ['/sync', '/async']) {
    const r = await fetch(base + path);
    assert.equal(r.status, 500);
    const body = await r.text();
    assert.deepEqual(JSON.parse(body), { error: { code: 'AETHER_ERR_INTERNAL', message: 'internal error' } });
    const id = r.headers.get('x-aether-request-id');
    assert.match(id ?? '', /^req-/);
    const line = lines.find((l) => l['request_id'] === id);
    assert.ok(line, 'logged with the request id');
    assert.match(JSON.stringify(line), /secret/, 'the details are in the log only');
  }
  const coded = await fetch(base + '/coded');
  assert.equal(coded.status, 400);
  assert.equal(await (await fetch(base + '/ok')).text(), 'fine');
});

test('installRejectionSafetyNet logs an unhandled rejection instead of ending the process', () => {
  const { log, lines } = capture();
  // (node:test owns the real process's handler: a stand-in emitter plays the process here)
  const proc = new EventEmitter();
  const remove = installRejectionSafetyNet(log, proc);
  assert.equal(proc.listenerCount('unhandledRejection'), 1, 'with a listener node does not end the process');
  proc.emit('unhandledRejection', new Error('nobody handles me'), Promise.resolve());
  assert.ok(lines.some((l) => l['level'] === 50 && JSON.stringify(l).includes('nobody handles me')));
  remove();
  assert.equal(proc.listenerCount('unhandledRejection'), 0);
});

test('decodePathPart and clip', () => {
  assert.equal(decodePathPart('a%20b'), 'a b');
  assert.throws(() => decodePathPart('%E0%A4%A', 'name'), (e: unknown) => e instanceof AetherError && e.status === 400 && e.message === 'name: malformed percent-escape');
  assert.equal(clip('abc', 5), 'abc');
  assert.equal(clip('x'.repeat(2000)).length, 101);
});
