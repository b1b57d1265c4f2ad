// Malformed rings written through DriverQueue's raw access, popped by the real DeviceQueue.
import { expect } from 'chai';
import { DeviceQueue, type PopResult } from '../../src/virtio/queue.js';
import { DriverQueue } from '../../src/virtio/driver-queue.js';
import { GuestMemory } from '../../src/virtio/memory.js';
import { VIRTQ_DESC_F_INDIRECT as IND, VIRTQ_DESC_F_NEXT as NEXT, VIRTQ_DESC_F_WRITE as WRITE } from '../../src/virtio/layout.js';
import { DATA_BASE, GUEST_BASE, REGION_SIZE, WINDOW, concat, makeRingPair, pattern, writeGuest, type RingPairOptions } from './helpers.js';

const END = GUEST_BASE + REGION_SIZE; // one past the last guest byte

function setup(o: RingPairOptions = {}) {
  const p = makeRingPair({ size: 8, indirect: true, maxIndirect: 8, ...o });
  const submit = (head: number): PopResult => {
    p.driver.publishRawHead(head);
    p.driver.kick();
    return p.device.pop();
  };
  return { ...p, submit };
}

function expectBad(r: PopResult, error: string, head?: number): void {
  expect(r.kind, JSON.stringify(r)).to.equal('bad');
  if (r.kind !== 'bad') return;
  expect(r.error).to.equal(error);
  if (head !== undefined) expect(r.head).to.equal(head);
}

function expectChain(r: PopResult) {
  expect(r.kind, JSON.stringify(r)).to.equal('chain');
  if (r.kind !== 'chain') throw new Error('not a chain');
  return r.chain;
}

