import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { freePort } from '../../src/core/index.ts';

export interface EtcdServer {
  endpoints: string[];
  dataDir: string;
  /** SIGTERM and wait for exit; the data dir stays (restart() brings the same data back). */
  stop(): Promise<void>;
  /** SIGKILL and wait for exit (a crash); the data dir stays. */
  kill(): Promise<void>;
  /** Stop if running, then start again on the same ports and data dir; resolves when healthy. */
  restart(): Promise<void>;
  /** Kill and remove the data dir. */
  cleanup(): Promise<void>;
}

/** The etcd binary: $AETHER_ETCD_BIN, else `etcd` on PATH (Debian: etcd-server, /usr/bin/etcd). */
export function etcdBinary(): string | undefined {
  const explicit = process.env['AETHER_ETCD_BIN'];
  const candidates = explicit ? [explicit] : [...(process.env['PATH'] ?? '').split(delimiter).map((d) => join(d, 'etcd')), '/usr/bin/etcd'];
  for (const c of candidates) {
    try {
      accessSync(c, constants.X_OK);
      return c;
    } catch {
      // next
    }
  }
  return undefined;
}

export function etcdAvailable(): boolean {
  return etcdBinary() !== undefined;
}

const live = new Set<ChildProcess>();
process.once('exit', () => {
  for (const c of live) c.kill('SIGKILL');
});

/** A single-member etcd on random loopback ports with a temp data dir, healthy when this resolves. */
export async function startEtcd(): Promise<EtcdServer> {
  const bin = etcdBinary();
  if (!bin) throw new Error('etcd binary not found (install etcd-server or set AETHER_ETCD_BIN)');
  const clientPort = await freePort();
  let peerPort = await freePort();
  while (peerPort === clientPort) peerPort = await freePort();
  const clientUrl = `http://127.0.0.1:${clientPort}`;
  const peerUrl = `http://127.0.0.1:${peerPort}`;
  const dataDir = mkdtempSync(join(tmpdir(), 'aether-etcd-'));
  const args = [
    '--name', 'aether-test',
    '--data-dir', dataDir,
    '--listen-client-urls', clientUrl,
    '--advertise-client-urls', clientUrl,
    '--listen-peer-urls', peerUrl,
    '--initial-advertise-peer-urls', peerUrl,
    '--initial-cluster', `aether-test=${peerUrl}`,
    '--initial-cluster-state', 'new',
    '--logger', 'zap',
    '--log-outputs', 'stderr',
    '--log-level', 'error',
  ];
  let child: ChildProcess | undefined;
  let stderrTail = '';

  const launch = async (): Promise<void> => {
    stderrTail = '';
    const c = spawn(bin, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    child = c;
    live.add(c);
    c.stderr?.on('data', (d: Buffer) => {
      stderrTail = (stderrTail + d.toString()).slice(-4000);
    });
    c.once('exit', () => live.delete(c));
    const deadline = Date.now() + 30_000;
    for (;;) {
      if (c.exitCode !== null || c.signalCode !== null) throw new Error(`etcd exited during start (${c.exitCode ?? c.signalCode}): ${stderrTail}`);
      try {
        const res = await fetch(`${clientUrl}/health`, { signal: AbortSignal.timeout(1000) });
        const body = (await res.json()) as { health?: string };
        if (res.ok && body.health === 'true') return;
      } catch {
        // not up yet
      }
      if (Date.now() > deadline) {
        c.kill('SIGKILL');
        throw new Error(`etcd did not become healthy within 30 s: ${stderrTail}`);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  };

  const halt = async (signal: NodeJS.Signals): Promise<void> => {
    const c = child;
    child = undefined;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => c.once('exit', () => resolve()));
    c.kill(signal);
    await exited;
  };

  await launch();
  return {
    endpoints: [clientUrl],
    dataDir,
    stop: () => halt('SIGTERM'),
    kill: () => halt('SIGKILL'),
    restart: async () => {
      await halt('SIGTERM');
      await launch();
    },
    cleanup: async () => {
      await halt('SIGKILL');
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}
