// The image-driver interface behind the virtio-blk device. A raw file implements it
// today; object-backed chunked images implement the same interface, so the device never
// knows where bytes live.
//
// Calls are callback-based rather than promise-based because they sit on the hot path
// (one per guest request) and some drivers batch them: the device calls `unplug()` after
// each batch of requests taken from a kick, and a driver that queues submissions (io_uring)
// sends them all then. Completion callbacks receive 0 or a negative errno and may run
// synchronously inside the call.
import type { Segment } from '../virtio/memory.js';

export type Completion = (result: number) => void;

export interface ImageGeometry {
  /** Size in bytes, a multiple of 512. */
  readonly size: number;
  /** Logical block size reported to the guest (512 or 4096). */
  readonly logicalBlockSize: number;
  /** Preferred I/O granularity (e.g. the chunk size of an object image), bytes. */
  readonly optimalIoSize: number;
}

export interface BlockImage extends ImageGeometry {
  readonly readOnly: boolean;
  /** Can free storage for DISCARD (punch holes, delete chunks). */
  readonly canDiscard: boolean;
  /** Can zero ranges efficiently for WRITE_ZEROES. */
  readonly canWriteZeroes: boolean;
  /** Reads [offset, offset + total length of segs) into guest memory. */
  read(offset: number, segs: readonly Segment[], done: Completion): void;
  /** Writes the bytes of segs at offset. Durable only after a later flush completes. */
  write(offset: number, segs: readonly Segment[], done: Completion): void;
  /** Completes once every write completed before this call is durable in the backing store. */
  flush(done: Completion): void;
  /** Frees [offset, offset+length); reads of it return zeros afterwards. */
  discard(offset: number, length: number, done: Completion): void;
  /** Zeroes [offset, offset+length); `mayUnmap` lets the driver free storage instead. */
  writeZeroes(offset: number, length: number, mayUnmap: boolean, done: Completion): void;
  /** Sends queued submissions (end of a batch). */
  unplug(): void;
  /** Completes outstanding work, makes written data durable, releases resources. */
  close(): Promise<void>;
}
