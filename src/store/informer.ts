import { AetherError, silentLogger, systemClock, type Clock, type Logger, type TimerHandle } from '../core/index.ts';
import type { KeyValue, Store, StoreWatchError, WatchEvent, Watcher } from './types.ts';

export interface InformerHandlers {
  /** The full current state under the prefix (first call, and again after every re-list). */
  onReset(kvs: KeyValue[], revision: number): void;
  /** A change after the last onReset, in revision order. */
  onEvent(ev: WatchEvent): void;
}

export interface Informer {
  /** Resolves after the first successful onReset; rejects if closed before that. */
  ready: Promise<void>;
  close(): void;
}

/**
 * Keep a view of `prefix` current: list, onReset, watch from list.revision + 1. When the watch
 * fails (compaction or anything else) list again and start over; when a list fails retry every
 * `retryMs` without throwing. Handlers never see events from an abandoned watch.
 */
export function listAndWatch(
  store: Store,
  prefix: string,
  handlers: InformerHandlers,
  opts?: { clock?: Clock; logger?: Logger; retryMs?: number },
): Informer {
  const clock = opts?.clock ?? systemClock;
  const log = opts?.logger ?? silentLogger();
  const retryMs = opts?.retryMs ?? 1000;
  let closed = false;
  let isReady = false;
  let generation = 0;
  let failing = false;
  let watcher: Watcher | undefined;
  let timer: TimerHandle | undefined;
  let resolveReady!: () => void;
  let rejectReady!: (err: unknown) => void;
  const ready = new Promise<void>((resolve, reject) => {
    resolveReady = resolve;
    rejectReady = reject;
  });
  // Nobody may await `ready`; closing before ready must not become an unhandled rejection.
  ready.catch(() => undefined);

  const retryLater = (): void => {
    if (closed) return;
    timer = clock.setTimeout(() => {
      timer = undefined;
      void run();
    }, retryMs);
  };

  const onWatchError = (gen: number, err: StoreWatchError): void => {
    if (closed || gen !== generation) return;
    watcher?.close();
    watcher = undefined;
    generation++;
    if (err.compacted) {
      log.info({ prefix, err: err.message }, 'watch compacted; re-listing');
      void run();
    } else {
      log.warn({ prefix, err: err.message }, 'watch failed; re-listing');
      retryLater();
    }
  };

  const run = async (): Promise<void> => {
    if (closed) return;
    const gen = ++generation;
    let kvs: KeyValue[];
    let revision: number;
    try {
      ({ kvs, revision } = await store.list(prefix));
    } catch (err) {
      if (closed || gen !== generation) return;
      if (!failing) log.warn({ prefix, err }, 'list failed; retrying');
      failing = true;
      retryLater();
      return;
    }
    if (closed || gen !== generation) return;
    if (failing) log.info({ prefix }, 'list succeeded again');
    failing = false;
    try {
      handlers.onReset(kvs, revision);
    } catch (err) {
      log.error({ prefix, err }, 'onReset threw');
    }
    if (!isReady) {
      isReady = true;
      resolveReady();
    }
    try {
      watcher = store.watch(prefix, revision + 1, {
        onEvent: (ev) => {
          if (closed || gen !== generation) return;
          try {
            handlers.onEvent(ev);
          } catch (err) {
            log.error({ prefix, err }, 'onEvent threw');
          }
        },
        onError: (err) => onWatchError(gen, err),
      });
    } catch (err) {
      log.warn({ prefix, err }, 'watch failed to start; retrying');
      generation++;
      retryLater();
    }
  };

  void run();

  return {
    ready,
    close: () => {
      if (closed) return;
      closed = true;
      generation++;
      if (timer) clock.clearTimeout(timer);
      watcher?.close();
      watcher = undefined;
      if (!isReady) rejectReady(new AetherError('AETHER_ERR_UNAVAILABLE', `informer for ${prefix} closed before its first list`));
    },
  };
}
