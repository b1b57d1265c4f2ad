// The blk load generator behind `vhost-s3 bench blk`: keeps `iodepth` requests in flight
// on each queue for a time or byte budget, records every latency, and in verify mode
// writes self-describing blocks and checks every read of a block this run wrote.
import { performance } from 'node:perf_hooks';
import type { SharedBuffer } from './memory.js';
import { LatencyRecorder, type LoadResult } from './stats.js';
import { xorshift32 } from '../util/xorshift.js';

export type RwPattern = 'read' | 'write' | 'randread' | 'randwrite' | 'randrw';

/** Completion status of a request the backend never completed because it closed the connection. */
export const STATUS_DISCONNECTED = -2;

/**
 * What the generator needs from a blk client: one request at a time, callback on completion
 * with a virtio-blk status (0 OK) or STATUS_DISCONNECTED.
 */
export interface BlkIo {
  /** Bytes addressable on the device. */
  readonly capacity: number;
  readonly numQueues: number;
  allocBuffer(length: number): SharedBuffer;
  read(queue: number, offset: number, buf: SharedBuffer, done: (status: number) => void): void;
  write(queue: number, offset: number, buf: SharedBuffer, done: (status: number) => void): void;
  flush(queue: number, done: (status: number) => void): void;
}

export interface LoadOptions {
  readonly rw: RwPattern;
  readonly bs: number;
  readonly iodepth: number;
  readonly queues: number;
  /** Seconds; 0 means run until `totalBytes`. */
  readonly runtime: number;
  /** Bytes; 0 means run until `runtime`. */
  readonly totalBytes: number;
  readonly rwmixread: number;
  readonly verify: boolean;
  /** Restrict offsets to [0, span) (default: the whole device). */
  readonly span?: number;
  /** Called about once a second with the bytes done so far. */
  readonly onProgress?: (bytes: number, seconds: number) => void;
  readonly seed?: number;
}

const SECTOR = 512;
const MAGIC = 0x76687333; // "vhs3"

/** Small fast PRNG (xorshift32); deterministic per seed so patterns can be recomputed. */
/**
 * The verify pattern of block `block` at write generation `gen`: every sector starts
 * with magic, block, gen, sector index, then PRNG words seeded from all of them.
 */
export function fillPattern(bytes: Uint8Array, block: number, gen: number): void {
  const words = new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength >>> 2);
  const perSector = SECTOR >>> 2;
  for (let s = 0; s * perSector < words.length; s++) {
    const base = s * perSector;
    words[base] = MAGIC;
    words[base + 1] = block >>> 0;
    words[base + 2] = gen;
    words[base + 3] = s;
    const next = xorshift32(((block * 2654435761) ^ (gen * 40503) ^ (s + 1)) >>> 0 || 0x9e3779b9);
    for (let i = 4; i < perSector; i++) words[base + i] = next();
  }
}

export function checkPattern(bytes: Uint8Array, block: number, gen: number, scratch: Uint8Array): boolean {
  fillPattern(scratch, block, gen);
  return Buffer.compare(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength), Buffer.from(scratch.buffer, scratch.byteOffset, bytes.byteLength)) === 0;
}

export class VerifyError extends Error {}

