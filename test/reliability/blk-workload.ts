// A verifying virtio-blk workload for the reliability tests: writes of known patterns at
// random places, FLUSH, reads back, driven through our frontend (BlkClient) against a
// `vhost-s3 blk` child. A model of the disk holds what the client was told is written;
// after every successful FLUSH the chunks written since the last check are read straight
// from the store (not through the gateway) and compared with the model.
import { expect } from 'chai';
import type { ObjectStore, ReadIntoResult } from '../../src/backends/object-store.js';
import { errnoOf } from '../../src/util/errors.js';
import type { ImageKeys } from '../../src/blk/image-format.js';
import { BlkStatus } from '../../src/blk/protocol.js';
import type { BlkClient } from '../../src/frontend/blk-client.js';
import type { SharedBuffer } from '../../src/frontend/memory.js';
import { uniform } from '../support/random.js';
import { patternBytes } from '../support/tmp.js';

const SECTOR = 512;

/** A deterministic generator (xorshift32) for offsets and sizes. */
export class Rng {
  /** Numbers in [0, 1). */
  readonly next: () => number;
  constructor(seed: number) {
    this.next = uniform((seed * 2654435761) >>> 0);
  }
  /** An integer in [lo, hi). */
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo));
  }
}

/** What the disk must hold: bytes, and which sectors are known (a write that failed leaves its sectors unknown). */
export class DiskModel {
  readonly bytes: Uint8Array;
  private readonly known: Uint8Array;
  constructor(readonly size: number) {
    this.bytes = new Uint8Array(size);
    this.known = new Uint8Array(size / SECTOR).fill(1);
  }
  apply(offset: number, data: Uint8Array): void {
    this.bytes.set(data, offset);
    this.known.fill(1, offset / SECTOR, (offset + data.length) / SECTOR);
  }
  /** Bytes whose content is known. */
  get knownBytes(): number {
    let n = 0;
    for (const k of this.known) n += k;
    return n * SECTOR;
  }
  forget(offset: number, length: number): void {
    this.known.fill(0, offset / SECTOR, (offset + length) / SECTOR);
  }
  /** Bytes of `got` (the disk at `offset`) compared where known; throws naming the first differing sector. Returns bytes compared. */
  check(offset: number, got: Uint8Array, what: string): number {
    let n = 0;
    for (let s = 0; s < got.length; s += SECTOR) {
      if (this.known[(offset + s) / SECTOR] === 0) continue;
      const want = this.bytes.subarray(offset + s, offset + s + SECTOR);
      const have = got.subarray(s, s + SECTOR);
      if (!Buffer.from(want.buffer, want.byteOffset, want.length).equals(Buffer.from(have.buffer, have.byteOffset, have.length))) {
        throw new Error(`${what}: sector at byte ${offset + s} differs from what the client was told is written (first bytes ${Buffer.from(have.subarray(0, 8)).toString('hex')}, want ${Buffer.from(want.subarray(0, 8)).toString('hex')})`);
      }
      n += SECTOR;
    }
    return n;
  }
}

export interface BlkTally {
  writesOk: number;
  writesFailed: number;
  flushesOk: number;
  flushesFailed: number;
  readsOk: number;
  readsFailed: number;
  /** Bytes compared with the model: read back through the gateway and read straight from the store. */
  bytesVerified: number;
}

export function newBlkTally(): BlkTally {
  return { writesOk: 0, writesFailed: 0, flushesOk: 0, flushesFailed: 0, readsOk: 0, readsFailed: 0, bytesVerified: 0 };
}

function sub(b: SharedBuffer, length: number): SharedBuffer {
  return { gpa: b.gpa, uva: b.uva, bytes: b.bytes.subarray(0, length) };
}

/**
 * Reads chunk `index` straight from the store into `buf` (its size is the chunk size):
 * zeros when no object is stored. Every chunk object is a whole chunk (the chunk cache
 * stores nothing shorter), so a shorter object or read throws, naming its size, rather
 * than leaving zeros that would pass for lost writes.
 */
export async function readStoredChunk(store: ObjectStore, keys: ImageKeys, index: number, buf: Uint8Array): Promise<void> {
  buf.fill(0);
  let r: ReadIntoResult;
  try {
    r = await store.getInto(keys.chunk(index), 0, buf);
  } catch (err) {
    if (errnoOf(err) === 2 /* ENOENT: a chunk that is not stored reads as zeros */) return;
    throw err;
  }
  if (r.size !== buf.length || r.bytesRead !== buf.length) {
    throw new Error(`${store.description} ${keys.chunk(index)}: the stored object is ${r.size} bytes (${r.bytesRead} read), not a whole chunk of ${buf.length}`);
  }
}

