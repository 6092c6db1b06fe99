/**
 * `npm run bench:distributed`: embedded mode (`aether up`) next to distributed mode (etcd + Redis +
 * Ceph radosgw, one `aether gateway` + one `aether agent`) in one run, same function and machine:
 *   - warm requests through each gateway at 1 and 16 connections: p50/p99 latency, requests/s, and
 *     the ratio distributed/embedded (distributed has one more hop: gateway -> agent -> instance),
 *     with the agent's hop on each of its data planes side by side (`--data-plane haproxy`: its own
 *     HAProxy carries the forward; `node`: its Node server does), and their ratio;
 *   - cold start (request -> first byte) of a fresh function: p50/p95 per mode, ratio distributed/embedded
 *     (agent on haproxy).
 * Results are printed and written to bench/results/distributed-<date>.json. Never part of `npm test`.
 * Every process it starts is stopped at the end (also on Ctrl-C), and it checks no sandbox is left.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { api, startAether, zipFiles, type RunningPlatform } from '../test/support/platform.ts';
import { backendsMissing, startBackends, type Backends } from '../test/support/backends.ts';
import { coldStart, HANDLER, held, load, pct, writeResults, type LoadResult } from './lib.ts';

const DURATION_MS = Number(process.env['BENCH_DURATION_MS'] ?? 4000);
const COLD_RUNS = Number(process.env['BENCH_COLD_RUNS'] ?? 10);
const CONNECTIONS = [1, 16];
const MODES = ['embedded', 'distributed'] as const;
type Mode = (typeof MODES)[number];
/** The agent's data planes, measured one after the other (one agent at a time holds the instance). */
type AgentPlane = 'haproxy' | 'node';
type WarmMode = 'embedded' | `distributed, agent ${AgentPlane}`;

interface InstanceRecord {
  instance_id: string;
  agent_id: string;
  agent_url?: string;
  endpoint: unknown;
  status: string;
}

/** Every AETHER_INSTANCE_ID found in a live process's environment (sandboxes carry theirs). */
function liveInstanceIds(): Set<string> {
  const ids = new Set<string>();
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = readFileSync(`/proc/${d}/stat`, 'utf8');
      if (stat.charAt(stat.lastIndexOf(')') + 2) === 'Z') continue;
      for (const kv of readFileSync(`/proc/${d}/environ`, 'utf8').split('\0')) {
        if (kv.startsWith('AETHER_INSTANCE_ID=')) ids.add(kv.slice('AETHER_INSTANCE_ID='.length));
      }
    } catch {
      // gone meanwhile, or not ours to read
    }
  }
  return ids;
}

function ratio(d: number, e: number): string {
  return (d / e).toFixed(2);
}

