// An LRU cache of fixed-size blocks of stored objects, bounded in bytes, filled by ranged
// GETs (store.getInto straight into the block) with parallel fetches and read-ahead.
//
// Blocks are keyed by (object key, ETag, size, block index): a new version of an object
// has a new ETag, so stale blocks of versions written by others are never served, only
// left to age out. A fetch whose reply carries another ETag than expected, or that comes
// back short, means the object changed since the caller learnt its version: it fails with
// ESTALE (the caller looks the object up again) and caches nothing. Our own writes do not
// rely on ETags (s3rver, for one, keeps the old ETag when CopyObject with REPLACE
// overwrites a key): the writer calls `forget(key)`, which drops every block of the key.
//
// Demand fetches go before read-ahead in one bounded queue; a block is fetched at most
// once at a time (concurrent readers share the fetch). Read-ahead fetches runs of
// consecutive blocks with one ranged GET each (up to `runBytes`): per-request costs (of
// the client and of the server) are what limit a sequential reader, not bandwidth. The
// blocks of a run are views of one buffer, which lives until its last block is evicted.
// With a store that receives bodies on worker threads (S3Store's read workers) the buffers
// are SharedArrayBuffers, filled in place by the worker.
import { LRUCache } from 'lru-cache';
import PQueue from 'p-queue';
import { ErrnoError } from '../../util/errors.js';
import type { ObjectStore } from '../object-store.js';

/** What a store that reads on other threads offers (S3Store with read workers). */
interface ReadThreads {
  /** getInto fills a buffer in shared memory in place (others are copied into). */
  readonly sharedReadBuffers?: boolean;
  startReadWorkers?(): Promise<void>;
}

/** Which stored object (and version) to read. */
export interface ObjectVersion {
  readonly key: string;
  readonly etag: string;
  readonly size: number;
}

export interface PageCacheOptions {
  readonly store: ObjectStore;
  /** Block size in bytes (e.g. 1 MiB). */
  readonly blockSize: number;
  /** Bytes of blocks kept. */
  readonly maxBytes: number;
  /** Ranged GETs in flight. */
  readonly fetchConcurrency: number;
  /** Largest read-ahead GET in bytes (rounded down to whole blocks, at least one). Default 8 MiB. */
  readonly runBytes?: number;
}

export interface PageCacheStats {
  hits: number;
  misses: number;
  fetches: number;
  prefetches: number;
  stale: number;
  /** Blocks dropped to make room. */
  evictions: number;
}

/** The object changed under a reader (its ETag or size is not what the caller knew). */
export class StaleVersionError extends ErrnoError {
  constructor(key: string) {
    super('ESTALE', `object ${key} changed while being read`);
  }
}

const DEMAND = 1;
const READ_AHEAD = 0;

export class PageCache {
  readonly blockSize: number;
  /** Blocks per read-ahead GET at most. */
  readonly runBlocks: number;
  readonly stats: PageCacheStats = { hits: 0, misses: 0, fetches: 0, prefetches: 0, stale: 0, evictions: 0 };
  private readonly store: ObjectStore;
  private blocks: LRUCache<string, Uint8Array>;
  /** object key → its cached block keys (kept in step with the LRU by its dispose hook). */
  private readonly byObject = new Map<string, Set<string>>();
  private readonly inflight = new Map<string, Promise<Uint8Array>>();
  private readonly queue: PQueue;
  /** Blocks in shared memory: the store fills them on another thread (no copy on the event loop). */
  private readonly shared: boolean;

  constructor(opts: PageCacheOptions) {
    if (!Number.isSafeInteger(opts.blockSize) || opts.blockSize <= 0) throw new RangeError('page cache block size must be a positive integer');
    this.store = opts.store;
    this.blockSize = opts.blockSize;
    this.runBlocks = Math.max(1, Math.floor((opts.runBytes ?? 8 * 1024 * 1024) / opts.blockSize));
    this.blocks = this.makeLru(opts.maxBytes);
    this.queue = new PQueue({ concurrency: Math.max(1, opts.fetchConcurrency) });
    const s = opts.store as ObjectStore & ReadThreads;
    this.shared = s.sharedReadBuffers === true;
    // A store that receives GET bodies on worker threads (S3Store) starts them now, not at
    // the first cold read (until they are up, its reads run on the event loop).
    if (this.shared) s.startReadWorkers?.().catch(() => undefined);
  }

  private alloc(n: number): Uint8Array {
    return this.shared ? new Uint8Array(new SharedArrayBuffer(n)) : new Uint8Array(n);
  }

  get cachedBytes(): number {
    return this.blocks.calculatedSize;
  }

  /** Bytes of blocks kept at most. */
  get maxBytes(): number {
    return this.blocks.maxSize;
  }

