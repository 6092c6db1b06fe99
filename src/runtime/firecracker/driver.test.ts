import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { accessSync, constants, existsSync, readdirSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { requestEndpoint, type InstanceSpec, type LogLine } from '../index.ts';
import { FirecrackerClient } from './api.ts';
import { BASE_BOOT_ARGS, createFirecrackerRuntime, type FirecrackerRuntimeOptions } from './driver.ts';
import { ensureBaseImage, ensureInitramfs } from '../../image/index.ts';
import { probeFirecracker } from '../host.ts';
import { processesServingIn } from '../procfs.ts';
import { jailerArgv, stageIntoJail } from './jailer.ts';
import { linkRecord, netnsNetwork, socketNetwork } from './network.ts';

const FAKE = new URL('./fake-vmm.ts', import.meta.url).pathname;

interface Rec {
  method: string;
  path: string;
  body?: Record<string, unknown>;
  status: number;
  fault?: string;
}

let dir: string;
let codeDir: string;
let rootImage: string;
let kernel: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'fcdrv-'));
  codeDir = join(dir, 'code');
  await mkdir(codeDir);
  await writeFile(join(codeDir, 'handler.js'), 'require("http").createServer((q, s) => s.end("hi")).listen(process.env.PORT);\n');
  rootImage = join(dir, 'root.ext4');
  kernel = join(dir, 'vmlinux');
  await writeFile(rootImage, 'root image');
  await writeFile(kernel, 'kernel');
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

let n = 0;
function setup(extra: Partial<FirecrackerRuntimeOptions> & { fakeArgs?: string[] } = {}) {
  const stateDir = join(dir, `state-${++n}`);
  const record = join(dir, `calls-${n}.ndjson`);
  const { fakeArgs, ...rest } = extra;
  const runtime = createFirecrackerRuntime({
    stateDir,
    agentId: 'agent-test',
    guest: async () => ({ kernel }),
    baseImage: async () => rootImage,
    network: socketNetwork(),
    templateBootTimeoutMs: 20_000,
    vmmCommand: [process.execPath, FAKE, '--guest-http', 'guest.sock', '--record', record, ...(fakeArgs ?? [])],
    ...rest,
  });
  const calls = (): Rec[] =>
    existsSync(record)
      ? readFileSync(record, 'utf8')
          .trim()
          .split('\n')
          .map((l) => JSON.parse(l) as Rec)
      : [];
  return { runtime, stateDir, calls };
}

function spec(id: string, over: Partial<InstanceSpec> = {}): InstanceSpec {
  return {
    instanceId: id,
    owner: { kind: 'function', id: 'fn_1', name: 'hello' },
    artifact: { kind: 'code', dir: codeDir, runtime: 'node', entrypoint: 'handler.js' },
    env: { GREETING: 'sekrit-value-42', DATABASE_URL: 'postgres://u:p@db/x' },
    resources: { memoryMb: 128, vcpu: 1, pidsMax: 64 },
    listen: { port: 8080 },
    ...over,
  };
}

interface GuestView {
  cmdline: string;
  config: { token: string; instance_id: string; env: Record<string, string>; cmd: string[]; cwd: string; seed: string; port: number; net: unknown };
}

/** Every boot_args word is one of the allowed kernel flags: no env, no config. */
function assertCleanBootArgs(bootArgs: string, env: Record<string, string>): void {
  for (const word of bootArgs.split(/\s+/)) {
    const ok = BASE_BOOT_ARGS.split(' ').includes(word) || /^aether\.token=[0-9a-f]{32}$/.test(word) || word === 'aether.config=mmds' || word === 'aether.vmm=firecracker';
    assert.ok(ok, `unexpected boot arg ${word}`);
  }
  for (const [k, v] of Object.entries(env)) {
    assert.ok(!bootArgs.includes(k) && !bootArgs.includes(v), `env ${k} leaked into boot_args`);
  }
}

