// Guest memory: the regions the frontend shared with us and address translation over
// them. Every address that reaches this module may come from the guest, so translation
// checks the whole [addr, addr+len) range and never returns a view outside a mapping.
// Addresses are JS numbers: anything at or above 2^53 cannot be a valid address here and
// is rejected like any other unmapped address.
import type { Mapping } from '../native/index.js';

/** A piece of host memory that some guest range maps to. */
export interface Segment {
  /** The mapping window holding these bytes. */
  readonly buf: ArrayBuffer;
  /** Offset of the first byte inside `buf`. */
  readonly offset: number;
  readonly length: number;
  /** Host virtual address of the first byte (for iovecs handed to the addon). */
  readonly hostAddr: number;
}

export interface RegionSpec {
  readonly guestAddr: number; // guest-physical address of byte 0
  readonly size: number;
  readonly userAddr: number; // frontend virtual address of byte 0 (rings are given in these)
  readonly mmapOffset: number; // offset of byte 0 inside the fd
  readonly mapping: Mapping; // the mmap of [mmapOffset, mmapOffset+size) of the region fd
}

/** Why addRegion refused a region. errno is the positive Linux errno. */
export type GuestMemoryErrorCode = 'ENOSPC' | 'EEXIST' | 'EINVAL';
const ERRNO: Record<GuestMemoryErrorCode, number> = { EINVAL: 22, EEXIST: 17, ENOSPC: 28 };

export class GuestMemoryError extends Error {
  readonly code: GuestMemoryErrorCode;
  readonly errno: number;
  constructor(code: GuestMemoryErrorCode, message: string) {
    super(message);
    this.name = 'GuestMemoryError';
    this.code = code;
    this.errno = ERRNO[code];
  }
}

const MAX_SAFE = Number.MAX_SAFE_INTEGER;

/** One region, with everything translation needs precomputed. */
class Region {
  readonly guestAddr: number;
  readonly guestEnd: number; // exclusive
  readonly userAddr: number;
  readonly userEnd: number; // exclusive
  readonly size: number;
  readonly mmapOffset: number;
  readonly mapping: Mapping;
  readonly hostAddr: number;
  readonly windows: ArrayBuffer[];
  /** Bytes per window (every window but the last is exactly this long). */
  readonly windowSize: number;

  constructor(spec: RegionSpec, windowSize: number) {
    this.guestAddr = spec.guestAddr;
    this.guestEnd = spec.guestAddr + spec.size;
    this.userAddr = spec.userAddr;
    this.userEnd = spec.userAddr + spec.size;
    this.size = spec.size;
    this.mmapOffset = spec.mmapOffset;
    this.mapping = spec.mapping;
    this.hostAddr = spec.mapping.address;
    this.windows = spec.mapping.windows.slice();
    this.windowSize = windowSize;
  }

  /**
   * Whether the mapping is still mapped: unmap() detaches every window, and a mapped
   * region's first window is never empty. Read on every translation, so it is a plain
   * ArrayBuffer length check rather than a call into the addon (`mapping.mapped`).
   */
  get live(): boolean {
    return this.windows[0]!.byteLength !== 0;
  }
}

function isAddr(n: number): boolean {
  return Number.isSafeInteger(n) && n >= 0;
}

/** Index of the last region whose start is <= addr, or -1 (regions sorted by start). */
function floorIndex(regions: readonly Region[], addr: number, user: boolean): number {
  let lo = 0;
  let hi = regions.length - 1;
  let found = -1;
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1;
    const start = user ? regions[mid]!.userAddr : regions[mid]!.guestAddr;
    if (start <= addr) {
      found = mid;
      lo = mid + 1;
    } else {
      hi = mid - 1;
    }
  }
  return found;
}

export class GuestMemory {
  readonly maxRegions: number;
  /** Sorted by guestAddr. */
  private byGuest: Region[] = [];
  /** Sorted by userAddr. */
  private byUser: Region[] = [];
  private lastGuest: Region | null = null;
  private lastUser: Region | null = null;
  /** Asynchronous copies (io_uring reads into guest memory) in flight: see pin(). */
  private pins = 0;
  /** Regions removed while pinned: unmapped when the last pin goes. */
  private retired: Region[] = [];

  constructor(maxRegions: number) {
    if (!Number.isInteger(maxRegions) || maxRegions < 1) {
      throw new GuestMemoryError('EINVAL', `maxRegions must be a positive integer, got ${maxRegions}`);
    }
    this.maxRegions = maxRegions;
  }

  get regionCount(): number {
    return this.byGuest.length;
  }

  /** The regions in guest-address order (for logs and tests). */
  regions(): Array<{ guestAddr: number; size: number; userAddr: number; mmapOffset: number }> {
    return this.byGuest.map((r) => ({
      guestAddr: r.guestAddr,
      size: r.size,
      userAddr: r.userAddr,
      mmapOffset: r.mmapOffset,
    }));
  }

