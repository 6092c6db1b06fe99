/**
 * QEMU microVMs outlive a restarting agent: after `kill -9` of `aether up` a service's VM keeps
 * running; the next `aether up` on the same data dir adopts it (the same instance and QEMU
 * process, the same start time, no restart counted, still routed, its output still reaching the
 * logs); and a VM the restarted agent no longer wants is stopped at start with nothing of it left
 * (no QEMU process, no instance dir, its forwarded port closed). A function's VM is adopted warm
 * by a quick restart, and stopped by an agent that came back after its lease expired (the cluster
 * wrote it off). Slow under TCG: one boot per test, long waits, no timing asserted.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { probeHost } from '../src/runtime/index.ts';
import { KEYS } from '../src/spec/index.ts';
import { createSqliteStore } from '../src/store/sqlite.ts';
import { api, eventually, startAether, zipFiles, type RunningPlatform } from './support/platform.ts';
import { qemuProcsUnder } from './support/procs.ts';
import { busyboxImage, busyboxMissing } from './support/busybox.ts';
import { byHost, logText, nodeStatus, routerUrlOf, services } from './support/router.ts';

const host = await probeHost();
const qemu = host.sandboxes.find((s) => s.kind === 'qemu');
const skip = !qemu?.ok
  ? `qemu sandbox unavailable: ${qemu?.detail}`
  : !existsSync('/usr/bin/musl-gcc') && !process.env['AETHER_MUSL_GCC']
    ? 'musl-gcc not found (aether-init cannot be built)'
    : (busyboxMissing() ?? false);
/** One boot under TCG on a loaded 2-core host; the test never depends on it being fast. */
const BOOT_MS = 300_000;

const lastTick = (text: string): number => Math.max(0, ...[...text.matchAll(/vmkeep tick (\d+)/g)].map((m) => Number(m[1])));

/** The VM's state record, as the runtime wrote it. */
function vmState(dataDir: string, instanceId: string): { qemu: { pid: number }; endpoint: { port: number } } {
  return JSON.parse(readFileSync(join(dataDir, 'runtime-qemu', 'instances', instanceId, 'state.json'), 'utf8')) as never;
}

function accepts(port: number): Promise<boolean> {
  return new Promise((res) => {
    const s = net.connect({ host: '127.0.0.1', port });
    s.once('connect', () => (s.destroy(), res(true)));
    s.once('error', () => res(false));
  });
}

