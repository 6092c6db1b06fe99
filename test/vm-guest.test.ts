// Boots the real guest under QEMU (microvm, TCG): the initramfs with aether-init, a root image, a
// host-side config server on a virtio-serial unix socket (or a fake MMDS v2 over slirp). Four boots:
// node base image with the right token, the same with a wrong token, a docker-save archive and an
// OCI layout archive (the latter fetching its config over MMDS). Each boot takes 5-40 s under TCG.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { connect, createServer as createNetServer } from 'node:net';
import type { Server, Socket } from 'node:net';
import { release, tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildImage, ensureBaseImage, ensureInitramfs, makeExt4 } from '../src/image/index.ts';
import { makeDockerSave, makeOciLayout } from '../src/image/testing.ts';
import type { LayerEntry } from '../src/image/testing.ts';

const have = (cmd: string, args: string[]): boolean => spawnSync(cmd, args).status === 0;
const missing = [
  have('qemu-system-x86_64', ['--version']) ? '' : 'qemu-system-x86',
  have('musl-gcc', ['--version']) ? '' : 'musl-tools',
  have('mke2fs', ['-V']) ? '' : 'e2fsprogs',
  existsSync('/bin/busybox') ? '' : 'busybox-static',
  spawnSync('sh', ['-c', 'ls /boot/vmlinuz-*-cloud-amd64']).status === 0 ? '' : 'linux-image-cloud-amd64',
].filter((m) => m !== '');
const skip = missing.length > 0 ? `needs ${missing.join(', ')}` : false;

// Shared between runs: images are keyed by content, so a stale one is never reused.
const CACHE = join(tmpdir(), 'aether-test-images');

/** microvm has no HPET/PM timer and PIT calibration fails under TCG: pass the TSC rate. */
function tscKhz(): number {
  const m = /cpu MHz\s*:\s*([\d.]+)/.exec(readFileSync('/proc/cpuinfo', 'utf8'));
  return Math.round(Number(m?.[1] ?? '2000') * 1000);
}

interface Boot {
  console: string;
  log: string;
  ctl: string;
  exit: number | null;
}

interface BootOptions {
  kernel: string;
  initrd: string;
  root: string;
  code?: string;
  token: string;
  /** vport: answer READY with this config; mmds: no serial ports, config from the MMDS server. */
  config?: object;
  mode: 'vport' | 'mmds';
  netdev: string;
  append?: string;
  /** Once the log matches, press the ACPI power button (QEMU system_powerdown). */
  powerdownOn?: RegExp;
}

function listen(server: Server, path: string): Promise<void> {
  return new Promise((resolve) => server.listen(path, resolve));
}

