import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from '../../src/core/index.ts';

const REDIS_SERVER = '/usr/bin/redis-server';

/** undefined when redis-server can run here, else the reason to skip. */
export function redisAvailable(): string | undefined {
  return existsSync(REDIS_SERVER) ? undefined : `${REDIS_SERVER} not installed (apt-get install redis-server)`;
}

export interface RedisServer {
  url: string;
  port: number;
  /** Graceful shutdown (SIGTERM: an AOF is flushed). */
  stop(): Promise<void>;
  /** SIGKILL, like a crash. */
  kill(): Promise<void>;
  /** stop() then start again on the same port and data dir. */
  restart(): Promise<void>;
  /** SIGKILL, wipe the data dir, start again on the same port: Redis back without its data. */
  restartEmpty(): Promise<void>;
}

const live = new Set<ChildProcess>();
process.on('exit', () => {
  for (const c of live) c.kill('SIGKILL');
});

function ping(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = createConnection({ host: '127.0.0.1', port });
    let buf = '';
    sock.setTimeout(500, () => sock.destroy());
    sock.on('connect', () => sock.write('PING\r\n'));
    sock.on('data', (d) => {
      buf += d.toString();
      if (buf.includes('\r\n')) {
        sock.destroy();
        resolve(buf.startsWith('+PONG'));
      }
    });
    sock.on('error', () => resolve(false));
    sock.on('close', () => resolve(false));
  });
}

/** A throwaway redis-server on a random loopback port with its data in a temp dir. */
export async function startRedis(opts: { appendOnly?: boolean } = {}): Promise<RedisServer> {
  const reason = redisAvailable();
  if (reason) throw new Error(reason);
  const dir = await mkdtemp(join(tmpdir(), 'aether-redis-'));
  const port = await freePort();
  let child: ChildProcess | undefined;
  let stderr = '';

  const start = async (): Promise<void> => {
    const args = ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--dir', dir, '--daemonize', 'no'];
    args.push('--appendonly', opts.appendOnly ? 'yes' : 'no');
    const c = spawn(REDIS_SERVER, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    c.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
    live.add(c);
    c.once('exit', () => live.delete(c));
    child = c;
    for (let i = 0; i < 200; i++) {
      if (c.exitCode !== null) throw new Error(`redis-server exited with ${c.exitCode}: ${stderr}`);
      if (await ping(port)) return;
      await new Promise((r) => setTimeout(r, 25));
    }
    throw new Error(`redis-server did not answer on port ${port}`);
  };

  const halt = async (signal: NodeJS.Signals): Promise<void> => {
    const c = child;
    child = undefined;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    const exited = new Promise((r) => c.once('exit', r));
    c.kill(signal);
    await exited;
  };

  await start();
  return {
    url: `redis://127.0.0.1:${port}`,
    port,
    stop: async () => {
      await halt('SIGTERM');
      await rm(dir, { recursive: true, force: true });
    },
    kill: () => halt('SIGKILL'),
    restart: async () => {
      await halt('SIGTERM');
      await start();
    },
    restartEmpty: async () => {
      await halt('SIGKILL');
      await rm(dir, { recursive: true, force: true });
      await mkdir(dir, { recursive: true });
      await start();
    },
  };
}
