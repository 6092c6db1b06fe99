import { spawn, type ChildProcess } from 'node:child_process';
import './netns.ts';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { randomBytes } from 'node:crypto';
import { zipOf } from '../../src/archive/testing.ts';
import { findV1Mounts, InstanceCgroups, leftoverInstanceIds, sweepDeadAgents, v1Usable } from '../../src/runtime/cgroup.ts';

export const ROOT = resolve(import.meta.dirname, '../..');
export const AETHER_BIN = join(ROOT, 'bin/aether.mjs');

/** Shared by every gateway and agent this test process starts (`up` derives its own). */
export const CLUSTER_TOKEN = randomBytes(24).toString('hex');

const children = new Map<ChildProcess, string>();
/** Data dirs startAether made itself: removed when the test file's process ends. */
const tempDirs = new Set<string>();
process.once('exit', () => {
  for (const [c, dataDir] of children) {
    c.kill('SIGKILL');
    reapSandboxes(dataDir);
  }
  // Exit hooks are synchronous: give the killed ones (and their sandboxes) a moment to go.
  for (let i = 0; i < 50 && [...children.keys()].some((c) => c.pid !== undefined && existsSync(`/proc/${c.pid}`)); i++) sleepSync(50);
  for (const d of tempDirs) rmSync(d, { recursive: true, force: true });
  sweepTestCgroups();
});

/** Remove the empty cgroup dirs of agents that are gone (a SIGKILLed agent on a temp data dir). */
export function sweepTestCgroups(): string[] {
  const mounts = findV1Mounts();
  return v1Usable(mounts) ? sweepDeadAgents(mounts) : [];
}


function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}
/**
 * Stop the sandboxes a SIGKILLed platform left on this data dir, as an agent coming back there
 * would: instances outlive a killed agent (they wait to be adopted), tests must not leak them.
 * Synchronous, so it also runs when the test process exits.
 */
export function reapSandboxes(dataDir: string): void {
  let agentId: string;
  try {
    agentId = readFileSync(join(dataDir, 'agent-id'), 'utf8').trim().replace(/[^A-Za-z0-9._-]/g, '_');
  } catch {
    return;
  }
  const dir = join(dataDir, 'runtime', 'instances', agentId);
  for (const name of existsSync(dir) ? readdirSync(dir) : []) {
    try {
      const rec = JSON.parse(readFileSync(join(dir, name, 'record.json'), 'utf8')) as { launcher: { pid: number; start: string }; forwarder: { pid: number; start: string } };
      for (const p of [rec.forwarder, rec.launcher]) {
        const stat = readFileSync(`/proc/${p.pid}/stat`, 'utf8');
        if (stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] === p.start) process.kill(p.pid, 'SIGKILL');
      }
    } catch {
      // no record, or already gone
    }
  }
  // QEMU VMs outlive their agent too (own session, waiting to be adopted): each names its dir.
  const vms = join(dataDir, 'runtime-qemu', 'instances');
  for (const name of existsSync(vms) ? readdirSync(vms) : []) {
    try {
      const rec = JSON.parse(readFileSync(join(vms, name, 'state.json'), 'utf8')) as { qemu: { pid: number; start: string } };
      const stat = readFileSync(`/proc/${rec.qemu.pid}/stat`, 'utf8');
      if (stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] === rec.qemu.start) process.kill(rec.qemu.pid, 'SIGKILL');
    } catch {
      // no record, or already gone
    }
  }
  const mounts = findV1Mounts();
  if (process.getuid?.() !== 0 || !v1Usable(mounts)) return;
  for (const id of leftoverInstanceIds(mounts, agentId)) {
    const cg = new InstanceCgroups(mounts, agentId, id);
    for (let i = 0; i < 100 && !cg.killAll(); i++) sleepSync(20);
    for (let i = 0; i < 50 && !cg.remove(); i++) sleepSync(20);
  }
}

export interface RunningPlatform {
  url: string;
  token: string;
  dataDir: string;
  proc: ChildProcess;
  output: () => string;
  /** SIGTERM and wait for exit; resolves with the exit code. */
  stop(): Promise<number | null>;
  /** SIGKILL and wait for exit; then stop the sandboxes it left, unless a test wants them adopted. */
  kill(opts?: { keepSandboxes?: boolean }): Promise<void>;
}