async function boot(dir: string, o: BootOptions): Promise<Boot> {
  const out: Boot = { console: '', log: '', ctl: '', exit: null };
  await mkdir(dir, { recursive: true });
  const sockets: Socket[] = [];
  const ctl = createNetServer((s) => {
    sockets.push(s);
    s.on('data', (d: Buffer) => {
      out.ctl += d.toString();
      if (out.ctl.endsWith('AETHER-INIT READY\n')) s.write(`${JSON.stringify(o.config)}\n`);
    });
  });
  let pressed = false;
  const log = createNetServer((s) => {
    sockets.push(s);
    s.on('data', (d: Buffer) => {
      out.log += d.toString();
      if (o.powerdownOn?.test(out.log) === true && !pressed) {
        pressed = true;
        const mon = connect(join(dir, 'mon.sock'), () => mon.end('system_powerdown\n'));
        mon.on('error', () => undefined);
      }
    });
  });
  const serial =
    o.mode === 'vport'
      ? ['-chardev', `socket,id=ctl,path=${join(dir, 'ctl.sock')}`, '-chardev', `socket,id=log,path=${join(dir, 'log.sock')}`,
          '-device', 'virtio-serial-device', '-device', 'virtserialport,chardev=ctl,name=aether.ctl', '-device', 'virtserialport,chardev=log,name=aether.log']
      : [];
  if (o.mode === 'vport') {
    await listen(ctl, join(dir, 'ctl.sock'));
    await listen(log, join(dir, 'log.sock'));
  }
  const drives = [o.root, ...(o.code !== undefined ? [o.code] : [])].flatMap((f, i) => [
    '-drive', `id=d${i},file=${f},format=raw,if=none,readonly=on`, '-device', `virtio-blk-device,drive=d${i}`,
  ]);
  const append = `console=ttyS0 quiet loglevel=0 tsc_early_khz=${tscKhz()} tsc=reliable reboot=t panic=-1 aether.token=${o.token} aether.config=${o.mode} ${o.append ?? ''}`;
  const q = spawn('qemu-system-x86_64', [
    '-M', 'microvm', '-accel', 'tcg', '-cpu', 'max', '-m', '256', '-smp', '1', '-nographic', '-nodefaults', '-no-user-config',
    '-serial', 'stdio', '-no-reboot', '-kernel', o.kernel, '-initrd', o.initrd, '-append', append,
    ...drives, '-netdev', o.netdev, '-device', 'virtio-net-device,netdev=n0', ...serial,
    '-monitor', `unix:${join(dir, 'mon.sock')},server=on,wait=off`,
  ], { stdio: ['ignore', 'pipe', 'pipe'] });
  q.stdout.on('data', (d: Buffer) => (out.console += d.toString()));
  q.stderr.on('data', (d: Buffer) => (out.console += d.toString()));
  // Not a speed assertion: a bound so a hung guest fails the test instead of hanging it.
  const timer = setTimeout(() => q.kill('SIGKILL'), 300_000);
  out.exit = await new Promise<number | null>((resolve) => q.on('exit', (code) => resolve(code)));
  clearTimeout(timer);
  for (const s of sockets) s.destroy();
  ctl.close();
  log.close();
  return out;
}

const describe = (b: Boot): string => `console:\n${b.console}\nlog:\n${b.log}\nctl:\n${b.ctl}`;

let prepared: Promise<{ kernel: string; initrd: string; node: string; code: string; work: string }> | undefined;
function prepare(): Promise<{ kernel: string; initrd: string; node: string; code: string; work: string }> {
  prepared ??= (async () => {
    const work = await mkdtemp(join(tmpdir(), 'aether-vm-guest-'));
    const init = await ensureInitramfs({ cacheDir: CACHE });
    const node = await ensureBaseImage('node', { cacheDir: CACHE });
    // Images for older aether-init builds pile up (~140 MB each): drop those built over 6 hours ago.
    for (const f of await readdir(CACHE)) {
      const path = join(CACHE, f);
      if (path !== node && path !== init.path && Date.now() - (await stat(path)).mtimeMs > 6 * 3_600_000) await rm(path, { recursive: true, force: true });
    }
    const codeDir = join(work, 'code');
    await mkdir(codeDir);
    await writeFile(join(codeDir, 'index.js'), [
      "const fs = require('node:fs'), os = require('node:os');",
      "console.error('to stderr');",
      'console.log(JSON.stringify({ marker: "program-ran", kernel: os.release(), secret: process.env.SECRET, port: process.env.PORT,',
      "  cmdline: fs.readFileSync('/proc/cmdline', 'utf8'), uid: process.getuid(), cwd: process.cwd(), host: os.hostname(),",
      "  rootWritable: (() => { try { fs.writeFileSync('/home/app/probe', 'x'); return true; } catch { return false; } })() }));",
    ].join('\n'));
    const code = join(work, 'code.ext4');
    await makeExt4(codeDir, code, { label: 'aether-code' });
    return { kernel: init.kernel.kernel, initrd: init.path, node, code, work };
  })();
  return prepared;
}

test.after(async () => {
  if (prepared) await rm((await prepared).work, { recursive: true, force: true });
});

const SECRET = `s3cret-${randomBytes(6).toString('hex')}`;

