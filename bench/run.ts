/**
 * `npm run bench`: side-by-side in one run, on the same function code and machine:
 *   - warm requests straight to the function's own port (a bare `node handler.js`, no platform
 *     process), nginx in front of that port, Aether with `--data-plane haproxy`, Aether with
 *     `--data-plane node` (and, for reference, the instance's own endpoint: its sandbox address on the
 *     veth network, or its forwarder's socket), at 1 and
 *     64 connections: p50/p99 latency, requests/s, ratios; memory of an idle instance;
 *   - cold start (request -> first byte) over 20 starts vs a bare `node handler.js` spawn -> first response.
 * Results are printed and written to bench/results/<date>.json. Never part of `npm test`.
 */
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { Pool } from 'undici';
import { api, startAether, zipFiles } from '../test/support/platform.ts';
import { freePort } from '../src/core/index.ts';
import { coldStart, cpuByGroup, HANDLER, held, load, pct, writeResults, type Target } from './lib.ts';

const DURATION_MS = Number(process.env['BENCH_DURATION_MS'] ?? 3000);
/**
 * Rounds per connection count: every path once per round, in a rotated order, and the ratios taken
 * per round and reported as the median. On this kind of shared 2-vCPU VM one 5 s cell varies by
 * 10-20 % from run to run (more than the gaps being measured), and a slow phase of the machine hit
 * whichever path happened to run then.
 */
const ROUNDS = Math.max(1, Number(process.env['BENCH_ROUNDS'] ?? 5));
const COLD_RUNS = Number(process.env['BENCH_COLD_RUNS'] ?? 20);

async function startNginx(upstream: { socketPath?: string; hostPort?: string }, dir: string): Promise<{ origin: string; stop(): void }> {
  const port = await freePort();
  mkdirSync(join(dir, 'logs'), { recursive: true });
  const server = upstream.socketPath ? `unix:${upstream.socketPath}` : upstream.hostPort;
  const conf = `daemon off; master_process off; worker_processes 1; error_log ${dir}/logs/error.log; pid ${dir}/nginx.pid;
events { worker_connections 1024; }
http { access_log off; upstream fn { server ${server}; keepalive 128; }
  client_body_temp_path ${dir}; proxy_temp_path ${dir}; fastcgi_temp_path ${dir}; uwsgi_temp_path ${dir}; scgi_temp_path ${dir};
  server { listen 127.0.0.1:${port}; location / { proxy_pass http://fn; proxy_http_version 1.1; proxy_set_header Connection ""; } } }`;
  writeFileSync(join(dir, 'nginx.conf'), conf);
  const proc = spawn('nginx', ['-c', join(dir, 'nginx.conf'), '-p', dir], { stdio: 'ignore' });
  for (let i = 0; i < 200; i++) {
    try {
      const p = new Pool(`http://127.0.0.1:${port}`);
      const r = await p.request({ path: '/', method: 'GET' });
      await r.body.text();
      await p.close();
      break;
    } catch {
      await new Promise((r) => setTimeout(r, 25));
    }
  }
  return { origin: `http://127.0.0.1:${port}`, stop: () => proc.kill('SIGKILL') };
}

/** Bare baseline: spawn node handler.js, poll until the first 200. */
async function bareSpawn(dir: string): Promise<number> {
  const port = await freePort();
  const env: NodeJS.ProcessEnv = { ...process.env, PORT: String(port) };
  delete env['NODE_EXTRA_CA_CERTS'];
  const t0 = performance.now();
  const proc = spawn(process.execPath, ['handler.js'], { cwd: dir, env, stdio: 'ignore' });
  const pool = new Pool(`http://127.0.0.1:${port}`);
  try {
    for (;;) {
      try {
        const r = await pool.request({ path: '/', method: 'GET' });
        await r.body.text();
        return performance.now() - t0;
      } catch {
        await new Promise((r) => setTimeout(r, 2));
      }
    }
  } finally {
    await pool.destroy();
    proc.kill('SIGKILL');
  }
}

