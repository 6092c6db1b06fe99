import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, closeSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import type { IncomingMessage, Server as HttpServer, ServerResponse } from 'node:http';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import type { Clock, Logger } from '../../core/index.ts';
import { findHaproxy } from '../detect.ts';
import { adminCommand, commandFailed } from './admin.ts';
import { ERROR_PAGES, errorPage, paths } from './config.ts';
import { openLogPipe, type LogPipe } from './logpipe.ts';

export interface SupervisorOptions {
  /** Private state directory (created 0700): config, admin socket, maps, error pages. */
  dir: string;
  /** Public listener: HAProxy binds it; the platform binds it too while HAProxy is down. */
  host: string;
  port: number;
  /** The Node server behind HAProxy: it takes the public port's connections while HAProxy is down. */
  fallback: HttpServer;
  /** The config, rendered once per start, for the bound public port. */
  render(c: { port: number; threads: number; maxConn: number }): string;
  /** Runtime maps: emptied at every (re)start, the owner programs them from scratch in `onReady`. */
  maps: string[];
  /** HAProxy answers on its admin socket (at start and after every restart): program it from scratch. */
  onReady(): Promise<void>;
  /** Per-request log lines, read off the request path (a FIFO); without it HAProxy's stdout is discarded. */
  onLog?: (line: string) => void;
  clock: Clock;
  logger: Logger;
  binary?: string;
}

/**
 * One HAProxy process the platform starts and keeps alive, shared by the gateway's data plane and
 * the agent's hop: spawned under `setpriv --pdeathsig KILL` in a private directory, programmed by
 * its owner over the admin socket (never reloaded). The public port is handed over with
 * SO_REUSEPORT: the platform holds it (serving through the Node server) until HAProxy is up and
 * programmed, and takes it back at once when HAProxy dies, until the restart is programmed again.
 */
export class HaproxySupervisor {
  readonly #o: SupervisorOptions;
  readonly #p: ReturnType<typeof paths>;
  #url = '';
  #child: ChildProcess | undefined;
  #logPipe: LogPipe | undefined;
  #fallback: Server | undefined;
  readonly #fallbackSockets = new Set<Socket>();
  /** Sockets the fallback accepted, closed after their current answer once HAProxy is back. */
  readonly #handBack = new Set<Socket>();
  #handBackHooked = false;
  #port = 0;
  #closing = false;
  #running = false;
  #restarts = 0;
  #lastExitAt = 0;

  constructor(o: SupervisorOptions) {
    this.#o = o;
    this.#p = paths(o.dir);
  }

  get url(): string {
    return this.#url;
  }

  /** The bound public port (a port 0 asked for is resolved at start). */
  get port(): number {
    return this.#port;
  }

  /** HAProxy is up and programmed (false while it restarts, and after close). */
  get running(): boolean {
    return this.#running;
  }

  get restarts(): number {
    return this.#restarts;
  }

  /** A connection the public fallback accepted (a client of the Node path, not of HAProxy). */
  viaFallback(sock: Socket): boolean {
    return this.#fallbackSockets.has(sock) || this.#handBack.has(sock);
  }

