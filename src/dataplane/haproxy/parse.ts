import type { InvocationRecord } from '../../spec/index.ts';
import { ACTIVATOR_SERVER, LOG_TAG } from './config.ts';

/** One request the proxy carried, from its log line (LOG_FORMAT). */
export interface LoggedRequest {
  record: InvocationRecord;
  backend: string;
  /**
   * The requests this line stands for: the route's log sampling N for a success of a sampled
   * function (only every Nth was logged), else 1 (failures are always logged).
   */
  weight: number;
}

/**
 * `Date#toISOString` with the second's prefix cached: the lines of a batch mostly share their
 * second, and a full conversion per line was a third of the parse's cost. Whole milliseconds.
 */
let isoSecond = -1;
let isoPrefix = '';
export function isoTime(ms: number): string {
  const sec = Math.floor(ms / 1000);
  if (sec !== isoSecond) {
    isoSecond = sec;
    isoPrefix = new Date(sec * 1000).toISOString().slice(0, -4);
  }
  const frac = ms - sec * 1000;
  return `${isoPrefix}${frac < 10 ? '00' : frac < 100 ? '0' : ''}${frac}Z`;
}

/**
 * Parse a LOG_FORMAT line into the invocation record the Node path would have written. Returns
 * undefined for other lines (HAProxy's own notices, requests without a function).
 */
export function parseLogLine(line: string): LoggedRequest | undefined {
  if (!line.startsWith(LOG_TAG + ' ')) return undefined;
  const f = line.split(' ');
  if (f.length < 11) return undefined;
  const [, id, fnId, backend, server, st, ta, tsc, ts, ms] = f as [string, string, string, string, string, string, string, string, string, string];
  if (!fnId || fnId === '-' || !id.startsWith('inv-')) return undefined;
  // Handed to the activator backup: the Node path writes that invocation's record.
  if (server === ACTIVATOR_SERVER) return undefined;
  const term = tsc.slice(0, 2);
  const statusSeen = Number(st);
  let error: string | null = null;
  let status: InvocationRecord['status'] = 'success';
  let code = statusSeen > 0 ? statusSeen : 0;
  if (term[0] === 's' && term[1] !== 'Q' && term[1] !== 'C') {
    status = 'timeout';
    error = 'AETHER_ERR_TIMEOUT: function did not answer within its timeout_ms';
    code = code || 504;
  } else if (term[1] === 'Q' || term === 'sC' || term === 'SC') {
    status = 'error';
    error = 'AETHER_ERR_UNAVAILABLE: no instance could take the request in time';
    code = code || 503;
  } else if (term[0] === 'C' || term[0] === 'c') {
    status = 'error';
    error = 'AETHER_ERR_UPSTREAM: client closed the connection';
    code = code > 0 && term[1] === 'D' ? code : 502;
  } else if (term[0] !== '-') {
    status = 'error';
    error = `AETHER_ERR_UPSTREAM: instance failed while answering (proxy termination ${term})`;
    code = code || 502;
  } else if (code >= 500) {
    status = 'error';
    error = `function answered ${code}`;
  }
  const startedMs = Number(ts) * 1000 + Number(ms);
  const sampled = status === 'success' ? Number(f[11]) : 1;
  return {
    backend,
    weight: Number.isInteger(sampled) && sampled > 1 ? sampled : 1,
    record: {
      id,
      function_id: fnId,
      status,
      status_code: code,
      duration_ms: Math.max(0, Number(ta) || 0),
      cold_start: false,
      instance_id: server && server !== '<NOSRV>' ? server : null,
      started_at: isoTime(Number.isFinite(startedMs) ? startedMs : 0),
      error,
    },
  };
}

export interface StatRow {
  backend: string;
  /** Server name (instance id), or 'BACKEND' / 'FRONTEND'. */
  server: string;
  /** Requests waiting in the queue. */
  qcur: number;
  /** Current sessions (in flight). */
  scur: number;
  /** Total sessions so far. */
  stot: number;
}

/** Rows of `show stat` (CSV with a "# pxname,svname,..." header). */
export function parseShowStat(csv: string): StatRow[] {
  const lines = csv.split('\n');
  const header = lines[0]?.replace(/^# /, '').split(',') ?? [];
  const col = (name: string): number => header.indexOf(name);
  const [px, sv, q, s, t] = [col('pxname'), col('svname'), col('qcur'), col('scur'), col('stot')];
  if (px < 0 || sv < 0 || s < 0) return [];
  const out: StatRow[] = [];
  for (const line of lines.slice(1)) {
    // Several `show stat` commands in one round trip: one header each.
    if (!line || line.startsWith('#')) continue;
    const v = line.split(',');
    out.push({ backend: v[px] ?? '', server: v[sv] ?? '', qcur: Number(v[q] ?? 0) || 0, scur: Number(v[s] ?? 0) || 0, stot: Number(v[t] ?? 0) || 0 });
  }
  return out;
}
