import type { DataPlane } from './types.ts';

/**
 * The `node` data plane: the gateway's own server carries every request (today's in-process path).
 * It is also the activator behind `haproxy` and the fallback while HAProxy is down.
 */
export function nodeDataPlane(url: string): DataPlane {
  return {
    kind: 'node',
    url,
    sync: async () => undefined,
    status: () => ({ kind: 'node', proxy: 'none', restarts: 0, routes: 0 }),
    close: async () => undefined,
  };
}
