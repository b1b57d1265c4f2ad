// A write-back cache of fixed-size chunks, each stored as one object. It is the storage
// half of object-backed disks: the image driver turns byte ranges into per-chunk calls.
//
// Promises kept here:
// - A chunk is fetched at most once at a time; partial writes do not wait for the fetch
//   unless they must: written sectors are tracked, and the stored object is fetched and
//   merged under them only when a read needs unwritten bytes or the chunk is uploaded
//   while not fully written (read-modify-write, once per chunk).
// - At most one upload of a chunk is in flight; writes during an upload go to a copy of
//   the buffer (copy-on-write), so the upload never sends torn data.
// - `flush()` resolves only when every chunk dirtied before the call is stored.
// - A chunk whose bytes are all zero is deleted rather than stored.
// - Memory is bounded: clean chunks by `cacheBytes` (LRU), dirty chunks by `maxDirtyBytes`
//   (writers wait), fetch buffers by `fetchConcurrency`, upload copies by `uploadConcurrency`.
// - Every upload and delete first passes the `beforeStore` fence (the image's lease): when
//   it throws, nothing is stored and the chunk stays dirty.
// - A failed upload leaves the chunk dirty (nothing acknowledged is dropped); the error is
//   reported to whoever waits for it (flush) and the upload is tried again later.
import { LRUCache } from 'lru-cache';
import PQueue from 'p-queue';
import type { ObjectStore } from './object-store.js';
import { errnoOf } from '../util/errors.js';
import type { Logger } from '../util/log.js';

export interface ChunkCacheOptions {
  readonly store: ObjectStore;
  readonly keyOf: (index: number) => string;
  readonly chunkSize: number;
  /** Bytes of clean chunks kept for reuse. */
  readonly cacheBytes: number;
  /** Bytes of dirty chunks allowed before writers wait for uploads. */
  readonly maxDirtyBytes: number;
  readonly uploadConcurrency: number;
  readonly fetchConcurrency: number;
  /** A chunk is fetched as parallel ranged GETs of this size. */
  readonly fetchPartSize: number;
  /** A dirty chunk is stored this long after its last write at the latest (0: only on flush or pressure). */
  readonly writebackDelayMs: number;
  readonly log: Logger;
  /** Called before every upload or delete; throwing stops it (a writer that lost its lease must store nothing). */
  readonly beforeStore?: () => Promise<void>;
}

/** Writes are tracked in sectors: the blk layer never writes less. */
const SECTOR = 512;

class Chunk {
  /** Chunk bytes; null with `loaded` = all zeros. */
  data: Uint8Array | null = null;
  /** data holds every byte (store content merged under writes). */
  loaded = false;
  /** Written sectors while not loaded (1 = written); null when none or when loaded. */
  written: Uint8Array | null = null;
  writtenCount = 0;
  loading: Promise<void> | null = null;
  uploading: Promise<void> | null = null;
  /** `data` is the buffer an upload is sending: copy before modifying it. */
  sharedWithUpload = false;
  dirtyGen = 0;
  storedGen = 0;
  /** Whether an object exists in the store for this chunk (null: unknown). */
  exists: boolean | null = null;
  lastWrite = 0;
  pins = 0;
  /** Counted in the cache's dirty bytes (from admission of its first write until stored). */
  accounted = false;
  constructor(readonly index: number) {}
  get dirty(): boolean {
    return this.dirtyGen !== this.storedGen;
  }
}

export interface ChunkCacheStats {
  fetches: number;
  uploads: number;
  deletes: number;
  hits: number;
  misses: number;
  /** Clean chunks dropped to make room. */
  evictions: number;
}

export class ChunkCache {
  readonly chunkSize: number;
  readonly stats: ChunkCacheStats = { fetches: 0, uploads: 0, deletes: 0, hits: 0, misses: 0, evictions: 0 };
  private readonly o: ChunkCacheOptions;
  /** Chunks that are pinned, loading, dirty or uploading: never evicted. */
  private readonly active = new Map<number, Chunk>();
  private clean: LRUCache<number, Chunk>;
  private readonly uploads: PQueue;
  private readonly fetches: PQueue;
  private readonly zeros: Buffer;
  private dirtyBytes = 0;
  private dirtyWaiters: (() => void)[] = [];
  private readonly timer: NodeJS.Timeout | null;
  private closed = false;

