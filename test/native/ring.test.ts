import { expect } from 'chai';
import { openSync, closeSync } from 'node:fs';
import { native } from '../../src/native/index.js';
import { nativeError } from './helpers.js';

// Reference vring_need_event() from the virtio spec.
function needEvent(event: number, newIdx: number, oldIdx: number): boolean {
  return ((newIdx - event - 1) & 0xffff) < ((newIdx - oldIdx) & 0xffff);
}

describe('native: fence and publishIdx', () => {
  it('fence() is callable', () => {
    native.fence();
  });

  it('eventIdx mode: stores the index and follows vring_need_event, incl. wraparound', () => {
    const ring = new ArrayBuffer(64);
    const view = new DataView(ring);
    const cases: Array<[number, number, number]> = [
      // [event, oldIdx, newIdx]
      [0, 0, 1],
      [1, 0, 1],
      [5, 3, 6],
      [6, 3, 6],
      [2, 3, 6],
      [65535, 65534, 2],
      [1, 65534, 2],
      [2, 65534, 2],
      [65533, 65534, 2],
      [100, 0, 0],
    ];
    for (const [event, oldIdx, newIdx] of cases) {
      view.setUint16(8, event, true);
      const got = native.publishIdx(ring, 2, newIdx, oldIdx, ring, 8, true, -1);
      expect(got, `event ${event} old ${oldIdx} new ${newIdx}`).to.equal(needEvent(event, newIdx, oldIdx));
      expect(view.getUint16(2, true)).to.equal(newIdx);
    }
    // unmasked counters behave as their u16 values
    view.setUint16(8, 0, true);
    expect(native.publishIdx(ring, 2, 65536 + 1, 65536, ring, 8, true, -1)).to.equal(true);
    expect(view.getUint16(2, true)).to.equal(1);
  });

  it('flags mode: notifies unless bit 0 is set', () => {
    const idx = new ArrayBuffer(4);
    const flags = new ArrayBuffer(4);
    const fv = new DataView(flags);
    fv.setUint16(0, 0, true);
    expect(native.publishIdx(idx, 2, 9, 8, flags, 0, false, -1)).to.equal(true);
    fv.setUint16(0, 1, true);
    expect(native.publishIdx(idx, 2, 10, 9, flags, 0, false, -1)).to.equal(false);
    fv.setUint16(0, 2, true);
    expect(native.publishIdx(idx, 2, 11, 10, flags, 0, false, -1)).to.equal(true);
    expect(new DataView(idx).getUint16(2, true)).to.equal(11);
  });

  it('writes the eventfd only when notifying', () => {
    const efd = native.eventfd(0);
    const ring = new ArrayBuffer(16);
    const view = new DataView(ring);
    view.setUint16(4, 10, true);
    expect(native.publishIdx(ring, 0, 5, 4, ring, 4, true, efd)).to.equal(false);
    expect(native.eventfdRead(efd)).to.equal(0);
    view.setUint16(4, 4, true);
    expect(native.publishIdx(ring, 0, 5, 4, ring, 4, true, efd)).to.equal(true);
    expect(native.eventfdRead(efd)).to.equal(1);
    native.close(efd);
  });

  it('works on mapped guest memory and refuses it once unmapped', () => {
    const fd = native.memfdCreate('ring', 4096);
    const m = native.mmap(fd, 0, 4096, true);
    const window = m.windows[0]!;
    expect(native.publishIdx(window, 100, 1, 0, window, 200, false, -1)).to.equal(true);
    expect(new DataView(window).getUint16(100, true)).to.equal(1);
    m.unmap();
    expect(() => native.publishIdx(window, 100, 2, 1, window, 200, false, -1)).to.throw(RangeError);
    native.close(fd);
  });

  it('throws RangeError on bad offsets', () => {
    const buf = new ArrayBuffer(8);
    expect(() => native.publishIdx(buf, 7, 1, 0, buf, 0, true, -1)).to.throw(RangeError);
    expect(() => native.publishIdx(buf, 8, 1, 0, buf, 0, true, -1)).to.throw(RangeError);
    expect(() => native.publishIdx(buf, 0, 1, 0, buf, 8, true, -1)).to.throw(RangeError);
    expect(() => native.publishIdx(buf, -2, 1, 0, buf, 0, true, -1)).to.throw(RangeError);
    expect(() => native.publishIdx(buf, 1, 1, 0, buf, 0, true, -1)).to.throw(RangeError);
    expect(() => native.publishIdx(buf, 0, 1, 0, new ArrayBuffer(1), 0, true, -1)).to.throw(RangeError);
    expect(() => native.publishIdx(buf, 0.5, 1, 0, buf, 0, true, -1)).to.throw(RangeError);
    expect(() => native.publishIdx(buf, 0, 1, 0, buf, 0, true, -2)).to.throw(RangeError);
    expect(() => native.publishIdx(buf, 0, 1, 0, buf, 0, true, 1.5)).to.throw(RangeError);
    expect(() => native.publishIdx(buf, 0, 1, 0, buf, 0, true, 2 ** 31)).to.throw(RangeError);
  });

  it('throws TypeError on arguments of the wrong type, or missing', () => {
    const buf = new ArrayBuffer(8);
    const call = (...args: unknown[]): unknown => (native.publishIdx as (...a: unknown[]) => boolean)(...args);
    expect(() => call(new Uint8Array(buf), 0, 1, 0, buf, 0, true, -1)).to.throw(TypeError);
    expect(() => call(buf, 0, 1, 0, null, 0, true, -1)).to.throw(TypeError);
    expect(() => call(buf, '0', 1, 0, buf, 0, true, -1)).to.throw(TypeError);
    expect(() => call(buf, 0, '1', 0, buf, 0, true, -1)).to.throw(TypeError);
    expect(() => call(buf, 0, 1, 0n, buf, 0, true, -1)).to.throw(TypeError);
    expect(() => call(buf, 0, 1, 0, buf, 0, 1, -1)).to.throw(TypeError);
    expect(() => call(buf, 0, 1, 0, buf, 0, true)).to.throw(TypeError);
    expect(new DataView(buf).getUint16(0, true)).to.equal(0);
  });

  it('reports a failed eventfd write as a NativeError, after publishing', () => {
    const fd = openSync('/dev/null', 'r');
    const ring = new ArrayBuffer(8);
    try {
      expect(nativeError(() => native.publishIdx(ring, 0, 3, 2, ring, 4, false, fd)).code).to.equal('EBADF');
      expect(new DataView(ring).getUint16(0, true)).to.equal(3);
    } finally {
      closeSync(fd);
    }
  });
});
