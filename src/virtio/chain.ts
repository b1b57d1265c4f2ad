// A descriptor chain popped from a split ring, already walked and checked: its buffers
// are host segments split into the device-readable part (driver → device) and the
// device-writable part (device → driver). Devices read requests and write replies
// through the helpers here, never through raw guest addresses.
import type { Segment } from './memory.js';

export declare class DescriptorChain {
  /** Head descriptor index: the id returned in the used ring. */
  readonly head: number;
  readonly readable: readonly Segment[];
  readonly writable: readonly Segment[];
  readonly readableLength: number;
  readonly writableLength: number;
  /** Copies readable bytes [offset, offset+dst.length) into dst; returns bytes copied. */
  read(offset: number, dst: Uint8Array): number;
  /** Copies src into the writable part at offset; returns bytes copied. */
  write(offset: number, src: Uint8Array): number;
  /** Little-endian integer reads of the readable part (RangeError-free: caller checks length). */
  readU8(offset: number): number;
  readU16(offset: number): number;
  readU32(offset: number): number;
  /** u64 as a number; returns -1 if it is >= 2^53. */
  readU64(offset: number): number;
  writeU8(offset: number, value: number): void;
  /**
   * Appends to `out` the writable (or readable) segments covering [offset, offset+len)
   * as sub-segments, for zero-copy I/O. Returns false if the range is out of bounds.
   */
  sliceWritable(offset: number, len: number, out: Segment[]): boolean;
  sliceReadable(offset: number, len: number, out: Segment[]): boolean;
}

/** Why a chain could not be used; the queue returns it with used length 0. */
export type ChainError =
  | 'addr-out-of-range'
  | 'loop-or-too-long'
  | 'nested-indirect'
  | 'bad-indirect-size'
  | 'readable-after-writable'
  | 'next-out-of-range';
