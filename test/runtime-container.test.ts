// Image and rootfs artifacts in the process sandbox ("services as containers"), as root.
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { isAetherError, silentLogger } from '../src/core/index.ts';
import { contractSpec, requestEndpoint, type InstanceSpec, type Runtime } from '../src/runtime/index.ts';
import { createProcessRuntime } from '../src/runtime/process/index.ts';
import { inTestNetns, sandboxNetwork } from './support/netns.ts';

const ROOT = join(fileURLToPath(import.meta.url), '..', '..');
const isRoot = process.getuid?.() === 0;
const haveTools = ['/bin/busybox', '/usr/sbin/mke2fs', '/usr/sbin/debugfs', '/usr/sbin/losetup'].every((p) => existsSync(p)) && spawnSync('musl-gcc', ['--version']).status === 0;
const skip = !isRoot ? 'not root: containers need namespaces, loop devices and overlayfs' : !haveTools ? 'needs busybox-static, e2fsprogs (mke2fs, debugfs), losetup and musl-tools' : false;

const sha256 = (p: string): string => createHash('sha256').update(readFileSync(p)).digest('hex');
/** Loop devices backed by `file` (losetup -j). */
const loopsOf = (file: string): string => execFileSync('losetup', ['-j', file], { encoding: 'utf8' }).trim();
/** Mounts an instance could have left in this (the host's) mount namespace. */
const ourMounts = (): string[] => readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter((l) => /aether-(ctr|root|dev|shm)|\/dev\/loop/.test(l));

/** Polls OS state that the kernel settles a moment later (loop autoclear); never fails on speed alone. */
async function eventually(what: string, ok: () => boolean): Promise<void> {
  for (let i = 0; i < 2000 && !ok(); i++) await delay(10);
  assert.ok(ok(), what);
}

/** A root: /bin/busybox, /www, passwd/group with user web (1234), a start script at /srv. */
function makeRoot(dir: string, runtimeJson?: object): void {
  mkdirSync(join(dir, 'bin'), { recursive: true });
  copyFileSync('/bin/busybox', join(dir, 'bin', 'busybox'));
  chmodSync(join(dir, 'bin', 'busybox'), 0o755);
  mkdirSync(join(dir, 'www'));
  writeFileSync(join(dir, 'www', 'index.html'), 'hello from the image\n');
  mkdirSync(join(dir, 'etc', 'firework'), { recursive: true });
  writeFileSync(join(dir, 'etc', 'passwd'), 'root:x:0:0:root:/root:/bin/sh\nweb:x:1234:1234:web:/home/web:/bin/sh\n');
  writeFileSync(join(dir, 'etc', 'group'), 'root:x:0:\nweb:x:1234:\n');
  mkdirSync(join(dir, 'srv'));
  // what the program sees, served from the writable path
  writeFileSync(
    join(dir, 'srv', 'start.sh'),
    'B=/bin/busybox\necho "$($B id -u):$($B id -g) $($B pwd) $GREETING $KEEP $HOME $PORT" > /data/who.txt\nexec $B httpd -f -p "$PORT" -h /data\n',
  );
  mkdirSync(join(dir, 'tmp'));
  chmodSync(join(dir, 'tmp'), 0o1777);
  if (runtimeJson) writeFileSync(join(dir, 'etc', 'firework', 'runtime.json'), JSON.stringify(runtimeJson));
}

/** What the container sees, written by its shell before it starts httpd on /tmp/www. */
const PROBE = [
  'B=/bin/busybox',
  '$B mkdir -p /tmp/www',
  '$B cp /www/index.html /tmp/www/',
  '$B ls / > /tmp/www/root.txt',
  'if [ -e /work ]; then echo present; else echo absent; fi > /tmp/www/work.txt',
  '$B grep -E "^(Seccomp|NoNewPrivs|CapEff|CapBnd):" /proc/self/status > /tmp/www/status.txt',
  'echo $$ > /tmp/www/pid.txt',
  'echo overlay-write > /www-new.txt 2>/dev/null; echo written > /tmp/written.txt',
  'exec $B httpd -f -p "$PORT" -h /tmp/www',
].join('\n');