  /**
   * Changes the bound (a configuration reload): shrinking evicts the least recently used
   * blocks down to it. lru-cache's bound is fixed when it is made, so the LRU is made again
   * with the blocks that fit, most recently used first.
   */
  resize(maxBytes: number): void {
    if (Math.max(1, maxBytes) === this.blocks.maxSize) return;
    const next = this.makeLru(maxBytes);
    // Oldest first: the new LRU evicts (and counts, and unindexes) what no longer fits.
    for (const [k, b] of this.blocks.rentries() as Iterable<[string, Uint8Array]>) next.set(k, b);
    this.blocks = next;
  }

  private makeLru(maxBytes: number): LRUCache<string, Uint8Array> {
    return new LRUCache<string, Uint8Array>({
      maxSize: Math.max(1, maxBytes),
      sizeCalculation: (b) => Math.max(1, b.byteLength),
      dispose: (_block, k, reason) => {
        if (reason === 'evict') this.stats.evictions++;
        const object = k.slice(0, k.indexOf('\0'));
        const set = this.byObject.get(object);
        if (!set) return;
        set.delete(k);
        if (set.size === 0) this.byObject.delete(object);
      },
    });
  }

  /** Reads [offset, offset + target.length) of `v` into `target` (clipped at v.size); returns the bytes read. */
  async read(v: ObjectVersion, offset: number, target: Uint8Array): Promise<number> {
    const end = Math.min(v.size, offset + target.length);
    if (end <= offset) return 0;
    const first = Math.floor(offset / this.blockSize);
    const last = Math.floor((end - 1) / this.blockSize);
    const parts: Promise<void>[] = [];
    for (let b = first; b <= last; b++) {
      const blockStart = b * this.blockSize;
      parts.push(
        this.block(v, b, DEMAND).then((data) => {
          const from = Math.max(offset, blockStart);
          const to = Math.min(end, blockStart + data.length);
          if (to > from) target.set(data.subarray(from - blockStart, to - blockStart), from - offset);
        }),
      );
    }
    const results = await Promise.allSettled(parts);
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
    return end - offset;
  }

  /**
   * The bytes of [offset, offset + length) of `v` (clipped at v.size): a view of the cached
   * block when the range lies in one block (no copy; never to be written to), else a new
   * buffer.
   */
  async view(v: ObjectVersion, offset: number, length: number): Promise<Uint8Array> {
    const end = Math.min(v.size, offset + length);
    if (end <= offset) return new Uint8Array(0);
    const b = Math.floor(offset / this.blockSize);
    if (Math.floor((end - 1) / this.blockSize) === b) {
      const data = await this.block(v, b, DEMAND);
      const start = b * this.blockSize;
      return data.subarray(offset - start, end - start);
    }
    const out = new Uint8Array(end - offset);
    await this.read(v, offset, out);
    return out;
  }

  /**
   * The bytes of [offset, offset + length) of `v` (clipped at v.size) when every block of
   * it is cached: a view of the block for a range inside one (never to be written to), a
   * copy across blocks. Null, with nothing fetched or counted, when a block is missing.
   */
  cachedView(v: ObjectVersion, offset: number, length: number): Uint8Array | null {
    const end = Math.min(v.size, offset + length);
    if (end <= offset) return new Uint8Array(0);
    const first = Math.floor(offset / this.blockSize);
    const last = Math.floor((end - 1) / this.blockSize);
    for (let b = first; b <= last; b++) {
      const data = this.blocks.get(this.cacheKey(v, b));
      if (data === undefined || b * this.blockSize + data.length < Math.min(end, (b + 1) * this.blockSize)) return null;
    }
    this.stats.hits += last - first + 1;
    if (first === last) {
      const start = first * this.blockSize;
      return this.blocks.get(this.cacheKey(v, first))!.subarray(offset - start, end - start);
    }
    const out = new Uint8Array(end - offset);
    for (let b = first; b <= last; b++) {
      const start = b * this.blockSize;
      const data = this.blocks.get(this.cacheKey(v, b))!;
      const from = Math.max(offset, start);
      out.set(data.subarray(from - start, Math.min(end, start + data.length) - start), from - offset);
    }
    return out;
  }

  /** A cached block's bytes without fetching (null when not cached). */
  peek(v: ObjectVersion, index: number): Uint8Array | null {
    return this.blocks.get(this.cacheKey(v, index)) ?? null;
  }

  /** Every block of `v` in order when all are cached, else null. */
  cachedBlocks(v: ObjectVersion): Uint8Array[] | null {
    const out: Uint8Array[] = [];
    for (let i = 0; i * this.blockSize < v.size; i++) {
      const b = this.peek(v, i);
      if (b === null) return null;
      out.push(b);
    }
    return out;
  }

