// The seam only: interface, types, contract suite and host probe. Drivers live in their own
// folders (process/, fake/, qemu/, firecracker/) and are imported only by src/bin/ and tests.
export * from './types.ts';
export { runtimeContract, requestEndpoint, contractFakeBehavior, contractSpec, CRASH_LINE, type RuntimeHarness, type EndpointResponse } from './contract.ts';
export { probeHost, probeSandboxes, type HostReport, type SandboxProbe } from './host.ts';
