/**
 * `npm run bench:vm`: cold start (request -> first byte) of one node function in the process
 * sandbox, in a QEMU microVM booted cold, and in one restored from its snapshot template; plus
 * the memory (RSS of the qemu process) of an idle VM of each kind. Runs the runtimes directly (the
 * gateway adds well under a millisecond to these). Results go to bench/results/vm-<date>.json.
 * BENCH_VM_COLD (default 2) and BENCH_VM_RESTORES (default 3) set the number of runs.
 */
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { silentLogger } from '../src/core/index.ts';
import { contractSpec, requestEndpoint, type InstanceSpec, type Runtime, type RuntimeInstance } from '../src/runtime/index.ts';
import { createProcessRuntime } from '../src/runtime/process/index.ts';
import { createQemuRuntime } from '../src/runtime/qemu/index.ts';
import { HANDLER, pct, writeResults } from './lib.ts';

const COLD = Number(process.env['BENCH_VM_COLD'] ?? 2);
const RESTORES = Number(process.env['BENCH_VM_RESTORES'] ?? 3);
const READY_MS = 300_000;

const dir = mkdtempSync(join(tmpdir(), 'aether-bench-vm-'));
const code = join(dir, 'code');
mkdirSync(code, { mode: 0o755 });
writeFileSync(join(code, 'handler.js'), HANDLER, { mode: 0o644 });
let n = 0;

function spec(over: Partial<InstanceSpec> = {}): InstanceSpec {
  return contractSpec({
    instanceId: `bench-${process.pid}-${n++}`,
    owner: { kind: 'function', id: 'fn-bench', name: 'bench' },
    artifact: { kind: 'code', dir: code, runtime: 'node', entrypoint: 'handler.js' },
    resources: { memoryMb: 128, vcpu: 1, pidsMax: 64 },
    ...over,
  });
}

function rssMiB(pid: number | undefined): number {
  if (!pid) return NaN;
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m?.[1] ? Math.round(Number(m[1]) / 1024) : NaN;
}

/** create -> start -> ready -> first response byte, in ms; the instance is left running. */
async function coldStart(rt: Runtime, s: InstanceSpec): Promise<{ ms: number; inst: RuntimeInstance }> {
  const t0 = performance.now();
  const inst = await rt.create(s);
  await inst.start();
  await inst.waitReady(READY_MS);
  const r = await requestEndpoint(inst.endpoint, { path: '/' });
  if (r.status !== 200) throw new Error(`status ${r.status}`);
  return { ms: Math.round(performance.now() - t0), inst };
}

const summary = (xs: number[]): { runs: number[]; p50: number; max: number } => {
  const s = [...xs].sort((a, b) => a - b);
  return { runs: xs, p50: pct(s, 50), max: s.at(-1) ?? NaN };
};

const results: Record<string, unknown> = { date: new Date().toISOString(), node: process.version, root: process.getuid?.() === 0, kvm: false };
const log = (s: string): void => void process.stdout.write(`${s}\n`);
try {
  const proc = createProcessRuntime({ dataDir: join(dir, 'process'), agentId: 'bench-vm', logger: silentLogger() });
  const procRuns: number[] = [];
  for (let i = 0; i < 5; i++) {
    const { ms, inst } = await coldStart(proc, spec());
    procRuns.push(ms);
    await inst.stop(1000);
  }
  await proc.close();
  results['process'] = { ...summary(procRuns), isolation: proc.isolation };
  log(`process (${proc.isolation}): ${procRuns.join(', ')} ms`);

  const qemu = createQemuRuntime({ dataDir: join(dir, 'qemu'), agentId: 'bench-vm', logger: silentLogger(), onProgress: (m) => log(`  ${m}`) });
  results['kvm'] = qemu.isolation.includes('kvm');
  const coldRuns: number[] = [];
  let coldRss = NaN;
  for (let i = 0; i < COLD; i++) {
    // No version: no template is made or used, a pure cold boot.
    const { ms, inst } = await coldStart(qemu, spec());
    coldRuns.push(ms);
    if (i === 0) {
      await new Promise((r) => setTimeout(r, 3000));
      coldRss = rssMiB(inst.inspect().pid);
    }
    await inst.stop(5000);
    log(`qemu cold boot: ${ms} ms`);
  }
  // The first start of a version boots and saves the template.
  const first = await coldStart(qemu, spec({ version: 'v1' }));
  log(`qemu cold boot + snapshot template: ${first.ms} ms`);
  await first.inst.stop(5000);
  const restoreRuns: number[] = [];
  let restoreRss = NaN;
  for (let i = 0; i < RESTORES; i++) {
    const { ms, inst } = await coldStart(qemu, spec({ version: 'v1' }));
    restoreRuns.push(ms);
    if (i === 0) {
      await new Promise((r) => setTimeout(r, 3000));
      restoreRss = rssMiB(inst.inspect().pid);
    }
    await inst.stop(5000);
    log(`qemu restore: ${ms} ms`);
  }
  const template = qemu.snapshots.templates()[0];
  await qemu.close();
  const cold = summary(coldRuns);
  const restore = summary(restoreRuns);
  results['qemu_cold'] = { ...cold, idle_rss_mib: coldRss };
  results['qemu_cold_with_snapshot_ms'] = first.ms;
  results['qemu_restore'] = { ...restore, idle_rss_mib: restoreRss, snapshot_mib: template ? Math.round(template.bytes / 2 ** 20) : NaN };
  results['restore_speedup_p50'] = Math.round((cold.p50 / restore.p50) * 10) / 10;
  log(`\nrequest -> first byte p50: process ${summary(procRuns).p50} ms, qemu cold ${cold.p50} ms, qemu restore ${restore.p50} ms (${results['restore_speedup_p50']}x faster than cold)`);
  log(`idle VM RSS: cold-booted ${coldRss} MiB, restored ${restoreRss} MiB`);
} finally {
  rmSync(dir, { recursive: true, force: true });
}
log(`results: ${writeResults(results, 'vm-')}`);
