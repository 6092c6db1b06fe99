import assert from 'node:assert/strict';
import { test } from 'node:test';
import { checkTargets, sandboxLinkConfig } from './links.ts';

const sb = { ifname: 'ae3', host: '10.213.0.13', address: '10.213.0.14' };

test("the sandbox's link table: each target DNAT'd to its relay on .1; loopback sources leave as eth0's address; routes only for non-loopback targets", () => {
  const { nft, routes } = sandboxLinkConfig(sb, [
    { target: { host: '127.0.0.1', port: 18080 }, port: 40001 },
    { target: { host: '10.0.0.5', port: 6379 }, port: 40002 },
    { target: { host: '10.0.0.5', port: 6380 }, port: 40003 },
  ]);
  // replaced whole, atomically (an adopting agent rewrites it with its new relay ports)
  assert.match(nft, /^add table ip aether_links\ndelete table ip aether_links\ntable ip aether_links \{/);
  assert.match(nft, /type nat hook output priority -100; policy accept;\n\s*ip daddr 127\.0\.0\.1 tcp dport 18080 dnat to 10\.213\.0\.13:40001\n\s*ip daddr 10\.0\.0\.5 tcp dport 6379 dnat to 10\.213\.0\.13:40002\n\s*ip daddr 10\.0\.0\.5 tcp dport 6380 dnat to 10\.213\.0\.13:40003\n/);
  assert.match(nft, /type nat hook postrouting priority 100; policy accept;\n\s*oifname "eth0" ip saddr 127\.0\.0\.0\/8 snat to 10\.213\.0\.14\n/);
  assert.deepEqual(routes, ['ip route replace 10.0.0.5/32 via 10.213.0.13 dev eth0']);
  assert.deepEqual(sandboxLinkConfig(sb, []).routes, []);
});

test('link targets: IPv4 address and port only, deduplicated; anything that could reach a script is refused', () => {
  assert.deepEqual(checkTargets([{ host: '127.0.0.1', port: 1 }, { host: '127.0.0.1', port: 1 }, { host: '10.1.2.3', port: 65535 }]), [{ host: '127.0.0.1', port: 1 }, { host: '10.1.2.3', port: 65535 }]);
  for (const bad of [{ host: '0.0.0.0', port: 80 }, { host: 'db', port: 80 }, { host: '10.0.0.1; reboot', port: 80 }, { host: '::1', port: 80 }, { host: '10.0.0.1', port: 0 }, { host: '10.0.0.1', port: 1.5 }])
    assert.throws(() => checkTargets([bad]), { code: 'AETHER_ERR_VALIDATION' }, JSON.stringify(bad));
  assert.throws(() => sandboxLinkConfig(sb, [{ target: { host: 'x y', port: 1 }, port: 2 }]), { code: 'AETHER_ERR_INTERNAL' });
});
