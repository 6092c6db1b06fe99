import { AetherError } from '../../core/index.ts';
import { describeWorkload, type AdoptableInstance, type Endpoint, type ExitInfo, type InstanceSpec, type InstanceState, type LogLine, type Runtime, type RuntimeInstance } from '../types.ts';
import { containerPlan } from './container.ts';
import type { InstanceSpec as ProcessSpec, RuntimeInstance as ProcessInstance } from './legacy.ts';
import { startOrphanSweep } from './orphans.ts';
import { createProcessRuntime as createFlat, type ProcessRuntimeOptions } from './process.ts';

export type { ProcessRuntimeOptions };

/**
 * The process sandbox (namespaces + cgroups when root, a plain child process otherwise). Code
 * artifacts: the program is the host's node or python on the entrypoint. Image and rootfs
 * artifacts (services) run as containers, in the artifact's own root (container.ts); root only.
 */
export function createProcessRuntime(opts: ProcessRuntimeOptions): Runtime {
  const inner = createFlat(opts);
  // Sandboxes whose data dir was deleted (a killed test run) are nobody's to adopt: stop them now and every minute.
  const sweep = inner.isolation === 'none' ? undefined : startOrphanSweep({ ...(opts.clock ? { clock: opts.clock } : {}), ...(opts.logger ? { logger: opts.logger } : {}) });
  return {
    kind: 'process',
    isolation: inner.isolation,
    async create(spec: InstanceSpec): Promise<RuntimeInstance> {
      if (spec.artifact.kind !== 'code') {
        if (inner.isolation === 'none') throw new AetherError('AETHER_ERR_CONTAINER_UNAVAILABLE', `the process sandbox runs ${spec.artifact.kind} artifacts only with namespaces (as root); this agent runs without isolation`);
        const plan = await containerPlan(spec);
        return new Adapted(spec, await inner.create({ ...flat(spec), runtime: 'node', entrypoint: describeWorkload(spec), codeDir: plan.source, container: plan }));
      }
      return new Adapted(spec, await inner.create(toProcessSpec(spec)));
    },
    adoption: {
      async list(): Promise<AdoptableInstance[]> {
        const found = await inner.adoption.list();
        return found.flatMap((r) => (r.spec.workload ? [{ spec: r.spec.workload, endpoint: r.endpoint, startedAt: r.startedAt }] : []));
      },
      async adopt(instanceId: string): Promise<RuntimeInstance> {
        const i = await inner.adoption.adopt(instanceId);
        if (!i.spec.workload) throw new AetherError('AETHER_ERR_INTERNAL', `instance ${instanceId} has no workload spec`);
        return new Adapted(i.spec.workload, i);
      },
    },
    cleanupLeftovers: () => inner.cleanupLeftovers(),
    close: () => {
      sweep?.stop();
      return inner.close();
    },
  };
}

function toProcessSpec(spec: InstanceSpec): ProcessSpec {
  const a = spec.artifact;
  if (a.kind !== 'code') throw new AetherError('AETHER_ERR_INTERNAL', `toProcessSpec of a ${a.kind} artifact`);
  if (spec.command) throw new AetherError('AETHER_ERR_VALIDATION', 'the process sandbox runs the entrypoint with its runtime; a command is not supported');
  return { ...flat(spec), runtime: a.runtime, entrypoint: a.entrypoint, codeDir: a.dir };
}

function flat(spec: InstanceSpec): Omit<ProcessSpec, 'runtime' | 'entrypoint' | 'codeDir'> {
  return {
    instanceId: spec.instanceId,
    functionId: spec.owner.id,
    functionName: spec.owner.name,
    env: spec.env,
    port: spec.listen.port,
    memoryMb: spec.resources.memoryMb,
    vcpu: spec.resources.vcpu,
    pidsMax: spec.resources.pidsMax,
    ...(spec.links?.length ? { links: spec.links } : {}),
    workload: spec,
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
  onGone(listener: () => void): void {
    this.#i.onGone(listener);
  }
}
