import assert from 'node:assert/strict';
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { probeFirecracker } from '../host.ts';

test('the firecracker probe wants KVM, the binary, root and an ELF kernel, and says which is missing', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'fcprobe-'));
  try {
    const bin = join(dir, 'firecracker');
    await writeFile(bin, '#!/bin/sh\n');
    await chmod(bin, 0o755);
    const elf = join(dir, 'vmlinux');
    await writeFile(elf, Buffer.concat([Buffer.from([0x7f, 0x45, 0x4c, 0x46]), Buffer.alloc(60)]));
    const bz = join(dir, 'vmlinuz');
    await writeFile(bz, Buffer.from('MZ\0\0 bzImage'));
    const env = { AETHER_FIRECRACKER: bin, AETHER_FC_KERNEL: elf, AETHER_MUSL_GCC: '/bin/true' };
    assert.deepEqual(probeFirecracker({ kvm: false, root: true }, env), { kind: 'firecracker', ok: false, detail: 'no usable /dev/kvm' });
    assert.match(probeFirecracker({ kvm: true, root: false }, env).detail, /needs root/);
    assert.match(probeFirecracker({ kvm: true, root: true }, { AETHER_FIRECRACKER: bin }).detail, /set AETHER_FC_KERNEL/);
    assert.match(probeFirecracker({ kvm: true, root: true }, { AETHER_FIRECRACKER: bin, AETHER_GUEST_KERNEL: bz }).detail, /not an ELF vmlinux/);
    const ok = probeFirecracker({ kvm: true, root: true }, env);
    assert.equal(ok.ok, true);
    assert.match(ok.detail, /vmlinux/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
