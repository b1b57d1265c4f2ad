// Moved to src/guest/exec.ts (the demo boots the same guest); kept so that tests import it from here.
export * from '../../../src/guest/exec.js';
