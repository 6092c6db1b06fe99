/**
 * Service instances outlive a restarting agent: after `kill -9` of `aether up` the service's
 * container keeps running; the next `aether up` on the same data dir adopts it (same host
 * processes, same start time, no restart counted, still answering through the edge router, its
 * output still reaching the logs API and `aether svc logs`), and stops a service that was removed
 * from the spec source while no platform ran. Needs root (service containers: loop devices, mounts).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AETHER_BIN, eventually, startAether, type RunningPlatform } from './support/platform.ts';
import { busyboxMissing, busyboxRoot } from './support/busybox.ts';
import { byHost, logText, nodeStatus, routerUrlOf, services } from './support/router.ts';

const skip = process.getuid?.() !== 0 ? 'needs root (service containers: namespaces, mounts)' : (busyboxMissing() ?? false);

/** A service that prints a numbered line every 200 ms and serves /www on 8080 (busybox only). */
const svcYaml = (name: string, root: string): string =>
  [
    `name: ${name}`,
    `image: ${root}`,
    'node_type: general',
    'sandbox: process',
    'memory_mb: 64',
    `command: [/bin/busybox, sh, -c, 'i=0; while :; do i=$((i+1)); echo "${name} tick $i"; /bin/busybox sleep 0.2; done & exec /bin/busybox httpd -f -p 8080 -h /www']`,
    'port_forwards: [{host_port: 18080, vm_port: 8080}]',
    `metadata: {host: ${name}.test}`,
    'health_check: {type: http, port: 8080, path: /, interval: 1s, timeout: 1s, retries: 2}',
    '',
  ].join('\n');

/**
 * Host pids of the instance's processes (their environment names the instance); `only`: those
 * whose argv starts so (the program, httpd, not the `sleep`s its shell keeps starting).
 */
function hostPids(instanceId: string, only?: string): number[] {
  const out: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      if (!readFileSync(`/proc/${name}/environ`, 'latin1').split('\0').includes(`AETHER_INSTANCE_ID=${instanceId}`)) continue;
      if (only === undefined || readFileSync(`/proc/${name}/cmdline`, 'latin1').startsWith(only)) out.push(Number(name));
    } catch {
      // gone
    }
  }
  return out.sort((a, b) => a - b);
}

const HTTPD = '/bin/busybox\0httpd\0';

const lastTick = (text: string, name: string): number => Math.max(0, ...[...text.matchAll(new RegExp(`${name} tick (\\d+)`, 'g'))].map((m) => Number(m[1])));

test('kill -9 of aether up: service instances live on and are adopted by the restart; a service removed meanwhile is stopped', { skip, timeout: 300_000 }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'aether-svc-adopt-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const root = busyboxRoot(dir, 'hello from a service\n');
  const specs = join(dir, 'specs');
  mkdirSync(join(specs, 'services'), { recursive: true });
  for (const name of ['keep', 'gone']) writeFileSync(join(specs, 'services', `${name}.yaml`), svcYaml(name, root));

  const platforms: RunningPlatform[] = [];
  t.after(async () => {
    for (const p of platforms) await p.kill();
  });
  // Leases outlive the restart (the old statuses carry on) but not the test: the restarted
  // deployer leads (and drops the removed service) once the dead one's lease is gone.
  const env = { AETHER_LEASE_TTL_MS: '20000' };
  const args = ['--router-port', '0', '--source', specs, '--poll', '1s'];
  const first = await startAether({ args, env });
  platforms.push(first);
  const router1 = await routerUrlOf(first);
  await eventually(async () => {
    const s = await services(first);
    return ['keep', 'gone'].every((n) => s.get(n)?.state === 'running' && s.get(n)?.health === 'healthy');
  }, 120_000, 500).catch(async (err: unknown) => {
    throw new Error(`${String(err)}\n${JSON.stringify([...(await services(first)).values()])}\n${first.output().slice(-4000)}`);
  });
  const before = await nodeStatus(router1);
  const keep = before.get('keep');
  const gone = before.get('gone');
  assert.ok(keep?.instance_id && gone?.instance_id);
  const keepPids = hostPids(keep.instance_id, HTTPD);
  const gonePids = hostPids(gone.instance_id, HTTPD);
  assert.ok(keepPids.length === 1 && gonePids.length === 1, 'the programs run on the host');
  assert.equal((await byHost(router1, 'keep.test')).text, 'hello from a service\n');
  const ticksBefore = lastTick(await logText(first, 'keep'), 'keep');
  assert.ok(ticksBefore > 0, 'its output reaches the logs');

  // kill -9 of the platform (gateway, agent, controller and router in one process)
  await first.kill({ keepSandboxes: true });
  await new Promise((r) => setTimeout(r, 500));
  assert.deepEqual(hostPids(keep.instance_id, HTTPD), keepPids, 'the service outlives its agent');
  assert.deepEqual(hostPids(gone.instance_id, HTTPD), gonePids);
  // removed from the source while no platform runs
  rmSync(join(specs, 'services', 'gone.yaml'));

  const second = await startAether({ dataDir: first.dataDir, token: first.token, args, env });
  platforms.push(second);
  const router2 = await routerUrlOf(second);
  const after = await eventually(async () => {
    const s = await nodeStatus(router2);
    return s.get('keep')?.state === 'running' && s;
  }, 60_000, 200);
  assert.equal(after.get('keep')?.instance_id, keep.instance_id, `the same instance\n${second.output().slice(-6000)}`);
  assert.equal(after.get('keep')?.started_at, keep.started_at, 'the same start time');
  assert.equal(after.get('keep')?.restarts, 0, 'no restart counted');
  assert.deepEqual(hostPids(keep.instance_id, HTTPD), keepPids, 'the same host processes');
  assert.match(second.output(), /edge router at/);
  const routed = await byHost(router2, 'keep.test');
  assert.deepEqual([routed.status, routed.text], [200, 'hello from a service\n'], 'still answering through the edge router');
  // its output keeps flowing into the new agent's logs (the program's counter went on)
  await eventually(async () => lastTick(await logText(second, 'keep'), 'keep') > ticksBefore, 15_000, 200);
  const viaCli = execFileSync(process.execPath, [AETHER_BIN, '--url', second.url, '--token', second.token, 'svc', 'logs', 'keep', '--tail', '50'], { encoding: 'utf8', timeout: 30_000 });
  assert.match(viaCli, /keep tick \d+/);
  assert.match(await logText(second, 'keep'), /adopted by the restarted agent/);

  // the removed one is stopped: nothing of it runs, it is no longer reported
  // (the node's router drops it from its own watch, a moment after the catalog: waited for too)
  await eventually(async () => hostPids(gone.instance_id ?? '').length === 0 && !(await services(second)).has('gone') && !(await nodeStatus(router2)).has('gone'), 90_000, 200).catch(async (err: unknown) => {
    throw new Error(`${String(err)}: pids ${JSON.stringify(hostPids(gone.instance_id ?? ''))}, ${JSON.stringify((await services(second)).get('gone'))}, router ${JSON.stringify((await nodeStatus(router2)).get('gone'))}\n${second.output().slice(-5000)}`);
  });
  // health checks resumed on the adopted one (a check result is reported again)
  await eventually(async () => (await services(second)).get('keep')?.health === 'healthy', 15_000, 200);
  assert.deepEqual(hostPids(keep.instance_id, HTTPD), keepPids, 'still the same processes after health checks');

  assert.equal(await second.stop(), 0);
  assert.deepEqual(hostPids(keep.instance_id), [], 'a clean stop stops it');
});