test('node base image: the right token runs the program, output on the log port, env not on the cmdline', { skip }, async () => {
  const p = await prepare();
  const token = randomBytes(16).toString('hex');
  const b = await boot(join(p.work, 'ok'), {
    kernel: p.kernel, initrd: p.initrd, root: p.node, code: p.code, token, mode: 'vport', netdev: 'user,id=n0,restrict=on',
    config: { token, instance_id: 'i-test-1', hostname: 'fn-host', cmd: ['node', 'index.js'], cwd: '/run/aether/code', env: { SECRET }, port: 8080, seed: randomBytes(32).toString('base64'), net: null },
  });
  const line = b.log.split('\n').find((l) => l.includes('"marker":"program-ran"'));
  assert.ok(line, describe(b));
  const r = JSON.parse(line) as Record<string, unknown>;
  assert.equal(r['secret'], SECRET);
  assert.equal(r['port'], '8080');
  assert.equal(r['uid'], 1000, 'runs as the image user (app)');
  assert.equal(r['cwd'], '/run/aether/code');
  assert.equal(r['host'], 'fn-host');
  assert.equal(r['rootWritable'], true, 'the overlay gives a writable root');
  assert.notEqual(r['kernel'], release(), 'a different kernel than the host');
  assert.match(String(r['cmdline']), new RegExp(`aether\\.token=${token}`));
  assert.ok(!String(r['cmdline']).includes(SECRET), 'env never on the kernel command line');
  assert.match(b.log, /to stderr/);
  assert.doesNotMatch(b.log, /AETHER-INIT:|\[\s*\d+\.\d+\]/, 'kernel and init messages stay off the log port');
  assert.match(b.ctl, /^AETHER-INIT READY\nAETHER-INIT STARTED \d+\nAETHER-INIT EXIT 0\n$/);
  assert.match(b.console, /AETHER-INIT: started node pid=\d+ kernel=[\d.]+s init=[\d.]+s/);
  assert.equal(b.exit, 0, 'the guest powered off by itself when the program exited');
});

test('a wrong token: config rejected, the program never runs, the VM powers off', { skip }, async () => {
  const p = await prepare();
  const token = randomBytes(16).toString('hex');
  const b = await boot(join(p.work, 'bad'), {
    kernel: p.kernel, initrd: p.initrd, root: p.node, code: p.code, token, mode: 'vport', netdev: 'user,id=n0,restrict=on',
    config: { token: randomBytes(16).toString('hex'), cmd: ['node', 'index.js'], cwd: '/run/aether/code', env: { SECRET } },
  });
  assert.match(b.console, /AETHER-INIT: config rejected \(token mismatch\)/, describe(b));
  assert.doesNotMatch(b.log, /program-ran/);
  assert.doesNotMatch(b.ctl, /STARTED/);
  assert.equal(b.exit, 0);
});

// A busybox image made elsewhere: layer 1 is the base, layer 2 deletes and hides parts of it.
function busyboxLayers(): LayerEntry[][] {
  const bb = readFileSync('/bin/busybox');
  return [
    [
      { name: 'bin/', type: 'directory' },
      { name: 'bin/busybox', data: bb, mode: 0o755 },
      ...['sh', 'echo', 'cat', 'ls', 'id', 'test', 'uname', 'sleep'].map((a): LayerEntry => ({ name: `bin/${a}`, type: 'symlink', linkname: 'busybox' })),
      { name: 'etc/', type: 'directory' },
      { name: 'etc/passwd', data: 'root:x:0:0::/root:/bin/sh\nweb:x:33:33::/var/www:/bin/sh\n' },
      { name: 'etc/group', data: 'root:x:0:\nweb:x:33:\n' },
      { name: 'etc/gone', data: 'should be whited out' },
      { name: 'var/www/', type: 'directory' },
      { name: 'var/www/old', data: 'hidden by the opaque dir' },
    ],
    [
      { name: 'etc/.wh.gone' },
      { name: 'etc/marker', data: 'layer-two' },
      { name: 'var/www/.wh..wh..opq' },
      { name: 'var/www/index.html', data: 'new' },
    ],
  ];
}

const OCI_CONFIG = {
  User: 'web',
  WorkingDir: '/var/www',
  Env: ['PATH=/bin', 'GREETING=hello-from-image'],
  Entrypoint: ['/bin/sh', '-c'],
  Cmd: ['echo "oci-ok marker=$(cat /etc/marker) greeting=$GREETING uid=$(id -u) cwd=$(pwd) www=$(ls /var/www) gone=$(test -e /etc/gone && echo present || echo absent) kernel=$(uname -r)"; trap "echo got-sigterm; exit 7" TERM; while true; do sleep 1; done'],
};