  /** Starts fetching the blocks of [offset, offset+length) that are neither cached nor being fetched. */
  prefetch(v: ObjectVersion, offset: number, length: number): void {
    const end = Math.min(v.size, offset + length);
    if (end <= offset) return;
    const last = Math.floor((end - 1) / this.blockSize);
    let runStart = -1;
    for (let b = Math.floor(offset / this.blockSize); b <= last + 1; b++) {
      const k = b <= last ? this.cacheKey(v, b) : '';
      const missing = b <= last && !this.blocks.has(k) && !this.inflight.has(k);
      if (missing && runStart < 0) runStart = b;
      if (runStart >= 0 && (!missing || b - runStart === this.runBlocks)) {
        this.fetchRun(v, runStart, b - runStart);
        runStart = missing ? b : -1;
      }
    }
  }

  /** Forgets every block of `key` (all versions), and makes fetches in flight for it cache nothing. */
  forget(key: string): void {
    const f = this.fetching.get(key);
    if (f) f.gen++;
    const set = this.byObject.get(key);
    if (!set) return;
    for (const k of [...set]) this.blocks.delete(k);
    this.byObject.delete(key);
  }

  clear(): void {
    this.blocks.clear();
    this.byObject.clear();
  }

  /** Objects with fetches in flight: how many, and a generation forget() bumps (a fetch that started before must not cache what it got). */
  private readonly fetching = new Map<string, { count: number; gen: number }>();

  private cacheKey(v: ObjectVersion, index: number): string {
    return `${v.key}\0${v.etag}\0${v.size}\0${index}`;
  }

  /** One read-ahead GET of blocks [first, first + count), none of them cached or in flight. */
  private fetchRun(v: ObjectVersion, first: number, count: number): void {
    this.stats.prefetches += count;
    const start = first * this.blockSize;
    const end = Math.min(v.size, (first + count) * this.blockSize);
    const run = this.queue.add(async () => {
      const buf = this.alloc(end - start);
      await this.fetchInto(v, start, buf, (i) => this.cacheKey(v, first + i), count);
      return buf;
    }, { priority: READ_AHEAD });
    for (let i = 0; i < count; i++) {
      const k = this.cacheKey(v, first + i);
      const p = run.then((buf) => buf.subarray(i * this.blockSize, Math.min(buf.length, (i + 1) * this.blockSize)));
      p.catch(() => undefined).finally(() => {
        if (this.inflight.get(k) === p) this.inflight.delete(k);
      });
      this.inflight.set(k, p);
    }
  }

  /**
   * GETs [start, start + buf.length) of `v` into `buf` and caches it as `count` blocks
   * (keys from `keyOf`) unless forget() ran meanwhile; ESTALE when the object is not `v`.
   */
  private async fetchInto(v: ObjectVersion, start: number, buf: Uint8Array, keyOf: (i: number) => string, count: number): Promise<void> {
    let f = this.fetching.get(v.key);
    if (!f) this.fetching.set(v.key, (f = { count: 0, gen: 0 }));
    f.count++;
    const gen = f.gen;
    try {
      this.stats.fetches++;
      const r = await this.store.getInto(v.key, start, buf);
      if (r.etag !== v.etag || r.bytesRead !== buf.length) {
        this.stats.stale++;
        throw new StaleVersionError(v.key);
      }
      if (f.gen !== gen) return;
      let set = this.byObject.get(v.key);
      if (!set) this.byObject.set(v.key, (set = new Set()));
      for (let i = 0; i < count; i++) {
        const k = keyOf(i);
        this.blocks.set(k, buf.subarray(i * this.blockSize, Math.min(buf.length, (i + 1) * this.blockSize)));
        set.add(k);
      }
    } finally {
      if (--f.count === 0) this.fetching.delete(v.key);
    }
  }

  private block(v: ObjectVersion, index: number, priority: number): Promise<Uint8Array> {
    const k = this.cacheKey(v, index);
    const hit = this.blocks.get(k);
    if (hit) {
      if (priority === DEMAND) this.stats.hits++;
      return Promise.resolve(hit);
    }
    const running = this.inflight.get(k);
    if (running) return running;
    if (priority === DEMAND) this.stats.misses++;
    const p = this.queue
      .add(async () => {
        const start = index * this.blockSize;
        const buf = this.alloc(Math.min(this.blockSize, v.size - start));
        await this.fetchInto(v, start, buf, () => k, 1);
        return buf;
      }, { priority })
      .finally(() => {
        if (this.inflight.get(k) === p) this.inflight.delete(k);
      });
    this.inflight.set(k, p);
    return p;
  }
}
