/**
 * The seccomp filter of the namespaces sandbox, as a classic BPF program (`struct sock_filter[]`).
 * Modelled on the default profile of container engines (Docker/containerd/Podman): the syscalls
 * that profile refuses to a container without extra capabilities are refused here too, so a
 * function cannot reach the kernel code behind them (user namespaces, keyrings, bpf, perf, mount
 * API, modules, ...). launch.pl installs it (prctl PR_SET_SECCOMP) in the program's process after
 * the uid switch and no_new_privs, right before exec; every descendant inherits it.
 *
 * A deny list, not Docker's allow list: a new kernel's new syscalls stay usable, and the list here
 * is short enough to review. Most of what it refuses also needs a capability the program does not
 * have; refusing it at the syscall entry keeps the code behind it out of reach, and inside a user
 * namespace (which the filter prevents) those capabilities would exist.
 *
 * Since Linux 5.11 the kernel caches, per syscall number, "this filter always allows it": every
 * syscall not listed here (and not checked on its arguments) skips the filter entirely.
 */

/** Errno answers (EPERM as container engines answer, ENOSYS for clone3 so libc falls back to clone). */
const EPERM = 1;
const ENOSYS = 38;

/** Syscall numbers by architecture (x86_64's own table; arm64 uses the generic one). */
interface Nr {
  x64?: number;
  arm64?: number;
}

/** Refused with EPERM, whatever their arguments. Grouped as the container engines' profile groups them. */
export const DENIED: Record<string, Nr> = {
  // namespaces: joining or creating any (clone is checked on its flags below)
  unshare: { x64: 272, arm64: 97 },
  setns: { x64: 308, arm64: 268 },
  // the mount family, old and new API
  mount: { x64: 165, arm64: 40 },
  umount2: { x64: 166, arm64: 39 },
  pivot_root: { x64: 155, arm64: 41 },
  move_mount: { x64: 429, arm64: 429 },
  open_tree: { x64: 428, arm64: 428 },
  open_tree_attr: { x64: 467, arm64: 467 },
  fsopen: { x64: 430, arm64: 430 },
  fsconfig: { x64: 431, arm64: 431 },
  fsmount: { x64: 432, arm64: 432 },
  fspick: { x64: 433, arm64: 433 },
  mount_setattr: { x64: 442, arm64: 442 },
  // kernel keyrings (not namespaced)
  add_key: { x64: 248, arm64: 217 },
  request_key: { x64: 249, arm64: 218 },
  keyctl: { x64: 250, arm64: 219 },
  // in-kernel programs, tracing, page-fault handling, async I/O rings
  bpf: { x64: 321, arm64: 280 },
  perf_event_open: { x64: 298, arm64: 241 },
  userfaultfd: { x64: 323, arm64: 282 },
  io_uring_setup: { x64: 425, arm64: 425 },
  io_uring_enter: { x64: 426, arm64: 426 },
  io_uring_register: { x64: 427, arm64: 427 },
  fanotify_init: { x64: 300, arm64: 262 },
  lookup_dcookie: { x64: 212, arm64: 18 },
  // kernel image, modules, reboot, swap
  kexec_load: { x64: 246, arm64: 104 },
  kexec_file_load: { x64: 320, arm64: 294 },
  reboot: { x64: 169, arm64: 142 },
  init_module: { x64: 175, arm64: 105 },
  finit_module: { x64: 313, arm64: 273 },
  delete_module: { x64: 176, arm64: 106 },
  create_module: { x64: 174 },
  query_module: { x64: 178 },
  get_kernel_syms: { x64: 177 },
  swapon: { x64: 167, arm64: 224 },
  swapoff: { x64: 168, arm64: 225 },
  // the host's clock, accounting, quotas, kernel log, host names
  settimeofday: { x64: 164, arm64: 170 },
  clock_settime: { x64: 227, arm64: 112 },
  clock_adjtime: { x64: 305, arm64: 266 },
  acct: { x64: 163, arm64: 89 },
  quotactl: { x64: 179, arm64: 60 },
  quotactl_fd: { x64: 443, arm64: 443 },
  syslog: { x64: 103, arm64: 116 },
  sethostname: { x64: 170, arm64: 161 },
  setdomainname: { x64: 171, arm64: 162 },
  vhangup: { x64: 153, arm64: 58 },
  // file handles (bypass path permissions), process comparison/fd theft
  open_by_handle_at: { x64: 304, arm64: 265 },
  kcmp: { x64: 312, arm64: 272 },
  pidfd_getfd: { x64: 438, arm64: 438 },
  // NUMA placement (needs CAP_SYS_NICE in the engines' profile)
  mbind: { x64: 237, arm64: 235 },
  set_mempolicy: { x64: 238, arm64: 237 },
  get_mempolicy: { x64: 239, arm64: 236 },
  set_mempolicy_home_node: { x64: 450, arm64: 450 },
  move_pages: { x64: 279, arm64: 239 },
  migrate_pages: { x64: 256, arm64: 238 },
  // obsolete or hardware access
  nfsservctl: { x64: 180, arm64: 42 },
  uselib: { x64: 134 },
  ustat: { x64: 136 },
  sysfs: { x64: 139 },
  _sysctl: { x64: 156 },
  iopl: { x64: 172 },
  ioperm: { x64: 173 },
};

/** Checked on their arguments (see the program below). */
export const CHECKED: Record<string, Nr> = {
  clone: { x64: 56, arm64: 220 },
  clone3: { x64: 435, arm64: 435 },
  socket: { x64: 41, arm64: 198 },
  socketpair: { x64: 53, arm64: 199 },
  personality: { x64: 135, arm64: 92 },
};

/** CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET (the engines' mask). */
export const CLONE_NS_FLAGS = 0x7e020000;
/** Address families a function may open sockets of: AF_UNIX, AF_INET, AF_INET6, AF_NETLINK (getifaddrs). */
export const ALLOWED_FAMILIES = [1, 2, 10, 16];
/** personality(2) values the engines allow: PER_LINUX, UNAME26, ADDR_NO_RANDOMIZE variants, and the query. */
export const ALLOWED_PERSONALITIES = [0x0, 0x8, 0x20000, 0x20008, 0xffffffff];

const AUDIT_ARCH: Record<string, number> = { x64: 0xc000003e, arm64: 0xc00000b7 };
/** x86_64's x32 ABI numbers have this bit: refused whole, or they would slip past the number checks. */
const X32_SYSCALL_BIT = 0x40000000;

// BPF opcodes and seccomp return values (linux/filter.h, linux/seccomp.h)
const LD_W_ABS = 0x20;
const JEQ_K = 0x15;
const JGE_K = 0x35;
const JSET_K = 0x45;
const RET_K = 0x06;
const RET_KILL_PROCESS = 0x80000000;
const RET_ERRNO = 0x00050000;
const RET_ALLOW = 0x7fff0000;
// struct seccomp_data: nr at 0, arch at 4, args[6] (u64) from 16; low 32 bits first (little endian)
const OFF_NR = 0;
const OFF_ARCH = 4;
const OFF_ARG0_LO = 16;

type Label = 'allow' | 'eperm' | 'enosys' | 'kill' | 'clone' | 'socket' | 'personality';
interface Insn {
  code: number;
  k: number;
  jt?: Label;
  jf?: Label;
  label?: Label;
}

export function seccompSupported(arch: string): boolean {
  return AUDIT_ARCH[arch] !== undefined;
}

/** The filter for `arch` (process.arch), as the bytes of its `struct sock_filter` array (host byte order). */
export function seccompFilter(arch: string): Buffer {
  const audit = AUDIT_ARCH[arch];
  if (audit === undefined) throw new Error(`seccomp: unsupported architecture ${arch}`);
  const nr = (n: Nr): number | undefined => (arch === 'x64' ? n.x64 : n.arm64);
  const checked = (name: string): number => nr(CHECKED[name] as Nr) as number;
  const prog: Insn[] = [];
  const at = (label: Label, insn: Insn): void => void prog.push({ ...insn, label });
  // a foreign ABI (i386 / arm32 compat) would need tables of its own: not allowed at all
  prog.push({ code: LD_W_ABS, k: OFF_ARCH }, { code: JEQ_K, k: audit, jf: 'kill' });
  prog.push({ code: LD_W_ABS, k: OFF_NR });
  if (arch === 'x64') prog.push({ code: JGE_K, k: X32_SYSCALL_BIT, jt: 'kill' });
  for (const n of Object.values(DENIED)) {
    const v = nr(n);
    if (v !== undefined) prog.push({ code: JEQ_K, k: v, jt: 'eperm' });
  }
  prog.push({ code: JEQ_K, k: checked('clone'), jt: 'clone' });
  prog.push({ code: JEQ_K, k: checked('clone3'), jt: 'enosys' });
  prog.push({ code: JEQ_K, k: checked('socket'), jt: 'socket' });
  prog.push({ code: JEQ_K, k: checked('socketpair'), jt: 'socket' });
  prog.push({ code: JEQ_K, k: checked('personality'), jt: 'personality' });
  prog.push({ code: RET_K, k: RET_ALLOW });
  // clone: no new namespaces (the flags are in the first argument on both architectures)
  at('clone', { code: LD_W_ABS, k: OFF_ARG0_LO });
  prog.push({ code: JSET_K, k: CLONE_NS_FLAGS, jt: 'eperm', jf: 'allow' });
  at('socket', { code: LD_W_ABS, k: OFF_ARG0_LO });
  for (const f of ALLOWED_FAMILIES) prog.push({ code: JEQ_K, k: f, jt: 'allow' });
  prog.push({ code: RET_K, k: RET_ERRNO | EPERM });
  at('personality', { code: LD_W_ABS, k: OFF_ARG0_LO });
  for (const p of ALLOWED_PERSONALITIES) prog.push({ code: JEQ_K, k: p, jt: 'allow' });
  at('eperm', { code: RET_K, k: RET_ERRNO | EPERM });
  at('enosys', { code: RET_K, k: RET_ERRNO | ENOSYS });
  at('kill', { code: RET_K, k: RET_KILL_PROCESS });
  // classic BPF jumps only forward: the argument checks' "allow" lives at the end
  at('allow', { code: RET_K, k: RET_ALLOW });

  const where = new Map<Label, number>();
  prog.forEach((insn, i) => insn.label && where.set(insn.label, i));
  const buf = Buffer.alloc(prog.length * 8);
  const le = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
  prog.forEach((insn, i) => {
    const off = (l: Label | undefined): number => {
      if (l === undefined) return 0;
      const d = (where.get(l) as number) - (i + 1);
      if (d < 0 || d > 255) throw new Error(`seccomp: jump to ${l} out of range`);
      return d;
    };
    const o = i * 8;
    if (le) buf.writeUInt16LE(insn.code, o);
    else buf.writeUInt16BE(insn.code, o);
    buf.writeUInt8(off(insn.jt), o + 2);
    buf.writeUInt8(off(insn.jf), o + 3);
    if (le) buf.writeUInt32LE(insn.k >>> 0, o + 4);
    else buf.writeUInt32BE(insn.k >>> 0, o + 4);
  });
  return buf;
}
