// An object-backed disk: the image format of image-format.ts served through a write-back
// chunk cache. Byte ranges from the device are split at chunk boundaries; each piece is
// copied between guest memory and the chunk's buffer.
import type { ObjectStore } from '../backends/object-store.js';
import { ChunkCache } from '../backends/chunk-cache.js';
import { copyFromSegments, copyToSegments, segmentsLength as lengthOf } from '../virtio/segments.js';
import type { Segment } from '../virtio/memory.js';
import { ErrnoError, errnoOf } from '../util/errors.js';
import type { Logger } from '../util/log.js';
import type { BlockImage, Completion } from './image.js';
import { ImageKeys, decodeManifest, type ImageManifest } from './image-format.js';
import { ImageLease } from './image-lease.js';
import { SECTOR_SIZE } from './protocol.js';

export interface ObjectImageOptions {
  readonly readOnly: boolean;
  /** Take over a stale lease. */
  readonly force: boolean;
  /** Bytes of clean chunks cached. */
  readonly cacheBytes: number;
  /** Bytes of dirty chunks before writers wait. */
  readonly maxDirtyBytes: number;
  /** Every write is stored before it completes. */
  readonly writethrough: boolean;
  readonly uploadConcurrency: number;
  readonly fetchConcurrency: number;
  /** Chunks fetched ahead of a sequential reader. */
  readonly readAheadChunks: number;
  readonly writebackDelayMs: number;
  readonly log: Logger;
  readonly leaseTtlMs?: number;
}

/** One piece of a request inside one chunk. */
interface Piece {
  readonly index: number;
  readonly offset: number; // within the chunk
  readonly length: number;
  readonly pos: number; // within the request
}

export class ObjectImage implements BlockImage {
  readonly logicalBlockSize = SECTOR_SIZE;
  readonly canDiscard = true;
  readonly canWriteZeroes = true;
  readonly size: number;
  readonly optimalIoSize: number;
  private lastReadEnd = -1;
  private closed = false;

  private constructor(
    readonly store: ObjectStore,
    readonly keys: ImageKeys,
    readonly manifest: ImageManifest,
    readonly readOnly: boolean,
    private readonly cache: ChunkCache,
    private readonly lease: ImageLease | null,
    private readonly opts: ObjectImageOptions,
  ) {
    this.size = manifest.size;
    this.optimalIoSize = manifest.chunkSize;
  }

  static async readManifest(store: ObjectStore, keys: ImageKeys): Promise<ImageManifest> {
    let body: Uint8Array;
    try {
      body = (await store.get(keys.manifest)).body;
    } catch (err) {
      if (errnoOf(err) === 2) throw new ErrnoError('ENOENT', `no image at ${store.description}/${keys.prefix} (no manifest.json)`);
      throw err;
    }
    return decodeManifest(body, `${store.description}/${keys.manifest}`);
  }

  static async open(store: ObjectStore, keys: ImageKeys, opts: ObjectImageOptions): Promise<ObjectImage> {
    const manifest = await ObjectImage.readManifest(store, keys);
    const lease = opts.readOnly
      ? null
      : await ImageLease.acquire(store, keys.lease, {
          force: opts.force, log: opts.log, ttlMs: opts.leaseTtlMs,
          onLost: () => opts.log.error('writes to this image now fail: its lease was taken over', { image: keys.prefix }),
        });
    const cache = new ChunkCache({
      store, keyOf: (i) => keys.chunk(i), chunkSize: manifest.chunkSize,
      cacheBytes: opts.cacheBytes, maxDirtyBytes: Math.max(opts.maxDirtyBytes, manifest.chunkSize),
      uploadConcurrency: opts.uploadConcurrency, fetchConcurrency: opts.fetchConcurrency,
      fetchPartSize: Math.min(manifest.chunkSize, 1 << 20), writebackDelayMs: opts.writebackDelayMs, log: opts.log,
      ...(lease ? { beforeStore: () => lease.check() } : {}),
    });
    return new ObjectImage(store, keys, manifest, opts.readOnly, cache, lease, opts);
  }

  get chunkCache(): ChunkCache {
    return this.cache;
  }

  read(offset: number, segs: readonly Segment[], done: Completion): void {
    const pieces = this.split(offset, lengthOf(segs));
    const sequential = offset === this.lastReadEnd;
    this.lastReadEnd = offset + lengthOf(segs);
    settle(done, Promise.all(pieces.map((p) =>
      this.cache.read(p.index, p.offset, p.length, (data, o) => copyToSegments(segs, p.pos, data, o, p.length)))));
    if (sequential && this.opts.readAheadChunks > 0) {
      const last = pieces[pieces.length - 1]!.index;
      const chunks = Math.ceil(this.size / this.manifest.chunkSize);
      for (let i = last + 1; i <= last + this.opts.readAheadChunks && i < chunks; i++) this.cache.prefetch(i);
    }
  }

  write(offset: number, segs: readonly Segment[], done: Completion): void {
    if (this.lease?.lost) return done(-5 /* EIO */);
    const pieces = this.split(offset, lengthOf(segs));
    settle(done, Promise.all(pieces.map(async (p) => {
      await this.cache.write(p.index, p.offset, p.length, (buf, o) => copyFromSegments(segs, p.pos, buf, o, p.length));
      if (this.opts.writethrough) await this.cache.storeNow(p.index);
    })));
  }

  flush(done: Completion): void {
    settle(done, this.cache.flush());
  }

  discard(offset: number, length: number, done: Completion): void {
    this.zeroRange(offset, length, done);
  }

  /** Whole chunks are deleted (they read as zeros), partial ones zeroed: discard and write-zeroes alike. */
  writeZeroes(offset: number, length: number, _mayUnmap: boolean, done: Completion): void {
    this.zeroRange(offset, length, done);
  }

  unplug(): void {}

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      await this.cache.close();
      await this.lease?.release();
    } finally {
      await this.store.close();
    }
  }

  private zeroRange(offset: number, length: number, done: Completion): void {
    if (this.lease?.lost) return done(-5 /* EIO */);
    settle(done, Promise.all(this.split(offset, length).map(async (p) => {
      await this.cache.zero(p.index, p.offset, p.length);
      if (this.opts.writethrough) await this.cache.storeNow(p.index);
    })));
  }

  private split(offset: number, length: number): Piece[] {
    const cs = this.manifest.chunkSize;
    const out: Piece[] = [];
    for (let pos = 0; pos < length;) {
      const abs = offset + pos;
      const index = Math.floor(abs / cs);
      const inChunk = abs - index * cs;
      const n = Math.min(cs - inChunk, length - pos);
      out.push({ index, offset: inChunk, length: n, pos });
      pos += n;
    }
    return out;
  }
}

function settle(done: Completion, p: Promise<unknown>): void {
  p.then(() => done(0), (err: unknown) => done(-errnoOf(err)));
}