  /** One runtime API round trip (several commands: ";"-separated); the raw answer. */
  ask(command: string, timeoutMs?: number): Promise<string> {
    return adminCommand(this.#p.admin, command, timeoutMs);
  }

  /** A runtime API change; throws with HAProxy's answer when it was refused. */
  async command(command: string): Promise<void> {
    const answer = await this.ask(command);
    if (commandFailed(command, answer)) throw new Error(`haproxy: "${command}": ${answer.trim()}`);
  }

  async start(): Promise<void> {
    const { dir } = this.#o;
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    chmodSync(dir, 0o700);
    mkdirSync(this.#p.errors, { recursive: true, mode: 0o700 });
    this.#killLeftover();
    for (const s of Object.keys(ERROR_PAGES)) writeFileSync(join(this.#p.errors, `${s}.http`), errorPage(Number(s)));
    // Hold the public port first (it also resolves port 0), then let HAProxy join it.
    await this.#openFallback(await this.#claimPort(this.#o.port));
    const h = this.#o.host;
    const urlHost = h === '0.0.0.0' || h === '::' ? '127.0.0.1' : h.includes(':') ? `[${h}]` : h;
    this.#url = `http://${urlHost}:${this.#port}`;
    writeFileSync(this.#p.config, this.#o.render({ port: this.#port, threads: haproxyThreads(availableParallelism(), process.env['AETHER_HAPROXY_THREADS']), maxConn: maxConnForFdLimit() }), { mode: 0o600 });
    await this.#spawn();
  }

  #killLeftover(): void {
    // An earlier platform process killed with -9 may have left its HAProxy holding the port.
    const pidFile = join(this.#o.dir, 'haproxy.pid');
    if (!existsSync(pidFile)) return;
    const pid = Number(readFileSync(pidFile, 'utf8').trim());
    try {
      if (pid > 0 && readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(this.#p.config)) process.kill(pid, 'SIGKILL');
    } catch {
      // gone already
    }
  }

  async #spawn(): Promise<void> {
    const bin = this.#o.binary ?? findHaproxy() ?? 'haproxy';
    // setpriv: HAProxy dies with us even on SIGKILL (it would otherwise keep the public port).
    const setpriv = spawnSync('setpriv', ['--help'], { stdio: 'ignore' }).status === 0;
    for (const m of this.#o.maps) writeFileSync(m, ''); // programmed from scratch in onReady
    const args = ['-f', this.#p.config, '-db'];
    const argv = setpriv ? ['setpriv', '--pdeathsig', 'KILL', bin, ...args] : [bin, ...args];
    let child: ChildProcess;
    const onLog = this.#o.onLog;
    if (onLog) {
      // Log lines go to a FIFO read in batches (logpipe.ts).
      this.#logPipe?.close();
      const pipe = openLogPipe(join(this.#o.dir, 'log.fifo'), this.#o.clock);
      this.#logPipe = pipe;
      const cmd = pipe.wrap(argv);
      child = spawn(cmd[0] as string, cmd.slice(1), { stdio: ['ignore', pipe.writeFd, 'pipe'] });
      closeSync(pipe.writeFd); // the child holds it now: its exit is the reader's EOF
      pipe.start(onLog);
    } else {
      child = spawn(argv[0] as string, argv.slice(1), { stdio: ['ignore', 'ignore', 'pipe'] });
    }
    this.#child = child;
    writeFileSync(join(this.#o.dir, 'haproxy.pid'), `${child.pid ?? ''}\n`);
    let errTail = '';
    createInterface({ input: child.stderr as NodeJS.ReadableStream }).on('line', (l) => {
      errTail = (errTail + l + '\n').slice(-2000);
      this.#o.logger.debug({ haproxy: l }, 'haproxy');
    });
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    child.once('exit', (code, signal) => {
      if (this.#child !== child) return;
      this.#child = undefined;
      const wasRunning = this.#running;
      this.#running = false;
      // Exits during start are the starter's to handle (it throws, or #recover retries).
      if (this.#closing || !wasRunning) return;
      this.#o.logger.warn({ code, signal, stderr: errTail.slice(-500) }, 'haproxy exited; serving through the Node path until it is back');
      void this.#recover();
    });
    // Ready once the admin socket answers; then the owner programs it from scratch.
    const deadline = Date.now() + 10_000;
    for (;;) {
      if (child.exitCode !== null || child.signalCode !== null) throw new Error(`haproxy exited at start (${child.exitCode ?? child.signalCode}): ${errTail.slice(-800)}`);
      const ok = await this.ask('show info', 1000).then(
        (a) => a.includes('Pid:'),
        () => false,
      );
      if (ok) break;
      if (Date.now() > deadline) {
        child.kill('SIGKILL');
        await exited;
        throw new Error(`haproxy did not open its admin socket: ${errTail.slice(-800)}`);
      }
      await new Promise((r) => setTimeout(r, 20));
    }
    this.#running = true;
    await this.#o.onReady();
    this.#closeFallback();
  }

  async #recover(): Promise<void> {
    await this.#openFallback(this.#port).catch((err: unknown) => this.#o.logger.error({ err: String(err) }, 'could not take over the public port'));
    // Restart at once; only a proxy that keeps dying waits (up to 1 s) between attempts.
    const now = Date.now();
    const delay = now - this.#lastExitAt < 2000 ? 1000 : 50;
    this.#lastExitAt = now;
    await new Promise((r) => setTimeout(r, delay));
    if (this.#closing) return;
    this.#restarts++;
    try {
      await this.#spawn();
      this.#o.logger.warn({ restarts: this.#restarts }, 'haproxy restarted; table re-applied');
    } catch (err) {
      this.#o.logger.error({ err: String(err) }, 'haproxy restart failed; retrying');
      if (!this.#closing && !this.#child) void this.#recover();
    }
  }

  /** Refuse a port another process holds, as a plain listen would (SO_REUSEPORT would share it). */
  async #claimPort(port: number): Promise<number> {
    const probe = createServer();
    await new Promise<void>((resolve, reject) => {
      probe.once('error', reject);
      probe.listen({ host: this.#o.host, port }, () => resolve());
    });
    const bound = (probe.address() as AddressInfo).port;
    await new Promise<void>((r) => probe.close(() => r()));
    return bound;
  }

  async #openFallback(port: number): Promise<void> {
    if (this.#fallback) return;
    const server = this.#o.fallback;
    if (!this.#handBackHooked) {
      this.#handBackHooked = true;
      // A keep-alive client of the fallback would stay on the Node path for good: its next answer closes the connection.
      server.prependListener('request', (req: IncomingMessage, res: ServerResponse) => {
        if (this.#handBack.has(req.socket)) res.shouldKeepAlive = false;
      });
    }
    const srv = createServer((sock) => {
      this.#fallbackSockets.add(sock);
      sock.once('close', () => {
        this.#fallbackSockets.delete(sock);
        this.#handBack.delete(sock);
      });
      server.emit('connection', sock);
    });
    await new Promise<void>((resolve, reject) => {
      srv.once('error', reject);
      srv.listen({ host: this.#o.host, port, reusePort: true }, () => resolve());
    });
    this.#fallback = srv;
    this.#port = (srv.address() as AddressInfo).port;
  }

  #closeFallback(): void {
    const srv = this.#fallback;
    if (!srv) return;
    this.#fallback = undefined;
    // Stops accepting; what it accepted finishes on the Node path, then its clients reconnect to HAProxy.
    // (Not awaited: close() resolves only once those connections end.)
    srv.close();
    for (const sock of this.#fallbackSockets) this.#handBack.add(sock);
    this.#fallbackSockets.clear();
    this.#o.fallback.closeIdleConnections();
  }

  /**
   * No restart from here; `settle` (the owner's programming in progress) is awaited, then HAProxy
   * soft-stops (in-flight requests finish, bounded by hard-stop-after; SIGKILL after 5 s).
   */
  async close(settle?: () => Promise<unknown>): Promise<void> {
    this.#closing = true;
    await settle?.().catch(() => undefined);
    const child = this.#child;
    if (child && child.exitCode === null && child.signalCode === null) {
      const gone = new Promise<void>((r) => child.once('exit', () => r()));
      child.kill('SIGUSR1');
      const t = setTimeout(() => child.kill('SIGKILL'), 5000);
      await gone;
      clearTimeout(t);
    }
    this.#logPipe?.close();
    this.#running = false;
    this.#closeFallback();
  }
}

/**
 * HAProxy's threads: one on a machine of two CPUs or fewer (it shares them with the programs and the
 * platform; measured on 2 vCPUs: one thread answered at one connection in ~100 µs p50 where two took
 * ~150, at equal throughput at 64), else one less than the CPUs, at most 16.
 */
export function haproxyThreads(cpus: number, override?: string): number {
  const n = Number(override);
  if (override && Number.isInteger(n) && n >= 1 && n <= 64) return n;
  return cpus <= 2 ? 1 : Math.min(16, cpus - 1);
}

/** HAProxy needs two descriptors per proxied connection and refuses to start above the hard limit. */
function maxConnForFdLimit(): number {
  try {
    const m = /^Max open files\s+\S+\s+(\S+)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
    const hard = m?.[1] === 'unlimited' ? Infinity : Number(m?.[1]);
    if (Number.isFinite(hard) && hard > 0) return Math.max(256, Math.min(20_000, Math.floor((hard - 200 - 4 * 128) / 2)));
  } catch {
    // not Linux: keep the default
  }
  return 20_000;
}
