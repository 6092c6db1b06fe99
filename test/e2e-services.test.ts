import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { api, eventually, startAether } from './support/platform.ts';
import { busyboxImage, busyboxMissing } from './support/busybox.ts';
import { byHost, routerUrlOf } from './support/router.ts';
import type { ServiceView } from '../src/spec/index.ts';
import type { DeployStatus } from '../src/deploy/index.ts';

/**
 * Services end to end on `aether up`: a firework-format Git repo (file:// URL) with a tenant
 * override, an anti-affinity pair and health checks; each service is an ext4 image built by
 * `aether image build` from busybox's httpd, run as a container by the process sandbox (the same
 * image boots under qemu: test/vm-qemu.test.ts covers that path), routed by Host through the edge router.
 */
const skip =
  process.getuid?.() !== 0 ? 'needs root (service containers: loop devices, mounts)' : (busyboxMissing() ?? false);

function git(dir: string, ...args: string[]): void {
  execFileSync('git', ['-C', dir, '-c', 'user.email=t@example.test', '-c', 'user.name=t', ...args], { stdio: 'ignore' });
}

const svcYaml = (name: string, image: string, extra: string): string =>
  `name: ${name}\nimage: ${image}\nnode_type: general\nsandbox: process\nmemory_mb: 128\ncommand: [/bin/busybox, httpd, -f, -p, '8080', -h, /www]\nport_forwards: [{host_port: 18080, vm_port: 8080}]\n${extra}`;

