// Fuzz target: split-ring descriptor chains (addresses, lengths, flags, next, indirect
// tables, avail heads and index) popped by the real DeviceQueue from real guarded guest
// memory, and the popped chains' accessors (the only way devices touch guest data) used
// at hostile offsets. Invariants, per input:
// - nothing throws; every pop agrees with the slow reference walker;
// - a pop terminates within the cap: it translates at most 2 addresses per descriptor it
//   may visit (queue size plus one indirect table), whatever cycles the tables hold;
// - every segment lies inside one guest region's mapping, and accessor writes change
//   guest memory only inside the chain's writable segments; the canaries between the
//   regions stay intact (the guard pages would fault on a native stray access);
// - a queue not broken by the input pops, completes and delivers the next well-formed
//   request; a broken one (head >= size, avail.idx jump) pops nothing more.
import { expect } from 'chai';
import fc from 'fast-check';
import { DeviceQueue } from '../../src/virtio/queue.js';
import { DriverQueue } from '../../src/virtio/driver-queue.js';
import type { DescriptorChain } from '../../src/virtio/chain.js';
import type { GuestMemory, Segment } from '../../src/virtio/memory.js';
import { VIRTQ_DESC_F_INDIRECT as IND, VIRTQ_DESC_F_NEXT as NEXT, VIRTQ_DESC_F_WRITE as WRITE } from '../../src/virtio/layout.js';
import { expectedPops, sameSegments, segsFor, type Desc } from '../virtio/reference-walker.js';
import { GuardedGuestRam } from './guest-ram.js';
import { check, fuzzTests, type FuzzTarget } from './runner.js';

// R0 and R1 are adjacent in guest space (chains cross from one mapping into the other); R2
// stands alone. The rings and the driver's indirect tables sit at the start of R0.
const LAYOUT = [
  { guestAddr: 0x10000, size: 0x10000 },
  { guestAddr: 0x20000, size: 0x8000 },
  { guestAddr: 0x100000, size: 0x4000 },
];
const DRIVER_MAX_INDIRECT = 8;
const SIZES = [1, 2, 4, 8, 16, 64] as const;

type Side = 'r' | 'w';
/** An accessor call a device could make on a popped chain. */
interface ChainOp {
  readonly op: 'read' | 'write' | 'int' | 'setInt' | 'slice';
  readonly side: Side;
  readonly offset: number;
  readonly len: number;
  readonly width: 1 | 2 | 4 | 8;
}

export interface ChainInput {
  readonly size: number;
  readonly deviceIndirect: boolean;
  readonly maxIndirect: number;
  readonly table: Desc[];
  /** Entries of the driver's indirect tables for slots 0.. (DRIVER_MAX_INDIRECT each). */
  readonly tables: Desc[][];
  readonly heads: number[];
  /** Raw avail.idx instead of the number of heads. */
  readonly availIdx: number | null;
  readonly ops: ChainOp[];
}

function ringLayout(size: number) {
  return DriverQueue.layoutFor(size, true, DRIVER_MAX_INDIRECT);
}

function addrArb(size: number): fc.Arbitrary<bigint> {
  const l = ringLayout(size);
  const r0 = LAYOUT[0]!.guestAddr;
  const tables = fc.integer({ min: 0, max: size - 1 }).chain((s) =>
    fc.integer({ min: -4, max: 24 }).map((o) => BigInt(r0 + l.indirect + s * l.indirectStride + o)));
  return fc.oneof(
    { weight: 4, arbitrary: fc.constantFrom(...LAYOUT).chain((r) => fc.integer({ min: -40, max: r.size + 40 }).map((o) => BigInt(r.guestAddr + o))) },
    { weight: 3, arbitrary: tables },
    // The rings themselves: a table that is the descriptor table, data over the used ring.
    { weight: 1, arbitrary: fc.constantFrom(BigInt(r0 + l.desc), BigInt(r0 + l.avail), BigInt(r0 + l.used), BigInt(r0 + l.desc + 16)) },
    // Guard pages and the holes around them, and numbers no address can be.
    { weight: 1, arbitrary: fc.constantFrom(...LAYOUT.flatMap((r) => [r.guestAddr - 4096, r.guestAddr - 1, r.guestAddr + r.size, r.guestAddr + r.size + 4095]).map(BigInt)) },
    { weight: 1, arbitrary: fc.constantFrom(0n, 2n ** 32n + 0x10000n, 2n ** 53n - 1n, 2n ** 53n, 2n ** 63n, 2n ** 64n - 16n, 2n ** 64n - 1n) },
    { weight: 1, arbitrary: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }) },
  );
}

