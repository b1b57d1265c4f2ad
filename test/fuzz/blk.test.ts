// Fuzz target: virtio-blk requests. The real BlkDevice serves two real DeviceQueues over
// guarded guest memory; its image is a raw file driven through io_uring (vectored I/O
// straight into guest memory: the native path the guard pages watch) or an object image
// over an in-memory store. Inputs are sequences of requests with random types, sectors,
// header/data/status layouts and discard segments, malformed chains, and heads past the
// ring. Invariants, per request and per input:
// - nothing throws (also not later, from a completion); every chain is given back
//   within a bounded time (no hang), malformed chains with length 0;
// - the status byte and used length are what the virtio-blk rules say (an independent
//   model of them below), reads return what a byte-array model of the disk holds, and
//   the disk changes exactly as acknowledged writes, discards and zeroings say;
// - guest memory changes only in the request's device-writable buffers and the used
//   ring; canaries between the regions stay intact;
// - after every input the device serves a well-formed write and read on the same queue
//   (reset first if the input broke it) and on the other queue.
import { expect } from 'chai';
import { readFileSync } from 'node:fs';
import fc from 'fast-check';
import { BlkDevice } from '../../src/blk/device.js';
import { RawImage } from '../../src/blk/raw-image.js';
import { ObjectImage } from '../../src/blk/object-image.js';
import { ImageKeys } from '../../src/blk/image-format.js';
import { createImage } from '../../src/blk/image-admin.js';
import { MemoryStore } from '../../src/backends/memory-store.js';
import type { BlockImage } from '../../src/blk/image.js';
import { DEFAULT_LIMITS } from '../../src/blk/config-space.js';
import { BlkStatus, BlkType, ID_BYTES } from '../../src/blk/protocol.js';
import { DeviceQueue } from '../../src/virtio/queue.js';
import { DriverQueue, type GuestBuffer } from '../../src/virtio/driver-queue.js';
import { silentLogger } from '../../src/util/log.js';
import { TmpDir, makeRawFile, patternBytes } from '../support/tmp.js';
import { MALFORMED_DESCRIPTORS, MALFORMED_SHAPES, writeMalformedChain, type MalformedShape } from '../support/hostile-chains.js';
import { GuardedGuestRam } from './guest-ram.js';
import { check, fuzzSuite, type FuzzTarget } from './runner.js';

const DISK = 256 << 10;
const CAP = DISK / 512;
const SERIAL = 'FUZZ-SERIAL-0123456789'; // longer than 20 bytes: GET_ID truncates
const QUEUE_SIZE = 64;
const MAX_IND = 16;
const QUEUES = 2;
// R0 holds the rings (one 32 KiB slot per queue) and data; R1 follows R0 in guest space
// (buffers cross from one mapping into the other); R2 stands alone; R3 holds the probe's
// whole-disk buffer.
const R0 = { guestAddr: 0x100000, size: 0x40000 };
const R1 = { guestAddr: 0x140000, size: 0x10000 };
const R2 = { guestAddr: 0x800000, size: 0x10000 };
const R3 = { guestAddr: 0x1000000, size: DISK + 0x1000 };
const RING_SLOT = 0x8000;
const DATA0 = R0.guestAddr + QUEUES * RING_SLOT;

type Place = 'r0' | 'cross' | 'r2';

interface Segment16 {
  readonly sector: bigint;
  readonly count: number;
  readonly flags: number;
}

export interface BlkRequestStep {
  readonly kind: 'request';
  readonly type: number;
  readonly ioprio: number;
  readonly sector: bigint;
  /** Bytes of the header descriptor(s) (16 in a well-formed request). */
  readonly headerLen: number;
  /** Split the header over two descriptors at this byte (0: not split). */
  readonly headerSplit: number;
  /** Device-readable data descriptors after the header. */
  readonly out: number[];
  /** DISCARD / WRITE_ZEROES segments, one more readable descriptor when present. */
  readonly segments: Segment16[];
  /** Device-writable data descriptors before the status byte. */
  readonly in: number[];
  readonly statusLen: number;
  readonly place: Place;
  readonly indirect: boolean;
}

