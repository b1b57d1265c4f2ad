// Property-based tests: random (mostly hostile) descriptor tables in front of the real
// DeviceQueue, checked against a slow reference walker; and random workloads driven
// only by the notifications the rings ask for (no lost wakeups, every token once).
import { expect } from 'chai';
import fc from 'fast-check';
import { DeviceQueue, type PopResult } from '../../src/virtio/queue.js';
import { DriverQueue } from '../../src/virtio/driver-queue.js';
import { VIRTQ_DESC_F_INDIRECT as IND, VIRTQ_DESC_F_NEXT as NEXT, VIRTQ_DESC_F_WRITE as WRITE } from '../../src/virtio/layout.js';
import { makeMemory, type Fixture } from './helpers.js';
import { expectedPops, sameSegments, segsFor, type Desc } from './reference-walker.js';

// Three regions: A and B adjacent in guest space (small windows, so ranges split often),
// C elsewhere. The rings live in window 0 of A.
const REGIONS = [
  { guestAddr: 0x10000, size: 0x10000, userAddr: 0x7f0000000000, windowSize: 0x2000 },
  { guestAddr: 0x20000, size: 0x8000, userAddr: 0x7f0000100000, windowSize: 0x1000 },
  { guestAddr: 0x100000, size: 0x4000, userAddr: 0x7f0000200000, windowSize: 0x4000 },
];
const MAX_INDIRECT = 8;

function setup(size: number, deviceIndirect: boolean, eventIdx = false): { fx: Fixture; driver: DriverQueue<number>; device: DeviceQueue } {
  const fx = makeMemory(REGIONS);
  const buf = fx.mappings[0]!.windows[0]!;
  const driver = new DriverQueue<number>({
    size,
    area: { buf, offset: 0, length: buf.byteLength, guestAddr: REGIONS[0]!.guestAddr, userAddr: REGIONS[0]!.userAddr },
    indirect: true,
    maxIndirect: MAX_INDIRECT,
    eventIdx,
  });
  const device = new DeviceQueue(0);
  device.size = size;
  device.indirect = deviceIndirect;
  device.eventIdx = eventIdx;
  device.maxIndirect = MAX_INDIRECT;
  if (!device.setAddresses(fx.memory, driver.ringAddresses)) throw new Error('setAddresses');
  return { fx, driver, device };
}

function addrArb(size: number): fc.Arbitrary<bigint> {
  const tableBase = REGIONS[0]!.guestAddr + DriverQueue.layoutFor(size, true, MAX_INDIRECT).indirect;
  return fc.oneof(
    fc.constantFrom(...REGIONS).chain((r) => fc.integer({ min: -40, max: r.size + 40 }).map((o) => BigInt(r.guestAddr + o))),
    fc.integer({ min: 0, max: size - 1 }).chain((s) => fc.integer({ min: -4, max: 40 }).map((o) => BigInt(tableBase + s * 16 * MAX_INDIRECT + o))),
    fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
    fc.constantFrom(0n, 2n ** 53n, 2n ** 53n - 1n, 2n ** 64n - 1n, 2n ** 64n - 16n, 2n ** 32n + 0x10000n),
  );
}

function wildDescArb(size: number): fc.Arbitrary<Desc> {
  return fc.record({
    addr: addrArb(size),
    len: fc.oneof(
      fc.constantFrom(0, 1, 2, 15, 16, 17, 32, 48, 64, 128, 0x1000, 0x2000, 0x7fff, 0xffffffff, 0x80000000, 0xfffffff0),
      fc.nat(0x20000),
      fc.integer({ min: 0, max: 0xffffffff }),
    ),
    flags: fc.oneof(fc.integer({ min: 0, max: 7 }), fc.integer({ min: 0, max: 0xffff })),
    next: fc.oneof(fc.nat(size - 1), fc.nat(MAX_INDIRECT + 1), fc.nat(0xffff)),
  });
}

/** Mostly well-formed data descriptors (so that chains get long enough to go wrong late). */
function plausibleDescArb(size: number): fc.Arbitrary<Desc> {
  return fc.record({
    addr: fc.constantFrom(...REGIONS).chain((r) => fc.integer({ min: 0, max: r.size - 1 }).map((o) => BigInt(r.guestAddr + o))),
    len: fc.oneof(fc.nat(0x40), fc.nat(0x3000)),
    flags: fc.constantFrom(0, NEXT, NEXT, WRITE, WRITE | NEXT, WRITE | NEXT),
    next: fc.oneof(fc.nat(Math.min(size, MAX_INDIRECT) - 1), fc.nat(Math.max(size, MAX_INDIRECT))),
  });
}

