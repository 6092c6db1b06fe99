import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { readProc } from '../procfs.ts';
import { writeVmRecord } from '../vmstate.ts';
import { sampleSpec } from '../vmstate.testing.ts';
import { isSameQemu, parseVmState, qemuAlive, qemuGone, readVmState, type VmState } from './state.ts';

const dir = '/data/runtime-qemu/instances/i-1';
const sample = (): VmState => ({
  v: 1,
  agentId: 'agent-a',
  spec: sampleSpec('i-1'),
  endpoint: { kind: 'tcp', host: '127.0.0.1', port: 40001, guest: { address: '10.0.2.15', port: 8080 } },
  qemu: { pid: 4242, start: '123456' },
  qmp: `${dir}/qmp.sock`,
  ctl: `${dir}/ctl.sock`,
  log: `${dir}/log.sock`,
  console: `${dir}/console.log`,
  output: `${dir}/qemu.log`,
  net: { kind: 'user', hostPort: 40001, guest: { address: '10.0.2.15', port: 8080 } },
  accel: 'tcg',
  restored: false,
  startedAt: 1_700_000_000_000,
  ready: true,
});

describe('qemu state record', () => {
  it('round-trips a complete record, checked against the dir it was read from', () => {
    const rec = sample();
    assert.deepEqual(parseVmState(JSON.stringify(rec), 'i-1'), rec);
    assert.equal(parseVmState(JSON.stringify(rec), 'i-2'), undefined, 'a record in another instance dir is not taken');
  });

  it('refuses torn, foreign and incomplete records', () => {
    const text = JSON.stringify(sample());
    assert.equal(parseVmState(text.slice(0, text.length - 5)), undefined, 'torn');
    assert.equal(parseVmState('null'), undefined);
    assert.equal(parseVmState('[]'), undefined);
    const broken: [string, (r: Record<string, unknown>) => void][] = [
      ['older format', (r) => (r['v'] = 0)],
      ['no agent', (r) => delete r['agentId']],
      ['no owner labels', (r) => delete (r['spec'] as Record<string, unknown>)['owner']],
      ['unknown owner kind', (r) => ((r['spec'] as { owner: { kind: string } }).owner.kind = 'job')],
      ['no pid', (r) => delete (r['qemu'] as Record<string, unknown>)['pid']],
      ['pid 1', (r) => ((r['qemu'] as { pid: number }).pid = 1)],
      ['start time not a number of ticks', (r) => ((r['qemu'] as { start: string }).start = 'x12')],
      ['relative socket path', (r) => (r['qmp'] = 'qmp.sock')],
      ['not restored nor cold booted', (r) => delete r['restored']],
      ['no console path', (r) => delete r['console']],
      ['a unix endpoint', (r) => (r['endpoint'] = { kind: 'unix', path: '/x.sock' })],
      ['forwarded port differs from the endpoint', (r) => ((r['net'] as { hostPort: number }).hostPort = 40002)],
      ['bad port', (r) => ((r['endpoint'] as { port: number }).port = 70000)],
      ['TAP networking (not ours)', (r) => ((r['net'] as { kind: string }).kind = 'tap')],
      ['unknown accel', (r) => (r['accel'] = 'hvf')],
      ['no ready flag', (r) => delete r['ready']],
    ];
    for (const [what, breakIt] of broken) {
      const r = JSON.parse(text) as Record<string, unknown>;
      breakIt(r);
      assert.equal(parseVmState(JSON.stringify(r)), undefined, what);
    }
  });

  it('is read back from its dir; a torn file is no record', () => {
    const d = mkdtempSync(join(tmpdir(), 'qemu-state-'));
    try {
      assert.equal(readVmState(d, 'i-1'), undefined, 'no record yet');
      writeVmRecord(d, { ...sample(), ready: false });
      assert.equal(readVmState(d, 'i-1')?.ready, false);
      assert.equal(readVmState(d, 'i-2'), undefined, 'a record of another instance');
      writeFileSync(join(d, 'state.json'), '{"v":1,');
      assert.equal(readVmState(d, 'i-1'), undefined);
    } finally {
      rmSync(d, { recursive: true, force: true });
    }
  });
});

describe('qemu pid identity', () => {
  const rec = sample();
  const argv = (...a: string[]): string => `${a.join('\0')}\0`;
  const qemuArgv = argv('/usr/bin/qemu-system-x86_64', '-M', 'microvm', '-qmp', `unix:${rec.qmp},server=on,wait=off`, '-name', 'aether-i-1,process=aether-vm');

  it('is the same QEMU only with the same start time and a command line serving its QMP socket', () => {
    assert.equal(isSameQemu(rec, { state: 'S', start: '123456', cmdline: qemuArgv }), true);
    assert.equal(isSameQemu(rec, undefined), false, 'no such pid');
    assert.equal(isSameQemu(rec, { state: 'S', start: '999999', cmdline: qemuArgv }), false, 'a reused pid');
    assert.equal(isSameQemu(rec, { state: 'Z', start: '123456', cmdline: '' }), false, 'a zombie');
    assert.equal(isSameQemu(rec, { state: 'S', start: '123456', cmdline: argv('/usr/bin/qemu-system-x86_64', '-qmp', 'unix:/other/qmp.sock,server=on') }), false, 'another VM');
    assert.equal(isSameQemu(rec, { state: 'S', start: '123456', cmdline: argv('/bin/sh', '-c', `echo ${rec.qmp}`) }), false, 'names the path, serves no QMP');
  });

  it('checks /proc: a live process that is not a QEMU is not taken for it', async () => {
    const child = spawn('sleep', ['30'], { stdio: 'ignore' });
    try {
      const pid = child.pid as number;
      const proc = readProc(pid);
      assert.ok(proc && /^\d+$/.test(proc.start));
      assert.equal(proc.cmdline, 'sleep\x0030\x00');
      const r = { qemu: { pid, start: proc.start }, qmp: '/x/qmp.sock' };
      assert.equal(qemuGone(r), false);
      assert.equal(qemuAlive(r), false, 'not a QEMU');
      assert.equal(qemuGone({ qemu: { pid, start: String(Number(proc.start) + 1) } }), true, 'other start time');
    } finally {
      child.kill('SIGKILL');
      await new Promise((r) => child.once('exit', r));
    }
    assert.equal(readProc(child.pid as number), undefined);
  });
});