/** Start the real `aether <role>` as a child process and wait for its "at http://…" line. */
export async function startAether(opts: { args?: string[]; env?: Record<string, string>; dataDir?: string; role?: 'up' | 'gateway' | 'agent' | 'deployer'; token?: string } = {}): Promise<RunningPlatform> {
  const dataDir = opts.dataDir ?? mkdtempSync(join(tmpdir(), 'aether-e2e-'));
  if (!opts.dataDir) tempDirs.add(dataDir);
  const token = opts.token ?? randomBytes(16).toString('hex');
  const role = opts.role ?? 'up';
  const args = [AETHER_BIN, '--data-dir', dataDir, role, ...(role === 'agent' || role === 'deployer' ? [] : ['--port', '0']), ...(opts.args ?? [])];
  const env: Record<string, string> = {
    ...(process.env as Record<string, string>),
    AETHER_ADMIN_TOKEN: token,
    ...(role === 'up' ? {} : { AETHER_CLUSTER_TOKEN: CLUSTER_TOKEN }),
    AETHER_LOG_LEVEL: 'warn',
    ...opts.env,
  };
  // Agents hold only the cluster token, as in a real deployment; the deployer neither secret.
  if ((role === 'agent' || role === 'deployer') && !opts.env?.['AETHER_ADMIN_TOKEN']) delete env['AETHER_ADMIN_TOKEN'];
  if (role === 'deployer') delete env['AETHER_CLUSTER_TOKEN'];
  delete env['NODE_EXTRA_CA_CERTS'];
  const proc = spawn(process.execPath, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
  // A failed assertion must not leave the test file waiting on a live child: let it exit, then kill.
  proc.unref();
  (proc.stdout as unknown as { unref(): void }).unref();
  (proc.stderr as unknown as { unref(): void }).unref();
  children.set(proc, dataDir);
  proc.once('exit', () => children.delete(proc));
  let out = '';
  proc.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr?.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((r) => proc.once('exit', (code) => r(code)));
  const url = await new Promise<string>((resolveUrl, reject) => {
    const timer = setTimeout(() => reject(new Error(`aether ${role} did not start in 30 s:\n${out}`)), 30_000);
    const check = (): void => {
      const m = /(?:is up|gateway|serving) at (http:\/\/\S+)/.exec(out);
      if (m?.[1]) {
        clearTimeout(timer);
        resolveUrl(m[1]);
      } else if (role === 'deployer' && /^deployer: /m.test(out)) {
        // The deployer serves nothing: it talks only to the store.
        clearTimeout(timer);
        resolveUrl('');
      }
    };
    proc.stdout?.on('data', check);
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`aether ${role} exited with ${code}:\n${out}`));
    });
  });
  return {
    url,
    token,
    dataDir,
    proc,
    output: () => out,
    async stop() {
      if (proc.exitCode === null) proc.kill('SIGTERM');
      return exited;
    },
    async kill(o = {}) {
      if (proc.exitCode === null) proc.kill('SIGKILL');
      await exited;
      if (!o.keepSandboxes) reapSandboxes(dataDir);
    },
  };
}

/** A zip of the given files (name -> content), built in memory. */
export const zipFiles = (files: Record<string, string>, opts: { folder?: string } = {}): Promise<Buffer> => zipOf(files, opts.folder);

export async function api<T = unknown>(p: { url: string; token: string }, method: string, path: string, body?: unknown): Promise<{ status: number; body: T }> {
  const headers: Record<string, string> = { authorization: `Bearer ${p.token}` };
  let payload: string | Buffer | undefined;
  if (Buffer.isBuffer(body)) {
    payload = body;
    headers['content-type'] = 'application/octet-stream';
  } else if (body !== undefined) {
    payload = JSON.stringify(body);
    headers['content-type'] = 'application/json';
  }
  const r = await fetch(p.url + path, { method, headers, ...(payload !== undefined ? { body: payload } : {}) });
  const text = await r.text();
  return { status: r.status, body: (text ? JSON.parse(text) : undefined) as T };
}

/** Poll until fn returns a truthy value or the deadline passes (bounded waits, not speed checks). */
export async function eventually<T>(fn: () => Promise<T | undefined | false>, timeoutMs = 15_000, stepMs = 100): Promise<T> {
  const end = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > end) throw new Error(`condition not met within ${timeoutMs} ms${last ? `: ${String(last)}` : ''}`);
    await new Promise((r) => setTimeout(r, stepMs));
  }
}
