/**
 * A Firecracker VM's network: one TAP per VM inside a network namespace the platform creates, so
 * the host's interfaces are never touched and the guest reaches nothing but its own namespace
 * (no route out: the same as a process sandbox, which has only loopback). The platform reaches
 * the guest's port through a small forwarder running in that namespace that publishes a unix
 * socket on the host filesystem once the guest port accepts.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { AetherError } from '../../core/index.ts';
import type { Endpoint } from '../types.ts';

/** What the guest is told about its network (config `net`), and how the VMM attaches to it. */
export interface VmLink {
  /** TAP device name, as Firecracker opens it (inside `netns` when set). */
  tap: string;
  guestMac: string;
  /** Guest address with prefix, and its gateway (the TAP's address). */
  net: { address: string; gateway: string };
  /** Network namespace name (`ip netns`) Firecracker must run in, if any. */
  netns?: string;
  /** Make the guest's `port` reachable from the host; `ready()` is true once the guest accepts. */
  expose(port: number, log: (text: string) => void): Promise<Exposed>;
  /** Remove the TAP and namespace (idempotent). */
  detach(): Promise<void>;
}

export interface Exposed {
  endpoint: Endpoint;
  ready(): boolean;
  close(): Promise<void>;
}

export interface VmNetwork {
  attach(vmId: string, vmDir: string): Promise<VmLink>;
  /** Remove what an earlier run (a killed agent) left for these VMs (only ours: other agents may share the host). */
  cleanupLeftovers(vmIds: readonly string[]): Promise<void>;
}

const GUEST = '10.0.2.15';
const GATEWAY = '10.0.2.2';
const MAC = '06:00:0a:00:02:0f';
export const NETNS_PREFIX = 'aefc_';
const FORWARDER = new URL('./guest-forwarder.mjs', import.meta.url).pathname;

function run(cmd: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { timeout: 10_000 }, (err, _out, stderr) => (err ? reject(new AetherError('AETHER_ERR_VMM', `${cmd} ${args.join(' ')}: ${stderr.trim() || err.message}`)) : resolve()));
  });
}

/**
 * Namespace networking (needs root and iproute2): netns `aefc_<vmId>` holding `tap0` =
 * 10.0.2.2/24; the guest is 10.0.2.15 in every VM (clones of one snapshot share it, each in
 * its own namespace). Nothing is routed out of the namespace.
 */
export function netnsNetwork(opts: { ip?: string; node?: string } = {}): VmNetwork {
  const ip = opts.ip ?? 'ip';
  const node = opts.node ?? process.execPath;
  return {
    async attach(vmId: string, vmDir: string): Promise<VmLink> {
      const ns = `${NETNS_PREFIX}${vmId}`.slice(0, 60);
      await run(ip, ['netns', 'del', ns]).catch(() => undefined); // a leftover of a crashed run
      await run(ip, ['netns', 'add', ns]);
      try {
        await run(ip, ['-n', ns, 'link', 'set', 'lo', 'up']);
        await run(ip, ['-n', ns, 'tuntap', 'add', 'dev', 'tap0', 'mode', 'tap']);
        await run(ip, ['-n', ns, 'addr', 'add', `${GATEWAY}/24`, 'dev', 'tap0']);
        await run(ip, ['-n', ns, 'link', 'set', 'tap0', 'up']);
      } catch (err) {
        await run(ip, ['netns', 'del', ns]).catch(() => undefined);
        throw err;
      }
      let forwarders: ChildProcess[] = [];
      return {
        tap: 'tap0',
        guestMac: MAC,
        net: { address: `${GUEST}/24`, gateway: GATEWAY },
        netns: ns,
        async expose(port, log) {
          const sock = join(vmDir, `port-${port}.sock`);
          const child = spawn(ip, ['netns', 'exec', ns, node, FORWARDER, sock, GUEST, String(port)], { stdio: ['ignore', 'pipe', 'pipe'] });
          forwarders.push(child);
          let ready = false;
          child.stdout?.setEncoding('utf8').on('data', (d: string) => {
            if (d.includes('ready')) ready = true;
          });
          child.stderr?.setEncoding('utf8').on('data', (d: string) => log(`forwarder: ${d.trim()}`));
          return {
            endpoint: { kind: 'unix', path: sock },
            ready: () => ready && existsSync(sock),
            close: async () => void child.kill('SIGKILL'),
          };
        },
        async detach() {
          for (const f of forwarders) f.kill('SIGKILL');
          forwarders = [];
          await run(ip, ['netns', 'del', ns]).catch(() => undefined); // the TAP goes with it
        },
      };
    },
    async cleanupLeftovers(vmIds: readonly string[]): Promise<void> {
      for (const id of vmIds) await run(ip, ['netns', 'del', `${NETNS_PREFIX}${id}`.slice(0, 60)]).catch(() => undefined);
    },
  };
}

/**
 * No TAP, no namespace: the guest's program is expected to listen on `guest.sock` in the VM dir.
 * Only useful with the fake VMM (`fake-vmm.ts --guest-http guest.sock`), which simulates the guest
 * there; a real Firecracker guest would be unreachable.
 */
export function socketNetwork(): VmNetwork {
  return {
    async attach(_vmId: string, vmDir: string): Promise<VmLink> {
      return {
        tap: 'tap0',
        guestMac: MAC,
        net: { address: `${GUEST}/24`, gateway: GATEWAY },
        async expose() {
          const path = join(vmDir, 'guest.sock');
          return { endpoint: { kind: 'unix', path }, ready: () => existsSync(path), close: async () => undefined };
        },
        async detach() {},
      };
    },
    async cleanupLeftovers() {},
  };
}