  /**
   * Adds a region. Throws GuestMemoryError: ENOSPC when maxRegions are in use, EEXIST
   * when its guest or user range overlaps an existing region, EINVAL for a malformed
   * spec (size 0, addresses past 2^53, a mapping shorter than the region or unmapped).
   * On error the mapping is left alone (the caller still owns it).
   */
  addRegion(spec: RegionSpec): void {
    const { guestAddr, size, userAddr, mmapOffset, mapping } = spec;
    if (!isAddr(guestAddr) || !isAddr(userAddr) || !isAddr(mmapOffset) || !Number.isSafeInteger(size) || size <= 0) {
      throw new GuestMemoryError('EINVAL', `bad region guest=${guestAddr} size=${size} user=${userAddr}`);
    }
    if (guestAddr > MAX_SAFE - size || userAddr > MAX_SAFE - size) {
      throw new GuestMemoryError('EINVAL', `region end past 2^53 (guest=${guestAddr} size=${size} user=${userAddr})`);
    }
    const windowSize = checkMapping(mapping, size);
    if (this.byGuest.length >= this.maxRegions) {
      throw new GuestMemoryError('ENOSPC', `all ${this.maxRegions} memory regions are in use`);
    }
    for (const r of this.byGuest) {
      if (guestAddr < r.guestEnd && r.guestAddr < guestAddr + size) {
        throw new GuestMemoryError('EEXIST', `guest range 0x${guestAddr.toString(16)}+0x${size.toString(16)} overlaps a region`);
      }
      if (userAddr < r.userEnd && r.userAddr < userAddr + size) {
        throw new GuestMemoryError('EEXIST', `user range 0x${userAddr.toString(16)}+0x${size.toString(16)} overlaps a region`);
      }
    }
    const region = new Region(spec, windowSize);
    this.byGuest.push(region);
    this.byGuest.sort((a, b) => a.guestAddr - b.guestAddr);
    this.byUser.push(region);
    this.byUser.sort((a, b) => a.userAddr - b.userAddr);
  }

  /** Removes (and unmaps) the region matching guestAddr/size/userAddr; false if none did. */
  removeRegion(guestAddr: number, size: number, userAddr: number): boolean {
    const i = this.byGuest.findIndex((r) => r.guestAddr === guestAddr && r.size === size && r.userAddr === userAddr);
    if (i < 0) return false;
    const region = this.byGuest[i]!;
    this.byGuest.splice(i, 1);
    this.byUser.splice(this.byUser.indexOf(region), 1);
    if (this.lastGuest === region) this.lastGuest = null;
    if (this.lastUser === region) this.lastUser = null;
    this.retire(region);
    return true;
  }

  /** Unmaps and forgets every region (SET_MEM_TABLE, RESET, disconnect). */
  clear(): void {
    const regions = this.byGuest;
    this.byGuest = [];
    this.byUser = [];
    this.lastGuest = null;
    this.lastUser = null;
    for (const r of regions) this.retire(r);
  }

