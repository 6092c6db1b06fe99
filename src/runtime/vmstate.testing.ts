import type { InstanceSpec } from './types.ts';

/** The spec a sample VM record runs (tests of the VM drivers' records): a service booting an ext4 image. */
export function sampleSpec(instanceId: string): InstanceSpec {
  return {
    instanceId,
    owner: { kind: 'service', id: 'web', name: 'web' },
    artifact: { kind: 'image', path: '/img/web.ext4' },
    env: {},
    resources: { memoryMb: 128, vcpu: 1, pidsMax: 100 },
    listen: { port: 8080 },
    version: 'cfg-1',
  };
}
