export { createQemuRuntime, type QemuRuntimeOptions } from './qemu.ts';
