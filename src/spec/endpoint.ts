/**
 * How the platform reaches a sandboxed program's server: a host TCP address (a loopback port a VMM
 * forwards, or a guest's address on a TAP) or a unix socket. `guest` names where the program itself
 * listens inside its sandbox, when that differs from the host side (a VM's own address).
 */
export type Endpoint =
  | { kind: 'tcp'; host: string; port: number; guest?: GuestAddress }
  /**
   * `preamble`: a sandbox forwarder listens there. The first byte it sends on a connection is
   * PREAMBLE_OK, right before the program's first byte; a connection that ends without it reached
   * no program (see src/runtime/endpoint.ts).
   */
  | { kind: 'unix'; path: string; guest?: GuestAddress; preamble?: boolean };

export interface GuestAddress {
  /** The sandbox's own IP address, e.g. 10.0.2.15 (QEMU user networking) or 172.16.0.2 (a TAP). */
  address: string;
  port: number;
}
