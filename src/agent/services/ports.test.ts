import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type AddressInfo, type Server } from 'node:net';
import { connect } from 'node:net';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Endpoint } from '../../spec/index.ts';
import { PortPublisher } from './ports.ts';
import { publishedPorts } from './node.ts';
import { enrich, parseRepo } from '../../deploy/index.ts';
import { freePort } from '../../core/index.ts';

async function echo(t: TestContext, name: string, listen: number | string): Promise<Server> {
  const server = createServer((s) => s.on('data', (d: Buffer) => s.write(`${name}:${d.toString()}`)));
  await new Promise<void>((r) => server.listen(listen as number, '127.0.0.1', () => r()));
  t.after(() => new Promise<void>((r) => server.close(() => r())));
  return server;
}

/** Sends `msg` to 127.0.0.1:port, returns what comes back before the peer closes (or '' on refusal/reset). */
function talk(port: number, msg: string): Promise<string> {
  return new Promise((resolve) => {
    const s = connect({ host: '127.0.0.1', port });
    let got = '';
    s.on('connect', () => s.write(msg));
    s.on('data', (d: Buffer) => {
      got += d.toString();
      s.end();
    });
    s.on('close', () => resolve(got));
    s.on('error', () => resolve(got));
  });
}

test('port forwards: a host port pipes to the current instance, survives its replacement, closes when unassigned', async (t) => {
  const a = await echo(t, 'a', 0);
  const b = await echo(t, 'b', 0);
  const tcp = (s: Server): Endpoint => ({ kind: 'tcp', host: '127.0.0.1', port: (s.address() as AddressInfo).port });
  let current: Endpoint | undefined = tcp(a);
  const pub = new PortPublisher({ host: '127.0.0.1', endpointOf: (svc) => (svc === 'web' ? current : undefined) });
  t.after(() => pub.close());
  const port = await freePort();
  await pub.sync([{ service: 'web', host_port: port, vm_port: 8080 }]);
  assert.deepEqual(pub.published(), [{ service: 'web', host_port: port, vm_port: 8080 }]);
  assert.equal(await talk(port, 'hi'), 'a:hi');
  current = tcp(b); // the instance was replaced: same host port, new instance
  assert.equal(await talk(port, 'hi'), 'b:hi');
  current = undefined; // no instance right now: the connection is closed, nothing hangs
  assert.equal(await talk(port, 'hi'), '');
  await pub.sync([]);
  assert.deepEqual(pub.published(), []);
  assert.equal(await talk(port, 'hi'), '', 'unpublished');
});

test('port forwards: a unix endpoint with a preamble is reached through its plain twin; a busy port is reported, not fatal', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'aether-ports-test-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const raw = createServer((s) => s.on('data', (d: Buffer) => s.write(`raw:${d.toString()}`)));
  await new Promise<void>((r) => raw.listen(join(dir, 'sock.raw'), () => r()));
  t.after(() => new Promise<void>((r) => raw.close(() => r())));
  const busy = await echo(t, 'other', 0);
  const warnings: string[] = [];
  const logger = { warn: (_o: unknown, m: string) => warnings.push(m), info: () => undefined, debug: () => undefined, error: () => undefined } as never;
  const pub = new PortPublisher({ host: '127.0.0.1', endpointOf: () => ({ kind: 'unix', path: join(dir, 'sock'), preamble: true }), logger });
  t.after(() => pub.close());
  const port = await freePort();
  const taken = (busy.address() as AddressInfo).port;
  await pub.sync([{ service: 'web', host_port: port, vm_port: 80 }, { service: 'api', host_port: taken, vm_port: 80 }]);
  await pub.sync([{ service: 'web', host_port: port, vm_port: 80 }, { service: 'api', host_port: taken, vm_port: 80 }]);
  assert.deepEqual(pub.published().map((p) => p.service), ['web']);
  assert.deepEqual(warnings, ['could not publish a port forward'], 'said once');
  assert.equal(await talk(port, 'x'), 'raw:x');
});

test('port forwards: only the port the instance listens on is published', () => {
  const { services } = enrich(
    parseRepo([
      { path: 'services/a.yaml', text: 'name: a\nimage: i\nnode_type: t\nport_forwards: [{host_port: 81, vm_port: 8080}, {host_port: 82, vm_port: 9090}]\n' },
      { path: 'services/b.yaml', text: 'name: b\nimage: i\nnode_type: t\n' },
    ]),
  );
  assert.deepEqual(publishedPorts(services), [{ service: 'a', host_port: 81, vm_port: 8080 }]);
});