test('kill -9 of aether up: a service VM lives on and is adopted by the restart; one no longer wanted is stopped with nothing left', { skip, timeout: 20 * 60_000 }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'aether-vm-adopt-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const { image } = busyboxImage(dir, 'hello from an adopted VM\n');
  const specs = join(dir, 'specs');
  mkdirSync(join(specs, 'services'), { recursive: true });
  writeFileSync(
    join(specs, 'services', 'vmkeep.yaml'),
    [
      'name: vmkeep',
      `image: ${image}`,
      'node_type: general',
      'sandbox: qemu',
      'vcpus: 1',
      'memory_mb: 128',
      // a numbered line every 500 ms, and a web server
      `command: [/bin/busybox, sh, -c, 'i=0; while :; do i=$((i+1)); echo "vmkeep tick $i"; /bin/busybox sleep 0.5; done & exec /bin/busybox httpd -f -p 8080 -h /www']`,
      'metadata: {host: vmkeep.test}',
      'health_check: {type: http, port: 8080, path: /, interval: 2s, timeout: 2s, retries: 30}',
      '',
    ].join('\n'),
  );

  const platforms: RunningPlatform[] = [];
  t.after(async () => {
    for (const p of platforms) await p.kill();
  });
  // The old statuses (restarts, start time) outlive a restart, but not the test.
  const env = { AETHER_LEASE_TTL_MS: '20000' };
  const args = ['--sandboxes', 'process,qemu', '--startup-timeout-ms', String(BOOT_MS), '--router-port', '0', '--source', specs, '--poll', '1s'];
  const first = await startAether({ args, env });
  platforms.push(first);
  const dataDir = first.dataDir;
  const router1 = await routerUrlOf(first);
  await eventually(async () => {
    const v = (await services(first)).get('vmkeep');
    return v?.state === 'running' && v.health === 'healthy';
  }, BOOT_MS + 60_000, 1000).catch(async (err: unknown) => {
    throw new Error(`${String(err)}\n${JSON.stringify((await services(first)).get('vmkeep'))}\n${first.output().slice(-4000)}`);
  });
  const before = (await nodeStatus(router1)).get('vmkeep');
  assert.ok(before?.instance_id);
  const id = before.instance_id;
  const vms = qemuProcsUnder(dataDir);
  assert.equal(vms.length, 1, 'one VM runs the service');
  const state = vmState(dataDir, id);
  assert.deepEqual(vms, [state.qemu.pid], 'its state record names its QEMU');
  assert.equal((await byHost(router1, 'vmkeep.test')).text, 'hello from an adopted VM\n');
  const ticksBefore = await eventually(async () => lastTick(await logText(first, 'vmkeep')) || undefined, 30_000, 500);

  // kill -9 of the platform (gateway, agent, controllers and router in one process)
  await first.kill({ keepSandboxes: true });
  await new Promise((r) => setTimeout(r, 1000));
  assert.deepEqual(qemuProcsUnder(dataDir), vms, 'the VM outlives its agent');

  const second = await startAether({ dataDir, token: first.token, args, env });
  platforms.push(second);
  const router2 = await routerUrlOf(second);
  const after = await eventually(async () => {
    const s = (await nodeStatus(router2)).get('vmkeep');
    return s?.state === 'running' && s;
  }, 120_000, 500).catch((err: unknown) => {
    throw new Error(`${String(err)}\n${second.output().slice(-6000)}`);
  });
  assert.equal(after.instance_id, id, `the same instance\n${second.output().slice(-6000)}`);
  assert.equal(after.started_at, before.started_at, 'the same start time');
  assert.equal(after.restarts, 0, 'no restart counted');
  assert.deepEqual(qemuProcsUnder(dataDir), vms, 'the same QEMU process');
  const routed = await byHost(router2, 'vmkeep.test');
  assert.deepEqual([routed.status, routed.text], [200, 'hello from an adopted VM\n'], 'still answering through the edge router');
  // its output keeps flowing into the new agent's logs (the guest's counter went on)
  await eventually(async () => lastTick(await logText(second, 'vmkeep')) > ticksBefore, 60_000, 500).catch(async (err: unknown) => {
    throw new Error(`${String(err)}: ticks before ${ticksBefore}\n${(await logText(second, 'vmkeep')).slice(-3000)}`);
  });
  assert.match(await logText(second, 'vmkeep'), /adopted by the restarted agent/);
  await eventually(async () => (await services(second)).get('vmkeep')?.health === 'healthy', 60_000, 500);
  assert.deepEqual(qemuProcsUnder(dataDir), vms, 'still the same QEMU after health checks');

  // Second case: kill -9 again; while no platform runs, the service leaves the source and the
  // node's assignment, so the restarted agent no longer wants the VM.
  await second.kill({ keepSandboxes: true });
  assert.deepEqual(qemuProcsUnder(dataDir), vms);
  rmSync(join(specs, 'services', 'vmkeep.yaml'));
  const store = createSqliteStore({ path: join(dataDir, 'store.db') });
  try {
    const assigned = await store.list(KEYS.assignments);
    assert.ok(assigned.kvs.length > 0, 'the node had an assignment');
    for (const kv of assigned.kvs) await store.delete(kv.key);
  } finally {
    await store.close();
  }

  const third = await startAether({ dataDir, token: first.token, args, env });
  platforms.push(third);
  // stopped at start (QMP quit, SIGKILL if need be), before the platform serves
  assert.deepEqual(qemuProcsUnder(dataDir), [], `no QEMU is left\n${third.output().slice(-4000)}`);
  assert.equal(existsSync(join(dataDir, 'runtime-qemu', 'instances', id)), false, 'its instance dir is removed');
  assert.deepEqual(readdirSync(join(dataDir, 'runtime-qemu', 'instances')), []);
  assert.equal(await accepts(state.endpoint.port), false, 'its forwarded port is closed');
  assert.equal((await nodeStatus(await routerUrlOf(third))).has('vmkeep'), false);
  assert.equal(await third.stop(), 0);
});

