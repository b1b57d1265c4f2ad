// The fuzz targets' guest RAM: guarded mappings (native.mmapGuarded) really have
// PROT_NONE pages on both sides, go away whole on unmap, and the canaries and the
// write-footprint check see what they are meant to see.
import { expect } from 'chai';
import { readFileSync } from 'node:fs';
import { native } from '../../src/native/index.js';
import { GUARD, GuardedGuestRam, PAGE } from './guest-ram.js';

interface MapsLine {
  start: number;
  end: number;
  perms: string;
}

function maps(): MapsLine[] {
  return readFileSync('/proc/self/maps', 'utf8').trim().split('\n').map((line) => {
    const [range, perms] = line.split(/\s+/);
    const [a, b] = range!.split('-');
    return { start: parseInt(a!, 16), end: parseInt(b!, 16), perms: perms! };
  });
}

/** The permissions of every page of [start, end) (one entry per maps line touched). */
function permsOf(start: number, end: number): string[] {
  return maps().filter((m) => m.start < end && m.end > start).map((m) => m.perms);
}

describe('fuzz support: guarded guest RAM', () => {
  it('mmapGuarded puts PROT_NONE pages on both sides and unmaps them with the mapping', () => {
    const fd = native.memfdCreate('guarded', 4 * PAGE);
    try {
      const m = native.mmapGuarded(fd, PAGE, 2 * PAGE, true, 2 * PAGE);
      expect(m.length).to.equal(2 * PAGE);
      expect(m.windows[0]!.byteLength).to.equal(2 * PAGE);
      new Uint8Array(m.windows[0]!)[0] = 7;
      expect(permsOf(m.address, m.address + 2 * PAGE)).to.deep.equal(['rw-s']);
      expect(permsOf(m.address - 2 * PAGE, m.address)).to.deep.equal(['---p']);
      expect(permsOf(m.address + 2 * PAGE, m.address + 4 * PAGE)).to.deep.equal(['---p']);
      m.unmap();
      expect(permsOf(m.address - 2 * PAGE, m.address + 4 * PAGE)).to.deep.equal([]);
    } finally {
      native.close(fd);
    }
  });

  it('mmapGuarded refuses partial pages', () => {
    const fd = native.memfdCreate('guarded', 4 * PAGE);
    try {
      expect(() => native.mmapGuarded(fd, 0, PAGE + 1, true, PAGE)).to.throw(/EINVAL/);
      expect(() => native.mmapGuarded(fd, 0, PAGE, true, 100)).to.throw(/EINVAL/);
      expect(() => native.mmapGuarded(fd, 0, PAGE, true, 0)).to.throw(/EINVAL/);
    } finally {
      native.close(fd);
    }
  });

  it('vectored I/O into a guard page is refused (EFAULT), not performed', () => {
    const fd = native.memfdCreate('guarded', PAGE);
    const m = native.mmapGuarded(fd, 0, PAGE, true, GUARD);
    try {
      const iov = new Float64Array([m.address + PAGE - 8, 16]);
      expect(() => native.preadv(fd, iov, 1, 0)).to.throw(/EFAULT/);
    } finally {
      m.unmap();
      native.close(fd);
    }
  });

  it('the device side maps each region between guards; canaries and the footprint check see stray bytes', () => {
    const ram = new GuardedGuestRam([{ guestAddr: 0x1000, size: PAGE }, { guestAddr: 0x2000, size: 2 * PAGE }]);
    try {
      for (const r of ram.regions) {
        expect(permsOf(r.mapping.address - GUARD, r.mapping.address)).to.deep.equal(['---p']);
        expect(permsOf(r.mapping.address + r.size, r.mapping.address + r.size + GUARD)).to.deep.equal(['---p']);
      }
      // The two regions are adjacent in guest space: one range spans both mappings.
      const segs: Parameters<typeof ram.memory.translate>[2] = [];
      expect(ram.memory.translate(0x2000 - 4, 8, segs)).to.equal(true);
      expect(segs.map((s) => ram.contains(s))).to.deep.equal([true, true]);
      ram.write(0x2000 - 4, new Uint8Array([1, 2, 3, 4]));
      expect(new Uint8Array(segs[0]!.buf, segs[0]!.offset, 4)).to.deep.equal(new Uint8Array([1, 2, 3, 4]));
      expect(ram.changedCanaries()).to.deep.equal([]);
      const before = ram.snapshot();
      new Uint8Array(segs[1]!.buf)[0] = 9;
      expect(ram.changedOutside(before, [ram.fileRangeOf(segs[1]!)])).to.deep.equal([]);
      expect(ram.changedOutside(before, [])).to.deep.equal([ram.fileRangeOf(segs[1]!).offset]);
      ram.host[ram.regions[0]!.fileOffset - 1] ^= 0xff;
      expect(ram.changedCanaries()).to.deep.equal([ram.regions[0]!.fileOffset - 1]);
    } finally {
      ram.close();
    }
  });
});
