import { request } from 'node:http';
import { eventually, type RunningPlatform } from './platform.ts';

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