async function main(): Promise<void> {
  const missing = backendsMissing();
  if (missing) throw new Error(`bench:distributed needs etcd, Redis and Ceph: ${missing}`);

  const work = mkdtempSync(join(tmpdir(), 'aether-bench-dist-'));
  const token = randomBytes(16).toString('hex');
  const procs: RunningPlatform[] = [];
  let backends: Backends | undefined;
  /** Instance ids we saw, to prove at the end that none of their sandboxes outlived the run. */
  const seenInstances = new Set<string>();

  let cleaned: Promise<void> | undefined;
  const cleanup = (): Promise<void> =>
    (cleaned ??= held((async () => {
      // Agent last among aether processes: gateways stop routing first, then sandboxes go with the agent.
      for (const p of [...procs].reverse()) await p.stop().catch(() => p.kill());
      await backends?.stop();
      rmSync(work, { recursive: true, force: true });
    })()));
  const onSignal = (sig: NodeJS.Signals): void => {
    console.error(`\n${sig}: stopping everything this bench started`);
    void cleanup().finally(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);

  const results: Record<string, unknown> = { date: new Date().toISOString(), duration_ms: DURATION_MS, cold_runs: COLD_RUNS, node: process.version, root: process.getuid?.() === 0 };
  try {
    const t0 = Date.now();
    backends = await startBackends();
    const { flags } = backends;
    const env = { AETHER_LOG_LEVEL: 'error', ...backends.env };
    const start = async (role: 'up' | 'gateway' | 'agent', args: string[], e2: Record<string, string>, dir: string = role): Promise<RunningPlatform> => {
      const dataDir = join(work, dir);
      mkdirSync(dataDir);
      const p = await startAether({ role, token, dataDir, args, env: e2 });
      procs.push(p);
      return p;
    };
    const up = await start('up', [], { AETHER_LOG_LEVEL: 'error' });
    const gw = await start('gateway', flags, env);
    const startAgent = (plane: AgentPlane): Promise<RunningPlatform> => start('agent', [...flags, '--port', '0', '--advertise', '127.0.0.1', '--data-plane', plane], env, `agent-${plane}`);
    let agent = await startAgent('haproxy');
    console.log(`started etcd, Redis, radosgw, aether up, aether gateway + agent in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    const gateways: Record<Mode, RunningPlatform> = { embedded: up, distributed: gw };

    // Warm: one always-on instance per mode, same code.
    const zip = await zipFiles({ 'handler.js': HANDLER });
    const instances: Record<string, InstanceRecord[]> = {};
    for (const mode of MODES) {
      const p = gateways[mode];
      await api(p, 'POST', '/api/functions', { name: 'bench', runtime: 'node', max_instances: 1, min_instances: 1 });
      const upl = await api(p, 'POST', '/api/functions/bench/code', zip);
      if (upl.status !== 200) throw new Error(`${mode}: upload: ${upl.status} ${JSON.stringify(upl.body)}`);
      const first = await fetch(`${p.url}/functions/bench/`);
      const text = await first.text();
      if (first.status !== 200) throw new Error(`${mode}: first request: ${first.status} ${text}`);
      const inst = await api<InstanceRecord[]>(p, 'GET', '/api/functions/bench/instances');
      instances[mode] = inst.body;
      for (const i of inst.body) seenInstances.add(i.instance_id);
    }
    const remote = instances['distributed']?.[0]?.agent_url;
    if (!remote) throw new Error(`distributed instance has no agent_url: ${JSON.stringify(instances['distributed'])}`);
    results['instances'] = instances;

    const rows = new Map<number, Partial<Record<WarmMode, LoadResult>>>(CONNECTIONS.map((c) => [c, {}]));
    const measure = async (mode: WarmMode, origin: string): Promise<void> => {
      for (const c of CONNECTIONS) (rows.get(c) as Partial<Record<WarmMode, LoadResult>>)[mode] = await load({ origin, path: '/functions/bench/' }, c, DURATION_MS);
    };
    await measure('embedded', up.url);
    await measure('distributed, agent haproxy', gw.url);

    // Cold: a fresh function per start, alternating modes so drift on the machine hits both alike.
    const cold: Record<Mode, number[]> = { embedded: [], distributed: [] };
    for (let i = 0; i < COLD_RUNS; i++) {
      for (const mode of MODES) {
        const p = gateways[mode];
        const name = `cold-${i}`;
        cold[mode].push(await coldStart(p, name, zip));
        const inst = await api<InstanceRecord[]>(p, 'GET', `/api/functions/${name}/instances`);
        for (const x of inst.body) seenInstances.add(x.instance_id);
        await api(p, 'DELETE', `/api/functions/${name}`);
      }
    }
    const stats = (xs: number[]): { p50_ms: number; p95_ms: number; samples_ms: number[] } => {
      const s = [...xs].sort((a, b) => a - b);
      return { p50_ms: pct(s, 50), p95_ms: pct(s, 95), samples_ms: xs };
    };
    // The agent's hop on node: a fresh agent takes the instance over (min_instances keeps one).
    await agent.stop();
    agent = await startAgent('node');
    for (let i = 0; ; i++) {
      const r = await fetch(`${gw.url}/functions/bench/`);
      await r.text();
      const inst = await api<InstanceRecord[]>(gw, 'GET', '/api/functions/bench/instances');
      const on = inst.body.filter((x) => x.status === 'ready' && x.agent_url === agent.url);
      if (r.status === 200 && on.length === inst.body.length && on.length > 0) {
        for (const x of inst.body) seenInstances.add(x.instance_id);
        break;
      }
      if (i > 600) throw new Error(`the node agent did not take the instance over: ${JSON.stringify(inst.body)}`);
      await new Promise((res) => setTimeout(res, 100));
    }
    await measure('distributed, agent node', gw.url);

    const warm: Record<string, Record<string, unknown>> = {};
    const warmRows: string[] = [];
    const line = (c: number, label: string, p50: string, p99: string, rps: string, extra = ''): string => `${String(c).padStart(5)}  ${label.padEnd(28)} ${p50.padStart(7)} ${p99.padStart(8)} ${rps.padStart(8)}${extra}`;
    for (const [c, row] of rows) {
      const em = row.embedded as LoadResult;
      const dh = row['distributed, agent haproxy'] as LoadResult;
      const dn = row['distributed, agent node'] as LoadResult;
      const ratios = (a: LoadResult, b: LoadResult): { p50: number; p99: number; rps: number } => ({ p50: a.p50 / b.p50, p99: a.p99 / b.p99, rps: a.rps / b.rps });
      warm[`c${c}`] = { ...row, ratio_agent_haproxy_over_embedded: ratios(dh, em), ratio_agent_node_over_embedded: ratios(dn, em), ratio_agent_haproxy_over_agent_node: ratios(dh, dn) };
      for (const [label, x] of Object.entries(row)) warmRows.push(line(c, label, x.p50.toFixed(0), x.p99.toFixed(0), x.rps.toFixed(0), x.errors ? `  errors=${x.errors}` : ''));
      for (const [label, a, b] of [['ratio agent haproxy / e', dh, em], ['ratio agent node / e', dn, em], ['ratio agent haproxy / node', dh, dn]] as const) warmRows.push(line(c, label, ratio(a.p50, b.p50), ratio(a.p99, b.p99), ratio(a.rps, b.rps)));
    }
    results['warm'] = warm;
    console.log(`\nwarm through each gateway, ${DURATION_MS} ms per measurement (latency in µs; the gateway on its default data plane)`);
    console.log(`conns  ${'mode'.padEnd(28)}     p50      p99    req/s`);
    for (const l of warmRows) console.log(l);

    const ce = stats(cold.embedded);
    const cd = stats(cold.distributed);
    results['cold'] = { embedded: ce, distributed: cd, ratio_distributed_over_embedded: { p50: cd.p50_ms / ce.p50_ms, p95: cd.p95_ms / ce.p95_ms } };
    console.log(`\ncold start (request -> first byte, fresh function; agent on haproxy), ${COLD_RUNS} starts per mode (ms)`);
    console.log('mode             p50      p95');
    console.log(`${'embedded'.padEnd(12)} ${ce.p50_ms.toFixed(0).padStart(7)} ${ce.p95_ms.toFixed(0).padStart(8)}`);
    console.log(`${'distributed'.padEnd(12)} ${cd.p50_ms.toFixed(0).padStart(7)} ${cd.p95_ms.toFixed(0).padStart(8)}`);
    console.log(`${'ratio d/e'.padEnd(12)} ${ratio(cd.p50_ms, ce.p50_ms).padStart(7)} ${ratio(cd.p95_ms, ce.p95_ms).padStart(8)}`);
  } finally {
    await cleanup();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }

  const alive = procs.filter((p) => p.proc.exitCode === null && p.proc.signalCode === null).map((p) => p.proc.pid);
  const leftover = [...liveInstanceIds()].filter((id) => seenInstances.has(id));
  results['leftovers'] = { aether_pids: alive, sandboxes: leftover };
  const file = writeResults(results, 'distributed-');
  console.log(`\nwritten ${file}`);
  if (alive.length > 0 || leftover.length > 0) throw new Error(`left running: aether pids ${JSON.stringify(alive)}, sandboxes of ${JSON.stringify(leftover)}`);
  console.log(`stopped everything: ${procs.length} aether processes, etcd, Redis, Ceph; no sandbox of the ${seenInstances.size} instances left`);
}

await main();