describe('firecracker driver against the spec-checking fake', () => {
  it('cold start: the full boot sequence is allowed by the spec, config only through MMDS, stop by Ctrl+Alt+Del', async () => {
    const { runtime, stateDir, calls } = setup();
    const s = spec('i-cold-1');
    const inst = await runtime.create(s);
    const lines: string[] = [];
    const stdout: string[] = [];
    inst.onLog((l) => (lines.push(l.text), l.stream === 'stdout' && stdout.push(l.text)));
    await inst.start();
    await inst.waitReady(20_000);
    const res = await requestEndpoint(inst.endpoint, { path: '/hello' });
    assert.equal(res.status, 200);
    const guest = JSON.parse(res.body) as GuestView;
    assert.equal(guest.config.env.GREETING, 'sekrit-value-42');
    assert.equal(guest.config.env.PORT, '8080');
    assert.equal(guest.config.env.AETHER_INSTANCE_ID, 'i-cold-1');
    assert.equal(guest.config.instance_id, 'i-cold-1');
    assert.equal(guest.config.cwd, '/run/aether/code');
    assert.deepEqual(guest.config.cmd, ['node', 'handler.js']);
    assertCleanBootArgs(guest.cmdline, s.env);

    await inst.stop(10_000);
    const exit = await inst.exited;
    assert.equal(exit.code, 0);
    assert.equal(inst.inspect().state, 'exited');

    const rec = calls();
    const bad = rec.filter((r) => r.status >= 300);
    assert.deepEqual(bad, [], 'every call the driver made is allowed by the pinned spec');
    const seq = rec.filter((r) => r.method !== 'GET').map((r) => `${r.method} ${r.path}`);
    assert.deepEqual(seq, [
      'PUT /machine-config', 'PUT /boot-source', 'PUT /drives/rootfs', 'PUT /drives/code',
      'PUT /network-interfaces/eth0', 'PUT /mmds/config', 'PUT /mmds', 'PUT /actions', 'PUT /actions',
    ], 'the logger and metrics were set on its command line: no PUT /logger, no PUT /metrics');
    const boot = rec.find((r) => r.path === '/boot-source')?.body as { boot_args: string };
    assertCleanBootArgs(boot.boot_args, s.env);
    // aether-init then ends the VM by a reboot, which Firecracker exits on (a power-off only halts it)
    assert.match(boot.boot_args, /(^| )aether\.vmm=firecracker( |$)/);
    assert.deepEqual(rec.filter((r) => r.path === '/actions').map((r) => r.body?.action_type), ['InstanceStart', 'SendCtrlAltDel']);
    const code = rec.find((r) => r.path === '/drives/code')?.body as { is_read_only: boolean; path_on_host: string };
    assert.equal(code.is_read_only, true);
    const mmds = rec.find((r) => r.path === '/mmds/config')?.body as { version: string };
    assert.equal(mmds.version, 'V2');
    assert.ok(lines.some((l) => l.includes('AETHER-INIT: exec')), 'serial console reaches the logs');
    // checked after stop: console lines may still be in flight when waitReady returns
    assert.ok(lines.includes('AETHER-INIT READY') && !stdout.includes('AETHER-INIT READY'), 'READY is a system note, not program output');
    // nothing of Firecracker's own reached the console (its logger writes to stdout until configured)
    const vmDir = join(stateDir, 'vms', 'icold1');
    const argv = lines.find((l) => l.startsWith('firecracker: ') && l.includes('--api-sock')) ?? '';
    assert.ok(argv.endsWith(`--log-path ${vmDir}/firecracker.log --level Warning --show-level --metrics-path ${vmDir}/metrics.ndjson`), argv);
    assert.deepEqual(stdout.filter((l) => /Running Firecracker|API server|Listening on API socket|exiting/.test(l)), [], 'no Firecracker line taken for program output');
    assert.deepEqual(readdirSync(join(stateDir, 'vms')), [], 'the VM dir is gone');
  });

  it('stop falls back to SIGTERM when the guest ignores Ctrl+Alt+Del', async () => {
    const { runtime, calls } = setup({ fakeArgs: ['--ignore-ctrl-alt-del'] });
    const inst = await runtime.create(spec('i-stubborn'));
    await inst.start();
    await inst.waitReady(20_000);
    await inst.stop(300);
    const exit = await inst.exited;
    assert.equal(exit.code, 0, 'the fake exits 0 on SIGTERM (Firecracker does the same)');
    assert.ok(calls().some((r) => r.body?.action_type === 'SendCtrlAltDel'));
  });

  it('the program exiting ends the instance and cleans up', async () => {
    const { runtime, stateDir } = setup();
    const inst = await runtime.create(spec('i-exits'));
    const lines: string[] = [];
    inst.onLog((l) => lines.push(l.text));
    await inst.start();
    await inst.waitReady(20_000);
    await requestEndpoint(inst.endpoint, { path: '/__exit' });
    await inst.exited;
    assert.equal(inst.inspect().state, 'exited');
    assert.ok(lines.includes('VM exited (code 0, signal null)') && !lines.includes('reboot: System halted'), `the guest rebooted and Firecracker exited by itself: ${lines.join('\n')}`);
    assert.deepEqual(readdirSync(join(stateDir, 'vms')), []);
  });

  it('a guest that halts after its program exits is ended by the driver', async () => {
    const { runtime, stateDir } = setup({ fakeArgs: ['--halt-on-poweroff'] });
    const inst = await runtime.create(spec('i-halts'));
    const lines: string[] = [];
    inst.onLog((l) => lines.push(l.text));
    await inst.start();
    await inst.waitReady(20_000);
    await requestEndpoint(inst.endpoint, { path: '/__exit' });
    const exit = await inst.exited;
    assert.deepEqual({ code: exit.code, signal: exit.signal }, { code: 0, signal: null }, 'the program status, not the killed VMM');
    assert.ok(lines.includes('reboot: System halted'));
    assert.deepEqual(readdirSync(join(stateDir, 'vms')), []);
  });

  it('without a template (the guest never says READY) instances cold boot', async () => {
    const { runtime, calls } = setup({ fakeArgs: ['--no-ready-line'], templateBootTimeoutMs: 300 });
    const inst = await runtime.create(spec('i-notpl', { version: 'v9' }));
    const lines: string[] = [];
    inst.onLog((l) => lines.push(l.text));
    await inst.start();
    await inst.waitReady(20_000);
    const guest = JSON.parse((await requestEndpoint(inst.endpoint)).body) as GuestView;
    assert.equal(guest.config.instance_id, 'i-notpl');
    assert.ok(lines.some((l) => /no snapshot template .*cold boot/.test(l)), lines.join('\n'));
    const rec = calls();
    assert.equal(rec.filter((r) => r.path === '/snapshot/create' || r.path === '/snapshot/load').length, 0);
    assert.equal(rec.filter((r) => r.body?.action_type === 'InstanceStart').length, 2, 'the template attempt and the cold boot');
    assert.deepEqual(runtime.snapshots?.templates(), []);
    await inst.stop(5000);
  });

  it('close() during a template build ends the template VM and the waiting instance: nothing is left running', async () => {
    const { runtime, stateDir } = setup({ fakeArgs: ['--no-ready-line'], templateBootTimeoutMs: 60_000 });
    const inst = await runtime.create(spec('i-tplwait', { version: 'v-wait' }));
    const started = inst.start().then(() => 'started', (err: Error) => err.message);
    const vms = join(stateDir, 'vms');
    for (let i = 0; i < 500 && !(existsSync(vms) && readdirSync(vms).some((d) => existsSync(join(vms, d, 'api.sock')))); i++) await new Promise((r) => setTimeout(r, 20));
    const tplVm = readdirSync(vms)[0] as string;
    assert.match(tplVm, /^t/, 'the template VM is up, waiting for READY');
    await runtime.close();
    assert.match(await started, /stopped while starting/);
    assert.equal((await inst.exited).reason, 'stopped before start');
    assert.deepEqual(readdirSync(vms), [], 'no VM dir left');
    assert.deepEqual(processesServingIn(join(vms, tplVm)), [], 'no VMM left');
  });

  it('snapshots: a template per version, restored instances get their own identity with the template token', async () => {
    const { runtime, calls } = setup();
    assert.ok(runtime.snapshots);
    const a = await runtime.create(spec('i-snap-a', { version: 'v1' }));
    await a.start();
    await a.waitReady(20_000);
    const b = await runtime.create(spec('i-snap-b', { version: 'v1', env: { GREETING: 'other' } }));
    await b.start();
    await b.waitReady(20_000);
    const ga = JSON.parse((await requestEndpoint(a.endpoint)).body) as GuestView;
    const gb = JSON.parse((await requestEndpoint(b.endpoint)).body) as GuestView;
    assert.equal(ga.config.instance_id, 'i-snap-a');
    assert.equal(gb.config.instance_id, 'i-snap-b');
    assert.equal(gb.config.env.GREETING, 'other');
    assert.equal(ga.config.token, gb.config.token, 'restores reuse the template token');
    assert.notEqual(ga.config.seed, gb.config.seed, 'each restore reseeds');
    assertCleanBootArgs(ga.cmdline, { GREETING: 'sekrit-value-42' });

    const rec = calls();
    assert.deepEqual(rec.filter((r) => r.status >= 300), []);
    assert.equal(rec.filter((r) => r.path === '/snapshot/create').length, 1, 'one template for the version');
    assert.equal(rec.filter((r) => r.path === '/snapshot/load').length, 2);
    assert.equal(rec.filter((r) => r.body?.action_type === 'InstanceStart').length, 1, 'only the template booted');
    const load = rec.find((r) => r.path === '/snapshot/load')?.body as { mem_backend: { backend_type: string }; resume_vm: boolean };
    assert.equal(load.mem_backend.backend_type, 'File');
    assert.equal(load.resume_vm, false);
    const restoreSeq = rec.slice(rec.findIndex((r) => r.path === '/snapshot/load')).filter((r) => r.method !== 'GET').slice(0, 3).map((r) => `${r.method} ${r.path}`);
    assert.deepEqual(restoreSeq, ['PUT /snapshot/load', 'PUT /mmds', 'PATCH /vm']);
    assert.deepEqual(rec.filter((r) => r.path === '/logger' || r.path === '/metrics'), [], 'restored VMs too have their logger and metrics from their command line');

    assert.deepEqual(runtime.snapshots.templates().map((t) => `${t.ownerId}@${t.version}`), ['fn_1@v1']);
    await Promise.all([a.stop(5000), b.stop(5000)]);
    await runtime.snapshots.removeTemplates('fn_1');
    assert.deepEqual(runtime.snapshots.templates(), []);
  });

  it('a failing API call fails start() with AETHER_ERR_VMM and leaves nothing behind', async () => {
    const stateDir = join(dir, 'state-bad');
    // a kernel path that does not exist: Firecracker refuses the boot source
    const gone = join(dir, 'no-kernel');
    const rt = createFirecrackerRuntime({ stateDir, agentId: 'agent-test', guest: async () => ({ kernel: gone }), baseImage: async () => rootImage, network: socketNetwork(), vmmCommand: [process.execPath, FAKE] });
    const bad = await rt.create(spec('i-bad2'));
    await assert.rejects(bad.start(), (err: Error & { code?: string }) => {
      assert.equal(err.code, 'AETHER_ERR_VMM');
      assert.match(err.message, /PUT \/boot-source \(400\): Kernel: cannot open/);
      return true;
    });
    await bad.exited;
    assert.deepEqual(readdirSync(join(stateDir, 'vms')), []);
  });

  it('cleanupLeftovers kills a VMM a crashed agent left without a record (a template VM, an older agent) and removes its dir', async () => {
    const { runtime, stateDir } = setup();
    const vmDir = join(stateDir, 'vms', 'ileft');
    await mkdir(vmDir, { recursive: true });
    // stands in for Firecracker: its argv names the dir's API socket
    const child = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 600000)', '--', '--api-sock', join(vmDir, 'api.sock')], { stdio: 'ignore' });
    const exited = new Promise((r) => child.once('exit', (_c, sig) => r(sig)));
    for (let i = 0; i < 200 && !readProcCmdline(child.pid as number).includes(vmDir); i++) await new Promise((r) => setTimeout(r, 10));
    assert.equal(child.exitCode, null, 'it runs until cleanupLeftovers');
    await runtime.cleanupLeftovers();
    assert.equal(await exited, 'SIGKILL');
    assert.equal(existsSync(vmDir), false);
  });

  it('the VMM runs in its own session with its output in files, and the record says so', async () => {
    const { runtime, stateDir } = setup();
    const inst = await runtime.create(spec('i-files'));
    const lines: string[] = [];
    inst.onLog((l) => lines.push(`${l.stream} ${l.text}`));
    await inst.start();
    const vmDir = join(stateDir, 'vms', 'ifiles');
    const before = JSON.parse(readFileSync(join(vmDir, 'state.json'), 'utf8')) as { ready: boolean };
    assert.equal(before.ready, false, 'written at spawn, not ready yet');
    await inst.waitReady(20_000);
    const rec = JSON.parse(readFileSync(join(vmDir, 'state.json'), 'utf8')) as { ready: boolean; agentId: string; firecracker: { pid: number; start: string }; api: string; endpoint: unknown; files: { console: string; output: string }; spec: { owner: unknown } };
    assert.equal(rec.ready, true);
    assert.equal(rec.agentId, 'agent-test');
    assert.equal(rec.api, join(vmDir, 'api.sock'));
    assert.deepEqual(rec.endpoint, inst.endpoint);
    assert.deepEqual(rec.spec.owner, { kind: 'function', id: 'fn_1', name: 'hello' });
    const pid = inst.inspect().pid as number;
    assert.equal(rec.firecracker.pid, pid);
    // field 6 of /proc/<pid>/stat: its session, which it leads (not the agent's)
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    assert.equal(Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[3]), pid, 'its own session');
    for (const fd of [1, 2]) assert.match(readlinkSync(`/proc/${pid}/fd/${fd}`), new RegExp(`^${vmDir}/`), `fd ${fd} is a file in the VM dir, not a pipe`);
    assert.match(readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' '), new RegExp(`--log-path ${vmDir}/firecracker.log --level Warning --show-level --metrics-path ${vmDir}/metrics.ndjson`));
    const console0 = readFileSync(rec.files.console, 'utf8');
    assert.match(console0, /AETHER-INIT: exec/);
    assert.doesNotMatch(console0, /Running Firecracker|API server|Listening on API socket/, 'the console holds the guest\'s output only');
    await requestEndpoint(inst.endpoint, { path: '/__say/hello%20from%20the%20console' });
    for (let i = 0; i < 100 && !lines.includes('stdout hello from the console'); i++) await new Promise((r) => setTimeout(r, 20));
    assert.ok(lines.includes('stdout hello from the console'), 'the console file is followed');
    assert.ok(lines.some((l) => l.startsWith('system firecracker: fake-vmm: API server started')), `its stderr is a system note: ${lines.join('\n')}`);
    await inst.stop(5000);
    assert.equal(existsSync(vmDir), false);
  });

  it('what Firecracker writes stays bounded on disk: its logger and metrics files (no O_APPEND) are read and freed as they grow, warnings logged once each', async () => {
    const limit = 4096;
    const { runtime, stateDir } = setup({ reclaimBytes: limit });
    const inst = await runtime.create(spec('i-bounded'));
    const lines: LogLine[] = [];
    inst.onLog((l) => lines.push(l));
    await inst.start();
    await inst.waitReady(20_000);
    const vmDir = join(stateDir, 'vms', 'ibounded');
    const metrics = join(vmDir, 'metrics.ndjson');
    const log = join(vmDir, 'firecracker.log');
    const client = new FirecrackerClient(join(vmDir, 'api.sock'));
    const warnings = Array.from({ length: 200 }, (_, i) => `warning ${i} ${'w'.repeat(150)}`);
    try {
      for (let i = 0; i < 250; i++) await client.action('FlushMetrics');
      for (const w of warnings) await requestEndpoint(inst.endpoint, { path: `/__vmm-warn/${encodeURIComponent(w)}` });
      const onDisk = (p: string): number => statSync(p).blocks * 512;
      // what is unread plus one reclaim's worth, plus the partial blocks at either end
      const bound = limit + 2 * 4096;
      const logged = (): string[] => lines.filter((l) => l.stream === 'system' && l.text.includes(':fc_vmm:WARN] warning ')).map((l) => l.text.slice(l.text.indexOf('] ') + 2));
      for (let i = 0; i < 200 && (logged().length < warnings.length || onDisk(metrics) > bound || onDisk(log) > bound); i++) await new Promise((r) => setTimeout(r, 20));
      assert.deepEqual(logged(), warnings, 'each warning once, in order, as a firecracker note');
      for (const p of [metrics, log]) {
        assert.ok(statSync(p).size > 2 * bound, `${p}: written well past the bound (${statSync(p).size} bytes)`);
        assert.ok(onDisk(p) <= bound, `${p}: ${onDisk(p)} bytes on disk, at most ${bound}`);
      }
      // the writer's offset was kept: after the freed blocks (zeros) and the rest of the line they cut, whole lines up to the end
      const buf = readFileSync(metrics);
      const kept = buf.subarray(buf.indexOf(0x0a, buf.lastIndexOf(0)) + 1).toString();
      assert.ok(kept.endsWith('\n') && kept.trim().split('\n').every((l) => typeof (JSON.parse(l) as { utc_timestamp_ms: number }).utc_timestamp_ms === 'number'), kept);
    } finally {
      await client.close();
      await inst.stop(5000);
    }
  });
});

