import net from 'node:net';
import { AetherError } from '../../core/index.ts';
import { LineSplitter } from '../logs.ts';

/** A QMP event, e.g. { event: 'MIGRATION', data: { status: 'completed' } }. */
export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
}

/**
 * A minimal QEMU Machine Protocol client over the VM's unix socket: one JSON object per line;
 * commands are answered in order, events come in between.
 */
export class Qmp {
  readonly #sock: net.Socket;
  readonly #pending: { resolve: (v: unknown) => void; reject: (e: Error) => void; cmd: string }[] = [];
  readonly #listeners = new Set<(e: QmpEvent) => void>();
  readonly #onClose = new Set<() => void>();
  #closed = false;

  private constructor(sock: net.Socket) {
    this.#sock = sock;
    const split = new LineSplitter((line) => this.#line(line));
    sock.on('data', (b: Buffer) => split.write(b));
    sock.on('close', () => {
      this.#closed = true;
      for (const p of this.#pending.splice(0)) p.reject(new AetherError('AETHER_ERR_INTERNAL', `qmp: connection closed before the answer to ${p.cmd}`));
      for (const l of this.#onClose) l();
    });
    sock.on('error', () => undefined);
  }

  /** Connects to a listening QMP socket, reads the greeting and enters command mode. */
  static async connect(path: string): Promise<Qmp> {
    const sock = await new Promise<net.Socket>((resolve, reject) => {
      const s = net.connect(path);
      s.once('connect', () => resolve(s));
      s.once('error', reject);
    });
    const qmp = new Qmp(sock);
    // The greeting counts as the first "answer".
    await new Promise<unknown>((resolve, reject) => qmp.#pending.push({ resolve, reject, cmd: 'greeting' }));
    await qmp.execute('qmp_capabilities');
    return qmp;
  }

  #line(line: string): void {
    let msg: Record<string, unknown>;
    try {
      msg = JSON.parse(line) as Record<string, unknown>;
    } catch {
      return;
    }
    if (typeof msg['event'] === 'string') {
      const ev: QmpEvent = { event: msg['event'], ...(msg['data'] ? { data: msg['data'] as Record<string, unknown> } : {}) };
      for (const l of this.#listeners) l(ev);
      return;
    }
    const p = this.#pending.shift();
    if (!p) return;
    if ('error' in msg) {
      const e = msg['error'] as { class?: string; desc?: string };
      p.reject(new AetherError('AETHER_ERR_INTERNAL', `qmp ${p.cmd}: ${e.class ?? 'Error'}: ${e.desc ?? 'failed'}`));
    } else p.resolve(msg['return'] ?? msg['QMP']);
  }

  execute<T = unknown>(cmd: string, args?: Record<string, unknown>): Promise<T> {
    if (this.#closed) return Promise.reject(new AetherError('AETHER_ERR_INTERNAL', `qmp ${cmd}: not connected`));
    return new Promise<T>((resolve, reject) => {
      this.#pending.push({ resolve: resolve as (v: unknown) => void, reject, cmd });
      this.#sock.write(`${JSON.stringify(args ? { execute: cmd, arguments: args } : { execute: cmd })}\n`);
    });
  }

  onEvent(listener: (e: QmpEvent) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** The connection ended (QEMU exited, or close()): an adopted VM's exit shows here first. */
  onClose(listener: () => void): void {
    if (this.#closed) listener();
    else this.#onClose.add(listener);
  }

  close(): void {
    this.#sock.destroy();
  }
}