/** Descriptors pointing at one of the reserved indirect tables. */
function indirectDescArb(size: number): fc.Arbitrary<Desc> {
  const tableBase = REGIONS[0]!.guestAddr + DriverQueue.layoutFor(size, true, MAX_INDIRECT).indirect;
  return fc.record({
    addr: fc.tuple(fc.nat(Math.min(size, 4) - 1), fc.oneof(fc.constant(0), fc.constant(0), fc.integer({ min: -3, max: 3 }))).map(
      ([s, o]) => BigInt(tableBase + s * 16 * MAX_INDIRECT + o),
    ),
    len: fc.oneof(fc.integer({ min: 1, max: MAX_INDIRECT }).map((k) => 16 * k), fc.integer({ min: 0, max: 16 * MAX_INDIRECT + 17 })),
    flags: fc.oneof(fc.constantFrom(IND, IND, IND | WRITE), fc.integer({ min: 0, max: 7 }).map((f) => f | IND)),
    next: fc.nat(size),
  });
}

function descArb(size: number): fc.Arbitrary<Desc> {
  return fc.oneof(
    { weight: 6, arbitrary: plausibleDescArb(size) },
    { weight: 2, arbitrary: indirectDescArb(size) },
    { weight: 2, arbitrary: wildDescArb(size) },
  );
}

interface Scenario {
  size: number;
  deviceIndirect: boolean;
  table: Desc[];
  indirect: Desc[][]; // tables for slots 0..k
  heads: number[];
  availIdx: number | null; // raw override of avail.idx
}

const scenarioArb: fc.Arbitrary<Scenario> = fc.constantFrom(1, 2, 4, 8, 16).chain((size) =>
  fc.record({
    size: fc.constant(size),
    deviceIndirect: fc.boolean(),
    table: fc.array(descArb(size), { minLength: size, maxLength: size }),
    indirect: fc.array(fc.array(descArb(size), { minLength: MAX_INDIRECT, maxLength: MAX_INDIRECT }), { maxLength: Math.min(size, 4) }),
    heads: fc.array(fc.oneof({ weight: 8, arbitrary: fc.nat(size - 1) }, { weight: 1, arbitrary: fc.nat(0xffff) }), { maxLength: size }),
    availIdx: fc.option(fc.oneof(fc.nat(size + 2), fc.nat(0xffff)), { freq: 8 }),
  }),
);

