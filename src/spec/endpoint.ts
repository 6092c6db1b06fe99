/**
 * How the platform reaches a sandboxed program's server: a host TCP address (a loopback port a VMM
 * forwards, or a guest's address on a TAP) or a unix socket. `guest` names where the program itself
 * listens inside its sandbox, when that differs from the host side (a VM's own address).
 */
export type Endpoint =
  | { kind: 'tcp'; host: string; port: number; guest?: GuestAddress }
  | { kind: 'unix'; path: string; guest?: GuestAddress };

export interface GuestAddress {
  /** The sandbox's own IP address, e.g. 10.0.2.15 (QEMU user networking) or 172.16.0.2 (a TAP). */
  address: string;
  port: number;
}
