/**
 * `npm run bench`: side-by-side in one run, on the same function and machine:
 *   - warm requests through the gateway vs straight to the instance vs through nginx (reverse proxy
 *     to the same instance), at 1 and 64 connections: p50/p99 latency, requests/s, ratios to direct;
 *   - cold start (request -> first byte) over 20 starts vs a bare `node handler.js` spawn -> first response.
 * Results are printed and written to bench/results/<date>.json. Never part of `npm test`.
 */
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { Pool } from 'undici';
import { api, startAether, zipFiles } from '../test/support/platform.ts';
import { coldStart, freePort, HANDLER, held, load, pct, writeResults, type Target } from './lib.ts';

const DURATION_MS = Number(process.env['BENCH_DURATION_MS'] ?? 5000);
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

async function main(): Promise<void> {
  const work = mkdtempSync(join(tmpdir(), 'aether-bench-'));
  const p = await startAether({ env: { AETHER_LOG_LEVEL: 'error' } });
  const results: Record<string, unknown> = { date: new Date().toISOString(), duration_ms: DURATION_MS, node: process.version, root: process.getuid?.() === 0 };
  try {
    await api(p, 'POST', '/api/functions', { name: 'bench', runtime: 'node', max_instances: 1, min_instances: 1 });
    await api(p, 'POST', '/api/functions/bench/code', await zipFiles({ 'handler.js': HANDLER }));
    const warm = await fetch(`${p.url}/functions/bench/`);
    await warm.text();
    const inst = await api<{ instance_id: string; endpoint: { kind: string; path?: string; host?: string; port?: number } }[]>(p, 'GET', '/api/functions/bench/instances');
    const ep = inst.body[0]?.endpoint;
    if (!ep) throw new Error(`no instance endpoint: ${JSON.stringify(inst.body)}`);
    const direct: Target = ep.kind === 'unix' ? { origin: 'http://localhost', socketPath: ep.path as string, path: '/' } : { origin: `http://${ep.host}:${ep.port}`, path: '/' };
    const nginx = await startNginx(ep.kind === 'unix' ? { socketPath: ep.path as string } : { hostPort: `${ep.host}:${ep.port}` }, join(work, 'nginx'));
    const targets: Record<string, Target> = { direct, nginx: { origin: nginx.origin, path: '/' }, gateway: { origin: p.url, path: '/functions/bench/' } };
    const warmRes: Record<string, Record<string, unknown>> = {};
    for (const c of [1, 64]) {
      const row: Record<string, { p50: number; p99: number; rps: number; errors: number }> = {};
      for (const [name, t] of Object.entries(targets)) row[name] = await load(t, c, DURATION_MS);
      warmRes[`c${c}`] = row;
      const d = row['direct'] as { p50: number; rps: number };
      console.log(`\nwarm, ${c} connection(s), ${DURATION_MS} ms each (latency in µs)`);
      console.log('path       p50     p99     req/s    p50 overhead vs direct   req/s vs direct');
      for (const [name, r] of Object.entries(row)) {
        console.log(`${name.padEnd(8)} ${r.p50.toFixed(0).padStart(6)} ${r.p99.toFixed(0).padStart(7)} ${r.rps.toFixed(0).padStart(8)}    ${(r.p50 - d.p50).toFixed(0).padStart(6)} µs              ${(r.rps / d.rps).toFixed(2)}  ${r.errors ? `errors=${r.errors}` : ''}`);
      }
      const g = row['gateway'] as { p50: number; rps: number };
      const n = row['nginx'] as { p50: number; rps: number };
      const ratio = { gateway_overhead_vs_nginx_overhead: (g.p50 - d.p50) / Math.max(1, n.p50 - d.p50), gateway_rps_vs_nginx_rps: g.rps / n.rps };
      warmRes[`c${c}`] = { ...row, ratios: ratio };
      console.log(`gateway p50 overhead / nginx p50 overhead = ${ratio.gateway_overhead_vs_nginx_overhead.toFixed(2)} (target <= 2), gateway req/s / nginx req/s = ${ratio.gateway_rps_vs_nginx_rps.toFixed(2)} (target >= 0.7)`);
    }
    nginx.stop();
    results['warm'] = warmRes;

    // Cold starts: a fresh function each time (same code), request -> first byte.
    const zip = await zipFiles({ 'handler.js': HANDLER });
    const cold: number[] = [];
    for (let i = 0; i < COLD_RUNS; i++) {
      const name = `cold-${i}`;
      cold.push(await coldStart(p, name, zip));
      await api(p, 'DELETE', `/api/functions/${name}`);
    }
    const bareDir = join(work, 'bare');
    mkdirSync(bareDir);
    writeFileSync(join(bareDir, 'handler.js'), HANDLER);
    const bare: number[] = [];
    for (let i = 0; i < COLD_RUNS; i++) bare.push(await bareSpawn(bareDir));
    cold.sort((a, b) => a - b);
    bare.sort((a, b) => a - b);
    const c = { aether_p50_ms: pct(cold, 50), aether_p95_ms: pct(cold, 95), bare_p50_ms: pct(bare, 50), bare_p95_ms: pct(bare, 95), ratio_p50: pct(cold, 50) / pct(bare, 50) };
    results['cold'] = c;
    console.log(`\ncold start over ${COLD_RUNS} starts: aether p50 ${c.aether_p50_ms.toFixed(0)} ms p95 ${c.aether_p95_ms.toFixed(0)} ms | bare spawn p50 ${c.bare_p50_ms.toFixed(0)} ms p95 ${c.bare_p95_ms.toFixed(0)} ms | ratio p50 ${c.ratio_p50.toFixed(2)} (target <= 1.5)`);
  } finally {
    await held(p.stop());
  }
  const file = writeResults(results);
  console.log(`\nwritten ${file}`);
}

await main();
