// Device side of a split virtqueue (virtio 1.x §2.7). The ring lives in guest memory;
// every index and address read from it is checked before use.
//
// Usage (one kick):
//   queue.disableNotification();
//   do {
//     for (let r = queue.pop(); r.kind !== 'empty'; r = queue.pop()) {
//       if (r.kind === 'chain') handle(r.chain) // later: queue.push(head, written)
//       else if (r.error !== 'head-out-of-range') queue.push(r.head, 0);
//     }
//   } while (queue.enableNotification());
//   queue.flush();
// With EVENT_IDX the driver only kicks again once enableNotification() has published
// avail_event, so a device must end every batch with enableNotification().
//
// Malformed input: a chain that cannot be walked is returned as { kind: 'bad' } and
// consumed; its head is valid, so the device completes it with length 0 (the driver
// gets its descriptors back). An avail.ring entry >= size cannot be returned in the
// used ring (the driver would reject the id), so it is consumed, counted in badHeads,
// reported once as 'bad' with error 'head-out-of-range', and the queue is marked
// broken. avail.idx running more than `size` ahead of lastAvailIdx also marks the queue
// broken. A broken queue pops nothing until reset() (a device reset).
import type { GuestMemory, Segment } from './memory.js';
import { DescriptorChain, type ChainError } from './chain.js';
import {
  AVAIL_FLAGS, AVAIL_IDX, USED_IDX, USED_FLAGS, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE,
  VIRTQ_USED_F_NO_NOTIFY, availEventOffset, availRingSize, descTableSize, isValidQueueSize, usedEventOffset,
  usedRingSize,
} from './layout.js';
import { defaultRingOps, type RingOps } from './ring-ops.js';
import type { InflightQueue, InflightRecovery } from './inflight.js';

export type { ChainError } from './chain.js';

export interface RingAddresses {
  /** Frontend virtual addresses, as SET_VRING_ADDR carries them. */
  readonly desc: number;
  readonly avail: number;
  readonly used: number;
  /** VHOST_VRING_F_LOG etc.; unused. */
  readonly flags: number;
}

export type PopResult =
  | { readonly kind: 'chain'; readonly chain: DescriptorChain }
  | { readonly kind: 'bad'; readonly head: number; readonly error: ChainError }
  | { readonly kind: 'empty' };

const EMPTY: PopResult = Object.freeze({ kind: 'empty' });

/** Why the queue is broken (null while it is not). */
export type BrokenReason = 'avail-idx-jump' | 'head-out-of-range' | 'unmapped';

/** Resolves a ring to one window; null if it is not inside a single mapped window. */
function ringSegment(memory: GuestMemory, uva: number, len: number, align: number): Segment | null {
  const segs: Segment[] = [];
  if (!memory.translateUser(uva, len, segs) || segs.length !== 1) return null;
  const s = segs[0]!;
  if (s.offset % align !== 0) return null;
  return s;
}

/** Views of a whole window, cached by buffer so indirect tables cost no allocation. */
interface WindowViews {
  readonly buf: ArrayBuffer;
  readonly u32: Uint32Array;
  readonly u16: Uint16Array;
}

export class DeviceQueue {
  readonly index: number;
  private sizeValue = 0;
  private lastAvail = 0;
  callFd = -1; // -1 when none: then completions are published without signalling
  eventIdx = false; // VIRTIO_RING_F_EVENT_IDX negotiated
  indirect = false; // VIRTIO_RING_F_INDIRECT_DESC negotiated
  /**
   * Largest indirect table accepted (descriptors); a larger one is 'bad-indirect-size'.
   * Tables up to the queue size are always accepted (Linux sizes them by the ring).
   */
  maxIndirect = 1024;

  /** Set when the ring itself is corrupt; pop() then returns 'empty' until reset(). */
  broken = false;
  brokenReason: BrokenReason | null = null;
  /** avail.ring entries that were >= size (consumed, not returned). */
  badHeads = 0;
  /** Chains returned as 'bad'. */
  badChains = 0;