/** RSS (KiB) of every process in the given network namespace (the instance: unshare, launcher, program; with the forwarder network also the forwarder). */
function netnsMemory(netns: string): { total: number; forwarder: number; program: number; totalPss: number; programPss: number } {
  let total = 0;
  let forwarder = 0;
  let program = 0;
  // PSS too: RSS counts the text of perl/unshare/libc in full for every instance, though it is shared
  let totalPss = 0;
  let programPss = 0;
  for (const pid of readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    try {
      if (readlinkSync(`/proc/${pid}/ns/net`) !== netns) continue;
      const rss = Number(/^VmRSS:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0);
      const pss = Number(/^Pss:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'))?.[1] ?? 0);
      const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
      total += rss;
      totalPss += pss;
      if (cmd.includes('forwarder.mjs')) forwarder += rss;
      if (cmd.includes('handler.js') || /node\0?$/.test(cmd.split('\0')[0] ?? '')) {
        program = Math.max(program, rss);
        programPss = Math.max(programPss, pss);
      }
    } catch {
      // process gone
    }
  }
  return { total, forwarder, program, totalPss, programPss };
}

/** The network namespace of the process whose environment names this instance. */
function instanceNetns(instanceId: string): string | undefined {
  for (const pid of readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    try {
      if (readFileSync(`/proc/${pid}/environ`, 'utf8').includes(`AETHER_INSTANCE_ID=${instanceId}`)) return readlinkSync(`/proc/${pid}/ns/net`);
    } catch {
      // gone or not ours
    }
  }
  return undefined;
}

interface Platform {
  p: Awaited<ReturnType<typeof startAether>>;
  endpoint: { kind: string; path?: string; host?: string; port?: number; preamble?: boolean };
  instanceId: string;
}

async function platform(dataPlane: 'haproxy' | 'node'): Promise<Platform> {
  const p = await startAether({ args: ['--data-plane', dataPlane], env: { AETHER_LOG_LEVEL: 'error' } });
  await api(p, 'POST', '/api/functions', { name: 'bench', runtime: 'node', max_instances: 1, min_instances: 1 });
  await api(p, 'POST', '/api/functions/bench/code', await zipFiles({ 'handler.js': HANDLER }));
  for (let i = 0; i < 50; i++) {
    // Warm, and through the data plane's fast path (HAProxy takes over once the instance is ready).
    const r = await fetch(`${p.url}/functions/bench/`);
    await r.text();
    if (r.headers.get('x-aether-cold-start') === 'false') break;
    await new Promise((res) => setTimeout(res, 100));
  }
  await new Promise((res) => setTimeout(res, 500));
  const inst = await api<{ instance_id: string; endpoint: Platform['endpoint'] }[]>(p, 'GET', '/api/functions/bench/instances');
  const first = inst.body[0];
  if (!first) throw new Error(`no instance: ${JSON.stringify(inst.body)}`);
  return { p, endpoint: first.endpoint, instanceId: first.instance_id };
}

async function bareServer(dir: string): Promise<{ origin: string; stop(): void; pid: number }> {
  const port = await freePort();
  const env: NodeJS.ProcessEnv = { ...process.env, PORT: String(port) };
  delete env['NODE_EXTRA_CA_CERTS'];
  const proc = spawn(process.execPath, ['handler.js'], { cwd: dir, env, stdio: 'ignore' });
  const pool = new Pool(`http://127.0.0.1:${port}`);
  for (;;) {
    try {
      const r = await pool.request({ path: '/', method: 'GET' });
      await r.body.text();
      break;
    } catch {
      await new Promise((r) => setTimeout(r, 10));
    }
  }
  await pool.destroy();
  return { origin: `http://127.0.0.1:${port}`, stop: () => proc.kill('SIGKILL'), pid: proc.pid ?? 0 };
}

type Row = { p50: number; p99: number; rps: number; errors: number; cpu?: Record<string, number> };

/** One run of `load` with the CPU each process group spent on it, in µs per request. */
async function measured(t: Target, connections: number): Promise<Row> {
  const before = cpuByGroup();
  const r = await load(t, connections, DURATION_MS);
  const after = cpuByGroup();
  const cpu = Object.fromEntries(Object.entries(after).map(([g, us]) => [g, (us - (before[g] ?? 0)) / Math.max(1, r.requests)]));
  return { p50: r.p50, p99: r.p99, rps: r.rps, errors: r.errors, cpu };
}

function median(v: number[]): number {
  const s = [...v].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
}

async function main(): Promise<void> {
  const work = mkdtempSync(join(tmpdir(), 'aether-bench-'));
  const results: Record<string, unknown> = { date: new Date().toISOString(), duration_ms: DURATION_MS, rounds: ROUNDS, node: process.version, root: process.getuid?.() === 0 };
  const bareDir = join(work, 'bare');
  mkdirSync(bareDir);
  writeFileSync(join(bareDir, 'handler.js'), HANDLER);
  const bare = await bareServer(bareDir);
  const nginx = await startNginx({ hostPort: bare.origin.replace('http://', '') }, join(work, 'nginx'));
  let nginxInst: { stop(): void } | undefined;
  const hap = await platform('haproxy');
  const nod = await platform('node');
  try {
    const ep = hap.endpoint;
    // veth: the sandbox's address; forwarder: its plain twin (the socket itself starts answers with the agent's preamble byte).
    const socket: Target = ep.kind === 'unix' ? { origin: 'http://localhost', socketPath: `${ep.path as string}${ep.preamble ? '.raw' : ''}`, path: '/' } : { origin: `http://${ep.host}:${ep.port}`, path: '/' };
    const targets: Record<string, Target> = {
      direct: { origin: bare.origin, path: '/' },
      nginx: { origin: nginx.origin, path: '/' },
      haproxy: { origin: hap.p.url, path: '/functions/bench/' },
      node: { origin: nod.p.url, path: '/functions/bench/' },
      'inst-sock': socket,
    };
    // For reference, nginx in front of the sandboxed instance (the same veth hop and sandbox as the
    // Aether rows): how much of Aether's gap to the nginx row is the sandbox's network, not the proxy.
    if (ep.kind === 'tcp') {
      const n = await startNginx({ hostPort: `${ep.host as string}:${ep.port as number}` }, join(work, 'nginx-inst'));
      nginxInst = n;
      targets['nginx-inst'] = { origin: n.origin, path: '/' };
    }
    const warmRes: Record<string, unknown> = {};
    const names = Object.keys(targets);
    for (const c of [1, 64]) {
      const rounds: Record<string, Row>[] = [];
      for (let r = 0; r < ROUNDS; r++) {
        const row: Record<string, Row> = {};
        // Rotated start: no path always runs first (or right after the same neighbour).
        for (let k = 0; k < names.length; k++) {
          const name = names[(k + r) % names.length] as string;
          row[name] = await measured(targets[name] as Target, c);
        }
        rounds.push(row);
      }
      const med = (f: (row: Record<string, Row>) => number): number => median(rounds.map(f));
      const groups = ['loadgen', 'haproxy', 'nginx', 'program', 'platform', 'other'];
      const row: Record<string, Row> = Object.fromEntries(names.map((name) => [name, {
        p50: med((x) => (x[name] as Row).p50),
        p99: med((x) => (x[name] as Row).p99),
        rps: med((x) => (x[name] as Row).rps),
        errors: rounds.reduce((a, x) => a + (x[name] as Row).errors, 0),
        cpu: Object.fromEntries(groups.map((g) => [g, med((x) => (x[name] as Row).cpu?.[g] ?? 0)])),
      }]));
      const d = row['direct'] as Row;
      const n = row['nginx'] as Row;
      console.log(`\nwarm, ${c} connection(s), ${ROUNDS} rounds of ${DURATION_MS} ms per path, medians (latency in µs; inst-sock = the instance's own endpoint: ${ep.kind === 'tcp' ? 'its veth address; nginx-inst = nginx in front of it' : 'its forwarder socket'})`);
      console.log('path         p50     p99     req/s   added p50 vs direct   req/s vs nginx');
      for (const [name, r] of Object.entries(row)) {
        console.log(`${name.padEnd(10)} ${r.p50.toFixed(0).padStart(6)} ${r.p99.toFixed(0).padStart(7)} ${r.rps.toFixed(0).padStart(8)}   ${(r.p50 - d.p50).toFixed(0).padStart(6)} µs            ${(r.rps / n.rps).toFixed(2)}  ${r.errors ? `errors=${r.errors}` : ''}`);
      }
      console.log(`CPU per request (µs, user + system, median of rounds; platform = both aether processes, the idle one included): ${groups.join(' / ')}`);
      for (const [name, r] of Object.entries(row)) {
        const cpu = r.cpu ?? {};
        console.log(`${name.padEnd(10)} ${groups.map((g) => (cpu[g] ?? 0).toFixed(1).padStart(6)).join(' ')}   total ${Object.values(cpu).reduce((a, b) => a + b, 0).toFixed(1)}`);
      }
      // Ratios within each round (both sides measured minutes apart at most), then their median.
      const added = (x: Record<string, Row>, k: string): number => ((x[k] as Row).p50 - (x['direct'] as Row).p50) / Math.max(1, (x['nginx'] as Row).p50 - (x['direct'] as Row).p50);
      const rps = (x: Record<string, Row>, k: string): number => (x[k] as Row).rps / (x['nginx'] as Row).rps;
      const per = {
        haproxy_added_p50_vs_nginx_added: rounds.map((x) => added(x, 'haproxy')),
        node_added_p50_vs_nginx_added: rounds.map((x) => added(x, 'node')),
        haproxy_rps_vs_nginx: rounds.map((x) => rps(x, 'haproxy')),
        node_rps_vs_nginx: rounds.map((x) => rps(x, 'node')),
      };
      // Against nginx in front of the same sandboxed instance: latency added over the instance's own address.
      const vsInst = targets['nginx-inst']
        ? {
            haproxy_rps_vs_nginx_inst: rounds.map((x) => rps(x, 'haproxy') * ((x['nginx'] as Row).rps / (x['nginx-inst'] as Row).rps)),
            haproxy_added_p50_vs_nginx_inst_added: rounds.map((x) => ((x['haproxy'] as Row).p50 - (x['inst-sock'] as Row).p50) / Math.max(1, (x['nginx-inst'] as Row).p50 - (x['inst-sock'] as Row).p50)),
          }
        : {};
      const ratios = Object.fromEntries(Object.entries({ ...per, ...vsInst }).map(([k, v]) => [k, median(v)])) as Record<keyof typeof per, number> & Partial<Record<keyof typeof vsInst, number>>;
      warmRes[`c${c}`] = { ...row, ratios, per_round: { ratios: { ...per, ...vsInst }, rows: rounds } };
      const list = (v: number[]): string => v.map((x) => x.toFixed(2)).join(' ');
      console.log(`added p50 / nginx's added p50 (median of rounds): haproxy ${ratios.haproxy_added_p50_vs_nginx_added.toFixed(2)}, node ${ratios.node_added_p50_vs_nginx_added.toFixed(2)} (target <= 1.5 at c=1); per round haproxy ${list(per.haproxy_added_p50_vs_nginx_added)}`);
      console.log(`req/s / nginx's (median of rounds): haproxy ${ratios.haproxy_rps_vs_nginx.toFixed(2)}, node ${ratios.node_rps_vs_nginx.toFixed(2)} (target >= 0.8 at c=64); per round haproxy ${list(per.haproxy_rps_vs_nginx)}`);
      if (ratios.haproxy_rps_vs_nginx_inst !== undefined && ratios.haproxy_added_p50_vs_nginx_inst_added !== undefined) {
        console.log(`against nginx in front of the same sandboxed instance: added p50 haproxy ${ratios.haproxy_added_p50_vs_nginx_inst_added.toFixed(2)}x nginx-inst's, req/s ${ratios.haproxy_rps_vs_nginx_inst.toFixed(2)}x (reference, not the target's baseline)`);
      }
    }
    results['warm'] = warmRes;

    // Memory of one idle instance: everything in its network namespace (launcher chain, program, and the forwarder if any).
    const netns = instanceNetns(hap.instanceId);
    if (netns) {
      const m = netnsMemory(netns);
      const bareRss = Number(/^VmRSS:\s+(\d+)/m.exec(readFileSync(`/proc/${bare.pid}/status`, 'utf8'))?.[1] ?? 0);
      results['memory_kib'] = { network: ep.kind === 'tcp' ? 'veth' : 'forwarder', instance_total: m.total, forwarder: m.forwarder, program: m.program, bare_program: bareRss, instance_total_pss: m.totalPss, program_pss: m.programPss };
      console.log(`\nidle instance memory (RSS, ${ep.kind === 'tcp' ? 'veth' : 'forwarder'} network): ${(m.total / 1024).toFixed(1)} MiB in its sandbox, of which forwarder ${(m.forwarder / 1024).toFixed(1)} MiB; the program alone ${(m.program / 1024).toFixed(1)} MiB (bare: ${(bareRss / 1024).toFixed(1)} MiB); overhead over the program ${((m.total - m.program) / 1024).toFixed(1)} MiB (target <= 5); by PSS ${((m.totalPss - m.programPss) / 1024).toFixed(1)} MiB`);
    } else {
      console.log('\nidle instance memory: instance process not found (not sandboxed?)');
    }
  } finally {
    nginx.stop();
    nginxInst?.stop();
    bare.stop();
    await held(nod.p.stop());
  }
  try {
    // Cold starts (haproxy data plane): a fresh function each time (same code), request -> first byte.
    const zip = await zipFiles({ 'handler.js': HANDLER });
    const cold: number[] = [];
    for (let i = 0; i < COLD_RUNS; i++) {
      const name = `cold-${i}`;
      cold.push(await coldStart(hap.p, name, zip));
      await api(hap.p, 'DELETE', `/api/functions/${name}`);
    }
    const bareCold: number[] = [];
    for (let i = 0; i < COLD_RUNS; i++) bareCold.push(await bareSpawn(bareDir));
    cold.sort((a, b) => a - b);
    bareCold.sort((a, b) => a - b);
    const c = { aether_p50_ms: pct(cold, 50), aether_p95_ms: pct(cold, 95), bare_p50_ms: pct(bareCold, 50), bare_p95_ms: pct(bareCold, 95), ratio_p50: pct(cold, 50) / pct(bareCold, 50) };
    results['cold'] = c;
    console.log(`\ncold start over ${COLD_RUNS} starts: aether p50 ${c.aether_p50_ms.toFixed(0)} ms p95 ${c.aether_p95_ms.toFixed(0)} ms | bare spawn p50 ${c.bare_p50_ms.toFixed(0)} ms p95 ${c.bare_p95_ms.toFixed(0)} ms | ratio p50 ${c.ratio_p50.toFixed(2)}`);
  } finally {
    await held(hap.p.stop());
  }
  const file = writeResults(results);
  console.log(`\nwritten ${file}`);
}

await main();