test('services from a firework Git repo: placed, routed by Host, converged on commits, recreated, health-checked', { skip, timeout: 900_000 }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'aether-e2e-svc-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  // The image: busybox + a page.
  const { image } = busyboxImage(dir, 'hello from a service\n');
  // firework's tenant override names the tenant's image <dir>/<tenant>-<file>: its CI builds one per tenant.
  copyFileSync(image, join(dir, 'acme-web.ext4'));

  // The GitOps repo, in firework's layout.
  const repo = join(dir, 'repo');
  mkdirSync(join(repo, 'services'), { recursive: true });
  mkdirSync(join(repo, 'tenants', 'acme'), { recursive: true });
  writeFileSync(join(repo, 'defaults.yaml'), 'vcpus: 1\nhealth_check:\n  interval: 1s\n  timeout: 1s\n  retries: 2\n');
  writeFileSync(join(repo, 'services', 'web.yaml'), svcYaml('web', image, 'metadata: {host: web.test}\nanti_affinity_group: front\nhealth_check: {type: http, port: 8080, path: /}\nenv: {MOTTO: "any value: spaces, = and quotes \\" too"}\n'));
  writeFileSync(join(repo, 'services', 'api.yaml'), svcYaml('api', image, 'metadata: {host: api.test}\nanti_affinity_group: front\nlinks: [{service: web, env: WEB_URL, port: 8080}]\n'));
  writeFileSync(join(repo, 'tenants', 'acme', 'web.yaml'), 'metadata: {host: acme.test}\n');
  execFileSync('git', ['init', '-q', '-b', 'main', repo]);
  git(repo, 'add', '-A');
  git(repo, 'commit', '-qm', 'first');

  const p = await startAether({ args: ['--router-port', '0', '--source', `file://${repo}#main`, '--poll', '1s'] });
  t.after(() => p.stop());
  const routerUrl = await routerUrlOf(p);
  const services = async (): Promise<Map<string, ServiceView>> => new Map((await api<ServiceView[]>(p, 'GET', '/api/services')).body.map((s) => [s.name, s]));
  const allRunning = async (names: string[]): Promise<Map<string, ServiceView> | false> => {
    const s = await services();
    return names.every((n) => s.get(n)?.state === 'running') && s;
  };

  const first = await eventually(() => allRunning(['acme-web', 'api', 'web']), 120_000, 500).catch(async (err: unknown) => {
    throw new Error(`${String(err)}\nservices: ${JSON.stringify([...(await services()).values()])}\n${p.output().slice(-4000)}`);
  });
  for (const host of ['web.test', 'api.test', 'acme.test']) {
    const r = await byHost(routerUrl, host);
    assert.equal(r.status, 200, `${host}: ${r.text}`);
    assert.equal(r.text, 'hello from a service\n');
  }
  const unknown = await byHost(routerUrl, 'nothing.test');
  assert.equal(unknown.status, 404);
  const status = (await (await fetch(routerUrl + '/status')).json()) as { node: string; router_port: number; services: { service: string }[] };
  assert.deepEqual(status.services.map((s) => s.service).sort(), ['acme-web', 'api', 'web']);
  assert.equal(status.router_port, Number(new URL(routerUrl).port));

  // A commit that changes one service converges; the others keep their instances.
  writeFileSync(join(repo, 'services', 'api.yaml'), svcYaml('api', image, 'metadata: {host: api.test}\nanti_affinity_group: front\nenv: {VERSION: "2"}\n'));
  git(repo, 'commit', '-qam', 'api v2');
  const second = await eventually(async () => {
    const s = await allRunning(['acme-web', 'api', 'web']);
    return s && s.get('api')?.address !== first.get('api')?.address && s;
  }, 120_000, 500);
  assert.equal(second.get('web')?.address, first.get('web')?.address, 'web untouched');
  assert.equal(second.get('acme-web')?.address, first.get('acme-web')?.address, 'acme-web untouched');

  // A killed service VM is recreated although nothing changed in Git.
  const victim = (await api<{ instance_id: string }[]>(p, 'GET', '/api/services/web')).body as unknown as { address: string };
  const detail = (await (await fetch(routerUrl + '/status')).json()) as { services: { service: string; instance_id: string }[] };
  const webInstance = detail.services.find((s) => s.service === 'web')?.instance_id ?? '';
  assert.ok(webInstance);
  // The container's processes carry the instance id in their environment: kill its launcher's tree.
  execFileSync('sh', ['-c', `for p in $(grep -l "AETHER_INSTANCE_ID=${webInstance}" /proc/[0-9]*/environ 2>/dev/null | cut -d/ -f3); do kill -9 $p; done`]);
  await eventually(async () => {
    const s = await allRunning(['web']);
    return s && s.get('web')?.address !== victim.address && (s.get('web')?.restarts ?? 0) >= 1;
  }, 120_000, 500);
  assert.equal((await byHost(routerUrl, 'web.test')).status, 200);

  // An invalid commit is refused with file and field; everything keeps running.
  writeFileSync(join(repo, 'services', 'bad.yaml'), 'name: bad\nnode_type: general\n');
  writeFileSync(join(repo, 'services', 'lonely.yaml'), `name: lonely\nimage: ${image}\nnode_type: general\nlinks: [{service: ghost, env: G, port: 1}]\n`);
  git(repo, 'add', '-A');
  git(repo, 'commit', '-qm', 'broken');
  const refused = await eventually(async () => {
    const d = (await api<DeployStatus>(p, 'GET', '/api/deploy')).body;
    return !d.ok && d;
  }, 30_000, 500);
  assert.ok(refused.errors.some((e) => e.file === 'services/bad.yaml' && e.field === 'image'), JSON.stringify(refused.errors));
  assert.ok(refused.errors.some((e) => e.file === 'services/lonely.yaml' && e.field === 'links.0.service'), JSON.stringify(refused.errors));
  const still = await allRunning(['acme-web', 'api', 'web']);
  assert.ok(still, 'running services stay up');

  // A failing health check restarts its instance.
  git(repo, 'rm', '-q', 'services/bad.yaml', 'services/lonely.yaml');
  writeFileSync(join(repo, 'services', 'sick.yaml'), svcYaml('sick', image, 'health_check: {type: http, port: 8080, path: /missing}\n'));
  git(repo, 'add', '-A');
  git(repo, 'commit', '-qm', 'sick');
  await eventually(async () => ((await services()).get('sick')?.restarts ?? 0) >= 1, 180_000, 500);

  // Removing everything from Git is refused (never wipe on an empty input); removing one stops it.
  git(repo, 'rm', '-q', 'services/sick.yaml');
  git(repo, 'commit', '-qm', 'no sick');
  await eventually(async () => !(await services()).has('sick'), 60_000, 500);
  await p.stop();
  assert.equal(execFileSync('losetup', ['-a']).toString().includes(image), false, 'no loop device left on the image after the platform stops');
});
