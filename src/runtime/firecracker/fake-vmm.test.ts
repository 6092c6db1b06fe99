import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, statSync, truncateSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Client } from 'undici';
import { isAetherError } from '../../core/index.ts';
import { FirecrackerClient } from './api.ts';
import { loadSpec, startFakeVmm } from './fake-vmm.ts';

const FAKE = new URL('./fake-vmm.ts', import.meta.url).pathname;

let dir: string;
let kernel: string;
let disk: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'fakevmm-'));
  kernel = join(dir, 'vmlinux');
  disk = join(dir, 'disk.ext4');
  await writeFile(kernel, 'kernel');
  await writeFile(disk, 'disk');
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

let n = 0;
/** An in-process fake on a fresh socket; `exits` collects power-offs, `serial` the console. */
async function fake(extra: { guestHttp?: string; ignoreCtrlAltDel?: boolean; logPath?: string; level?: string; showLevel?: boolean; metricsPath?: string } = {}) {
  const apiSock = join(dir, `api-${++n}.sock`);
  const record = join(dir, `rec-${n}.ndjson`);
  const exits: number[] = [];
  const serial: string[] = [];
  const f = await startFakeVmm({ apiSock, record, exit: (c) => exits.push(c), serial: (l) => serial.push(l), ...extra });
  const client = new FirecrackerClient(apiSock, { timeoutMs: 5000 });
  const raw = new Client('http://localhost', { socketPath: apiSock });
  const req = async (method: string, path: string, body?: string) => {
    const res = await raw.request({ method: method as 'PUT', path, ...(body !== undefined ? { body, headers: { 'content-type': 'application/json' } } : {}) });
    const text = await res.body.text();
    return { status: res.statusCode, fault: text ? (JSON.parse(text) as { fault_message?: string }).fault_message : undefined, text };
  };
  const records = () =>
    readFileSync(record, 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { method: string; path: string; status: number; body: unknown });
  return {
    apiSock, client, req, exits, serial, records,
    close: async () => {
      await client.close();
      await raw.close();
      await f.close();
    },
  };
}

async function until(cond: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 500; i++) {
    if (cond()) return;
    await new Promise((r) => setTimeout(r, 10));
  }
  assert.fail(`timed out waiting for ${what}`);
}

describe('fake Firecracker: the pinned spec', () => {
  it('loads all 38 operations of v1.16.1 with a body validator where the spec has a body', () => {
    const spec = loadSpec();
    assert.equal(spec.version, '1.16.1');
    assert.equal(spec.operations.length, 38);
    const put = spec.operations.find((o) => o.operationId === 'putGuestBootSource');
    assert.ok(put?.body?.required);
    assert.equal(put.body.validate({ kernel_image_path: '/k' }), true);
    assert.equal(put.body.validate({}), false);
  });
});

