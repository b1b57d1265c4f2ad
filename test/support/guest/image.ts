// Moved to src/guest/image.ts (the demo boots the same guest); kept so that tests import it from here.
export * from '../../../src/guest/image.js';