function lenArb(): fc.Arbitrary<number> {
  return fc.oneof(
    { weight: 4, arbitrary: fc.nat(0x300) },
    { weight: 2, arbitrary: fc.constantFrom(0, 1, 15, 16, 17, 32, 48, 128, 0x1000, 0x8000, 0x10000, 0x18000) },
    { weight: 1, arbitrary: fc.constantFrom(0x7fffffff, 0x80000000, 0xfffffff0, 0xffffffff) },
    { weight: 1, arbitrary: fc.integer({ min: 0, max: 0xffffffff }) },
  );
}

function descArb(size: number, tableLen: number): fc.Arbitrary<Desc> {
  return fc.record({
    addr: addrArb(size),
    len: fc.oneof(lenArb(), fc.integer({ min: 1, max: Math.max(tableLen, size) + 1 }).map((k) => 16 * k)),
    flags: fc.oneof(
      { weight: 6, arbitrary: fc.constantFrom(0, NEXT, NEXT, WRITE, WRITE | NEXT, WRITE | NEXT, IND) },
      { weight: 1, arbitrary: fc.integer({ min: 0, max: 7 }) },
      { weight: 1, arbitrary: fc.integer({ min: 0, max: 0xffff }) },
    ),
    next: fc.oneof(
      { weight: 6, arbitrary: fc.nat(Math.max(size, tableLen) - 1) },
      { weight: 1, arbitrary: fc.constantFrom(size, tableLen, 0xffff) },
      { weight: 1, arbitrary: fc.nat(0xffff) },
    ),
  });
}

const offsetArb = fc.oneof(
  { weight: 6, arbitrary: fc.nat(0x400) },
  { weight: 1, arbitrary: fc.constantFrom(-1, -4, -8, 0x7fffffff, 0xffffffff, 2 ** 32, 2 ** 53 - 1, Number.MAX_SAFE_INTEGER) },
  { weight: 1, arbitrary: fc.integer({ min: -0x10000, max: 0x20000 }) },
);

const opArb: fc.Arbitrary<ChainOp> = fc.record({
  op: fc.constantFrom('read', 'write', 'int', 'setInt', 'slice'),
  side: fc.constantFrom<Side>('r', 'w'),
  offset: offsetArb,
  len: fc.oneof(fc.nat(0x200), fc.constantFrom(-1, 0, 0x10000, 2 ** 32)),
  width: fc.constantFrom(1, 2, 4, 8),
});

export const chainInputArb: fc.Arbitrary<ChainInput> = fc.constantFrom(...SIZES).chain((size) =>
  fc.record({
    size: fc.constant(size),
    deviceIndirect: fc.boolean(),
    maxIndirect: fc.constantFrom(4, 8, 1024),
    table: fc.array(descArb(size, DRIVER_MAX_INDIRECT), { minLength: size, maxLength: size }),
    tables: fc.array(fc.array(descArb(size, DRIVER_MAX_INDIRECT), { minLength: DRIVER_MAX_INDIRECT, maxLength: DRIVER_MAX_INDIRECT }), { maxLength: Math.min(size, 4) }),
    heads: fc.array(fc.oneof({ weight: 8, arbitrary: fc.nat(size - 1) }, { weight: 1, arbitrary: fc.nat(0xffff) }), { maxLength: size }),
    availIdx: fc.option(fc.oneof(fc.nat(size + 2), fc.nat(0xffff)), { freq: 8 }),
    ops: fc.array(opArb, { maxLength: 12 }),
  }),
);

/**
 * Counts translations (the chain walk's per-descriptor work) and throws past `cap`, so a
 * walk that would loop for ever fails the input instead of hanging the test run.
 */
