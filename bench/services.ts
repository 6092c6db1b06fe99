/**
 * `npm run bench:services`: time from a Git commit to every changed service running its new
 * revision and passing its health check, on `aether up` (process sandbox, services as containers
 * from an ext4 image of busybox's httpd), side by side in one run:
 *   - commit + GitHub push webhook (what a repo with a webhook gets),
 *   - commit, picked up by polling (`--poll 2s`; firework polls every 30 s),
 *   - baseline: a bare `busybox httpd` spawned on the host until it answers (the floor: no Git, no
 *     scheduler, no sandbox).
 * Each round changes CHANGED of SERVICES services (an env value) and leaves the rest; it also checks
 * that the untouched ones kept their instances. Needs root (loop devices, mounts) and busybox-static.
 * Results: printed and written to bench/results/services-<date>.json. Never part of `npm test`.
 */
import { createHmac } from 'node:crypto';
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { api, eventually, startAether } from '../test/support/platform.ts';
import type { ServiceView } from '../src/spec/index.ts';
import { freePort } from '../src/core/index.ts';
import { held, pct, writeResults } from './lib.ts';
import { busyboxImage } from '../test/support/busybox.ts';

const SERVICES = Number(process.env['BENCH_SERVICES'] ?? 8);
const CHANGED = Number(process.env['BENCH_CHANGED'] ?? 2);
const ROUNDS = Number(process.env['BENCH_ROUNDS'] ?? 3);
const SECRET = 'bench-webhook-secret';

if (process.getuid?.() !== 0 || !existsSync('/bin/busybox')) {
  console.error('bench:services needs root (service containers) and busybox-static');
  process.exit(2);
}

const git = (dir: string, ...args: string[]): string =>
  execFileSync('git', ['-C', dir, '-c', 'user.email=b@example.test', '-c', 'user.name=b', ...args], { encoding: 'utf8' }).trim();

const svcYaml = (i: number, image: string, version: number): string =>
  [
    `name: s${i}`,
    `image: ${image}`,
    'node_type: general',
    'sandbox: process',
    'memory_mb: 64',
    "command: [/bin/busybox, httpd, -f, -p, '8080', -h, /www]",
    `metadata: {host: s${i}.bench}`,
    'health_check: {type: http, port: 8080, path: /, interval: 500ms, timeout: 1s, retries: 2}',
    `env: {VERSION: "${version}"}`,
    '',
  ].join('\n');

/** Bare floor: spawn busybox httpd on the host and poll until it answers. */
async function bareStart(root: string): Promise<number> {
  const port = await freePort();
  const t0 = performance.now();
  const child = spawn('/bin/busybox', ['httpd', '-f', '-p', `127.0.0.1:${port}`, '-h', join(root, 'www')], { stdio: 'ignore' });
  try {
    for (;;) {
      const ok = await fetch(`http://127.0.0.1:${port}/`).then((r) => r.ok, () => false);
      if (ok) return performance.now() - t0;
      await new Promise((r) => setTimeout(r, 5));
    }
  } finally {
    child.kill('SIGKILL');
  }
}

const dir = mkdtempSync(join(tmpdir(), 'aether-bench-svc-'));
const { root, image } = busyboxImage(dir, 'ok\n');

const repo = join(dir, 'repo');
mkdirSync(join(repo, 'services'), { recursive: true });
writeFileSync(join(repo, 'defaults.yaml'), 'vcpus: 1\n');
const version = new Array<number>(SERVICES).fill(1);
for (let i = 0; i < SERVICES; i++) writeFileSync(join(repo, 'services', `s${i}.yaml`), svcYaml(i, image, 1));
execFileSync('git', ['init', '-q', '-b', 'main', repo]);
git(repo, 'add', '-A');
git(repo, 'commit', '-qm', 'first');