describe('fake Firecracker: rejects what the spec does not allow', () => {
  it('refuses unknown paths and methods, bad bodies, bad ids, wrong phases — each as 400 with fault_message', async () => {
    const f = await fake();
    try {
      const cases: [string, string, string | undefined, RegExp][] = [
        ['PUT', '/no-such-thing', '{}', /Invalid request method and\/or path: PUT \/no-such-thing/],
        ['DELETE', '/drives/rootfs', undefined, /Invalid request method and\/or path: DELETE/],
        ['POST', '/actions', '{"action_type":"InstanceStart"}', /Invalid request method/],
        ['PUT', '/machine-config', '{"mem_size_mib":128}', /required property 'vcpu_count'/],
        ['PUT', '/machine-config', '{"vcpu_count":"2","mem_size_mib":128}', /vcpu_count must be integer/],
        ['PUT', '/machine-config', '{"vcpu_count":33,"mem_size_mib":128}', /vcpu_count must be <= 32/],
        ['PUT', '/boot-source', `{"kernel_image_path":"${kernel}","env":{"A":"1"}}`, /unknown field `env`/],
        ['PUT', '/actions', '{"action_type":"Reboot"}', /must be equal to one of the allowed values/],
        ['PUT', '/drives/root-fs', `{"drive_id":"root-fs","is_root_device":false,"path_on_host":"${disk}","is_read_only":true}`, /alphanumeric characters and underscores/],
        ['PUT', '/drives/rootfs', `{"drive_id":"other","is_root_device":false,"path_on_host":"${disk}","is_read_only":true}`, /does not match the id from the body/],
        ['PUT', '/drives/rootfs', `{"drive_id":"rootfs","is_root_device":false,"path_on_host":"${dir}/missing","is_read_only":true}`, /No such file/],
        ['PUT', '/mmds/config', '{"version":"V2","network_interfaces":["eth0"]}', /does not correspond to any existing network interface/],
        ['PUT', '/mmds/config', '{"version":"V2","network_interfaces":[],"ipv4_address":"10.0.0.1"}', /ipv4_address must match format/],
        ['PUT', '/boot-source', '', /Empty PUT request/],
        ['GET', '/', '{}', /GET request cannot have a body/],
        ['PATCH', '/vm', '{"state":"Paused"}', /not supported before starting the microVM/],
        ['PUT', '/snapshot/create', '{"snapshot_path":"/s","mem_file_path":"/m"}', /not supported before starting/],
        ['PUT', '/actions', '{"action_type":"SendCtrlAltDel"}', /not supported before starting/],
        ['PUT', '/actions', '{"action_type":"InstanceStart"}', /without kernel configuration/],
        ['PUT', '/snapshot/load', '{"snapshot_path":"/s"}', /either `mem_backend` or `mem_file_path` is required/],
      ];
      for (const [method, path, body, want] of cases) {
        const r = await f.req(method, path, body);
        assert.equal(r.status, 400, `${method} ${path} ${body ?? ''} → ${r.status} ${r.text}`);
        assert.match(r.fault ?? '', want, `${method} ${path}`);
      }
      assert.deepEqual(f.exits, []);
    } finally {
      await f.close();
    }
  });

  it('refuses pre-boot calls after InstanceStart, snapshot create while running, and snapshot load after boot resources', async () => {
    const f = await fake();
    try {
      await f.client.putMachineConfig({ vcpu_count: 1, mem_size_mib: 64 });
      const load = await f.req('PUT', '/snapshot/load', JSON.stringify({ snapshot_path: disk, mem_backend: { backend_type: 'File', backend_path: disk } }));
      assert.match(load.fault ?? '', /not allowed after configuring boot-specific resources/);
      await f.client.putBootSource({ kernel_image_path: kernel, boot_args: 'console=ttyS0 aether.config=mmds aether.token=t' });
      await f.client.action('InstanceStart');
      for (const [path, body] of [
        ['/boot-source', { kernel_image_path: kernel }],
        ['/machine-config', { vcpu_count: 2, mem_size_mib: 64 }],
        ['/logger', { level: 'Info' }],
        ['/actions', { action_type: 'InstanceStart' }],
      ] as const) {
        const r = await f.req('PUT', path, JSON.stringify(body));
        assert.match(r.fault ?? '', /not supported after starting the microVM/, path);
      }
      const snap = await f.req('PUT', '/snapshot/create', JSON.stringify({ snapshot_path: join(dir, 's'), mem_file_path: join(dir, 'm') }));
      assert.match(snap.fault ?? '', /not paused/);
    } finally {
      await f.close();
    }
  });

  it('a refused call becomes AETHER_ERR_VMM carrying fault_message', async () => {
    const f = await fake();
    try {
      await assert.rejects(f.client.action('InstanceStart'), (err) => {
        assert.ok(isAetherError(err));
        assert.equal(err.code, 'AETHER_ERR_VMM');
        assert.match(err.message, /PUT \/actions \(400\): Cannot start microvm without kernel configuration/);
        return true;
      });
      // the client refuses ids Firecracker would refuse, before sending
      await assert.rejects(f.client.putDrive({ drive_id: 'a-b', is_root_device: false }), /letters, digits and _/);
    } finally {
      await f.close();
    }
  });
});

