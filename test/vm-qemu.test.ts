// A node function in a real QEMU microVM, end to end through the gateway of `aether up`: another
// kernel, env not on the kernel command line, logs, a snapshot restore, an update, a clean delete;
// and the guest's token check. Slow under TCG (a cold boot is 10-30 s here): few boots, long waits.
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { release, tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { contractSpec, probeHost } from '../src/runtime/index.ts';
import { createQemuRuntime } from '../src/runtime/qemu/index.ts';
import { startAether, zipFiles, type RunningPlatform } from './support/platform.ts';
import { qemuProcsUnder } from './support/procs.ts';

const host = await probeHost();
const qemu = host.sandboxes.find((s) => s.kind === 'qemu');
const skip = qemu?.ok ? (existsSync('/usr/bin/musl-gcc') || process.env['AETHER_MUSL_GCC'] ? false : 'musl-gcc not found (aether-init cannot be built)') : `qemu sandbox unavailable: ${qemu?.detail}`;
/** Per boot under TCG on a loaded 2-core host; the tests never depend on it being fast. */
const BOOT_MS = 240_000;

const HANDLER = `const http = require('node:http');
const fs = require('node:fs');
const os = require('node:os');
http.createServer((req, res) => {
  console.log('req ' + req.method + ' ' + req.url);
  res.setHeader('content-type', 'application/json');
  res.end(JSON.stringify({ release: os.release(), env: process.env, cmdline: fs.readFileSync('/proc/cmdline', 'utf8'), hostname: os.hostname() }));
}).listen(Number(process.env.PORT), () => console.log('vm function listening'));
`;


async function until<T>(f: () => Promise<T | undefined | false> | T | undefined | false, what: string, ms = 60_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

describe('qemu microVM sandbox through the gateway', { skip, timeout: 20 * 60_000 }, () => {
  let p: RunningPlatform;
  const api = (path: string, init: RequestInit = {}): Promise<Response> =>
    fetch(`${p.url}${path}`, { ...init, headers: { authorization: `Bearer ${p.token}`, ...(init.headers as Record<string, string> | undefined) } });
  const invoke = async (): Promise<{ status: number; ms: number; cold: string | null; body: { release: string; env: Record<string, string>; cmdline: string; hostname: string } }> => {
    const t0 = performance.now();
    const r = await fetch(`${p.url}/functions/vmfn/hello`);
    const text = await r.text();
    assert.equal(r.status, 200, text);
    return { status: r.status, ms: performance.now() - t0, cold: r.headers.get('x-aether-cold-start'), body: JSON.parse(text) as never };
  };
  const logs = async (): Promise<string> => (await (await api('/api/functions/vmfn/logs?tail=500')).text());

  before(async () => {
    // Base image and initramfs come from the host's image cache (built here on first use).
    p = await startAether({ args: ['--sandboxes', 'process,qemu', '--startup-timeout-ms', String(BOOT_MS)] });
  });
  after(async () => {
    if (p) {
      const dir = p.dataDir;
      await p.stop();
      assert.deepEqual(qemuProcsUnder(dir), [], 'no VM outlives the platform');
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('runs, restores from its snapshot, updates and deletes cleanly', { timeout: 15 * 60_000 }, async () => {
    const secret = `s3cret-${process.pid}`;
    const created = await api('/api/functions', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ name: 'vmfn', runtime: 'node', sandbox: 'qemu', memory_mb: 160, timeout_ms: BOOT_MS, env_vars: { SECRET: secret, GREETING: 'v1' }, scale_down_after_s: 1, scale_to_zero_after_s: 1 }),
    });
    const createdText = await created.text();
    assert.equal(created.status, 201, createdText);
    const fnId = (JSON.parse(createdText) as { id: string }).id;
    const up = await api('/api/functions/vmfn/code', { method: 'POST', headers: { 'content-type': 'application/octet-stream' }, body: await zipFiles({ 'handler.js': HANDLER }) });
    assert.equal(up.status, 200, await up.text());

    // 1. Cold boot: another kernel; env delivered, but not on the kernel command line.
    const first = await invoke();
    assert.equal(first.cold, 'true');
    assert.notEqual(first.body.release, release(), 'answered from the guest kernel');
    assert.match(first.body.release, /cloud/);
    assert.equal(first.body.env['SECRET'], secret);
    assert.equal(first.body.env['AETHER_FUNCTION_ID'], fnId);
    assert.ok(!first.body.cmdline.includes(secret) && !first.body.cmdline.includes('SECRET'), first.body.cmdline);
    const insts = (await (await api('/api/functions/vmfn/instances')).json()) as { sandbox?: string; endpoint: { guest?: { address: string } } }[];
    assert.equal(insts[0]?.sandbox, 'qemu');
    assert.equal(insts[0]?.endpoint.guest?.address, '10.0.2.15');
    // 2. The program's output reaches the function's logs.
    await until(async () => (await logs()).includes('req GET /hello'), 'request line in fn logs');
    assert.match(await logs(), /vm function listening/);
    assert.match(await logs(), /snapshot template saved/);

    // 3. Scaled to zero, the next cold start restores the template instead of booting.
    await until(async () => ((await (await api('/api/functions/vmfn/instances')).json()) as unknown[]).length === 0, 'scale to zero', 120_000);
    const second = await invoke();
    assert.equal(second.cold, 'true');
    assert.equal(second.body.env['SECRET'], secret);
    assert.match(await logs(), /restored from its snapshot template/);
    assert.notEqual(second.body.hostname, first.body.hostname, 'a restored guest has its own identity');
    // It skips the kernel boot and the init: strictly less work than the first start.
    assert.ok(second.ms < first.ms, `restore ${Math.round(second.ms)} ms vs cold boot ${Math.round(first.ms)} ms`);
    process.stderr.write(`# qemu cold start ${Math.round(first.ms)} ms, restored ${Math.round(second.ms)} ms (${(first.ms / second.ms).toFixed(1)}x)\n`);

    // 4. An update is served (a new version: new code drive and template).
    const put = await api('/api/functions/vmfn', { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ env_vars: { SECRET: secret, GREETING: 'v2' } }) });
    assert.equal(put.status, 200, await put.text());
    const third = await until(async () => {
      const r = await invoke();
      return r.body.env['GREETING'] === 'v2' ? r : undefined;
    }, 'the updated version', BOOT_MS);
    assert.equal(third.body.env['GREETING'], 'v2');
    const versions = join(p.dataDir, 'runtime-qemu', 'versions', fnId);
    await until(() => existsSync(versions) && readdirSync(versions).length === 1, 'the old version\'s template removed');

    // 5. Delete: no VM, no instance dir, no template is left.
    assert.equal((await api('/api/functions/vmfn', { method: 'DELETE' })).status, 204);
    await until(() => qemuProcsUnder(p.dataDir).length === 0, 'VMs gone', 60_000);
    await until(() => !existsSync(versions), 'templates removed');
    await until(() => readdirSync(join(p.dataDir, 'runtime-qemu', 'instances')).length === 0, 'instance dirs removed');
  });
});