  private readonly ops: RingOps;
  private mask = 0;
  // Ring views (null until setAddresses succeeds).
  private desc32: Uint32Array = new Uint32Array(0);
  private desc16: Uint16Array = new Uint16Array(0);
  private availBuf: ArrayBuffer | null = null;
  private availByteOffset = 0;
  private avail16: Uint16Array = new Uint16Array(0);
  private usedBuf: ArrayBuffer | null = null;
  private usedByteOffset = 0;
  private used16: Uint16Array = new Uint16Array(0);
  private used32: Uint32Array = new Uint32Array(0);
  private memory: GuestMemory | null = null;

  /** avail.idx as last read (re-read when lastAvailIdx catches up with it). */
  private shadowAvailIdx = 0;
  /** Next used index to write (u16). */
  private usedIdxValue = 0;
  /** used.idx as last published. */
  private publishedUsedIdx = 0;

  // Scratch for translating indirect tables and copying unaligned / split ones.
  private readonly tableSegs: Segment[] = [];
  private scratch = new ArrayBuffer(0);
  private scratch32 = new Uint32Array(0);
  private scratch16 = new Uint16Array(0);
  private lastWindow: WindowViews | null = null;
  private windowViews = new WeakMap<ArrayBuffer, WindowViews>();

  /** Inflight tracking in the INFLIGHT_SHMFD region (null when not negotiated). */
  private inflight: InflightQueue | null = null;
  /** Heads a previous backend took and did not complete, served before new ones. */
  private resubmit: number[] = [];

  constructor(index: number, ops: RingOps = defaultRingOps()) {
    this.index = index;
    this.ops = ops;
  }

  /** Queue size (SET_VRING_NUM). Changing it forgets the ring addresses (not ready). */
  get size(): number {
    return this.sizeValue;
  }
  set size(value: number) {
    if (value === this.sizeValue) return;
    this.sizeValue = value;
    this.clearRings();
  }

  /**
   * Next avail index to consume (SET_VRING_BASE / GET_VRING_BASE), a u16. Setting it
   * forgets the cached avail.idx, so the next pop() re-reads it.
   */
  get lastAvailIdx(): number {
    return this.lastAvail;
  }
  set lastAvailIdx(value: number) {
    this.lastAvail = value & 0xffff;
    this.shadowAvailIdx = this.lastAvail;
  }

  get ready(): boolean {
    return this.usedBuf !== null;
  }

  /** Next used index the device will write (as read from used.idx at setAddresses). */
  get usedIdx(): number {
    return this.usedIdxValue;
  }

  /**
   * The guest memory the ring and the chains popped since setAddresses() were translated
   * in (null while the ring is not set up): what a device pins while the kernel copies
   * into a chain's buffers off the event loop (GuestMemory.pin).
   */
  get guestMemory(): GuestMemory | null {
    return this.memory;
  }

  /** Entries pushed but not yet published by flush(). */
  get pending(): number {
    return (this.usedIdxValue - this.publishedUsedIdx) & 0xffff;
  }