export type BlkStep =
  | BlkRequestStep
  | { readonly kind: 'raw'; readonly shape: MalformedShape }
  | { readonly kind: 'bad-head' };

export interface BlkInput {
  readonly queue: number;
  readonly steps: BlkStep[];
  /** Where the probe writes afterwards. */
  readonly probeSector: number;
}

const sectorArb: fc.Arbitrary<bigint> = fc.oneof(
  { weight: 6, arbitrary: fc.integer({ min: 0, max: CAP - 1 }).map(BigInt) },
  { weight: 2, arbitrary: fc.constantFrom(0n, BigInt(CAP - 1), BigInt(CAP - 8), BigInt(CAP), BigInt(CAP + 1)) },
  { weight: 1, arbitrary: fc.constantFrom(2n ** 32n, 2n ** 53n - 1n, 2n ** 53n, 2n ** 63n, 2n ** 64n - 1n) },
  { weight: 1, arbitrary: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }) },
);

const dataLenArb = fc.oneof(
  { weight: 6, arbitrary: fc.integer({ min: 0, max: 8 }).map((k) => 512 * k) },
  { weight: 1, arbitrary: fc.constantFrom(1, 511, 513, 4095, 4097) },
);

const segmentArb: fc.Arbitrary<Segment16> = fc.record({
  sector: sectorArb,
  count: fc.oneof(
    { weight: 6, arbitrary: fc.integer({ min: 0, max: 64 }) },
    { weight: 1, arbitrary: fc.constantFrom(CAP, CAP + 1, (1 << 30) >> 9, ((1 << 30) >> 9) + 1, 0xffffffff) },
  ),
  flags: fc.oneof({ weight: 6, arbitrary: fc.constantFrom(0, 0, 1) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 0xffffffff }) }),
});

const requestArb: fc.Arbitrary<BlkRequestStep> = fc.record({
  kind: fc.constant('request' as const),
  type: fc.oneof(
    { weight: 10, arbitrary: fc.constantFrom(BlkType.In, BlkType.Out, BlkType.Flush, BlkType.GetId, BlkType.Discard, BlkType.WriteZeroes) },
    { weight: 1, arbitrary: fc.oneof(fc.integer({ min: 0, max: 20 }), fc.constantFrom(0x80000000, 0xffffffff)) },
  ),
  ioprio: fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 0xffffffff })),
  sector: sectorArb,
  headerLen: fc.oneof({ weight: 8, arbitrary: fc.constant(16) }, { weight: 1, arbitrary: fc.constantFrom<number>(0, 1, 8, 12, 15, 17, 24) }),
  headerSplit: fc.oneof({ weight: 4, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.integer({ min: 1, max: 15 }) }),
  out: fc.oneof({ weight: 2, arbitrary: fc.constant<number[]>([]) }, { weight: 1, arbitrary: fc.array(dataLenArb, { maxLength: 4 }) }),
  segments: fc.oneof({ weight: 2, arbitrary: fc.constant<Segment16[]>([]) }, { weight: 1, arbitrary: fc.array(segmentArb, { maxLength: 3 }) }),
  in: fc.oneof({ weight: 2, arbitrary: fc.constant<number[]>([]) }, { weight: 1, arbitrary: fc.array(dataLenArb, { maxLength: 4 }) }),
  statusLen: fc.oneof({ weight: 8, arbitrary: fc.constant(1) }, { weight: 1, arbitrary: fc.constantFrom(0, 2, 3) }),
  place: fc.constantFrom<Place>('r0', 'cross', 'r2'),
  indirect: fc.boolean(),
});

