import { request } from 'undici';
import { AetherError, type Logger } from '../core/index.ts';
import type { AgentRecord } from '../spec/index.ts';

import type { LogEntry, LogSource } from './api.ts';

/** Where the gateway reads function logs: the in-process agent, or every agent over HTTP. */
export type { LogEntry, LogSource };

export interface LocalLogs {
  tailLogs(fnId: string, n: number): LogEntry[];
  followLogs(fnId: string, onEntry: (e: LogEntry) => void): () => void;
}

export function localLogSource(agent: LocalLogs): LogSource {
  return {
    tail: async (fnId, n) => agent.tailLogs(fnId, n),
    follow: (fnId, onEntry, signal) => {
      const off = agent.followLogs(fnId, onEntry);
      signal.addEventListener('abort', off, { once: true });
    },
  };
}

/** Distributed mode: each agent keeps its instances' lines; merge them by time. */
export function remoteLogSource(opts: { agents: () => AgentRecord[]; token: string; logger: Logger }): LogSource {
  const auth = { authorization: `Bearer ${opts.token}` };
  return {
    async tail(fnId, n) {
      const parts = await Promise.all(
        opts.agents().map(async (a) => {
          try {
            const r = await request(`${a.url}/internal/logs/${encodeURIComponent(fnId)}?tail=${n}`, { headers: auth, headersTimeout: 3000, bodyTimeout: 3000 });
            if (r.statusCode !== 200) {
              await r.body.dump();
              return [];
            }
            return parseNdjson(await r.body.text());
          } catch (err) {
            opts.logger.warn({ agent: a.agent_id, err: String(err) }, 'agent logs unavailable');
            return [];
          }
        }),
      );
      return parts.flat().sort((x, y) => x.time - y.time).slice(-n);
    },
    follow(fnId, onEntry, signal) {
      for (const a of opts.agents()) {
        void (async () => {
          try {
            const r = await request(`${a.url}/internal/logs/${encodeURIComponent(fnId)}?tail=0&follow=true`, { headers: auth, signal, bodyTimeout: 0 });
            let buf = '';
            for await (const chunk of r.body) {
              buf += chunk.toString();
              let nl;
              while ((nl = buf.indexOf('\n')) >= 0) {
                const line = buf.slice(0, nl);
                buf = buf.slice(nl + 1);
                for (const e of parseNdjson(line)) onEntry(e);
              }
            }
          } catch {
            // agent gone or client closed: nothing to do
          }
        })();
      }
    },
  };
}

/**
 * Distributed mode: a service's lines live on the node running it; ask that node's agent
 * (`/internal/service-logs/`, cluster token). A node that is not live, or does not answer, is
 * UNAVAILABLE: its lines are not elsewhere.
 */
export function remoteServiceLogs(opts: { agents: () => AgentRecord[]; token: string }): (node: string, service: string, n: number) => Promise<LogEntry[]> {
  return async (node, service, n) => {
    const a = opts.agents().find((x) => x.agent_id === node);
    if (!a) throw new AetherError('AETHER_ERR_UNAVAILABLE', `node ${node}, which runs ${service}, is not live: its logs are not reachable`);
    let r;
    try {
      r = await request(`${a.url}/internal/service-logs/${encodeURIComponent(service)}?tail=${n}`, { headers: { authorization: `Bearer ${opts.token}` }, headersTimeout: 5000, bodyTimeout: 5000 });
    } catch (err) {
      throw new AetherError('AETHER_ERR_UNAVAILABLE', `node ${node} did not answer for the logs of ${service}: ${String(err)}`);
    }
    if (r.statusCode !== 200) {
      await r.body.dump();
      throw new AetherError('AETHER_ERR_UNAVAILABLE', `node ${node} answered ${r.statusCode} for the logs of ${service}`);
    }
    return parseNdjson(await r.body.text());
  };
}

function parseNdjson(text: string): LogEntry[] {
  const out: LogEntry[] = [];
  for (const line of text.split('\n')) {
    if (!line.trim()) continue;
    try {
      const o = JSON.parse(line) as Omit<LogEntry, 'time'> & { time: number | string };
      out.push({ ...o, time: typeof o.time === 'string' ? Date.parse(o.time) : o.time });
    } catch {
      // skip a torn line
    }
  }
  return out;
}