  /**
   * Resolves the ring addresses; false if `size` is not a power of two in 1..32768 or any
   * ring is not fully inside one mapped window (or is misaligned). Reads used.idx from
   * memory as the starting used index (it survives a stop/start of the ring).
   */
  setAddresses(memory: GuestMemory, addrs: RingAddresses): boolean {
    this.clearRings();
    const size = this.size;
    if (!isValidQueueSize(size)) return false;
    const d = ringSegment(memory, addrs.desc, descTableSize(size), 4);
    const a = ringSegment(memory, addrs.avail, availRingSize(size), 2);
    const u = ringSegment(memory, addrs.used, usedRingSize(size), 4);
    if (d === null || a === null || u === null) return false;
    this.memory = memory;
    this.mask = size - 1;
    this.desc32 = new Uint32Array(d.buf, d.offset, (16 * size) >>> 2);
    this.desc16 = new Uint16Array(d.buf, d.offset, (16 * size) >>> 1);
    this.availBuf = a.buf;
    this.availByteOffset = a.offset;
    this.avail16 = new Uint16Array(a.buf, a.offset, 3 + size);
    this.usedBuf = u.buf;
    this.usedByteOffset = u.offset;
    // used ring is 6 + 8*size bytes: u32 view covers flags/idx + ring, u16 view adds avail_event.
    this.used32 = new Uint32Array(u.buf, u.offset, 1 + 2 * size);
    this.used16 = new Uint16Array(u.buf, u.offset, 3 + 4 * size);
    this.usedIdxValue = this.used16[USED_IDX >>> 1]!;
    this.publishedUsedIdx = this.usedIdxValue;
    this.shadowAvailIdx = this.lastAvail;
    return true;
  }

  /**
   * Tracks this started ring's requests in `region` (call after setAddresses). A region
   * from a backend that died is recovered first: its unfinished heads are popped again
   * before anything new, and lastAvailIdx becomes used.idx + their number, whatever
   * SET_VRING_BASE said (a frontend that lost the backend only knows used.idx).
   */
  trackInflight(region: InflightQueue): InflightRecovery {
    const r = region.recover(this.usedIdxValue);
    this.inflight = region;
    this.resubmit = r.resubmit.slice();
    this.lastAvailIdx = r.lastAvailIdx;
    return r;
  }

  /** Heads still waiting to be resubmitted. */
  get resubmitPending(): number {
    return this.resubmit.length;
  }

  /** Forget ring addresses and counters (queue stopped / device reset). */
  reset(): void {
    this.inflight = null;
    this.resubmit = [];
    this.clearRings();
    this.lastAvailIdx = 0;
    this.broken = false;
    this.brokenReason = null;
    this.badHeads = 0;
    this.badChains = 0;
  }

  private clearRings(): void {
    this.memory = null;
    this.availBuf = null;
    this.usedBuf = null;
    this.desc32 = new Uint32Array(0);
    this.desc16 = new Uint16Array(0);
    this.avail16 = new Uint16Array(0);
    this.used16 = new Uint16Array(0);
    this.used32 = new Uint32Array(0);
    this.usedIdxValue = 0;
    this.publishedUsedIdx = 0;
    this.shadowAvailIdx = this.lastAvail;
    this.lastWindow = null;
    this.windowViews = new WeakMap();
  }

  private markBroken(reason: BrokenReason): void {
    this.broken = true;
    if (this.brokenReason === null) this.brokenReason = reason;
  }

  /** Whether a ring window was unmapped under us (views then read as length 0). */
  private ringsDetached(): boolean {
    return this.used16.length === 0 || this.avail16.length === 0 || this.desc32.length === 0;
  }

  /** Number of available entries not yet popped (re-reads avail.idx). 0 when broken. */
  available(): number {
    if (this.broken || this.usedBuf === null) return 0;
    if (this.ringsDetached()) {
      this.markBroken('unmapped');
      return 0;
    }
    const idx = this.avail16[AVAIL_IDX >>> 1]!;
    const n = (idx - this.lastAvail) & 0xffff;
    if (n > this.size) {
      this.markBroken('avail-idx-jump');
      return 0;
    }
    this.shadowAvailIdx = idx;
    return n;
  }

  /** Pops the next available chain; bad chains are reported so the device can fail them. */
  pop(): PopResult {
    if (this.broken || this.usedBuf === null) return EMPTY;
    if (this.resubmit.length > 0) return this.walkResult(this.resubmit.shift()!);
    if (this.lastAvail === this.shadowAvailIdx) {
      if (this.available() === 0) return EMPTY;
      // Read the ring entries and descriptors only after seeing the index.
      this.ops.fence();
    }
    const slot = this.lastAvail & this.mask;
    const head = this.avail16[2 + slot]!;
    this.lastAvail = (this.lastAvail + 1) & 0xffff;
    if (head >= this.size) {
      this.badHeads++;
      this.badChains++;
      this.markBroken('head-out-of-range');
      return { kind: 'bad', head, error: 'head-out-of-range' };
    }
    this.inflight?.popped(head);
    return this.walkResult(head);
  }