function readProcCmdline(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8');
  } catch {
    return '';
  }
}

describe('firecracker jailer', () => {
  it('builds the jailer argv with the VM netns and a jail-relative API socket', () => {
    const j = jailerArgv({ bin: '/usr/bin/jailer', uid: 900, gid: 900 }, { id: 'abc', firecracker: '/usr/bin/firecracker', netns: '/var/run/netns/aefc_abc' });
    assert.equal(j.root, '/srv/jailer/firecracker/abc/root');
    assert.equal(j.apiSock, '/srv/jailer/firecracker/abc/root/run/firecracker.socket');
    assert.equal(j.apiArg, '/run/firecracker.socket', 'what its command line names (with --id, which the jailer passes on)');
    assert.deepEqual(j.argv.slice(j.argv.indexOf('--netns'), j.argv.indexOf('--netns') + 2), ['--netns', '/var/run/netns/aefc_abc']);
    assert.deepEqual(j.argv.slice(-3), ['--', '--api-sock', '/run/firecracker.socket']);
  });

  it('stages files into the jail root (hard link, owned by the jail user) and returns jail-relative paths', async () => {
    const jailRoot = join(dir, 'jail', 'root');
    const uid = process.getuid?.() ?? 0;
    const gid = process.getgid?.() ?? 0;
    const inJail = await stageIntoJail(jailRoot, kernel, { bin: 'jailer', uid, gid });
    assert.equal(inJail, '/vmlinux');
    assert.equal(statSync(join(jailRoot, 'vmlinux')).ino, statSync(kernel).ino, 'a hard link, not a copy');
    assert.equal(await stageIntoJail(jailRoot, kernel, { bin: 'jailer', uid, gid }), '/vmlinux', 'staging twice is fine');
  });

  it('names the logger and metrics files jail-relative on the command line, linked into the jail before the jailer runs', async () => {
    const base = join(dir, 'jails');
    await mkdir(base, { recursive: true });
    const uid = process.getuid?.() ?? 0;
    const gid = process.getgid?.() ?? 0;
    const stub = join(dir, 'jailer-stub.sh');
    const { runtime, stateDir } = setup({ jailer: { bin: stub, uid, gid, chrootBase: base }, firecracker: '/opt/fc/firecracker' });
    const seen = join(dir, 'jailer-saw');
    // stands in for the jailer: records its argv and the files (with inodes) of the jail and the VM dir when it ran, then fails
    await writeFile(stub, `#!/bin/sh\nprintf '%s\\n' "$@" > '${seen}.argv'\nfind '${base}' '${stateDir}' -type f -printf '%p %i\\n' > '${seen}.files'\nexit 1\n`, { mode: 0o755 });
    const inst = await runtime.create(spec('i-jailed'));
    await assert.rejects(inst.start(), /exited before its API socket was up/);
    const argv = readFileSync(`${seen}.argv`, 'utf8').trim().split('\n');
    assert.deepEqual(argv.slice(argv.indexOf('--')), ['--', '--api-sock', '/run/firecracker.socket', '--log-path', '/firecracker.log', '--level', 'Warning', '--show-level', '--metrics-path', '/metrics.ndjson']);
    const ino = new Map(readFileSync(`${seen}.files`, 'utf8').trim().split('\n').map((l) => l.split(' ') as [string, string]));
    const root = join(base, 'firecracker', 'ijailed', 'root');
    assert.deepEqual([...ino.keys()].filter((p) => p.startsWith(base)).sort(), [join(root, 'firecracker.log'), join(root, 'metrics.ndjson')], 'both in the jail root already, nothing else');
    for (const f of ['firecracker.log', 'metrics.ndjson']) assert.equal(ino.get(join(root, f)), ino.get(join(stateDir, 'vms', 'ijailed', f)), `${f}: the VM dir's file (the one the agent follows), hard-linked`);
    assert.deepEqual(readdirSync(join(stateDir, 'vms')), []);
    assert.deepEqual(readdirSync(join(base, 'firecracker')), [], 'the jail is removed with the VM');
  });
});