  constructor(opts: ChunkCacheOptions) {
    if (opts.chunkSize % SECTOR !== 0 || opts.chunkSize <= 0) throw new RangeError('chunk size must be a positive multiple of 512');
    this.o = opts;
    this.chunkSize = opts.chunkSize;
    this.zeros = Buffer.alloc(opts.chunkSize);
    this.clean = this.makeLru(opts.cacheBytes);
    this.uploads = new PQueue({ concurrency: Math.max(1, opts.uploadConcurrency) });
    this.fetches = new PQueue({ concurrency: Math.max(1, opts.fetchConcurrency) });
    this.timer = opts.writebackDelayMs > 0 ? setInterval(() => this.writebackExpired(), Math.max(10, opts.writebackDelayMs / 2)) : null;
    this.timer?.unref();
  }

  get dirtyChunkBytes(): number {
    return this.dirtyBytes;
  }
  get cachedBytes(): number {
    return this.clean.calculatedSize;
  }

  /** Bytes of clean chunks kept at most. */
  get cacheBytes(): number {
    return this.clean.maxSize;
  }

  /**
   * Changes the bound of clean chunks (a configuration reload); shrinking evicts the least
   * recently used down to it. Dirty, pinned and uploading chunks are not in that LRU and
   * stay. lru-cache's bound is fixed when it is made, so the LRU is made again with the
   * chunks that fit, most recently used first.
   */
  resize(cacheBytes: number): void {
    if (Math.max(cacheBytes, 1) === this.clean.maxSize) return;
    const next = this.makeLru(cacheBytes);
    for (const [i, c] of this.clean.rentries() as Iterable<[number, Chunk]>) next.set(i, c);
    this.clean = next;
  }

  private makeLru(cacheBytes: number): LRUCache<number, Chunk> {
    return new LRUCache<number, Chunk>({
      maxSize: Math.max(cacheBytes, 1),
      sizeCalculation: (c) => (c.data ? c.data.byteLength : 64),
      dispose: (_c, _index, reason) => {
        if (reason === 'evict') this.stats.evictions++;
      },
    });
  }

  /** Passes the chunk's bytes at [offset, offset+length) to `into` (null data = zeros). */
  async read(index: number, offset: number, length: number, into: (data: Uint8Array | null, offset: number) => void): Promise<void> {
    const c = this.pin(index);
    try {
      if (c.loaded || this.isWritten(c, offset, length)) this.stats.hits++;
      else {
        this.stats.misses++;
        await this.load(c);
      }
      into(c.data, offset);
    } finally {
      this.unpin(c);
    }
  }

  /** Starts fetching a chunk that is not cached (read-ahead); errors are left for the real read. */
  prefetch(index: number): void {
    if (this.active.has(index) || this.clean.has(index)) return;
    const c = this.pin(index);
    this.load(c).catch(() => undefined).finally(() => this.unpin(c));
  }

  /** Lets `from` fill [offset, offset+length) of the chunk's buffer, then marks it dirty. */
  async write(index: number, offset: number, length: number, from: (data: Uint8Array, offset: number) => void): Promise<void> {
    const c = this.pin(index);
    try {
      await this.admitDirty(c);
      const buf = this.writable(c);
      from(buf, offset);
      this.markWritten(c, offset, length);
      this.touched(c, offset + length === this.chunkSize);
    } finally {
      this.unpin(c);
    }
  }

  /** Zeroes [offset, offset+length); a whole chunk becomes "no object" without allocating. */
  async zero(index: number, offset: number, length: number): Promise<void> {
    const c = this.pin(index);
    try {
      await this.admitDirty(c);
      if (offset === 0 && length === this.chunkSize) {
        c.data = null;
        c.loaded = true;
        c.written = null;
        c.writtenCount = 0;
        c.sharedWithUpload = false;
      } else {
        this.writable(c).fill(0, offset, offset + length);
        this.markWritten(c, offset, length);
      }
      this.touched(c, true);
    } finally {
      this.unpin(c);
    }
  }

