// The write-back chunk cache over an in-memory store, with a wrapper that delays and
// counts store calls so that ordering, coalescing and memory bounds can be observed.
import { expect } from 'chai';
import { ChunkCache, type ChunkCacheOptions } from '../../src/backends/chunk-cache.js';
import { MemoryStore } from '../../src/backends/memory-store.js';
import type { ObjectStore, PutBody, PutOptions, PutResult, ReadIntoResult } from '../../src/backends/object-store.js';
import { ErrnoError } from '../../src/util/errors.js';
import { silentLogger } from '../../src/util/log.js';

const CS = 64 * 1024;
const key = (i: number): string => `c/${i}`;

/** Delays puts and reads their body only when the delay is over (as a streaming upload would). */
class InstrumentedStore {
  puts = 0;
  deletes = 0;
  gets = 0;
  maxPutsInFlightPerKey = 0;
  failPuts = 0;
  private inFlight = new Map<string, number>();
  constructor(readonly inner: MemoryStore, public putDelayMs = 0) {}
  wrap(): ObjectStore {
    return new Proxy(this.inner, {
      get: (target, prop, receiver) => {
        if (prop === 'put') return (k: string, body: PutBody, o?: PutOptions) => this.put(k, body, o);
        if (prop === 'delete') return (k: string) => { this.deletes++; return this.inner.delete(k); };
        if (prop === 'getInto') return (k: string, off: number, t: Uint8Array): Promise<ReadIntoResult> => { this.gets++; return this.inner.getInto(k, off, t); };
        return Reflect.get(target, prop, receiver) as unknown;
      },
    }) as ObjectStore;
  }
  private async put(k: string, body: PutBody, o?: PutOptions): Promise<PutResult> {
    const n = (this.inFlight.get(k) ?? 0) + 1;
    this.inFlight.set(k, n);
    this.maxPutsInFlightPerKey = Math.max(this.maxPutsInFlightPerKey, n);
    try {
      await new Promise((r) => setTimeout(r, this.putDelayMs));
      if (this.failPuts > 0) {
        this.failPuts--;
        throw new ErrnoError('EIO', 'injected failure');
      }
      this.puts++;
      return await this.inner.put(k, body, o);
    } finally {
      this.inFlight.set(k, this.inFlight.get(k)! - 1);
    }
  }
}

function makeCache(store: ObjectStore, over: Partial<ChunkCacheOptions> = {}): ChunkCache {
  return new ChunkCache({
    store, keyOf: key, chunkSize: CS, cacheBytes: 8 * CS, maxDirtyBytes: 8 * CS, uploadConcurrency: 4,
    fetchConcurrency: 4, fetchPartSize: 16 * 1024, writebackDelayMs: 0, log: silentLogger, ...over,
  });
}

function fill(seed: number, n: number): Uint8Array {
  return Uint8Array.from({ length: n }, (_, i) => (i * 31 + seed * 7 + 1) & 0xff || 1);
}

async function readAll(c: ChunkCache, index: number, offset = 0, length = CS): Promise<Uint8Array> {
  const out = new Uint8Array(length);
  await c.read(index, offset, length, (data, o) => (data ? out.set(data.subarray(o, o + length)) : out.fill(0)));
  return out;
}

async function write(c: ChunkCache, index: number, offset: number, bytes: Uint8Array): Promise<void> {
  await c.write(index, offset, bytes.length, (buf, o) => buf.set(bytes, o));
}

