/** Helpers shared by the benchmarks (`bench/run.ts`, `bench/distributed.ts`). */
import { spawnSync } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { Pool } from 'undici';
import { api } from '../test/support/platform.ts';

/** The function every benchmark runs: a trivial node HTTP server. */
export const HANDLER = "require('http').createServer((req, res) => res.end('ok')).listen(Number(process.env.PORT));\n";

export type Target = { origin: string; socketPath?: string; path: string };

export interface LoadResult {
  /** Latencies in µs. */
  p50: number;
  p99: number;
  rps: number;
  errors: number;
  requests: number;
}

/** Nearest-rank percentile of an ascending array. */
export function pct(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? NaN;
}

/** Closed-loop load: `connections` clients each send GET after GET for `durationMs` (after a warm-up). */
export async function load(t: Target, connections: number, durationMs: number): Promise<LoadResult> {
  const pool = new Pool(t.origin, { connections, pipelining: 1, ...(t.socketPath ? { socketPath: t.socketPath } : {}) });
  const lat: number[] = [];
  let errors = 0;
  // warm-up
  await Promise.all(Array.from({ length: connections }, async () => {
    for (let i = 0; i < 20; i++) await (await pool.request({ path: t.path, method: 'GET' })).body.text();
  }));
  const end = performance.now() + durationMs;
  const start = performance.now();
  await Promise.all(Array.from({ length: connections }, async () => {
    while (performance.now() < end) {
      const t0 = performance.now();
      try {
        const r = await pool.request({ path: t.path, method: 'GET' });
        await r.body.text();
        if (r.statusCode !== 200) errors++;
      } catch {
        errors++;
      }
      lat.push(performance.now() - t0);
    }
  }));
  const elapsed = performance.now() - start;
  await pool.close();
  lat.sort((a, b) => a - b);
  return { p50: pct(lat, 50) * 1000, p99: pct(lat, 99) * 1000, rps: (lat.length / elapsed) * 1000, errors, requests: lat.length };
}

/**
 * One cold start: create function `name` with `zip`, then time request -> first byte through the
 * gateway at `p.url`. Fails unless the gateway reports a cold start. The function is left in place.
 */
export async function coldStart(p: { url: string; token: string }, name: string, zip: Buffer): Promise<number> {
  const created = await api(p, 'POST', '/api/functions', { name, runtime: 'node' });
  if (created.status !== 201) throw new Error(`create ${name}: ${created.status} ${JSON.stringify(created.body)}`);
  const up = await api(p, 'POST', `/api/functions/${name}/code`, zip);
  if (up.status !== 200) throw new Error(`upload ${name}: ${up.status} ${JSON.stringify(up.body)}`);
  const t0 = performance.now();
  const r = await fetch(`${p.url}/functions/${name}/`);
  // Timed to the end of the 2-byte body, as `npm run bench` always has (same as first byte, within noise).
  const text = await r.text();
  const ms = performance.now() - t0;
  if (r.status !== 200) throw new Error(`cold start of ${name}: ${r.status} ${text}`);
  if (r.headers.get('x-aether-cold-start') !== 'true') throw new Error('expected a cold start');
  return ms;
}

/**
 * Await `p` while keeping the event loop alive: test/support children are unref'd, so awaiting only
 * their exit (`stop()`) would let Node end the script there (unsettled top-level await) and SIGKILL
 * them from its exit hook instead of a graceful stop, before the results are written.
 */
export async function held<T>(p: Promise<T>): Promise<T> {
  const timer = setInterval(() => {}, 1000);
  try {
    return await p;
  } finally {
    clearInterval(timer);
  }
}

/** Write `results` to bench/results/<prefix><timestamp>.json; returns the path. */
export function writeResults(results: unknown, prefix = ''): string {
  const dir = resolve(import.meta.dirname, 'results');
  mkdirSync(dir, { recursive: true });
  const file = join(dir, `${prefix}${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  writeFileSync(file, JSON.stringify(results, null, 2) + '\n');
  return file;
}

const TICKS_PER_S = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout?.trim()) || 100;

/**
 * CPU time (µs, user + system) every process has used so far, by group: `loadgen` (this process),
 * `haproxy`, `nginx`, `program` (the functions' `handler.js`, bare or sandboxed), `platform` (the
 * `aether` processes), `other`. The difference of two calls around a run, per request, says where
 * the CPU of a path goes: steadier than req/s on a shared 2-vCPU VM.
 */
export function cpuByGroup(): Record<string, number> {
  const out: Record<string, number> = {};
  for (const pid of readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      const comm = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
      const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
      const group = Number(pid) === process.pid ? 'loadgen' : comm === 'haproxy' ? 'haproxy' : comm === 'nginx' ? 'nginx' : cmd.includes('handler.js') ? 'program' : cmd.includes('aether') ? 'platform' : 'other';
      out[group] = (out[group] ?? 0) + ((Number(f[11]) + Number(f[12])) * 1e6) / TICKS_PER_S;
    } catch {
      // gone meanwhile
    }
  }
  return out;
}
