/**
 * Adopting a QEMU VM without QEMU: a stand-in process serves what an adopting agent talks to (QMP,
 * the ctl and log ports) under a command line naming its QMP socket, and the test writes its
 * console and output files. Two agents, each a runtime on its own manual clock: the first adopts
 * and "dies" (its clock stops), lines are written while no agent reads, the second adopts and logs
 * them once, from where the first recorded it had read.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { appendFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ManualClock, silentLogger } from '../../core/index.ts';
import type { LogLine, RuntimeInstance } from '../index.ts';
import { procRef } from '../procfs.ts';
import { writeVmRecord } from '../vmstate.ts';
import { createQemuRuntime } from './qemu.ts';
import type { VmState } from './state.ts';
import { sampleSpec } from '../vmstate.testing.ts';

const ID = 'i-adopt-1';

/**
 * Stands in for QEMU: QMP (greeting, an empty return to everything, `running` to query-status),
 * and the ctl and log ports; each connection to the log port gets the program's line that waited
 * for it (virtio-serial delivers what the guest wrote as soon as someone connects).
 */
const STAND_IN = `
const net = require('node:net');
const [qmp, ctl, log] = process.argv.slice(-3);
net.createServer((c) => {
  c.write(JSON.stringify({ QMP: { version: {}, capabilities: [] } }) + '\\n');
  let buf = '';
  c.on('data', (d) => {
    buf += d;
    let i;
    while ((i = buf.indexOf('\\n')) >= 0) {
      const cmd = JSON.parse(buf.slice(0, i)).execute;
      buf = buf.slice(i + 1);
      c.write(JSON.stringify({ return: cmd === 'query-status' ? { status: 'running', running: true } : {} }) + '\\n');
    }
  });
  c.on('error', () => {});
}).listen(qmp);
net.createServer((c) => c.on('error', () => {})).listen(ctl);
let n = 0;
net.createServer((c) => { c.on('error', () => {}); c.write('program line for connection ' + ++n + '\\n'); }).listen(log);
`;

let dir: string;
let dataDir: string;
let idir: string;
let standIn: ChildProcess;
let exited: Promise<unknown>;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'qemu-adopt-'));
  dataDir = join(dir, 'data');
  idir = join(dataDir, 'instances', ID);
  mkdirSync(idir, { recursive: true });
  const [qmp, ctl, log] = ['qmp.sock', 'ctl.sock', 'log.sock'].map((f) => join(idir, f)) as [string, string, string];
  // what isSameQemu looks for: `-qmp` followed by the socket
  standIn = spawn(process.execPath, ['-e', STAND_IN, '--', '-qmp', `unix:${qmp},server=on,wait=off`, qmp, ctl, log], { stdio: 'ignore' });
  exited = new Promise((r) => standIn.once('exit', r));
  for (let i = 0; i < 500 && ![qmp, ctl, log].every((p) => existsSync(p)); i++) await new Promise((r) => setTimeout(r, 10));
  const qemu = procRef(standIn.pid);
  assert.ok(qemu);
  const rec: VmState = {
    v: 1,
    agentId: 'agent-q',
    spec: sampleSpec(ID),
    endpoint: { kind: 'tcp', host: '127.0.0.1', port: 40001, guest: { address: '10.0.2.15', port: 8080 } },
    qemu, qmp, ctl, log,
    console: join(idir, 'console.log'),
    output: join(idir, 'qemu.log'),
    net: { kind: 'user', hostPort: 40001, guest: { address: '10.0.2.15', port: 8080 } },
    accel: 'tcg',
    restored: false,
    startedAt: 1_700_000_000_000,
    ready: true,
  };
  writeVmRecord(idir, rec);
});

after(async () => {
  standIn.kill('SIGKILL');
  await exited;
  await rm(dir, { recursive: true, force: true });
});

/** An agent: the QEMU runtime on its own manual clock, adopting the VM and listening to it right after. */
async function agent(): Promise<{ clock: ManualClock; inst: RuntimeInstance; lines: string[] }> {
  const clock = new ManualClock();
  const rt = createQemuRuntime({ dataDir, agentId: 'agent-q', clock, logger: silentLogger(), qemuBin: process.execPath, accel: 'tcg' });
  assert.deepEqual((await rt.adoption.list()).map((a) => a.spec.instanceId), [ID]);
  const inst = await rt.adoption.adopt(ID);
  const lines: string[] = [];
  // as the agent does: its listener comes right after adopt() resolves
  inst.onLog((l: LogLine) => l.stream !== 'system' || /^(console|qemu): /.test(l.text) ? lines.push(`${l.stream} ${l.text}`) : undefined);
  return { clock, inst, lines };
}

/** Let the agent's timers run and its reads land. */
async function tick(clock: ManualClock): Promise<void> {
  for (let i = 0; i < 3; i++) {
    await clock.advance(100);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('qemu adoption (a stand-in QEMU)', () => {
  it('a restarted agent logs what aether-init and QEMU wrote while no agent ran, once, and the program output waiting in the log port', async () => {
    const consoleFile = join(idir, 'console.log');
    const output = join(idir, 'qemu.log');
    // a VM whose agent kept no offset record (an older agent): what is there was read, the files are followed from their end
    writeFileSync(consoleFile, 'AETHER-INIT: seen by an older agent\n');
    writeFileSync(output, 'qemu-system-x86_64: seen by an older agent\n');

    const first = await agent();
    await tick(first.clock);
    appendFileSync(consoleFile, 'AETHER-INIT: read by the first agent\n');
    appendFileSync(output, 'qemu-system-x86_64: read by the first agent\n');
    await tick(first.clock);
    assert.deepEqual(first.lines, [
      'stdout program line for connection 1',
      'system console: AETHER-INIT: read by the first agent',
      'system qemu: qemu-system-x86_64: read by the first agent',
    ], 'the program line waiting at connect is logged (read only once someone listens); the files from their end');
    for (const f of [consoleFile, output]) assert.equal((JSON.parse(readFileSync(`${f}.offset`, 'utf8')) as { offset: number }).offset, readFileSync(f).length, `${f}: recorded as read to its end`);

    // the first agent is gone (its clock stops); the VM goes on writing, a line is half written
    appendFileSync(consoleFile, 'AETHER-INIT: while no agent ran 1\nAETHER-INIT: while no agent ran 2\n');
    appendFileSync(output, 'qemu-system-x86_64: while no agent ran\nqemu-system-x86_64: half');

    const second = await agent();
    await tick(second.clock);
    appendFileSync(output, ' a line\n');
    await tick(second.clock);
    assert.deepEqual(second.lines, [
      'stdout program line for connection 2',
      'system console: AETHER-INIT: while no agent ran 1',
      'system console: AETHER-INIT: while no agent ran 2',
      'system qemu: qemu-system-x86_64: while no agent ran',
      'system qemu: qemu-system-x86_64: half a line',
    ], 'from where the first agent had read: nothing again, nothing lost');

    // the VM ends: both agents see it go (the second logs nothing more)
    standIn.kill('SIGKILL');
    await exited;
    await Promise.all([first, second].map(async (a) => {
      for (let i = 0; i < 50 && a.inst.inspect().state !== 'exited'; i++) await tick(a.clock);
      assert.equal((await a.inst.exited).reason, 'the VM exited (status unknown: adopted instance)');
    }));
    assert.equal(second.lines.length, 5);
  });
});
