import type { ContainerPlan } from './container.ts';
import type { Endpoint, ExitInfo, InstanceSpec as WorkloadSpec, InstanceState, LogLine, Runtime as WorkloadRuntime, RuntimeInstance as WorkloadInstance } from '../types.ts';

/**
 * The flat, function-shaped spec process.ts was written against. ./index.ts maps a workload
 * InstanceSpec onto it, so process.ts stays a pure move (other branches edit its body).
 */
export interface InstanceSpec {
  instanceId: string;
  functionId: string;
  functionName: string;
  runtime: 'node' | 'python';
  /** Path of the entrypoint relative to codeDir. */
  entrypoint: string;
  codeDir: string;
  env: Record<string, string>;
  port: number;
  memoryMb: number;
  vcpu: number;
  pidsMax: number;
  /** An image or rootfs artifact: run as a container (container.ts); codeDir/entrypoint/runtime are then unused. */
  container?: ContainerPlan;
  /** TCP targets the program reaches at these addresses (a service's links; see links.ts). */
  links?: { host: string; port: number }[];
  /** The workload spec this was mapped from: kept in the adoption record. */
  workload?: WorkloadSpec;
}

export type { Endpoint, ExitInfo, InstanceState, LogLine };

export interface RuntimeInstance extends Omit<WorkloadInstance, 'spec'> {
  readonly spec: InstanceSpec;
}

export interface Runtime extends Omit<WorkloadRuntime, 'create' | 'snapshots' | 'adoption'> {
  create(spec: InstanceSpec): Promise<RuntimeInstance>;
  adoption: {
    list(): Promise<{ spec: InstanceSpec; endpoint: Endpoint; startedAt: number }[]>;
    adopt(instanceId: string): Promise<RuntimeInstance>;
  };
}
