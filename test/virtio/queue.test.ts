// Round trips: a real DriverQueue and a real DeviceQueue over the same guest memory.
import { expect } from 'chai';
import { native } from '../../src/native/index.js';
import { DeviceQueue, type PopResult } from '../../src/virtio/queue.js';
import { DriverQueue } from '../../src/virtio/driver-queue.js';
import type { DescriptorChain } from '../../src/virtio/chain.js';
import { jsRingOps, nativeRingOpsAvailable, type RingOps } from '../../src/virtio/ring-ops.js';
import { availEventOffset, usedEventOffset } from '../../src/virtio/layout.js';
import { GuestMemory, type Segment } from '../../src/virtio/memory.js';
import { DATA_BASE, GUEST_BASE, USER_BASE, WINDOW, concat, makeMemory, makeRingPair, pattern, readGuest, writeGuest } from './helpers.js';

function chainOf(r: PopResult): DescriptorChain {
  if (r.kind !== 'chain') throw new Error(`expected a chain, got ${JSON.stringify(r)}`);
  return r.chain;
}

const opsList: Array<[string, RingOps]> = [['js ring ops', jsRingOps]];
if (nativeRingOpsAvailable()) opsList.push(['native ring ops', native as unknown as RingOps]);

for (const [opsName, ops] of opsList) {
  describe(`virtio/DeviceQueue + DriverQueue round trip (${opsName})`, () => {
    for (const indirect of [false, true]) {
      it(`passes ${indirect ? 'indirect' : 'direct'} chains with the right segments both ways`, () => {
        const { memory, driver, device } = makeRingPair({ ops, indirect, size: 16 });
        const hdr = pattern(16, 1);
        const body = pattern(3000, 2);
        writeGuest(memory, DATA_BASE, hdr);
        writeGuest(memory, DATA_BASE + 0x1000, body);
        const head = driver.add(
          [{ addr: DATA_BASE, len: 16 }, { addr: DATA_BASE + 0x1000, len: 3000 }],
          [{ addr: DATA_BASE + 0x2000, len: 100 }, { addr: DATA_BASE + 0x3000, len: 1 }],
          42,
        );
        expect(head).to.be.at.least(0);
        expect(driver.numFree).to.equal(indirect ? 15 : 12);
        // Not visible before kick.
        expect(device.pop().kind).to.equal('empty');
        driver.kick();
        const c = chainOf(device.pop());
        expect(device.pop().kind).to.equal('empty');
        expect(c.head).to.equal(head);
        expect(c.readableLength).to.equal(3016);
        expect(c.writableLength).to.equal(101);
        expect(c.readable.map((s) => s.length)).to.deep.equal([16, 3000]);
        expect(c.writable.map((s) => s.length)).to.deep.equal([100, 1]);
        const all = new Uint8Array(3016);
        expect(c.read(0, all)).to.equal(3016);
        expect(all.subarray(0, 16)).to.deep.equal(hdr);
        expect(all.subarray(16)).to.deep.equal(body);
        expect(c.readU32(14)).to.equal((hdr[14]! | (hdr[15]! << 8) | (body[0]! << 16) | (body[1]! << 24)) >>> 0);
        const reply = pattern(101, 3);
        expect(c.write(0, reply)).to.equal(101);
        expect(readGuest(memory, DATA_BASE + 0x2000, 100)).to.deep.equal(reply.subarray(0, 100));
        expect(readGuest(memory, DATA_BASE + 0x3000, 1)).to.deep.equal(reply.subarray(100));

        expect(device.push(c.head, 101)).to.equal(true);
        expect(driver.poll()).to.deep.equal([]); // not published yet
        device.flush();
        expect(driver.poll()).to.deep.equal([{ head, token: 42, len: 101 }]);
        expect(driver.numFree).to.equal(16);
        expect(driver.inFlight).to.equal(0);
      });
    }

    it('completes out of order and recycles descriptors', () => {
      const { driver, device } = makeRingPair({ ops, size: 8 });
      const heads: number[] = [];
      for (let t = 0; t < 4; t++) heads.push(driver.add([{ addr: DATA_BASE + t * 64, len: 8 }], [{ addr: DATA_BASE + 0x1000 + t * 64, len: 8 }], t));
      expect(driver.add([{ addr: DATA_BASE, len: 8 }], [], 99)).to.equal(-1); // 8 descriptors used
      driver.kick();
      const chains = [0, 1, 2, 3].map(() => chainOf(device.pop()));
      for (const i of [2, 0, 3, 1]) device.push(chains[i]!.head, i * 10);
      device.flush();
      expect(driver.poll().map((c) => [c.token, c.len])).to.deep.equal([
        [2, 20],
        [0, 0],
        [3, 30],
        [1, 10],
      ]);
      expect(driver.numFree).to.equal(8);
    });

    it('wraps u16 indexes over more than 65536 requests (mixed direct and indirect)', () => {
      const { driver, device } = makeRingPair({ ops, size: 8, indirect: true, maxIndirect: 4 });
      let next = 0;
      let done = 0;
      const total = 70000;
      while (done < total) {
        let added = 0;
        while (next < total) {
          const ind = next % 3 === 0;
          const h = driver.add([{ addr: DATA_BASE + (next % 7) * 16, len: 16 }], [{ addr: DATA_BASE + 0x1000, len: 1 + (next % 5) }], next, ind);
          if (h < 0) break;
          next++;
          added++;
        }
        driver.kick();
        let popped = 0;
        for (let r = device.pop(); r.kind !== 'empty'; r = device.pop()) {
          const c = chainOf(r);
          device.push(c.head, c.writableLength);
          popped++;
        }
        expect(popped).to.equal(added);
        device.flush();
        for (const c of driver.poll()) {
          expect(c.token).to.equal(done);
          expect(c.len).to.equal(1 + (done % 5));
          done++;
        }
      }
      expect(device.lastAvailIdx).to.equal(total & 0xffff);
      expect(driver.lastUsedIdx).to.equal(total & 0xffff);
      expect(device.broken).to.equal(false);
      expect(driver.broken).to.equal(false);
    });

    it('EVENT_IDX: signals calls only when the driver asked (used_event)', () => {
      const { driver, device } = makeRingPair({ ops, size: 16, eventIdx: true });
      const add = (t: number) => driver.add([{ addr: DATA_BASE, len: 4 }], [], t);
      for (let t = 0; t < 6; t++) add(t);
      driver.kick();
      const heads = [0, 1, 2, 3, 4, 5].map(() => chainOf(device.pop()).head);
      // used_event = 0: the first completion signals.
      device.push(heads[0]!, 0);
      expect(device.flush()).to.equal(true);
      // Driver has not consumed: used_event still 0, already crossed.
      device.push(heads[1]!, 0);
      expect(device.flush()).to.equal(false);
      // Nothing pushed: nothing published.
      expect(device.flush()).to.equal(false);
      expect(driver.poll()).to.have.length(2); // writes used_event = 2
      device.push(heads[2]!, 0);
      device.push(heads[3]!, 0);
      expect(device.flush()).to.equal(true); // batch crossing 2 signals once
      // Driver turns callbacks off: used_event goes stale.
      driver.disableCallbacks();
      expect(driver.poll()).to.have.length(2);
      device.push(heads[4]!, 0);
      expect(device.flush()).to.equal(false);
      // Re-enabling reports that completions are already waiting.
      expect(driver.enableCallbacks()).to.equal(true);
      expect(driver.poll()).to.have.length(1);
      expect(driver.enableCallbacks()).to.equal(false);
      device.push(heads[5]!, 0);
      expect(device.flush()).to.equal(true);
    });

    it('EVENT_IDX: the driver kicks only when the device asked (avail_event)', () => {
      const { driver, device } = makeRingPair({ ops, size: 16, eventIdx: true });
      const add = (t: number) => driver.add([{ addr: DATA_BASE, len: 4 }], [], t);
      // avail_event = 0 initially: the first publication crosses it.
      add(0);
      expect(driver.kick()).to.equal(true);
      device.disableNotification(); // no-op with EVENT_IDX: avail_event stays 0
      add(1);
      expect(driver.kick()).to.equal(false); // device is busy, has not re-armed
      expect(driver.kick()).to.equal(false); // nothing new
      expect(device.pop().kind).to.equal('chain');
      expect(device.pop().kind).to.equal('chain');
      expect(device.pop().kind).to.equal('empty');
      expect(device.enableNotification()).to.equal(false); // avail_event = 2
      add(2);
      add(3);
      expect(driver.kick()).to.equal(true);
      // Buffers arriving between the last pop and re-arming are reported.
      expect(device.pop().kind).to.equal('chain');
      expect(device.pop().kind).to.equal('chain');
      add(4);
      expect(driver.kick()).to.equal(false);
      expect(device.enableNotification()).to.equal(true);
      expect(device.pop().kind).to.equal('chain');
      expect(device.enableNotification()).to.equal(false);
    });

    it('without EVENT_IDX: NO_NOTIFY and NO_INTERRUPT flags suppress kicks and calls', () => {
      const { driver, device } = makeRingPair({ ops, size: 16 });
      driver.add([{ addr: DATA_BASE, len: 4 }], [], 0);
      expect(driver.kick()).to.equal(true);
      device.disableNotification();
      driver.add([{ addr: DATA_BASE, len: 4 }], [], 1);
      expect(driver.kick()).to.equal(false);
      const a = chainOf(device.pop());
      const b = chainOf(device.pop());
      expect(device.enableNotification()).to.equal(false);
      driver.add([{ addr: DATA_BASE, len: 4 }], [], 2);
      expect(driver.kick()).to.equal(true);
      device.push(a.head, 0);
      expect(device.flush()).to.equal(true);
      driver.disableCallbacks();
      device.push(b.head, 0);
      expect(device.flush()).to.equal(false);
      expect(driver.enableCallbacks()).to.equal(true);
      expect(driver.poll().map((c) => c.token)).to.deep.equal([0, 1]);
    });

    it('a chain over a multi-window, multi-region buffer yields one segment per window', () => {
      const fx = makeMemory([
        { guestAddr: GUEST_BASE, size: 4 * WINDOW, userAddr: USER_BASE, windowSize: WINDOW },
        { guestAddr: GUEST_BASE + 4 * WINDOW, size: 2 * WINDOW, userAddr: USER_BASE + 0x40000000, windowSize: WINDOW },
      ]);
      const buf = fx.mappings[0]!.windows[0]!;
      const driver = new DriverQueue<number>({ size: 8, area: { buf, offset: 0, length: buf.byteLength, guestAddr: GUEST_BASE, userAddr: USER_BASE }, ops, indirect: true });
      const device = new DeviceQueue(3, ops);
      device.size = 8;
      device.indirect = true;
      expect(device.setAddresses(fx.memory, driver.ringAddresses)).to.equal(true);
      // From the last 100 bytes of window 2 of region 0 to 100 bytes into region 1's second window.
      const start = GUEST_BASE + 3 * WINDOW - 100;
      const len = 100 + WINDOW + WINDOW + 100;
      const data = pattern(len, 5);
      writeGuest(fx.memory, start, data);
      driver.add([{ addr: start, len }], [{ addr: GUEST_BASE + 5 * WINDOW + 1000, len: 10 }], 1);
      driver.kick();
      const c = chainOf(device.pop());
      expect(c.readable.map((s) => s.length)).to.deep.equal([100, WINDOW, WINDOW, 100]);
      expect(c.readable[0]!.buf).to.equal(fx.mappings[0]!.windows[2]);
      expect(c.readable[1]!.buf).to.equal(fx.mappings[0]!.windows[3]);
      expect(c.readable[2]!.buf).to.equal(fx.mappings[1]!.windows[0]);
      expect(c.readable[3]!.buf).to.equal(fx.mappings[1]!.windows[1]);
      expect(concat(c.readable)).to.deep.equal(data);
      expect(c.readU32(98)).to.equal(new DataView(data.buffer).getUint32(98, true));
      expect(c.writable[0]!.hostAddr).to.equal(fx.mappings[1]!.address + WINDOW + 1000);
    });

    it('survives a stop (GET_VRING_BASE) and a restart on a new DeviceQueue', () => {
      const { memory, driver, device } = makeRingPair({ ops, size: 8, indirect: true });
      for (let t = 0; t < 5; t++) driver.add([{ addr: DATA_BASE, len: 4 }], [{ addr: DATA_BASE + 64, len: 4 }], t);
      driver.kick();
      const first = [0, 1, 2].map(() => chainOf(device.pop()));
      for (const c of first) device.push(c.head, 1);
      device.flush();
      const base = device.lastAvailIdx; // GET_VRING_BASE
      expect(base).to.equal(3);
      const again = new DeviceQueue(0, ops);
      again.size = 8;
      again.indirect = true;
      again.lastAvailIdx = base; // SET_VRING_BASE
      expect(again.setAddresses(memory, driver.ringAddresses)).to.equal(true);
      expect(again.usedIdx).to.equal(3);
      const rest = [chainOf(again.pop()), chainOf(again.pop())];
      expect(again.pop().kind).to.equal('empty');
      for (const c of rest) again.push(c.head, 2);
      again.flush();
      expect(driver.poll().map((c) => [c.token, c.len])).to.deep.equal([
        [0, 1],
        [1, 1],
        [2, 1],
        [3, 2],
        [4, 2],
      ]);
    });

    it('setAddresses refuses bad sizes and rings outside one window or misaligned', () => {
      const { memory, driver } = makeRingPair({ ops, size: 16 });
      const a = driver.ringAddresses;
      const q = new DeviceQueue(0, ops);
      for (const size of [0, 3, 65536, 32768 * 2, 1.5]) {
        q.size = size;
        expect(q.setAddresses(memory, a), `size ${size}`).to.equal(false);
        expect(q.ready).to.equal(false);
      }
      q.size = 16;
      expect(q.setAddresses(memory, a)).to.equal(true);
      expect(q.ready).to.equal(true);
      // used ring crossing a window boundary
      expect(q.setAddresses(memory, { ...a, used: USER_BASE + WINDOW - 8 })).to.equal(false);
      expect(q.ready).to.equal(false);
      // misaligned
      expect(q.setAddresses(memory, { ...a, used: a.used + 2 })).to.equal(false);
      expect(q.setAddresses(memory, { ...a, avail: a.avail + 1 })).to.equal(false);
      // unmapped / guest-physical instead of user
      expect(q.setAddresses(memory, { ...a, desc: GUEST_BASE })).to.equal(false);
      expect(q.setAddresses(memory, { ...a, desc: USER_BASE + 4 * 1024 * 1024 - 16 })).to.equal(false);
      expect(q.setAddresses(memory, a)).to.equal(true);
      q.size = 32; // SET_VRING_NUM after SET_VRING_ADDR: addresses must be given again
      expect(q.ready).to.equal(false);
      expect(q.pop().kind).to.equal('empty');
      expect(q.push(0, 0)).to.equal(false);
      expect(q.flush()).to.equal(false);
      q.reset();
      expect(q.lastAvailIdx).to.equal(0);
    });

    it('push refuses heads outside the ring', () => {
      const { driver, device } = makeRingPair({ ops, size: 8 });
      expect(device.push(8, 0)).to.equal(false);
      expect(device.push(-1, 0)).to.equal(false);
      expect(device.pending).to.equal(0);
      expect(device.flush()).to.equal(false);
      expect(driver.poll()).to.deep.equal([]);
    });

    it('writes avail_event and reads used_event at the spec offsets', () => {
      const { fx, driver, device } = makeRingPair({ ops, size: 16, eventIdx: true });
      const win = new DataView(fx.mappings[0]!.windows[0]!);
      const l = driver.layout;
      driver.add([{ addr: DATA_BASE, len: 1 }], [], 0);
      driver.kick();
      chainOf(device.pop());
      device.enableNotification();
      expect(win.getUint16(l.used + availEventOffset(16), true)).to.equal(1);
      expect(win.getUint16(l.used + 4 + 8 * 16, true)).to.equal(1);
      driver.enableCallbacks();
      device.push(0, 0);
      device.flush();
      driver.poll();
      expect(win.getUint16(l.avail + usedEventOffset(16), true)).to.equal(1);
      expect(win.getUint16(l.avail + 4 + 2 * 16, true)).to.equal(1);
    });

    if (opsName === 'native ring ops') {
      it('signals real eventfds for kicks and calls as EVENT_IDX decides', () => {
        const kickFd = native.eventfd(0);
        const callFd = native.eventfd(0);
        try {
          const { driver, device } = makeRingPair({ ops, size: 16, eventIdx: true, kickFd, callFd });
          driver.add([{ addr: DATA_BASE, len: 4 }], [], 0);
          driver.add([{ addr: DATA_BASE, len: 4 }], [], 1);
          driver.kick();
          expect(native.eventfdRead(kickFd)).to.equal(1);
          driver.add([{ addr: DATA_BASE, len: 4 }], [], 2);
          driver.kick();
          expect(native.eventfdRead(kickFd)).to.equal(0);
          const heads: number[] = [];
          for (let r = device.pop(); r.kind === 'chain'; r = device.pop()) heads.push(r.chain.head);
          expect(heads).to.have.length(3);
          device.push(heads[0]!, 0);
          device.push(heads[1]!, 0);
          device.flush();
          expect(native.eventfdRead(callFd)).to.equal(1);
          device.push(heads[2]!, 0);
          device.flush();
          expect(native.eventfdRead(callFd)).to.equal(0);
          expect(driver.poll()).to.have.length(3);
        } finally {
          native.close(kickFd);
          native.close(callFd);
        }
      });
    }
  });
}