/** Compares every stored chunk of `chunks` (all chunks when undefined) with the model, reading the store directly. Returns bytes compared. */
export async function verifyStoredChunks(store: ObjectStore, keys: ImageKeys, chunkSize: number, model: DiskModel, chunks?: Iterable<number>): Promise<number> {
  const todo = chunks ? [...chunks] : Array.from({ length: model.size / chunkSize }, (_, i) => i);
  let n = 0;
  const worker = async (): Promise<void> => {
    const buf = new Uint8Array(chunkSize);
    for (let i = todo.pop(); i !== undefined; i = todo.pop()) {
      await readStoredChunk(store, keys, i, buf);
      n += model.check(i * chunkSize, buf, `${store.description} ${keys.chunk(i)}`);
    }
  };
  await Promise.all(Array.from({ length: 8 }, worker));
  return n;
}

export interface BlkWorkload {
  readonly client: BlkClient;
  readonly model: DiskModel;
  readonly chunkSize: number;
  readonly rng: Rng;
  readonly tally: BlkTally;
  /** Reads a chunk set from the store directly (skipped when undefined). */
  readonly verifyStore?: (chunks: Iterable<number>) => Promise<number>;
  /** The gateway runs with --writethrough: a write answered OK must be in the store before any FLUSH. */
  readonly writethrough?: boolean;
}

/** Buffers in guest memory, allocated once per client (the frontend's allocator never frees). */
export interface BlkBuffers {
  readonly writes: SharedBuffer[];
  readonly reads: SharedBuffer[];
}

export const MAX_IO = 128 * 1024;

export function allocBlkBuffers(client: BlkClient, writers: number, readers: number): BlkBuffers {
  return {
    writes: Array.from({ length: writers }, () => client.allocBuffer(MAX_IO)),
    reads: Array.from({ length: readers }, () => client.allocBuffer(MAX_IO)),
  };
}

let patternSeed = 1;

/**
 * One round: a batch of writes in disjoint stripes of the disk (so concurrent writes
 * never overlap), a FLUSH, a batch of reads. A write that completes OK is in the model; a
 * FLUSH that completes OK must have stored every chunk written before it, which is checked
 * in the store right away (nothing writes meanwhile). Any status other than OK or IOERR
 * fails the test. `pending` collects the chunks written and not yet checked in the store.
 */
export async function blkRound(w: BlkWorkload, bufs: BlkBuffers, pending: Set<number>): Promise<void> {
  const { client, model, rng, tally } = w;
  const stripes = bufs.writes.length;
  const stripe = Math.floor(model.size / stripes / SECTOR) * SECTOR;
  await Promise.all(bufs.writes.map(async (b, k) => {
    const len = rng.int(1, MAX_IO / SECTOR + 1) * SECTOR;
    const off = k * stripe + rng.int(0, (stripe - len) / SECTOR + 1) * SECTOR;
    const data = patternBytes(patternSeed++, len);
    b.bytes.set(data);
    const st = await client.writeAsync(0, off, sub(b, len));
    expect(st, `write at ${off} (${len} bytes)`).to.be.oneOf([BlkStatus.Ok, BlkStatus.IoErr]);
    if (st === BlkStatus.Ok) {
      tally.writesOk++;
      model.apply(off, data);
    } else {
      tally.writesFailed++;
      model.forget(off, len);
    }
    for (let c = Math.floor(off / w.chunkSize); c <= Math.floor((off + len - 1) / w.chunkSize); c++) pending.add(c);
  }));
  if (w.writethrough && w.verifyStore) tally.bytesVerified += await w.verifyStore(pending);
  const fl = await client.flushAsync(0);
  expect(fl, 'FLUSH').to.be.oneOf([BlkStatus.Ok, BlkStatus.IoErr]);
  if (fl === BlkStatus.Ok) {
    tally.flushesOk++;
    if (w.verifyStore) {
      tally.bytesVerified += await w.verifyStore(pending);
      pending.clear();
    }
  } else tally.flushesFailed++;
  await Promise.all(bufs.reads.map(async (b) => {
    const len = rng.int(1, MAX_IO / SECTOR + 1) * SECTOR;
    const off = rng.int(0, (model.size - len) / SECTOR + 1) * SECTOR;
    b.bytes.fill(0xee, 0, len);
    const st = await client.readAsync(0, off, sub(b, len));
    expect(st, `read at ${off} (${len} bytes)`).to.be.oneOf([BlkStatus.Ok, BlkStatus.IoErr]);
    if (st === BlkStatus.Ok) {
      tally.readsOk++;
      tally.bytesVerified += model.check(off, b.bytes.subarray(0, len), `read through the gateway at ${off}`);
    } else tally.readsFailed++;
  }));
}

/** Reads the whole disk through the gateway and compares it with the model (every read must succeed). Returns bytes compared. */
export async function readWholeDisk(client: BlkClient, model: DiskModel, buf: SharedBuffer): Promise<number> {
  let n = 0;
  for (let off = 0; off < model.size; off += MAX_IO) {
    const len = Math.min(MAX_IO, model.size - off);
    const st = await client.readAsync(0, off, sub(buf, len));
    expect(st, `read at ${off}`).to.equal(BlkStatus.Ok);
    n += model.check(off, buf.bytes.subarray(0, len), `read through a fresh gateway at ${off}`);
  }
  return n;
}
