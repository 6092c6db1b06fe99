import { AetherError, type Clock } from '../core/index.ts';
import { GoneSignal } from './gone.ts';
import { LogHub } from './logs.ts';
import type { Endpoint, ExitInfo, InstanceState, LogLine } from './types.ts';

/**
 * What every driver's instance keeps alike: identity, state, its log hub, the gone signal and the
 * exit promise, and waitReady's frame. A driver adds how its sandbox starts, is probed and stops.
 * Generic in the spec: the process driver still runs on its flat spec (process/legacy.ts).
 */
export abstract class InstanceBase<S extends { instanceId: string }> {
  readonly id: string;
  readonly spec: S;
  /** Settles once, with what resolveExit() is given. */
  readonly exited: Promise<ExitInfo>;
  protected readonly clock: Clock;
  protected readonly logs: LogHub;
  protected state: InstanceState = 'created';
  /** Set once the program has exited and the sandbox is cleaned up. */
  protected exitInfo: ExitInfo | undefined;
  /** Set by start(): `endpoint` throws before. */
  protected endpointValue: Endpoint | undefined;
  readonly #gone = new GoneSignal();
  #resolveExit!: (e: ExitInfo) => void;

  constructor(spec: S, clock: Clock) {
    this.spec = spec;
    this.id = spec.instanceId;
    this.clock = clock;
    this.logs = new LogHub(clock);
    this.exited = new Promise((r) => (this.#resolveExit = r));
  }

  get endpoint(): Endpoint {
    if (!this.endpointValue) throw new AetherError('AETHER_ERR_INTERNAL', `instance ${this.id} has no endpoint before start()`);
    return this.endpointValue;
  }

  onLog(listener: (line: LogLine) => void): void {
    this.logs.on(listener);
  }

  onGone(listener: () => void): void {
    this.#gone.on(listener);
  }

  inspect(): { state: InstanceState; pid: number | undefined; exit: ExitInfo | undefined } {
    return { state: this.state, pid: this.pid(), exit: this.exitInfo };
  }

  /** The pid inspect() shows: the sandbox's main process, if any. */
  protected abstract pid(): number | undefined;

  /** The program is gone or unreachable: tell the agent before anything else (the teardown comes later). */
  protected markGone(): void {
    this.#gone.fire();
  }

  protected resolveExit(info: ExitInfo): void {
    this.#resolveExit(info);
  }

  /** Why waitReady fails once the program exited before listening on `port`, with its last output. */
  protected exitError(info: ExitInfo, port: number): AetherError {
    const how = info.reason ?? (info.signal ? `signal ${info.signal}` : `code ${info.code}`);
    const tail = this.logs.tail();
    return new AetherError('AETHER_ERR_COLD_START_FAILED', `instance ${this.id} exited (${how}) before listening on port ${port}${tail ? `; last output:\n${tail}` : ''}`);
  }

  /**
   * waitReady's frame: settles once, resolved when `poll` calls done() (the program listens), else
   * rejected by the program's exit, the timeout or `signal`. `poll` stops once settled() is true.
   * `port()` names the port in the errors (read when they happen: a driver may pick it late).
   */
  protected waitListening(timeoutMs: number, signal: AbortSignal | undefined, port: () => number, poll: (settled: () => boolean, done: (err?: unknown) => void) => Promise<void>): Promise<void> {
    const clock = this.clock;
    let settled = false;
    return new Promise<void>((res, rej) => {
      const done = (err?: unknown): void => {
        if (settled) return;
        settled = true;
        clock.clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        if (err) rej(err);
        else res();
      };
      const timer = clock.setTimeout(() => {
        const tail = this.logs.tail();
        done(new AetherError('AETHER_ERR_COLD_START_FAILED', `instance ${this.id} did not listen on port ${port()} within ${timeoutMs} ms${tail ? `; last output:\n${tail}` : ''}`));
      }, timeoutMs);
      const onAbort = (): void => done(signal?.reason ?? new Error('aborted'));
      if (signal?.aborted) return onAbort();
      signal?.addEventListener('abort', onAbort, { once: true });
      void this.exited.then((info) => done(this.exitError(info, port())));
      poll(() => settled, done).catch(done);
    });
  }
}
