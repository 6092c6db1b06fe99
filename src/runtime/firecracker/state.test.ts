import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { writeVmRecord } from '../vmstate.ts';
import { sampleSpec } from '../vmstate.testing.ts';
import { isSameFirecracker, parseFcState, readFcState, type FcState } from './state.ts';

const dir = '/data/runtime-firecracker/vms/iweb1';
const sample = (): FcState => ({
  v: 1,
  agentId: 'agent-a',
  spec: sampleSpec('i-web-1'),
  endpoint: { kind: 'unix', path: `${dir}/port-8080.sock`, guest: { address: '10.0.2.15', port: 8080 } },
  firecracker: { pid: 4242, start: '123456' },
  vmId: 'iweb1',
  api: `${dir}/api.sock`,
  apiArg: `${dir}/api.sock`,
  files: { console: `${dir}/console.log`, output: `${dir}/firecracker.out`, log: `${dir}/firecracker.log`, metrics: `${dir}/metrics.ndjson` },
  net: { tap: 'tap0', guestMac: '06:00:0a:00:02:0f', address: '10.0.2.15/24', gateway: '10.0.2.2', netns: 'aefc_iweb1', port: 8080, forwarder: { pid: 4243, start: '123457' }, forwarderOutput: `${dir}/forwarder-8080.log` },
  restored: false,
  startedAt: 1_700_000_000_000,
  ready: true,
});

describe('firecracker state record', () => {
  it('round-trips a complete record (with or without jail, netns and forwarder)', () => {
    assert.deepEqual(parseFcState(JSON.stringify(sample()), 'i-web-1'), sample());
    const { netns: _n, forwarder: _f, forwarderOutput: _o, ...bare } = sample().net;
    const plain = { ...sample(), net: bare };
    assert.deepEqual(parseFcState(JSON.stringify(plain)), plain);
    const jailed = { ...sample(), jailDir: '/srv/jailer/firecracker/iweb1', apiArg: '/run/firecracker.socket' };
    assert.deepEqual(parseFcState(JSON.stringify(jailed)), jailed);
  });

  it('refuses incomplete and foreign records', () => {
    const text = JSON.stringify(sample());
    const broken: [string, (r: Record<string, unknown>) => void][] = [
      ['torn', () => undefined],
      ['no pid', (r) => delete (r['firecracker'] as Record<string, unknown>)['pid']],
      ['start time not ticks', (r) => ((r['firecracker'] as { start: string }).start = 'soon')],
      ['a tcp endpoint', (r) => (r['endpoint'] = { kind: 'tcp', host: '127.0.0.1', port: 4000 })],
      ['vm id with a dash', (r) => (r['vmId'] = 'i-web-1')],
      ['relative API socket', (r) => (r['api'] = 'api.sock')],
      ['no console file', (r) => delete (r['files'] as Record<string, unknown>)['console']],
      ['no TAP', (r) => delete (r['net'] as Record<string, unknown>)['tap']],
      ['a bad forwarder', (r) => ((r['net'] as { forwarder: unknown }).forwarder = { pid: 'x' })],
      ['relative jail', (r) => (r['jailDir'] = 'jail')],
      ['not restored nor cold booted', (r) => delete r['restored']],
    ];
    for (const [what, breakIt] of broken) {
      const r = JSON.parse(text) as Record<string, unknown>;
      breakIt(r);
      const out = what === 'torn' ? text.slice(0, -3) : JSON.stringify(r);
      assert.equal(parseFcState(out), undefined, what);
    }
  });

  it('is read from the VM dir it names', () => {
    const d = mkdtempSync(join(tmpdir(), 'fc-state-'));
    try {
      writeVmRecord(d, sample());
      assert.equal(readFcState(d, 'iweb1')?.vmId, 'iweb1');
      assert.equal(readFcState(d, 'iother'), undefined, "another VM's record");
      assert.equal(readFcState(d, 'iweb1', 'i-web-2'), undefined, 'another instance');
    } finally {
      rmSync(d, { recursive: true, force: true });
    }
  });

  it('is the same Firecracker only serving that API socket as that VM', () => {
    const rec = sample();
    const argv = (...a: string[]): string => `${a.join('\0')}\0`;
    const fc = argv('node', 'fake-vmm.ts', '--api-sock', rec.api, '--id', 'iweb1');
    assert.equal(isSameFirecracker(rec, { state: 'S', start: '123456', cmdline: fc }), true);
    assert.equal(isSameFirecracker(rec, { state: 'S', start: '1', cmdline: fc }), false, 'a reused pid');
    assert.equal(isSameFirecracker(rec, { state: 'S', start: '123456', cmdline: argv('firecracker', '--api-sock', '/other/api.sock', '--id', 'iweb1') }), false, 'another VM');
    // under the jailer every VM's socket argument is the same: --id tells them apart
    const jailed = { ...rec, apiArg: '/run/firecracker.socket' };
    const inJail = (id: string): string => argv('/firecracker', '--id', id, '--start-time-us', '1', '--api-sock', '/run/firecracker.socket');
    assert.equal(isSameFirecracker(jailed, { state: 'S', start: '123456', cmdline: inJail('iweb1') }), true);
    assert.equal(isSameFirecracker(jailed, { state: 'S', start: '123456', cmdline: inJail('iweb2') }), false);
  });
});
