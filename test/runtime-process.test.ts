import assert from 'node:assert/strict';
import { chmod, copyFile, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { silentLogger } from '../src/core/index.ts';
import { contractSpec, requestEndpoint, runtimeContract } from '../src/runtime/index.ts';
import { createProcessRuntime } from '../src/runtime/process/index.ts';
import { hostLinks } from '../src/runtime/process/veth.ts';
import { inTestNetns, sandboxNetwork } from './support/netns.ts';

const isRoot = process.getuid?.() === 0;

async function harness(isolation: 'namespaces' | 'none') {
  const dataDir = await mkdtemp(join(tmpdir(), `aether-rt-${isolation}-`));
  const runtime = createProcessRuntime({ dataDir, agentId: `contract-${isolation}-${process.pid}`, isolation, network: sandboxNetwork, logger: silentLogger() });
  return {
    runtime,
    // like the agent: code dirs live under the data dir
    codeRoot: join(dataDir, 'code'),
    async cleanup() {
      await runtime.close();
      await rm(dataDir, { recursive: true, force: true });
    },
  };
}

if (isRoot) runtimeContract('process (namespaces)', () => harness('namespaces'));
else describe('Runtime contract: process (namespaces)', () => it('needs root', { skip: 'not root: namespaces and cgroups need root' }, () => {}));

runtimeContract('process (none)', () => harness('none'));

describe('process runtime modes', () => {
  it('reports its isolation', { skip: isRoot ? false : 'not root' }, async () => {
    const a = await harness('namespaces');
    const b = await harness('none');
    assert.equal(a.runtime.isolation, 'namespaces+cgroups');
    assert.equal(a.runtime.kind, 'process');
    assert.equal(b.runtime.isolation, 'none');
    if (inTestNetns) {
      // the veth network: the endpoint is the sandbox's own address, no forwarder socket
      const dir = join(a.codeRoot, 'veth');
      await mkdir(dir, { recursive: true });
      await writeFile(join(dir, 'handler.js'), "require('http').createServer((q, s) => s.end('v')).listen(Number(process.env.PORT), '127.0.0.1');");
      const inst = await a.runtime.create(contractSpec({ instanceId: 'veth-1', artifact: { kind: 'code', dir, runtime: 'node', entrypoint: 'handler.js' }, listen: { port: 3000 }, resources: { memoryMb: 128, vcpu: 1, pidsMax: 64 } }));
      await inst.start();
      await inst.waitReady(15_000);
      const e = inst.endpoint;
      assert.equal(e.kind, 'tcp');
      assert.match(e.kind === 'tcp' ? e.host : '', /^10\.213\.\d+\.\d+$/);
      assert.equal(e.kind === 'tcp' ? e.port : 0, 3000);
      // a program that listens on loopback only is reached too (DNAT inside the sandbox)
      assert.equal((await requestEndpoint(e)).body, 'v');
      // its /30 is slot n of 10.213.0.0/16, its host side `ae<n>`
      const [, x, y] = (e.kind === 'tcp' ? e.host : '').split('.').slice(1).map(Number) as [number, number, number];
      const ifname = `ae${(x * 256 + y - 2) / 4}`;
      const link = hostLinks().find((l) => l.ifname === ifname);
      assert.ok(link?.alias.startsWith(`aether:contract-namespaces-${process.pid}:`), `the host side of its veth pair exists: ${JSON.stringify(hostLinks())}`);
      await inst.stop();
      assert.equal(hostLinks().find((l) => l.ifname === ifname), undefined, 'stop removes its veth pair');
    }
    await a.cleanup();
    await b.cleanup();
  });
});

describe('interpreter location', () => {
  // A clone under /tmp brings its own node there, and /tmp is replaced by a private tmpfs.
  it('runs a node that lives under a hidden dir (/tmp)', { skip: isRoot ? false : 'not root' }, async () => {
    const binDir = await mkdtemp(join(tmpdir(), 'aether-nodebin-'));
    await chmod(binDir, 0o755);
    const nodeBin = join(binDir, 'node');
    await copyFile(process.execPath, nodeBin);
    await chmod(nodeBin, 0o755);
    const dataDir = await mkdtemp(join(tmpdir(), 'aether-rt-bin-'));
    const codeDir = join(dataDir, 'code', 'x');
    await mkdir(codeDir, { recursive: true });
    await writeFile(join(codeDir, 'handler.js'), "require('http').createServer((q, s) => s.end(process.execPath)).listen(Number(process.env.PORT));");
    const runtime = createProcessRuntime({ dataDir, agentId: `bin-${process.pid}`, isolation: 'namespaces', network: sandboxNetwork, logger: silentLogger(), nodeBin });
    try {
      const inst = await runtime.create(contractSpec({ instanceId: 'inst-bin', artifact: { kind: 'code', dir: codeDir, runtime: 'node', entrypoint: 'handler.js' }, listen: { port: 3000 }, resources: { memoryMb: 128, vcpu: 1, pidsMax: 64 } }));
      await inst.start();
      await inst.waitReady(15_000);
      const r = await requestEndpoint(inst.endpoint, { path: '/' });
      assert.equal(r.status, 200);
      await inst.stop();
    } finally {
      await runtime.close();
      await rm(dataDir, { recursive: true, force: true });
      await rm(binDir, { recursive: true, force: true });
    }
  });
});