describe('virtio property tests', function () {
  this.timeout(120000);

  it('pop never throws, terminates, stays inside memory and agrees with a reference walker', () => {
    fc.assert(
      fc.property(scenarioArb, (sc) => {
        const { fx, driver, device } = setup(sc.size, sc.deviceIndirect);
        const memory = fx.memory;
        sc.table.forEach((d, i) => driver.writeRawDescriptor(i, d.addr, d.len, d.flags, d.next));
        sc.indirect.forEach((t, slot) => t.forEach((d, j) => driver.writeRawIndirect(slot, j, d.addr, d.len, d.flags, d.next)));
        for (const h of sc.heads) driver.publishRawHead(h);
        if (sc.availIdx !== null) driver.writeRawAvailIdx(sc.availIdx);
        else driver.kick();

        const windows = new Map<ArrayBuffer, { base: number; w: number; i: number; addr: number }>();
        fx.mappings.forEach((m) => m.windows.forEach((b, i) => windows.set(b, { base: 0, w: m.windows[0]!.byteLength, i, addr: m.address })));

        // Model of the queue level.
        const { n, expected } = expectedPops(memory, driver.guestRingAddresses, sc.size, sc.deviceIndirect, MAX_INDIRECT);

        const results: PopResult[] = [];
        for (let k = 0; k < sc.size + 3; k++) results.push(device.pop());
        let k = 0;
        for (; k < results.length; k++) {
          const got = results[k]!;
          const exp = k < expected.length ? expected[k]! : 'empty';
          if (exp === 'empty') {
            expect(got.kind).to.equal('empty');
            continue;
          }
          if (exp === 'bad-head') {
            expect(got.kind === 'bad' && got.error === 'head-out-of-range').to.equal(true);
            expect(device.broken).to.equal(true);
            continue;
          }
          if ('error' in exp) {
            expect(got.kind === 'bad' ? got.error : got.kind, `pop ${k}`).to.equal(exp.error);
            continue;
          }
          expect(got.kind).to.equal('chain');
          if (got.kind !== 'chain') continue;
          const c = got.chain;
          // Inside memory, consistent lengths.
          for (const [segs, len] of [[c.readable, c.readableLength], [c.writable, c.writableLength]] as const) {
            let sum = 0;
            for (const s of segs) {
              const win = windows.get(s.buf);
              expect(win, 'segment buffer is a mapping window').to.not.equal(undefined);
              expect(s.length).to.be.greaterThan(0);
              expect(s.offset).to.be.at.least(0);
              expect(s.offset + s.length).to.be.at.most(s.buf.byteLength);
              expect(s.hostAddr).to.equal(win!.addr + win!.i * win!.w + s.offset);
              sum += s.length;
            }
            expect(sum).to.equal(len);
          }
          expect(c.readableLength + c.writableLength).to.be.at.most(0xffffffff);
          expect(sameSegments(c.readable, segsFor(memory, exp.r)), 'readable segments').to.equal(true);
          expect(sameSegments(c.writable, segsFor(memory, exp.w)), 'writable segments').to.equal(true);
        }
        if (n > sc.size) {
          expect(device.broken).to.equal(true);
          expect(device.brokenReason).to.equal('avail-idx-jump');
        }
      }),
      { numRuns: 3000 },
    );
  });

  it('random workloads driven only by notifications complete every request exactly once', () => {
    type Op =
      | { op: 'add'; n: number; indirect: boolean; len: number }
      | { op: 'device' }
      | { op: 'complete'; pick: number[] }
      | { op: 'irq' };
    const opArb: fc.Arbitrary<Op> = fc.oneof(
      fc.record({ op: fc.constant('add' as const), n: fc.integer({ min: 1, max: 4 }), indirect: fc.boolean(), len: fc.integer({ min: 1, max: 0x3000 }) }),
      fc.constant({ op: 'device' as const }),
      fc.record({ op: fc.constant('complete' as const), pick: fc.array(fc.nat(31), { maxLength: 6 }) }),
      fc.constant({ op: 'irq' as const }),
    );
    fc.assert(
      fc.property(fc.constantFrom(2, 4, 8), fc.boolean(), fc.array(opArb, { maxLength: 200 }), fc.nat(0xffff), (size, eventIdx, ops, start) => {
        const { driver, device, fx } = setup(size, true, eventIdx);
        // Start the indexes somewhere random (as after many requests) to cover wraparound.
        driver.startAt(start);
        device.lastAvailIdx = start;
        expect(device.setAddresses(fx.memory, driver.ringAddresses)).to.equal(true);
        expect(device.usedIdx).to.equal(start);

        let token = 0;
        const expectedLen = new Map<number, number>();
        const completed = new Set<number>();
        const deviceHeld: Array<{ head: number; len: number }> = [];
        let kickPending = false;
        let callPending = false;
        const base = REGIONS[1]!.guestAddr;

        const runDevice = () => {
          kickPending = false;
          device.disableNotification();
          do {
            for (let r = device.pop(); r.kind !== 'empty'; r = device.pop()) {
              expect(r.kind).to.equal('chain');
              if (r.kind === 'chain') deviceHeld.push({ head: r.chain.head, len: r.chain.writableLength });
            }
          } while (device.enableNotification());
        };
        const complete = (pick: number[]) => {
          let any = false;
          for (const p of pick) {
            if (deviceHeld.length === 0) break;
            const [e] = deviceHeld.splice(p % deviceHeld.length, 1);
            device.push(e!.head, e!.len);
            any = true;
          }
          if (any && device.flush()) callPending = true;
        };
        const irq = () => {
          callPending = false;
          driver.disableCallbacks();
          do {
            for (const c of driver.poll()) {
              expect(completed.has(c.token!)).to.equal(false);
              expect(c.len).to.equal(expectedLen.get(c.token!));
              completed.add(c.token!);
            }
          } while (driver.enableCallbacks());
        };

        // A started device looks at the ring once (arming avail_event at its index).
        runDevice();
        for (const o of ops) {
          if (o.op === 'add') {
            let added = false;
            for (let k = 0; k < o.n; k++) {
              const t = token;
              const wlen = (o.len % 0x100) + 1;
              const h = driver.add([{ addr: base + (t % 7) * 0x100, len: o.len }], [{ addr: base + 0x6000, len: wlen }], t, o.indirect);
              if (h < 0) break;
              expectedLen.set(t, wlen);
              token++;
              added = true;
            }
            if (added && driver.kick()) kickPending = true;
          } else if (o.op === 'device') {
            if (kickPending) runDevice();
          } else if (o.op === 'complete') {
            complete(o.pick);
          } else if (callPending) {
            irq();
          }
        }
        // Drain, acting only on notifications (plus the device finishing its work).
        for (let round = 0; round < 1000; round++) {
          if (kickPending) runDevice();
          if (deviceHeld.length > 0) complete(deviceHeld.map((_, i) => i));
          if (callPending) irq();
          if (!kickPending && !callPending && deviceHeld.length === 0) break;
        }
        expect(completed.size, 'every request completed (no lost wakeup)').to.equal(token);
        expect(driver.numFree).to.equal(size);
        expect(device.broken).to.equal(false);
        expect(driver.broken).to.equal(false);
      }),
      { numRuns: 1000 },
    );
  });
});
