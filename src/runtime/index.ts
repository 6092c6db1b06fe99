export * from './types.ts';
export { preambleConnector, PREAMBLE_OK } from './endpoint.ts';
export { createProcessRuntime, type ProcessRuntimeOptions } from './process.ts';
export { createFakeRuntime, type FakeBehavior, type FakeRuntime, type FakeRuntimeOptions } from './fake.ts';
export { runtimeContract, requestEndpoint, contractFakeBehavior, CRASH_LINE, type RuntimeHarness, type EndpointResponse } from './contract.ts';
export { probeHost, type HostReport } from './host.ts';