describe('chunk cache', () => {
  it('reads missing chunks as zeros and stores nothing for them', async () => {
    const inner = new MemoryStore();
    const c = makeCache(inner);
    expect((await readAll(c, 3)).every((b) => b === 0)).to.equal(true);
    await c.flush();
    expect(inner.size).to.equal(0);
  });

  it('serves written sectors without fetching and fetches once to merge the rest', async () => {
    const inner = new MemoryStore();
    const old = fill(1, CS);
    await inner.put(key(0), old);
    const s = new InstrumentedStore(inner);
    const c = makeCache(s.wrap());
    const part = fill(2, 4096);
    await write(c, 0, 8192, part);
    expect(s.gets).to.equal(0);
    expect(Buffer.from(await readAll(c, 0, 8192, 4096)).equals(Buffer.from(part))).to.equal(true);
    expect(s.gets).to.equal(0);
    const whole = await readAll(c, 0);
    const expected = old.slice();
    expected.set(part, 8192);
    expect(Buffer.from(whole).equals(Buffer.from(expected))).to.equal(true);
    const fetchesAfterMerge = c.stats.fetches;
    expect(fetchesAfterMerge).to.equal(1);
    await c.flush();
    expect(Buffer.from((await inner.get(key(0))).body).equals(Buffer.from(expected))).to.equal(true);
    expect(c.stats.fetches).to.equal(1);
  });

  it('merges the stored chunk under a partial write when uploading it', async () => {
    const inner = new MemoryStore();
    const old = fill(3, CS);
    await inner.put(key(1), old);
    const c = makeCache(inner);
    const part = fill(4, 512);
    await write(c, 1, CS - 512, part);
    await c.flush();
    const expected = old.slice();
    expected.set(part, CS - 512);
    expect(Buffer.from((await inner.get(key(1))).body).equals(Buffer.from(expected))).to.equal(true);
  });

  it('resize (configuration reload): clean chunks are evicted down to the new bound, dirty ones stay', async () => {
    const inner = new MemoryStore();
    const c = makeCache(inner);
    for (let i = 0; i < 6; i++) await write(c, i, 0, fill(i, CS));
    await c.flush();
    const before = c.cachedBytes;
    expect(before).to.be.above(2 * CS);
    await write(c, 7, 0, fill(7, CS)); // dirty: not in the clean LRU
    c.resize(2 * CS);
    expect(c.cacheBytes).to.equal(2 * CS);
    expect(c.cachedBytes).to.equal(2 * CS);
    expect(c.stats.evictions).to.be.at.least(Math.floor((before - 2 * CS) / CS));
    expect(c.dirtyChunkBytes).to.equal(CS);
    await c.flush();
    for (let i = 0; i < 8; i++) if (i !== 6) expect(Buffer.from(await readAll(c, i)).equals(Buffer.from(fill(i, CS))), `chunk ${i}`).to.equal(true);
    expect(c.cachedBytes).to.be.at.most(2 * CS);
    c.resize(8 * CS);
    for (let i = 0; i < 8; i++) await readAll(c, i);
    expect(c.cachedBytes).to.be.above(2 * CS);
    await c.close();
  });

  it('does not fetch for a whole-chunk write', async () => {
    const inner = new MemoryStore();
    await inner.put(key(0), fill(5, CS));
    const c = makeCache(inner);
    await write(c, 0, 0, fill(6, CS));
    await c.flush();
    expect(c.stats.fetches).to.equal(0);
    expect(Buffer.from((await inner.get(key(0))).body).equals(Buffer.from(fill(6, CS)))).to.equal(true);
  });

  it('never runs two uploads of one chunk at once and stores the last write (copy-on-write)', async () => {
    const inner = new MemoryStore();
    const s = new InstrumentedStore(inner, 20);
    const c = makeCache(s.wrap());
    await write(c, 0, 0, fill(7, CS)); // reaches the chunk end: upload starts
    await write(c, 0, 0, fill(8, CS)); // while the first upload is in flight
    await write(c, 0, 4096, fill(9, 4096));
    await c.flush();
    expect(s.maxPutsInFlightPerKey).to.equal(1);
    const expected = fill(8, CS);
    expected.set(fill(9, 4096), 4096);
    expect(Buffer.from((await inner.get(key(0))).body).equals(Buffer.from(expected))).to.equal(true);
  });

  it('deletes a chunk that became all zeros instead of storing it', async () => {
    const inner = new MemoryStore();
    await inner.put(key(2), fill(10, CS));
    const s = new InstrumentedStore(inner);
    const c = makeCache(s.wrap());
    await write(c, 2, 0, new Uint8Array(CS));
    await c.flush();
    expect(await inner.head(key(2))).to.equal(null);
    expect(s.puts).to.equal(0);
    await readAll(c, 3); // known to have no object
    await c.zero(3, 0, CS);
    await c.flush();
    expect(s.deletes).to.equal(1);
  });

  it('zeroes partial ranges and drops whole chunks', async () => {
    const inner = new MemoryStore();
    await inner.put(key(0), fill(11, CS));
    await inner.put(key(1), fill(12, CS));
    const c = makeCache(inner);
    await c.zero(0, 1024, 2048);
    await c.zero(1, 0, CS);
    await c.flush();
    const expected = fill(11, CS);
    expected.fill(0, 1024, 3072);
    expect(Buffer.from((await inner.get(key(0))).body).equals(Buffer.from(expected))).to.equal(true);
    expect(await inner.head(key(1))).to.equal(null);
  });

  it('bounds dirty data: writers wait for uploads', async () => {
    const inner = new MemoryStore();
    const s = new InstrumentedStore(inner, 5);
    const c = makeCache(s.wrap(), { maxDirtyBytes: 2 * CS });
    let maxDirty = 0;
    const writes = Array.from({ length: 12 }, (_, i) => (async () => {
      await c.write(i, 0, 4096, (buf, o) => buf.set(fill(i, 4096), o));
      maxDirty = Math.max(maxDirty, c.dirtyChunkBytes);
    })());
    await Promise.all(writes);
    await c.flush();
    expect(maxDirty).to.be.at.most(2 * CS);
    expect(inner.size).to.equal(12);
    for (let i = 0; i < 12; i++) expect(Buffer.from((await inner.get(key(i))).body.subarray(0, 4096)).equals(Buffer.from(fill(i, 4096)))).to.equal(true);
  });

  it('bounds clean data by cacheBytes (LRU)', async () => {
    const inner = new MemoryStore();
    for (let i = 0; i < 10; i++) await inner.put(key(i), fill(i, CS));
    const c = makeCache(inner, { cacheBytes: 3 * CS });
    for (let i = 0; i < 10; i++) await readAll(c, i);
    expect(c.cachedBytes).to.be.at.most(3 * CS);
    expect(Buffer.from(await readAll(c, 9)).equals(Buffer.from(fill(9, CS)))).to.equal(true);
    expect(c.stats.fetches).to.equal(10);
  });

  it('keeps a chunk dirty when its upload fails and stores it at the next flush', async () => {
    const inner = new MemoryStore();
    const s = new InstrumentedStore(inner);
    const c = makeCache(s.wrap());
    s.failPuts = 1;
    await write(c, 0, 0, fill(13, 4096));
    let failed = false;
    await c.flush().catch(() => (failed = true));
    expect(failed).to.equal(true);
    expect(c.dirtyChunkBytes).to.equal(CS);
    await c.flush();
    expect(c.dirtyChunkBytes).to.equal(0);
    expect(Buffer.from((await inner.get(key(0))).body.subarray(0, 4096)).equals(Buffer.from(fill(13, 4096)))).to.equal(true);
  });

  it('writes back after the delay without a flush', async () => {
    const inner = new MemoryStore();
    const c = makeCache(inner, { writebackDelayMs: 30 });
    await write(c, 0, 0, fill(14, 4096));
    expect(inner.size).to.equal(0);
    await new Promise((r) => setTimeout(r, 120));
    expect(inner.size).to.equal(1);
    await c.close();
  });
});
