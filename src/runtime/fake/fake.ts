import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import { AetherError, freePort, systemClock, type Clock, type TimerHandle } from '../../core/index.ts';
import { InstanceBase } from '../instance.ts';
import { describeWorkload, programEnv, type ExitInfo, type InstanceSpec, type Runtime, type RuntimeInstance, type AdoptableInstance, type AdoptionCapability } from '../types.ts';

/** How a fake instance behaves; chosen per spec by FakeRuntimeOptions.behavior. */
export interface FakeBehavior {
  /** Delay before it listens (Infinity = never, unless FakeInstance.listenNow()). Default 0: no timer, so a ManualClock need not move. */
  startupDelayMs?: number;
  /** Exit (code 1) with this stderr line instead of listening. */
  failStart?: string;
  /** start() itself rejects with this message (the driver could not set up the sandbox); nothing runs. */
  startError?: string;
  /** Lines the program prints on stdout as soon as it is launched, before it listens or fails. */
  output?: string[];
  /** Exit (code 0) this long after it listens. */
  exitAfterMs?: number;
  /** stop() resolves only once this settles (a slow sandbox teardown); the program itself exits at once. */
  teardown?: Promise<unknown>;
  /** Replaces the default echo handler. */
  handler?: (req: IncomingMessage, res: ServerResponse) => void;
  /** Takes upgrade requests (e.g. a WebSocket server's handleUpgrade); without it they are plain requests. */
  onUpgrade?: (req: IncomingMessage, socket: Duplex, head: Buffer) => void;
}

/** A fake instance, with the program's side under the test's control. */
export interface FakeInstance extends RuntimeInstance {
  /** The program prints a line. */
  print(text: string, stream?: 'stdout' | 'stderr'): void;
  /** The program listens now, whatever startupDelayMs says (a slow start finishing on cue); after start() only. */
  listenNow(): void;
  /** The program dies by itself (default: code 1). */
  crash(info?: Partial<ExitInfo>): void;
  /** How often stop() was called. */
  readonly stopCalls: number;
}

export interface FakeRuntimeOptions {
  behavior?: (spec: InstanceSpec) => FakeBehavior;
  /** Drives startupDelayMs, exitAfterMs and waitReady timeouts (ManualClock in tests). */
  clock?: Clock;
  /**
   * An agent restart: the instances of that runtime (an earlier run) still running are this
   * one's leftovers, listed and adopted through `adoption`; cleanupLeftovers() stops the rest.
   */
  adoptFrom?: FakeRuntime;
}

export interface FakeRuntime extends Runtime {
  create(spec: InstanceSpec): Promise<FakeInstance>;
  /** Every instance created, by id, in creation order (exited ones stay, for inspection). */
  readonly instances: Map<string, FakeInstance>;
}

/**
 * In-process driver: each instance is a node:http server on a loopback port. The default handler
 * echoes { method, url, headers, body, env } as JSON, env being what a real program would see
 * (programEnv: spec.env + PORT + AETHER_*), and logs `listening on <port>` and `req <method> <url>` to stdout.
 */
