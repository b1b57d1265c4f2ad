// Guest RAM for the fuzz targets: real memory from the native addon, laid out so that a
// stray access shows. One memfd holds every region, with canary pages between them;
// the device side (GuestMemory) maps each region on its own with PROT_NONE guard pages
// on both sides (native.mmapGuarded), so a native access running off a region faults at
// once; the test side sees the whole memfd through one plain mapping (`host`), writes
// descriptors and buffers through it and checks after every input that the canaries
// between the regions are unchanged.
import { native, type Mapping } from '../../src/native/index.js';
import { GuestMemory, type Segment } from '../../src/virtio/memory.js';

export const PAGE = 4096;
/** PROT_NONE bytes on each side of every device-side region mapping. */
export const GUARD = 4 * PAGE;
/** Canary bytes in the memfd before, between and after the regions. */
const GAP = PAGE;

export interface RegionLayout {
  readonly guestAddr: number;
  /** Whole pages. */
  readonly size: number;
}

export interface PlacedRegion extends RegionLayout {
  /** Where the region starts in the memfd (and in `host`). */
  readonly fileOffset: number;
  /** The frontend virtual address the device translates ring addresses by (the guarded mapping's). */
  readonly userAddr: number;
  readonly mapping: Mapping;
}

function canaryByte(i: number): number {
  return (i * 131 + 0x5a) & 0xff;
}

export class GuardedGuestRam {
  readonly memory: GuestMemory;
  readonly regions: readonly PlacedRegion[];
  /** The whole memfd, mapped once without guards (the "guest" side writes through it). */
  readonly host: Uint8Array;
  private readonly fd: number;
  private readonly hostMapping: Mapping;
  private readonly gaps: Array<{ offset: number; length: number; canary: Buffer }> = [];
  private snap: Buffer | null = null;

  constructor(layout: readonly RegionLayout[]) {
    let size = GAP;
    const offsets: number[] = [];
    for (const r of layout) {
      if (r.size % PAGE !== 0 || r.size <= 0) throw new RangeError(`region size ${r.size} is not whole pages`);
      offsets.push(size);
      size += r.size + GAP;
    }
    this.fd = native.memfdCreate('vhost-s3-fuzz-guest', size);
    const placed: PlacedRegion[] = [];
    this.memory = new GuestMemory(layout.length);
    try {
      this.hostMapping = native.mmap(this.fd, 0, size, true);
      this.host = new Uint8Array(this.hostMapping.windows[0]!);
      layout.forEach((r, i) => {
        const mapping = native.mmapGuarded(this.fd, offsets[i]!, r.size, true, GUARD);
        placed.push({ ...r, fileOffset: offsets[i]!, userAddr: mapping.address, mapping });
        this.memory.addRegion({ guestAddr: r.guestAddr, size: r.size, userAddr: mapping.address, mmapOffset: offsets[i]!, mapping });
      });
    } catch (err) {
      for (const p of placed) p.mapping.unmap();
      native.close(this.fd);
      throw err;
    }
    this.regions = placed;
    const gap = (offset: number, length: number): void => {
      const canary = Buffer.alloc(length);
      for (let i = 0; i < length; i++) canary[i] = canaryByte(offset + i);
      this.host.set(canary, offset);
      this.gaps.push({ offset, length, canary });
    };
    let at = 0;
    layout.forEach((r, i) => {
      gap(at, offsets[i]! - at);
      at = offsets[i]! + r.size;
    });
    gap(at, size - at);
  }

  /** The memfd offset of guest-physical `gpa` (which must be inside a region). */
  fileOffset(gpa: number): number {
    for (const r of this.regions) if (gpa >= r.guestAddr && gpa < r.guestAddr + r.size) return r.fileOffset + gpa - r.guestAddr;
    throw new RangeError(`0x${gpa.toString(16)} is not guest memory`);
  }

