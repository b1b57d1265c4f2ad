import { expect } from 'chai';
import fc from 'fast-check';
import { DescriptorChain } from '../../src/virtio/chain.js';
import type { Segment } from '../../src/virtio/memory.js';
import { concat, pattern } from './helpers.js';

/** `total` bytes cut into segments of the lengths in `cuts` (each at most what is left), the rest in one last segment. */
function cutLengths(total: number, cuts: readonly number[]): number[] {
  const lens: number[] = [];
  let left = total;
  for (const c of cuts) {
    if (left === 0) break;
    const l = Math.min(c, left);
    lens.push(l);
    left -= l;
  }
  if (left > 0) lens.push(left);
  return lens;
}

/** Splits `bytes` into segments of the given lengths, each in its own buffer at offset 3. */
function segments(bytes: Uint8Array, lengths: number[]): Segment[] {
  const out: Segment[] = [];
  let at = 0;
  let host = 0x1000;
  for (const l of lengths) {
    const buf = new ArrayBuffer(l + 7);
    new Uint8Array(buf, 3, l).set(bytes.subarray(at, at + l));
    out.push({ buf, offset: 3, length: l, hostAddr: host });
    host += 0x10000;
    at += l;
  }
  return out;
}

describe('virtio/DescriptorChain', () => {
  const bytes = pattern(20, 1);
  const chain = () => DescriptorChain.fromSegments(5, segments(bytes, [3, 1, 6, 10]), segments(new Uint8Array(12), [1, 2, 9]));

  it('reports head and lengths', () => {
    const c = chain();
    expect(c.head).to.equal(5);
    expect(c.readableLength).to.equal(20);
    expect(c.writableLength).to.equal(12);
  });

  it('reads integers inside and across segments (little endian)', () => {
    const c = chain();
    const dv = new DataView(bytes.buffer);
    for (let o = 0; o + 4 <= 20; o++) {
      expect(c.readU32(o), `u32@${o}`).to.equal(dv.getUint32(o, true));
      expect(c.readI32(o), `i32@${o}`).to.equal(dv.getInt32(o, true));
    }
    for (let o = 0; o + 2 <= 20; o++) expect(c.readU16(o), `u16@${o}`).to.equal(dv.getUint16(o, true));
    for (let o = 0; o < 20; o++) expect(c.readU8(o)).to.equal(bytes[o]);
    for (let o = 0; o + 8 <= 20; o++) {
      const big = dv.getBigUint64(o, true);
      expect(c.readU64Big(o)).to.equal(big);
      expect(c.readU64(o)).to.equal(big < 2n ** 53n ? Number(big) : -1);
    }
    // Random access order (cursor moving backwards).
    expect(c.readU32(16)).to.equal(dv.getUint32(16, true));
    expect(c.readU32(1)).to.equal(dv.getUint32(1, true));
  });

  it('reads zeros past the end and never throws', () => {
    const c = chain();
    expect(c.readU8(20)).to.equal(0);
    expect(c.readU8(-1)).to.equal(0);
    expect(c.readU32(18)).to.equal(bytes[18]! | (bytes[19]! << 8));
    expect(c.readU32(1e9)).to.equal(0);
    expect(c.readU16(Number.NaN)).to.equal(0);
    expect(c.read(25, new Uint8Array(4))).to.equal(0);
    const d = new Uint8Array(10);
    expect(c.read(15, d)).to.equal(5);
    expect(d.subarray(0, 5)).to.deep.equal(bytes.subarray(15));
  });

  it('u64 values >= 2^53 read as -1', () => {
    const b = new Uint8Array(16);
    const dv = new DataView(b.buffer);
    dv.setBigUint64(0, 2n ** 53n - 1n, true);
    dv.setBigUint64(8, 2n ** 53n, true);
    const c = DescriptorChain.fromSegments(0, segments(b, [5, 11]), []);
    expect(c.readU64(0)).to.equal(2 ** 53 - 1);
    expect(c.readU64(8)).to.equal(-1);
  });

  it('copies in and out across segments', () => {
    const c = chain();
    for (let o = 0; o <= 20; o++) {
      for (const n of [0, 1, 4, 20]) {
        const d = new Uint8Array(n);
        const got = c.read(o, d);
        expect(got).to.equal(Math.max(0, Math.min(n, 20 - o)));
        expect(d.subarray(0, got)).to.deep.equal(bytes.subarray(o, o + got));
      }
    }
    const src = pattern(12, 9);
    expect(c.write(0, src)).to.equal(12);
    expect(concat(c.writable)).to.deep.equal(src);
    expect(c.write(10, new Uint8Array([1, 2, 3, 4]))).to.equal(2);
    expect(c.write(12, new Uint8Array([1]))).to.equal(0);
  });

  it('writes integers across segments', () => {
    const c = chain();
    c.writeU8(0, 0x1ff);
    c.writeU16(1, 0xbeef); // inside segment 1 (len 2)
    c.writeU32(2, 0x11223344); // straddles
    c.writeU64(4, 2 ** 40 + 5);
    c.writeU64(5, -1); // two's complement: all ones at 5..12 (11,12 dropped)
    const w = concat(c.writable);
    expect(Array.from(w.subarray(0, 5))).to.deep.equal([0xff, 0xef, 0x44, 0x33, 0x05]);
    expect(Array.from(w.subarray(5))).to.deep.equal([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
    c.writeU32(20, 1); // past the end: ignored
    c.writeU64Big(4, 0x0102030405060708n);
    expect(Array.from(concat(c.writable).subarray(4, 12))).to.deep.equal([8, 7, 6, 5, 4, 3, 2, 1]);
  });

  it('slices zero-copy sub-segments', () => {
    const c = chain();
    const out: Segment[] = [];
    expect(c.sliceReadable(2, 9, out)).to.equal(true);
    expect(out.map((s) => s.length)).to.deep.equal([1, 1, 6, 1]);
    expect(out[0]!.offset).to.equal(3 + 2);
    expect(out[0]!.hostAddr).to.equal(0x1000 + 2);
    expect(out[1]).to.equal(c.readable[1]); // whole segment reused
    expect(concat(out)).to.deep.equal(bytes.subarray(2, 11));
    const before = out.length;
    expect(c.sliceReadable(15, 6, out)).to.equal(false);
    expect(c.sliceWritable(-1, 1, out)).to.equal(false);
    expect(c.sliceWritable(12, 0, out)).to.equal(true);
    expect(out.length).to.equal(before);
    expect(c.sliceWritable(0, 12, out)).to.equal(true);
    expect(out.length).to.equal(before + 3);
  });

  it('does not throw when its memory was unmapped', () => {
    const c = chain();
    for (const s of [...c.readable, ...c.writable]) structuredClone(s.buf, { transfer: [s.buf] });
    expect(c.readU32(0)).to.equal(0);
    expect(c.readU32(2)).to.equal(0);
    expect(c.read(0, new Uint8Array(8))).to.equal(0);
    expect(c.write(0, new Uint8Array(8))).to.equal(0);
    c.writeU32(0, 1);
    c.writeU8(0, 1);
  });

  it('property: copies of any size (small ones byte by byte, larger ones by subarray) equal a flat copy, both ways', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 600 }),
        fc.array(fc.integer({ min: 1, max: 300 }), { minLength: 1, maxLength: 8 }),
        fc.nat(650),
        fc.integer({ min: 0, max: 400 }),
        (total, cuts, off, len) => {
          const b = pattern(total, total);
          const lens = cutLengths(total, cuts);
          const c = DescriptorChain.fromSegments(0, segments(b, lens), segments(new Uint8Array(total), lens));
          const d = new Uint8Array(len);
          const n = c.read(off, d);
          const want = b.subarray(Math.min(off, total), Math.min(off + len, total));
          expect(n).to.equal(want.length);
          expect(d.subarray(0, n)).to.deep.equal(want);
          expect(d.subarray(n).every((x) => x === 0)).to.equal(true);
          const src = pattern(len, len + 7);
          const w = c.write(off, src);
          expect(w).to.equal(want.length);
          const out = concat(c.writable);
          expect(out.subarray(off, off + w)).to.deep.equal(src.subarray(0, w));
          expect(out.subarray(0, Math.min(off, total)).every((x) => x === 0)).to.equal(true);
          expect(out.subarray(off + w).every((x) => x === 0)).to.equal(true);
        },
      ),
      { numRuns: 500 },
    );
  });

  it('property: reads equal a flat copy for any segmentation', () => {
    fc.assert(
      fc.property(
        fc.uint8Array({ minLength: 1, maxLength: 64 }).chain((b) =>
          fc.tuple(fc.constant(b), fc.array(fc.integer({ min: 1, max: 9 }), { minLength: 1, maxLength: 20 })),
        ),
        fc.nat(70),
        ([b, cuts], off) => {
          const lens = cutLengths(b.length, cuts);
          const c = DescriptorChain.fromSegments(0, segments(b, lens), []);
          const padded = new Uint8Array(b.length + 8);
          padded.set(b);
          const dv = new DataView(padded.buffer);
          if (off < b.length) {
            expect(c.readU32(off)).to.equal(dv.getUint32(off, true));
            expect(c.readU16(off)).to.equal(dv.getUint16(off, true));
          } else {
            expect(c.readU32(off)).to.equal(0);
          }
          const d = new Uint8Array(10);
          const n = c.read(off, d);
          expect(d.subarray(0, n)).to.deep.equal(b.subarray(off, off + 10));
        },
      ),
      { numRuns: 500 },
    );
  });
});
