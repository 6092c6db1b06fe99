import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ManualClock } from '../core/index.ts';
import { contractFakeBehavior, requestEndpoint, runtimeContract } from './contract.ts';
import { createFakeRuntime } from './fake.ts';
import type { InstanceSpec } from './types.ts';

runtimeContract('fake', async () => {
  const runtime = createFakeRuntime({ behavior: contractFakeBehavior });
  return { runtime, cleanup: () => runtime.close() };
});

const spec = (over: Partial<InstanceSpec> = {}): InstanceSpec => ({
  instanceId: 'i1', functionId: 'f1', functionName: 'fn', runtime: 'node', entrypoint: 'handler.js',
  codeDir: '/nonexistent', env: {}, port: 8080, memoryMb: 128, vcpu: 1, pidsMax: 32, ...over,
});

describe('fake runtime behaviours', () => {
  it('startupDelayMs and exitAfterMs follow the injected clock', async () => {
    const clock = new ManualClock();
    const rt = createFakeRuntime({ clock, behavior: () => ({ startupDelayMs: 1000, exitAfterMs: 5000 }) });
    const inst = await rt.create(spec());
    await inst.start();
    let ready = false;
    const p = inst.waitReady(60_000).then(() => (ready = true));
    await clock.advance(999);
    assert.equal(ready, false);
    assert.equal(inst.inspect().state, 'starting');
    await clock.advance(1);
    await p;
    assert.equal(inst.inspect().state, 'running');
    await clock.advance(5000);
    const exit = await inst.exited;
    assert.deepEqual(exit, { code: 0, signal: null });
    assert.equal(rt.instances.get('i1'), inst);
    await rt.close();
  });

  it('waitReady times out on the injected clock', async () => {
    const clock = new ManualClock();
    const rt = createFakeRuntime({ clock, behavior: () => ({ startupDelayMs: Infinity }) });
    const inst = await rt.create(spec());
    await inst.start();
    const p = assert.rejects(inst.waitReady(3000), /did not listen within 3000 ms/);
    await clock.advance(3000);
    await p;
    await rt.close();
  });

  it('a custom handler answers requests', async () => {
    const rt = createFakeRuntime({ behavior: () => ({ handler: (_req, res) => res.end('custom') }) });
    const inst = await rt.create(spec({ instanceId: 'c1' }));
    await inst.start();
    await inst.waitReady(5000);
    const res = await requestEndpoint(inst.endpoint);
    assert.equal(res.body, 'custom');
    await rt.close();
    assert.equal(inst.inspect().state, 'exited');
  });

  it('refuses a second live instance with the same id', async () => {
    const rt = createFakeRuntime();
    await rt.create(spec({ instanceId: 'dup' }));
    await assert.rejects(rt.create(spec({ instanceId: 'dup' })), /exists/);
    await rt.close();
  });
});
