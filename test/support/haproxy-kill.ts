import { readFileSync } from 'node:fs';
import { eventually } from './platform.ts';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export interface HaproxyKillOptions {
  /** The supervised HAProxy's pid file (`<data dir>/haproxy/haproxy.pid`). */
  pidFile: string;
  /** One request of the load; a status other than 200 or a throw counts as a failure. */
  request: () => Promise<{ status: number; text: string }>;
  /** Concurrent request loops. */
  workers: number;
  /** Pause after each request of a loop (0: back to back). After a throw a loop always pauses, so a refused port is not a busy loop. */
  pauseMs?: number;
  /** True once a request shows the new HAProxy carrying the traffic again. */
  recovered: () => Promise<boolean>;
}

export interface HaproxyKillResult {
  /** Requests answered 200 in all. */
  ok: number;
  /** ...by the moment of the kill, and by the moment the new HAProxy was seen carrying traffic. */
  okBeforeKill: number;
  okAtRecovery: number;
  /** One line per failed request (status and the start of the body, or the error). */
  failures: string[];
}

/**
 * Runs `workers` request loops, `kill -9`s the HAProxy named by the pid file after 300 ms of load,
 * waits (10 s at most) for a new HAProxy (another pid) to carry traffic, keeps the load for 300 ms
 * more and stops. The caller asserts on the counts: how many failures are tolerable differs per setup.
 */
export async function killHaproxyUnderLoad(o: HaproxyKillOptions): Promise<HaproxyKillResult> {
  const pid = Number(readFileSync(o.pidFile, 'utf8').trim());
  let stop = false;
  let ok = 0;
  const failures: string[] = [];
  const worker = async (): Promise<void> => {
    while (!stop) {
      try {
        const r = await o.request();
        if (r.status === 200) ok++;
        else failures.push(`${r.status} ${r.text.slice(0, 200)}`);
      } catch (err) {
        failures.push(String((err as Error).cause ?? err));
        await sleep(Math.max(5, o.pauseMs ?? 0));
        continue;
      }
      if (o.pauseMs) await sleep(o.pauseMs);
    }
  };
  const load = Promise.all(Array.from({ length: o.workers }, worker));
  let okBeforeKill: number;
  let okAtRecovery: number;
  try {
    await sleep(300);
    okBeforeKill = ok;
    process.kill(pid, 'SIGKILL');
    await eventually(async () => {
      if (Number(readFileSync(o.pidFile, 'utf8').trim()) === pid) return undefined;
      return o.recovered();
    }, 10_000, 50);
    okAtRecovery = ok;
    await sleep(300);
  } finally {
    stop = true;
    await load;
  }
  return { ok, okBeforeKill, okAtRecovery, failures };
}
