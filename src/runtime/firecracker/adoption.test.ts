/**
 * Firecracker VMs outlive a killed agent and the next one adopts them, against the spec-checking
 * fake VMM (a real process serving the API on a unix socket). The first agent is a real process
 * too: it starts VMs and is SIGKILLed; the test is the restarted agent (same agent id and state
 * dir), which lists, adopts, and stops what it does not take.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { silentLogger } from '../../core/index.ts';
import { requestEndpoint, type InstanceSpec, type LogLine, type RuntimeInstance } from '../index.ts';
import { procGone, processesServingIn, procRef, signalPid } from '../procfs.ts';
import { writeVmRecord } from '../vmstate.ts';
import { FirecrackerClient } from './api.ts';
import { createFirecrackerRuntime, type FirecrackerRuntime } from './driver.ts';
import { socketNetwork } from './network.ts';
import { readFcState, type FcState } from './state.ts';

const FAKE = new URL('./fake-vmm.ts', import.meta.url).pathname;
const DRIVER = new URL('./driver.ts', import.meta.url).href;
const NETWORK = new URL('./network.ts', import.meta.url).href;
const AGENT = 'agent-a';

/**
 * The first agent: starts the VMs (waiting until ready, and until it has read the guest's last boot
 * line, unless `notReady`), says so, then idles until killed.
 */
const AGENT_SCRIPT = `
import { createFirecrackerRuntime } from ${JSON.stringify(DRIVER)};
import { socketNetwork } from ${JSON.stringify(NETWORK)};
const c = JSON.parse(process.env.FC_AGENT);
const rt = createFirecrackerRuntime({ stateDir: c.stateDir, agentId: c.agentId, guest: async () => ({ kernel: c.kernel }), baseImage: async () => c.root, network: socketNetwork(), vmmCommand: c.vmm });
for (const s of c.specs) {
  const inst = await rt.create(s);
  const read = new Promise((r) => inst.onLog((l) => l.text.startsWith('program listening') && r()));
  await inst.start();
  if (!c.notReady.includes(s.instanceId)) await Promise.all([inst.waitReady(20000), read]);
}
process.stdout.write('started\\n');
setInterval(() => {}, 1 << 30);
`;

let dir: string;
let stateDir: string;
let codeDir: string;
let kernel: string;
let root: string;
let record: string;

function spec(id: string): InstanceSpec {
  return {
    instanceId: id,
    owner: { kind: 'service', id: 'svc_1', name: 'web' },
    artifact: { kind: 'code', dir: codeDir, runtime: 'node', entrypoint: 'handler.js' },
    env: { GREETING: 'hi' },
    resources: { memoryMb: 128, vcpu: 1, pidsMax: 64 },
    listen: { port: 8080 },
    version: 'cfg-1',
  };
}

function runtime(agentId = AGENT): FirecrackerRuntime {
  return createFirecrackerRuntime({
    stateDir,
    agentId,
    guest: async () => ({ kernel }),
    baseImage: async () => root,
    network: socketNetwork(),
    vmmCommand: [process.execPath, FAKE, '--guest-http', 'guest.sock', '--record', record],
    logger: silentLogger(),
  });
}

/** Run the first agent until its VMs are up, then SIGKILL it. */
async function crashedAgent(ids: string[], notReady: string[]): Promise<void> {
  const env = { ...process.env, FC_AGENT: JSON.stringify({ stateDir, agentId: AGENT, kernel, root, vmm: [process.execPath, FAKE, '--guest-http', 'guest.sock', '--record', record], specs: ids.map(spec), notReady }) };
  const agent: ChildProcess = spawn(process.execPath, ['--input-type=module', '-e', AGENT_SCRIPT], { env, stdio: ['ignore', 'pipe', 'inherit'] });
  const exited = new Promise((r) => agent.once('exit', r));
  try {
    await new Promise<void>((resolve, reject) => {
      agent.stdout?.setEncoding('utf8').on('data', (d: string) => d.includes('started') && resolve());
      agent.once('exit', (code) => reject(new Error(`the first agent exited (${code}) before starting its VMs`)));
    });
  } finally {
    agent.kill('SIGKILL');
    await exited;
  }
}

const vmDir = (vmId: string): string => join(stateDir, 'vms', vmId);
const rec = (vmId: string): FcState => {
  const r = readFcState(vmDir(vmId), vmId);
  assert.ok(r, `a record for ${vmId}`);
  return r;
};

async function eventually(what: string, ok: () => boolean, ms = 5000): Promise<void> {
  for (let t = 0; t < ms && !ok(); t += 20) await new Promise((r) => setTimeout(r, 20));
  assert.ok(ok(), what);
}

