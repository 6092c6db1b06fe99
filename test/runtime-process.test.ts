import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { silentLogger } from '../src/core/index.ts';
import { createProcessRuntime, runtimeContract } from '../src/runtime/index.ts';

const isRoot = process.getuid?.() === 0;

async function harness(isolation: 'namespaces' | 'none') {
  const dataDir = await mkdtemp(join(tmpdir(), `aether-rt-${isolation}-`));
  const runtime = createProcessRuntime({ dataDir, agentId: `contract-${isolation}-${process.pid}`, isolation, logger: silentLogger() });
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
    await a.cleanup();
    await b.cleanup();
  });
});
