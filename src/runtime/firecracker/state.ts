import { argValue, isSameProcess, readProc, type ProcInfo, type ProcRef } from '../procfs.ts';
import { isAbsPath, isObj, isPort, isProcRef, isStr, parseVmRecord, readVmRecord, type Fields, type VmRecord } from '../vmstate.ts';
import type { LinkRecord } from './network.ts';

/**
 * What a Firecracker instance persists in its VM dir (`state.json`, see ../vmstate.ts) so that a
 * restarted agent can find it, tell it from a process that reused its pid, and re-attach: the API
 * socket (control), the files Firecracker writes (the guest's serial console is its stdout: the
 * program's output), and the network with the forwarder serving the endpoint.
 */
export interface FcState extends VmRecord {
  /**
   * Firecracker's pid and start time (field 22 of /proc/<pid>/stat); under the jailer the jailer's,
   * which execs Firecracker in place.
   */
  firecracker: ProcRef;
  /** Its `--id`, also the VM dir's name. */
  vmId: string;
  /** The API socket's host path, and the `--api-sock` argument Firecracker runs with (jail-relative under the jailer). */
  api: string;
  apiArg: string;
  /** Files it writes whether or not an agent runs: the serial console (stdout), its stderr, its logger, its metrics. */
  files: { console: string; output: string; log: string; metrics: string };
  net: LinkRecord;
  /** The jail (removed with the VM), when jailed. */
  jailDir?: string;
  /** Loaded from a snapshot template. */
  restored: boolean;
}

const optional = (x: unknown, ok: (x: unknown) => boolean): boolean => x === undefined || ok(x);

function fcFields(r: Fields): boolean {
  if ((r['endpoint'] as Fields)['kind'] !== 'unix' || !isProcRef(r['firecracker'])) return false;
  if (!isStr(r['vmId']) || !/^[A-Za-z0-9]+$/.test(r['vmId']) || !isAbsPath(r['api']) || !isStr(r['apiArg'])) return false;
  const files = r['files'];
  if (!isObj(files) || !['console', 'output', 'log', 'metrics'].every((k) => isAbsPath(files[k]))) return false;
  const net = r['net'];
  if (!isObj(net) || !isStr(net['tap']) || !isStr(net['guestMac']) || !isStr(net['address']) || !isStr(net['gateway']) || !isPort(net['port'])) return false;
  if (!optional(net['netns'], isStr) || !optional(net['forwarder'], isProcRef) || !optional(net['forwarderOutput'], isAbsPath)) return false;
  return optional(r['jailDir'], isAbsPath) && typeof r['restored'] === 'boolean';
}

/** A complete Firecracker record (see parseVmRecord), of the instance `instanceId` when given. */
export function parseFcState(text: string, instanceId?: string): FcState | undefined {
  return parseVmRecord<FcState>(text, fcFields, instanceId);
}

/** The record in VM dir `dir`, named `vmId`: a record naming another VM is not this dir's. */
export function readFcState(dir: string, vmId: string, instanceId?: string): FcState | undefined {
  const rec = readVmRecord(dir, (text) => parseFcState(text, instanceId));
  return rec?.vmId === vmId ? rec : undefined;
}

/**
 * Whether `proc` is the Firecracker of this record (see isSameProcess): its argv serves this API
 * socket as this VM (`--api-sock` as recorded and `--id`: under the jailer every VM's socket
 * argument is the same jail-relative path; the jailer passes `--id` on).
 */
export function isSameFirecracker(rec: Pick<FcState, 'firecracker' | 'apiArg' | 'vmId'>, proc: ProcInfo | undefined): boolean {
  return isSameProcess(rec.firecracker, proc, (argv) => argValue(argv, '--api-sock') === rec.apiArg && argValue(argv, '--id') === rec.vmId);
}

/** The record's Firecracker still runs (see isSameFirecracker). */
export function firecrackerAlive(rec: Pick<FcState, 'firecracker' | 'apiArg' | 'vmId'>): boolean {
  return isSameFirecracker(rec, readProc(rec.firecracker.pid));
}
