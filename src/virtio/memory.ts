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

export declare class GuestMemory {
  constructor(maxRegions: number);
  readonly regionCount: number;
  addRegion(spec: RegionSpec): void;
  /** Removes (and unmaps) the region matching guestAddr/size/userAddr; false if none did. */
  removeRegion(guestAddr: number, size: number, userAddr: number): boolean;
  /** Unmaps and forgets every region (SET_MEM_TABLE, RESET, disconnect). */
  clear(): void;
  /**
   * Appends to `out` the segments covering guest-physical [gpa, gpa+len). Returns false,
   * leaving `out` as it was, if any byte is unmapped or the arithmetic overflows.
   */
  translate(gpa: number, len: number, out: Segment[]): boolean;
  /** Same for frontend virtual addresses (SET_VRING_ADDR). */
  translateUser(uva: number, len: number, out: Segment[]): boolean;
  /** Converts a frontend virtual address to guest-physical, or -1 if unmapped. */
  userToGuest(uva: number): number;
}