  /** Resolves when every chunk dirty now has been stored (rejects with the first failure). */
  async flush(): Promise<void> {
    const targets: [Chunk, number][] = [];
    for (const c of this.active.values()) if (c.dirty) targets.push([c, c.dirtyGen]);
    const results = await Promise.allSettled(targets.map(([c, gen]) => this.storeUpTo(c, gen)));
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
    // Stored is not yet durable for every store (the file store fsyncs here).
    await this.o.store.sync();
  }

  /** Writes through: resolves when this chunk's current content is stored. */
  async storeNow(index: number): Promise<void> {
    const c = this.active.get(index);
    if (c?.dirty) await this.storeUpTo(c, c.dirtyGen);
  }

  async close(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    await this.flush();
    this.closed = true;
    this.clean.clear();
  }

  // ---- state -------------------------------------------------------------------------

  private pin(index: number): Chunk {
    let c = this.active.get(index);
    if (!c) {
      c = this.clean.get(index) ?? new Chunk(index);
      this.clean.delete(index);
      this.active.set(index, c);
    }
    c.pins++;
    return c;
  }

  private unpin(c: Chunk): void {
    c.pins--;
    this.settle(c);
  }

  /** Puts an idle chunk back into the LRU (where it may be evicted). */
  private settle(c: Chunk): void {
    if (c.pins > 0 || c.loading || c.uploading || c.dirty) return;
    if (this.active.get(c.index) !== c) return;
    this.active.delete(c.index);
    if (!this.closed && (c.loaded || c.data === null)) this.clean.set(c.index, c);
  }

  private isWritten(c: Chunk, offset: number, length: number): boolean {
    const w = c.written;
    if (!w) return false;
    for (let s = offset / SECTOR, end = (offset + length) / SECTOR; s < end; s++) if (w[s] === 0) return false;
    return true;
  }

  /** The chunk's buffer, ready to be modified (allocated, not shared with an upload). */
  private writable(c: Chunk): Uint8Array {
    if (c.data === null) {
      c.data = new Uint8Array(this.chunkSize);
      c.sharedWithUpload = false;
    } else if (c.sharedWithUpload) {
      c.data = c.data.slice();
      c.sharedWithUpload = false;
    }
    return c.data;
  }

  private markWritten(c: Chunk, offset: number, length: number): void {
    if (c.loaded) return;
    const w = (c.written ??= new Uint8Array(this.chunkSize / SECTOR));
    for (let s = offset / SECTOR, end = (offset + length) / SECTOR; s < end; s++) {
      if (w[s] === 0) {
        w[s] = 1;
        c.writtenCount++;
      }
    }
    if (c.writtenCount === w.length) {
      // Every byte was written: the stored object no longer matters.
      c.loaded = true;
      c.written = null;
      c.writtenCount = 0;
    }
  }

  private touched(c: Chunk, chunkEnded: boolean): void {
    this.account(c);
    c.dirtyGen++;
    c.lastWrite = Date.now();
    // A sequential writer that reached the end of the chunk is done with it: store it now.
    if (chunkEnded || this.dirtyBytes * 2 >= this.o.maxDirtyBytes) this.startUpload(c);
  }

  /**
   * Waits while dirty data is at its limit, unless this chunk is counted already; then
   * counts it, so that writers admitted together cannot overshoot the limit.
   */
  private async admitDirty(c: Chunk): Promise<void> {
    while (!c.accounted && this.dirtyBytes + this.chunkSize > this.o.maxDirtyBytes) {
      for (const d of this.active.values()) if (d.dirty && !d.uploading) this.startUpload(d);
      await new Promise<void>((resolve) => this.dirtyWaiters.push(resolve));
    }
    this.account(c);
  }

  private account(c: Chunk): void {
    if (c.accounted) return;
    c.accounted = true;
    this.dirtyBytes += this.chunkSize;
  }

  private cleaned(c: Chunk): void {
    if (!c.accounted) return this.settle(c);
    c.accounted = false;
    this.dirtyBytes -= this.chunkSize;
    const waiters = this.dirtyWaiters;
    this.dirtyWaiters = [];
    for (const w of waiters) w();
    this.settle(c);
  }