  /** The memfd ranges holding guest-physical [gpa, gpa+length) (several where it crosses into an adjacent region). */
  fileRanges(gpa: number, length: number): Array<{ offset: number; length: number }> {
    const out: Array<{ offset: number; length: number }> = [];
    let a = gpa;
    let left = length;
    while (left > 0) {
      const r = this.regions.find((x) => a >= x.guestAddr && a < x.guestAddr + x.size);
      if (r === undefined) throw new RangeError(`0x${a.toString(16)} is not guest memory`);
      const n = Math.min(left, r.guestAddr + r.size - a);
      out.push({ offset: r.fileOffset + a - r.guestAddr, length: n });
      a += n;
      left -= n;
    }
    return out;
  }

  /** Writes bytes at guest-physical `gpa` through the host view. */
  write(gpa: number, bytes: Uint8Array): void {
    let at = 0;
    for (const f of this.fileRanges(gpa, bytes.length)) {
      this.host.set(bytes.subarray(at, at + f.length), f.offset);
      at += f.length;
    }
  }

  read(gpa: number, length: number): Uint8Array {
    const out = new Uint8Array(length);
    let at = 0;
    for (const f of this.fileRanges(gpa, length)) {
      out.set(this.host.subarray(f.offset, f.offset + f.length), at);
      at += f.length;
    }
    return out;
  }

  /** The memfd ranges a segment handed out by GuestMemory covers (its host address tells which region). */
  fileRangeOf(seg: Segment): { offset: number; length: number } {
    for (const r of this.regions) {
      const a = r.mapping.address;
      if (seg.hostAddr >= a && seg.hostAddr + seg.length <= a + r.size) return { offset: r.fileOffset + seg.hostAddr - a, length: seg.length };
    }
    throw new Error(`segment at host 0x${seg.hostAddr.toString(16)}+${seg.length} is outside every guest region`);
  }

  /** Whether `seg` lies inside one region's mapping and its window (the bounds a device may touch). */
  contains(seg: Segment): boolean {
    for (const r of this.regions) {
      const a = r.mapping.address;
      if (seg.hostAddr >= a && seg.hostAddr + seg.length <= a + r.size) {
        return r.mapping.windows.includes(seg.buf) && seg.offset >= 0 && seg.offset + seg.length <= seg.buf.byteLength
          && seg.hostAddr - a === seg.offset + r.mapping.windows.indexOf(seg.buf) * native.WINDOW_SIZE;
      }
    }
    return false;
  }

  /** Memfd offsets of canary bytes that changed (empty when none did). */
  changedCanaries(): number[] {
    const bad: number[] = [];
    for (const g of this.gaps) {
      const now = Buffer.from(this.host.buffer, this.host.byteOffset + g.offset, g.length);
      if (now.equals(g.canary)) continue;
      for (let i = 0; i < g.length; i++) if (now[i] !== g.canary[i]) bad.push(g.offset + i);
    }
    return bad;
  }

  /** A copy of the whole memfd, to compare against after a request (one buffer, reused by the next call). */
  snapshot(): Buffer {
    if (this.snap === null) this.snap = Buffer.alloc(this.host.length);
    this.snap.set(this.host);
    return this.snap;
  }

  /**
   * Offsets where the memfd differs from `before`, outside the `allowed` memfd ranges
   * (what the device may write: writable descriptors, the used ring); at most 16.
   */
  changedOutside(before: Uint8Array, allowed: ReadonlyArray<{ offset: number; length: number }>): number[] {
    const now = Buffer.from(this.host.buffer, this.host.byteOffset, this.host.byteLength);
    const was = Buffer.from(before.buffer, before.byteOffset, before.byteLength);
    const holes = [...allowed].sort((a, b) => a.offset - b.offset);
    const out: number[] = [];
    const compare = (from: number, to: number): void => {
      if (from >= to || now.subarray(from, to).equals(was.subarray(from, to))) return;
      for (let i = from; i < to && out.length < 16; i++) if (now[i] !== was[i]) out.push(i);
    };
    let at = 0;
    for (const h of holes) {
      compare(at, h.offset);
      at = Math.max(at, h.offset + h.length);
    }
    compare(at, now.length);
    return out;
  }

  close(): void {
    this.memory.clear();
    this.hostMapping.unmap();
    native.close(this.fd);
  }
}