export async function runBlkLoad(io: BlkIo, opts: LoadOptions): Promise<LoadResult> {
  const span = Math.min(opts.span ?? io.capacity, io.capacity);
  if (opts.bs <= 0 || opts.bs % SECTOR !== 0) throw new RangeError('block size must be a positive multiple of 512');
  if (opts.queues > io.numQueues) throw new RangeError(`the device has ${io.numQueues} queue(s), ${opts.queues} requested`);
  const blocks = Math.floor(span / opts.bs);
  if (blocks < 1) throw new RangeError('device smaller than one block');
  if (opts.runtime <= 0 && opts.totalBytes <= 0) throw new RangeError('give a runtime or a total size');

  const rand = xorshift32((opts.seed ?? 12345) >>> 0 || 0x9e3779b9);
  const stats = new LatencyRecorder();
  const generations = new Map<number, number>();
  const busy = new Set<number>();
  const scratch = new Uint8Array(opts.bs);
  let nextSeq = 0;
  let issuedBytes = 0;
  let inflight = 0;
  let failure: Error | null = null;
  let disconnected = false;
  const start = performance.now();
  const deadline = opts.runtime > 0 ? start + opts.runtime * 1000 : Infinity;
  let lastProgress = start;

  const isRandom = opts.rw.startsWith('rand');
  const pickBlock = (): number => {
    if (!isRandom) return nextSeq++ % blocks;
    for (let tries = 0; tries < 8; tries++) {
      const b = rand() % blocks;
      if (!busy.has(b)) return b;
    }
    return -1;
  };
  const pickIsRead = (): boolean => {
    switch (opts.rw) {
      case 'read':
      case 'randread':
        return true;
      case 'write':
      case 'randwrite':
        return false;
      case 'randrw':
        return rand() % 100 < opts.rwmixread;
    }
  };

  if (opts.verify && (opts.rw === 'read' || opts.rw === 'randread')) {
    await prefill(io, opts, blocks, generations);
  }

  return new Promise<LoadResult>((resolve, reject) => {
    const finish = (): void => {
      if (inflight > 0) return;
      const seconds = (performance.now() - start) / 1000;
      if (failure) reject(failure);
      else resolve(disconnected ? { ...stats.result(seconds), disconnected } : stats.result(seconds));
    };
    const issue = (queue: number, buf: SharedBuffer): void => {
      const now = performance.now();
      if (opts.onProgress && now - lastProgress >= 1000) {
        lastProgress = now;
        opts.onProgress(stats.bytes, (now - start) / 1000);
      }
      if (failure || disconnected || now >= deadline || (opts.totalBytes > 0 && issuedBytes >= opts.totalBytes)) return finish();
      const block = pickBlock();
      if (block < 0) {
        // Every try hit a block in flight (tiny span, deep queue): retry on the next tick.
        setImmediate(() => issue(queue, buf));
        return;
      }
      const isRead = pickIsRead();
      const offset = block * opts.bs;
      let gen = 0;
      if (opts.verify) {
        busy.add(block);
        if (!isRead) {
          gen = (generations.get(block) ?? 0) + 1;
          fillPattern(buf.bytes, block, gen);
        }
      }
      issuedBytes += opts.bs;
      inflight++;
      const t0 = performance.now();
      const done = (status: number): void => {
        inflight--;
        const latencyNs = (performance.now() - t0) * 1e6;
        if (status === STATUS_DISCONNECTED) disconnected = true; // not an error of the device: it never saw the request
        else if (status !== 0) stats.errors++;
        else {
          stats.record(latencyNs, opts.bs);
          if (opts.verify) {
            if (!isRead) generations.set(block, gen);
            else {
              const expected = generations.get(block);
              if (expected !== undefined) {
                if (!checkPattern(buf.bytes, block, expected, scratch)) {
                  failure ??= new VerifyError(`verify failed: block ${block} (offset ${offset}) does not hold write generation ${expected}`);
                } else stats.verifiedBytes += opts.bs;
              }
            }
          }
        }
        busy.delete(block);
        issue(queue, buf);
      };
      if (isRead) io.read(queue, offset, buf, done);
      else io.write(queue, offset, buf, done);
    };
    for (let q = 0; q < opts.queues; q++) {
      for (let d = 0; d < opts.iodepth; d++) issue(q, io.allocBuffer(opts.bs));
    }
    finish();
  });
}

/** Writes every block of the span once so that a read-only verify run has something to check. */
async function prefill(io: BlkIo, opts: LoadOptions, blocks: number, generations: Map<number, number>): Promise<void> {
  const depth = Math.max(1, opts.iodepth);
  const bufs = Array.from({ length: depth }, () => io.allocBuffer(opts.bs));
  let next = 0;
  await new Promise<void>((resolve, reject) => {
    let inflight = 0;
    const pump = (buf: SharedBuffer): void => {
      if (next >= blocks) {
        if (inflight === 0) resolve();
        return;
      }
      const block = next++;
      fillPattern(buf.bytes, block, 1);
      inflight++;
      io.write(0, block * opts.bs, buf, (status) => {
        inflight--;
        if (status !== 0) return reject(new Error(`prefill write of block ${block} failed with status ${status}`));
        generations.set(block, 1);
        pump(buf);
      });
    };
    for (const b of bufs) pump(b);
  });
  await new Promise<void>((resolve, reject) => io.flush(0, (s) => (s === 0 ? resolve() : reject(new Error(`flush failed with status ${s}`)))));
}
