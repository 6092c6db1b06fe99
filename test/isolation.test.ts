// Proves each isolation claim of the process runtime's namespaces mode from inside a function.
import assert from 'node:assert/strict';
import { tmpdir } from 'node:os';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import { networkInterfaces } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { silentLogger } from '../src/core/index.ts';
import { contractSpec, requestEndpoint, type InstanceSpec, type Runtime, type RuntimeInstance } from '../src/runtime/index.ts';
import { createProcessRuntime } from '../src/runtime/process/index.ts';
import { hostLinks } from '../src/runtime/process/veth.ts';
import { inTestNetns, sandboxNetwork } from './support/netns.ts';

const FIXTURES = join(fileURLToPath(new URL('.', import.meta.url)), 'fixtures', 'runtime');
const skip = process.getuid?.() !== 0 ? 'not root: the namespaces sandbox needs root (cgroups, namespaces, uid switch)' : false;
const CG = '/sys/fs/cgroup';

interface FsResult {
  ok: boolean;
  code?: string;
  value?: unknown;
}
interface Probe {
  uid: number;
  gid: number;
  groups: number[];
  readOwnCode: FsResult;
  writeCode: FsResult;
  readOtherCode: FsResult;
  listOtherCode: FsResult;
  readToken: FsResult;
  readPublic: FsResult;
  listData: FsResult;
  listParent: FsResult;
  hostTmpMarker: FsResult;
  writeTmp: FsResult;
  procs: string[];
  routes: FsResult;
  connect: Record<string, FsResult>;
}

function listen(server: Server, host: string): Promise<number> {
  return new Promise((res) => {
    server.listen(0, host, () => {
      const a = server.address();
      res(typeof a === 'object' && a ? a.port : 0);
    });
  });
}

/** Running (a zombie is dead: it only waits for its new parent, PID 1, to reap it). */
const alive = (pid: number): boolean => {
  try {
    return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
};

function describeProc(pid: number): string {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8').split('\n').filter((l) => /^(State|PPid|Uid)/.test(l)).join(' ');
    return `${readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ')} [${status}]`;
  } catch {
    return '(gone)';
  }
}

async function until(cond: () => boolean, ms: number): Promise<boolean> {
  for (let t = 0; t < ms && !cond(); t += 20) await new Promise((r) => setTimeout(r, 20));
  return cond();
}

