import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ManualClock } from '../../core/index.ts';
import { contractFakeBehavior, contractSpec, requestEndpoint, runtimeContract } from '../contract.ts';
import { createFakeRuntime } from './fake.ts';
import type { InstanceSpec } from '../types.ts';

runtimeContract('fake', async () => {
  const runtime = createFakeRuntime({ behavior: contractFakeBehavior });
  return { runtime, cleanup: () => runtime.close() };
});

const spec = (over: Partial<InstanceSpec> = {}): InstanceSpec => contractSpec({ instanceId: 'i1', ...over });

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

  it('output, print and crash: the program side under the test\'s control', async () => {
    const rt = createFakeRuntime({ behavior: () => ({ output: ['booting'] }) });
    const inst = await rt.create(spec({ instanceId: 'p1' }));
    const lines: string[] = [];
    inst.onLog((l) => lines.push(`${l.stream}:${l.text}`));
    assert.throws(() => inst.print('too early'), /not running/);
    await inst.start();
    assert.deepEqual(lines, ['system:starting handler.js (fake)', 'stdout:booting']);
    await inst.waitReady(5000);
    inst.print('working');
    inst.print('oops', 'stderr');
    inst.crash({ code: 137, reason: 'killed by the memory limit (oom)' });
    assert.deepEqual(await inst.exited, { code: 137, signal: null, reason: 'killed by the memory limit (oom)' });
    assert.equal(inst.inspect().state, 'exited');
    assert.deepEqual(lines.slice(3), ['stdout:working', 'stderr:oops', 'system:exited (code 137, signal null)']);
    assert.equal(inst.stopCalls, 0);
    await rt.close();
    assert.equal(inst.stopCalls, 1);
  });

  it('a failing start prints its output, then its error, and waitReady carries both', async () => {
    const rt = createFakeRuntime({ behavior: () => ({ output: ['loading config'], failStart: 'Error: cannot find module x' }) });
    const inst = await rt.create(spec({ instanceId: 'f1' }));
    await inst.start();
    await assert.rejects(inst.waitReady(5000), /exited \(code 1, signal null\) before listening; last output:\nloading config\nError: cannot find module x$/);
    await rt.close();
  });

  it('startError makes start() reject with nothing launched', async () => {
    const rt = createFakeRuntime({ behavior: () => ({ startError: 'sandbox setup failed' }) });
    const inst = await rt.create(spec({ instanceId: 's1' }));
    await assert.rejects(inst.start(), /sandbox setup failed/);
    assert.deepEqual(inst.inspect(), { state: 'created', pid: undefined, exit: undefined });
    await inst.stop();
    assert.equal(inst.inspect().exit?.reason, 'never started');
    await rt.close();
  });

  it('listenNow ends a start that would never finish; the instant default needs no clock', async () => {
    const clock = new ManualClock();
    const rt = createFakeRuntime({ clock, behavior: (s) => (s.instanceId === 'slow' ? { startupDelayMs: Infinity } : {}) });
    const quick = await rt.create(spec({ instanceId: 'quick' }));
    await quick.start();
    await quick.waitReady(1000);
    const slow = await rt.create(spec({ instanceId: 'slow' }));
    await slow.start();
    let ready = false;
    const p = slow.waitReady(60_000).then(() => (ready = true));
    await new Promise((r) => setImmediate(r));
    assert.equal(ready, false);
    rt.instances.get('slow')?.listenNow();
    await p;
    assert.equal((await requestEndpoint(slow.endpoint)).status, 200);
    assert.deepEqual([...rt.instances.keys()], ['quick', 'slow']);
    await rt.close();
  });

  it('teardown holds stop() after the program has exited', async () => {
    let release!: () => void;
    const teardown = new Promise<void>((r) => (release = r));
    const rt = createFakeRuntime({ behavior: () => ({ teardown }) });
    const inst = await rt.create(spec({ instanceId: 't1' }));
    await inst.start();
    await inst.waitReady(5000);
    let stopped = false;
    const stopping = inst.stop(0).then(() => (stopped = true));
    assert.deepEqual(await inst.exited, { code: null, signal: 'SIGTERM' });
    await new Promise((r) => setImmediate(r));
    assert.equal(stopped, false);
    release();
    await stopping;
    assert.equal(inst.stopCalls, 1);
    await rt.close();
  });

  it('refuses a second live instance with the same id', async () => {
    const rt = createFakeRuntime();
    await rt.create(spec({ instanceId: 'dup' }));
    await assert.rejects(rt.create(spec({ instanceId: 'dup' })), /exists/);
    await rt.close();
  });
});
