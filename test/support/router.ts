import assert from 'node:assert/strict';
import { request } from 'node:http';
import type { ServiceView } from '../../src/spec/index.ts';
import { api, eventually, type RunningPlatform } from './platform.ts';

/** GET /api/services by name. */
export async function services(p: RunningPlatform): Promise<Map<string, ServiceView>> {
  return new Map((await api<ServiceView[]>(p, 'GET', '/api/services')).body.map((s) => [s.name, s]));
}

/** Status of the node's instances from the router's /status (has instance ids and start times). */
export async function nodeStatus(routerUrl: string): Promise<Map<string, { instance_id: string | null; started_at: string | null; restarts: number; state: string }>> {
  const r = (await (await fetch(routerUrl + '/status')).json()) as { services: { service: string; instance_id: string | null; started_at: string | null; restarts: number; state: string }[] };
  return new Map(r.services.map((s) => [s.service, s]));
}

/** A service's last log lines through the gateway. */
export async function logText(p: RunningPlatform, name: string): Promise<string> {
  const r = await fetch(`${p.url}/api/services/${name}/logs?tail=1000`, { headers: { authorization: `Bearer ${p.token}` } });
  assert.equal(r.status, 200);
  return r.text();
}

/** The edge router's URL, once the platform has logged it (`--router-port 0` picks the port). */
export function routerUrlOf(p: RunningPlatform): Promise<string> {
  return eventually(async () => /edge router at (http:\/\/\S+)/.exec(p.output())?.[1]);
}

/** GET / through the router with this Host header (node:http, since fetch() may not set Host). No timeout unless given. */
export function byHost(routerUrl: string, host: string, opts: { timeoutMs?: number } = {}): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const req = request(routerUrl + '/', { headers: { host }, ...(opts.timeoutMs !== undefined ? { timeout: opts.timeoutMs } : {}) }, (res) => {
      let text = '';
      res.on('data', (c: Buffer) => (text += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
    req.end();
  });
}
