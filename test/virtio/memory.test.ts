import { expect } from 'chai';
import fc from 'fast-check';
import { GuestMemory, GuestMemoryError, type Segment } from '../../src/virtio/memory.js';
import { FakeMapping, makeMemory, readGuest, writeGuest, pattern } from './helpers.js';

const G = 0x100000;
const U = 0x7f0000000000;

function spec(guestAddr: number, size: number, userAddr: number, windowSize = 0x1000, address = 0x10000000) {
  return { guestAddr, size, userAddr, mmapOffset: 0, mapping: new FakeMapping(size, windowSize, address) };
}

describe('virtio/GuestMemory', () => {
  describe('addRegion', () => {
    it('counts regions and refuses more than maxRegions with ENOSPC', () => {
      const m = new GuestMemory(2);
      m.addRegion(spec(0, 0x1000, U));
      m.addRegion(spec(0x2000, 0x1000, U + 0x2000));
      expect(m.regionCount).to.equal(2);
      const s = spec(0x4000, 0x1000, U + 0x4000);
      expect(() => m.addRegion(s)).to.throw(GuestMemoryError).with.property('code', 'ENOSPC');
      expect(s.mapping.unmapCalls).to.equal(0);
    });

    it('refuses overlapping guest or user ranges with EEXIST', () => {
      const m = new GuestMemory(8);
      m.addRegion(spec(0x10000, 0x2000, U));
      for (const [g, u] of [
        [0x11fff, U + 0x100000], // last guest byte
        [0xf800, U + 0x100000], // covers start
        [0xf001, U + 0x100000], // covers the first guest byte
        [0x40000, U + 0x1fff], // last user byte
        [0x40000, U - 0x1000 + 1],
      ] as Array<[number, number]>) {
        const err = (() => {
          try {
            m.addRegion(spec(g, 0x1000, u));
            return null;
          } catch (e) {
            return e;
          }
        })();
        expect(err, `${g} ${u}`).to.be.instanceOf(GuestMemoryError);
        expect((err as GuestMemoryError).code).to.equal('EEXIST');
        expect((err as GuestMemoryError).errno).to.equal(17);
      }
      // Adjacent is fine.
      m.addRegion(spec(0x12000, 0x1000, U + 0x2000));
      m.addRegion(spec(0xf000, 0x1000, U - 0x1000));
      expect(m.regionCount).to.equal(3);
    });

    it('refuses malformed specs with EINVAL', () => {
      const m = new GuestMemory(8);
      const bad = [
        spec(0, 0x1000, U),
        spec(0, 0x1000, U),
        spec(0, 0x1000, U),
        spec(0, 0x1000, U),
        spec(0, 0x1000, U),
      ];
      const specs = [
        { ...bad[0]!, size: 0 },
        { ...bad[1]!, guestAddr: -1 },
        { ...bad[2]!, userAddr: 2 ** 53 },
        { ...bad[3]!, guestAddr: 2 ** 53 - 0x800 },
        { ...bad[4]!, size: 0x2000 }, // mapping shorter than the region
      ];
      for (const s of specs) {
        expect(() => m.addRegion(s), JSON.stringify({ ...s, mapping: 0 })).to.throw(GuestMemoryError).with.property('code', 'EINVAL');
      }
      const unmapped = spec(0, 0x1000, U);
      unmapped.mapping.unmap();
      expect(() => m.addRegion(unmapped)).to.throw(GuestMemoryError).with.property('code', 'EINVAL');
      expect(() => new GuestMemory(0)).to.throw(GuestMemoryError);
      expect(m.regionCount).to.equal(0);
    });
  });

  describe('translate', () => {
    const fx = () =>
      makeMemory([
        { guestAddr: G, size: 0x4000, userAddr: U, windowSize: 0x1000 },
        // adjacent in guest space, elsewhere in user space
        { guestAddr: G + 0x4000, size: 0x2000, userAddr: U + 0x100000, windowSize: 0x2000 },
        { guestAddr: 0x40000000, size: 0x3000, userAddr: U + 0x200000, windowSize: 0x10000 },
      ]);

    it('maps a range inside one window to one segment', () => {
      const { memory, mappings } = fx();
      const out: Segment[] = [];
      expect(memory.translate(G + 0x10, 0x20, out)).to.equal(true);
      expect(out).to.have.length(1);
      expect(out[0]!.buf).to.equal(mappings[0]!.windows[0]);
      expect(out[0]!.offset).to.equal(0x10);
      expect(out[0]!.length).to.equal(0x20);
      expect(out[0]!.hostAddr).to.equal(mappings[0]!.address + 0x10);
    });

    it('splits at window boundaries and at region boundaries', () => {
      const { memory, mappings } = fx();
      const out: Segment[] = [];
      expect(memory.translate(G + 0xff0, 0x20, out)).to.equal(true);
      expect(out.map((s) => [s.offset, s.length])).to.deep.equal([
        [0xff0, 0x10],
        [0, 0x10],
      ]);
      expect(out[1]!.buf).to.equal(mappings[0]!.windows[1]);
      expect(out[1]!.hostAddr).to.equal(mappings[0]!.address + 0x1000);
      out.length = 0;
      // last 0x10 of region 0 + all of region 1 (one window) + nothing more
      expect(memory.translate(G + 0x3ff0, 0x2010, out)).to.equal(true);
      expect(out.map((s) => [s.offset, s.length])).to.deep.equal([
        [0xff0, 0x10],
        [0, 0x2000],
      ]);
      expect(out[1]!.buf).to.equal(mappings[1]!.windows[0]);
    });

    it('accepts the last byte of a region and refuses one past', () => {
      const { memory } = fx();
      const out: Segment[] = [];
      expect(memory.translate(0x40000000 + 0x2fff, 1, out)).to.equal(true);
      expect(memory.translate(0x40000000 + 0x3000, 1, out)).to.equal(false);
      expect(memory.translate(0x40000000 + 0x2fff, 2, out)).to.equal(false);
      expect(memory.translate(0x40000000 - 1, 1, out)).to.equal(false);
      expect(memory.translate(G + 0x6000, 1, out)).to.equal(false);
      expect(out).to.have.length(1);
    });

    it('translateOne returns the single segment or null', () => {
      const { memory, mappings } = fx();
      const s = memory.translateOne(G + 0x1010, 0x20)!;
      expect(s.buf).to.equal(mappings[0]!.windows[1]);
      expect([s.offset, s.length, s.hostAddr]).to.deep.equal([0x10, 0x20, mappings[0]!.address + 0x1010]);
      expect(memory.translateOne(G + 0xff0, 0x10)).to.not.equal(null); // ends at the boundary
      expect(memory.translateOne(G + 0xff0, 0x11)).to.equal(null); // split
      expect(memory.translateOne(G + 0x3ff0, 0x20)).to.equal(null); // crosses regions
      expect(memory.translateOne(0x40000000 + 0x2fff, 1)).to.not.equal(null);
      expect(memory.translateOne(0x40000000 + 0x3000, 1)).to.equal(null);
      expect(memory.translateOne(G, 0)).to.equal(null);
      expect(memory.translateOne(2 ** 53, 1)).to.equal(null);
      expect(memory.translateOne(2 ** 53 - 1, 2)).to.equal(null);
    });

    it('leaves out untouched on failure, even after partial progress', () => {
      const { memory } = fx();
      const sentinel = { buf: new ArrayBuffer(1), offset: 0, length: 1, hostAddr: 0 };
      const out: Segment[] = [sentinel];
      expect(memory.translate(G + 0x100, 0x6000, out)).to.equal(false); // runs 0x100 past region 1
      expect(out).to.deep.equal([sentinel]);
    });

    it('treats len 0 as success with no segments, even unmapped', () => {
      const { memory } = fx();
      const out: Segment[] = [];
      expect(memory.translate(G, 0, out)).to.equal(true);
      expect(memory.translate(0x123, 0, out)).to.equal(true);
      expect(out).to.have.length(0);
    });

    it('rejects negatives, non-integers, numbers >= 2^53 and overflowing sums', () => {
      const { memory } = fx();
      const out: Segment[] = [];
      for (const [a, l] of [
        [-1, 1],
        [G, -1],
        [G + 0.5, 1],
        [G, 1.5],
        [2 ** 53, 1],
        [2 ** 64, 1],
        [G, 2 ** 53],
        [2 ** 53 - 1, 2],
        [Number.NaN, 1],
        [G, Number.POSITIVE_INFINITY],
      ]) {
        expect(memory.translate(a!, l!, out), `${a} ${l}`).to.equal(false);
        expect(memory.translateUser(a!, l!, out), `${a} ${l}`).to.equal(false);
      }
      expect(out).to.have.length(0);
    });

    it('translates user addresses and converts them to guest addresses', () => {
      const { memory, mappings } = fx();
      const out: Segment[] = [];
      expect(memory.translateUser(U + 0x100000 + 0x10, 0x10, out)).to.equal(true);
      expect(out[0]!.buf).to.equal(mappings[1]!.windows[0]);
      expect(out[0]!.offset).to.equal(0x10);
      // user ranges of regions 0 and 1 are not adjacent: crossing fails
      expect(memory.translateUser(U + 0x3ff0, 0x20, out)).to.equal(false);
      expect(memory.userToGuest(U + 0x100000 + 0x10)).to.equal(G + 0x4010);
      expect(memory.userToGuest(U + 0x4000)).to.equal(-1);
      expect(memory.userToGuest(-5)).to.equal(-1);
      expect(memory.guestToUser(G + 0x4010)).to.equal(U + 0x100010);
    });

    it('round-trips bytes across windows and regions', () => {
      const { memory } = fx();
      const data = pattern(0x5000, 7);
      writeGuest(memory, G + 0x800, data);
      expect(readGuest(memory, G + 0x800, 0x5000)).to.deep.equal(data);
    });
  });

  describe('removeRegion / clear', () => {
    it('unmaps the matching region only and forgets it', () => {
      const { memory, mappings } = makeMemory([
        { guestAddr: G, size: 0x2000, userAddr: U, windowSize: 0x1000 },
        { guestAddr: G + 0x10000, size: 0x2000, userAddr: U + 0x10000, windowSize: 0x1000 },
      ]);
      const out: Segment[] = [];
      expect(memory.translate(G + 0x10, 1, out)).to.equal(true); // primes the last-hit cache
      expect(memory.removeRegion(G, 0x2000, U + 1)).to.equal(false);
      expect(memory.removeRegion(G, 0x1000, U)).to.equal(false);
      expect(memory.removeRegion(G, 0x2000, U)).to.equal(true);
      expect(mappings[0]!.unmapCalls).to.equal(1);
      expect(mappings[1]!.unmapCalls).to.equal(0);
      expect(memory.translate(G + 0x10, 1, out)).to.equal(false);
      expect(memory.translateUser(U + 0x10, 1, out)).to.equal(false);
      expect(memory.translate(G + 0x10010, 1, out)).to.equal(true);
      expect(memory.regionCount).to.equal(1);
      memory.clear();
      expect(mappings[1]!.unmapCalls).to.equal(1);
      expect(memory.regionCount).to.equal(0);
      expect(memory.translate(G + 0x10010, 1, out)).to.equal(false);
    });

    it('keeps regions removed while pinned mapped (but untranslatable) until the last pin goes', () => {
      const { memory, mappings } = makeMemory([
        { guestAddr: G, size: 0x2000, userAddr: U, windowSize: 0x1000 },
        { guestAddr: G + 0x10000, size: 0x2000, userAddr: U + 0x10000, windowSize: 0x1000 },
      ]);
      const a = memory.pin();
      const b = memory.pin();
      expect(memory.pinCount).to.equal(2);
      expect(memory.removeRegion(G, 0x2000, U)).to.equal(true);
      memory.clear();
      expect(memory.regionCount).to.equal(0);
      expect(memory.translate(G + 0x10010, 1, [])).to.equal(false);
      expect(mappings.map((m) => m.unmapCalls)).to.deep.equal([0, 0]);
      a();
      a(); // a second call of the same release does nothing
      expect(memory.pinCount).to.equal(1);
      expect(mappings.map((m) => m.unmapCalls)).to.deep.equal([0, 0]);
      b();
      expect(memory.pinCount).to.equal(0);
      expect(mappings.map((m) => m.unmapCalls)).to.deep.equal([1, 1]);
      // Unpinned, removal unmaps at once again.
      const { memory: m2, mappings: maps2 } = makeMemory([{ guestAddr: G, size: 0x2000, userAddr: U, windowSize: 0x1000 }]);
      m2.pin()();
      m2.clear();
      expect(maps2[0]!.unmapCalls).to.equal(1);
    });

    it('refuses to translate into a region unmapped behind its back', () => {
      const { memory, mappings } = makeMemory([{ guestAddr: G, size: 0x2000, userAddr: U, windowSize: 0x1000 }]);
      mappings[0]!.unmap();
      expect(memory.translate(G, 1, [])).to.equal(false);
    });
  });

  describe('property: agrees with a byte-level reference over many regions', () => {
    it('translate == reference', () => {
      // Up to 20 regions (exercises the binary search) of 1..8 pages, random gaps.
      const layoutArb = fc.array(fc.record({ gap: fc.integer({ min: 0, max: 3 }), pages: fc.integer({ min: 1, max: 8 }), win: fc.constantFrom(0x1000, 0x3000, 0x10000) }), { minLength: 1, maxLength: 20 });
      fc.assert(
        fc.property(layoutArb, fc.array(fc.tuple(fc.nat(0x200000), fc.nat(0x6000)), { minLength: 1, maxLength: 30 }), (layout, probes) => {
          const memory = new GuestMemory(32);
          const owner: Array<{ start: number; end: number; m: FakeMapping; win: number }> = [];
          let g = 0x1000;
          // Insert in scrambled order to exercise sorting.
          const specs = layout.map((l) => {
            g += l.gap * 0x1000;
            const s = { guestAddr: g, size: l.pages * 0x1000, userAddr: U + g, mmapOffset: 0, mapping: new FakeMapping(l.pages * 0x1000, l.win, 0x5000000 + g) };
            g += l.pages * 0x1000;
            return s;
          });
          for (let i = specs.length - 1; i >= 0; i -= 2) memory.addRegion(specs[i]!);
          for (let i = specs.length % 2 === 0 ? 0 : 1; i < specs.length; i += 2) memory.addRegion(specs[i]!);
          for (const s of specs) owner.push({ start: s.guestAddr, end: s.guestAddr + s.size, m: s.mapping, win: s.mapping.windows[0]!.byteLength });
          for (const [a, len] of probes) {
            const out: Segment[] = [];
            const ok = memory.translate(a, len, out);
            // reference: every byte mapped?
            let mapped = true;
            for (let b = a; b < a + len && mapped; b += 1) {
              if (!owner.some((o) => b >= o.start && b < o.end)) mapped = false;
              // skip ahead to speed up
              const o = owner.find((x) => b >= x.start && b < x.end);
              if (o) b = Math.min(o.end, a + len) - 1;
            }
            if (ok !== mapped) return false;
            if (!ok) {
              if (out.length !== 0) return false;
              continue;
            }
            let at = a;
            for (const s of out) {
              const o = owner.find((x) => at >= x.start && at < x.end)!;
              const off = at - o.start;
              const w = o.m.windows[Math.floor(off / o.win)]!;
              if (s.buf !== w || s.offset !== off % o.win || s.hostAddr !== o.m.address + off) return false;
              if (s.length <= 0 || s.offset + s.length > w.byteLength) return false;
              at += s.length;
            }
            if (at !== a + len) return false;
            if (len > 0 && memory.userToGuest(U + a) !== a) return false;
          }
          return true;
        }),
        { numRuns: 300 },
      );
    });
  });
});
