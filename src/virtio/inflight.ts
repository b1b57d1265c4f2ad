// Inflight I/O tracking for split rings (vhost-user spec, "Inflight I/O tracking"), in
// the shared region of VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD. The frontend keeps the
// region across a backend crash and hands it to the restarted backend, which learns
// from it which requests it had taken from the ring without completing them.
//
// Layout per queue (QueueRegionSplit, little endian), queues packed one after the other,
// each padded to 64 bytes as libvhost-user sizes them:
//   u64 features (0), u16 version (1; 0 = never used), u16 desc_num, u16 last_batch_head,
//   u16 used_idx, then desc_num × DescStateSplit {u8 inflight, u8 pad[5], u16 next, u64 counter}.
//
// Protocol, as the spec gives it:
//   pop head i:      desc[i].counter = counter++, desc[i].inflight = 1;
//   push head i:     desc[i].next = last_batch_head, last_batch_head = i;
//   after used.idx is published for the batch: desc[*].inflight = 0, used_idx = used.idx.
// On restart, used.idx != used_idx means the crash fell between publishing a batch and
// clearing it: the (used.idx - used_idx) heads listed from last_batch_head are complete.
// What is still marked inflight is resubmitted, oldest counter first.
//
// A store to this region is not ordered against the process dying (every store made
// before a kill -9 is in the shared pages), only against other CPUs, which never read it
// while we run: plain typed-array stores in program order are enough.

export const INFLIGHT_VERSION = 1;
const HEADER_SIZE = 16;
const DESC_SIZE = 16;
const ALIGN = 64;

// Header field offsets (bytes).
const OFF_VERSION = 8;
const OFF_DESC_NUM = 10;
const OFF_LAST_BATCH_HEAD = 12;
const OFF_USED_IDX = 14;

/** Bytes one queue takes in the region (libvhost-user's vu_inflight_queue_size). */
export function inflightQueueBytes(queueSize: number): number {
  return Math.ceil((DESC_SIZE * queueSize + 2) / ALIGN) * ALIGN;
}

/** Bytes of a region for `numQueues` queues of `queueSize` descriptors. */
export function inflightRegionBytes(numQueues: number, queueSize: number): number {
  return numQueues * inflightQueueBytes(queueSize);
}

/** What recovering a queue found (for logs and tests). */
export interface InflightRecovery {
  /** The region was never used (version 0): nothing could be recovered. */
  readonly fresh: boolean;
  /** Heads to serve again before anything new, oldest first. */
  readonly resubmit: number[];
  /** Heads whose completion was published but not yet cleared when the backend died. */
  readonly repaired: number;
  /** The avail index the backend had reached: used.idx + requests still in flight. */
  readonly lastAvailIdx: number;
}

/** One queue's slice of the region. */
export class InflightQueue {
  readonly descNum: number;
  private readonly u8: Uint8Array;
  private readonly u16: Uint16Array;
  private readonly u32: Uint32Array;
  /** Next counter value (kept below 2^53; a queue would need centuries to get there). */
  private counter = 0;
  /** Heads pushed since the last publication (the batch being built). */
  private readonly batch: number[] = [];

  /** `offset` must be 16-byte aligned; the slice must hold inflightQueueBytes(descNum) bytes. */
  constructor(buf: ArrayBuffer, offset: number, descNum: number) {
    const bytes = inflightQueueBytes(descNum);
    if (offset % DESC_SIZE !== 0 || offset + bytes > buf.byteLength) {
      throw new RangeError(`inflight queue at ${offset} (+${bytes}) does not fit a region of ${buf.byteLength} bytes`);
    }
    this.descNum = descNum;
    this.u8 = new Uint8Array(buf, offset, HEADER_SIZE + DESC_SIZE * descNum);
    this.u16 = new Uint16Array(buf, offset, (HEADER_SIZE + DESC_SIZE * descNum) >>> 1);
    this.u32 = new Uint32Array(buf, offset, (HEADER_SIZE + DESC_SIZE * descNum) >>> 2);
  }

