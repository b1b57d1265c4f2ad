// An LRU cache of fixed-size blocks of stored objects, bounded in bytes, filled by ranged
// GETs (store.getInto straight into the block) with parallel fetches and read-ahead.
//
// Blocks are keyed by (object key, ETag, block index): a new version of an object has a
// new ETag, so stale blocks are never served, only left to age out. A fetch whose reply
// carries another ETag than expected, or that comes back short, means the object changed
// since the caller learnt its version: it fails with ESTALE (the caller looks the object
// up again) and caches nothing.
//
// Demand fetches go before read-ahead in one bounded queue; a block is fetched at most
// once at a time (concurrent readers share the fetch).
import { LRUCache } from 'lru-cache';
import PQueue from 'p-queue';
import { ErrnoError } from '../../util/errors.js';
import type { ObjectStore } from '../object-store.js';

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
}

export interface PageCacheStats {
  hits: number;
  misses: number;
  fetches: number;
  prefetches: number;
  stale: number;
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
  readonly stats: PageCacheStats = { hits: 0, misses: 0, fetches: 0, prefetches: 0, stale: 0 };
  private readonly store: ObjectStore;
  private readonly blocks: LRUCache<string, Uint8Array>;
  private readonly inflight = new Map<string, Promise<Uint8Array>>();
  private readonly queue: PQueue;

  constructor(opts: PageCacheOptions) {
    if (!Number.isSafeInteger(opts.blockSize) || opts.blockSize <= 0) throw new RangeError('page cache block size must be a positive integer');
    this.store = opts.store;
    this.blockSize = opts.blockSize;
    this.blocks = new LRUCache<string, Uint8Array>({
      maxSize: Math.max(1, opts.maxBytes),
      sizeCalculation: (b) => Math.max(1, b.byteLength),
    });
    this.queue = new PQueue({ concurrency: Math.max(1, opts.fetchConcurrency) });
  }

  get cachedBytes(): number {
    return this.blocks.calculatedSize;
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

  /** A cached block's bytes without fetching (null when not cached). */
  peek(v: ObjectVersion, index: number): Uint8Array | null {
    return this.blocks.get(this.cacheKey(v, index)) ?? null;
  }

  /** Starts fetching the blocks of [offset, offset+length) that are neither cached nor being fetched. */
  prefetch(v: ObjectVersion, offset: number, length: number): void {
    const end = Math.min(v.size, offset + length);
    if (end <= offset) return;
    for (let b = Math.floor(offset / this.blockSize); b <= Math.floor((end - 1) / this.blockSize); b++) {
      const k = this.cacheKey(v, b);
      if (this.blocks.has(k) || this.inflight.has(k)) continue;
      this.stats.prefetches++;
      this.block(v, b, READ_AHEAD).catch(() => undefined);
    }
  }

  /** Forgets every block of `key` (all versions). */
  forget(key: string): void {
    const p = key + '\0';
    for (const k of [...this.blocks.keys()]) if (k.startsWith(p)) this.blocks.delete(k);
  }

  clear(): void {
    this.blocks.clear();
  }

  private cacheKey(v: ObjectVersion, index: number): string {
    return `${v.key}\0${v.etag}\0${v.size}\0${index}`;
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
        const buf = new Uint8Array(Math.min(this.blockSize, v.size - start));
        this.stats.fetches++;
        const r = await this.store.getInto(v.key, start, buf);
        if (r.etag !== v.etag || r.bytesRead !== buf.length) {
          this.stats.stale++;
          throw new StaleVersionError(v.key);
        }
        this.blocks.set(k, buf);
        return buf;
      }, { priority })
      .finally(() => this.inflight.delete(k));
    this.inflight.set(k, p);
    return p;
  }
}
