import assert from 'node:assert/strict';
import { test } from 'node:test';
import { hostRuleset, linkElementsText, parseLinkElements, parsePool, SLOTS, slotAddresses } from './veth.ts';

test('the pool is a /16; slot n is the n-th /30 (host .1, sandbox .2), named ae<n>', () => {
  const base = parsePool('10.213.0.0/16');
  assert.deepEqual(slotAddresses(base, 0), { ifname: 'ae0', host: '10.213.0.1', sandbox: '10.213.0.2' });
  assert.deepEqual(slotAddresses(base, 64), { ifname: 'ae64', host: '10.213.1.1', sandbox: '10.213.1.2' });
  assert.deepEqual(slotAddresses(base, SLOTS - 1), { ifname: 'ae16383', host: '10.213.255.253', sandbox: '10.213.255.254' });
  assert.ok('ae16383'.length <= 15, 'fits IFNAMSIZ');
  assert.deepEqual(slotAddresses(parsePool('192.168.0.0/16'), 1), { ifname: 'ae1', host: '192.168.0.5', sandbox: '192.168.0.6' });
  for (const bad of ['10.213.0.0/24', '10.213.1.0/16', '300.1.0.0/16', '10.213.0.0', '']) assert.throws(() => parsePool(bad), /AETHER_ERR_VALIDATION|must be a \/16/, bad);
});

test("the host's table lets only replies and link relays in from sandboxes and forwards nothing to or from them", () => {
  const r = hostRuleset();
  // idempotent and atomic: created if missing, chains refilled; the links set (relays of live instances) kept
  assert.match(r, /^add table inet aether\nadd set inet aether links \{ type ifname \. ipv4_addr \. inet_service; \}\n/);
  assert.doesNotMatch(r, /delete table/);
  assert.match(r, /flush chain inet aether input\nflush chain inet aether forward\ntable inet aether \{/);
  assert.match(
    r,
    /chain input \{\n\s*iifname "ae\*" ct state established,related accept\n\s*iifname "ae\*" meta l4proto tcp ct state new iifname \. ip daddr \. tcp dport @links socket wildcard 0 accept\n\s*iifname "ae\*" meta l4proto tcp reject with tcp reset\n\s*iifname "ae\*" drop/,
  );
  assert.match(r, /chain forward \{\n\s*iifname "ae\*" drop\n\s*oifname "ae\*" drop/);
  assert.match(hostRuleset(false), /@links accept/, 'without the socket match on kernels that lack it');
});

test('link elements: written only for an ae<n>, an IPv4 address and a port; read back from nft -j', () => {
  assert.equal(linkElementsText([{ ifname: 'ae3', host: '10.213.0.13', port: 40001 }, { ifname: 'ae3', host: '10.213.0.13', port: 40002 }]), '"ae3" . 10.213.0.13 . 40001, "ae3" . 10.213.0.13 . 40002');
  for (const bad of [{ ifname: 'eth0', host: '10.213.0.13', port: 1 }, { ifname: 'ae3', host: '10.213.0.13; flush ruleset', port: 1 }, { ifname: 'ae3', host: '10.213.0.13', port: 0 }])
    assert.throws(() => linkElementsText([bad]), { code: 'AETHER_ERR_INTERNAL' });
  const json = '{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"set": {"family": "inet", "name": "links", "table": "aether", "type": ["ifname", "ipv4_addr", "inet_service"], "handle": 1, "elem": [{"concat": ["ae1", "10.213.0.5", 40001]}, {"concat": ["ae2", "10.213.0.9", 40002]}]}}]}';
  assert.deepEqual(parseLinkElements(json), [{ ifname: 'ae1', host: '10.213.0.5', port: 40001 }, { ifname: 'ae2', host: '10.213.0.9', port: 40002 }]);
  assert.deepEqual(parseLinkElements('{"nftables": [{"set": {"name": "links"}}]}'), []);
  assert.deepEqual(parseLinkElements('not json'), []);
});
