import type { Logger } from '../../core/index.ts';

/**
 * Programming passes over HAProxy's runtime API, one at a time. A burst of changes is coalesced
 * into one pass; a change that arrives during a pass makes another one follow it; a pass that fails
 * is retried (100 ms later) while HAProxy runs; none runs while it is down (its restart programs it
 * from scratch).
 */
export class ProgramLoop {
  readonly #pass: () => Promise<void>;
  readonly #running: () => boolean;
  readonly #closing: () => boolean;
  readonly #logger: Logger;
  #applying: Promise<void> | undefined;
  #dirty = false;

  constructor(o: { pass: () => Promise<void>; running: () => boolean; closing: () => boolean; logger: Logger }) {
    this.#pass = o.pass;
    this.#running = o.running;
    this.#closing = o.closing;
    this.#logger = o.logger;
  }

  /** The passes in progress, if any. */
  get current(): Promise<void> | undefined {
    return this.#applying;
  }

  /** A change: one pass soon, after the events already due (a burst is one pass). */
  schedule(): void {
    this.#dirty = true;
    if (this.#applying) return;
    setImmediate(() => void this.run());
  }

  /** A pass now (or after the one in progress); resolves once everything known so far is applied. */
  run(): Promise<void> {
    if (this.#applying) {
      this.#dirty = true;
      return this.#applying;
    }
    this.#applying = (async () => {
      do {
        this.#dirty = false;
        if (!this.#running()) break;
        try {
          await this.#pass();
        } catch (err) {
          this.#logger.warn({ err: String(err) }, 'programming haproxy failed; retrying on the next change');
          if (this.#running()) this.#dirty = true;
          await new Promise((r) => setTimeout(r, 100));
        }
      } while (this.#dirty && !this.#closing());
    })().finally(() => {
      this.#applying = undefined;
    });
    return this.#applying;
  }
}