describe('fake Firecracker: every call the client makes is allowed', () => {
  it('boot, MMDS v2 config, guest reads its config, pause/snapshot/resume, Ctrl+Alt+Del ends it', async () => {
    const f = await fake({ guestHttp: 'guest-1.sock' });
    try {
      const c = f.client;
      assert.equal((await c.describe()).state, 'Not started');
      assert.equal((await c.version()).firecracker_version, '1.16.1');
      await c.putLogger({ log_path: join(dir, 'fc.log'), level: 'Warning', show_level: true });
      await c.putMetrics({ metrics_path: join(dir, 'fc-metrics.ndjson') });
      await c.putMachineConfig({ vcpu_count: 1, mem_size_mib: 64, smt: false });
      assert.equal((await c.getMachineConfig()).mem_size_mib, 64);
      await c.putBootSource({ kernel_image_path: kernel, initrd_path: disk, boot_args: 'console=ttyS0 quiet aether.token=abc aether.config=mmds' });
      await c.putDrive({ drive_id: 'rootfs', path_on_host: disk, is_root_device: false, is_read_only: true });
      await c.putNetworkInterface({ iface_id: 'eth0', host_dev_name: 'tap0', guest_mac: '06:00:0a:00:02:0f' });
      await c.putVsock({ guest_cid: 3, uds_path: join(dir, `v-${n}.sock`) });
      await c.putMmdsConfig({ version: 'V2', network_interfaces: ['eth0'], ipv4_address: '169.254.169.254' });
      await c.putMmds({ other: 1 });
      await c.action('InstanceStart');
      assert.equal((await c.describe()).state, 'Running');
      await c.patchMmds({ aether: { config: { token: 'abc', cmd: ['node', 'h.js'], env: { A: '1' }, port: 8080 } } });
      assert.deepEqual((await c.getMmds()).other, 1);
      await until(() => existsSync(join(dir, 'guest-1.sock')), 'the guest program');
      assert.ok(f.serial.some((l) => l.includes('AETHER-INIT: exec ["node","h.js"]')));
      await c.action('FlushMetrics');
      await c.pause();
      assert.equal((await c.describe()).state, 'Paused');
      await c.createSnapshot({ snapshot_path: join(dir, 'vmstate'), mem_file_path: join(dir, 'mem'), snapshot_type: 'Full' });
      await c.resume();
      await c.action('SendCtrlAltDel');
      await until(() => f.exits.length === 1, 'power off');
      assert.ok(f.records().every((r) => r.status < 300), 'every recorded call succeeded');
      assert.ok(readFileSync(join(dir, 'fc-metrics.ndjson'), 'utf8').split('\n').length >= 2);
    } finally {
      await f.close();
    }
  });

  it('a wrong token in MMDS makes the guest reject its config and power off', async () => {
    const f = await fake({ guestHttp: 'guest-2.sock' });
    try {
      await f.client.putBootSource({ kernel_image_path: kernel, boot_args: 'quiet aether.token=right aether.config=mmds aether.vmm=firecracker' });
      await f.client.putNetworkInterface({ iface_id: 'eth0', host_dev_name: 'tap0' });
      await f.client.putMmdsConfig({ version: 'V2', network_interfaces: ['eth0'] });
      await f.client.action('InstanceStart');
      await f.client.putMmds({ aether: { config: { token: 'wrong', cmd: ['x'] } } });
      await until(() => f.exits.length === 1, 'power off');
      assert.ok(f.serial.includes('AETHER-INIT: config rejected'));
      assert.equal(existsSync(join(dir, 'guest-2.sock')), false);
    } finally {
      await f.close();
    }
  });

  it('without aether.vmm=firecracker the guest powers off, which halts it: Firecracker keeps running', async () => {
    const f = await fake();
    try {
      await f.client.putBootSource({ kernel_image_path: kernel, boot_args: 'quiet aether.token=right aether.config=mmds' });
      await f.client.putNetworkInterface({ iface_id: 'eth0', host_dev_name: 'tap0' });
      await f.client.putMmdsConfig({ version: 'V2', network_interfaces: ['eth0'] });
      await f.client.action('InstanceStart');
      await f.client.putMmds({ aether: { config: { token: 'wrong', cmd: ['x'] } } });
      await until(() => f.serial.includes('reboot: System halted'), 'halt');
      assert.ok(f.serial.includes('AETHER-INIT: config rejected'));
      assert.deepEqual(f.exits, []);
      assert.equal((await f.req('GET', '/', undefined)).status, 200, 'the API still answers');
    } finally {
      await f.close();
    }
  });

  it('snapshot load in a fresh process: paused, MMDS empty, the guest takes its new config after resume', async () => {
    const a = await fake();
    const snap = join(dir, 'tpl.vmstate');
    const mem = join(dir, 'tpl.mem');
    try {
      await a.client.putMachineConfig({ vcpu_count: 1, mem_size_mib: 16 });
      await a.client.putBootSource({ kernel_image_path: kernel, boot_args: 'quiet aether.token=tok aether.config=mmds' });
      await a.client.putNetworkInterface({ iface_id: 'eth0', host_dev_name: 'tap0' });
      await a.client.putMmdsConfig({ version: 'V2', network_interfaces: ['eth0'] });
      await a.client.action('InstanceStart');
      await a.client.pause();
      await a.client.createSnapshot({ snapshot_path: snap, mem_file_path: mem });
    } finally {
      await a.close();
    }
    const b = await fake({ guestHttp: 'guest-3.sock' });
    try {
      const both = await b.req('PUT', '/snapshot/load', JSON.stringify({ snapshot_path: snap, mem_file_path: mem, mem_backend: { backend_type: 'File', backend_path: mem } }));
      assert.match(both.fault ?? '', /exclusively/);
      await b.client.putLogger({ level: 'Info' });
      await b.client.loadSnapshot({ snapshot_path: snap, mem_backend: { backend_type: 'File', backend_path: mem }, network_overrides: [{ iface_id: 'eth0', host_dev_name: 'tap1' }], resume_vm: false });
      assert.equal((await b.client.describe()).state, 'Paused');
      assert.deepEqual(await b.client.getMmds(), {});
      await b.client.putMmds({ aether: { config: { token: 'tok', cmd: ['y'], instance_id: 'i2' } } });
      await b.client.resume();
      await until(() => existsSync(join(dir, 'guest-3.sock')), 'the restored guest program');
      const r = await b.req('GET', '/vm/config');
      assert.equal((JSON.parse(r.text) as { 'network-interfaces': { host_dev_name: string }[] })['network-interfaces'][0]?.host_dev_name, 'tap1');
    } finally {
      await b.close();
    }
  });
});