  private walkResult(head: number): PopResult {
    const r = this.walk(head);
    if (typeof r === 'string') {
      this.badChains++;
      return { kind: 'bad', head, error: r };
    }
    return { kind: 'chain', chain: r };
  }

  /** Views of an indirect table: [u32 view, u16 view, index of its first u32]. */
  private windowFor(buf: ArrayBuffer): WindowViews {
    const last = this.lastWindow;
    if (last !== null && last.buf === buf) return last;
    let v = this.windowViews.get(buf);
    if (v === undefined) {
      const n = buf.byteLength;
      v = { buf, u32: new Uint32Array(buf, 0, n >>> 2), u16: new Uint16Array(buf, 0, n >>> 1) };
      this.windowViews.set(buf, v);
    }
    this.lastWindow = v;
    return v;
  }

  /** Copies a split or unaligned indirect table into the scratch buffer. */
  private copyToScratch(segs: readonly Segment[], bytes: number): void {
    if (this.scratch.byteLength < bytes) {
      this.scratch = new ArrayBuffer(Math.max(bytes, 2 * this.scratch.byteLength, 256));
      this.scratch32 = new Uint32Array(this.scratch);
      this.scratch16 = new Uint16Array(this.scratch);
    }
    const dst = new Uint8Array(this.scratch);
    let at = 0;
    for (const s of segs) {
      dst.set(new Uint8Array(s.buf, s.offset, s.length), at);
      at += s.length;
    }
  }

  /** Walks the chain at `head` (< size); returns the chain or why it is bad. */
  private walk(head: number): DescriptorChain | ChainError {
    const memory = this.memory!;
    const readable: Segment[] = [];
    const writable: Segment[] = [];
    let readableLength = 0;
    let writableLength = 0;
    let sawWritable = false;

    let d32 = this.desc32;
    let d16 = this.desc16;
    let base32 = 0; // index of descriptor 0's first u32 in d32 (base16 = 2*base32)
    let max = this.size; // descriptors in the current table
    let inIndirect = false;
    let i = head;
    let count = 0;

    for (;;) {
      if (++count > max) return 'loop-or-too-long';
      const w = base32 + 4 * i;
      const addr = d32[w + 1]! * 0x100000000 + d32[w]!;
      const len = d32[w + 2]!;
      const flags = d16[2 * w + 6]!;
      const next = d16[2 * w + 7]!;

      if ((flags & VIRTQ_DESC_F_INDIRECT) !== 0) {
        if (!this.indirect) return 'indirect-not-negotiated';
        if (inIndirect) return 'nested-indirect';
        if ((flags & VIRTQ_DESC_F_NEXT) !== 0) return 'indirect-with-next';
        if (len === 0 || len % 16 !== 0) return 'bad-indirect-size';
        const n = len / 16;
        if (n > Math.max(this.maxIndirect, this.size)) return 'bad-indirect-size';
        const one = memory.translateOne(addr, len);
        if (one !== null && one.offset % 4 === 0 && one.buf.byteLength >= one.offset + len) {
          const v = this.windowFor(one.buf);
          d32 = v.u32;
          d16 = v.u16;
          base32 = one.offset >>> 2;
        } else {
          // Split across windows/regions, unaligned, or not mapped at all.
          const segs = this.tableSegs;
          segs.length = 0;
          const ok = memory.translate(addr, len, segs);
          let live = ok;
          for (const s of segs) if (s.buf.byteLength < s.offset + s.length) live = false;
          if (live) this.copyToScratch(segs, len);
          segs.length = 0;
          if (!live) return 'addr-out-of-range';
          d32 = this.scratch32;
          d16 = this.scratch16;
          base32 = 0;
        }
        inIndirect = true;
        max = n;
        count = 0;
        i = 0;
        continue;
      }

      if ((flags & VIRTQ_DESC_F_WRITE) !== 0) {
        sawWritable = true;
        if (len > 0) {
          if (!memory.translate(addr, len, writable)) return 'addr-out-of-range';
          writableLength += len;
        }
      } else {
        if (sawWritable) return 'readable-after-writable';
        if (len > 0) {
          if (!memory.translate(addr, len, readable)) return 'addr-out-of-range';
          readableLength += len;
        }
      }
      // The used ring reports lengths as u32: a chain over 4 GiB is refused.
      if (readableLength + writableLength > 0xffffffff) return 'loop-or-too-long';

      if ((flags & VIRTQ_DESC_F_NEXT) === 0) break;
      if (next >= max) return 'next-out-of-range';
      i = next;
    }
    return new DescriptorChain(head, readable, readableLength, writable, writableLength);
  }