test('a docker-save archive built elsewhere becomes a bootable root filesystem', { skip }, async () => {
  const p = await prepare();
  const archive = join(p.work, 'docker.tar');
  await writeFile(archive, await makeDockerSave(busyboxLayers(), OCI_CONFIG));
  const img = join(p.work, 'docker.ext4');
  await buildImage({ source: archive, output: img });
  const token = randomBytes(8).toString('hex');
  // No cmd in the config: the image's entrypoint + cmd from runtime.json run.
  // The program then waits for SIGTERM: the ACPI power button (how QEMU stops a VM) must deliver it.
  const b = await boot(join(p.work, 'docker'), {
    kernel: p.kernel, initrd: p.initrd, root: img, token, mode: 'vport', netdev: 'user,id=n0,restrict=on', config: { token, net: null }, powerdownOn: /oci-ok/,
  });
  assert.match(b.log, /oci-ok marker=layer-two greeting=hello-from-image uid=33 cwd=\/var\/www www=index.html gone=absent kernel=\S+/, describe(b));
  assert.match(b.log, /got-sigterm/, describe(b));
  assert.match(b.ctl, /AETHER-INIT EXIT 7\n$/);
  assert.equal(b.exit, 0);
});

test('an OCI layout archive boots too, with its config fetched over MMDS v2', { skip }, async () => {
  const p = await prepare();
  const archive = join(p.work, 'oci.tar');
  await writeFile(archive, await makeOciLayout(busyboxLayers(), OCI_CONFIG));
  const img = join(p.work, 'oci.ext4');
  await buildImage({ source: archive, output: img });
  const token = randomBytes(8).toString('hex');
  const sessions = new Set<string>();
  const seen: string[] = [];
  // A fake MMDS v2: session token first, then the config only with that token and Accept: JSON.
  const mmds = createServer((req, res) => {
    seen.push(`${req.method} ${req.url}`);
    if (req.method === 'PUT' && req.url === '/latest/api/token' && req.headers['x-metadata-token-ttl-seconds'] !== undefined) {
      const t = randomBytes(16).toString('hex');
      sessions.add(t);
      res.end(t);
    } else if (req.method === 'GET' && req.url === '/aether/config') {
      if (!sessions.has(String(req.headers['x-metadata-token']))) return void res.writeHead(401).end();
      if (req.headers['accept'] !== 'application/json') return void res.writeHead(406).end();
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ token, cmd: ['/bin/sh', '-c', 'echo "mmds-ok $GREETING $FROM_MMDS"'], env: { FROM_MMDS: 'yes' }, net: null }));
    } else res.writeHead(404).end();
  });
  await new Promise<void>((resolve) => mmds.listen(0, '127.0.0.1', resolve));
  const port = (mmds.address() as AddressInfo).port;
  try {
    // slirp on 169.254/16: the guest's link-local source reaches the host alias 169.254.0.2 → 127.0.0.1.
    const b = await boot(join(p.work, 'oci'), {
      kernel: p.kernel, initrd: p.initrd, root: img, token, mode: 'mmds',
      netdev: 'user,id=n0,net=169.254.0.0/16,host=169.254.0.2', append: `aether.mmds=169.254.0.2:${port}`,
    });
    assert.match(b.console, /mmds-ok hello-from-image yes/, describe(b));
    assert.deepEqual(seen.slice(-2), ['PUT /latest/api/token', 'GET /aether/config']);
    assert.equal(b.exit, 0);
  } finally {
    mmds.close();
  }
});

test('images are cached by content: a second ensure returns the same files without rebuilding', { skip }, async () => {
  const p = await prepare();
  assert.equal((await ensureInitramfs({ cacheDir: CACHE })).path, p.initrd);
  assert.equal(await ensureBaseImage('node', { cacheDir: CACHE }), p.node);
  assert.ok((await readFile(p.initrd)).subarray(0, 6).toString() === '070701');
});