describe('firecracker network namespace (root + iproute2)', () => {
  const root = process.getuid?.() === 0;
  it('attach makes a TAP in a fresh netns; the forwarder publishes the guest port; detach removes it all', async (t) => {
    if (!root) return t.skip('needs root to create network namespaces');
    try {
      execFileSync('ip', ['-V']);
    } catch {
      return t.skip('no iproute2');
    }
    const net = netnsNetwork();
    const vmDir = join(dir, 'netvm');
    await mkdir(vmDir, { recursive: true });
    const link = await net.attach('nettest1', vmDir);
    const ns = link.netns as string;
    try {
      const links = execFileSync('ip', ['-n', ns, '-o', 'link', 'show', 'tap0'], { encoding: 'utf8' });
      assert.match(links, /tap0/);
      assert.throws(() => execFileSync('ip', ['-o', 'link', 'show', 'tap0'], { stdio: 'pipe' }), 'no TAP in the host namespace');
      // stand in for the guest: its address on the namespace's loopback, a server on its port
      execFileSync('ip', ['-n', ns, 'addr', 'add', '10.0.2.15/32', 'dev', 'lo']);
      const guest = spawn('ip', ['netns', 'exec', ns, process.execPath, '-e', 'require("http").createServer((q,s)=>s.end("from guest")).listen(8080,"10.0.2.15")'], { stdio: 'ignore' });
      try {
        const exposed = await link.expose(8080);
        for (let i = 0; i < 500 && !exposed.ready(); i++) await new Promise((r) => setTimeout(r, 20));
        assert.ok(exposed.ready());
        assert.equal((await requestEndpoint(exposed.endpoint)).body, 'from guest');
        // the forwarder does not depend on the agent: its own session, its output in a file
        const fwd = exposed.forwarder;
        assert.ok(fwd && exposed.output);
        const stat = readFileSync(`/proc/${fwd.pid}/stat`, 'utf8');
        assert.equal(Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[3]), fwd.pid, 'its own session');
        assert.equal(readlinkSync(`/proc/${fwd.pid}/fd/1`), exposed.output);
        assert.match(readFileSync(exposed.output, 'utf8'), /^ready$/m);
        // a restarted agent takes it over from the record: same endpoint, nothing created
        const rec = linkRecord(link, exposed, 8080);
        assert.equal(net.intact(rec, exposed.endpoint), true);
        assert.equal(net.intact({ ...rec, forwarder: { ...fwd, start: String(Number(fwd.start) + 1) } }, exposed.endpoint), false, 'a reused pid is not the forwarder');
        const adopted = net.adopt(rec, exposed.endpoint);
        assert.equal(adopted.link.netns, ns);
        assert.ok(adopted.exposed.ready());
        assert.equal((await requestEndpoint(adopted.exposed.endpoint)).body, 'from guest');
        await adopted.exposed.close();
        for (let i = 0; i < 100 && net.intact(rec, exposed.endpoint); i++) await new Promise((r) => setTimeout(r, 20));
        assert.equal(net.intact(rec, exposed.endpoint), false, 'closing the adopted endpoint ends the forwarder');
      } finally {
        guest.kill('SIGKILL');
      }
    } finally {
      await link.detach();
    }
    assert.doesNotMatch(execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' }), new RegExp(ns));
  });

  it('cleanupLeftovers removes the namespaces of the named VMs only', async (t) => {
    if (!root) return t.skip('needs root to create network namespaces');
    const net = netnsNetwork();
    const mine = await net.attach('nettestleft', join(dir, 'left'));
    const other = await net.attach('nettestother', join(dir, 'other'));
    try {
      await net.cleanupLeftovers(['nettestleft']);
      const list = execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' });
      assert.doesNotMatch(list, new RegExp(mine.netns as string));
      assert.match(list, new RegExp(other.netns as string), "another agent's VM keeps its namespace");
    } finally {
      await mine.detach();
      await other.detach();
    }
  });
});