describe('virtio/DeviceQueue over native mappings', function () {
  if (!nativeRingOpsAvailable() || typeof native.memfdCreate !== 'function') {
    it.skip('needs the native addon');
    return;
  }
  it('round-trips over a memfd mapping with native publishIdx', () => {
    const size = 1 << 20;
    const fd = native.memfdCreate('virtio-test', size);
    const mapping = native.mmap(fd, 0, size, true);
    native.close(fd);
    const memory = new GuestMemory(4);
    memory.addRegion({ guestAddr: 0, size, userAddr: mapping.address, mmapOffset: 0, mapping });
    try {
      const w = mapping.windows[0]!;
      const driver = new DriverQueue<string>({ size: 64, area: { buf: w, offset: 0, length: 0x20000, guestAddr: 0, userAddr: mapping.address }, eventIdx: true, indirect: true });
      const device = new DeviceQueue(0);
      device.size = 64;
      device.eventIdx = true;
      device.indirect = true;
      expect(device.setAddresses(memory, driver.ringAddresses)).to.equal(true);
      writeGuest(memory, 0x40000, pattern(512, 11));
      driver.add([{ addr: 0x40000, len: 512 }], [{ addr: 0x30000, len: 1 }], 'x');
      driver.kick();
      const c = chainOf(device.pop());
      expect(c.readable[0]!.hostAddr).to.equal(mapping.address + 0x40000);
      expect(concat(c.readable as Segment[])).to.deep.equal(pattern(512, 11));
      c.writeU8(0, 7);
      device.push(c.head, 1);
      device.flush();
      expect(driver.poll()).to.deep.equal([{ head: c.head, token: 'x', len: 1 }]);
      expect(readGuest(memory, 0x30000, 1)[0]).to.equal(7);
    } finally {
      memory.clear();
    }
    expect(mapping.mapped).to.equal(false);
  });
});
