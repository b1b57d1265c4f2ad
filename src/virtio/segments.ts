// Copies between guest-memory segment lists and ordinary byte arrays, addressed by byte
// offset within the list as if the segments were one contiguous buffer. Used by drivers
// that cannot hand segments to the kernel directly (object-backed images copy chunk data).
import type { Segment } from './memory.js';

/** Calls `fn(view, srcPos)` for each piece of [offset, offset+length) of `segs`. */
function forEachPiece(segs: readonly Segment[], offset: number, length: number, fn: (view: Uint8Array, pos: number) => void): void {
  let skip = offset;
  let pos = 0;
  for (const s of segs) {
    if (pos >= length) return;
    if (skip >= s.length) {
      skip -= s.length;
      continue;
    }
    const n = Math.min(s.length - skip, length - pos);
    fn(new Uint8Array(s.buf, s.offset + skip, n), pos);
    pos += n;
    skip = 0;
  }
  if (pos < length) throw new RangeError(`segment list shorter than ${offset + length} bytes`);
}

/** segs[offset, offset+length) = src[srcOffset, srcOffset+length), or zeros when src is null. */
export function copyToSegments(segs: readonly Segment[], offset: number, src: Uint8Array | null, srcOffset: number, length: number): void {
  forEachPiece(segs, offset, length, (view, pos) => {
    if (src === null) view.fill(0);
    else view.set(src.subarray(srcOffset + pos, srcOffset + pos + view.length));
  });
}

/** dst[dstOffset, dstOffset+length) = segs[offset, offset+length). */
export function copyFromSegments(segs: readonly Segment[], offset: number, dst: Uint8Array, dstOffset: number, length: number): void {
  forEachPiece(segs, offset, length, (view, pos) => dst.set(view, dstOffset + pos));
}

export function segmentsLength(segs: readonly Segment[]): number {
  let n = 0;
  for (const s of segs) n += s.length;
  return n;
}