  get version(): number {
    return this.u16[OFF_VERSION >>> 1]!;
  }
  get usedIdx(): number {
    return this.u16[OFF_USED_IDX >>> 1]!;
  }
  get lastBatchHead(): number {
    return this.u16[OFF_LAST_BATCH_HEAD >>> 1]!;
  }
  /** Whether head i is marked in flight. */
  isInflight(head: number): boolean {
    return this.u8[HEADER_SIZE + DESC_SIZE * head] === 1;
  }
  /** The counter stored for head i. */
  counterOf(head: number): number {
    const w = (HEADER_SIZE + DESC_SIZE * head + 8) >>> 2;
    return this.u32[w + 1]! * 0x100000000 + this.u32[w]!;
  }

  /**
   * Makes the queue's state current before the ring starts. A region never used
   * (version 0) is initialized and nothing is resubmitted. Otherwise the last batch is
   * repaired against `ringUsedIdx` (used.idx as the ring holds it now) and the heads still
   * in flight are returned, oldest first.
   */
  recover(ringUsedIdx: number): InflightRecovery {
    this.batch.length = 0;
    if (this.version === 0) {
      this.u16[OFF_VERSION >>> 1] = INFLIGHT_VERSION;
      this.u16[OFF_DESC_NUM >>> 1] = this.descNum;
      this.u16[OFF_USED_IDX >>> 1] = ringUsedIdx;
      this.counter = 0;
      return { fresh: true, resubmit: [], repaired: 0, lastAvailIdx: ringUsedIdx };
    }
    this.u16[OFF_DESC_NUM >>> 1] = this.descNum;
    let repaired = 0;
    const lost = (ringUsedIdx - this.usedIdx) & 0xffff;
    // More than a ring's worth cannot be one batch: the ring was re-created (its used.idx
    // restarted) and the region's used_idx is from before; nothing to walk then.
    if (lost > 0 && lost <= this.descNum) {
      let head = this.lastBatchHead;
      for (let n = 0; n < lost && head < this.descNum; n++) {
        if (this.isInflight(head)) repaired++;
        this.u8[HEADER_SIZE + DESC_SIZE * head] = 0;
        head = this.u16[(HEADER_SIZE + DESC_SIZE * head + 6) >>> 1]!;
      }
    }
    this.u16[OFF_USED_IDX >>> 1] = ringUsedIdx;
    const heads: number[] = [];
    for (let i = 0; i < this.descNum; i++) if (this.isInflight(i)) heads.push(i);
    heads.sort((a, b) => this.counterOf(a) - this.counterOf(b));
    this.counter = heads.length > 0 ? this.counterOf(heads[heads.length - 1]!) + 1 : 0;
    return { fresh: false, resubmit: heads, repaired, lastAvailIdx: (ringUsedIdx + heads.length) & 0xffff };
  }

  /** The device took head i (< descNum) from the avail ring. */
  popped(head: number): void {
    const at = HEADER_SIZE + DESC_SIZE * head;
    const c = this.counter++;
    const w = (at + 8) >>> 2;
    this.u32[w] = c >>> 0;
    this.u32[w + 1] = Math.floor(c / 0x100000000);
    this.u8[at] = 1;
  }

  /** Head i's used element was written (not yet published). */
  pushed(head: number): void {
    this.u16[(HEADER_SIZE + DESC_SIZE * head + 6) >>> 1] = this.lastBatchHead;
    this.u16[OFF_LAST_BATCH_HEAD >>> 1] = head;
    this.batch.push(head);
  }

  /** used.idx = `usedIdx` is published: the batch is complete. */
  published(usedIdx: number): void {
    const batch = this.batch;
    for (let i = 0; i < batch.length; i++) this.u8[HEADER_SIZE + DESC_SIZE * batch[i]!] = 0;
    batch.length = 0;
    this.u16[OFF_USED_IDX >>> 1] = usedIdx;
  }
}

/** A whole region: the per-queue slices of one mapping. */
export class InflightRegion {
  readonly queues: readonly InflightQueue[];

  constructor(buf: ArrayBuffer, offset: number, numQueues: number, queueSize: number) {
    const per = inflightQueueBytes(queueSize);
    const queues: InflightQueue[] = [];
    for (let i = 0; i < numQueues; i++) queues.push(new InflightQueue(buf, offset + i * per, queueSize));
    this.queues = queues;
  }
}
