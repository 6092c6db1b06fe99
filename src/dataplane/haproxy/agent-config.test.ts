import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { findHaproxy } from '../detect.ts';
import { agentHopPaths, renderAgentHopConfig, tokenDigest } from './agent-config.ts';
import { ERROR_PAGES, errorPage } from './config.ts';

const TOKEN = 'a"b c%d\\e'; // characters the gateway's hop listeners cannot carry in their config
const cfg = renderAgentHopConfig({ dir: '/d', host: '0.0.0.0', port: 7000, node: { host: '127.0.0.1', port: 9100 }, slots: 3, clusterToken: TOKEN, threads: 2, maxConn: 1000 });
const blocks = cfg.split('\n\n');
const block = (head: RegExp): string => {
  const b = blocks.find((x) => head.test(x));
  assert.ok(b, `a block ${head}`);
  return b;
};
const slots = blocks.filter((b) => /^backend i\d+$/m.test(b));

const cases: { name: string; in: () => string; want: (RegExp | string)[]; not?: (RegExp | string)[] }[] = [
  { name: 'private admin socket, threads, connection limit', in: () => block(/^global$/m), want: ['stats socket /d/admin.sock mode 600 level admin', 'nbthread 2', 'maxconn 1000'] },
  { name: 'no logging (the gateways record what passes here), retries only before anything reached an instance', in: () => block(/^defaults$/m), want: ['retry-on conn-failure\n', 'option redispatch 1', 'errorfile 502 /d/errors/502.http'], not: [/\blog\b/] },
  { name: 'long timeouts: gateways bound the function, log follows idle', in: () => block(/^defaults$/m), want: ['timeout client 24h', 'timeout server 24h', 'timeout tunnel 1h'] },
  { name: "frontend on the agent's port; forwards with the token and a mapped instance go to its slot", in: () => block(/^frontend agent$/m), want: ['bind 0.0.0.0:7000\n', 'acl forward path_beg /internal/forward/', 'path,field(4,/),map(/d/instances.map) if forward token', 'use_backend %[var(txn.slot)] if { var(txn.slot) -m found }', 'default_backend node'] },
  { name: 'the token is compared by its digest, never written into the config', in: () => cfg, want: [`acl token req.fhdr(x-aether-cluster-token),sha2(256),hex -m str ${createHash('sha256').update(TOKEN).digest('hex').toUpperCase()}\n`], not: [TOKEN, 'c%d'] },
  { name: 'the instance goes along for the backup', in: () => block(/^frontend agent$/m), want: ['http-request set-header x-aether-forward-instance %[path,field(4,/)] if { var(txn.slot) -m found }'] },
  { name: 'everything else: the Node agent on loopback, no X-Forwarded-For added', in: () => block(/^backend node$/m), want: ['server node 127.0.0.1:9100 pool-purge-delay 1s'], not: ['forwardfor'] },
  {
    name: 'a slot: token and hop header dropped, prefix stripped (query kept), a function cannot fake x-aether-* answers',
    in: () => slots[0] ?? '',
    want: ['backend i0\n', 'http-request del-header x-aether-cluster-token', 'http-request del-header x-aether-hop-instance', 'http-request replace-path ^/internal/forward/[^/]*/?(.*)$ /\\1', 'http-response del-header x-aether- -m beg unless { srv_name node }', 'timeout server 16m'],
    not: ['forwardfor', 'set-header x-forwarded'],
  },
  { name: 'a slot: one server set at run time, kept-alive, marked down at a failed connect', in: () => slots[2] ?? '', want: ['server s 127.0.0.1:1 disabled check observe layer4 error-limit 1 on-error mark-down', 'pool-max-conn -1 pool-purge-delay 1s'] },
  { name: "a slot: the Node agent's private forwarding socket as backup", in: () => slots[1] ?? '', want: ['server node unix@/d/forward.sock backup'] },
];

for (const c of cases) {
  test(`agent hop config: ${c.name}`, () => {
    const text = c.in();
    for (const w of c.want) {
      if (typeof w === 'string') assert.ok(text.includes(w), `${JSON.stringify(w)} in:\n${text}`);
      else assert.match(text, w);
    }
    for (const n of c.not ?? []) {
      if (typeof n === 'string') assert.ok(!text.includes(n), `no ${JSON.stringify(n)} in:\n${text}`);
      else assert.doesNotMatch(text, n);
    }
  });
}

test('agent hop config: a slot backend per slot, an IPv6 wildcard binds both families', () => {
  assert.equal(slots.length, 3);
  assert.match(renderAgentHopConfig({ dir: '/d', host: '::', port: 7000, node: { host: '127.0.0.1', port: 1 }, slots: 0, clusterToken: 't' }), /bind :::7000 v4v6\n/);
  assert.equal(tokenDigest('t'), createHash('sha256').update('t').digest('hex').toUpperCase());
});

const haproxy = findHaproxy();
test('agent hop config: HAProxy accepts it', { skip: haproxy ? false : 'no haproxy binary' }, (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'aether-agent-hop-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const p = agentHopPaths(dir);
  mkdirSync(p.errors);
  for (const s of Object.keys(ERROR_PAGES)) writeFileSync(join(p.errors, `${s}.http`), errorPage(Number(s)));
  writeFileSync(p.instances, '');
  writeFileSync(p.config, renderAgentHopConfig({ dir, host: '127.0.0.1', port: 7000, node: { host: '127.0.0.1', port: 9100 }, slots: 4, clusterToken: TOKEN }));
  const r = spawnSync(haproxy as string, ['-c', '-f', p.config], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr + r.stdout);
  assert.doesNotMatch(r.stderr, /WARNING/, r.stderr);
});
