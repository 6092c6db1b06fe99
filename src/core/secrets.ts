import { createHash, createHmac, timingSafeEqual } from 'node:crypto';

/**
 * Gateway <-> agent credential. Agents never see the admin API token: gateways prove themselves to
 * agents with a separate cluster token (sent in this header on the forwarding hop, where
 * `Authorization` belongs to the function's caller, and as a bearer token elsewhere).
 */
export const CLUSTER_TOKEN_HEADER = 'x-aether-cluster-token';

/**
 * Set by an agent's own HAProxy on a forward it carries: the instance the request is for. The proxy
 * strips `/internal/forward/<instance>` before it picks a server, so when the instance cannot be
 * reached, its backup (the agent's private forwarding listener) learns the instance from here.
 */
export const FORWARD_INSTANCE_HEADER = 'x-aether-forward-instance';

/** The agent's path for a gateway's forward: `/internal/forward/<instance>/<path>`. */
export const FORWARD_PREFIX = '/internal/forward/';

/** Constant-time equality of two secrets of any length (compares their SHA-256 digests). */
export function sameSecret(given: string, expected: string): boolean {
  const a = createHash('sha256').update(given).digest();
  const b = createHash('sha256').update(expected).digest();
  return timingSafeEqual(a, b);
}

/** The token of an `Authorization: Bearer <token>` header (scheme case-insensitive), else undefined. */
export function bearerToken(header: string | undefined): string | undefined {
  if (!header) return undefined;
  return /^bearer[ \t]+(\S+)[ \t]*$/i.exec(header)?.[1];
}

/** A cluster token derived from the admin token for one-process `aether up` (never equal to it). */
export function deriveClusterToken(adminToken: string): string {
  return createHmac('sha256', adminToken).update('aether cluster token v1').digest('hex');
}
