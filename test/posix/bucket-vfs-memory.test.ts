// The BucketVfs behavioural suite over the in-memory store.
import { MemoryStore } from '../../src/backends/memory-store.js';
import { bucketVfsSuite } from './suite.js';

bucketVfsSuite({
  name: 'the memory store',
  open: async () => {
    const store = new MemoryStore({ minPartSize: 64 * 1024 });
    return { store, close: () => store.close() };
  },
});