describe('process runtime isolation (namespaces+cgroups)', { skip }, () => {
  // not under /tmp: the private /tmp would hide it anyway and prove nothing about the data dir
  const base = join(process.cwd(), '.aether');
  let dataDir: string;
  let runtime: Runtime;
  const agentId = `iso-${process.pid}`;
  let n = 0;
  const hostServers: Server[] = [];
  let portLo = 0;
  let portAny = 0;
  const tmpMarker = `/tmp/aether-iso-marker-${process.pid}`;

  before(async () => {
    await mkdir(base, { recursive: true });
    dataDir = await mkdtemp(join(base, 'iso-'));
    await writeFile(join(dataDir, 'admin.token'), 'secret-admin-token', { mode: 0o600 });
    await writeFile(join(dataDir, 'public.txt'), 'world-readable but hidden', { mode: 0o644 });
    writeFileSync(tmpMarker, 'host tmp');
    runtime = createProcessRuntime({ dataDir, agentId, isolation: 'namespaces', network: sandboxNetwork, logger: silentLogger() });
    const lo = createServer((_q, s) => s.end('host'));
    const any = createServer((_q, s) => s.end('host'));
    hostServers.push(lo, any);
    portLo = await listen(lo, '127.0.0.1');
    portAny = await listen(any, '0.0.0.0');
  });
  after(async () => {
    await runtime.close();
    for (const s of hostServers) s.close();
    await rm(dataDir, { recursive: true, force: true });
    await rm(tmpMarker, { force: true });
  });

  /** A code dir under the data dir (like the agent's code cache) with the given fixture files. */
  function codeDir(name: string, files: Record<string, string>): string {
    const dir = join(dataDir, 'code', `${name}-${n++}`);
    mkdirSync(dir, { recursive: true, mode: 0o755 });
    for (const [f, text] of Object.entries(files)) writeFileSync(join(dir, f), text, { mode: 0o644 });
    return dir;
  }

  function spec(dir: string, entrypoint: string, over: { env?: Record<string, string>; memoryMb?: number; pidsMax?: number; runtime?: 'node' | 'python' } = {}): InstanceSpec {
    const id = `i${n++}`;
    return contractSpec({
      instanceId: id,
      owner: { kind: 'function', id: `f-${id}`, name: 'iso' },
      artifact: { kind: 'code', dir, runtime: over.runtime ?? 'node', entrypoint },
      env: over.env ?? {},
      resources: { memoryMb: over.memoryMb ?? 128, vcpu: 1, pidsMax: over.pidsMax ?? 32 },
    });
  }

  async function runProbe(dir: string, probeCfg: object): Promise<{ inst: RuntimeInstance; probe: Probe }> {
    const inst = await runtime.create(spec(dir, 'probe.js', { env: { PROBE: JSON.stringify(probeCfg) } }));
    await inst.start();
    await inst.waitReady(20_000);
    const res = await requestEndpoint(inst.endpoint);
    assert.equal(res.status, 200);
    return { inst, probe: JSON.parse(res.body) as Probe };
  }

  const probeSrc = readFileSync(join(FIXTURES, 'probe.js'), 'utf8');

  it('hides other code and the data dir, keeps code read-only, runs unprivileged, private /tmp, no network, own pid namespace', async () => {
    const other = codeDir('other', { 'probe.js': probeSrc, 'secret.js': 'module.exports = "other function secret";' });
    const mine = codeDir('mine', { 'probe.js': probeSrc });
    const hostIp = Object.values(networkInterfaces()).flat().find((a) => a && a.family === 'IPv4' && !a.internal)?.address;
    const connect: Record<string, [string, number]> = {
      hostLoopback: ['127.0.0.1', portLo],
      hostAnyViaLoopback: ['127.0.0.1', portAny],
      hostAny: ['0.0.0.0', portAny],
      ownPort: ['127.0.0.1', 8080], // positive control: the instance's own server
    };
    if (hostIp) connect['hostIp'] = [hostIp, portAny];
    const cfg = {
      otherCodeFile: join(other, 'secret.js'),
      otherCodeDir: other,
      tokenFile: join(dataDir, 'admin.token'),
      publicFile: join(dataDir, 'public.txt'),
      dataDir,
      tmpMarker,
      connect,
    };
    const b = await runProbe(other, cfg);
    const a = await runProbe(mine, cfg);
    const p = a.probe;

    assert.ok(p.uid >= 200_000, `unprivileged uid, got ${p.uid}`);
    assert.equal(p.gid, p.uid);
    assert.deepEqual(p.groups.filter((g) => g !== p.gid), []);

    assert.equal(p.readOwnCode.ok, true, 'positive control: its own code is readable');
    assert.equal(p.writeCode.ok, false);
    assert.match(p.writeCode.code ?? '', /EROFS|EACCES/);

    assert.equal(p.readOtherCode.ok, false, "another function's code must not be readable");
    assert.equal(p.listOtherCode.ok, false);
    assert.equal(p.readToken.ok, false, 'the admin token must not be readable');
    assert.equal(p.readPublic.code, 'ENOENT', 'the data dir is hidden, not just protected by permissions');
    // Hidden: an empty tmpfs, or gone entirely when the checkout (and so the data dir) is under /tmp.
    assert.ok(!p.listData.ok || !(p.listData.value as string[]).some((f) => f === 'admin.token' || f === 'public.txt' || f === 'sockets'), JSON.stringify(p.listData));
    assert.deepEqual(p.listParent.value, ['code'], 'the parent of the code dir shows only its own code dir');

    assert.equal(p.hostTmpMarker.code, 'ENOENT', "the host's /tmp is not visible");
    assert.equal(p.writeTmp.ok, true, 'a private writable /tmp');

    assert.equal(p.connect['ownPort']?.ok, true, 'positive control: loopback inside the sandbox works');
    for (const name of ['hostLoopback', 'hostAnyViaLoopback', 'hostAny', 'hostIp']) {
      if (!connect[name]) continue;
      assert.equal(p.connect[name]?.ok, false, `${name} must not be reachable (${JSON.stringify(p.connect[name])})`);
    }

    // only its own processes: the launcher (whose args name its code dir) and the program,
    // nothing of instance B (or of the host)
    assert.ok(p.procs.length >= 2 && p.procs.length <= 3, JSON.stringify(p.procs));
    assert.ok(p.procs.some((c) => c.includes(mine)) && !p.procs.some((c) => c.includes(other)), JSON.stringify(p.procs));
    assert.ok(b.probe.procs.some((c) => c.includes(other)) && !b.probe.procs.some((c) => c.includes(mine)), JSON.stringify(b.probe.procs));
    assert.ok(p.procs.every((c) => c === '' || c.includes('launch.pl') || c.includes('probe.js')), JSON.stringify(p.procs));

    await a.inst.stop();
    await b.inst.stop();
  });

  it('veth network: the platform reaches the instance; the instance reaches no host port (host side, loopback, any address) and no other instance', { skip: inTestNetns ? false : 'not inside the test network namespace (scripts/in-netns): no veth network' }, async () => {
    const dir = codeDir('veth', { 'probe.js': probeSrc });
    const other = await runtime.create(spec(dir, 'probe.js', { env: { PROBE: '{}' } }));
    await other.start();
    await other.waitReady(20_000);
    const inst = await runtime.create(spec(dir, 'probe.js', { env: { PROBE: '{}' } }));
    await inst.start();
    await inst.waitReady(20_000);
    const [e, o] = [inst.endpoint, other.endpoint];
    assert.ok(e.kind === 'tcp' && o.kind === 'tcp', `tcp endpoints: ${JSON.stringify([e, o])}`);
    assert.match(e.host, /^10\.213\.\d+\.\d+$/);
    assert.notEqual(e.host, o.host);
    const hostSide = (a: string): string => a.replace(/\d+$/, (d) => String(Number(d) - 1));
    // a server bound to the instance's host-side address itself, and the platform-like ones from before
    const onHostSide = createServer((_q, s) => s.end('host'));
    hostServers.push(onHostSide);
    const portHostSide = await listen(onHostSide, hostSide(e.host));
    const connect: Record<string, [string, number]> = {
      ownPort: ['127.0.0.1', e.port], // positive controls: its own server, on loopback and on its address
      ownAddress: [e.host, e.port],
      hostSideBound: [hostSide(e.host), portHostSide],
      hostSideAny: [hostSide(e.host), portAny],
      hostSideLoopbackServer: [hostSide(e.host), portLo],
      hostLoopback: ['127.0.0.1', portLo],
      otherInstance: [o.host, o.port],
      otherHostSide: [hostSide(o.host), portAny],
    };
    const res = await requestEndpoint(e, { path: `/?connect=${encodeURIComponent(JSON.stringify(connect))}` });
    assert.equal(res.status, 200, 'the platform reaches the instance at its address');
    const p = JSON.parse(res.body) as Probe;
    assert.match(spawnSync('nft', ['list', 'table', 'inet', 'aether'], { encoding: 'utf8' }).stdout, /iifname "ae\*" ct state established,related accept/, "the host's sandbox table is installed");
    assert.equal(p.connect['ownPort']?.ok, true, JSON.stringify(p.connect));
    assert.equal(p.connect['ownAddress']?.ok, true, JSON.stringify(p.connect));
    for (const name of ['hostSideBound', 'hostSideAny', 'hostSideLoopbackServer', 'hostLoopback', 'otherInstance', 'otherHostSide']) {
      assert.equal(p.connect[name]?.ok, false, `${name} must not be reachable (${JSON.stringify(p.connect[name])})`);
    }
    // no default route: only its own /30 (destination 00000000 would be a default route)
    const routes = String(p.routes.value ?? '').trim().split('\n').slice(1);
    assert.equal(routes.length, 1, String(p.routes.value));
    assert.doesNotMatch(routes[0] ?? '', /^\S+\s+00000000\s/);
    // and the host still reaches the other instance (the rules are per direction)
    assert.equal((await requestEndpoint(o)).status, 200);
    await inst.stop();
    await other.stop();
  });

  it("hides sibling functions' code when the code cache is outside the data dir", async () => {
    const cache = await mkdtemp(join(base, 'cache-'));
    try {
      const mk = (name: string): string => {
        const d = join(cache, name);
        mkdirSync(d, { mode: 0o755 });
        writeFileSync(join(d, 'probe.js'), probeSrc, { mode: 0o644 });
        return d;
      };
      const x = mk('fn-x');
      const y = mk('fn-y');
      const { inst, probe } = await runProbe(x, { otherCodeFile: join(y, 'probe.js'), otherCodeDir: y, dataDir, connect: {} });
      assert.equal(probe.readOwnCode.ok, true);
      assert.equal(probe.readOtherCode.code, 'ENOENT');
      assert.equal(probe.listOtherCode.code, 'ENOENT');
      await inst.stop();
    } finally {
      await rm(cache, { recursive: true, force: true });
    }
  });

  it('refuses what the seccomp filter denies (user namespaces, AF_VSOCK, keyctl, bpf, ...); normal programs still work', async () => {
    const x64 = process.arch === 'x64';
    // syscall numbers for the probe (x86_64 / arm64)
    const nr = x64
      ? { keyctl: 250, add_key: 248, bpf: 321, perf_event_open: 298, userfaultfd: 323, io_uring_setup: 425, unshare: 272, mount: 165 }
      : { keyctl: 219, add_key: 217, bpf: 280, perf_event_open: 241, userfaultfd: 282, io_uring_setup: 425, unshare: 97, mount: 40 };
    const py = `
import ctypes, json, os, socket, subprocess, threading
from http.server import BaseHTTPRequestHandler, HTTPServer
NR = json.loads(os.environ['NR'])
libc = ctypes.CDLL(None, use_errno=True)
def sc(name, *args):
    ctypes.set_errno(0)
    r = libc.syscall(NR[name], *[ctypes.c_long(a) for a in args])
    return 'ok' if r >= 0 else os.strerror(ctypes.get_errno())
def run(*cmd):
    try:
        p = subprocess.run(list(cmd), capture_output=True, text=True)
    except OSError as e:
        return {'code': -1, 'out': '', 'err': str(e)}
    return {'code': p.returncode, 'out': p.stdout.strip(), 'err': p.stderr.strip()[-300:]}
def sock(family, kind=socket.SOCK_STREAM):
    try:
        socket.socket(family, kind).close()
        return 'ok'
    except OSError as e:
        return os.strerror(e.errno)
def thread():
    box = []
    t = threading.Thread(target=lambda: box.append(1)); t.start(); t.join()
    return 'ok' if box == [1] else 'no'
def probe():
    return {
        'unshareU': run('unshare', '-U', 'true'),
        'unshareUr': run('unshare', '-Ur', 'id', '-u'),
        'unshareNet': run('unshare', '-n', 'true'),
        'vsock': sock(socket.AF_VSOCK),
        'keyctl': sc('keyctl', 0, -3, 0),  # KEYCTL_GET_KEYRING_ID of the session keyring
        'add_key': sc('add_key', 0, 0, 0, 0, 0),
        'bpf': sc('bpf', 9999, 0, 0),  # an unknown command: EINVAL without the filter
        'perf_event_open': sc('perf_event_open', 0, 0, -1, -1, 0),
        'userfaultfd': sc('userfaultfd', 1),  # UFFD_USER_MODE_ONLY: allowed to anyone without the filter
        'io_uring_setup': sc('io_uring_setup', 1, 0),
        'mount': sc('mount', 0, 0, 0, 0, 0),
        # positive controls: what ordinary programs do
        'inet': sock(socket.AF_INET), 'inet6': sock(socket.AF_INET6), 'unix': sock(socket.AF_UNIX),
        'netlink': sock(socket.AF_NETLINK, socket.SOCK_RAW),
        'thread': thread(),
        'sh': run('/bin/sh', '-c', 'echo hi from sh'),
        'node': run(os.environ['NODE_BIN'], '-e', "new (require('worker_threads').Worker)('1', { eval: true }).on('exit', (c) => console.log('worker', c))"),
    }
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps(probe()).encode()
        self.send_response(200); self.send_header('content-length', str(len(body))); self.end_headers(); self.wfile.write(body)
HTTPServer(('127.0.0.1', int(os.environ['PORT'])), H).serve_forever()
`;
    const dir = codeDir('seccomp', { 'probe.py': py });
    const inst = await runtime.create(spec(dir, 'probe.py', { runtime: 'python', env: { NR: JSON.stringify(nr), NODE_BIN: process.execPath } }));
    await inst.start();
    await inst.waitReady(20_000);
    const res = await requestEndpoint(inst.endpoint);
    assert.equal(res.status, 200, res.body);
    const r = JSON.parse(res.body) as Record<string, string | { code: number; out: string; err: string }>;
    const eperm = 'Operation not permitted';
    for (const k of ['unshareU', 'unshareUr', 'unshareNet'] as const) {
      const u = r[k] as { code: number; err: string };
      assert.notEqual(u.code, 0, `${k} must fail: ${JSON.stringify(u)}`);
      assert.match(u.err, /Operation not permitted/, `${k}: ${JSON.stringify(u)}`);
    }
    for (const k of ['vsock', 'keyctl', 'add_key', 'bpf', 'perf_event_open', 'userfaultfd', 'io_uring_setup', 'mount']) assert.equal(r[k], eperm, `${k}: ${JSON.stringify(r[k])}`);
    for (const k of ['inet', 'inet6', 'unix', 'netlink', 'thread']) assert.equal(r[k], 'ok', `${k}: ${JSON.stringify(r[k])}`);
    assert.deepEqual(r['sh'], { code: 0, out: 'hi from sh', err: '' });
    // The sandbox hides /tmp: a checkout there (and its Node) is out of the function's sight.
    if (!process.execPath.startsWith(tmpdir())) assert.equal((r['node'] as { out: string }).out, 'worker 0', JSON.stringify(r['node']));
    await inst.stop();
  });

  it('kills a memory hog with reason oom', async () => {
    const mb = 96;
    const dir = codeDir('hog', {
      'hog.js': `const keep = []; console.log('allocating'); for (let i = 0; i < ${3 * mb}; i++) keep.push(Buffer.alloc(1 << 20, 1)); console.log('survived');\n`,
    });
    const inst = await runtime.create(spec(dir, 'hog.js', { memoryMb: mb }));
    const lines: string[] = [];
    inst.onLog((l) => lines.push(l.text));
    await inst.start();
    const exit = await inst.exited;
    assert.equal(exit.reason, 'killed by the memory limit (oom)', JSON.stringify({ exit, lines }));
    assert.equal(exit.signal, 'SIGKILL');
    assert.ok(!lines.includes('survived'));
  });

  it('stops a fork bomb at the pids limit; the host stays fine', async () => {
    const pidsMax = 16;
    const dir = codeDir('bomb', { 'bomb.sh': 'echo bombing\nb() { b | b & }\nb\nsleep 5\n' });
    const s = spec(dir, 'bomb.sh', { pidsMax });
    const inst = await runtime.create(s);
    await inst.start();
    const cg = join(CG, 'pids', 'aether', agentId, s.instanceId);
    let maxSeen = 0;
    let failedForks = 0;
    for (let i = 0; i < 50; i++) {
      try {
        maxSeen = Math.max(maxSeen, Number(readFileSync(join(cg, 'pids.current'), 'utf8')));
        failedForks = Number(/max (\d+)/.exec(readFileSync(join(cg, 'pids.events'), 'utf8'))?.[1] ?? 0);
      } catch {
        break; // exited
      }
      if (failedForks > 0 && i > 10) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    if (existsSync(join(cg, 'pids.peak'))) maxSeen = Math.max(maxSeen, Number(readFileSync(join(cg, 'pids.peak'), 'utf8')));
    assert.ok(failedForks > 0, 'forks were refused at the limit');
    assert.ok(maxSeen <= pidsMax, `never more than ${pidsMax} processes, saw ${maxSeen}`);
    await inst.stop(100);
    assert.equal(inst.inspect().state, 'exited');
    assert.equal(existsSync(cg), false, 'cgroup removed after stop');
    // the host can still start processes
    const ok = await new Promise<number | null>((r) => spawn('true').on('exit', r));
    assert.equal(ok, 0);
  });

  it('an instance outlives its agent (SIGKILL); a new runtime adopts it (requests, logs, stop) and cleanupLeftovers stops the rest', async () => {
    const dir = codeDir('orphan', { 'handler.js': "require('http').createServer((q, s) => { console.log('hit ' + q.url); s.end('ok'); }).listen(process.env.PORT);\n" });
    const childAgent = `iso-child-${process.pid}`;
    const child = spawn(process.execPath, [join(FIXTURES, 'agent-child.ts'), dataDir, childAgent, dir], { stdio: ['ignore', 'pipe', 'inherit'] });
    const line = await new Promise<string>((res, rej) => {
      let buf = '';
      child.stdout.on('data', (b: Buffer) => {
        buf += b.toString();
        if (buf.includes('\n')) res(buf.split('\n')[0] ?? '');
      });
      child.on('exit', (code) => rej(new Error(`agent child exited early (${code})`)));
    });
    const { pids } = JSON.parse(line) as { pids: number[] };
    assert.ok(pids.length >= 3, `instance processes and forwarder found: ${pids.join(',')}`);
    assert.ok(pids.every(alive));
    const procs = join(CG, 'pids', 'aether', childAgent, 'orphan-1', 'cgroup.procs');
    const inCgroup = readFileSync(procs, 'utf8').split('\n').filter(Boolean).map(Number);
    assert.ok(inCgroup.length >= 2, 'launcher and program');
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
    await new Promise((r) => setTimeout(r, 300));
    assert.ok(inCgroup.every(alive), 'the instance outlives its agent');

    const rt2 = createProcessRuntime({ dataDir, agentId: childAgent, isolation: 'namespaces', network: sandboxNetwork, logger: silentLogger() });
    assert.ok(rt2.adoption);
    const found = await rt2.adoption.list();
    assert.deepEqual(found.map((f) => f.spec.instanceId), ['orphan-1']);
    const inst = await rt2.adoption.adopt('orphan-1');
    const lines: string[] = [];
    inst.onLog((l) => lines.push(`${l.stream}: ${l.text}`));
    assert.equal(inst.inspect().state, 'running');
    const res = await requestEndpoint(inst.endpoint, { path: '/after-adoption' });
    assert.equal(res.body, 'ok');
    assert.ok(await until(() => lines.includes('stdout: hit /after-adoption'), 5000), `logs flow after adoption: ${lines.join(' | ')}`);

    // What nobody adopted is stopped (simulated with a sleep placed in a leftover cgroup); the adopted one stays.
    const extra = ['memory', 'cpu', 'pids'].map((c) => join(CG, c, 'aether', childAgent, 'stray-1'));
    for (const d of extra) mkdirSync(d, { recursive: true });
    const sleeper = spawn('sleep', ['60'], { stdio: 'ignore' });
    for (const d of extra) writeFileSync(join(d, 'cgroup.procs'), String(sleeper.pid));
    // a veth pair this agent left (its alias names the agent and an owner that is not live); another agent's stays
    const strayLinks = inTestNetns ? ['ae16001', 'ae16002'] : [];
    for (const [i, l] of strayLinks.entries()) {
      spawnSync('ip', ['link', 'add', l, 'type', 'veth', 'peer', 'name', `x${l}`]);
      spawnSync('ip', ['link', 'set', l, 'alias', `aether:${i === 0 ? childAgent : 'someone-else'}:gone-1`]);
    }
    await rt2.cleanupLeftovers();
    if (inTestNetns) {
      const names = hostLinks().map((l) => l.ifname);
      assert.ok(!names.includes('ae16001') && names.includes('ae16002'), `stray pair of this agent removed, another agent's kept: ${names.join(' ')}`);
      assert.ok(inst.endpoint.kind === 'tcp' && (await requestEndpoint(inst.endpoint)).body === 'ok', 'the adopted instance keeps its address and pair');
      spawnSync('ip', ['link', 'del', 'ae16002']);
    }
    assert.ok(await until(() => !alive(sleeper.pid as number), 2000), 'the stray process was killed');
    for (const d of extra) assert.equal(existsSync(d), false);
    assert.ok(inCgroup.every(alive), 'the adopted instance was left alone');

    await inst.stop(2000);
    assert.ok(await until(() => inCgroup.every((p) => !alive(p)), 5000), 'stop ends the adopted instance');
    assert.ok(await until(() => pids.every((p) => !alive(p)), 5000), `still alive: ${pids.filter(alive).map((p) => `${p} ${describeProc(p)}`).join(', ')}`);
    assert.match(lines.join('\n'), /exited/);
    for (const c of ['memory', 'cpu', 'pids']) assert.equal(existsSync(join(CG, c, 'aether', childAgent, 'orphan-1')), false, `${c} cgroup removed`);
    assert.equal(existsSync(join(dataDir, 'sockets', 'orphan-1.sock')), false, 'socket removed');
    assert.equal(existsSync(join(dataDir, 'instances', childAgent, 'orphan-1')), false, 'instance dir removed');
    await rt2.close();
  });
});
