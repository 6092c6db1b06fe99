import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { argValue, isGone, isSameProcess, processesServingIn, procGone, procRef, readProc } from './procfs.ts';
import type { InstanceSpec } from './types.ts';
import { parseVmRecord, readVmRecord, stopLeftover, writeVmRecord, type VmRecord } from './vmstate.ts';

const spec: InstanceSpec = {
  instanceId: 'i-1',
  owner: { kind: 'function', id: 'fn', name: 'hello' },
  artifact: { kind: 'code', dir: '/code', runtime: 'node', entrypoint: 'h.js' },
  env: {},
  resources: { memoryMb: 128, vcpu: 1, pidsMax: 64 },
  listen: { port: 8080 },
  version: 'cfg-1',
};
const base = (): VmRecord & { extra: string } => ({ v: 1, agentId: 'a', spec, endpoint: { kind: 'unix', path: '/vm/port.sock' }, startedAt: 1, ready: true, extra: 'x' });
const hasExtra = (r: Record<string, unknown>): boolean => r['extra'] === 'x';

async function ended(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  await new Promise((r) => child.once('exit', r));
}

describe('VM records', () => {
  it('take a tcp or an absolute unix endpoint, and only with the driver fields it checks', () => {
    assert.deepEqual(parseVmRecord(JSON.stringify(base()), hasExtra, 'i-1'), base());
    assert.ok(parseVmRecord(JSON.stringify({ ...base(), endpoint: { kind: 'tcp', host: '127.0.0.1', port: 4000 } }), hasExtra));
    assert.equal(parseVmRecord(JSON.stringify({ ...base(), endpoint: { kind: 'unix', path: 'port.sock' } }), hasExtra), undefined, 'relative socket');
    assert.equal(parseVmRecord(JSON.stringify({ ...base(), extra: 'y' }), hasExtra), undefined, 'the driver refuses it');
    assert.equal(parseVmRecord(JSON.stringify(base()), hasExtra, 'i-2'), undefined, 'another instance');
    assert.equal(parseVmRecord(JSON.stringify({ ...base(), ready: 'yes' }), hasExtra), undefined);
  });

  it('are written atomically: the last write wins and no temporary file stays', () => {
    const d = mkdtempSync(join(tmpdir(), 'vm-record-'));
    try {
      const parse = (t: string): ReturnType<typeof base> | undefined => parseVmRecord(t, hasExtra, 'i-1');
      assert.equal(readVmRecord(d, parse), undefined);
      writeVmRecord(d, { ...base(), ready: false });
      writeVmRecord(d, base());
      assert.deepEqual(readdirSync(d), ['state.json']);
      assert.equal(readVmRecord(d, parse)?.ready, true);
    } finally {
      rmSync(d, { recursive: true, force: true });
    }
  });
});

