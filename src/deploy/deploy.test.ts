import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, mkdir, writeFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { enrich, formatDuration, parseDuration, parseNodeConfig, parseRepo, planDeploy, readSpecFiles, renderNodeConfig, serviceConfigKey, type RepoFile } from './index.ts';

const f = (path: string, text: string): RepoFile => ({ path, text });

const repo = [
  f('defaults.yaml', 'vcpus: 2\nmemory_mb: 512\nhealth_check:\n  interval: 15s\n  retries: 5\n'),
  f('services/web.yaml', 'name: web\nimage: /images/web-rootfs.ext4\nnode_type: general\nnetwork: true\nport_forwards: [{host_port: 8081, vm_port: 8080}]\nhealth_check: {type: http, port: 8080, path: /healthz}\nenv: {GREETING: "hello world", EMPTY: "", N: 3}\nlinks: [{service: api, env: API_URL, port: 9000}]\nmetadata: {host: web.example.test}\n'),
  f('services/api.yml', 'name: api\nimage: /images/api-rootfs.ext4\nnode_type: general\nvcpus: 1\n'),
  f('services/README.md', 'not yaml: ignored'),
  f('tenants/acme/web.yaml', 'vcpus: 4\nenv: {GREETING: hi}\nmetadata: {tenant: acme}\n'),
  f('tenants/acme/cache.yaml', 'node_type: general\nnetwork: true\nlinks: [{service: api, env: X, port: 1}]\n'),
  f('tenants/acme/ignored.yaml', 'vcpus: 8\n'),
  f('tenants/acme/api.yaml', 'memory_mb: 128\n'),
];

test('durations are Go strings; zero or empty is unset', () => {
  assert.equal(parseDuration('10s'), 10_000);
  assert.equal(parseDuration('1m30s'), 90_000);
  assert.equal(parseDuration('250ms'), 250);
  assert.equal(parseDuration(''), 0);
  assert.equal(parseDuration('0'), 0);
  assert.equal(parseDuration('ten seconds'), null);
  assert.equal(parseDuration('10'), null);
  assert.equal(formatDuration(90_000), '1m30s');
  assert.equal(formatDuration(250), '250ms');
});

test('firework layout: defaults -> services -> fallbacks, tenants in override and standalone mode', () => {
  const { services, errors, warnings } = enrich(parseRepo(repo));
  assert.deepEqual(errors, []);
  assert.deepEqual(warnings, []);
  const by = new Map(services.map((s) => [s.name, s]));
  assert.deepEqual([...by.keys()], ['acme-api', 'acme-cache', 'acme-web', 'api', 'web']);
  const web = by.get('web');
  assert.equal(web?.vcpus, 2, 'defaults.yaml vcpus');
  assert.equal(web?.memory_mb, 512);
  assert.deepEqual(web?.env, { GREETING: 'hello world', EMPTY: '', N: '3' }, 'env values keep spaces; scalars become strings');
  assert.deepEqual(web?.health_check, { type: 'http', port: 8080, path: '/healthz', target: null, interval_ms: 15_000, timeout_ms: 5_000, retries: 5 });
  assert.equal(by.get('api')?.vcpus, 1, 'the service wins over defaults');
  // override mode
  const aw = by.get('acme-web');
  assert.equal(aw?.image, '/images/acme-web-rootfs.ext4');
  assert.equal(aw?.vcpus, 4);
  assert.deepEqual(aw?.env, { GREETING: 'hi', EMPTY: '', N: '3' }, 'env merged, tenant wins');
  assert.deepEqual(aw?.metadata, { host: 'web.example.test', tenant: 'acme' });
  assert.deepEqual(aw?.links.map((l) => l.service), ['acme-api'], 'links rewritten into the tenant');
  assert.equal(aw?.tenant, 'acme');
  // standalone mode
  const ac = by.get('acme-cache');
  assert.equal(ac?.image, '/var/lib/images/acme-cache-rootfs.ext4');
  assert.equal(ac?.memory_mb, 512);
});

test('a link to a service that is not deployed is a validation error naming file and field', () => {
  // Without the tenant's api, acme-web's rewritten link points nowhere: reported, not a crash.
  const broken = enrich(parseRepo(repo.filter((x) => x.path !== 'tenants/acme/api.yaml')));
  assert.deepEqual(broken.errors.map((e) => `${e.file} ${e.field} ${e.message}`), [
    'tenants/acme/cache.yaml links.0.service links to "acme-api", which is not deployed',
    'tenants/acme/web.yaml links.0.service links to "acme-api", which is not deployed',
  ]);
  const bad = enrich(parseRepo([f('services/a.yaml', 'name: a\nimage: i\nnode_type: t\nlinks: [{service: ghost, env: G, port: 80}]\n')]));
  assert.deepEqual(bad.errors, [{ file: 'services/a.yaml', field: 'links.0.service', message: 'links to "ghost", which is not deployed' }]);
});