const stepArb: fc.Arbitrary<BlkStep> = fc.oneof(
  { weight: 12, arbitrary: requestArb },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('raw' as const), shape: fc.constantFrom(...MALFORMED_SHAPES) }) },
  { weight: 1, arbitrary: fc.constant({ kind: 'bad-head' as const }) },
);

export const blkInputArb: fc.Arbitrary<BlkInput> = fc.record({
  queue: fc.integer({ min: 0, max: QUEUES - 1 }),
  steps: fc.array(stepArb, { minLength: 1, maxLength: 6 }),
  probeSector: fc.integer({ min: 0, max: CAP - 8 }),
});

// ---- the model of the virtio-blk rules --------------------------------------------------------

interface Expected {
  /** Used length; 0 means "given back without a status byte". */
  readonly len: number;
  readonly status: BlkStatus | null;
  /** The disk after the request (when OK). */
  readonly apply?: (disk: Uint8Array) => void;
  /** What the device-writable data must hold afterwards (reads, GET_ID). */
  readonly reply?: Uint8Array;
}

function le64(b: Uint8Array, at: number): bigint {
  return at + 8 <= b.length ? new DataView(b.buffer, b.byteOffset).getBigUint64(at, true) : -1n;
}

/** What virtio 1.2 §5.2.6 (and our advertised limits) make of a request. */
function expectedOf(readable: Uint8Array, writableLen: number, disk: Uint8Array): Expected {
  if (writableLen < 1) return { len: 0, status: null };
  const fail = (status: BlkStatus): Expected => ({ len: 1, status });
  if (readable.length < 16) return fail(BlkStatus.IoErr);
  const dv = new DataView(readable.buffer, readable.byteOffset);
  const type = dv.getUint32(0, true);
  const sector = le64(readable, 8);
  const inDisk = (s: bigint, bytes: number): boolean => s >= 0n && s <= BigInt(CAP) && BigInt(bytes) <= (BigInt(CAP) - s) * 512n;
  const payload = readable.length - 16;
  switch (type) {
    case BlkType.In:
    case BlkType.Out: {
      const isWrite = type === BlkType.Out;
      // The status byte is the last writable byte; everything before it is read data.
      const dataLen = isWrite ? payload : writableLen - 1;
      const stray = isWrite ? writableLen - 1 : payload;
      if (stray !== 0 || !inDisk(sector, dataLen) || dataLen % 512 !== 0 || dataLen > DEFAULT_LIMITS.maxRequestBytes) return fail(BlkStatus.IoErr);
      const at = Number(sector) * 512;
      if (isWrite) {
        const data = readable.slice(16);
        return { len: 1, status: BlkStatus.Ok, apply: (d) => d.set(data, at) };
      }
      return { len: dataLen + 1, status: BlkStatus.Ok, reply: disk.slice(at, at + dataLen) };
    }
    case BlkType.Flush:
      return { len: 1, status: BlkStatus.Ok };
    case BlkType.GetId: {
      const n = Math.min(ID_BYTES, writableLen - 1);
      const id = new Uint8Array(ID_BYTES);
      id.set(new TextEncoder().encode(SERIAL).subarray(0, ID_BYTES));
      return { len: n + 1, status: BlkStatus.Ok, reply: id.subarray(0, n) };
    }
    case BlkType.Discard:
    case BlkType.WriteZeroes: {
      const isDiscard = type === BlkType.Discard;
      if (payload <= 0 || payload % 16 !== 0 || payload / 16 > (isDiscard ? DEFAULT_LIMITS.maxDiscardSegments : DEFAULT_LIMITS.maxWriteZeroesSegments)) {
        return fail(BlkStatus.IoErr);
      }
      const ranges: Array<[number, number]> = [];
      for (let p = 16; p < readable.length; p += 16) {
        const s = le64(readable, p);
        const count = dv.getUint32(p + 8, true);
        const flags = dv.getUint32(p + 12, true);
        if ((flags & ~(isDiscard ? 0 : 1)) !== 0) return fail(BlkStatus.Unsupp);
        const max = isDiscard ? DEFAULT_LIMITS.maxDiscardSectors : DEFAULT_LIMITS.maxWriteZeroesSectors;
        if (count > max || !inDisk(s, count * 512)) return fail(BlkStatus.IoErr);
        ranges.push([Number(s) * 512, count * 512]);
      }
      return { len: 1, status: BlkStatus.Ok, apply: (d) => { for (const [o, l] of ranges) d.fill(0, o, o + l); } };
    }
    default:
      return fail(BlkStatus.Unsupp);
  }
}

