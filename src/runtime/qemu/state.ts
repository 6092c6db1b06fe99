import { isSameProcess, procGone, readProc, type ProcInfo, type ProcRef } from '../procfs.ts';
import { isAbsPath, isObj, isPort, isProcRef, parseVmRecord, readVmRecord, type Fields, type VmRecord } from '../vmstate.ts';

/**
 * What a QEMU instance persists in its dir (`state.json`, see ../vmstate.ts) so that a restarted
 * agent can find it, tell it from a process that reused its pid, and re-attach: control (QMP, the
 * ctl port), logs (the log port, the console and QEMU's own output files) and the endpoint, which
 * QEMU itself serves (user networking's hostfwd), so nothing on the host has to be re-created for it.
 */
export interface VmState extends VmRecord {
  /** QEMU's pid and its start time (field 22 of /proc/<pid>/stat), so a reused pid is never taken for it. */
  qemu: ProcRef;
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
}

function qemuFields(r: Fields): boolean {
  const ep = r['endpoint'] as Fields;
  if (ep['kind'] !== 'tcp' || !isProcRef(r['qemu'])) return false;
  for (const k of ['qmp', 'ctl', 'log', 'console', 'output']) if (!isAbsPath(r[k])) return false;
  const net = r['net'];
  if (!isObj(net) || net['kind'] !== 'user' || !isPort(net['hostPort']) || net['hostPort'] !== ep['port'] || !isObj(net['guest'])) return false;
  return (r['accel'] === 'kvm' || r['accel'] === 'tcg') && typeof r['restored'] === 'boolean';
}

/** A complete QEMU record (see parseVmRecord), of the instance `instanceId` when given. */
export function parseVmState(text: string, instanceId?: string): VmState | undefined {
  return parseVmRecord<VmState>(text, qemuFields, instanceId);
}

export function readVmState(dir: string, instanceId: string): VmState | undefined {
  return readVmRecord(dir, (text) => parseVmState(text, instanceId));
}

/**
 * Whether `proc` is the QEMU of this record (see isSameProcess): its argv is a QEMU serving this
 * instance's QMP socket (the binary's name is not checked: AETHER_QEMU may name any build).
 */
export function isSameQemu(rec: Pick<VmState, 'qemu' | 'qmp'>, proc: ProcInfo | undefined): boolean {
  return isSameProcess(rec.qemu, proc, (argv) => {
    const i = argv.indexOf('-qmp');
    return i >= 0 && (argv[i + 1] ?? '').includes(rec.qmp);
  });
}

export function qemuGone(rec: Pick<VmState, 'qemu'>): boolean {
  return procGone(rec.qemu);
}

/** The record's QEMU still runs (see isSameQemu). */
export function qemuAlive(rec: Pick<VmState, 'qemu' | 'qmp'>): boolean {
  return isSameQemu(rec, readProc(rec.qemu.pid));
}