export function createFakeRuntime(opts: FakeRuntimeOptions = {}): FakeRuntime {
  const clock = opts.clock ?? systemClock;
  const instances = new Map<string, FakeInstance>();
  const leftovers = (): FakeInstance[] => [...(opts.adoptFrom?.instances.values() ?? [])].filter((i) => i.inspect().state === 'running' && !instances.has(i.id));
  const adoption: AdoptionCapability | undefined = opts.adoptFrom
    ? {
        async list(): Promise<AdoptableInstance[]> {
          return leftovers().map((i) => ({ spec: i.spec, endpoint: i.endpoint, startedAt: (i as Instance).startedAt }));
        },
        async adopt(instanceId: string): Promise<RuntimeInstance> {
          const i = leftovers().find((x) => x.id === instanceId);
          if (!i) throw new AetherError('AETHER_ERR_INTERNAL', `no live instance ${instanceId} to adopt`);
          instances.set(i.id, i);
          return i;
        },
      }
    : undefined;
  return {
    ...(adoption ? { adoption } : {}),
    kind: 'fake',
    isolation: 'none',
    instances,
    async create(spec: InstanceSpec): Promise<FakeInstance> {
      const existing = instances.get(spec.instanceId);
      if (existing && existing.inspect().state !== 'exited') throw new AetherError('AETHER_ERR_CONFLICT', `instance ${spec.instanceId} exists`);
      const inst = new Instance(spec, opts.behavior?.(spec) ?? {}, clock);
      instances.delete(spec.instanceId); // keep creation order for a reused id
      instances.set(spec.instanceId, inst);
      return inst;
    },
    async cleanupLeftovers(): Promise<void> {
      if (opts.adoptFrom) await Promise.all(leftovers().map((i) => i.stop(0)));
    },
    async close(): Promise<void> {
      await Promise.all([...instances.values()].map((i) => i.stop(0)));
    },
  };
}

let fakePids = 90_000;

class Instance extends InstanceBase<InstanceSpec> implements FakeInstance {
  stopCalls = 0;
  /** ms since epoch, set by start(). */
  startedAt = 0;
  #behavior: FakeBehavior;
  #port = 0;
  #pid: number | undefined;
  #server: Server | undefined;
  #listening = false;
  #timers: TimerHandle[] = [];
  #readyWaiters = new Set<() => void>();

  constructor(spec: InstanceSpec, behavior: FakeBehavior, clock: Clock) {
    super(spec, clock);
    this.#behavior = behavior;
  }

  protected pid(): number | undefined {
    return this.#pid;
  }

  #env(): Record<string, string> {
    return programEnv(this.spec, this.#port);
  }

