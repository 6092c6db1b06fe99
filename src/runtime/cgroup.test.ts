import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { findV1Mounts, v1Usable } from './cgroup.ts';

describe('cgroup v1 discovery', () => {
  it('finds each controller in /proc/mounts, including co-mounted hierarchies', () => {
    const mounts = [
      'tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0',
      'cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,nosuid,nodev,noexec,relatime,cpu,cpuacct 0 0',
      'cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0',
      'cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0',
    ].join('\n');
    assert.deepEqual(findV1Mounts(mounts), { cpu: '/sys/fs/cgroup/cpu,cpuacct', memory: '/sys/fs/cgroup/memory' });
    assert.equal(v1Usable(findV1Mounts(mounts)), false, 'pids is missing');
  });

  it('ignores cgroup2 and other filesystems', () => {
    assert.deepEqual(findV1Mounts('cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\nproc /proc proc rw 0 0'), {});
  });
});

describe('sandbox launcher', () => {
  const launcher = join(dirname(fileURLToPath(import.meta.url)), 'process', 'sandbox', 'launch.pl');
  it('compiles under strict and warnings (it runs without them for speed)', { skip: existsSync('/usr/bin/perl') ? false : 'no perl' }, () => {
    const out = execFileSync('/usr/bin/perl', ['-Mstrict', '-Mwarnings', '-c', launcher], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    assert.equal(out, '');
  });
});