describe('fake Firecracker: its logger and metrics files', () => {
  it('are written at its own offset like Firecracker (no O_APPEND): a truncated file gets a hole, not a fresh start; warnings in its log format', async () => {
    const f = await fake({ guestHttp: 'guest-4.sock' });
    const log = join(dir, 'w.log');
    const metrics = join(dir, 'w-metrics.ndjson');
    try {
      await f.client.putLogger({ log_path: log, level: 'Warning', show_level: true });
      await f.client.putMetrics({ metrics_path: metrics });
      assert.equal(statSync(log).size, 0, 'created, nothing logged at Warning on its own');
      await f.client.putBootSource({ kernel_image_path: kernel, boot_args: 'quiet aether.token=t aether.config=mmds aether.vmm=firecracker' });
      await f.client.putNetworkInterface({ iface_id: 'eth0', host_dev_name: 'tap0' });
      await f.client.putMmdsConfig({ version: 'V2', network_interfaces: ['eth0'] });
      await f.client.action('InstanceStart');
      await f.client.action('FlushMetrics');
      const lines = readFileSync(metrics, 'utf8').trim().split('\n');
      assert.equal(lines.length, 2, 'one at InstanceStart, one on FlushMetrics');
      assert.equal((JSON.parse(lines[1] as string) as { logger: { missed_metrics_count: number } }).logger.missed_metrics_count, 0);
      const before = statSync(metrics).size;
      truncateSync(metrics, 0);
      await f.client.action('FlushMetrics');
      const after = readFileSync(metrics);
      assert.ok(after.length > before, 'written past where it was, not at 0');
      assert.ok(after.subarray(0, before).every((b) => b === 0), 'what the truncation removed reads as a hole');
      assert.ok(JSON.parse(after.subarray(before).toString()));

      await f.client.putMmds({ aether: { config: { token: 't', cmd: ['x'] } } });
      await until(() => existsSync(join(dir, 'guest-4.sock')), 'the guest program');
      const guest = new Client('http://guest', { socketPath: join(dir, 'guest-4.sock') });
      const res = await guest.request({ method: 'GET', path: '/__vmm-warn/a%20bad%20guest' });
      assert.equal(await res.body.text(), 'warned\n');
      await guest.close();
      assert.match(readFileSync(log, 'utf8'), /^\S+ \[anonymous-instance:fc_vmm:WARN\] a bad guest\n$/);
    } finally {
      await f.close();
    }
    assert.equal(readFileSync(metrics, 'utf8').trim().split('\n').filter((l) => l.includes('utc_timestamp_ms')).length, 2, 'and once more as it stops');
  });
});