describe('real Firecracker', () => {
  it('boots a node function in a microVM: env only through MMDS, not on the kernel command line (needs KVM, the binary, root, an ELF kernel)', { timeout: 600_000 }, async (t) => {
    let kvm = false;
    try {
      accessSync('/dev/kvm', constants.R_OK | constants.W_OK);
      kvm = /\b(vmx|svm)\b/.test(readFileSync('/proc/cpuinfo', 'utf8'));
    } catch {
      // no KVM
    }
    const probe = probeFirecracker({ kvm, root: process.getuid?.() === 0 });
    if (!probe.ok) return t.skip(`${probe.detail}: Firecracker cannot boot here; the driver is exercised against fake-vmm.ts above`);
    const code = join(dir, 'real-code');
    await mkdir(code, { recursive: true });
    await writeFile(join(code, 'handler.js'), `require('http').createServer((q, s) => s.end(JSON.stringify({ release: require('os').release(), greeting: process.env.GREETING, cmdline: require('fs').readFileSync('/proc/cmdline', 'utf8') }))).listen(process.env.PORT);\n`);
    const runtime = createFirecrackerRuntime({
      stateDir: join(dir, 'real-state'),
      agentId: 'agent-real',
      firecracker: process.env.AETHER_FIRECRACKER ?? 'firecracker',
      guest: async () => ({ kernel: (process.env.AETHER_FC_KERNEL ?? process.env.AETHER_GUEST_KERNEL) as string, initrd: (await ensureInitramfs()).path }),
      baseImage: (k) => ensureBaseImage(k),
      snapshots: false,
    });
    const inst = await runtime.create(spec('i-real-1', { artifact: { kind: 'code', dir: code, runtime: 'node', entrypoint: 'handler.js' } }));
    try {
      await inst.start();
      await inst.waitReady(300_000);
      const got = JSON.parse((await requestEndpoint(inst.endpoint)).body) as { release: string; greeting: string; cmdline: string };
      assert.equal(got.greeting, 'sekrit-value-42');
      assert.ok(!got.cmdline.includes('sekrit-value-42'), 'env is not on the guest kernel command line');
      assert.match(got.cmdline, /aether\.config=mmds/);
    } finally {
      await inst.stop(10_000);
      await runtime.close();
    }
  });
});
