/**
 * A Firecracker VM's network: one TAP per VM inside a network namespace the platform creates, so
 * the host's interfaces are never touched and the guest reaches nothing but its own namespace
 * (no route out: the same as a process sandbox, which has only loopback). The platform reaches
 * the guest's port through a small forwarder running in that namespace that publishes a unix
 * socket on the host filesystem once the guest port accepts. Like the VM, the forwarder does not
 * depend on the agent (own session, output to a file): a restarted agent takes both over.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, openSync } from 'node:fs';
import { join } from 'node:path';
import { AetherError } from '../../core/index.ts';
import { isSameProcess, procRef, readProc, signalPid, type ProcRef } from '../procfs.ts';
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
  expose(port: number): Promise<Exposed>;
  /** Remove the TAP and namespace (idempotent). */
  detach(): Promise<void>;
}

export interface Exposed {
  endpoint: Endpoint;
  ready(): boolean;
  /** The process serving the endpoint (a forwarder), if any: it outlives the agent and is recorded. */
  forwarder?: ProcRef;
  /** The file that process writes its output to (followed into the instance's log). */
  output?: string;
  close(): Promise<void>;
}

/** What a VM's state record keeps of its network: enough to take the link and endpoint over. */
export interface LinkRecord {
  tap: string;
  guestMac: string;
  address: string;
  gateway: string;
  netns?: string;
  /** The guest port the endpoint reaches. */
  port: number;
  forwarder?: ProcRef;
  forwarderOutput?: string;
}

export function linkRecord(link: VmLink, exposed: Exposed, port: number): LinkRecord {
  return {
    tap: link.tap,
    guestMac: link.guestMac,
    address: link.net.address,
    gateway: link.net.gateway,
    ...(link.netns ? { netns: link.netns } : {}),
    port,
    ...(exposed.forwarder ? { forwarder: exposed.forwarder } : {}),
    ...(exposed.output ? { forwarderOutput: exposed.output } : {}),
  };
}

export interface VmNetwork {
  attach(vmId: string, vmDir: string): Promise<VmLink>;
  /** Whether what serves a recorded VM's endpoint still runs (its forwarder): else the VM is not adoptable. */
  intact(rec: LinkRecord, endpoint: Endpoint): boolean;
  /** A recorded VM's link and endpoint, taken over as they are: nothing is created. */
  adopt(rec: LinkRecord, endpoint: Endpoint): { link: VmLink; exposed: Exposed };
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
  /** The recorded forwarder, while it is still the one serving `sock` (not a reused pid). */
  const forwarderOf = (rec: LinkRecord, sock: string): ProcRef | undefined =>
    rec.forwarder && isSameProcess(rec.forwarder, readProc(rec.forwarder.pid), (argv) => argv.includes(sock)) ? rec.forwarder : undefined;
  const sockOf = (endpoint: Endpoint): string => (endpoint.kind === 'unix' ? endpoint.path : '');
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
        async expose(port) {
          const sock = join(vmDir, `port-${port}.sock`);
          const output = join(vmDir, `forwarder-${port}.log`);
          // Its own session, no parent-death signal, output to a file (`ip netns exec` execs, so
          // the pid is the forwarder's): it serves the endpoint on while no agent runs.
          const out = openSync(output, 'a', 0o600);
          let child: ChildProcess;
          try {
            child = spawn(ip, ['netns', 'exec', ns, node, FORWARDER, sock, GUEST, String(port)], { detached: true, stdio: ['ignore', out, out] });
          } finally {
            closeSync(out);
          }
          child.once('error', () => undefined);
          forwarders.push(child);
          const forwarder = procRef(child.pid);
          return {
            endpoint: { kind: 'unix', path: sock },
            // bound under a temporary name and renamed into place: the socket's existence means listening
            ready: () => child.exitCode === null && child.signalCode === null && existsSync(sock),
            ...(forwarder ? { forwarder } : {}),
            output,
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
    intact(rec, endpoint) {
      return forwarderOf(rec, sockOf(endpoint)) !== undefined;
    },
    adopt(rec, endpoint) {
      const sock = sockOf(endpoint);
      const kill = (): void => {
        const f = forwarderOf(rec, sock);
        if (f) signalPid(f.pid, 'SIGKILL');
      };
      const link: VmLink = {
        tap: rec.tap,
        guestMac: rec.guestMac,
        net: { address: rec.address, gateway: rec.gateway },
        ...(rec.netns ? { netns: rec.netns } : {}),
        expose: () => Promise.reject(new AetherError('AETHER_ERR_INTERNAL', 'an adopted VM keeps the endpoint it has')),
        async detach() {
          kill();
          if (rec.netns) await run(ip, ['netns', 'del', rec.netns]).catch(() => undefined);
        },
      };
      const exposed: Exposed = {
        endpoint,
        ready: () => existsSync(sock),
        ...(rec.forwarder ? { forwarder: rec.forwarder } : {}),
        ...(rec.forwarderOutput ? { output: rec.forwarderOutput } : {}),
        close: async () => kill(),
      };
      return { link, exposed };
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
  const link = (): VmLink => ({
    tap: 'tap0',
    guestMac: MAC,
    net: { address: `${GUEST}/24`, gateway: GATEWAY },
    expose: () => Promise.reject(new AetherError('AETHER_ERR_INTERNAL', 'socket network: expose on attach()')),
    async detach() {},
  });
  const exposed = (path: string): Exposed => ({ endpoint: { kind: 'unix', path }, ready: () => existsSync(path), close: async () => undefined });
  return {
    async attach(_vmId: string, vmDir: string): Promise<VmLink> {
      return { ...link(), expose: async () => exposed(join(vmDir, 'guest.sock')) };
    },
    // the fake VMM serves the endpoint itself: it is there as long as the VM is
    intact: () => true,
    adopt: (_rec, endpoint) => ({ link: link(), exposed: exposed(endpoint.kind === 'unix' ? endpoint.path : '') }),
    async cleanupLeftovers() {},
  };
}