  #after(ms: number, fn: () => void): void {
    if (ms === Infinity) return;
    // No delay means no timer: an instant start must not wait for a ManualClock to move.
    if (ms <= 0) setImmediate(fn);
    else this.#timers.push(this.clock.setTimeout(fn, ms));
  }

  print(text: string, stream: 'stdout' | 'stderr' = 'stdout'): void {
    if (this.state === 'created' || this.state === 'exited') throw new AetherError('AETHER_ERR_INTERNAL', `instance ${this.id} is not running`);
    this.logs.emit(stream, text);
  }

  crash(info: Partial<ExitInfo> = {}): void {
    if (this.state === 'created') throw new AetherError('AETHER_ERR_INTERNAL', `instance ${this.id} not started`);
    this.#finish({ code: 1, signal: null, ...info });
  }

  listenNow(): void {
    if (this.state === 'created') throw new AetherError('AETHER_ERR_INTERNAL', `instance ${this.id} not started`);
    if (this.state !== 'starting' || this.#server) return;
    for (const t of this.#timers) this.clock.clearTimeout(t);
    this.#timers = [];
    this.#listen();
  }

  async start(): Promise<void> {
    if (this.state !== 'created') throw new AetherError('AETHER_ERR_INTERNAL', `instance ${this.id} already started`);
    if (this.#behavior.startError !== undefined) throw new AetherError('AETHER_ERR_INTERNAL', this.#behavior.startError);
    this.state = 'starting';
    this.startedAt = this.clock.now();
    this.#port = await freePort();
    this.#pid = fakePids++;
    this.endpointValue = { kind: 'tcp', host: '127.0.0.1', port: this.#port };
    this.logs.emit('system', `starting ${describeWorkload(this.spec)} (fake)`);
    for (const line of this.#behavior.output ?? []) this.logs.emit('stdout', line);
    this.#after(this.#behavior.startupDelayMs ?? 0, () => {
      if (this.state !== 'starting' || this.#server) return;
      if (this.#behavior.failStart !== undefined) {
        this.logs.emit('stderr', this.#behavior.failStart);
        this.#finish({ code: 1, signal: null });
        return;
      }
      this.#listen();
    });
  }

  #listen(): void {
    const env = this.#env();
    const handler =
      this.#behavior.handler ??
      ((req: IncomingMessage, res: ServerResponse) => {
        const chunks: Buffer[] = [];
        req.on('data', (c: Buffer) => chunks.push(c));
        req.on('end', () => {
          this.logs.emit('stdout', `req ${req.method} ${req.url}`);
          const body = Buffer.concat(chunks).toString('utf8');
          res.setHeader('content-type', 'application/json');
          res.end(JSON.stringify({ method: req.method, url: req.url, headers: req.headers, body, env }));
        });
      });
    const server = createServer(handler);
    const onUpgrade = this.#behavior.onUpgrade;
    if (onUpgrade) server.on('upgrade', onUpgrade);
    this.#server = server;
    server.on('error', (err) => {
      this.logs.emit('stderr', `listen failed: ${err.message}`);
      this.#finish({ code: 1, signal: null });
    });
    server.listen(this.#port, '127.0.0.1', () => {
      if (this.state !== 'starting') return;
      this.#listening = true;
      this.state = 'running';
      this.logs.emit('stdout', `listening on ${this.#port}`);
      for (const w of this.#readyWaiters) w();
      if (this.#behavior.exitAfterMs !== undefined) this.#after(this.#behavior.exitAfterMs, () => this.#finish({ code: 0, signal: null }));
    });
  }

  #finish(info: ExitInfo): void {
    if (this.exitInfo) return;
    for (const t of this.#timers) this.clock.clearTimeout(t);
    this.exitInfo = info;
    this.markGone();
    this.state = 'exited';
    this.#listening = false;
    const server = this.#server;
    const done = (): void => {
      this.logs.emit('system', `exited (code ${info.code}, signal ${info.signal})`);
      this.resolveExit(info);
    };
    if (server) {
      server.closeAllConnections();
      server.close(() => done());
    } else done();
  }

  waitReady(timeoutMs: number, signal?: AbortSignal): Promise<void> {
    if (this.state === 'created') return Promise.reject(new AetherError('AETHER_ERR_INTERNAL', `instance ${this.id} not started`));
    if (this.#listening) return Promise.resolve();
    return new Promise<void>((res, rej) => {
      let settled = false;
      const done = (err?: unknown): void => {
        if (settled) return;
        settled = true;
        this.clock.clearTimeout(timer);
        this.#readyWaiters.delete(onReady);
        signal?.removeEventListener('abort', onAbort);
        if (err) rej(err);
        else res();
      };
      const onReady = (): void => done();
      const onAbort = (): void => done(signal?.reason ?? new Error('aborted'));
      const timer = this.clock.setTimeout(() => {
        const tail = this.logs.tail();
        done(new AetherError('AETHER_ERR_COLD_START_FAILED', `instance ${this.id} did not listen within ${timeoutMs} ms${tail ? `; last output:\n${tail}` : ''}`));
      }, timeoutMs);
      if (signal?.aborted) return onAbort();
      signal?.addEventListener('abort', onAbort, { once: true });
      this.#readyWaiters.add(onReady);
      void this.exited.then((info) => {
        const tail = this.logs.tail();
        done(new AetherError('AETHER_ERR_COLD_START_FAILED', `instance ${this.id} exited (code ${info.code}, signal ${info.signal}) before listening${tail ? `; last output:\n${tail}` : ''}`));
      });
    });
  }

  async stop(_graceMs?: number): Promise<void> {
    this.stopCalls++;
    if (this.state === 'created') this.#finish({ code: null, signal: null, reason: 'never started' });
    else if (this.state !== 'exited') {
      this.state = 'stopping';
      this.#finish({ code: null, signal: 'SIGTERM' });
    }
    await this.exited;
    await this.#behavior.teardown;
  }
}