  // ---- fetch -------------------------------------------------------------------------

  /** Makes `c.loaded` true: fetches the object and merges it under written sectors. */
  private load(c: Chunk): Promise<void> {
    if (c.loaded) return Promise.resolve();
    c.loading ??= this.fetches
      .add(() => this.fetch(c.index))
      .then((stored) => {
        c.exists = stored !== null;
        if (!c.loaded) this.merge(c, stored);
      })
      .finally(() => {
        c.loading = null;
        this.settle(c);
      });
    return c.loading;
  }

  private merge(c: Chunk, stored: Uint8Array | null): void {
    if (c.data === null) c.data = stored;
    else if (stored !== null) {
      const w = c.written!;
      for (let s = 0; s < w.length; s++) {
        if (w[s] !== 0) continue;
        let e = s + 1;
        while (e < w.length && w[e] === 0) e++;
        c.data.set(stored.subarray(s * SECTOR, e * SECTOR), s * SECTOR);
        s = e;
      }
    }
    c.loaded = true;
    c.written = null;
    c.writtenCount = 0;
  }

  /** The stored chunk (zero-padded to the chunk size), or null when there is no object. */
  private async fetch(index: number): Promise<Uint8Array | null> {
    this.stats.fetches++;
    const key = this.o.keyOf(index);
    const buf = new Uint8Array(this.chunkSize);
    const part = Math.min(this.o.fetchPartSize, this.chunkSize);
    // The first range tells whether the object exists; the rest go in parallel.
    try {
      const first = await this.o.store.getInto(key, 0, buf.subarray(0, part));
      if (first.size <= part) return buf;
    } catch (err) {
      if (errnoOf(err) === 2 /* ENOENT */) return null;
      throw err;
    }
    const rest: Promise<unknown>[] = [];
    for (let off = part; off < this.chunkSize; off += part) {
      rest.push(this.o.store.getInto(key, off, buf.subarray(off, Math.min(off + part, this.chunkSize))));
    }
    await Promise.all(rest);
    return buf;
  }

  // ---- upload ------------------------------------------------------------------------

  private async storeUpTo(c: Chunk, gen: number): Promise<void> {
    while (c.storedGen < gen) {
      if (!c.uploading) this.startUpload(c);
      await c.uploading;
    }
  }

  private startUpload(c: Chunk): void {
    if (c.uploading || !c.dirty) return;
    c.pins++;
    const p = this.uploads.add(() => this.upload(c));
    c.uploading = p.then(
      () => undefined,
      (err: unknown) => {
        this.o.log.warn('chunk upload failed; it stays dirty and is retried', { chunk: c.index, error: err });
        throw err;
      },
    ).finally(() => {
      c.uploading = null;
      c.pins--;
      if (!c.dirty) this.cleaned(c);
      else this.settle(c);
    });
    // Waiters see the failure; nobody waiting is not an unhandled rejection.
    c.uploading.catch(() => undefined);
  }

  private async upload(c: Chunk): Promise<void> {
    if (!c.loaded) await this.load(c);
    await this.o.beforeStore?.();
    const gen = c.dirtyGen;
    const buf = c.data;
    const key = this.o.keyOf(c.index);
    if (buf === null || this.zeros.equals(buf)) {
      if (c.exists !== false) {
        this.stats.deletes++;
        await this.o.store.delete(key);
      }
      c.exists = false;
      // Free the buffer if nothing wrote to it meanwhile.
      if (c.data === buf && c.dirtyGen === gen) c.data = null;
    } else {
      c.sharedWithUpload = true;
      try {
        this.stats.uploads++;
        await this.o.store.put(key, buf);
        c.exists = true;
      } finally {
        if (c.data === buf) c.sharedWithUpload = false;
      }
    }
    if (gen > c.storedGen) c.storedGen = gen;
  }

  private writebackExpired(): void {
    const due = Date.now() - this.o.writebackDelayMs;
    for (const c of this.active.values()) if (c.dirty && !c.uploading && c.lastWrite <= due) this.startUpload(c);
  }
}