// ---- the target -------------------------------------------------------------------------------

interface QueuePair {
  driver: DriverQueue<number>;
  device: DeviceQueue;
}

export interface BlkHarness {
  readonly name: string;
  readonly image: BlockImage;
  /** The disk as stored (null when it can only be read through the device). */
  readonly stored: (() => Uint8Array) | null;
  close(): Promise<void>;
}

export function makeBlkTarget(ram: GuardedGuestRam, h: BlkHarness): FuzzTarget<BlkInput> & { stop(): Promise<void> } {
  const device = new BlkDevice({ image: h.image, numQueues: QUEUES, serial: SERIAL, log: silentLogger });
  const model = new Uint8Array(DISK);
  const pairs: QueuePair[] = [];
  const errors: unknown[] = [];
  let token = 0;

  const start = (q: number): void => {
    const l = DriverQueue.layoutFor(QUEUE_SIZE, true, MAX_IND);
    const fileOffset = ram.fileOffset(R0.guestAddr) + q * RING_SLOT;
    const driver = new DriverQueue<number>({
      size: QUEUE_SIZE, indirect: true, maxIndirect: MAX_IND, eventIdx: true,
      area: { buf: ram.host.buffer as ArrayBuffer, offset: fileOffset, length: l.total, guestAddr: R0.guestAddr + q * RING_SLOT, userAddr: ram.regions[0]!.userAddr + q * RING_SLOT },
    });
    const dq = new DeviceQueue(q);
    dq.size = QUEUE_SIZE;
    dq.indirect = true;
    dq.eventIdx = true;
    if (!dq.setAddresses(ram.memory, driver.ringAddresses)) throw new Error('setAddresses failed');
    pairs[q] = { driver, device: dq };
    device.startQueue(dq);
    device.onKick(dq);
  };
  for (let q = 0; q < QUEUES; q++) start(q);

  /** What may change in the rings while a request is served: the used ring, and used_event (the driver's poll). */
  const ringWrites = (q: number): Array<{ offset: number; length: number }> => {
    const l = pairs[q]!.driver.layout;
    const base = ram.fileOffset(R0.guestAddr) + q * RING_SLOT;
    return [{ offset: base + l.used, length: 8 * QUEUE_SIZE + 6 }, { offset: base + l.avail + 4 + 2 * QUEUE_SIZE, length: 2 }];
  };

  /** Kicks (already published), then waits (bounded) for the completions of `heads`; returns their used lengths. */
  async function complete(q: number, heads: number[]): Promise<Map<number, number>> {
    const p = pairs[q]!;
    try {
      device.onKick(p.device);
    } catch (err) {
      errors.push(err);
    }
    const got = new Map<number, number>();
    const deadline = Date.now() + 10_000;
    for (;;) {
      for (const c of p.driver.poll()) got.set(c.head, c.len);
      check(!p.driver.broken, 'the device returned an impossible used element');
      if (heads.every((hd) => got.has(hd))) return got;
      check(Date.now() < deadline, () => `no completion within 10 s for heads ${heads.filter((hd) => !got.has(hd)).join(',')} (hang)`);
      await new Promise((r) => setImmediate(r));
    }
  }

  /** A bump allocator over one placement. */
  function allocator(place: Place): (len: number) => number {
    let at = place === 'r0' ? DATA0 : place === 'r2' ? R2.guestAddr : R1.guestAddr - 700;
    return (len) => {
      const a = at;
      at += len + (place === 'cross' ? 0 : 8);
      return a;
    };
  }

  async function request(q: number, s: BlkRequestStep, seed: number, features: Set<string>): Promise<void> {
    const alloc = allocator(s.place);
    const readable: GuestBuffer[] = [];
    const writable: GuestBuffer[] = [];
    const readBytes: Uint8Array[] = [];
    // Header: type, ioprio, sector, then whatever pads a longer one.
    const hdr = new Uint8Array(Math.max(s.headerLen, 0));
    const full = new Uint8Array(Math.max(16, hdr.length));
    const dv = new DataView(full.buffer);
    dv.setUint32(0, s.type >>> 0, true);
    dv.setUint32(4, s.ioprio >>> 0, true);
    dv.setBigUint64(8, BigInt.asUintN(64, s.sector), true);
    hdr.set(full.subarray(0, hdr.length));
    const pieces = s.headerSplit > 0 && s.headerSplit < hdr.length ? [hdr.subarray(0, s.headerSplit), hdr.subarray(s.headerSplit)] : [hdr];
    for (const p of pieces) if (p.length > 0) readBytes.push(p);
    s.out.forEach((len, i) => readBytes.push(patternBytes(seed * 31 + i, len)));
    if (s.segments.length > 0) {
      const b = new Uint8Array(16 * s.segments.length);
      const v = new DataView(b.buffer);
      s.segments.forEach((g, i) => {
        v.setBigUint64(16 * i, BigInt.asUintN(64, g.sector), true);
        v.setUint32(16 * i + 8, g.count >>> 0, true);
        v.setUint32(16 * i + 12, g.flags >>> 0, true);
      });
      readBytes.push(b);
    }
    for (const b of readBytes) {
      const a = alloc(b.length);
      ram.write(a, b);
      readable.push({ addr: a, len: b.length });
    }
    const inBufs = s.in.map((len) => ({ addr: alloc(len), len }));
    const status = s.statusLen > 0 ? { addr: alloc(s.statusLen), len: s.statusLen } : null;
    for (const b of inBufs) {
      ram.write(b.addr, new Uint8Array(b.len).fill(0xee));
      writable.push(b);
    }
    if (status) {
      ram.write(status.addr, new Uint8Array(status.len).fill(0xee));
      writable.push(status);
    }
    // Zero-length descriptors are legal; a request with none at all cannot be queued.
    const total = readable.length + writable.length;
    if (total === 0) return;
    const p = pairs[q]!;
    const useIndirect = s.indirect && total <= MAX_IND;
    if (!useIndirect && total > p.driver.numFree) return;
    const allBytes = concat(readBytes);
    const writableLen = s.in.reduce((a, b) => a + b, 0) + s.statusLen;
    const exp = expectedOf(allBytes, writableLen, model);
    const head = p.driver.add(readable, writable, ++token, useIndirect);
    check(head >= 0, 'no room in the ring');
    p.driver.kick();
    const before = ram.snapshot();
    const got = (await complete(q, [head])).get(head)!;
    features.add(`type:${typeName(s.type)}:${exp.status === null ? 'none' : STATUS_NAMES[exp.status]}`);
    check(got === exp.len, () => `${typeName(s.type)} request: used length ${got}, expected ${exp.len} (status ${exp.status})`);
    const allowed = [...writable.flatMap((b) => ram.fileRanges(b.addr, b.len)), ...ringWrites(q)];
    const stray = ram.changedOutside(before, allowed);
    check(stray.length === 0, () => `guest memory changed outside the writable buffers at memfd offsets ${stray.join(',')}`);
    if (exp.status === null) return;
    // The status byte is the last writable byte (zero-length descriptors hold none).
    const written = concat(writable.map((b) => ram.read(b.addr, b.len)));
    const st = written[written.length - 1];
    check(st === exp.status, () => `${typeName(s.type)} request: status ${st}, expected ${exp.status}`);
    if (exp.reply) {
      const data = written.subarray(0, exp.reply.length);
      check(Buffer.from(data).equals(Buffer.from(exp.reply)), () => `${typeName(s.type)} at sector ${s.sector}: the data differs from the model`);
    }
    exp.apply?.(model);
  }

  async function raw(q: number, shape: MalformedShape): Promise<void> {
    const p = pairs[q]!;
    const ring = p.driver;
    const d = ring.takeRaw(MALFORMED_DESCRIPTORS);
    writeMalformedChain(ring, d, shape, { request: { addr: DATA0, len: 16 }, reply: { addr: DATA0 + 1024, len: 1 }, end: R2.guestAddr + R2.size });
    const bad = device.counters.badChains;
    ring.publishRawHead(d[0]!);
    ring.kick();
    const before = ram.snapshot();
    const got = (await complete(q, [d[0]!])).get(d[0]!);
    ring.releaseRaw(d);
    check(got === 0, () => `malformed chain (${shape}) given back with length ${got}`);
    check(device.counters.badChains === bad + 1, `malformed chain (${shape}) not counted`);
    const stray = ram.changedOutside(before, ringWrites(q));
    check(stray.length === 0, () => `a malformed chain (${shape}) changed guest memory at memfd offsets ${stray.join(',')}`);
  }

  /** A well-formed 4 KiB write and read back on queue q. */
  async function probe(q: number, sector: number, seed: number): Promise<void> {
    const p = pairs[q]!;
    const hdr = R3.guestAddr + DISK;
    const buf = R3.guestAddr;
    const st = hdr + 64;
    const data = patternBytes(seed, 4096);
    const header = (type: number): Uint8Array => {
      const b = new Uint8Array(16);
      new DataView(b.buffer).setUint32(0, type, true);
      new DataView(b.buffer).setBigUint64(8, BigInt(sector), true);
      return b;
    };
    ram.write(hdr, header(BlkType.Out));
    ram.write(buf, data);
    let head = p.driver.add([{ addr: hdr, len: 16 }, { addr: buf, len: 4096 }], [{ addr: st, len: 1 }], ++token);
    p.driver.kick();
    check((await complete(q, [head])).get(head) === 1 && ram.read(st, 1)[0] === BlkStatus.Ok, `probe write on queue ${q} failed`);
    model.set(data, sector * 512);
    ram.write(hdr, header(BlkType.In));
    ram.write(buf, new Uint8Array(4096));
    head = p.driver.add([{ addr: hdr, len: 16 }], [{ addr: buf, len: 4096 }, { addr: st, len: 1 }], ++token);
    p.driver.kick();
    check((await complete(q, [head])).get(head) === 4097 && ram.read(st, 1)[0] === BlkStatus.Ok, `probe read on queue ${q} failed`);
    check(Buffer.from(ram.read(buf, 4096)).equals(Buffer.from(data)), `probe read on queue ${q} returned other data`);
  }

  /** The whole disk as the device reads it (one 1 MiB request), compared with the model. */
  async function checkDisk(q: number): Promise<void> {
    const p = pairs[q]!;
    const hdr = R3.guestAddr + DISK;
    const st = hdr + 64;
    ram.write(hdr, new Uint8Array(16));
    const head = p.driver.add([{ addr: hdr, len: 16 }], [{ addr: R3.guestAddr, len: DISK }, { addr: st, len: 1 }], ++token);
    p.driver.kick();
    check((await complete(q, [head])).get(head) === DISK + 1 && ram.read(st, 1)[0] === BlkStatus.Ok, 'reading the whole disk failed');
    const disk = ram.read(R3.guestAddr, DISK);
    const at = Buffer.from(disk).compare(Buffer.from(model)) === 0 ? -1 : disk.findIndex((b, i) => b !== model[i]);
    check(at < 0, () => `the disk differs from the model at byte ${at}`);
    if (h.stored) {
      const stored = h.stored();
      check(Buffer.from(stored).equals(Buffer.from(model)), 'the stored image differs from the model');
    }
  }

  return {
    name: 'blk',
    label: `blk (${h.name} image)`,
    arbitrary: blkInputArb,
    async run(input) {
      const features = new Set<string>();
      const q = input.queue;
      let seed = 0;
      for (const s of input.steps) {
        seed++;
        if (s.kind === 'request') await request(q, s, seed, features);
        else if (s.kind === 'raw') {
          await raw(q, s.shape);
          features.add(`raw:${s.shape}`);
        } else {
          // A head past the ring breaks this queue only; the device is reset (stop, start) to recover.
          const p = pairs[q]!;
          p.driver.publishRawHead(QUEUE_SIZE + 5);
          p.driver.kick();
          device.onKick(p.device);
          check(p.device.broken, 'a head past the ring did not break the queue');
          features.add('bad-head');
          await probe(1 - q, input.probeSector, seed);
          await device.stopQueue(p.device);
          start(q);
        }
      }
      check(errors.length === 0, () => `the device threw: ${String(errors[0])}`);
      expect(ram.changedCanaries(), 'canaries between the regions (memfd offsets)').to.deep.equal([]);
      await probe(q, input.probeSector, seed + 100);
      await probe(1 - q, (input.probeSector + 8) % (CAP - 8), seed + 200);
      await checkDisk(q);
      return features;
    },
    async stop() {
      for (const p of pairs) await device.stopQueue(p.device);
      device.reset();
    },
  };
}

