// The write buffer of open files: the extent set against a byte-map model, and random
// writes/truncations/fills over a stored "base" against a plain array, with thresholds low
// enough that buffers move between memory and temporary files mid-sequence.
import { expect } from 'chai';
import fc from 'fast-check';
import { readdirSync } from 'node:fs';
import { ExtentSet, MemoryBudget, WriteBuffer } from '../../src/backends/posix/write-buffer.js';
import { TmpDir, patternBytes } from '../support/tmp.js';

type Op =
  | { kind: 'write'; offset: number; length: number; seed: number }
  | { kind: 'truncate'; size: number }
  | { kind: 'fill'; offset: number; length: number }
  | { kind: 'spill' };

const op: fc.Arbitrary<Op> = fc.oneof(
  { weight: 5, arbitrary: fc.record({ kind: fc.constant('write' as const), offset: fc.integer({ min: 0, max: 3000 }), length: fc.integer({ min: 0, max: 700 }), seed: fc.integer({ min: 1, max: 1000 }) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('truncate' as const), size: fc.integer({ min: 0, max: 3500 }) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('fill' as const), offset: fc.integer({ min: 0, max: 3000 }), length: fc.integer({ min: 0, max: 900 }) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('spill' as const) }) },
);

describe('posix write buffer', () => {
  let tmp: TmpDir;
  before(() => {
    tmp = new TmpDir('vhost-s3-wbuf-');
  });
  after(() => tmp.remove());

  describe('ExtentSet', () => {
    it('matches a byte-map model under adds and truncations', () => {
      const action = fc.oneof(
        fc.tuple(fc.constant('add' as const), fc.integer({ min: 0, max: 200 }), fc.integer({ min: 0, max: 60 })),
        fc.tuple(fc.constant('cut' as const), fc.integer({ min: 0, max: 260 }), fc.constant(0)),
      );
      fc.assert(
        fc.property(fc.array(action, { maxLength: 40 }), fc.integer({ min: 0, max: 260 }), fc.integer({ min: 0, max: 80 }), (actions, qs, ql) => {
          const set = new ExtentSet();
          const model = new Array<boolean>(300).fill(false);
          for (const [kind, a, b] of actions) {
            if (kind === 'add') {
              set.add(a, a + b);
              for (let i = a; i < a + b; i++) model[i] = true;
            } else {
              set.truncate(a);
              for (let i = a; i < model.length; i++) model[i] = false;
            }
          }
          // Ranges are sorted, disjoint and not adjacent.
          const r = set.ranges();
          for (let i = 0; i < r.length; i++) {
            expect(r[i]![0]).to.be.below(r[i]![1]);
            if (i > 0) expect(r[i]![0]).to.be.above(r[i - 1]![1]);
          }
          const fromRanges = new Array<boolean>(300).fill(false);
          for (const [s, e] of r) for (let i = s; i < e; i++) fromRanges[i] = true;
          expect(fromRanges).to.deep.equal(model);
          expect(set.bytes).to.equal(model.filter(Boolean).length);
          // Queries.
          const qe = qs + ql;
          const gaps = new Array<boolean>(300).fill(false);
          for (const [s, e] of set.gaps(qs, qe)) for (let i = s; i < e; i++) gaps[i] = true;
          const present = new Array<boolean>(300).fill(false);
          for (const [s, e] of set.present(qs, qe)) for (let i = s; i < e; i++) present[i] = true;
          for (let i = 0; i < 300; i++) {
            const inside = i >= qs && i < qe;
            expect(gaps[i], `gap ${i}`).to.equal(inside && !model[i]);
            expect(present[i], `present ${i}`).to.equal(inside && model[i]);
          }
          expect(set.covers(qs, qe)).to.equal(model.slice(qs, qe).every(Boolean));
        }),
      );
    });
  });

  describe('WriteBuffer', () => {
    it('matches a plain array under random writes, truncations, fills and spills', async () => {
      await fc.assert(
        fc.asyncProperty(fc.integer({ min: 0, max: 2500 }), fc.array(op, { maxLength: 25 }), fc.constantFrom(512, 1024, 1 << 20), async (baseSize, ops, threshold) => {
          const base = patternBytes(77, baseSize);
          const budget = new MemoryBudget(2048);
          const buf = new WriteBuffer({ budget, spillThreshold: threshold, tempDir: tmp.path }, baseSize);
          let model = base.slice();
          try {
            for (const o of ops) {
              if (o.kind === 'write') {
                const data = patternBytes(o.seed, o.length);
                await buf.write(o.offset, data);
                // A write of nothing does not extend the file (pwrite(2)).
                if (o.length > 0 && o.offset + o.length > model.length) {
                  const m = new Uint8Array(o.offset + o.length);
                  m.set(model);
                  model = m;
                }
                if (o.length > 0) model.set(data, o.offset);
              } else if (o.kind === 'truncate') {
                await buf.truncate(o.size);
                const m = new Uint8Array(o.size);
                m.set(model.subarray(0, o.size));
                model = m;
              } else if (o.kind === 'fill') {
                // Bytes of the stored object: only taken where nothing local is (and below baseLimit).
                await buf.fill(o.offset, base.subarray(Math.min(o.offset, base.length), Math.min(o.offset + o.length, base.length)));
              } else await buf.spill();
              expect(budget.used).to.be.at.most(2048);
              expect(buf.size).to.equal(model.length);
            }
            // The view: local extents, then the base under the gaps, zeros elsewhere.
            const view = new Uint8Array(buf.size);
            await buf.readLocal(0, view);
            for (const [s, e] of buf.baseGaps()) view.set(base.subarray(s, e), s);
            expect(Buffer.from(view).equals(Buffer.from(model))).to.equal(true);
            // After filling every gap, the local copy alone is the file.
            for (const [s, e] of buf.baseGaps()) await buf.fill(s, base.subarray(s, e));
            expect(buf.complete).to.equal(true);
            expect(Buffer.from(await buf.contents()).equals(Buffer.from(model))).to.equal(true);
          } finally {
            await buf.close();
          }
          expect(budget.used).to.equal(0);
        }),
        { numRuns: 150 },
      );
    });

    it('concurrent writes that cross the threshold share one spill and lose nothing', async () => {
      const fds = (): number => readdirSync('/proc/self/fd').length;
      const before = fds();
      const budget = new MemoryBudget(1 << 20);
      const buf = new WriteBuffer({ budget, spillThreshold: 16 * 1024, tempDir: tmp.path }, 0);
      const parts = Array.from({ length: 32 }, (_, i) => patternBytes(i + 1, 1024));
      await Promise.all(parts.map((p, i) => buf.write(i * 1024, p)));
      expect(buf.spilled).to.equal(true);
      const out = new Uint8Array(32 * 1024);
      await buf.readLocal(0, out);
      for (let i = 0; i < 32; i++) expect(Buffer.from(out.subarray(i * 1024, (i + 1) * 1024)).equals(Buffer.from(parts[i]!)), `part ${i}`).to.equal(true);
      await buf.close();
      expect(budget.used).to.equal(0);
      expect(fds(), 'temporary files left open').to.equal(before);
    });

    it('sizes the first allocation to the first write (rounded to 4 KiB), then grows by doubling', async () => {
      const budget = new MemoryBudget(1 << 20);
      const buf = new WriteBuffer({ budget, spillThreshold: 512 * 1024, tempDir: tmp.path }, 0);
      await buf.write(0, patternBytes(1, 4096));
      expect(buf.memoryBytes).to.equal(4096);
      expect(budget.used).to.equal(4096);
      await buf.write(4096, patternBytes(2, 100));
      expect(buf.memoryBytes).to.equal(64 * 1024);
      await buf.write(64 * 1024, patternBytes(3, 1));
      expect(buf.memoryBytes).to.equal(128 * 1024);
      const out = new Uint8Array(4196);
      await buf.readLocal(0, out);
      expect(Buffer.from(out).equals(Buffer.concat([patternBytes(1, 4096), patternBytes(2, 100)]))).to.equal(true);
      await buf.close();
      const odd = new WriteBuffer({ budget, spillThreshold: 512 * 1024, tempDir: tmp.path }, 0);
      await odd.write(5000, patternBytes(4, 10));
      expect(odd.memoryBytes).to.equal(8192);
      await odd.close();
      expect(budget.used).to.equal(0);
    });

    it('spills past the per-file threshold or the shared budget, leaving no file behind', async () => {
      const budget = new MemoryBudget(100 * 1024);
      const a = new WriteBuffer({ budget, spillThreshold: 64 * 1024, tempDir: tmp.path }, 0);
      const b = new WriteBuffer({ budget, spillThreshold: 64 * 1024, tempDir: tmp.path }, 0);
      await a.write(0, patternBytes(1, 60 * 1024));
      expect(a.spilled).to.equal(false);
      await b.write(0, patternBytes(2, 60 * 1024));
      expect(b.spilled, 'over the budget').to.equal(true);
      await a.write(60 * 1024, patternBytes(3, 10 * 1024));
      expect(a.spilled, 'over the threshold').to.equal(true);
      expect(budget.used).to.equal(0);
      expect(budget.peak).to.be.at.most(100 * 1024);
      // Temporary files are unlinked as soon as they are open.
      expect(readdirSync(tmp.path)).to.deep.equal([]);
      const out = new Uint8Array(70 * 1024);
      await a.readLocal(0, out);
      expect(Buffer.from(out.subarray(0, 60 * 1024)).equals(Buffer.from(patternBytes(1, 60 * 1024)))).to.equal(true);
      await a.close();
      await b.close();
    });
  });
});
