/**
 * Links from inside a process sandbox, on `aether up` with firework-format specs: service `a`
 * links to `b`, and a's own program (busybox wget, through a CGI of its httpd) fetches its link
 * env value, unchanged (`http://127.0.0.1:<b's host port>`), and gets b's page: the agent relays
 * it (src/runtime/process/links.ts). Nothing else opens up: a reaches neither b's instance, nor
 * another service's published port, nor the platform's port, nor its host side's other ports; `c`,
 * which links to nothing, reaches neither b nor a's relay. The relay follows b's restart, comes
 * back for a after `kill -9` + restart of the platform (adoption), and nothing of it is left
 * after a clean stop. Root, inside the test network namespace (scripts/in-netns): the veth network.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { createServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import type { ServiceView } from '../src/spec/index.ts';
import { parseLinkElements, type LinkElement } from '../src/runtime/process/veth.ts';
import { api, eventually, startAether, type RunningPlatform } from './support/platform.ts';
import { addLinkProbe, busyboxMissing, busyboxRoot } from './support/busybox.ts';
import { inTestNetns } from './support/netns.ts';
import { services } from './support/router.ts';

const skip =
  process.getuid?.() !== 0
    ? 'needs root (service containers)'
    : !inTestNetns
      ? 'not inside the test network namespace (scripts/in-netns): no veth network'
      : (busyboxMissing() ?? false);

const PORT = { a: 18092, b: 18091, c: 18093 };

const svcYaml = (name: keyof typeof PORT, root: string, extra = ''): string =>
  [
    `name: ${name}`,
    `image: ${root}`,
    'node_type: general',
    'sandbox: process',
    'memory_mb: 64',
    "command: [/bin/busybox, httpd, -f, -p, '8080', -h, /www]",
    `port_forwards: [{host_port: ${PORT[name]}, vm_port: 8080}]`,
    'health_check: {type: http, port: 8080, path: /, interval: 1s, timeout: 1s, retries: 2}',
    extra,
    '',
  ].join('\n');

/** What the program of the service published on `hostPort` gets when it fetches `url` (default: its link). */
async function probe(hostPort: number, url = ''): Promise<string> {
  const r = await fetch(`http://127.0.0.1:${hostPort}/cgi-bin/get${url ? `?${url}` : ''}`, { signal: AbortSignal.timeout(15_000) });
  assert.equal(r.status, 200, `probe on ${hostPort}`);
  return (await r.text()).trim();
}

/** The host's link relay firewall elements (empty when the table or set is gone). */
function elements(): LinkElement[] {
  const r = spawnSync('nft', ['-j', 'list', 'set', 'inet', 'aether', 'links'], { encoding: 'utf8' });
  return r.status === 0 ? parseLinkElements(r.stdout) : [];
}

/** The host side (.1) of a sandbox's /30, from its address (.2). */
const hostSide = (address: string): string => address.replace(/\.(\d+):\d+$/, (_, n: string) => `.${Number(n) - 1}`);

const listeningOn = (host: string): boolean => spawnSync('ss', ['-Hltn', 'src', host], { encoding: 'utf8' }).stdout.trim() !== '';

