import type { Endpoint, ExitInfo, InstanceState, LogLine, Runtime as WorkloadRuntime, RuntimeInstance as WorkloadInstance } from '../types.ts';

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
}

export type { Endpoint, ExitInfo, InstanceState, LogLine };

export interface RuntimeInstance extends Omit<WorkloadInstance, 'spec'> {
  readonly spec: InstanceSpec;
}

export interface Runtime extends Omit<WorkloadRuntime, 'create' | 'snapshots'> {
  create(spec: InstanceSpec): Promise<RuntimeInstance>;
}
