// Split-virtqueue layout (virtio 1.x §2.7, linux/virtio_ring.h): flag bits, ring sizes
// and byte offsets. Shared by the device side (queue.ts) and the driver side
// (driver-queue.ts) so both agree on every offset.

export const VIRTQ_DESC_F_NEXT = 1;
export const VIRTQ_DESC_F_WRITE = 2;
export const VIRTQ_DESC_F_INDIRECT = 4;

/** used.flags bit: the device does not want kicks (used without EVENT_IDX). */
export const VIRTQ_USED_F_NO_NOTIFY = 1;
/** avail.flags bit: the driver does not want interrupts (used without EVENT_IDX). */
export const VIRTQ_AVAIL_F_NO_INTERRUPT = 1;

// Feature bits (as bigint masks) are in features.ts.

/** Largest queue size of a split ring. */
export const MAX_QUEUE_SIZE = 32768;

export const DESC_SIZE = 16;
export const DESC_ALIGN = 16;
export const AVAIL_ALIGN = 2;
export const USED_ALIGN = 4;

/** Bytes of the descriptor table. */
export function descTableSize(size: number): number {
  return DESC_SIZE * size;
}
/** Bytes of the avail ring including used_event. */
export function availRingSize(size: number): number {
  return 6 + 2 * size;
}
/** Bytes of the used ring including avail_event. */
export function usedRingSize(size: number): number {
  return 6 + 8 * size;
}

// Byte offsets inside the avail ring.
export const AVAIL_FLAGS = 0;
export const AVAIL_IDX = 2;
export function availRingEntry(i: number): number {
  return 4 + 2 * i;
}
/** used_event lives after the last avail ring entry (avail->ring[size]). */
export function usedEventOffset(size: number): number {
  return 4 + 2 * size;
}

// Byte offsets inside the used ring.
export const USED_FLAGS = 0;
export const USED_IDX = 2;
export function usedRingEntry(i: number): number {
  return 4 + 8 * i;
}
/** avail_event lives after the last used ring entry (used->ring[size]). */
export function availEventOffset(size: number): number {
  return 4 + 8 * size;
}

/** Split rings need a power-of-two size so that u16 indexes wrap consistently. */
export function isValidQueueSize(size: number): boolean {
  return Number.isInteger(size) && size >= 1 && size <= MAX_QUEUE_SIZE && (size & (size - 1)) === 0;
}

/**
 * The event-index test of virtio (vring_need_event): whether moving an index from old
 * to newIdx crossed event, i.e. the other side asked to be told about entry `event`.
 */
export function needEvent(event: number, newIdx: number, old: number): boolean {
  return ((newIdx - event - 1) & 0xffff) < ((newIdx - old) & 0xffff);
}

// Typed-array views of guest memory assume a little-endian host (virtio 1.x rings are
// little endian). Every host we run on (x86-64, arm64) is; refuse to run elsewhere
// rather than silently byte-swap.
if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) {
  throw new Error('vhost-s3 virtio layer requires a little-endian host');
}