test('links from a process sandbox: a reaches b at its link value, and nothing it does not link to', { skip, timeout: 600_000 }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'aether-links-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const bRoot = busyboxRoot(join(dir, 'b'), 'hello from b\n');
  const probeRoot = busyboxRoot(join(dir, 'probe'), 'a probe\n');
  addLinkProbe(probeRoot);
  const specs = join(dir, 'specs');
  mkdirSync(join(specs, 'services'), { recursive: true });
  writeFileSync(join(specs, 'services', 'b.yaml'), svcYaml('b', bRoot));
  writeFileSync(join(specs, 'services', 'a.yaml'), svcYaml('a', probeRoot, 'links: [{service: b, env: B_URL, port: 8080}]'));
  writeFileSync(join(specs, 'services', 'c.yaml'), svcYaml('c', probeRoot));

  const platforms: RunningPlatform[] = [];
  t.after(async () => {
    for (const p of platforms) await p.kill();
  });
  const env = { AETHER_LEASE_TTL_MS: '20000' };
  const args = ['--router-port', '0', '--source', specs, '--poll', '1s'];
  const first = await startAether({ args, env });
  platforms.push(first);
  const healthy = async (p: RunningPlatform): Promise<Map<string, ServiceView> | false> => {
    const s = await services(p);
    return ['a', 'b', 'c'].every((n) => s.get(n)?.state === 'running' && s.get(n)?.health === 'healthy') && s;
  };
  const s1 = await eventually(() => healthy(first), 120_000, 500).catch(async (err: unknown) => {
    throw new Error(`${String(err)}\n${JSON.stringify([...(await services(first)).values()])}\n${first.output().slice(-4000)}`);
  });

  // the env value is the deployer's, unchanged; a's program reaches b through it
  const view = (await api<{ config: { env: Record<string, string> } }>(first, 'GET', '/api/services/a')).body;
  assert.equal(view.config.env['B_URL'], `http://127.0.0.1:${PORT.b}`);
  const logsOf = async (p: RunningPlatform, name: string): Promise<string> => (await fetch(`${p.url}/api/services/${name}/logs?tail=50`, { headers: { authorization: `Bearer ${p.token}` } })).text();
  assert.equal(await probe(PORT.a), 'OK hello from b', await logsOf(first, 'a'));

  const a = s1.get('a')?.address ?? '';
  const b = s1.get('b')?.address ?? '';
  assert.match(a, /^10\.213\.\d+\.\d+:8080$/);
  const aHost = hostSide(a);
  const gatewayPort = new URL(first.url).port;
  const wildcard = createServer((c) => c.end('HTTP/1.0 200 OK\r\n\r\nhost\n'));
  await new Promise<void>((r) => wildcard.listen(0, '0.0.0.0', r));
  t.after(() => wildcard.close());
  const wildcardPort = (wildcard.address() as AddressInfo).port;
  // exactly one relay: a's link, on a's host side, admitted for a's link only
  const els = elements();
  assert.equal(els.length, 1, JSON.stringify(els));
  const relay = els[0] as LinkElement;
  assert.equal(relay.host, aHost);

  // a: nothing it does not link to
  for (const url of [
    `http://127.0.0.1:${PORT.c}/`, // another service's published port (its own loopback)
    `http://127.0.0.1:${gatewayPort}/healthz`, // the platform's port
    `http://${aHost}:${gatewayPort}/healthz`, // the host side's other ports
    `http://${aHost}:${PORT.b}/`,
    `http://${b}/`, // b's instance itself
    `http://${aHost}:${wildcardPort}/`, // a host program listening on every address
  ]) assert.match(await probe(PORT.a, url), /^FAILED/, `a must not reach ${url}`);
  // c (no links): neither b's published port nor a's relay
  assert.match(await probe(PORT.c, `http://127.0.0.1:${PORT.b}/`), /^FAILED/);
  assert.match(await probe(PORT.c, `http://${aHost}:${relay.port}/`), /^FAILED/);
  assert.match(await probe(PORT.c), /^FAILED/, 'c has no B_URL');

  // b restarts (a new instance behind the same published port): a follows
  const bInstance = s1.get('b')?.address;
  assert.equal((await api(first, 'POST', '/api/services/b/restart')).status, 202);
  await eventually(async () => {
    const s = await services(first);
    return s.get('b')?.state === 'running' && s.get('b')?.address !== bInstance;
  }, 60_000, 200);
  await eventually(async () => (await probe(PORT.a)) === 'OK hello from b', 30_000, 300);

  // kill -9: a's sandbox lives on; the restarted platform adopts it and opens its relay again
  await first.kill({ keepSandboxes: true });
  const second = await startAether({ dataDir: first.dataDir, token: first.token, args, env });
  platforms.push(second);
  const s2 = await eventually(() => healthy(second), 120_000, 500);
  assert.equal(s2.get('a')?.address, a, 'a was adopted (same sandbox)');
  await eventually(async () => (await probe(PORT.a)) === 'OK hello from b', 30_000, 300).catch((err: unknown) => {
    throw new Error(`${String(err)}\n${second.output().slice(-4000)}`);
  });
  const again = elements();
  assert.equal(again.length, 1, `the dead agent's element is gone, the new relay's is there: ${JSON.stringify(again)}`);
  assert.equal(again[0]?.host, aHost);

  // a clean stop leaves no relay listening and no element
  assert.equal(await second.stop(), 0);
  assert.deepEqual(elements(), []);
  assert.equal(listeningOn(aHost), false, 'no relay left listening');
});