function countTranslations(memory: GuestMemory): { calls: number; cap: number } {
  const counter = { calls: 0, cap: Infinity };
  const count = (): void => {
    if (++counter.calls > 2 * counter.cap + 16) throw new Error(`a pop made over ${2 * counter.cap + 16} translations: no end in sight`);
  };
  const translate = memory.translate.bind(memory);
  const translateOne = memory.translateOne.bind(memory);
  memory.translate = (a, l, out) => {
    count();
    return translate(a, l, out);
  };
  memory.translateOne = (a, l) => {
    count();
    return translateOne(a, l);
  };
  return counter;
}

/** Applies an accessor call, checking what it returns. */
function applyOp(c: DescriptorChain, o: ChainOp): void {
  const buf = new Uint8Array(Math.max(0, Math.min(o.len, 0x10000)));
  buf.fill(0xa5);
  switch (o.op) {
    case 'read':
      const got = c.read(o.offset, buf);
      check(got >= 0 && got <= buf.length, `read() returned ${got}`);
      return;
    case 'write':
      const put = c.write(o.offset, buf);
      check(put >= 0 && put <= buf.length, `write() returned ${put}`);
      return;
    case 'int': {
      const v = o.width === 1 ? c.readU8(o.offset) : o.width === 2 ? c.readU16(o.offset) : o.width === 4 ? c.readU32(o.offset) : c.readU64(o.offset);
      check(Number.isInteger(v), `read a non-integer ${v}`);
      // Past either end the bytes read as zeros.
      if (o.offset >= c.readableLength || o.offset + o.width <= 0) check(v === 0, `read ${v} past the end`);
      c.readU64Big(o.offset);
      c.readI32(o.offset);
      return;
    }
    case 'setInt':
      if (o.width === 1) c.writeU8(o.offset, 0x5c);
      else if (o.width === 2) c.writeU16(o.offset, 0x5c5c);
      else if (o.width === 4) c.writeU32(o.offset, 0x5c5c5c5c);
      else {
        c.writeU64(o.offset, 2 ** 53 - 1);
        c.writeU64Big(o.offset, 2n ** 64n - 1n);
      }
      return;
    case 'slice': {
      const out: Segment[] = [];
      const ok = o.side === 'r' ? c.sliceReadable(o.offset, o.len, out) : c.sliceWritable(o.offset, o.len, out);
      const total = o.side === 'r' ? c.readableLength : c.writableLength;
      check(ok === (o.offset >= 0 && o.len >= 0 && o.offset + o.len <= total && Number.isSafeInteger(o.offset + o.len)), `slice(${o.offset}, ${o.len}) of ${total} bytes gave ${ok}`);
      let n = 0;
      for (const s of out) n += s.length;
      check(n === (ok ? o.len : 0), `slice covers ${n} bytes`);
    }
  }
}

