/**
 * "The program is gone": every driver tells the agent once, before any teardown, so it stops
 * routing there at once. A listener added after that runs at once (asynchronously); a failing
 * listener does not stop the others.
 */
export class GoneSignal {
  #fired = false;
  #listeners: (() => void)[] = [];

  get fired(): boolean {
    return this.#fired;
  }

  on(listener: () => void): void {
    if (this.#fired) queueMicrotask(listener);
    else this.#listeners.push(listener);
  }

  fire(): void {
    if (this.#fired) return;
    this.#fired = true;
    for (const l of this.#listeners.splice(0)) {
      try {
        l();
      } catch {
        // a failing listener must not stop the teardown
      }
    }
  }
}