test('validation errors are aggregated across files, each naming the file and the field', () => {
  const { errors } = enrich(
    parseRepo([
      f('services/a.yaml', 'name: a\nnode_type: t\n'),
      f('services/b.yaml', 'name: b\nimage: i\nnode_type: t\nvcpus: two\n'),
      f('services/c.yaml', 'name: c\nimage: i\nnode_type: t\nhealth_check: {type: exec, port: 1}\n'),
      f('services/d.yaml', 'name: a\nimage: i\nnode_type: t\n'),
      f('services/e.yaml', 'name: [oops\n'),
      f('services/f.yaml', 'name: f\nimage: i\nnode_type: t\nhealth_check: {port: 80, interval: soon}\n'),
    ]),
  );
  const got = errors.map((e) => `${e.file} ${e.field}`);
  assert.ok(got.includes('services/a.yaml image'), got.join(', '));
  assert.ok(got.includes('services/b.yaml vcpus'));
  assert.ok(got.includes('services/c.yaml health_check.type'));
  assert.ok(got.includes('services/d.yaml name'), 'duplicate name');
  assert.ok(got.includes('services/e.yaml (yaml)'));
  assert.ok(got.includes('services/f.yaml health_check.interval'));
});

test('config key: image/env/resources recreate, health check and metadata do not', () => {
  const [web] = enrich(parseRepo([repo[1] as RepoFile, repo[2] as RepoFile])).services.filter((s) => s.name === 'web');
  assert.ok(web);
  const key = serviceConfigKey(web);
  assert.equal(serviceConfigKey({ ...web, metadata: { x: 'y' }, health_check: null }), key);
  assert.notEqual(serviceConfigKey({ ...web, image: 'other' }), key);
  assert.notEqual(serviceConfigKey({ ...web, env: { ...web.env, GREETING: 'x' } }), key);
  assert.notEqual(serviceConfigKey({ ...web, memory_mb: 1 }), key);
});

test('nodes/<node>.yaml round-trips, and a firework-written file parses', () => {
  const { services } = enrich(parseRepo(repo));
  const text = renderNodeConfig({ node: 'n1', host_ip: '10.0.0.2', services });
  const back = parseNodeConfig(text);
  assert.equal(back.node, 'n1');
  assert.equal(back.host_ip, '10.0.0.2');
  assert.deepEqual(back.services.map(({ file: _f, ...s }) => s), services.map(({ file: _f, ...s }) => s));
  const firework = parseNodeConfig(
    'node: general\nservices:\n  - name: kibana\n    image: /var/lib/images/kibana.ext4\n    kernel: /var/lib/images/vmlinux-5.10\n    vcpus: 1\n    memory_mb: 512\n    kernel_args: console=ttyS0\n    network: {interface: tap-kibana, guest_ip: 172.16.0.2}\n    health_check: {type: http, port: 5601, path: /api/status, interval: 10s, timeout: 5s, retries: 3}\n',
  );
  assert.equal(firework.services[0]?.network, true);
  assert.equal(firework.services[0]?.health_check?.interval_ms, 10_000);
  assert.throws(() => parseNodeConfig('node: x\nservices: [{name: a}]\n', 'nodes/x.yaml'), /nodes\/x\.yaml: services\.0\.image/);
});

const nodes = [
  { name: 'n1', node_type: 'general', capacity: { vcpus: 16, memory_mb: 8192 } },
  { name: 'n2', node_type: 'general', capacity: { vcpus: 16, memory_mb: 8192 } },
];

test('plan: first deploy starts everything; a change to one service touches only it', () => {
  const first = planDeploy(repo, nodes, {});
  assert.equal(first.ok, true);
  assert.deepEqual(first.changes.map((c) => c.kind), ['start', 'start', 'start', 'start', 'start']);
  const changed = repo.map((x) => (x.path === 'services/api.yml' ? f(x.path, x.text + 'env: {V: "2"}\n') : x));
  const second = planDeploy(changed, nodes, first.assignments);
  // acme-api overrides api, so it inherits the env change; nothing else is touched.
  assert.deepEqual(second.changes.map((c) => [c.kind, c.service]), [['update', 'acme-api'], ['update', 'api']]);
  const same = planDeploy(repo, nodes, first.assignments);
  assert.deepEqual(same.changes, []);
});

test('plan: an invalid commit, an empty repo or no live nodes change nothing', () => {
  const first = planDeploy(repo, nodes, {});
  const invalid = planDeploy([...repo, f('services/bad.yaml', 'name: bad\n')], nodes, first.assignments);
  assert.equal(invalid.ok, false);
  assert.equal(invalid.assignments, first.assignments);
  assert.ok(invalid.errors.some((e) => e.file === 'services/bad.yaml' && e.field === 'image'));
  const empty = planDeploy([], nodes, first.assignments);
  assert.equal(empty.ok, false);
  assert.equal(empty.assignments, first.assignments);
  const noNodes = planDeploy(repo, [], first.assignments);
  assert.equal(noNodes.assignments, first.assignments, 'a lost node count never wipes the placement');
});

