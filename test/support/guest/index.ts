// Guest-test harness: build the cached kernel + initramfs, boot it under QEMU
// with caller-supplied devices, run a script, collect results.
export * from './cpio.js';
export * from './exec.js';
export * from './image.js';
export * from './qemu.js';
export * from './blk-checks.js';
export * from './qsd.js';
export * from './fs-checks.js';
export * from './suite.js';
