import assert from 'node:assert/strict';
import { test } from 'node:test';
import { hostRuleset, parsePool, SLOTS, slotAddresses } from './veth.ts';

test('the pool is a /16; slot n is the n-th /30 (host .1, sandbox .2), named ae<n>', () => {
  const base = parsePool('10.213.0.0/16');
  assert.deepEqual(slotAddresses(base, 0), { ifname: 'ae0', host: '10.213.0.1', sandbox: '10.213.0.2' });
  assert.deepEqual(slotAddresses(base, 64), { ifname: 'ae64', host: '10.213.1.1', sandbox: '10.213.1.2' });
  assert.deepEqual(slotAddresses(base, SLOTS - 1), { ifname: 'ae16383', host: '10.213.255.253', sandbox: '10.213.255.254' });
  assert.ok('ae16383'.length <= 15, 'fits IFNAMSIZ');
  assert.deepEqual(slotAddresses(parsePool('192.168.0.0/16'), 1), { ifname: 'ae1', host: '192.168.0.5', sandbox: '192.168.0.6' });
  for (const bad of ['10.213.0.0/24', '10.213.1.0/16', '300.1.0.0/16', '10.213.0.0', '']) assert.throws(() => parsePool(bad), /AETHER_ERR_VALIDATION|must be a \/16/, bad);
});

test("the host's table lets only replies in from sandboxes and forwards nothing to or from them", () => {
  const r = hostRuleset();
  // idempotent and atomic: created, replaced whole
  assert.match(r, /^add table inet aether\ndelete table inet aether\ntable inet aether \{/);
  assert.match(r, /hook input[^}]*iifname "ae\*" ct state established,related accept\n\s*iifname "ae\*" meta l4proto tcp reject with tcp reset\n\s*iifname "ae\*" drop/);
  assert.match(r, /hook forward[^}]*iifname "ae\*" drop\n\s*oifname "ae\*" drop/);
});
