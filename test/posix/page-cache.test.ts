// The page cache on its own: blocks by ETag, ESTALE for a changed object, forget() of our
// own writes (also racing a fetch in flight), the byte bound, shared fetches.
import { expect } from 'chai';
import { MemoryStore } from '../../src/backends/memory-store.js';
import { PageCache, StaleVersionError } from '../../src/backends/posix/page-cache.js';
import { patternBytes } from '../support/tmp.js';
import { CountingStore, equalBytes } from './helpers.js';

const KiB = 1024;

describe('posix page cache', () => {
  async function setup(bytes = 64 * KiB): Promise<{ store: CountingStore; cache: PageCache; etag: string; body: Uint8Array }> {
    const store = new CountingStore(new MemoryStore());
    const body = patternBytes(1, 40 * KiB + 5);
    const { etag } = await store.put('obj', body);
    return { store, cache: new PageCache({ store, blockSize: 4 * KiB, maxBytes: bytes, fetchConcurrency: 4 }), etag, body };
  }

  it('reads any range through blocks, fetching each block once', async () => {
    const { store, cache, etag, body } = await setup();
    const v = { key: 'obj', etag, size: body.length };
    for (const [off, len] of [[0, 1], [4095, 2], [100, 20_000], [40 * KiB, 100], [0, body.length], [body.length, 10]] as const) {
      const out = new Uint8Array(len);
      const n = await cache.read(v, off, out);
      expect(n).to.equal(Math.max(0, Math.min(len, body.length - off)));
      expect(equalBytes(out.subarray(0, n), body.subarray(off, off + n))).to.equal(true);
    }
    expect(store.count('getInto')).to.equal(11);
    expect(cache.cachedBytes).to.equal(body.length);
  });

  it('cachedView: a view of the block for a range inside one, a copy across blocks, null (nothing fetched) when a block is missing', async () => {
    const { store, cache, etag, body } = await setup();
    const v = { key: 'obj', etag, size: body.length };
    expect(cache.cachedView(v, 100, 10)).to.equal(null);
    await cache.read(v, 0, new Uint8Array(12 * KiB)); // blocks 0-2
    const fetched = store.count('getInto');
    const hits = cache.stats.hits;
    const inside = cache.cachedView(v, 5000, 100)!;
    expect(inside.buffer).to.equal(cache.peek(v, 1)!.buffer); // no copy
    expect(equalBytes(inside, body.subarray(5000, 5100))).to.equal(true);
    const across = cache.cachedView(v, 1000, 10_001)!;
    expect(equalBytes(across, body.subarray(1000, 11_001))).to.equal(true);
    expect(cache.stats.hits).to.equal(hits + 4);
    // Block 3 is not cached: null, nothing fetched, nothing counted.
    expect(cache.cachedView(v, 11 * KiB, 2 * KiB)).to.equal(null);
    expect(store.count('getInto')).to.equal(fetched);
    expect(cache.stats.hits).to.equal(hits + 4);
    // The object's last block is short: clipped at the end of the object.
    await cache.read(v, 40 * KiB, new Uint8Array(5));
    expect(equalBytes(cache.cachedView(v, 40 * KiB + 1, 100)!, body.subarray(40 * KiB + 1))).to.equal(true);
    // Another version of the object: nothing cached.
    expect(cache.cachedView({ ...v, etag: '"other"' }, 0, 10)).to.equal(null);
  });

  it('stays within its byte bound', async () => {
    const { cache, etag, body } = await setup(10 * KiB);
    await cache.read({ key: 'obj', etag, size: body.length }, 0, new Uint8Array(body.length));
    expect(cache.cachedBytes).to.be.at.most(10 * KiB);
  });

  it('resize (configuration reload): shrinking evicts the least recently used blocks down to the new bound, growing lets it fill', async () => {
    const { store, cache, etag, body } = await setup(64 * KiB);
    const v = { key: 'obj', etag, size: body.length };
    await cache.read(v, 0, new Uint8Array(body.length));
    expect(cache.cachedBytes).to.equal(body.length);
    await cache.read(v, 0, new Uint8Array(4 * KiB)); // block 0 is now the most recently used
    cache.resize(12 * KiB);
    expect(cache.maxBytes).to.equal(12 * KiB);
    expect(cache.cachedBytes).to.be.at.most(12 * KiB);
    expect(cache.stats.evictions).to.be.at.least(8);
    const fetched = store.count('getInto');
    await cache.read(v, 0, new Uint8Array(4 * KiB));
    expect(store.count('getInto'), 'the most recent block survived').to.equal(fetched);
    // forget() still finds the blocks that survived (the index follows the evictions).
    cache.forget('obj');
    expect(cache.cachedBytes).to.equal(0);
    cache.resize(64 * KiB);
    await cache.read(v, 0, new Uint8Array(body.length));
    expect(cache.cachedBytes).to.equal(body.length);
  });

  it('fails with ESTALE when the object is not the version asked for, caching nothing', async () => {
    const { store, cache, etag, body } = await setup();
    await store.put('obj', patternBytes(2, body.length));
    let err: unknown;
    try {
      await cache.read({ key: 'obj', etag, size: body.length }, 0, new Uint8Array(10));
    } catch (e) {
      err = e;
    }
    expect(err).to.be.instanceOf(StaleVersionError);
    expect(cache.cachedBytes).to.equal(0);
  });

  it('forget() drops every block of a key, and a fetch in flight when it was called caches nothing', async () => {
    const { store, cache, etag, body } = await setup();
    const v = { key: 'obj', etag, size: body.length };
    await cache.read(v, 0, new Uint8Array(8 * KiB));
    expect(cache.peek(v, 0)).to.not.equal(null);
    cache.forget('obj');
    expect(cache.peek(v, 0)).to.equal(null);
    expect(cache.cachedBytes).to.equal(0);
    const pending = cache.read(v, 12 * KiB, new Uint8Array(100));
    cache.forget('obj');
    await pending;
    expect(cache.peek(v, 3)).to.equal(null);
    store.reset();
    await cache.read(v, 12 * KiB, new Uint8Array(100));
    expect(store.count('getInto')).to.equal(1);
    expect(cache.peek(v, 3)).to.not.equal(null);
  });

  it('concurrent readers and read-ahead share fetches; read-ahead fetches a run of blocks with one GET', async () => {
    const { store, cache, etag, body } = await setup();
    const v = { key: 'obj', etag, size: body.length };
    cache.prefetch(v, 0, body.length);
    await Promise.all(Array.from({ length: 5 }, () => cache.read(v, 0, new Uint8Array(body.length))));
    expect(store.count('getInto')).to.equal(1);
    expect(cache.cachedBytes).to.equal(body.length);
    for (let b = 0; b * 4 * KiB < body.length; b++) {
      const block = cache.peek(v, b)!;
      expect(equalBytes(block, body.subarray(b * 4 * KiB, (b + 1) * 4 * KiB))).to.equal(true);
    }
  });

  it('read-ahead runs stop at runBytes, at cached blocks and at the end of the object', async () => {
    const store = new CountingStore(new MemoryStore());
    const body = patternBytes(3, 40 * KiB + 5);
    const { etag } = await store.put('obj', body);
    const cache = new PageCache({ store, blockSize: 4 * KiB, maxBytes: 1 << 20, fetchConcurrency: 4, runBytes: 12 * KiB });
    const v = { key: 'obj', etag, size: body.length };
    await cache.read(v, 16 * KiB, new Uint8Array(10)); // block 4 cached
    store.reset();
    cache.prefetch(v, 0, 100 * KiB); // blocks 0-2, 3, 5-7, 8-10
    await cache.read(v, 0, new Uint8Array(body.length));
    expect(store.count('getInto')).to.equal(4);
    const out = new Uint8Array(body.length);
    await cache.read(v, 0, out);
    expect(equalBytes(out, body)).to.equal(true);
    expect(store.count('getInto')).to.equal(4);
  });

  it('view() is the cached block itself for a range inside one block, a copy across blocks', async () => {
    const { store, cache, etag, body } = await setup();
    const v = { key: 'obj', etag, size: body.length };
    const a = await cache.view(v, 4 * KiB + 10, 100);
    expect(equalBytes(a, body.subarray(4 * KiB + 10, 4 * KiB + 110))).to.equal(true);
    expect(a.buffer).to.equal(cache.peek(v, 1)!.buffer);
    const b = await cache.view(v, 4 * KiB - 10, 100);
    expect(equalBytes(b, body.subarray(4 * KiB - 10, 4 * KiB + 90))).to.equal(true);
    expect(b.buffer).to.not.equal(cache.peek(v, 1)!.buffer);
    expect((await cache.view(v, body.length - 3, 100)).length).to.equal(3);
    expect((await cache.view(v, body.length, 100)).length).to.equal(0);
    expect(store.count('getInto')).to.equal(3);
  });

  it('a read-ahead run of a changed object fails with ESTALE for its readers and caches nothing; forget() during a run caches nothing', async () => {
    const { store, cache, etag, body } = await setup();
    const v = { key: 'obj', etag, size: body.length };
    await store.put('obj', patternBytes(2, body.length));
    cache.prefetch(v, 0, body.length);
    let err: unknown;
    await cache.read(v, 0, new Uint8Array(10)).catch((e: unknown) => (err = e));
    expect(err).to.be.instanceOf(StaleVersionError);
    expect(cache.cachedBytes).to.equal(0);
    const fresh = { key: 'obj', etag: (await store.head('obj'))!.etag, size: body.length };
    cache.prefetch(fresh, 0, body.length);
    cache.forget('obj');
    await cache.read(fresh, 0, new Uint8Array(10));
    expect(cache.peek(fresh, 5)).to.equal(null);
  });
  it('with a store that reads on worker threads: starts them at once, and blocks live in shared memory the store fills in place', async () => {
    const inner = new MemoryStore();
    const body = patternBytes(3, 20 * KiB);
    const { etag } = await inner.put('obj', body);
    let started = 0;
    const targets: Uint8Array[] = [];
    const store = Object.assign(Object.create(inner) as MemoryStore, {
      sharedReadBuffers: true,
      startReadWorkers: async () => void started++,
      getInto: (key: string, offset: number, target: Uint8Array) => (targets.push(target), inner.getInto(key, offset, target)),
    });
    const cache = new PageCache({ store, blockSize: 4 * KiB, maxBytes: 64 * KiB, fetchConcurrency: 4 });
    expect(started).to.equal(1);
    const v = { key: 'obj', etag, size: body.length };
    cache.prefetch(v, 4 * KiB, 12 * KiB);
    const view = await cache.view(v, 0, 100);
    const out = new Uint8Array(10 * KiB);
    await cache.read(v, 5 * KiB, out);
    expect(equalBytes(view, body.subarray(0, 100))).to.equal(true);
    expect(equalBytes(out, body.subarray(5 * KiB, 15 * KiB))).to.equal(true);
    expect(targets.length).to.equal(2); // a demand block and one run
    expect(targets.every((t) => t.buffer instanceof SharedArrayBuffer)).to.equal(true);
    // An ordinary store gets ordinary buffers and nothing is started.
    const { store: plain, cache: c2, etag: e2, body: b2 } = await setup();
    await c2.read({ key: 'obj', etag: e2, size: b2.length }, 0, new Uint8Array(10));
    expect(plain.count('getInto')).to.equal(1);
    expect(c2.peek({ key: 'obj', etag: e2, size: b2.length }, 0)!.buffer instanceof SharedArrayBuffer).to.equal(false);
  });
});
