// The conformance suite against the in-memory store.
import { MemoryStore } from '../../src/backends/memory-store.js';
import { objectStoreConformance } from './conformance.js';

objectStoreConformance({
  name: 'memory',
  open: async () => {
    const store = new MemoryStore();
    return { store, close: () => store.close() };
  },
});
