import { execFile } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from '../../src/core/index.ts';
import { statFields } from '../../src/runtime/procfs.ts';

/**
 * A single-node Ceph (mon + memstore OSD + radosgw, no mgr, `auth none`) on loopback. About 15-20 s
 * to start: once per test file.
 */
export interface Radosgw {
  endpoint: string;
  accessKeyId: string;
  secretAccessKey: string;
  /** Stop every daemon and delete the data dir. */
  stop(): Promise<void>;
  /** Take S3 down (radosgw only; mon and osd keep running). */
  stopRgw(): Promise<void>;
  /** Bring radosgw back and wait until it answers. */
  startRgw(): Promise<void>;
}

const BINARIES = ['ceph-mon', 'ceph-osd', 'radosgw', 'radosgw-admin', 'ceph', 'ceph-authtool', 'monmaptool'];

/** undefined when Ceph can run here, else the reason to skip. */
export function cephAvailable(): string | undefined {
  const missing = BINARIES.filter((b) => !existsSync(`/usr/bin/${b}`));
  if (missing.length > 0) return `ceph binaries missing: ${missing.join(', ')} (apt-get install ceph-mon ceph-osd radosgw ceph-common)`;
  if (process.getuid?.() !== 0) return 'ceph daemons need root here';
  return undefined;
}

// Daemons we started, killed on exit even when a test crashes.
const started = new Set<number>();
process.on('exit', () => {
  for (const pid of started) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
});