describe('process runtime: image and rootfs artifacts as containers', { skip }, () => {
  let work: string;
  let image: string;
  let imageWeb: string;
  let rootfsDir: string;
  let dataDir: string;
  let runtime: Runtime;
  const agentId = `ctr-${process.pid}`;
  let n = 0;

  function spec(artifact: InstanceSpec['artifact'], over: Partial<InstanceSpec> = {}): InstanceSpec {
    const id = `ctr${n++}`;
    return contractSpec({ instanceId: id, owner: { kind: 'service', id: `svc-${id}`, name: 'web' }, artifact, listen: { port: 8080 }, resources: { memoryMb: 64, vcpu: 1, pidsMax: 64 }, ...over });
  }

  before(() => {
    work = mkdtempSync(join(tmpdir(), 'aether-ctr-'));
    const src = join(work, 'src');
    makeRoot(src);
    image = join(work, 'plain.ext4');
    const cli = (args: string[]): void => {
      const r = spawnSync(process.execPath, [join(ROOT, 'src', 'bin', 'aether.ts'), 'image', 'build', ...args], { encoding: 'utf8' });
      assert.equal(r.status, 0, r.stderr);
    };
    cli([src, '-o', image]);
    // user/workdir/env from the build flags, cmd and writable_paths from the source's runtime.json
    const srcWeb = join(work, 'src-web');
    makeRoot(srcWeb, { cmd: ['/bin/busybox', 'sh', '/srv/start.sh'], writable_paths: ['/data'], env: { KEEP: 'image-keep' } });
    imageWeb = join(work, 'web.ext4');
    cli([srcWeb, '-o', imageWeb, '--user', 'web', '--workdir', '/srv', '--env', 'GREETING=image', '--env', 'KEEP=image-keep']);
    rootfsDir = join(work, 'rootfs');
    makeRoot(rootfsDir);
    dataDir = join(work, 'data');
    runtime = createProcessRuntime({ dataDir, agentId, isolation: 'namespaces', network: sandboxNetwork, logger: silentLogger() });
  });

  after(async () => {
    await runtime?.close();
    rmSync(work, { recursive: true, force: true });
  });

  it('runs busybox httpd from an image: its own root, writes in the overlay, the image unchanged, nothing left after stop', async () => {
    const before = sha256(image);
    const inst = await runtime.create(spec({ kind: 'image', path: image }, { command: ['/bin/busybox', 'sh', '-c', PROBE] }));
    await inst.start();
    await inst.waitReady(20_000);
    assert.equal(inst.endpoint.kind, inTestNetns ? 'tcp' : 'unix');
    const get = async (path: string): Promise<string> => {
      const r = await requestEndpoint(inst.endpoint, { path });
      assert.equal(r.status, 200, `${path}: ${r.body}`);
      return r.body;
    };
    assert.equal(await get('/index.html'), 'hello from the image\n');
    // the image is its root; the host's is not reachable
    const root = (await get('/root.txt')).split('\n');
    for (const d of ['bin', 'www', 'etc', 'srv']) assert.ok(root.includes(d), `/${d} in ${root.join(' ')}`);
    assert.equal(await get('/work.txt'), 'absent\n');
    // the same confinement as a function: seccomp filter, no_new_privs, no capabilities, own pid namespace
    const status = Object.fromEntries((await get('/status.txt')).trim().split('\n').map((l) => l.split(/:\s*/)));
    assert.deepEqual(status, { NoNewPrivs: '1', Seccomp: '2', CapEff: '0000000000000000', CapBnd: '0000000000000000' });
    assert.equal(await get('/pid.txt'), '2\n', 'the shell is PID 2, after the launcher');
    assert.ok(loopsOf(image).includes(image), 'a loop device backs the running instance');
    await inst.stop();
    await eventually('no loop device left on the image', () => loopsOf(image) === '');
    assert.deepEqual(ourMounts(), []);
    assert.equal(sha256(image), before, 'the image file is unchanged');
    assert.ok(!existsSync(join(dataDir, 'containers', inst.id)), 'its record is removed');
  });

  it("honours runtime.json's user, workdir, env, cmd and writable paths; spec env on top", async () => {
    const inst = await runtime.create(spec({ kind: 'image', path: imageWeb }, { env: { GREETING: 'spec' } }));
    await inst.start();
    await inst.waitReady(20_000);
    const r = await requestEndpoint(inst.endpoint, { path: '/who.txt' });
    assert.equal(r.status, 200, r.body);
    assert.equal(r.body, '1234:1234 /srv spec image-keep /home/web 8080\n');
    await inst.stop();
    await eventually('no loop device left', () => loopsOf(imageWeb) === '');
  });

  it('runs a rootfs directory read-only under an overlay', async () => {
    const inst = await runtime.create(spec({ kind: 'rootfs', dir: rootfsDir }, { command: ['/bin/busybox', 'sh', '-c', PROBE] }));
    await inst.start();
    await inst.waitReady(20_000);
    const r = await requestEndpoint(inst.endpoint, { path: '/work.txt' });
    assert.equal(r.body, 'absent\n');
    assert.equal((await requestEndpoint(inst.endpoint, { path: '/index.html' })).body, 'hello from the image\n');
    await inst.stop();
    assert.ok(!existsSync(join(rootfsDir, 'tmp', 'www')), 'writes stayed in the overlay');
    assert.ok(!existsSync(join(rootfsDir, 'tmp', 'written.txt')));
    assert.deepEqual(ourMounts(), []);
  });

  it('applies the memory limit: a hog is killed by it', async () => {
    // awk doubling a string: memory grows without bound
    const inst = await runtime.create(spec({ kind: 'image', path: image }, { command: ['/bin/busybox', 'awk', 'BEGIN { s = "x"; while (1) s = s s }'], resources: { memoryMb: 32, vcpu: 1, pidsMax: 16 } }));
    await inst.start();
    const exit = await inst.exited;
    assert.equal(exit.reason, 'killed by the memory limit (oom)', JSON.stringify(exit));
    await eventually('no loop device left', () => loopsOf(image) === '');
  });

  it('fails a start with the output when the command does not exist, and cleans up', async () => {
    const inst = await runtime.create(spec({ kind: 'image', path: image }, { command: ['/nope'] }));
    await inst.start();
    await assert.rejects(inst.waitReady(20_000), (e: unknown) => isAetherError(e) && e.code === 'AETHER_ERR_COLD_START_FAILED' && /exec \/nope/.test(e.message));
    await eventually('no loop device left', () => loopsOf(image) === '');
  });

  it('cleanupLeftovers after an agent crash: no loop device, no mount, no record left', async () => {
    const crashData = join(work, 'crash-data');
    const script = `
      import { silentLogger } from ${JSON.stringify(join(ROOT, 'src/core/index.ts'))};
      import { contractSpec } from ${JSON.stringify(join(ROOT, 'src/runtime/index.ts'))};
      import { createProcessRuntime } from ${JSON.stringify(join(ROOT, 'src/runtime/process/index.ts'))};
      const rt = createProcessRuntime({ dataDir: ${JSON.stringify(crashData)}, agentId: 'crash-${process.pid}', isolation: 'namespaces', network: ${JSON.stringify(sandboxNetwork)}, logger: silentLogger() });
      const inst = await rt.create(contractSpec({ instanceId: 'c1', owner: { kind: 'service', id: 's', name: 's' }, artifact: { kind: 'image', path: ${JSON.stringify(image)} }, command: ['/bin/busybox', 'httpd', '-f', '-p', '8080', '-h', '/www'], listen: { port: 8080 } }));
      await inst.start();
      await inst.waitReady(20000);
      console.log('ready');
      setInterval(() => {}, 1000);
    `;
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise<void>((res, rej) => {
      child.stdout.on('data', (b: Buffer) => b.toString().includes('ready') && res());
      child.once('exit', (c) => rej(new Error(`child exited ${c}`)));
    });
    assert.ok(loopsOf(image).includes(image));
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
    const rt2 = createProcessRuntime({ dataDir: crashData, agentId: `crash-${process.pid}`, isolation: 'namespaces', network: sandboxNetwork, logger: silentLogger() });
    try {
      await rt2.cleanupLeftovers();
      await eventually('no loop device left after the crash', () => loopsOf(image) === '');
      assert.deepEqual(ourMounts(), []);
      assert.ok(!existsSync(join(crashData, 'containers', 'c1')), 'the record is removed');
    } finally {
      await rt2.close();
    }
  });

  it('cleanupLeftovers detaches a loop device a record names (one the kernel did not free)', async () => {
    const rec = join(dataDir, 'containers', 'gone1');
    mkdirSync(rec, { recursive: true });
    const dev = execFileSync('losetup', ['-r', '-f', '--show', image], { encoding: 'utf8' }).trim();
    writeFileSync(join(rec, 'source'), image);
    writeFileSync(join(rec, 'loop'), `${dev.replace('/dev/', '')}\n`);
    await runtime.cleanupLeftovers();
    await eventually('the leftover loop device is detached', () => loopsOf(image) === '');
    assert.ok(!existsSync(rec));
  });
});

describe('process runtime without isolation: image artifacts', () => {
  it('refuses them with a coded error', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'aether-ctr-none-'));
    const rt = createProcessRuntime({ dataDir, agentId: `none-${process.pid}`, isolation: 'none', logger: silentLogger() });
    try {
      await assert.rejects(
        rt.create(contractSpec({ owner: { kind: 'service', id: 's', name: 's' }, artifact: { kind: 'image', path: '/nonexistent.ext4' } })),
        (e: unknown) => isAetherError(e) && e.code === 'AETHER_ERR_CONTAINER_UNAVAILABLE' && e.status === 503,
      );
      await assert.rejects(rt.create(contractSpec({ artifact: { kind: 'rootfs', dir: '/' } })), (e: unknown) => isAetherError(e) && e.code === 'AETHER_ERR_CONTAINER_UNAVAILABLE');
    } finally {
      await rt.close();
      rmSync(dataDir, { recursive: true, force: true });
    }
  });
});
