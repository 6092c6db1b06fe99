import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { CHECKED, DENIED, seccompFilter } from './seccomp.ts';

/** Runs the classic-BPF program the way the kernel would, for one syscall (args: low 32 bits). */
function run(prog: Buffer, arch: number, nr: number, args: number[] = []): number {
  const data = Buffer.alloc(64);
  data.writeInt32LE(nr, 0);
  data.writeUInt32LE(arch, 4);
  args.forEach((a, i) => data.writeUInt32LE(a >>> 0, 16 + 8 * i));
  let acc = 0;
  for (let pc = 0; pc * 8 < prog.length; ) {
    const code = prog.readUInt16LE(pc * 8);
    const jt = prog.readUInt8(pc * 8 + 2);
    const jf = prog.readUInt8(pc * 8 + 3);
    const k = prog.readUInt32LE(pc * 8 + 4);
    pc++;
    switch (code) {
      case 0x20:
        acc = data.readUInt32LE(k);
        break;
      case 0x15:
        pc += acc === k ? jt : jf;
        break;
      case 0x35:
        pc += acc >= k ? jt : jf;
        break;
      case 0x45:
        pc += (acc & k) !== 0 ? jt : jf;
        break;
      case 0x06:
        return k;
      default:
        throw new Error(`unknown opcode ${code}`);
    }
  }
  throw new Error('fell off the end');
}

const X64 = 0xc000003e;
const ALLOW = 0x7fff0000;
const EPERM = 0x50001;
const ENOSYS = 0x50026;
const KILL = 0x80000000;

describe('seccomp filter', () => {
  const prog = seccompFilter('x64');

  it('refuses the denied syscalls with EPERM and allows ordinary ones', () => {
    for (const [name, n] of Object.entries(DENIED)) if (n.x64 !== undefined) assert.equal(run(prog, X64, n.x64), EPERM, name);
    for (const nr of [0, 1, 2, 9, 59, 60, 231, 257]) assert.equal(run(prog, X64, nr), ALLOW, `syscall ${nr}`);
  });

  it('clone: threads and forks yes, new namespaces no; clone3 says ENOSYS so libc falls back to clone', () => {
    assert.equal(run(prog, X64, 56, [0x3d0f00]), ALLOW, 'pthread_create flags');
    assert.equal(run(prog, X64, 56, [0x01200011]), ALLOW, 'fork flags');
    assert.equal(run(prog, X64, 56, [0x10000000 | 17]), EPERM, 'CLONE_NEWUSER');
    assert.equal(run(prog, X64, 56, [0x40000000]), EPERM, 'CLONE_NEWNET');
    assert.equal(run(prog, X64, 435), ENOSYS);
  });

  it('sockets: unix, inet, inet6, netlink only', () => {
    for (const f of [1, 2, 10, 16]) assert.equal(run(prog, X64, 41, [f]), ALLOW, `family ${f}`);
    for (const f of [40, 17, 38, 30, 21]) assert.equal(run(prog, X64, 41, [f]), EPERM, `family ${f}`);
    assert.equal(run(prog, X64, 53, [40]), EPERM, 'socketpair AF_VSOCK');
  });

  it('personality: only the values container engines allow', () => {
    assert.equal(run(prog, X64, 135, [0xffffffff]), ALLOW);
    assert.equal(run(prog, X64, 135, [0]), ALLOW);
    assert.equal(run(prog, X64, 135, [0x0040000]), EPERM, 'READ_IMPLIES_EXEC');
  });

  it('kills foreign ABIs (i386, x32) instead of letting them past the number checks', () => {
    assert.equal(run(prog, 0x40000003, 1), KILL, 'i386');
    assert.equal(run(prog, X64, 0x40000000 + 272), KILL, 'x32 unshare');
  });

  it('arm64 has its own program', () => {
    const arm = seccompFilter('arm64');
    const A64 = 0xc00000b7;
    assert.equal(run(arm, A64, 97), EPERM, 'unshare');
    assert.equal(run(arm, A64, 220, [0x10000000]), EPERM, 'clone NEWUSER');
    assert.equal(run(arm, A64, 198, [40]), EPERM, 'AF_VSOCK');
    assert.equal(run(arm, A64, 63), ALLOW, 'read');
    assert.equal(run(arm, X64, 63), KILL);
    assert.throws(() => seccompFilter('ia32'));
  });

  // The numbers are written out (no build step, no headers needed at run time): check them where the headers exist.
  const headers = { x64: '/usr/include/x86_64-linux-gnu/asm/unistd_64.h', arm64: '/usr/include/asm-generic/unistd.h' };
  for (const [arch, file] of Object.entries(headers) as ['x64' | 'arm64', string][]) {
    it(`syscall numbers match ${file}`, { skip: existsSync(file) ? false : 'no kernel headers' }, () => {
      const text = readFileSync(file, 'utf8');
      let checked = 0;
      for (const [name, n] of Object.entries({ ...DENIED, ...CHECKED })) {
        const m = new RegExp(`^#define __NR_${name}\\s+(\\d+)`, 'm').exec(text);
        if (!m) continue; // newer than the headers (e.g. open_tree_attr) or absent on this arch
        assert.equal(n[arch], Number(m[1]), `${arch} ${name}`);
        checked++;
      }
      assert.ok(checked > 40, `checked ${checked}`);
    });
  }
});