/** A copy of `from`'s record as another VM's dir (its vmId and instance id changed), edited by `edit`. */
function forged(from: string, vmId: string, edit: (r: FcState) => FcState): void {
  const r = rec(from);
  mkdirSync(vmDir(vmId), { recursive: true });
  writeVmRecord(vmDir(vmId), edit({ ...r, vmId, spec: { ...r.spec, instanceId: vmId } }));
}

describe('firecracker adoption (fake VMM)', () => {
  let rt: FirecrackerRuntime;
  /** A live process that is not a VMM, whose pid a forged record names (a reused pid). */
  let stranger: ChildProcess;
  const adopted = new Map<string, RuntimeInstance>();
  const logs = new Map<string, LogLine[]>();
  const initial: Record<string, FcState> = {};

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'fc-adopt-'));
    stateDir = join(dir, 'state');
    codeDir = join(dir, 'code');
    await mkdir(codeDir);
    await writeFile(join(codeDir, 'handler.js'), 'require("http").createServer((q, s) => s.end("hi")).listen(process.env.PORT);\n');
    kernel = join(dir, 'vmlinux');
    root = join(dir, 'root.ext4');
    record = join(dir, 'calls.ndjson');
    await writeFile(kernel, 'kernel');
    await writeFile(root, 'root');
    await crashedAgent(['keep', 'exits', 'killed', 'paused', 'notready', 'other'], ['notready']);
    for (const id of ['keep', 'exits', 'killed', 'paused', 'notready', 'other']) initial[id] = rec(id);
    // another agent's VM on this data dir; a VM whose pid now names another process
    writeVmRecord(vmDir('other'), { ...rec('other'), agentId: 'agent-b' });
    forged('keep', 'restarted', (r) => ({ ...r, firecracker: { ...r.firecracker, start: String(Number(r.firecracker.start) + 1) } }));
    stranger = spawn('sleep', ['600'], { stdio: 'ignore' });
    const ref = procRef(stranger.pid);
    assert.ok(ref);
    forged('keep', 'reused', (r) => ({ ...r, firecracker: ref }));
    await new FirecrackerClient(rec('paused').api).pause();
    rt = runtime();
  });

  after(async () => {
    await rt?.close();
    stranger?.kill('SIGKILL');
    // whatever a failed assertion left running
    for (const vmId of existsSync(join(stateDir, 'vms')) ? readdirSync(join(stateDir, 'vms')) : []) for (const pid of processesServingIn(vmDir(vmId))) signalPid(pid, 'SIGKILL');
    await rm(dir, { recursive: true, force: true });
  });

  it('a killed agent leaves its VMs running, each with a complete record', () => {
    for (const [id, r] of Object.entries(initial)) {
      assert.equal(procGone(r.firecracker), false, `${id}: its Firecracker lives on`);
      assert.equal(r.agentId, AGENT);
      assert.equal(r.spec.instanceId, id);
      assert.equal(r.spec.version, 'cfg-1');
      assert.equal(r.ready, id !== 'notready', `${id}: ready once it listened`);
      assert.ok(r.files.console.startsWith(vmDir(id)) && existsSync(r.files.console));
    }
  });

  it('lists only ready VMs of this agent whose Firecracker is still the recorded one', async () => {
    const listed = await rt.adoption.list();
    assert.deepEqual(listed.map((l) => l.spec.instanceId).sort(), ['exits', 'keep', 'killed', 'paused'], 'not: mid-boot, another agent, another start time, a reused pid');
    const keep = listed.find((l) => l.spec.instanceId === 'keep');
    assert.deepEqual(keep?.endpoint, initial['keep']?.endpoint);
    assert.equal(keep?.startedAt, initial['keep']?.startedAt);
    assert.deepEqual(await runtime('agent-b').adoption.list().then((l) => l.map((x) => x.spec.instanceId)), ['other'], 'the other agent would take its own');
    await assert.rejects(rt.adoption.adopt('notready'), /no live VM notready/);
  });

  it('adopts: the same VMM and endpoint, running; output written while no agent ran is logged once, what the dead agent read is not replayed', async () => {
    // the program prints while no agent runs: the console file takes it
    const keepEndpoint = initial['keep']?.endpoint as RuntimeInstance['endpoint'];
    for (const text of ['while no agent ran', 'and more']) assert.equal((await requestEndpoint(keepEndpoint, { path: `/__say/${encodeURIComponent(text)}` })).status, 200);
    // and Firecracker logs a warning (its logger's file)
    assert.equal((await requestEndpoint(keepEndpoint, { path: '/__vmm-warn/a%20warning%20meanwhile' })).status, 200);
    for (const id of ['keep', 'exits', 'killed', 'paused']) {
      const inst = await rt.adoption.adopt(id);
      const lines: LogLine[] = [];
      inst.onLog((l) => lines.push(l));
      adopted.set(id, inst);
      logs.set(id, lines);
    }
    const keep = adopted.get('keep') as RuntimeInstance;
    assert.equal(keep.inspect().state, 'running');
    assert.equal(keep.inspect().pid, initial['keep']?.firecracker.pid);
    assert.deepEqual(keep.endpoint, initial['keep']?.endpoint);
    await keep.waitReady(1000);
    assert.equal(JSON.parse((await requestEndpoint(keep.endpoint)).body).config.instance_id, 'keep');
    await requestEndpoint(keep.endpoint, { path: '/__say/after%20adoption' });
    const lines = logs.get('keep') as LogLine[];
    await eventually('the new line reaches the logs', () => lines.some((l) => l.stream === 'stdout' && l.text === 'after adoption'));
    const stdout = lines.filter((l) => l.stream === 'stdout').map((l) => l.text);
    assert.deepEqual(stdout, ['while no agent ran', 'and more', 'after adoption'], 'the gap once, in order; nothing the dead agent had read');
    // Firecracker's logger file is followed on its own: its line may land after the console's
    const warned = (): LogLine[] => lines.filter((l) => l.stream === 'system' && /^firecracker: .*:WARN\] a warning meanwhile$/.test(l.text));
    await eventually('the warning reaches the logs', () => warned().length > 0);
    assert.equal(warned().length, 1, 'its log too');
    assert.ok(!lines.some((l) => l.text.includes('AETHER-INIT: exec')), 'what the dead agent read is not replayed');
    assert.deepEqual((await rt.adoption.list()).map((l) => l.spec.instanceId).sort(), [], 'adopted ones are no longer offered');
    await assert.rejects(rt.adoption.adopt('keep'), /no live VM keep/);
  });

  it('a paused VM is resumed on adoption', async () => {
    const info = await new FirecrackerClient(rec('paused').api).describe();
    assert.equal(info.state, 'Running');
    const calls = readFileSync(record, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { method: string; path: string; body?: { state?: string }; status: number });
    assert.ok(calls.some((c) => c.method === 'PATCH' && c.path === '/vm' && c.body?.state === 'Resumed' && c.status === 204));
    assert.deepEqual(calls.filter((c) => c.status >= 300), [], 'every call allowed by the spec');
  });

  it("an adopted VM's end is noticed: the program's status when the guest said it, else unknown", async () => {
    const exits = adopted.get('exits') as RuntimeInstance;
    await requestEndpoint(exits.endpoint, { path: '/__exit' });
    assert.deepEqual(await exits.exited, { code: 0, signal: null });
    assert.equal(existsSync(vmDir('exits')), false, 'its dir is removed');

    const killed = adopted.get('killed') as RuntimeInstance;
    signalPid(initial['killed']?.firecracker.pid as number, 'SIGKILL');
    const info = await killed.exited;
    assert.equal(info.code, null);
    assert.match(info.reason ?? '', /status unknown: adopted instance/);
    assert.equal(killed.inspect().state, 'exited');
    assert.equal(existsSync(vmDir('killed')), false);
  });

  it('cleanupLeftovers stops every VM nobody adopted and removes its dir; adopted VMs and a reused pid are left alone', async () => {
    await rt.cleanupLeftovers();
    for (const id of ['notready', 'other']) {
      assert.equal(procGone(initial[id]?.firecracker as FcState['firecracker']), true, `${id}: stopped`);
      assert.equal(existsSync(vmDir(id)), false, `${id}: dir removed`);
    }
    for (const id of ['restarted', 'reused']) assert.equal(existsSync(vmDir(id)), false, `${id}: dir removed`);
    assert.equal(stranger.exitCode === null && stranger.signalCode === null, true, 'the process that reused a pid is not signalled');
    const calls = readFileSync(record, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { body?: { action_type?: string } });
    assert.ok(calls.filter((c) => c.body?.action_type === 'SendCtrlAltDel').length >= 2, 'asked to end first');
    assert.deepEqual(readdirSync(join(stateDir, 'vms')).sort(), ['keep', 'paused']);
    assert.equal(procGone(initial['keep']?.firecracker as FcState['firecracker']), false);
    assert.equal((await requestEndpoint((adopted.get('keep') as RuntimeInstance).endpoint)).status, 200);
  });

  it('a clean stop of the agent stops adopted VMs too', async () => {
    await rt.close();
    for (const id of ['keep', 'paused']) {
      assert.equal(procGone(initial[id]?.firecracker as FcState['firecracker']), true, `${id}: stopped`);
      assert.equal(existsSync(vmDir(id)), false);
    }
    assert.deepEqual(await (adopted.get('keep') as RuntimeInstance).exited, { code: null, signal: null }, 'stopped on request: no "unknown status" reason');
  });
});
