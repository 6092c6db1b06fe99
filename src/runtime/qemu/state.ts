import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { statFields } from '../procfs.ts';
import type { Endpoint, InstanceSpec } from '../types.ts';

/**
 * What a QEMU instance persists in its dir (`state.json`) so that a restarted agent can find it,
 * tell it from a process that reused its pid, and re-attach: control (QMP, the ctl port), logs
 * (the log port, the console and QEMU's own output files) and the endpoint, which QEMU itself
 * serves (user networking's hostfwd), so nothing on the host has to be re-created for it.
 */
export interface VmState {
  v: 1;
  /** The agent that started it: another agent id on the same data dir does not adopt it. */
  agentId: string;
  /** The spec it runs: owner (function/service, id, name) and version (config key) are its labels. */
  spec: InstanceSpec;
  endpoint: Endpoint;
  /** QEMU's pid and its start time (field 22 of /proc/<pid>/stat), so a reused pid is never taken for it. */
  qemu: { pid: number; start: string };
  /** Unix sockets QEMU serves: QMP, the config/control port, the program's output port. */
  qmp: string;
  ctl: string;
  log: string;
  /** Files QEMU writes whether or not an agent runs: the serial console, and its own stdout/stderr. */
  console: string;
  output: string;
  /** User networking (no TAP): the loopback port forwarded to the guest's listening port. */
  net: { kind: 'user'; hostPort: number; guest: { address: string; port: number } };
  accel: 'kvm' | 'tcg';
  /** Booted from a snapshot template. */
  restored: boolean;
  /** ms since epoch */
  startedAt: number;
  /** The program listened: only a ready VM is adoptable (one caught mid-boot waits for a config nobody sends). */
  ready: boolean;
}

const isObj = (x: unknown): x is Record<string, unknown> => typeof x === 'object' && x !== null && !Array.isArray(x);
const isStr = (x: unknown): x is string => typeof x === 'string' && x.length > 0;
const isPort = (x: unknown): x is number => Number.isInteger(x) && (x as number) > 0 && (x as number) < 65536;

/**
 * Parses and checks a state record; undefined when it is not a complete one of ours (torn,
 * foreign, an older format): such a VM is not adopted, cleanupLeftovers stops it by its dir.
 * `instanceId`: the dir it was read from must be the instance it names.
 */
export function parseVmState(text: string, instanceId?: string): VmState | undefined {
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
  if (!isObj(ep) || ep['kind'] !== 'tcp' || !isStr(ep['host']) || !isPort(ep['port'])) return undefined;
  const q = r['qemu'];
  if (!isObj(q) || !Number.isInteger(q['pid']) || (q['pid'] as number) <= 1 || !isStr(q['start']) || !/^\d+$/.test(q['start'])) return undefined;
  for (const k of ['qmp', 'ctl', 'log', 'console', 'output']) if (!isStr(r[k]) || !(r[k] as string).startsWith('/')) return undefined;
  const net = r['net'];
  if (!isObj(net) || net['kind'] !== 'user' || !isPort(net['hostPort']) || net['hostPort'] !== ep['port'] || !isObj(net['guest'])) return undefined;
  if (r['accel'] !== 'kvm' && r['accel'] !== 'tcg') return undefined;
  if (typeof r['restored'] !== 'boolean' || typeof r['ready'] !== 'boolean' || typeof r['startedAt'] !== 'number') return undefined;
  return r as unknown as VmState;
}

/** Written whole or not at all (a crash mid-write leaves the previous record, or none). */
export function writeVmState(dir: string, state: VmState): void {
  const tmp = join(dir, 'state.json.tmp');
  writeFileSync(tmp, JSON.stringify(state), { mode: 0o600 });
  renameSync(tmp, join(dir, 'state.json'));
}

export function readVmState(dir: string, instanceId: string): VmState | undefined {
  try {
    return parseVmState(readFileSync(join(dir, 'state.json'), 'utf8'), instanceId);
  } catch {
    return undefined;
  }
}

/** What /proc says of a pid: state letter, start time, argv (NUL-separated). */
export interface ProcInfo {
  state: string;
  start: string;
  cmdline: string;
}

export function readProc(pid: number): ProcInfo | undefined {
  const f = statFields(pid);
  if (!f) return undefined;
  try {
    return { state: f[0] ?? '', start: f[19] ?? '', cmdline: readFileSync(`/proc/${pid}/cmdline`, 'latin1') };
  } catch {
    return undefined;
  }
}

/**
 * Whether `proc` is the QEMU of this record: alive (not a zombie), started when the record says
 * (a reused pid has another start time), and its argv is a QEMU serving this instance's QMP
 * socket (the binary's name is not checked: AETHER_QEMU may name any build).
 */
export function isSameQemu(rec: Pick<VmState, 'qemu' | 'qmp'>, proc: ProcInfo | undefined): boolean {
  if (!proc || proc.state === 'Z' || proc.state === 'X' || proc.start !== rec.qemu.start) return false;
  const argv = proc.cmdline.split('\0');
  const i = argv.indexOf('-qmp');
  return i >= 0 && (argv[i + 1] ?? '').includes(rec.qmp);
}

/**
 * The record's process has ended: no such pid, a zombie, or another process's start time. Not the
 * same as !isSameQemu: an exiting QEMU's cmdline reads empty before it is gone.
 */
export function isGone(rec: Pick<VmState, 'qemu'>, proc: ProcInfo | undefined): boolean {
  return !proc || proc.state === 'Z' || proc.state === 'X' || proc.start !== rec.qemu.start;
}

export function qemuGone(rec: Pick<VmState, 'qemu'>): boolean {
  return isGone(rec, readProc(rec.qemu.pid));
}

/** The record's QEMU still runs (see isSameQemu). */
export function qemuAlive(rec: Pick<VmState, 'qemu' | 'qmp'>): boolean {
  return isSameQemu(rec, readProc(rec.qemu.pid));
}