const p = await startAether({ args: ['--router-port', '0', '--source', `file://${repo}#main`, '--poll', '2s'], env: { AETHER_WEBHOOK_SECRET: SECRET } });
const results: Record<string, unknown> = { services: SERVICES, changed: CHANGED, rounds: ROUNDS };
try {
  const services = async (): Promise<Map<string, ServiceView>> => new Map((await api<ServiceView[]>(p, 'GET', '/api/services')).body.map((s) => [s.name, s]));
  const names = Array.from({ length: SERVICES }, (_, i) => `s${i}`);
  await held(eventually(async () => {
    const s = await services();
    return names.every((n) => s.get(n)?.state === 'running' && s.get(n)?.health === 'healthy');
  }, 300_000, 250));

  let next = 0;
  /** One round: commit CHANGED services' new env, optionally ring the webhook, time to all healthy on it. */
  const round = async (webhook: boolean): Promise<number> => {
    const before = await services();
    const changed: string[] = [];
    for (let k = 0; k < CHANGED; k++) {
      const i = next++ % SERVICES;
      version[i] = (version[i] ?? 1) + 1;
      writeFileSync(join(repo, 'services', `s${i}.yaml`), svcYaml(i, image, version[i] ?? 0));
      changed.push(`s${i}`);
    }
    git(repo, 'commit', '-qam', `round ${next}`);
    const sha = git(repo, 'rev-parse', 'HEAD');
    const t0 = performance.now();
    if (webhook) {
      const body = JSON.stringify({ ref: 'refs/heads/main', after: sha });
      const sig = 'sha256=' + createHmac('sha256', SECRET).update(body).digest('hex');
      const r = await fetch(`${p.url}/api/deploy/webhook`, { method: 'POST', body, headers: { 'content-type': 'application/json', 'x-github-event': 'push', 'x-hub-signature-256': sig } });
      if (r.status >= 300) throw new Error(`webhook: ${r.status} ${await r.text()}`);
    }
    const after = await held(eventually(async () => {
      const s = await services();
      // A changed service is replaced: done when a new instance (new address) runs healthy at this revision.
      const fresh = (n: string): boolean => {
        const v = s.get(n);
        return v?.revision === sha && v.state === 'running' && v.health === 'healthy' && v.address !== null && v.address !== before.get(n)?.address;
      };
      return changed.every(fresh) && s;
    }, 120_000, 20));
    const ms = performance.now() - t0;
    const moved = names.filter((n) => !changed.includes(n) && after.get(n)?.address !== before.get(n)?.address);
    if (moved.length) throw new Error(`untouched services were restarted: ${moved.map((n) => `${n}: ${JSON.stringify(before.get(n))} -> ${JSON.stringify(after.get(n))}`).join("; ")}`);
    return ms;
  };

  const webhookMs: number[] = [];
  const pollMs: number[] = [];
  const bareMs: number[] = [];
  for (let r = 0; r < ROUNDS; r++) {
    webhookMs.push(await round(true));
    pollMs.push(await round(false));
    bareMs.push(await bareStart(root));
  }
  for (const a of [webhookMs, pollMs, bareMs]) a.sort((x, y) => x - y);
  results['commit_to_healthy_webhook_ms'] = webhookMs;
  results['commit_to_healthy_poll_ms'] = pollMs;
  results['bare_start_ms'] = bareMs;
  const w = pct(webhookMs, 50);
  const po = pct(pollMs, 50);
  const b = pct(bareMs, 50);
  results['ratio_webhook_vs_bare_p50'] = w / b;
  console.log(`${SERVICES} services, ${CHANGED} changed per commit, ${ROUNDS} rounds each`);
  console.log(`commit -> changed services healthy, webhook: p50 ${w.toFixed(0)} ms (${webhookMs.map((x) => x.toFixed(0)).join(', ')})`);
  console.log(`commit -> changed services healthy, poll 2s: p50 ${po.toFixed(0)} ms (${pollMs.map((x) => x.toFixed(0)).join(', ')})`);
  console.log(`bare busybox httpd start on the host: p50 ${b.toFixed(1)} ms; webhook path / bare = ${(w / b).toFixed(1)}x`);
  console.log(`results: ${writeResults(results, 'services-')}`);
} finally {
  await held(p.stop());
  rmSync(dir, { recursive: true, force: true });
}