describe('fake Firecracker: its logger as v1.16.1 has it, unconfigured and configured at launch', () => {
  it('unconfigured, it logs at Info to stdout (the serial console): its start-up and every API request', async () => {
    const f = await fake();
    try {
      await f.client.describe();
      await f.client.putMachineConfig({ vcpu_count: 1, mem_size_mib: 64 });
      const own = f.serial.map((l) => l.slice(l.indexOf(' [') + 1));
      assert.deepEqual(own, [
        '[anonymous-instance:main] Running Firecracker v1.16.1',
        `[anonymous-instance:main] Listening on API socket (${JSON.stringify(f.apiSock)}).`,
        '[anonymous-instance:fc_api] API server started.',
        '[anonymous-instance:fc_api] The API server received a Get request on "/".',
        `[anonymous-instance:fc_api] The API server received a Put request on "/machine-config" with body ${JSON.stringify(JSON.stringify({ vcpu_count: 1, mem_size_mib: 64 }))}.`,
      ]);
    } finally {
      await f.close();
    }
  });

  it('--log-path/--level/--show-level/--metrics-path: nothing of its own on stdout, no PUT needed; PUT /logger still reconfigures it, PUT /metrics is refused', async () => {
    const log = join(dir, 'launch.log');
    const metrics = join(dir, 'launch-metrics.ndjson');
    const f = await fake({ guestHttp: 'guest-launch.sock', logPath: log, level: 'Warning', showLevel: true, metricsPath: metrics });
    try {
      assert.equal(statSync(log).size, 0, 'created at launch; the Info lines are below Warning');
      assert.equal(statSync(metrics).size, 0, 'created at launch');
      const again = await f.req('PUT', '/metrics', JSON.stringify({ metrics_path: join(dir, 'other-metrics.ndjson') }));
      assert.equal(again.status, 400);
      assert.equal(again.fault, 'Metrics error: Cannot initialize the metrics system due to bad user input: Reinitialization of metrics not allowed.');
      await f.client.putBootSource({ kernel_image_path: kernel, boot_args: 'quiet aether.token=t aether.config=mmds aether.vmm=firecracker' });
      await f.client.putNetworkInterface({ iface_id: 'eth0', host_dev_name: 'tap0' });
      await f.client.putMmdsConfig({ version: 'V2', network_interfaces: ['eth0'] });
      await f.client.action('InstanceStart');
      assert.equal(readFileSync(metrics, 'utf8').trim().split('\n').length, 1, 'a metrics line at InstanceStart, to the file named at launch');
      await f.client.putMmds({ aether: { config: { token: 't', cmd: ['x'] } } });
      await until(() => existsSync(join(dir, 'guest-launch.sock')), 'the guest program');
      const guest = new Client('http://guest', { socketPath: join(dir, 'guest-launch.sock') });
      await (await guest.request({ method: 'GET', path: '/__vmm-warn/from%20the%20guest' })).body.text();
      await guest.close();
      assert.match(readFileSync(log, 'utf8'), /^\S+ \[anonymous-instance:fc_vmm:WARN\] from the guest\n$/);
      assert.deepEqual(f.serial.filter((l) => / \[anonymous-instance:/.test(l)), [], 'nothing of its own on the serial console');
    } finally {
      await f.close();
    }
  });

  it('PUT /logger may come any number of times before boot: each replaces the file, and the level falls back to Info unless given', async () => {
    const first = join(dir, 'relog-1.log');
    const second = join(dir, 'relog-2.log');
    const f = await fake({ logPath: first, level: 'Warning' });
    try {
      await f.client.putLogger({ log_path: second });
      await f.client.describe();
      assert.equal(readFileSync(first, 'utf8'), '', 'the first file saw nothing');
      assert.match(readFileSync(second, 'utf8'), /\[anonymous-instance:fc_api\] The API server received a Get request on "\/"\.\n$/, 'Info again: the level was not given');
      await f.client.putLogger({ level: 'Error' });
      const size = statSync(second).size;
      await f.client.describe();
      assert.equal(statSync(second).size, size, 'same file (no log_path), now at Error');
    } finally {
      await f.close();
    }
  });
});

describe('fake Firecracker as a process', () => {
  it('serves --api-sock, refuses an existing socket path, exits on SIGTERM', async () => {
    const sock = join(dir, 'proc.sock');
    const child = spawn(process.execPath, [FAKE, '--api-sock', sock], { stdio: ['ignore', 'ignore', 'pipe'] });
    const exited = new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
    try {
      await until(() => existsSync(sock), 'the API socket');
      const c = new FirecrackerClient(sock);
      let info: { app_name: string } | undefined;
      for (let i = 0; i < 100 && !info; i++) info = await c.describe().catch(() => new Promise<undefined>((r) => setTimeout(() => r(undefined), 20)));
      assert.equal(info?.app_name, 'Firecracker');
      await c.close();
      const second = spawn(process.execPath, [FAKE, '--api-sock', sock], { stdio: ['ignore', 'ignore', 'pipe'] });
      let err = '';
      second.stderr.on('data', (d: Buffer) => (err += d.toString()));
      assert.equal(await new Promise((r) => second.once('exit', r)), 1);
      assert.match(err, /Check that it is not already used/);
    } finally {
      child.kill('SIGTERM');
    }
    assert.equal(await exited, 0);
  });

  it('fails to start as Firecracker does on a bad --level (152) or a log file it cannot open (1)', async () => {
    const run = async (args: string[]): Promise<{ code: number | null; err: string }> => {
      const child = spawn(process.execPath, [FAKE, '--api-sock', join(dir, `bad-${++n}.sock`), ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
      let err = '';
      child.stderr.on('data', (d: Buffer) => (err += d.toString()));
      return { code: await new Promise((r) => child.once('exit', r)), err };
    };
    const level = await run(['--level', 'loud']);
    assert.equal(level.code, 152);
    assert.match(level.err, /Invalid value for logger level: Failed to parse string to level filter: loud/);
    const path = await run(['--log-path', join(dir, 'no-such-dir', 'fc.log')]);
    assert.equal(path.code, 1);
    assert.match(path.err, /Could not initialize logger: Failed to open target file/);
  });
});