function run(cmd: string, args: string[], timeoutMs = 60_000): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { timeout: timeoutMs, maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${cmd} ${args.join(' ')} failed: ${err.message}\n${stderr}`));
      else resolve(stdout);
    });
  });
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A zombie counts as gone: daemons are reparented to PID 1, which may reap them late. */
function alive(pid: number): boolean {
  const state = statFields(pid)?.[0];
  return state !== undefined && state !== 'Z';
}

async function until(what: string, timeoutMs: number, check: () => Promise<boolean>): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (await check().catch(() => false)) return;
    await sleep(200);
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
}

/** SIGTERM, then SIGKILL if it is still there after `graceMs` (ceph-osd can take >10 s). */
async function terminate(pid: number, graceMs: number): Promise<void> {
  try {
    process.kill(pid, 'SIGTERM');
  } catch {
    started.delete(pid);
    return;
  }
  const end = Date.now() + graceMs;
  while (alive(pid) && Date.now() < end) await sleep(50);
  if (alive(pid)) process.kill(pid, 'SIGKILL');
  while (alive(pid)) await sleep(20);
  started.delete(pid);
}

export async function startRadosgw(): Promise<Radosgw> {
  const reason = cephAvailable();
  if (reason) throw new Error(reason);
  const D = await mkdtemp(join(tmpdir(), 'aether-ceph-'));
  for (const sub of ['run', 'log', 'mon.a', 'osd0']) await mkdir(join(D, sub), { recursive: true });
  const [monV2, monV1, rgwPort] = [await freePort(), await freePort(), await freePort()];
  const fsid = randomUUID();
  const monHost = `[v2:127.0.0.1:${monV2},v1:127.0.0.1:${monV1}]`;
  const conf = join(D, 'ceph.conf');
  // The recipe with our ports and paths, plus "pid file" (it defaults to none) so the daemonized
  // processes can be stopped by pid. The "ms * mode = crc" lines are essential:
  // without them radosgw never connects to the mon (it wants a secure connection auth none lacks).
  await writeFile(
    conf,
    `[global]
fsid = ${fsid}
mon host = ${monHost}
mon initial members = a
auth cluster required = none
auth service required = none
auth client required = none
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
mon warn on pool no redundancy = false
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon max pg per osd = 1000
osd crush chooseleaf type = 0
osd objectstore = memstore
memstore device bytes = 1073741824
run dir = ${D}/run
admin socket = ${D}/run/$name.asok
pid file = ${D}/run/$name.pid
log file = ${D}/log/$name.log
mon data = ${D}/mon.$id
osd data = ${D}/osd$id
keyring = ${D}/keyring
ms bind ipv6 = false
ms mon client mode = crc
ms client mode = crc
ms mon service mode = crc
ms service mode = crc
ms cluster mode = crc
ms mon cluster mode = crc
mon data avail warn = 1
[client.rgw]
rgw frontends = beast endpoint=127.0.0.1:${rgwPort}
rgw dns name = localhost
`,
  );
  const C = ['-c', conf];
  const endpoint = `http://127.0.0.1:${rgwPort}`;
  const accessKeyId = `AK${randomBytes(9).toString('hex').toUpperCase()}`;
  const secretAccessKey = randomBytes(20).toString('base64url');

  /** Pids of our daemons from their pid files (they daemonize, so we never see them as children). */
  const pidOf = async (name: string): Promise<number | undefined> => {
    try {
      const pid = Number((await readFile(join(D, 'run', `${name}.pid`), 'utf8')).trim());
      return pid > 0 ? pid : undefined;
    } catch {
      return undefined;
    }
  };
  const track = async (name: string): Promise<void> => {
    await until(`pid file of ${name}`, 20_000, async () => (await pidOf(name)) !== undefined);
    started.add((await pidOf(name))!);
  };
  const rgwAnswers = async (): Promise<boolean> => {
    const res = await fetch(endpoint, { signal: AbortSignal.timeout(1000) });
    await res.arrayBuffer();
    return true;
  };
  const startRgw = async (): Promise<void> => {
    await rm(join(D, 'run', 'client.rgw.pid'), { force: true });
    await run('radosgw', [...C, '-n', 'client.rgw']);
    await track('client.rgw');
    await until('radosgw to answer HTTP', 60_000, rgwAnswers);
  };
  const stopRgw = async (): Promise<void> => {
    const pid = await pidOf('client.rgw');
    if (pid !== undefined) await terminate(pid, 10_000);
  };
  const stop = async (): Promise<void> => {
    const files = await readdir(join(D, 'run')).catch(() => [] as string[]);
    const pids = await Promise.all(files.filter((f) => f.endsWith('.pid')).map((f) => pidOf(f.slice(0, -'.pid'.length))));
    // Data is in RAM (memstore) and thrown away: no need to wait long for a clean osd shutdown.
    await Promise.all(pids.map((pid) => (pid === undefined ? undefined : terminate(pid, 2000))));
    await rm(D, { recursive: true, force: true });
  };

  try {
    const keyring = join(D, 'keyring');
    const monmap = join(D, 'monmap');
    await run('ceph-authtool', ['--create-keyring', keyring, '--gen-key', '-n', 'mon.', '--cap', 'mon', 'allow *']);
    await run('monmaptool', ['--create', '--fsid', fsid, '--addv', 'a', monHost, monmap]);
    await run('ceph-mon', [...C, '--mkfs', '-i', 'a', '--monmap', monmap, '--keyring', keyring]);
    await run('ceph-mon', [...C, '-i', 'a']);
    await track('mon.a');
    const osdUuid = randomUUID();
    const osdId = (await run('ceph', [...C, 'osd', 'new', osdUuid])).trim();
    await run('ceph-osd', [...C, '-i', osdId, '--mkfs', '--osd-uuid', osdUuid]);
    await run('ceph-osd', [...C, '-i', osdId]);
    await track(`osd.${osdId}`);
    await until('the osd to be up', 60_000, async () => (await run('ceph', [...C, 'osd', 'stat'], 10_000)).includes('1 up'));
    await startRgw();
    await run('radosgw-admin', [...C, 'user', 'create', '--uid=test', '--display-name=test', `--access-key=${accessKeyId}`, `--secret-key=${secretAccessKey}`]);
  } catch (err) {
    await stop();
    throw err;
  }
  return { endpoint, accessKeyId, secretAccessKey, stop, stopRgw, startRgw };
}
