/**
 * Instances outlive a restarting agent: after `kill -9` of `aether up` the instance keeps running;
 * the next `aether up` on the same data dir adopts it (same instance, same host process, no cold
 * start, logs flowing), stops it once its function is deleted, and stops an instance whose
 * function was deleted while no agent ran. Needs root (namespaces sandbox).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { KEYS } from '../src/spec/index.ts';
import { createSqliteStore } from '../src/store/sqlite.ts';
import { hostLinks } from '../src/runtime/process/veth.ts';
import { findV1Mounts, v1Usable } from '../src/runtime/cgroup.ts';
import { procStart } from '../src/runtime/procfs.ts';
import { api, eventually, startAether, zipFiles, type RunningPlatform } from './support/platform.ts';
import { sandboxPids } from './support/procs.ts';

const HANDLER = `
let n = 0;
require('http').createServer((q, s) => {
  n++;
  console.log('served ' + q.url + ' #' + n);
  s.end(JSON.stringify({ instance: process.env.AETHER_INSTANCE_ID, n }));
}).listen(Number(process.env.PORT));
`;

const root = process.getuid?.() === 0;

/** Anything of the instance left on the host: processes, cgroup dirs, mounts, its runtime files. */
function leftovers(dataDir: string, instanceId: string): string[] {
  const found: string[] = [];
  if (sandboxPids(instanceId).length > 0) found.push('processes');
  for (const ctl of ['memory', 'cpu', 'pids', 'cpu,cpuacct']) {
    const base = `/sys/fs/cgroup/${ctl}/aether`;
    if (!existsSync(base)) continue;
    for (const agent of readdirSync(base)) if (existsSync(join(base, agent, instanceId))) found.push(`cgroup ${ctl}`);
  }
  if (readFileSync('/proc/self/mountinfo', 'utf8').includes(instanceId)) found.push('mounts');
  const agentIds = existsSync(join(dataDir, 'runtime', 'instances')) ? readdirSync(join(dataDir, 'runtime', 'instances')) : [];
  for (const a of agentIds) if (existsSync(join(dataDir, 'runtime', 'instances', a, instanceId))) found.push('instance dir');
  if (existsSync(join(dataDir, 'runtime', 'sockets', `${instanceId}.sock`))) found.push('socket');
  return found;
}

const mounts = findV1Mounts();

/**
 * The agent's cgroup dirs (`<controller>/aether/<agent id>`) and whether a live process marks each
 * as its own (`.owner-<pid>-<start>`, see src/runtime/cgroup.ts): an unmarked one is never swept.
 */
function agentCgroups(dataDir: string): { dir: string; liveOwner: boolean }[] {
  if (!v1Usable(mounts)) return [];
  const agentId = readFileSync(join(dataDir, 'agent-id'), 'utf8').trim().replace(/[^A-Za-z0-9._-]/g, '_');
  return Object.values(mounts).flatMap((m) => {
    const dir = join(m, 'aether', agentId);
    if (!existsSync(dir)) return [];
    const liveOwner = readdirSync(dir).some((n) => {
      const owner = /^\.owner-(\d+)-(\d+)$/.exec(n);
      return owner !== null && procStart(Number(owner[1])) === owner[2];
    });
    return [{ dir, liveOwner }];
  });
}

async function call(p: RunningPlatform, name: string, path: string): Promise<{ status: number; cold: string | null; instance: string; n: number }> {
  const r = await fetch(`${p.url}/functions/${name}${path}`);
  const text = await r.text();
  assert.equal(r.status, 200, text);
  const body = JSON.parse(text) as { instance: string; n: number };
  return { status: r.status, cold: r.headers.get('x-aether-cold-start'), ...body };
}

async function logsOf(p: RunningPlatform, name: string): Promise<string> {
  const r = await fetch(`${p.url}/api/functions/${name}/logs?tail=500`, { headers: { authorization: `Bearer ${p.token}` } });
  return r.text();
}

