import { createHash } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Readable } from 'node:stream';
import { zipOf } from '../archive/testing.ts';
import type { BlobInfo, BlobStore } from '../blob/index.ts';
import type { Endpoint, ExitInfo, InstanceSpec, InstanceState, LogLine, Runtime, RuntimeInstance } from '../runtime/index.ts';

/** Helpers shared by the agent's tests (not used by production code). */

/** A real zip archive of `files` (name -> content). */
export const buildZip = (files: Record<string, string>): Promise<Buffer> => zipOf(files);

export const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** Wraps a BlobStore and counts downloads per key; `gate` holds every get until opened. */
export function countingBlob(inner: BlobStore): BlobStore & { gets: Map<string, number>; hold(): () => void } {
  const gets = new Map<string, number>();
  let gate: Promise<void> | undefined;
  return {
    gets,
    hold() {
      let open!: () => void;
      gate = new Promise((r) => (open = r));
      return () => {
        gate = undefined;
        open();
      };
    },
    put: (key, body) => inner.put(key, body),
    async get(key) {
      gets.set(key, (gets.get(key) ?? 0) + 1);
      if (gate) await gate;
      return inner.get(key);
    },
    head: (key) => inner.head(key),
    list: (prefix) => inner.list(prefix),
    delete: (key) => inner.delete(key),
    close: () => inner.close(),
  };
}

/** A minimal in-memory BlobStore for unit tests that need no files on disk. */
export function mapBlob(): BlobStore {
  const m = new Map<string, { body: Buffer; info: BlobInfo }>();
  return {
    async put(key, body) {
      let buf: Buffer;
      if (Buffer.isBuffer(body)) buf = body;
      else {
        const chunks: Buffer[] = [];
        for await (const c of body) chunks.push(c as Buffer);
        buf = Buffer.concat(chunks);
      }
      const info = { key, size: buf.length, modified: Date.now() };
      m.set(key, { body: buf, info });
      return info;
    },
    async get(key) {
      const e = m.get(key);
      return e ? Readable.from([e.body]) : undefined;
    },
    async head(key) {
      return m.get(key)?.info;
    },
    async list(prefix) {
      return [...m.values()].filter((e) => e.info.key.startsWith(prefix)).map((e) => e.info);
    },
    async delete(key) {
      m.delete(key);
    },
    async close() {},
  };
}

/** What a scripted instance does; chosen per instance from its spec. */
export interface Script {
  /** Lines printed on stdout right after start. */
  print?: string[];
  /** Exit with this code right after printing (before listening). */
  exitCode?: number;
  /** start() itself rejects with this message. */
  failStart?: string;
  /** Request handler once listening (default: 200 "ok <instanceId>"). */
  handler?: (req: IncomingMessage, res: ServerResponse) => void;
  /** waitReady() does not resolve before this does (a slow start). */
  readyGate?: Promise<void>;
  /** stop() (the sandbox teardown) does not resolve before this does. */
  stopGate?: Promise<void>;
}

export interface ScriptedInstance extends RuntimeInstance {
  print(text: string, stream?: 'stdout' | 'stderr'): void;
  /** The program dies by itself. */
  crash(info?: Partial<ExitInfo>): void;
  readonly stopCalls: number;
}

/**
 * A small scriptable Runtime for the agent's unit tests: each instance is an in-process HTTP
 * server on loopback, with output, crashes and start failures under the test's control.
 */
export function scriptedRuntime(script: (spec: InstanceSpec) => Script = () => ({})): Runtime & { instances: Map<string, ScriptedInstance>; created: InstanceSpec[] } {
  const instances = new Map<string, ScriptedInstance>();
  const created: InstanceSpec[] = [];
  return {
    kind: 'scripted',
    isolation: 'none',
    instances,
    created,
    async create(spec) {
      created.push(spec);
      const inst = new Scripted(spec, script(spec));
      instances.set(spec.instanceId, inst);
      return inst;
    },
    async cleanupLeftovers() {},
    async close() {
      await Promise.all([...instances.values()].map((i) => i.stop(0)));
    },
  };
}

class Scripted implements ScriptedInstance {
  readonly id: string;
  readonly spec: InstanceSpec;
  readonly exited: Promise<ExitInfo>;
  stopCalls = 0;
  #script: Script;
  #server: Server | undefined;
  #endpoint: Endpoint | undefined;
  #state: InstanceState = 'created';
  #exit: ExitInfo | undefined;
  #resolveExit!: (e: ExitInfo) => void;
  #listeners: ((l: LogLine) => void)[] = [];
  #listening: Promise<void> | undefined;

  constructor(spec: InstanceSpec, script: Script) {
    this.id = spec.instanceId;
    this.spec = spec;
    this.#script = script;
    this.exited = new Promise((r) => (this.#resolveExit = r));
  }

  get endpoint(): Endpoint {
    if (!this.#endpoint) throw new Error('no endpoint before start');
    return this.#endpoint;
  }

  onLog(listener: (line: LogLine) => void): void {
    this.#listeners.push(listener);
  }

  print(text: string, stream: 'stdout' | 'stderr' = 'stdout'): void {
    for (const l of this.#listeners) l({ time: Date.now(), stream, text });
  }

  async start(): Promise<void> {
    if (this.#script.failStart) throw new Error(this.#script.failStart);
    this.#state = 'starting';
    for (const line of this.#script.print ?? []) this.print(line);
    if (this.#script.exitCode !== undefined) {
      this.#finish({ code: this.#script.exitCode, signal: null });
      this.#endpoint = { kind: 'tcp', host: '127.0.0.1', port: 9 };
      return;
    }
    const handler = this.#script.handler ?? ((_req: IncomingMessage, res: ServerResponse) => res.end(`ok ${this.id}`));
    const server = createServer(handler);
    this.#server = server;
    this.#listening = new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve())).then(() => {
      this.#endpoint = { kind: 'tcp', host: '127.0.0.1', port: (server.address() as AddressInfo).port };
      this.#state = 'running';
    });
    await this.#listening;
  }

  async waitReady(_timeoutMs: number, signal?: AbortSignal): Promise<void> {
    this.#throwIfExited();
    const aborted = new Promise<never>((_, reject) => {
      if (signal?.aborted) reject(signal.reason);
      signal?.addEventListener('abort', () => reject(signal.reason), { once: true });
    });
    aborted.catch(() => undefined);
    await Promise.race([Promise.all([this.#listening, this.#script.readyGate]), aborted]);
    this.#throwIfExited();
  }

  #throwIfExited(): void {
    if (this.#exit) throw new Error(`exited before listening (code ${this.#exit.code})`);
  }

  async stop(): Promise<void> {
    this.stopCalls++;
    this.#finish({ code: null, signal: 'SIGTERM' });
    await this.exited;
    await this.#script.stopGate;
  }

  crash(info: Partial<ExitInfo> = {}): void {
    this.#finish({ code: 1, signal: null, ...info });
  }

  inspect(): { state: InstanceState; pid: number | undefined; exit: ExitInfo | undefined } {
    return { state: this.#state, pid: undefined, exit: this.#exit };
  }

  #finish(info: ExitInfo): void {
    if (this.#exit) return;
    this.#exit = info;
    this.#state = 'exited';
    const s = this.#server;
    if (s) {
      s.closeAllConnections();
      s.close();
    }
    this.#resolveExit(info);
  }
}