test('a function VM is adopted warm by a quick restart, and written off by one that comes back after the lease expired', { skip, timeout: 15 * 60_000 }, async (t) => {
  const platforms: RunningPlatform[] = [];
  t.after(async () => {
    for (const p of platforms) await p.kill();
  });
  // long enough to outlast a quick restart on a busy host, short enough to wait out
  const TTL_MS = 20_000;
  const env = { AETHER_LEASE_TTL_MS: String(TTL_MS) };
  const args = ['--sandboxes', 'process,qemu', '--startup-timeout-ms', String(BOOT_MS)];
  const first = await startAether({ args, env });
  platforms.push(first);
  const dataDir = first.dataDir;
  const handler = `let n = 0; require('http').createServer((q, s) => { n++; console.log('served #' + n); s.end(process.env.AETHER_INSTANCE_ID + ' ' + n); }).listen(Number(process.env.PORT));`;
  assert.equal((await api(first, 'POST', '/api/functions', { name: 'vmfn', runtime: 'node', sandbox: 'qemu', memory_mb: 160, timeout_ms: BOOT_MS, scale_down_after_s: 3600, scale_to_zero_after_s: 3600 })).status, 201);
  assert.equal((await api(first, 'POST', '/api/functions/vmfn/code', await zipFiles({ 'handler.js': handler }))).status, 200);
  const call = async (p: RunningPlatform): Promise<{ cold: string | null; id: string; n: number }> => {
    const r = await fetch(`${p.url}/functions/vmfn/`);
    const text = await r.text();
    assert.equal(r.status, 200, text);
    const [id = '', n = '0'] = text.split(' ');
    return { cold: r.headers.get('x-aether-cold-start'), id, n: Number(n) };
  };
  const cold = await call(first);
  assert.equal(cold.cold, 'true');
  const id = cold.id;
  const vms = qemuProcsUnder(dataDir);
  assert.equal(vms.length, 1);
  const state = vmState(dataDir, id);

  // within the lease: adopted, warm, the same program
  await first.kill({ keepSandboxes: true });
  assert.deepEqual(qemuProcsUnder(dataDir), vms, 'the VM outlives its agent');
  const second = await startAether({ dataDir, token: first.token, args, env });
  platforms.push(second);
  const warm = await call(second);
  assert.deepEqual([warm.id, warm.cold, warm.n], [id, 'false', 2], 'the same instance serves, no cold start, its counter went on');
  assert.deepEqual(qemuProcsUnder(dataDir), vms, 'the same QEMU process');
  await eventually(async () => (await (await fetch(`${second.url}/api/functions/vmfn/logs?tail=200`, { headers: { authorization: `Bearer ${second.token}` } })).text()).includes('served #2'), 30_000, 500);

  // back only after the agent's lease (and so the instance's registration) expired: written off
  await second.kill({ keepSandboxes: true });
  assert.deepEqual(qemuProcsUnder(dataDir), vms);
  await new Promise((r) => setTimeout(r, TTL_MS + 3000));
  const third = await startAether({ dataDir, token: first.token, args, env });
  platforms.push(third);
  assert.deepEqual(qemuProcsUnder(dataDir), [], `stopped at start\n${third.output().slice(-4000)}`);
  assert.deepEqual(readdirSync(join(dataDir, 'runtime-qemu', 'instances')), [], 'no instance dir left');
  assert.equal(await accepts(state.endpoint.port), false, 'its forwarded port is closed');
  assert.equal((await api<unknown[]>(third, 'GET', '/api/functions/vmfn/instances')).body.length, 0, 'no instance registered');
  assert.equal(await third.stop(), 0);
});