test('kill -9 of aether up: the instance lives on, is adopted warm by the restart, and stopped once not wanted', { skip: !root && 'needs root', timeout: 180_000 }, async () => {
  const platforms: RunningPlatform[] = [];
  // A restart adopts only while the old lease lives: make it outlast a slow restart on a busy host.
  const env = { AETHER_LEASE_TTL_MS: '120000' };
  try {
    const first = await startAether({ env });
    platforms.push(first);
    for (const name of ['kept', 'orphan']) {
      assert.equal((await api(first, 'POST', '/api/functions', { name, runtime: 'node', memory_mb: 128, scale_down_after_s: 3600, scale_to_zero_after_s: 3600 })).status, 201);
      assert.equal((await api(first, 'POST', `/api/functions/${name}/code`, await zipFiles({ 'handler.js': HANDLER }))).status, 200);
    }
    const cold = await call(first, 'kept', '/a');
    assert.equal(cold.cold, 'true');
    const warm = await call(first, 'kept', '/b');
    assert.equal(warm.cold, 'false');
    assert.equal(warm.instance, cold.instance);
    const id = cold.instance;
    const pids = sandboxPids(id);
    assert.ok(pids.length > 0, 'the program runs on the host');

    // kill -9 of the whole platform (gateway and agent in one process)
    await first.kill({ keepSandboxes: true });
    await new Promise((r) => setTimeout(r, 300));
    assert.deepEqual(sandboxPids(id), pids, 'the instance outlives its agent');

    const second = await startAether({ dataDir: first.dataDir, token: first.token, env });
    platforms.push(second);
    const again = await call(second, 'kept', '/c');
    assert.equal(again.instance, id, 'the same instance serves');
    assert.equal(again.cold, 'false', 'no cold start');
    assert.equal(again.n, 3, 'the same program (its request counter went on)');
    assert.deepEqual(sandboxPids(id), pids, 'the same host processes');
    await eventually(async () => (await logsOf(second, 'kept')).includes('served /c #3'), 10_000);
    // The adopter marks the agent's cgroup dirs as its own (the first owner's marker went as dead),
    // so they are swept should it die too.
    for (const c of agentCgroups(first.dataDir)) assert.ok(c.liveOwner, `${c.dir} is marked by a live agent`);

    // Warm the second function, then kill -9 and delete it while no platform runs.
    const orphan = (await call(second, 'orphan', '/x')).instance;
    assert.ok(sandboxPids(orphan).length > 0);
    // forwarder network: its forwarder runs outside the cgroup and has no AETHER_ env: find it through
    // the record; veth network: its veth pair (host side ae<n>) must go with it
    const agentDir = readdirSync(join(first.dataDir, 'runtime', 'instances'))[0] ?? '';
    const record = JSON.parse(readFileSync(join(first.dataDir, 'runtime', 'instances', agentDir, orphan, 'record.json'), 'utf8')) as { forwarder?: { pid: number }; net?: { ifname: string } };
    const fwd = record.forwarder;
    const link = record.net?.ifname;
    assert.ok(fwd || link, JSON.stringify(record));
    const forwarderAlive = (): boolean => (fwd ? existsSync(`/proc/${fwd.pid}`) && readFileSync(`/proc/${fwd.pid}/cmdline`, 'utf8').includes('forwarder.mjs') : hostLinks().some((l) => l.ifname === link));
    assert.ok(forwarderAlive());
    await second.kill({ keepSandboxes: true });
    const store = createSqliteStore({ path: join(first.dataDir, 'store.db') });
    try {
      const fns = await store.list(KEYS.functions);
      const fn = fns.kvs.map((kv) => JSON.parse(kv.value) as { id: string; name: string }).find((f) => f.name === 'orphan');
      assert.ok(fn);
      await store.delete(KEYS.function(fn.id));
    } finally {
      await store.close();
    }

    const third = await startAether({ dataDir: first.dataDir, token: first.token, env });
    platforms.push(third);
    // the orphan was stopped at start, before anything was served
    assert.deepEqual(leftovers(first.dataDir, orphan), [], 'nothing of the orphan is left');
    assert.equal(forwarderAlive(), false, 'its forwarder (or veth pair) was removed too');
    const kept = await call(third, 'kept', '/d');
    assert.deepEqual([kept.instance, kept.cold, kept.n], [id, 'false', 4], 'the kept one was adopted a second time');

    // Deleting the function stops the adopted instance.
    assert.equal((await api(third, 'DELETE', '/api/functions/kept')).status, 204);
    await eventually(async () => leftovers(first.dataDir, id).length === 0, 15_000);
    assert.equal(await third.stop(), 0);
    assert.deepEqual(agentCgroups(first.dataDir), [], 'a clean stop leaves no cgroup dir of the agent');
  } finally {
    for (const p of platforms) await p.kill();
  }
});