  /**
   * Keeps every mapping of this memory in place until the returned function is called
   * (once; later calls do nothing), for a copy into guest memory that the kernel does on
   * another thread (an io_uring read in an io-wq worker). A region removed meanwhile
   * (SET_MEM_TABLE, REM_MEM_REG) stops translating at once but is unmapped only when the
   * last pin goes: unmapped at once, its addresses could be reused by the next mmap and
   * the kernel would finish the copy into whatever lives there now. Copies done on the
   * event loop need no pin (nothing unmaps while they run).
   */
  pin(): () => void {
    this.pins++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      if (--this.pins === 0 && this.retired.length > 0) {
        const regions = this.retired;
        this.retired = [];
        for (const r of regions) r.mapping.unmap();
      }
    };
  }

  /** Pins held (for tests). */
  get pinCount(): number {
    return this.pins;
  }

  private retire(region: Region): void {
    if (this.pins > 0) this.retired.push(region);
    else region.mapping.unmap();
  }

  /**
   * Appends to `out` the segments covering guest-physical [gpa, gpa+len). Returns false,
   * leaving `out` as it was, if any byte is unmapped or the arithmetic overflows.
   * A zero-length range (with a valid-looking address) is true with no segments.
   */
  translate(gpa: number, len: number, out: Segment[]): boolean {
    return this.span(gpa, len, out, false);
  }

  /**
   * The one segment holding guest-physical [gpa, gpa+len) when that range lies inside a
   * single window; null when it is unmapped, split across windows, or len is 0.
   */
  translateOne(gpa: number, len: number): Segment | null {
    if (!isAddr(gpa) || !Number.isSafeInteger(len) || len <= 0 || gpa > MAX_SAFE - len) return null;
    const r = this.find(gpa, false);
    if (r === null || !r.live) return null;
    const o = gpa - r.guestAddr;
    if (len > r.size - o) return null;
    const w = r.windowSize;
    const wi = Math.floor(o / w);
    const wo = o - wi * w;
    if (len > w - wo) return null;
    return { buf: r.windows[wi]!, offset: wo, length: len, hostAddr: r.hostAddr + o };
  }

  /** Same for frontend virtual addresses (SET_VRING_ADDR). */
  translateUser(uva: number, len: number, out: Segment[]): boolean {
    return this.span(uva, len, out, true);
  }

  /** Converts a frontend virtual address to guest-physical, or -1 if unmapped. */
  userToGuest(uva: number): number {
    if (!isAddr(uva)) return -1;
    const r = this.find(uva, true);
    return r === null ? -1 : r.guestAddr + (uva - r.userAddr);
  }

  /** Converts a guest-physical address to a frontend virtual one, or -1 if unmapped. */
  guestToUser(gpa: number): number {
    if (!isAddr(gpa)) return -1;
    const r = this.find(gpa, false);
    return r === null ? -1 : r.userAddr + (gpa - r.guestAddr);
  }

  /** The region containing addr (guest or user address space), or null. */
  private find(addr: number, user: boolean): Region | null {
    const last = user ? this.lastUser : this.lastGuest;
    if (last !== null) {
      const start = user ? last.userAddr : last.guestAddr;
      if (addr >= start && addr - start < last.size) return last;
    }
    const list = user ? this.byUser : this.byGuest;
    let r: Region | undefined;
    if (list.length <= 8) {
      for (let i = 0; i < list.length; i++) {
        const c = list[i]!;
        const start = user ? c.userAddr : c.guestAddr;
        if (addr >= start && addr - start < c.size) {
          r = c;
          break;
        }
      }
    } else {
      const i = floorIndex(list, addr, user);
      if (i >= 0) {
        const c = list[i]!;
        const start = user ? c.userAddr : c.guestAddr;
        if (addr - start < c.size) r = c;
      }
    }
    if (r === undefined) return null;
    if (user) this.lastUser = r;
    else this.lastGuest = r;
    return r;
  }

  private span(addr: number, len: number, out: Segment[], user: boolean): boolean {
    if (!isAddr(addr) || !Number.isSafeInteger(len) || len < 0 || addr > MAX_SAFE - len) return false;
    if (len === 0) return true;
    const start = out.length;
    let a = addr;
    let left = len;
    while (left > 0) {
      const r = this.find(a, user);
      if (r === null || !r.live) {
        out.length = start;
        return false;
      }
      let o = a - (user ? r.userAddr : r.guestAddr);
      let inRegion = Math.min(left, r.size - o);
      a += inRegion;
      left -= inRegion;
      const w = r.windowSize;
      while (inRegion > 0) {
        const wi = Math.floor(o / w);
        const wo = o - wi * w;
        const n = Math.min(inRegion, w - wo);
        out.push({ buf: r.windows[wi]!, offset: wo, length: n, hostAddr: r.hostAddr + o });
        o += n;
        inRegion -= n;
      }
    }
    return true;
  }
}

/** Validates a mapping's windows against a region size; returns the window size. */
function checkMapping(mapping: Mapping, size: number): number {
  if (!mapping.mapped) throw new GuestMemoryError('EINVAL', 'region mapping is not mapped');
  if (!Number.isSafeInteger(mapping.length) || mapping.length < size) {
    throw new GuestMemoryError('EINVAL', `mapping of ${mapping.length} bytes is shorter than the region (${size})`);
  }
  if (!Number.isSafeInteger(mapping.address) || mapping.address < 0) {
    throw new GuestMemoryError('EINVAL', `bad mapping address ${mapping.address}`);
  }
  const windows = mapping.windows;
  if (windows.length === 0) throw new GuestMemoryError('EINVAL', 'mapping has no windows');
  // Every window but the last has the same (window) size; the last holds the rest.
  const w = windows.length === 1 ? Math.max(windows[0]!.byteLength, 1) : windows[0]!.byteLength;
  let total = 0;
  for (let i = 0; i < windows.length; i++) {
    const bl = windows[i]!.byteLength;
    if (i < windows.length - 1 ? bl !== w : bl <= 0 || bl > w) {
      throw new GuestMemoryError('EINVAL', `mapping window ${i} has ${bl} bytes (window size ${w})`);
    }
    total += bl;
  }
  if (total < size) {
    throw new GuestMemoryError('EINVAL', `mapping windows hold ${total} bytes, region needs ${size}`);
  }
  return w;
}
