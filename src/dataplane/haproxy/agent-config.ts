import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { CLUSTER_TOKEN_HEADER, FORWARD_INSTANCE_HEADER } from '../../core/index.ts';
import { bindAddress, commonSections, HOP_INSTANCE_HEADER, INSTANCE_SERVER_OPTIONS, paths, POOL_OPTIONS } from './config.ts';

/**
 * The config of an agent's own HAProxy (the agent's hop), rendered once per process start. It binds
 * the agent's port: a forward (`/internal/forward/<instance>/...` with the cluster token) for an
 * instance in the runtime map goes straight to that instance; everything else to the agent's Node
 * server on a loopback port. The config declares a fixed pool of per-instance backends ("slots":
 * HAProxy cannot create backends at run time), each with one server whose address is set over the
 * runtime API.
 */
export interface AgentHopConfigInput {
  /** Private directory (0700): admin socket, map, error pages, the forwarding socket. */
  dir: string;
  /** The agent's public listener. */
  host: string;
  port: number;
  /** The agent's Node server on loopback: health, logs, services' routes, forwards not carried here. */
  node: { host: string; port: number };
  slots: number;
  clusterToken: string;
  threads?: number;
  /** Connections the process accepts (bounded by its descriptor limit). */
  maxConn?: number;
}

export const agentHopPaths = (dir: string) => ({
  ...paths(dir),
  /** instance id -> slot backend */
  instances: join(dir, 'instances.map'),
  /** The agent Node's private forwarding listener: each slot's backup. */
  forward: join(dir, 'forward.sock'),
});

export const instanceSlotName = (i: number): string => `i${i}`;
/** The server of a slot backend: the instance it holds (address set at run time). */
export const SLOT_SERVER = 's';
/** The backup of a slot backend: the agent Node's forwarding listener. */
export const FORWARD_SERVER = 'node';

/**
 * The token's SHA-256 (uppercase hex, as HAProxy's `hex` converter writes it). The proxy compares
 * the digests, as the Node path does (`sameSecret`): no early exit on the first differing byte of
 * the token, any token works, and the token itself is not written into the config.
 */
export function tokenDigest(token: string): string {
  return createHash('sha256').update(token).digest('hex').toUpperCase();
}

export function renderAgentHopConfig(c: AgentHopConfigInput): string {
  const p = agentHopPaths(c.dir);
  const lines = [
    // Long client/server timeouts: gateways bound a function's time (timeout_ms) and follow logs over idle streams.
    ...commonSections({ ...c, timeouts: { client: '24h', server: '24h' } }),
    '',
    'frontend agent',
    `  bind ${bindAddress(c.host, c.port)}`,
    '  acl forward path_beg /internal/forward/',
    `  acl token req.fhdr(${CLUSTER_TOKEN_HEADER}),sha2(256),hex -m str ${tokenDigest(c.clusterToken)}`,
    `  http-request set-var(txn.slot) path,field(4,/),map(${p.instances}) if forward token`,
    // For the backup: the slot backend strips the instance from the path before it picks a server.
    `  http-request set-header ${FORWARD_INSTANCE_HEADER} %[path,field(4,/)] if { var(txn.slot) -m found }`,
    '  use_backend %[var(txn.slot)] if { var(txn.slot) -m found }',
    '  default_backend node',
    '',
    // Wrong or missing token, instance not (or no longer) here, every other route: the Node agent answers as always.
    'backend node',
    // Idle connections go before Node's 5 s keep-alive timeout could close one under a request.
    `  server node ${c.node.host}:${c.node.port} pool-purge-delay 1s`,
  ];
  for (let i = 0; i < c.slots; i++) {
    lines.push(
      '',
      `backend ${instanceSlotName(i)}`,
      '  timeout server 16m',
      // The function sees neither the token nor the gateway's hop header.
      `  http-request del-header ${CLUSTER_TOKEN_HEADER}`,
      `  http-request del-header ${HOP_INSTANCE_HEADER}`,
      '  http-request replace-path ^/internal/forward/[^/]*/?(.*)$ /\\1',
      // x-aether-* answers are the platform's (the Node path drops a function's, so it cannot fake the
      // agent's "not reached" signal); hop-by-hop Keep-Alive as the Node path strips it.
      `  http-response del-header x-aether- -m beg unless { srv_name ${FORWARD_SERVER} }`,
      '  http-response del-header keep-alive',
      // Marked down at the first failed connect (the instance vanished): the retry goes to the backup.
      `  server ${SLOT_SERVER} 127.0.0.1:1 disabled ${INSTANCE_SERVER_OPTIONS} ${POOL_OPTIONS}`,
      // Nothing reached the instance: the Node agent retries on a sibling here or answers coded.
      `  server ${FORWARD_SERVER} unix@${p.forward} backup pool-purge-delay 1s`,
    );
  }
  return lines.join('\n') + '\n';
}