describe('virtio/DeviceQueue hostile rings', () => {
  it('next >= size in the direct table: next-out-of-range', () => {
    const { driver, submit } = setup();
    driver.writeRawDescriptor(0, DATA_BASE, 16, NEXT, 8);
    expectBad(submit(0), 'next-out-of-range', 0);
  });

  it('loops in the direct table: loop-or-too-long', () => {
    const { driver, device, submit } = setup();
    driver.writeRawDescriptor(0, DATA_BASE, 16, NEXT, 0); // self loop
    expectBad(submit(0), 'loop-or-too-long');
    driver.writeRawDescriptor(1, DATA_BASE, 16, NEXT, 2);
    driver.writeRawDescriptor(2, DATA_BASE, 16, NEXT, 1);
    expectBad(submit(1), 'loop-or-too-long');
    expect(device.broken).to.equal(false);
    expect(device.badChains).to.equal(2);
  });

  it('a chain of exactly size descriptors is fine', () => {
    const { driver, submit } = setup();
    for (let i = 0; i < 8; i++) driver.writeRawDescriptor(i, DATA_BASE + i * 10, 10, i < 7 ? NEXT : 0, (i + 1) % 8);
    const c = expectChain(submit(0));
    expect(c.readableLength).to.equal(80);
    expect(c.readable).to.have.length(8);
  });

  it('device-readable after device-writable: readable-after-writable (also via a zero-length writable and across into an indirect table)', () => {
    const { driver, submit } = setup();
    driver.writeRawDescriptor(0, DATA_BASE, 16, WRITE | NEXT, 1);
    driver.writeRawDescriptor(1, DATA_BASE, 16, 0, 0);
    expectBad(submit(0), 'readable-after-writable');
    driver.writeRawDescriptor(2, DATA_BASE, 0, WRITE | NEXT, 3);
    driver.writeRawDescriptor(3, DATA_BASE, 16, 0, 0);
    expectBad(submit(2), 'readable-after-writable');
    driver.writeRawDescriptor(4, DATA_BASE, 16, WRITE | NEXT, 5);
    driver.writeRawDescriptor(5, driver.indirectTableAddr(5), 16, IND, 0);
    driver.writeRawIndirect(5, 0, DATA_BASE, 4, 0, 0);
    expectBad(submit(4), 'readable-after-writable');
  });

  it('zero-length descriptors are allowed and contribute no segment', () => {
    const { driver, submit } = setup();
    driver.writeRawDescriptor(0, 0x10, 0, NEXT, 1); // unmapped but empty
    driver.writeRawDescriptor(1, DATA_BASE, 4, NEXT, 2);
    driver.writeRawDescriptor(2, 0x10, 0, WRITE | NEXT, 3);
    driver.writeRawDescriptor(3, DATA_BASE + 64, 2, WRITE, 0);
    const c = expectChain(submit(0));
    expect(c.readable.map((s) => s.length)).to.deep.equal([4]);
    expect(c.writable.map((s) => s.length)).to.deep.equal([2]);
  });

  describe('addresses', () => {
    it('the last byte of the region is fine, one past is addr-out-of-range', () => {
      const { driver, submit } = setup();
      driver.writeRawDescriptor(0, END - 1, 1, 0, 0);
      expect(expectChain(submit(0)).readableLength).to.equal(1);
      driver.writeRawDescriptor(1, END, 1, 0, 0);
      expectBad(submit(1), 'addr-out-of-range');
      driver.writeRawDescriptor(2, END - 1, 2, WRITE, 0);
      expectBad(submit(2), 'addr-out-of-range');
      driver.writeRawDescriptor(3, GUEST_BASE - 1, 1, 0, 0);
      expectBad(submit(3), 'addr-out-of-range');
      driver.writeRawDescriptor(4, GUEST_BASE - 1, 0x1000, 0, 0);
      expectBad(submit(4), 'addr-out-of-range');
    });

    it('addr + len overflowing 2^64 or 2^53, and addresses >= 2^53: addr-out-of-range', () => {
      const { driver, submit } = setup();
      const cases: Array<[bigint, number]> = [
        [2n ** 64n - 16n, 32],
        [2n ** 64n - 1n, 1],
        [2n ** 64n - 1n, 0xffffffff],
        [2n ** 53n, 1],
        [2n ** 53n - 1n, 2],
        [2n ** 53n - 16n, 0xffffffff],
        [BigInt(GUEST_BASE) + 2n ** 32n, 1], // high word set, low word in range
        [BigInt(GUEST_BASE) + 2n ** 63n, 1],
      ];
      for (const [addr, len] of cases) {
        driver.writeRawDescriptor(0, addr, len, 0, 0);
        expectBad(submit(0), 'addr-out-of-range');
      }
    });

    it('a huge len inside mapped memory is refused without allocation blowup', () => {
      const { driver, submit } = setup();
      driver.writeRawDescriptor(0, GUEST_BASE, 0xffffffff, WRITE, 0);
      expectBad(submit(0), 'addr-out-of-range');
    });
  });

  describe('indirect tables', () => {
    it('INDIRECT without the feature: indirect-not-negotiated', () => {
      const { driver, submit } = setup({ deviceIndirect: false });
      driver.writeRawDescriptor(0, driver.indirectTableAddr(0), 16, IND, 0);
      driver.writeRawIndirect(0, 0, DATA_BASE, 4, 0, 0);
      expectBad(submit(0), 'indirect-not-negotiated');
    });

    it('table length 0, not a multiple of 16, or too large: bad-indirect-size', () => {
      const { driver, device, submit } = setup();
      for (const len of [0, 8, 15, 17, 16 * 3 + 1, 0xfffffff0, 0xffffffff]) {
        driver.writeRawDescriptor(0, driver.indirectTableAddr(0), len, IND, 0);
        expectBad(submit(0), 'bad-indirect-size');
      }
      device.maxIndirect = 4;
      driver.writeRawDescriptor(0, driver.indirectTableAddr(0), 16 * 9, IND, 0); // > max(4, size 8)
      expectBad(submit(0), 'bad-indirect-size');
      driver.writeRawDescriptor(0, driver.indirectTableAddr(0), 16 * 8, IND, 0); // = size: accepted
      for (let j = 0; j < 8; j++) driver.writeRawIndirect(0, j, DATA_BASE, 1, j < 7 ? NEXT : 0, j + 1);
      expect(expectChain(submit(0)).readableLength).to.equal(8);
    });

    it('INDIRECT together with NEXT: indirect-with-next', () => {
      const { driver, submit } = setup();
      driver.writeRawDescriptor(0, driver.indirectTableAddr(0), 16, IND | NEXT, 1);
      driver.writeRawDescriptor(1, DATA_BASE, 4, 0, 0);
      driver.writeRawIndirect(0, 0, DATA_BASE, 4, 0, 0);
      expectBad(submit(0), 'indirect-with-next');
    });

    it('INDIRECT inside a table: nested-indirect', () => {
      const { driver, submit } = setup();
      driver.writeRawDescriptor(0, driver.indirectTableAddr(0), 32, IND, 0);
      driver.writeRawIndirect(0, 0, DATA_BASE, 4, NEXT, 1);
      driver.writeRawIndirect(0, 1, driver.indirectTableAddr(1), 16, IND, 0);
      driver.writeRawIndirect(1, 0, DATA_BASE, 4, 0, 0);
      expectBad(submit(0), 'nested-indirect');
    });

    it('loops and next past the table end inside a table', () => {
      const { driver, submit } = setup();
      driver.writeRawDescriptor(0, driver.indirectTableAddr(0), 48, IND, 0);
      driver.writeRawIndirect(0, 0, DATA_BASE, 4, NEXT, 1);
      driver.writeRawIndirect(0, 1, DATA_BASE, 4, NEXT, 2);
      driver.writeRawIndirect(0, 2, DATA_BASE, 4, NEXT, 0);
      expectBad(submit(0), 'loop-or-too-long');
      driver.writeRawIndirect(0, 2, DATA_BASE, 4, NEXT, 2); // self loop
      expectBad(submit(0), 'loop-or-too-long');
      driver.writeRawIndirect(0, 2, DATA_BASE, 4, NEXT, 3); // table has 3 entries
      expectBad(submit(0), 'next-out-of-range');
      driver.writeRawIndirect(0, 2, DATA_BASE, 4, 0, 3);
      expect(expectChain(submit(0)).readableLength).to.equal(12);
    });

    it('table outside memory or crossing its end: addr-out-of-range; entries outside memory too', () => {
      const { driver, submit } = setup();
      driver.writeRawDescriptor(0, END - 16, 32, IND, 0);
      expectBad(submit(0), 'addr-out-of-range');
      driver.writeRawDescriptor(0, 2n ** 64n - 16n, 32, IND, 0);
      expectBad(submit(0), 'addr-out-of-range');
      driver.writeRawDescriptor(0, driver.indirectTableAddr(0), 16, IND, 0);
      driver.writeRawIndirect(0, 0, END, 4, 0, 0);
      expectBad(submit(0), 'addr-out-of-range');
    });

    it('direct descriptors then an indirect one are accepted; WRITE on the indirect descriptor is ignored', () => {
      const { driver, submit } = setup();
      driver.writeRawDescriptor(0, DATA_BASE, 3, NEXT, 1);
      driver.writeRawDescriptor(1, driver.indirectTableAddr(1), 32, IND | WRITE, 0);
      driver.writeRawIndirect(1, 0, DATA_BASE + 3, 5, NEXT, 1);
      driver.writeRawIndirect(1, 1, DATA_BASE + 100, 7, WRITE, 0);
      const c = expectChain(submit(0));
      expect(c.readable.map((s) => s.length)).to.deep.equal([3, 5]);
      expect(c.writable.map((s) => s.length)).to.deep.equal([7]);
    });

    it('tables split across windows or regions, or unaligned, are read correctly', () => {
      const { driver, memory, submit } = setup();
      const table = (addr: number) => {
        const b = new Uint8Array(48);
        const dv = new DataView(b.buffer);
        for (let j = 0; j < 3; j++) {
          dv.setBigUint64(16 * j, BigInt(DATA_BASE + 1000 * j), true);
          dv.setUint32(16 * j + 8, 10 + j, true);
          dv.setUint16(16 * j + 12, (j < 2 ? NEXT : 0) | (j === 2 ? WRITE : 0), true);
          dv.setUint16(16 * j + 14, j + 1, true);
        }
        writeGuest(memory, addr, b);
      };
      for (const addr of [GUEST_BASE + 3 * WINDOW - 24, DATA_BASE + 0x8002, DATA_BASE + 0x9001]) {
        table(addr);
        driver.writeRawDescriptor(0, addr, 48, IND, 0);
        const c = expectChain(submit(0));
        expect(c.readable.map((s) => s.length)).to.deep.equal([10, 11]);
        expect(c.writable.map((s) => s.length)).to.deep.equal([12]);
        expect(c.writable[0]!.offset).to.equal((DATA_BASE + 2000 - GUEST_BASE) % WINDOW);
      }
    });
  });

  it('a chain longer than 4 GiB in total is refused (loop-or-too-long)', () => {
    // 3 GiB region whose windows all alias one small buffer: only the arithmetic is real.
    const W = 1 << 20;
    const shared = new ArrayBuffer(W);
    const n = 3 * 1024 + 2;
    const mapping = { address: 0x7e0000000000, length: n * W, windows: new Array<ArrayBuffer>(n).fill(shared), mapped: true, unmap() {} };
    const memory = new GuestMemory(4);
    memory.addRegion({ guestAddr: 0, size: n * W, userAddr: 0x7e0000000000, mmapOffset: 0, mapping });
    const driver = new DriverQueue<number>({ size: 4, area: { buf: shared, offset: 0, length: W, guestAddr: 0, userAddr: 0x7e0000000000 } });
    const device = new DeviceQueue(0);
    device.size = 4;
    expect(device.setAddresses(memory, driver.ringAddresses)).to.equal(true);
    driver.writeRawDescriptor(0, W, 0xc0000000, NEXT, 1);
    driver.writeRawDescriptor(1, W, 0x40000000, WRITE, 0);
    driver.publishRawHead(0);
    driver.kick();
    expectBad(device.pop(), 'loop-or-too-long');
    driver.writeRawDescriptor(1, W, 0x3fffffff, WRITE, 0);
    driver.publishRawHead(0);
    driver.kick();
    const c = expectChain(device.pop());
    expect(c.readableLength + c.writableLength).to.equal(0xffffffff);
  });

  it('head >= size: reported once, counted, queue broken, nothing popped after', () => {
    const { driver, device, submit } = setup();
    driver.add([{ addr: DATA_BASE, len: 4 }], [], 1);
    driver.kick();
    expect(expectChain(device.pop()).readableLength).to.equal(4);
    driver.writeRawDescriptor(7, DATA_BASE, 4, 0, 0);
    driver.publishRawHead(7);
    driver.publishRawHead(8);
    driver.publishRawHead(7);
    driver.kick();
    expectChain(device.pop());
    expectBad(device.pop(), 'head-out-of-range', 8);
    expect(device.broken).to.equal(true);
    expect(device.brokenReason).to.equal('head-out-of-range');
    expect(device.badHeads).to.equal(1);
    expect(device.lastAvailIdx).to.equal(3);
    expect(device.pop().kind).to.equal('empty');
    expect(device.enableNotification()).to.equal(false);
    expect(submit(7).kind).to.equal('empty');
    device.reset();
    expect(device.broken).to.equal(false);
  });

  it('avail.idx more than size ahead: broken, pops nothing, never loops', () => {
    const { driver, device } = setup();
    driver.writeRawAvailIdx(9);
    expect(device.pop().kind).to.equal('empty');
    expect(device.broken).to.equal(true);
    expect(device.brokenReason).to.equal('avail-idx-jump');
    expect(device.lastAvailIdx).to.equal(0);
    // Moving backwards is a jump of ~65535 as well.
    const s2 = setup();
    s2.driver.writeRawAvailIdx(0xffff);
    expect(s2.device.pop().kind).to.equal('empty');
    expect(s2.device.broken).to.equal(true);
    // Exactly size is legal.
    const s3 = setup();
    for (let i = 0; i < 8; i++) s3.driver.writeRawDescriptor(i, DATA_BASE, 1, 0, 0);
    for (let i = 0; i < 8; i++) s3.driver.publishRawHead(i);
    s3.driver.kick();
    let n = 0;
    while (s3.device.pop().kind === 'chain') n++;
    expect(n).to.equal(8);
    expect(s3.device.broken).to.equal(false);
  });

  it('a bad chain does not stop the chains after it', () => {
    const { driver, device } = setup();
    const [a, b] = driver.takeRaw(2);
    driver.writeRawDescriptor(a!, END, 4, 0, 0);
    driver.publishRawHead(a!);
    driver.writeRawDescriptor(b!, DATA_BASE, 4, WRITE, 0);
    driver.publishRawHead(b!);
    const h = driver.add([{ addr: DATA_BASE, len: 2 }], [], 5);
    driver.kick();
    expectBad(device.pop(), 'addr-out-of-range', a);
    device.push(a!, 0);
    const cb = expectChain(device.pop());
    expect(cb.head).to.equal(b);
    device.push(b!, 4);
    expect(expectChain(device.pop()).head).to.equal(h);
    device.push(h, 0);
    device.flush();
    expect(driver.poll().map((c) => [c.head, c.token, c.len])).to.deep.equal([
      [a, undefined, 0],
      [b, undefined, 4],
      [h, 5, 0],
    ]);
    expect(driver.broken).to.equal(false);
  });

  it('rings unmapped under the queue: broken, no throw', () => {
    const { memory, driver, device } = setup();
    driver.add([{ addr: DATA_BASE, len: 4 }], [], 1);
    driver.kick();
    const c = expectChain(device.pop());
    memory.clear();
    expect(device.pop().kind).to.equal('empty');
    expect(device.broken).to.equal(true);
    expect(device.brokenReason).to.equal('unmapped');
    expect(device.push(c.head, 0)).to.equal(false);
    expect(device.flush()).to.equal(false);
    expect(device.enableNotification()).to.equal(false);
    device.disableNotification();
    expect(c.readU32(0)).to.equal(0);
  });

  it('the driver refuses impossible completions from a device', () => {
    const { fx, driver, device } = setup();
    driver.add([{ addr: DATA_BASE, len: 4 }], [], 1);
    driver.kick();
    const c = expectChain(device.pop());
    // Write used.ring[0] = { id: 7 (not in flight), len } and used.idx = 1 by hand.
    const u = new DataView(fx.mappings[0]!.windows[0]!, driver.layout.used);
    u.setUint32(4, 7, true);
    u.setUint16(2, 1, true);
    expect(driver.poll()).to.deep.equal([]);
    expect(driver.broken).to.equal(true);
    expect(driver.badCompletions).to.equal(1);
    expect(c.head).to.equal(0);
  });

  it('guest data is read in place (no copy at pop)', () => {
    const { memory, driver, device } = setup();
    driver.add([{ addr: DATA_BASE, len: 8 }], [], 1);
    driver.kick();
    const c = expectChain(device.pop());
    writeGuest(memory, DATA_BASE, pattern(8, 4));
    expect(concat(c.readable)).to.deep.equal(pattern(8, 4));
  });
});
