export { ensureInitramfs, MODULES, type Initramfs, type InitramfsOptions } from './initramfs.ts';
export { findGuestKernel, type GuestKernel } from './kernel.ts';
export { makeExt4, type Ext4Options } from './ext4.ts';
export { imageCacheDir } from './cache.ts';
export { writeCpio, type CpioEntry } from './cpio.ts';
export { applyLayer, applyImage, readImageLayout, resolveInRoot, runtimeFromConfig, unpackArchive, type RuntimeJson, type ApplyStats, type ImageLayout } from './oci.ts';
export { buildImage, ensureBaseImage, platformNodeBinary, BASE_KINDS, RUNTIME_JSON, type BaseKind, type BuildImageOptions, type BaseImageOptions, type Progress } from './rootfs.ts';
export { ensureGuestInit, GUEST_BUILD_DIR, type GuestInit } from '../guest/index.ts';