test('plan: a node that goes away has its services moved, with the reason', () => {
  const first = planDeploy(repo, nodes, {});
  const gone = Object.keys(first.assignments)[0] ?? '';
  const next = planDeploy(repo, nodes.filter((n) => n.name !== gone), first.assignments);
  assert.ok(next.changes.length > 0);
  for (const c of next.changes) {
    assert.equal(c.kind, 'move');
    assert.match(c.why, new RegExp(`node ${gone} is gone`));
  }
});

test('a directory in firework layout is read (yaml and yml, tenants), other files skipped', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'aether-specs-test-'));
  try {
    await mkdir(join(dir, 'services'));
    await mkdir(join(dir, 'tenants', 'acme'), { recursive: true });
    await writeFile(join(dir, 'defaults.yaml'), 'vcpus: 1\n');
    await writeFile(join(dir, 'services', 'a.yml'), 'name: a\n');
    await writeFile(join(dir, 'services', 'notes.txt'), 'x');
    await writeFile(join(dir, 'tenants', 'acme', 'a.yaml'), 'vcpus: 2\n');
    const files = await readSpecFiles(dir);
    assert.deepEqual(files.map((x) => x.path).sort(), ['defaults.yaml', 'services/a.yml', 'tenants/acme/a.yaml']);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('a spec source that is not a directory is refused as such, not planned as an empty repo', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'aether-specs-test-'));
  try {
    await assert.rejects(readSpecFiles(join(dir, 'nope')), (err: Error & { code?: string }) => err.code === 'AETHER_ERR_VALIDATION' && /nope is not a directory/.test(err.message));
    await writeFile(join(dir, 'file'), 'x');
    await assert.rejects(readSpecFiles(join(dir, 'file')), /is not a directory/);
    // An existing, empty directory is read (the plan then says "no services found").
    assert.deepEqual(await readSpecFiles(dir), []);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('plan: links resolve to the target node\'s address and published port, same node and cross node', () => {
  const files = [
    f('services/web.yaml', 'name: web\nimage: i\nnode_type: general\nvcpus: 4\nanti_affinity_group: g\nport_forwards: [{host_port: 18080, vm_port: 8080}]\n'),
    f('services/db.yaml', 'name: db\nimage: i\nnode_type: general\nvcpus: 4\nanti_affinity_group: g\nport_forwards: [{host_port: 15432, vm_port: 5432}]\n'),
    f(
      'services/app.yaml',
      'name: app\nimage: i\nnode_type: general\nvcpus: 1\nnode_host_ip_env: MY_IP\nlinks: [{service: web, env: WEB, port: 8080}, {service: db, env: DB, port: 5432, protocol: postgres}, {service: web, env: NOPE, port: 9999}]\ncross_node_links: [{service: db, env: DB_HOST_PORT, host_port: 15432}]\n',
    ),
  ];
  const withIps = nodes.map((n, i) => ({ ...n, host_ip: `10.0.0.${i + 1}` }));
  const plan = planDeploy(files, withIps, {});
  assert.equal(plan.ok, true);
  const nodeOf = (svc: string): string => Object.entries(plan.assignments).find(([, ss]) => ss.some((s) => s.name === svc))?.[0] ?? '';
  const ip = (svc: string): string => (nodeOf(svc) === 'n1' ? '10.0.0.1' : '10.0.0.2');
  assert.notEqual(nodeOf('web'), nodeOf('db'), 'anti-affinity: web and db on different nodes, so app links one across nodes');
  const app = plan.assignments[nodeOf('app')]?.find((s) => s.name === 'app');
  assert.deepEqual(app?.env, {
    WEB: `http://${ip('web')}:18080`,
    DB: `postgres://${ip('db')}:15432`,
    DB_HOST_PORT: `${ip('db')}:15432`,
    MY_IP: ip('app'),
  }, 'a link to a port no forward publishes stays unset');
  // Nothing moved: the same input plans no change.
  assert.deepEqual(planDeploy(files, withIps, plan.assignments).changes, []);
  // The target's node goes away: it moves, and so its address in app's env changes (app is recreated).
  const gone = nodeOf('db');
  const next = planDeploy(files, withIps.filter((n) => n.name !== gone), plan.assignments);
  const app2 = Object.values(next.assignments).flat().find((s) => s.name === 'app');
  const survivor = gone === 'n1' ? '10.0.0.2' : '10.0.0.1';
  assert.equal(app2?.env['DB'], `postgres://${survivor}:15432`);
});
