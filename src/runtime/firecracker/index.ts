// Firecracker driver (sandbox "firecracker"): imported only by src/bin/ and tests. The spec-checking
// fake VMM for tests is ./fake-vmm.ts (run as a process); the pinned API spec is ./spec/.
export { createFirecrackerRuntime, bootArgs, BASE_BOOT_ARGS, GUEST_CODE_DIR, type FirecrackerRuntime, type FirecrackerRuntimeOptions } from './driver.ts';
export { FirecrackerClient, faultMessage, type FirecrackerClientOptions } from './api.ts';
export type * from './api.ts';
export { netnsNetwork, socketNetwork, type VmNetwork, type VmLink, type Exposed } from './network.ts';
export { jailerArgv, type JailerOptions } from './jailer.ts';
export const FAKE_VMM = new URL('./fake-vmm.ts', import.meta.url).pathname;