function concat(parts: readonly Uint8Array[]): Uint8Array {
  return new Uint8Array(Buffer.concat(parts));
}

const TYPE_NAMES: Record<number, string> = {
  [BlkType.In]: 'IN', [BlkType.Out]: 'OUT', [BlkType.Flush]: 'FLUSH', [BlkType.GetId]: 'GET_ID',
  [BlkType.Discard]: 'DISCARD', [BlkType.WriteZeroes]: 'WRITE_ZEROES',
};
const STATUS_NAMES: Record<number, string> = { [BlkStatus.Ok]: 'OK', [BlkStatus.IoErr]: 'IOERR', [BlkStatus.Unsupp]: 'UNSUPP' };

function typeName(t: number): string {
  return TYPE_NAMES[t] ?? `type${t}`;
}

const LAYOUT = [R0, R1, R2, R3];

function blkSuite(title: string, open: (dir: TmpDir) => Promise<BlkHarness>): void {
  fuzzSuite(title, 'vhost-s3-fuzz-blk-', async ({ dir, defer }) => {
    const ram = new GuardedGuestRam(LAYOUT);
    defer(() => ram.close());
    const harness = await open(dir);
    defer(() => harness.close());
    const target = makeBlkTarget(ram, harness);
    defer(() => target.stop());
    return target;
  });
}

blkSuite('fuzz: virtio-blk requests (raw image, io_uring into guarded guest memory)', async (dir) => {
  const path = makeRawFile(dir.file('disk.raw'), DISK);
  const image = RawImage.open(path, { readOnly: false, ioEngine: 'uring' });
  return { name: 'raw', image, stored: () => new Uint8Array(readFileSync(path)), close: () => image.close() };
});

blkSuite('fuzz: virtio-blk requests (object image over an in-memory store)', async () => {
  const store = new MemoryStore();
  const keys = new ImageKeys('images/fuzz/');
  await createImage(store, keys, DISK, 64 * 1024);
  const image = await ObjectImage.open(store, keys, {
    readOnly: false, force: false, cacheBytes: 256 * 1024, maxDirtyBytes: 128 * 1024, writethrough: false,
    uploadConcurrency: 2, fetchConcurrency: 2, readAheadChunks: 1, writebackDelayMs: 0, log: silentLogger,
  });
  return { name: 'object', image, stored: null, close: () => image.close() };
});
