import { silentLogger, systemClock, type Clock, type Logger, type TimerHandle } from '../core/index.ts';
import type { Store } from './types.ts';

export interface LeaseKeeperOptions {
  store: Store;
  ttlMs: number;
  clock?: Clock;
  logger?: Logger;
  /** Called with every new lease (the first and each replacement): register the owner's keys here. */
  onLease?: (leaseId: string) => Promise<void>;
}

/**
 * Holds one lease alive for its owner (an agent's registration, a gateway's claim). Keep-alives
 * run every ttl/3. When the lease is lost (expired during a store outage, revoked by someone else)
 * a new one is granted and `onLease` runs again so the owner re-registers under it; while the
 * store is unreachable it retries quietly, warning once per outage.
 */
export class LeaseKeeper {
  readonly #store: Store;
  readonly #ttlMs: number;
  readonly #clock: Clock;
  readonly #log: Logger;
  readonly #onLease: ((leaseId: string) => Promise<void>) | undefined;
  #leaseId: string | undefined;
  #timer: TimerHandle | undefined;
  #inflight: Promise<void> | undefined;
  #stopped = false;
  #outage = false;

  constructor(opts: LeaseKeeperOptions) {
    this.#store = opts.store;
    this.#ttlMs = opts.ttlMs;
    this.#clock = opts.clock ?? systemClock;
    this.#log = opts.logger ?? silentLogger();
    this.#onLease = opts.onLease;
  }

  get leaseId(): string | undefined {
    return this.#leaseId;
  }

  /** Grant the first lease and run onLease; rejects (and keeps nothing running) if either fails. */
  async start(): Promise<string> {
    if (this.#stopped) throw new Error('LeaseKeeper is stopped');
    await this.#acquire();
    this.#schedule();
    return this.#leaseId!;
  }

  async stop(opts?: { revoke?: boolean }): Promise<void> {
    this.#stopped = true;
    if (this.#timer) this.#clock.clearTimeout(this.#timer);
    this.#timer = undefined;
    await this.#inflight;
    const id = this.#leaseId;
    if (opts?.revoke && id !== undefined) {
      try {
        await this.#store.revokeLease(id);
        this.#leaseId = undefined;
      } catch (err) {
        // It expires on its own after the TTL.
        this.#log.warn({ err, leaseId: id }, 'could not revoke lease at stop');
      }
    }
  }

  /** Grant a lease and hand it to the owner; on an onLease failure the lease is dropped. */
  async #acquire(): Promise<void> {
    const id = await this.#store.grantLease(this.#ttlMs);
    this.#leaseId = id;
    try {
      await this.#onLease?.(id);
    } catch (err) {
      this.#leaseId = undefined;
      await this.#store.revokeLease(id).catch(() => undefined);
      throw err;
    }
  }

  #schedule(): void {
    if (this.#stopped) return;
    this.#timer = this.#clock.setTimeout(() => {
      this.#timer = undefined;
      this.#inflight = this.#tick().finally(() => {
        this.#inflight = undefined;
        this.#schedule();
      });
    }, Math.max(1, Math.floor(this.#ttlMs / 3)));
  }

  async #tick(): Promise<void> {
    if (this.#stopped) return;
    try {
      const id = this.#leaseId;
      if (id === undefined) {
        await this.#acquire();
        this.#log.info({ leaseId: this.#leaseId }, 'lease re-acquired');
      } else if (!(await this.#store.keepAlive(id))) {
        this.#log.warn({ leaseId: id }, 'lease lost; granting a new one');
        this.#leaseId = undefined;
        if (this.#stopped) return;
        await this.#acquire();
        this.#log.info({ leaseId: this.#leaseId }, 'lease re-acquired');
      }
      if (this.#outage) this.#log.info('store reachable again');
      this.#outage = false;
    } catch (err) {
      if (!this.#outage) this.#log.warn({ err, leaseId: this.#leaseId }, 'lease keep-alive failing; retrying');
      this.#outage = true;
    }
  }
}