  /**
   * Adds a used element (head, bytes written) without publishing. Returns false (and
   * writes nothing) if head is not a valid descriptor index or the ring is not set up.
   */
  push(head: number, written: number): boolean {
    if (this.usedBuf === null || !(head >= 0 && head < this.size) || this.used32.length === 0) return false;
    const slot = this.usedIdxValue & this.mask;
    this.used32[1 + 2 * slot] = head;
    this.used32[2 + 2 * slot] = written >>> 0;
    this.usedIdxValue = (this.usedIdxValue + 1) & 0xffff;
    this.inflight?.pushed(head);
    return true;
  }

  /**
   * Publishes pushed elements (one fenced idx store) and signals callFd if the driver
   * wants it (EVENT_IDX / NO_INTERRUPT). Returns whether it signalled (or, with
   * callFd -1, whether it would have).
   */
  flush(): boolean {
    if (this.usedBuf === null || this.availBuf === null) return false;
    const newIdx = this.usedIdxValue;
    const oldIdx = this.publishedUsedIdx;
    if (newIdx === oldIdx) return false;
    if (this.ringsDetached()) {
      this.markBroken('unmapped');
      return false;
    }
    this.publishedUsedIdx = newIdx;
    const ev = this.availByteOffset + (this.eventIdx ? usedEventOffset(this.size) : AVAIL_FLAGS);
    const signalled = this.ops.publishIdx(
      this.usedBuf, this.usedByteOffset + USED_IDX, newIdx, oldIdx, this.availBuf, ev, this.eventIdx, this.callFd,
    );
    this.inflight?.published(newIdx);
    return signalled;
  }

  /**
   * With EVENT_IDX: writes avail_event = lastAvailIdx, fences, and returns true if more
   * buffers arrived meanwhile (caller should keep popping). Without: clears
   * VRING_USED_F_NO_NOTIFY in used.flags, fences and re-checks the same way.
   * Returns false on a broken or unset queue.
   */
  enableNotification(): boolean {
    if (this.broken || this.usedBuf === null) return false;
    if (this.ringsDetached()) {
      this.markBroken('unmapped');
      return false;
    }
    if (this.eventIdx) {
      this.used16[availEventOffset(this.size) >>> 1] = this.lastAvail;
    } else {
      this.used16[USED_FLAGS >>> 1] = this.used16[USED_FLAGS >>> 1]! & ~VIRTQ_USED_F_NO_NOTIFY;
    }
    this.ops.fence();
    return this.available() > 0;
  }

  /** Without EVENT_IDX sets VRING_USED_F_NO_NOTIFY; with it, leaves avail_event stale. */
  disableNotification(): void {
    if (this.usedBuf === null || this.eventIdx || this.used16.length === 0) return;
    this.used16[USED_FLAGS >>> 1] = this.used16[USED_FLAGS >>> 1]! | VIRTQ_USED_F_NO_NOTIFY;
  }
}
