import { AetherError } from '../../core/index.ts';
import type { Endpoint, ExitInfo, InstanceSpec, InstanceState, LogLine, Runtime, RuntimeInstance } from '../types.ts';
import type { InstanceSpec as ProcessSpec, RuntimeInstance as ProcessInstance } from './legacy.ts';
import { createProcessRuntime as createFlat, type ProcessRuntimeOptions } from './process.ts';

export type { ProcessRuntimeOptions };

/**
 * The process sandbox (namespaces + cgroups when root, a plain child process otherwise). It runs
 * code artifacts only: the program is the host's node or python on the entrypoint.
 */
export function createProcessRuntime(opts: ProcessRuntimeOptions): Runtime {
  const inner = createFlat(opts);
  return {
    kind: 'process',
    isolation: inner.isolation,
    async create(spec: InstanceSpec): Promise<RuntimeInstance> {
      return new Adapted(spec, await inner.create(toProcessSpec(spec)));
    },
    cleanupLeftovers: () => inner.cleanupLeftovers(),
    close: () => inner.close(),
  };
}

function toProcessSpec(spec: InstanceSpec): ProcessSpec {
  const a = spec.artifact;
  if (a.kind !== 'code') throw new AetherError('AETHER_ERR_VALIDATION', `the process sandbox runs code directories, not ${a.kind} artifacts`);
  if (spec.command) throw new AetherError('AETHER_ERR_VALIDATION', 'the process sandbox runs the entrypoint with its runtime; a command is not supported');
  return {
    instanceId: spec.instanceId,
    functionId: spec.owner.id,
    functionName: spec.owner.name,
    runtime: a.runtime,
    entrypoint: a.entrypoint,
    codeDir: a.dir,
    env: spec.env,
    port: spec.listen.port,
    memoryMb: spec.resources.memoryMb,
    vcpu: spec.resources.vcpu,
    pidsMax: spec.resources.pidsMax,
  };
}

class Adapted implements RuntimeInstance {
  readonly spec: InstanceSpec;
  readonly #i: ProcessInstance;
  constructor(spec: InstanceSpec, inner: ProcessInstance) {
    this.spec = spec;
    this.#i = inner;
  }
  get id(): string {
    return this.#i.id;
  }
  get endpoint(): Endpoint {
    return this.#i.endpoint;
  }
  get exited(): Promise<ExitInfo> {
    return this.#i.exited;
  }
  start(): Promise<void> {
    return this.#i.start();
  }
  waitReady(timeoutMs: number, signal?: AbortSignal): Promise<void> {
    return this.#i.waitReady(timeoutMs, signal);
  }
  stop(graceMs?: number): Promise<void> {
    return this.#i.stop(graceMs);
  }
  inspect(): { state: InstanceState; pid: number | undefined; exit: ExitInfo | undefined } {
    return this.#i.inspect();
  }
  onLog(listener: (line: LogLine) => void): void {
    this.#i.onLog(listener);
  }
}
