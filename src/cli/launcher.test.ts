import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ManualClock } from '../core/index.ts';
import { launcherChain, readProc, watchLauncher } from './launcher.ts';
import type { ProcInfo } from './launcher.ts';

// node(100) <- sh(90) <- npm(80) <- bash(70) <- init
const npxTree = (): Map<number, ProcInfo> =>
  new Map([
    [90, { ppid: 80, state: 'S', cmdline: "sh -c 'aether' up" }],
    [80, { ppid: 70, state: 'S', cmdline: 'npm exec aether up' }],
    [70, { ppid: 1, state: 'S', cmdline: '-bash' }],
  ]);

test('launcherChain: up to npm when run by npm, up to the wrapper, else nothing', () => {
  const procs = npxTree();
  const read = (pid: number): ProcInfo | undefined => procs.get(pid);
  assert.deepEqual(launcherChain(90, { npm_execpath: '/usr/lib/npm-cli.js' }, read), [
    { pid: 90, ppid: 80 },
    { pid: 80, ppid: 70 },
  ]);
  // Not under npm: signals reach us directly, nothing to watch (bash must never count).
  assert.deepEqual(launcherChain(90, {}, read), []);
  assert.deepEqual(launcherChain(70, { npm_execpath: 'x' }, read), []);
  // The Node-version wrapper names itself.
  procs.set(95, { ppid: 1, state: 'S', cmdline: 'node bin/aether.mjs up' });
  assert.deepEqual(launcherChain(95, { AETHER_LAUNCHER_PID: '95' }, read), [{ pid: 95, ppid: 1 }]);
  // npm retitled or not: the script path counts too.
  procs.set(80, { ppid: 70, state: 'S', cmdline: '/usr/bin/node /usr/lib/node_modules/npm/bin/npx-cli.js aether up' });
  assert.equal(launcherChain(90, { npm_command: 'exec' }, read).length, 2);
});

test('watchLauncher: fires once when the shell, npm or our parent goes; not when npm is re-parented', async () => {
  const cases: { name: string; change: (p: Map<number, ProcInfo>, parent: { pid: number }) => void; gone: number | undefined }[] = [
    { name: 'npm re-parented (nohup)', change: (p) => p.set(80, { ppid: 1, state: 'S', cmdline: 'npm exec aether up' }), gone: undefined },
    { name: 'npm killed', change: (p) => p.delete(80), gone: 80 },
    { name: 'npm a zombie', change: (p) => p.set(80, { ppid: 70, state: 'Z', cmdline: '' }), gone: 80 },
    { name: 'shell killed (we are re-parented)', change: (p, parent) => ((parent.pid = 1), p.delete(90)), gone: 90 },
    { name: 'shell re-parented', change: (p) => p.set(90, { ppid: 1, state: 'S', cmdline: 'sh' }), gone: 90 },
  ];
  for (const c of cases) {
    const clock = new ManualClock();
    const procs = npxTree();
    const parent = { pid: 90 };
    const gone: number[] = [];
    watchLauncher({ chain: launcherChain(90, { npm_command: 'exec' }, (pid) => procs.get(pid)), clock, read: (pid) => procs.get(pid), ppid: () => parent.pid, onGone: (pid) => gone.push(pid) });
    await clock.advance(2_000);
    assert.deepEqual(gone, [], `${c.name}: nothing changed yet`);
    c.change(procs, parent);
    await clock.advance(2_000);
    assert.deepEqual(gone, c.gone === undefined ? [] : [c.gone], c.name);
  }
});

test('watchLauncher: an empty chain watches nothing; stop() ends the watch', async () => {
  const clock = new ManualClock();
  let fired = 0;
  watchLauncher({ chain: [], clock, ppid: () => 1, onGone: () => fired++ });
  const stop = watchLauncher({ chain: [{ pid: 5, ppid: 1 }], clock, read: () => undefined, ppid: () => 5, onGone: () => fired++ });
  stop();
  await clock.advance(5_000);
  assert.equal(fired, 0);
});

test('readProc reads this process from /proc', { skip: process.platform !== 'linux' }, () => {
  const me = readProc(process.pid);
  assert.equal(me?.ppid, process.ppid);
  assert.match(me?.cmdline ?? '', /node/);
  assert.equal(readProc(2 ** 30), undefined);
});
