import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { procStart } from './procfs.ts';
import { findV1Mounts, InstanceCgroups, leftoverInstanceIds, ownerMarker, removeAgentCgroups, sweepDeadAgents, v1Usable } from './cgroup.ts';

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
  for (const name of ['common.pl', 'launch.pl', 'container.pl']) {
    const launcher = join(dirname(fileURLToPath(import.meta.url)), 'process', 'sandbox', name);
    it(`${name} compiles under strict and warnings (it runs without them for speed)`, { skip: existsSync('/usr/bin/perl') ? false : 'no perl' }, () => {
      const out = execFileSync('/usr/bin/perl', ['-Mstrict', '-Mwarnings', '-c', launcher], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
      assert.equal(out, '');
    });
  }
});

describe('owner markers and the sweep of dead agents', () => {
  const startOf = (pid: number): string => procStart(pid) as string;
  it('removes only the empty dirs of agents whose owners are all gone', { skip: process.platform !== 'linux' }, () => {
    const base = mkdtempSync(join(tmpdir(), 'aether-cg-test-'));
    try {
      const mounts = { memory: join(base, 'memory'), cpu: join(base, 'cpu'), pids: join(base, 'pids') };
      const live = `.owner-${process.ppid}-${startOf(process.ppid)}`;
      const dead = '.owner-999999999-1';
      const reused = `.owner-${process.ppid}-1`; // the pid lives on, but it is another process now
      const layout: Record<string, string[]> = {
        'agent-dead': [dead, 'inst-1', 'inst-2'],
        'agent-reused': [reused],
        'agent-live': [live, dead, 'inst-3'],
        'agent-unmarked': ['inst-4'],
        'agent-busy': [dead, 'inst-5'],
        'agent-me': [dead, 'inst-6'],
      };
      for (const m of Object.values(mounts)) for (const [a, subs] of Object.entries(layout)) for (const s of subs) mkdirSync(join(m, 'aether', a, s), { recursive: true });
      // a busy cgroup: rmdir fails (here: not empty)
      for (const m of Object.values(mounts)) writeFileSync(join(m, 'aether', 'agent-busy', 'inst-5', 'tasks'), '1');
      // empty and unmarked: left by an adopter that never marked it (before claim())
      for (const m of Object.values(mounts)) mkdirSync(join(m, 'aether', 'agent-empty'));

      assert.deepEqual(sweepDeadAgents(mounts, 'agent-me').sort(), ['agent-dead', 'agent-empty', 'agent-reused']);
      for (const m of Object.values(mounts)) {
        const root = join(m, 'aether');
        assert.deepEqual(readdirSync(root).sort(), ['agent-busy', 'agent-live', 'agent-me', 'agent-unmarked']);
        assert.deepEqual(readdirSync(join(root, 'agent-live')).sort(), [dead, live, 'inst-3'].sort(), 'a live owner: untouched');
        assert.deepEqual(readdirSync(join(root, 'agent-unmarked')), ['inst-4'], 'no marker: untouched');
        assert.deepEqual(readdirSync(join(root, 'agent-busy')).sort(), [dead, 'inst-5'].sort(), 'the busy instance stays, and the marker that lets a later sweep take it');
        assert.deepEqual(readdirSync(join(root, 'agent-me')).sort(), [ownerMarker(), 'inst-6'].sort(), 'our own id: dead markers go; an instance left there (adopted) makes it ours');
      }
      assert.deepEqual(leftoverInstanceIds(mounts, 'agent-live'), ['inst-3']);
      // The busy instance ended: the next sweep (any agent's start) takes its dir.
      for (const m of Object.values(mounts)) rmSync(join(m, 'aether', 'agent-busy', 'inst-5', 'tasks'));
      assert.deepEqual(sweepDeadAgents(mounts, 'agent-me'), ['agent-busy']);
      assert.equal(existsSync(join(mounts.pids, 'aether', 'agent-busy')), false);

      // An adopted instance: its dir carries only its dead starter's marker until the adopter claims it.
      for (const m of Object.values(mounts)) mkdirSync(join(m, 'aether', 'agent-adopter', 'inst-8'), { recursive: true });
      for (const m of Object.values(mounts)) writeFileSync(join(m, 'aether', 'agent-adopter', 'inst-8', 'tasks'), '1');
      new InstanceCgroups(mounts, 'agent-adopter', 'inst-8').claim();
      assert.deepEqual(sweepDeadAgents(mounts), [], 'a live owner: untouched');
      for (const m of Object.values(mounts)) assert.deepEqual(readdirSync(join(m, 'aether', 'agent-adopter')).sort(), [ownerMarker(), 'inst-8'].sort());

      // Our own dirs: the marker stays while an instance dir does, then all goes.
      const cg = new InstanceCgroups(mounts, 'agent-own', 'inst-7');
      for (const d of Object.values(cg.dirs)) mkdirSync(d, { recursive: true });
      for (const m of Object.values(mounts)) mkdirSync(join(m, 'aether', 'agent-own', ownerMarker()));
      removeAgentCgroups(mounts, 'agent-own');
      assert.deepEqual(readdirSync(join(mounts.memory, 'aether', 'agent-own')).sort(), [ownerMarker(), 'inst-7'].sort());
      assert.equal(cg.remove(), true);
      removeAgentCgroups(mounts, 'agent-own');
      assert.equal(existsSync(join(mounts.memory, 'aether', 'agent-own')), false);
    } finally {
      rmSync(base, { recursive: true, force: true });
    }
  });
});