describe('process identity (/proc)', () => {
  const argv = (...a: string[]): string => `${a.join('\0')}\0`;
  const ref = { pid: 4242, start: '123456' };
  const names = (a: string[]): boolean => argValue(a, '--api-sock') === '/vm/api.sock';

  it('is the same process only alive, with the same start time and the argv it names', () => {
    const cmd = argv('firecracker', '--api-sock', '/vm/api.sock', '--id', 'vm1');
    assert.equal(isSameProcess(ref, { state: 'S', start: '123456', cmdline: cmd }, names), true);
    assert.equal(isSameProcess(ref, undefined, names), false, 'no such pid');
    assert.equal(isSameProcess(ref, { state: 'S', start: '999', cmdline: cmd }, names), false, 'a reused pid');
    assert.equal(isSameProcess(ref, { state: 'Z', start: '123456', cmdline: '' }, names), false, 'a zombie');
    assert.equal(isSameProcess(ref, { state: 'S', start: '123456', cmdline: argv('sh', '-c', 'echo /vm/api.sock') }, names), false, 'names the path, serves nothing');
  });

  it('is gone once the pid is free, a zombie or another process; an exiting one (empty cmdline) is not gone yet', () => {
    assert.equal(isGone(ref, undefined), true);
    assert.equal(isGone(ref, { state: 'Z', start: '123456', cmdline: '' }), true);
    assert.equal(isGone(ref, { state: 'S', start: '1', cmdline: '' }), true);
    assert.equal(isGone(ref, { state: 'R', start: '123456', cmdline: '' }), false);
  });

  it('reads option values in both spellings', () => {
    assert.equal(argValue(['fc', '--api-sock', '/a'], '--api-sock'), '/a');
    assert.equal(argValue(['fc', '--api-sock=/b'], '--api-sock'), '/b');
    assert.equal(argValue(['fc'], '--api-sock'), undefined);
  });

  it('reads a live process, and finds what serves a socket in a dir', async () => {
    const d = mkdtempSync(join(tmpdir(), 'vm-procs-'));
    // node ignores the extra argument (sleep would refuse it)
    const idle = (arg: string): ChildProcess => spawn(process.execPath, ['-e', 'setTimeout(() => {}, 30000)', arg], { stdio: 'ignore' });
    const server = idle(`${d}/api.sock`);
    const reader = idle(`${d}/console.log`);
    try {
      // until both have exec'd
      for (let i = 0; i < 200 && [server, reader].some((c) => !readProc(c.pid as number)?.cmdline.includes(d)); i++) await new Promise((r) => setTimeout(r, 10));
      const r = procRef(server.pid);
      assert.ok(r && /^\d+$/.test(r.start));
      assert.equal(readProc(r.pid)?.cmdline.split('\0').at(-2), `${d}/api.sock`);
      assert.equal(procGone(r), false);
      assert.equal(procGone({ ...r, start: String(Number(r.start) + 1) }), true, 'another start time');
      assert.deepEqual(processesServingIn(d), [r.pid], 'a reader of a file in there is not one');
      server.kill('SIGKILL');
      await ended(server);
      assert.equal(procGone(r), true);
    } finally {
      server.kill('SIGKILL');
      reader.kill('SIGKILL');
      await Promise.all([ended(server), ended(reader)]);
      rmSync(d, { recursive: true, force: true });
    }
  });
});

describe('stopLeftover', () => {
  it('asks first; SIGKILLs what is still there after the grace', async () => {
    const polite = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 60000)'], { stdio: 'ignore' });
    const stubborn = spawn(process.execPath, ['-e', 'process.on("SIGTERM", () => {}); console.log("deaf"); setTimeout(() => {}, 60000)'], { stdio: ['ignore', 'pipe', 'ignore'] });
    try {
      const p = procRef(polite.pid);
      const s = procRef(stubborn.pid);
      assert.ok(p && s);
      await new Promise((r) => stubborn.stdout?.once('data', r)); // its SIGTERM handler is in place
      const exited = new Promise((r) => polite.once('exit', (_c, sig) => r(sig)));
      await stopLeftover(p, async () => void polite.kill('SIGTERM'), 300);
      assert.equal(await exited, 'SIGTERM', 'ended when asked');
      const killed = new Promise((r) => stubborn.once('exit', (_c, sig) => r(sig)));
      await stopLeftover(s, async () => void stubborn.kill('SIGTERM'), 300);
      assert.equal(await killed, 'SIGKILL');
      // an ask that never answers is given up on after the grace
      const hung = spawn('sleep', ['30'], { stdio: 'ignore' });
      const h = procRef(hung.pid);
      assert.ok(h);
      const hungExit = new Promise((r) => hung.once('exit', (_c, sig) => r(sig)));
      await stopLeftover(h, () => new Promise(() => undefined), 200);
      assert.equal(await hungExit, 'SIGKILL');
    } finally {
      polite.kill('SIGKILL');
      stubborn.kill('SIGKILL');
      await Promise.all([ended(polite), ended(stubborn)]);
    }
  });
});
