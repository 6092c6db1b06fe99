import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { procGone, signalPid, type ProcRef } from './procfs.ts';
import type { Endpoint, InstanceSpec } from './types.ts';

/**
 * A VM's record in its instance dir (`state.json`), what a restarted agent finds it by: the VM
 * drivers (qemu/, firecracker/) each add what their VMM needs to be re-attached to (sockets,
 * files, network) to these fields. Written whole (a temporary file renamed) at spawn, rewritten
 * with `ready: true` once the program listens.
 */
export interface VmRecord {
  v: 1;
  /** The agent that started it: another agent id on the same data dir does not adopt it. */
  agentId: string;
  /** The spec it runs: owner (function/service, id, name) and version (config key) are its labels. */
  spec: InstanceSpec;
  endpoint: Endpoint;
  /** ms since epoch */
  startedAt: number;
  /** The program listened: only a ready VM is adoptable (one caught mid-boot waits for a config nobody sends). */
  ready: boolean;
}

export type Fields = Record<string, unknown>;
export const isObj = (x: unknown): x is Fields => typeof x === 'object' && x !== null && !Array.isArray(x);
export const isStr = (x: unknown): x is string => typeof x === 'string' && x.length > 0;
export const isPort = (x: unknown): x is number => Number.isInteger(x) && (x as number) > 0 && (x as number) < 65536;
export const isAbsPath = (x: unknown): x is string => isStr(x) && x.startsWith('/');
/** A ProcRef as a record holds it: a pid above 1 and a start time in clock ticks. */
export const isProcRef = (x: unknown): x is ProcRef => isObj(x) && Number.isInteger(x['pid']) && (x['pid'] as number) > 1 && isStr(x['start']) && /^\d+$/.test(x['start']);

/**
 * Parses and checks a record: the common fields here, the driver's own with `own`; undefined when
 * it is not a complete one (torn, foreign, an older format): such a VM is not adopted,
 * cleanupLeftovers stops it by its dir. `instanceId`: the instance the dir it was read from is for.
 */
export function parseVmRecord<T extends VmRecord>(text: string, own: (r: Fields) => boolean, instanceId?: string): T | undefined {
  let r: unknown;
  try {
    r = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (!isObj(r) || r['v'] !== 1 || !isStr(r['agentId'])) return undefined;
  const spec = r['spec'];
  if (!isObj(spec) || !isStr(spec['instanceId']) || (instanceId !== undefined && spec['instanceId'] !== instanceId)) return undefined;
  const owner = spec['owner'];
  if (!isObj(owner) || (owner['kind'] !== 'function' && owner['kind'] !== 'service') || !isStr(owner['id']) || typeof owner['name'] !== 'string') return undefined;
  const artifact = spec['artifact'];
  if (!isObj(artifact) || !['code', 'image', 'rootfs'].includes(artifact['kind'] as string)) return undefined;
  if (!isObj(spec['resources']) || !isObj(spec['listen']) || !isPort(spec['listen']['port']) || !isObj(spec['env'])) return undefined;
  const ep = r['endpoint'];
  if (!isObj(ep) || !(ep['kind'] === 'tcp' ? isStr(ep['host']) && isPort(ep['port']) : ep['kind'] === 'unix' && isAbsPath(ep['path']))) return undefined;
  if (typeof r['ready'] !== 'boolean' || typeof r['startedAt'] !== 'number') return undefined;
  return own(r) ? (r as unknown as T) : undefined;
}

/** Written whole or not at all (a crash mid-write leaves the previous record, or none). */
export function writeVmRecord(dir: string, rec: VmRecord): void {
  const tmp = join(dir, 'state.json.tmp');
  writeFileSync(tmp, JSON.stringify(rec), { mode: 0o600 });
  renameSync(tmp, join(dir, 'state.json'));
}

export function readVmRecord<T extends VmRecord>(dir: string, parse: (text: string) => T | undefined): T | undefined {
  try {
    return parse(readFileSync(join(dir, 'state.json'), 'utf8'));
  } catch {
    return undefined;
  }
}

/** How long a VM nobody adopted gets to go after it was asked before SIGKILL. */
export const LEFTOVER_GRACE_MS = 3000;

/**
 * Stop a VM nobody adopted: `ask` it to end (QMP quit, Ctrl+Alt+Del), SIGKILL if it is still there
 * after the grace. It runs during agent start, before anything else holds the event loop: its waits
 * are timers that keep the process alive (the clock's are unref'd), bounded by count, not by time.
 */
export async function stopLeftover(vmm: ProcRef, ask: () => Promise<unknown>, graceMs = LEFTOVER_GRACE_MS): Promise<void> {
  await within(ask(), graceMs, 'the VM did not take the request').catch(() => undefined);
  for (let waited = 0; waited < graceMs && !procGone(vmm); waited += 50) await delay(50);
  for (let i = 0; i < 100 && !procGone(vmm); i++) {
    signalPid(vmm.pid, 'SIGKILL');
    await delay(20);
  }
}

/** `p`, or a rejection after `ms` (a timer that keeps the process alive: see stopLeftover). */
export async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  const ac = new AbortController();
  try {
    return await Promise.race([
      p,
      delay(ms, undefined, { signal: ac.signal }).then(() => {
        throw new Error(`${what} within ${ms} ms`);
      }),
    ]);
  } finally {
    ac.abort();
  }
}