describe('qemu guest token check', { skip, timeout: 10 * 60_000 }, () => {
  it('a config with the wrong token is refused: the program never starts', { timeout: 5 * 60_000 }, async () => {
    const dir = mkdtempSync(join(tmpdir(), 'aether-vm-token-'));
    try {
      const code = join(dir, 'code');
      mkdirSync(code);
      writeFileSync(join(code, 'handler.js'), HANDLER);
      const rt = createQemuRuntime({ dataDir: join(dir, 'rt'), agentId: 'token-test', wrongTokenForTests: true });
      const inst = await rt.create(contractSpec({ instanceId: 'bad-token', artifact: { kind: 'code', dir: code, runtime: 'node', entrypoint: 'handler.js' }, resources: { memoryMb: 160, vcpu: 1, pidsMax: 64 } }));
      const lines: string[] = [];
      inst.onLog((l) => lines.push(`${l.stream}: ${l.text}`));
      await inst.start();
      await assert.rejects(inst.waitReady(BOOT_MS), /exited/);
      const exit = await inst.exited;
      assert.equal(exit.reason, 'the guest rejected its config', JSON.stringify({ exit, lines }));
      assert.ok(lines.some((l) => l.includes('config rejected')), lines.join('\n'));
      assert.ok(!lines.some((l) => l.includes('vm function listening') || l.includes('AETHER-INIT: started')), lines.join('\n'));
      assert.deepEqual(qemuProcsUnder(dir), []);
      await rt.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