export function makeChainTarget(ram: GuardedGuestRam): FuzzTarget<ChainInput> {
  const memory = ram.memory;
  const counter = countTranslations(memory);
  const r0 = ram.regions[0]!;
  return {
    name: 'chain',
    arbitrary: chainInputArb,
    run(input) {
      const features = new Set<string>();
      for (const r of ram.regions) ram.host.fill(0, r.fileOffset, r.fileOffset + r.size);
      const l = ringLayout(input.size);
      const driver = new DriverQueue<number>({
        size: input.size, indirect: true, maxIndirect: DRIVER_MAX_INDIRECT,
        area: { buf: ram.host.buffer as ArrayBuffer, offset: ram.host.byteOffset + r0.fileOffset, length: l.total, guestAddr: r0.guestAddr, userAddr: r0.userAddr },
      });
      const device = new DeviceQueue(0);
      device.size = input.size;
      device.indirect = input.deviceIndirect;
      device.maxIndirect = input.maxIndirect;
      expect(device.setAddresses(memory, driver.ringAddresses)).to.equal(true);

      input.table.forEach((d, i) => driver.writeRawDescriptor(i, d.addr, d.len, d.flags, d.next));
      input.tables.forEach((t, slot) => t.forEach((d, j) => driver.writeRawIndirect(slot, j, d.addr, d.len, d.flags, d.next)));
      for (const h of input.heads) driver.publishRawHead(h);
      if (input.availIdx !== null) driver.writeRawAvailIdx(input.availIdx);
      else driver.kick();

      const { n, expected } = expectedPops(memory, driver.guestRingAddresses, input.size, input.deviceIndirect, input.maxIndirect);
      const cap = 2 * (input.size + Math.max(input.maxIndirect, input.size)) + 2;
      counter.cap = cap;
      for (let k = 0; k < input.size + 2; k++) {
        counter.calls = 0;
        const got = device.pop();
        check(counter.calls <= cap, () => `pop ${k} made ${counter.calls} translations (cap ${cap})`);
        counter.calls = 0; // the checks below translate too
        const exp = expected[k];
        if (exp === undefined) {
          check(got.kind === 'empty', () => `pop ${k}: ${got.kind}, expected empty`);
          continue;
        }
        if (exp === 'bad-head') {
          check(got.kind === 'bad' && got.error === 'head-out-of-range', `pop ${k}: expected head-out-of-range`);
          features.add('bad:head-out-of-range');
          continue;
        }
        if ('error' in exp) {
          expect(got.kind === 'bad' ? got.error : got.kind, `pop ${k}`).to.equal(exp.error);
          features.add(`bad:${exp.error}`);
          continue;
        }
        check(got.kind === 'chain', () => `pop ${k}: ${got.kind === 'bad' ? got.error : got.kind}, expected a chain`);
        const c = got.chain;
        check(sameSegments(c.readable, segsFor(memory, exp.r)), `pop ${k}: readable segments differ from the reference`);
        check(sameSegments(c.writable, segsFor(memory, exp.w)), `pop ${k}: writable segments differ from the reference`);
        for (const s of [...c.readable, ...c.writable]) check(ram.contains(s), 'a segment outside every guest region');
        features.add(`chain:${c.readable.length > 0 ? 'r' : ''}${c.writable.length > 0 ? 'w' : ''}:${Math.min(c.readable.length + c.writable.length, 4)}`);
        if (input.ops.length === 0) continue;
        const before = ram.snapshot();
        for (const o of input.ops) applyOp(c, o);
        const changed = ram.changedOutside(before, c.writable.map((s) => ram.fileRangeOf(s)));
        check(changed.length === 0, () => `bytes written outside the writable segments at memfd offsets ${changed.join(',')}`);
        // The writes may have hit the rings or a table a later pop reads (a guest can ask
        // for that): put memory back so the reference model still holds.
        ram.host.set(before);
      }
      counter.cap = Infinity;
      expect(ram.changedCanaries(), 'canaries between the regions (memfd offsets)').to.deep.equal([]);

      if (n > input.size || expected.includes('bad-head')) {
        expect(device.broken).to.equal(true);
        features.add(`broken:${device.brokenReason}`);
        expect(device.pop().kind).to.equal('empty');
        return features;
      }
      expect(device.broken).to.equal(false);
      // The next well-formed request is served: data from R0 and R1, reply into R2 (a
      // one-descriptor ring without indirect tables has room for the reply only).
      const oneDesc = input.size === 1 && !input.deviceIndirect;
      const readable = oneDesc ? [] : [{ addr: LAYOUT[1]!.guestAddr - 8, len: 24 }];
      const writable = [{ addr: LAYOUT[2]!.guestAddr + 100, len: 50 }];
      const head = driver.add(readable, writable, 7, input.deviceIndirect);
      expect(head).to.be.at.least(0);
      driver.kick();
      const got = device.pop();
      expect(got.kind, JSON.stringify(got.kind === 'bad' ? got.error : got.kind)).to.equal('chain');
      if (got.kind !== 'chain') return features;
      expect(got.chain.head).to.equal(head);
      expect(got.chain.readableLength).to.equal(oneDesc ? 0 : 24);
      expect(got.chain.readable).to.have.length(oneDesc ? 0 : 2);
      expect(got.chain.writableLength).to.equal(50);
      expect(device.push(head, 50)).to.equal(true);
      device.flush();
      const done = driver.poll().filter((x) => x.token === 7);
      expect(done.map((x) => x.len)).to.deep.equal([50]);
      return features;
    },
  };
}

describe('fuzz: split-ring descriptor chains (real guarded guest memory)', function () {
  this.timeout(120_000);
  let ram: GuardedGuestRam;
  let target: FuzzTarget<ChainInput>;
  before(() => {
    ram = new GuardedGuestRam(LAYOUT);
    target = makeChainTarget(ram);
  });
  after(() => ram?.close());
  fuzzTests(() => target);
});
