// A service in a real QEMU microVM: the ext4 image of a small static HTTP server (busybox httpd)
// boots under aether-init as firework boots its images, passes its HTTP health check, is routed by
// Host through the edge router, and is stopped with the platform. Slow under TCG: one boot, long waits.
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { probeHost } from '../src/runtime/index.ts';
import type { ServiceView } from '../src/spec/index.ts';
import { api, eventually, startAether } from './support/platform.ts';
import { qemuProcsUnder } from './support/procs.ts';
import { busyboxImage, busyboxMissing } from './support/busybox.ts';
import { byHost, routerUrlOf } from './support/router.ts';

const host = await probeHost();
const qemu = host.sandboxes.find((s) => s.kind === 'qemu');
const skip = !qemu?.ok
  ? `qemu sandbox unavailable: ${qemu?.detail}`
  : !existsSync('/usr/bin/musl-gcc') && !process.env['AETHER_MUSL_GCC']
    ? 'musl-gcc not found (aether-init cannot be built)'
    : (busyboxMissing() ?? false);
/** One boot under TCG on a loaded 2-core host; the test never depends on it being fast. */
const BOOT_MS = 300_000;


test('a service boots its ext4 image in a qemu microVM, passes its health check and is routed by Host', { skip, timeout: 15 * 60_000 }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'aether-svc-qemu-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const { image } = busyboxImage(dir, 'hello from a microVM service\n');

  const specs = join(dir, 'specs');
  mkdirSync(join(specs, 'services'), { recursive: true });
  writeFileSync(
    join(specs, 'services', 'vmweb.yaml'),
    [
      'name: vmweb',
      `image: ${image}`,
      'node_type: general',
      'sandbox: qemu',
      'vcpus: 1',
      'memory_mb: 128',
      "command: [/bin/busybox, httpd, -f, -p, '8080', -h, /www]",
      'metadata: {host: vm.test}',
      'health_check: {type: http, port: 8080, path: /, interval: 2s, timeout: 2s, retries: 30}',
      '',
    ].join('\n'),
  );

  const p = await startAether({ args: ['--sandboxes', 'process,qemu', '--startup-timeout-ms', String(BOOT_MS), '--router-port', '0', '--source', specs, '--poll', '1s'] });
  let stopped = false;
  t.after(async () => {
    if (!stopped) await p.stop();
  });
  const routerUrl = await routerUrlOf(p);
  const view = async (): Promise<ServiceView | undefined> => (await api<ServiceView[]>(p, 'GET', '/api/services')).body.find((s) => s.name === 'vmweb');

  const running = await eventually(async () => {
    const v = await view();
    return v?.state === 'running' && v.health === 'healthy' && v;
  }, BOOT_MS + 60_000, 1000).catch(async (err: unknown) => {
    throw new Error(`${String(err)}\nview: ${JSON.stringify(await view())}\n${p.output().slice(-4000)}`);
  });
  assert.equal(running.node !== null, true);
  assert.equal(qemuProcsUnder(p.dataDir).length, 1, 'one VM runs the service');

  const r = await byHost(routerUrl, 'vm.test');
  assert.equal(r.status, 200, r.text);
  assert.equal(r.text, 'hello from a microVM service\n');

  const dataDir = p.dataDir;
  await p.stop();
  stopped = true;
  assert.deepEqual(qemuProcsUnder(dataDir), [], 'no VM outlives the platform');
});
