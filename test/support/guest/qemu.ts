// Moved to src/guest/qemu.ts (the demo boots the same guest); kept so that tests import it from here.
export * from '../../../src/guest/qemu.js';
