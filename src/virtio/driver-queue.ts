// Driver side of a split virtqueue, for the QEMU-free frontend (and the ring tests).
// The frontend owns guest memory (a memfd it maps itself) and hands this class one
// contiguous area inside one mapping window; the rings (and, when indirect descriptors
// are used, one indirect table per descriptor slot) are laid out in it. Buffers are
// given as guest-physical (addr, len) pairs: the backend translates them.
//
// The device is not trusted either (the frontend tests other backends): used-ring ids
// and counts are checked; a bad one marks the queue broken instead of corrupting the
// free list. The free list lives in JS, never in the shared descriptor table.
//
// Hostile-guest tests use the raw methods (writeRawDescriptor, writeRawIndirect,
// publishRawHead, writeRawAvailIdx) to put malformed rings in front of a device.
import {
  AVAIL_FLAGS, AVAIL_IDX, USED_FLAGS, USED_IDX, VIRTQ_AVAIL_F_NO_INTERRUPT, VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, availEventOffset, availRingSize, descTableSize, isValidQueueSize,
  usedEventOffset, usedRingSize,
} from './layout.js';
import type { RingAddresses } from './queue.js';
import { defaultRingOps, type RingOps } from './ring-ops.js';

/** A guest-physical buffer. */
export interface GuestBuffer {
  readonly addr: number;
  readonly len: number;
}
/** Alias kept for callers that think of these as segments. */
export type Segmentish = GuestBuffer;

/** Where the rings live: `length` bytes at `offset` of one mapping window. */
export interface DriverQueueArea {
  readonly buf: ArrayBuffer;
  readonly offset: number;
  readonly length: number;
  /** Guest-physical address of the area's first byte. */
  readonly guestAddr: number;
  /** Frontend virtual address of the area's first byte (what SET_VRING_ADDR carries). */
  readonly userAddr: number;
}

export interface DriverQueueOptions {
  /** Power of two, 1..32768. */
  readonly size: number;
  readonly area: DriverQueueArea;
  /** VIRTIO_RING_F_EVENT_IDX negotiated. */
  readonly eventIdx?: boolean;
  /**
   * Use an indirect table for every request of more than one buffer (as Linux does when
   * VIRTIO_RING_F_INDIRECT_DESC is negotiated). Reserves the table space in the area.
   */
  readonly indirect?: boolean;
  /** Descriptors per indirect table (default: size). */
  readonly maxIndirect?: number;
  /** Kick eventfd; -1 (default) publishes without signalling. */
  readonly kickFd?: number;
  readonly ops?: RingOps;
}

/** Byte offsets (from the area start) of everything DriverQueue lays out. */
export interface DriverQueueLayout {
  readonly desc: number;
  readonly avail: number;
  readonly used: number;
  /** First indirect table (slot i is at indirect + i * maxIndirect * 16); = total if none. */
  readonly indirect: number;
  readonly indirectStride: number;
  readonly total: number;
}

export interface Completion<T> {
  readonly head: number;
  /** The token given to add(); undefined for heads published with publishRawHead. */
  readonly token: T | undefined;
  readonly len: number;
}

function align(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}

export class DriverQueueError extends Error {
  readonly errno = 22; // EINVAL
  readonly code = 'EINVAL';
  constructor(message: string) {
    super(message);
    this.name = 'DriverQueueError';
  }
}

export class DriverQueue<T = unknown> {
  readonly size: number;
  readonly eventIdx: boolean;
  readonly indirect: boolean;
  readonly maxIndirect: number;
  readonly layout: DriverQueueLayout;
  kickFd: number;
  /** Set when the device returned something impossible (bad id, used.idx jump). */
  broken = false;
  /** Used-ring entries whose id was not an in-flight head. */
  badCompletions = 0;

  private readonly area: DriverQueueArea;
  private readonly ops: RingOps;
  private readonly mask: number;
  private readonly desc32: Uint32Array;
  private readonly desc16: Uint16Array;
  private readonly avail16: Uint16Array;
  private readonly used16: Uint16Array;
  private readonly used32: Uint32Array;
  private readonly ind32: Uint32Array | null;
  private readonly ind16: Uint16Array | null;
  private readonly availByteOffset: number;
  private readonly usedByteOffset: number;

  // Free list (JS-side: the device can scribble on the shared table).
  private readonly nextFree: Uint16Array;
  private freeHead = 0;
  private free: number;
  /** Descriptors owned by each in-flight head (0 when not in flight). */
  private readonly chainDescs: Uint16Array;
  private readonly tokens: Array<T | undefined>;
  private readonly rawInFlight: Uint8Array;

  private availIdxValue = 0; // next avail idx to write
  private kickedIdx = 0; // avail.idx as last published
  private lastUsed = 0;
  private callbacks = true;

  /** Byte layout for a queue of `size` (indirect tables of maxIndirect descriptors if indirect). */
  static layoutFor(size: number, indirect = false, maxIndirect = size): DriverQueueLayout {
    const desc = 0;
    const avail = descTableSize(size);
    const used = align(avail + availRingSize(size), 4);
    const end = used + usedRingSize(size);
    if (!indirect) return { desc, avail, used, indirect: end, indirectStride: 0, total: end };
    const ind = align(end, 16);
    const stride = 16 * maxIndirect;
    return { desc, avail, used, indirect: ind, indirectStride: stride, total: ind + size * stride };
  }

  constructor(options: DriverQueueOptions) {
    const { size, area } = options;
    if (!isValidQueueSize(size)) throw new DriverQueueError(`bad queue size ${size}`);
    this.size = size;
    this.mask = size - 1;
    this.eventIdx = options.eventIdx ?? false;
    this.indirect = options.indirect ?? false;
    this.maxIndirect = options.maxIndirect ?? size;
    if (!Number.isInteger(this.maxIndirect) || this.maxIndirect < 1 || this.maxIndirect > 0xfffffff) {
      throw new DriverQueueError(`bad maxIndirect ${this.maxIndirect}`);
    }
    this.kickFd = options.kickFd ?? -1;
    this.ops = options.ops ?? defaultRingOps();
    this.area = area;
    const l = DriverQueue.layoutFor(size, this.indirect, this.maxIndirect);
    this.layout = l;
    if (area.offset % 16 !== 0 || area.guestAddr % 16 !== 0) {
      throw new DriverQueueError('ring area must be 16-byte aligned');
    }
    if (area.length < l.total || area.offset + area.length > area.buf.byteLength) {
      throw new DriverQueueError(`ring area of ${area.length} bytes is too small (needs ${l.total})`);
    }
    const b = area.buf;
    const o = area.offset;
    this.desc32 = new Uint32Array(b, o + l.desc, 4 * size);
    this.desc16 = new Uint16Array(b, o + l.desc, 8 * size);
    this.availByteOffset = o + l.avail;
    this.avail16 = new Uint16Array(b, this.availByteOffset, 3 + size);
    this.usedByteOffset = o + l.used;
    this.used32 = new Uint32Array(b, this.usedByteOffset, 1 + 2 * size);
    this.used16 = new Uint16Array(b, this.usedByteOffset, 3 + 4 * size);
    if (this.indirect) {
      this.ind32 = new Uint32Array(b, o + l.indirect, (size * l.indirectStride) >>> 2);
      this.ind16 = new Uint16Array(b, o + l.indirect, (size * l.indirectStride) >>> 1);
    } else {
      this.ind32 = null;
      this.ind16 = null;
    }
    new Uint8Array(b, o, l.total).fill(0);

    this.nextFree = new Uint16Array(size);
    for (let i = 0; i < size; i++) this.nextFree[i] = i + 1; // last one points at size (end)
    this.free = size;
    this.chainDescs = new Uint16Array(size);
    this.tokens = new Array<T | undefined>(size);
    this.rawInFlight = new Uint8Array(size);
  }

  /** Frontend virtual ring addresses for SET_VRING_ADDR. */
  get ringAddresses(): RingAddresses {
    const u = this.area.userAddr;
    return { desc: u + this.layout.desc, avail: u + this.layout.avail, used: u + this.layout.used, flags: 0 };
  }
  /** Guest-physical ring addresses (what a virtio-pci driver would program). */
  get guestRingAddresses(): RingAddresses {
    const g = this.area.guestAddr;
    return { desc: g + this.layout.desc, avail: g + this.layout.avail, used: g + this.layout.used, flags: 0 };
  }

  get numFree(): number {
    return this.free;
  }
  /** Next avail index add() will fill (what SET_VRING_BASE sends for a fresh ring: 0). */
  get availIdx(): number {
    return this.availIdxValue;
  }
  get lastUsedIdx(): number {
    return this.lastUsed;
  }
  /** Requests added (or raw heads published) and not yet completed. */
  get inFlight(): number {
    let n = 0;
    for (let i = 0; i < this.size; i++) if (this.chainDescs[i] !== 0 || this.rawInFlight[i] !== 0) n++;
    return n;
  }

  /** Guest-physical address of the indirect table reserved for descriptor slot `slot`. */
  indirectTableAddr(slot: number): number {
    if (!this.indirect) throw new DriverQueueError('queue has no indirect tables');
    return this.area.guestAddr + this.layout.indirect + slot * this.layout.indirectStride;
  }

  /**
   * Queues a request: device-readable buffers then device-writable ones. Returns the head
   * descriptor index, or -1 if there are not enough free descriptors. The request is
   * visible to the device after kick(). `useIndirect` overrides the queue's choice.
   */
  add(readable: readonly GuestBuffer[], writable: readonly GuestBuffer[], token: T, useIndirect?: boolean): number {
    const total = readable.length + writable.length;
    if (total === 0) throw new DriverQueueError('a request needs at least one buffer');
    for (const b of readable) checkBuffer(b);
    for (const b of writable) checkBuffer(b);
    const indirect = (useIndirect ?? (this.indirect && total > 1)) && this.indirect;
    if (indirect && total > this.maxIndirect) {
      throw new DriverQueueError(`${total} buffers exceed the indirect table size ${this.maxIndirect}`);
    }
    const need = indirect ? 1 : total;
    if (need > this.free) return -1;

    const head = this.freeHead;
    if (indirect) {
      const t32 = this.ind32!;
      const t16 = this.ind16!;
      const base = (head * this.layout.indirectStride) >>> 2;
      let j = 0;
      for (let k = 0; k < total; k++, j++) {
        const isW = k >= readable.length;
        const b = isW ? writable[k - readable.length]! : readable[k]!;
        const w = base + 4 * j;
        writeDesc(t32, t16, w, b.addr, b.len, (isW ? VIRTQ_DESC_F_WRITE : 0) | (k < total - 1 ? VIRTQ_DESC_F_NEXT : 0), k + 1 < total ? k + 1 : 0);
      }
      writeDesc(this.desc32, this.desc16, 4 * head, this.indirectTableAddr(head), 16 * total, VIRTQ_DESC_F_INDIRECT, 0);
      this.freeHead = this.nextFree[head]!;
    } else {
      let i = head;
      for (let k = 0; k < total; k++) {
        const isW = k >= readable.length;
        const b = isW ? writable[k - readable.length]! : readable[k]!;
        const last = k === total - 1;
        const next = this.nextFree[i]!;
        writeDesc(this.desc32, this.desc16, 4 * i, b.addr, b.len, (isW ? VIRTQ_DESC_F_WRITE : 0) | (last ? 0 : VIRTQ_DESC_F_NEXT), last ? 0 : next);
        i = next;
      }
      this.freeHead = i;
    }
    this.free -= need;
    this.chainDescs[head] = need;
    this.tokens[head] = token;
    this.avail16[2 + (this.availIdxValue & this.mask)] = head;
    this.availIdxValue = (this.availIdxValue + 1) & 0xffff;
    return head;
  }

  /**
   * Publishes avail.idx for everything added since the last kick (one fenced store) and
   * writes kickFd if the device wants a kick (avail_event / NO_NOTIFY). Returns whether
   * the device wanted it (whether or not kickFd is set).
   */
  kick(): boolean {
    const newIdx = this.availIdxValue;
    const oldIdx = this.kickedIdx;
    if (newIdx === oldIdx) return false;
    this.kickedIdx = newIdx;
    const ev = this.usedByteOffset + (this.eventIdx ? availEventOffset(this.size) : USED_FLAGS);
    return this.ops.publishIdx(this.area.buf, this.availByteOffset + AVAIL_IDX, newIdx, oldIdx, this.area.buf, ev, this.eventIdx, this.kickFd);
  }

  /** Reads the used ring: every completion since the last poll, in ring order. */
  poll(): Array<Completion<T>> {
    const out: Array<Completion<T>> = [];
    if (this.broken) return out;
    const idx = this.used16[USED_IDX >>> 1]!;
    const n = (idx - this.lastUsed) & 0xffff;
    if (n === 0) return out;
    if (n > this.size) {
      this.broken = true;
      return out;
    }
    this.ops.fence(); // read entries only after seeing the index
    for (let k = 0; k < n; k++) {
      const slot = this.lastUsed & this.mask;
      const id = this.used32[1 + 2 * slot]!;
      const len = this.used32[2 + 2 * slot]!;
      this.lastUsed = (this.lastUsed + 1) & 0xffff;
      if (id >= this.size) {
        this.badCompletions++;
        this.broken = true;
        continue;
      }
      const count = this.chainDescs[id]!;
      if (count !== 0) {
        const token = this.tokens[id];
        this.tokens[id] = undefined;
        this.releaseChain(id, count);
        out.push({ head: id, token, len });
      } else if (this.rawInFlight[id] !== 0) {
        this.rawInFlight[id] = 0;
        out.push({ head: id, token: undefined, len });
      } else {
        this.badCompletions++;
        this.broken = true;
      }
    }
    if (this.eventIdx && this.callbacks) this.avail16[usedEventOffset(this.size) >>> 1] = this.lastUsed;
    return out;
  }

  /**
   * Asks for call notifications again (used_event = last used idx, or clears
   * VRING_AVAIL_F_NO_INTERRUPT), fences, and returns true if completions arrived in the
   * meantime (the caller should poll() again rather than wait).
   */
  enableCallbacks(): boolean {
    this.callbacks = true;
    if (this.eventIdx) this.avail16[usedEventOffset(this.size) >>> 1] = this.lastUsed;
    else this.avail16[AVAIL_FLAGS >>> 1] = this.avail16[AVAIL_FLAGS >>> 1]! & ~VIRTQ_AVAIL_F_NO_INTERRUPT;
    this.ops.fence();
    return this.used16[USED_IDX >>> 1] !== this.lastUsed;
  }

  /** Stops asking for call notifications (NO_INTERRUPT; with EVENT_IDX used_event goes stale). */
  disableCallbacks(): void {
    this.callbacks = false;
    if (!this.eventIdx) this.avail16[AVAIL_FLAGS >>> 1] = this.avail16[AVAIL_FLAGS >>> 1]! | VIRTQ_AVAIL_F_NO_INTERRUPT;
  }

  /** Returns a completed chain's descriptors to the free list (walking the JS links). */
  private releaseChain(head: number, count: number): void {
    let last = head;
    for (let k = 1; k < count; k++) last = this.nextFree[last]!;
    this.nextFree[last] = this.freeHead;
    this.freeHead = head;
    this.free += count;
    this.chainDescs[head] = 0;
  }

  // ---- raw access for hostile-ring tests ------------------------------------------

  /**
   * Takes `n` descriptors off the free list for raw use (so add() will not reuse them);
   * returns their indices. Give them back with releaseRaw().
   */
  takeRaw(n: number): number[] {
    if (n > this.free) throw new DriverQueueError(`only ${this.free} descriptors free`);
    const out: number[] = [];
    for (let k = 0; k < n; k++) {
      out.push(this.freeHead);
      this.freeHead = this.nextFree[this.freeHead]!;
    }
    this.free -= n;
    return out;
  }

  /** Returns descriptors taken with takeRaw(). */
  releaseRaw(indices: readonly number[]): void {
    for (const i of indices) {
      this.nextFree[i] = this.freeHead;
      this.freeHead = i;
      this.free++;
    }
  }

  /** Writes descriptor `i` of the ring's table verbatim (addr as number or bigint u64). */
  writeRawDescriptor(i: number, addr: number | bigint, len: number, flags: number, next: number): void {
    if (!(i >= 0 && i < this.size)) throw new DriverQueueError(`descriptor ${i} outside the table`);
    writeDesc(this.desc32, this.desc16, 4 * i, addr, len, flags, next);
  }

  /** Writes entry j of the indirect table reserved for `slot` verbatim. */
  writeRawIndirect(slot: number, j: number, addr: number | bigint, len: number, flags: number, next: number): void {
    if (this.ind32 === null || this.ind16 === null) throw new DriverQueueError('queue has no indirect tables');
    if (!(slot >= 0 && slot < this.size && j >= 0 && j < this.maxIndirect)) {
      throw new DriverQueueError(`indirect entry ${slot}/${j} out of range`);
    }
    writeDesc(this.ind32, this.ind16, ((slot * this.layout.indirectStride) >>> 2) + 4 * j, addr, len, flags, next);
  }

  /**
   * Puts `head` (any u16, even >= size) in the next avail.ring slot; kick() publishes it.
   * A valid head is tracked so poll() accepts its completion (token undefined).
   */
  publishRawHead(head: number): void {
    this.avail16[2 + (this.availIdxValue & this.mask)] = head & 0xffff;
    this.availIdxValue = (this.availIdxValue + 1) & 0xffff;
    if (head >= 0 && head < this.size) this.rawInFlight[head] = 1;
  }

  /** Stores avail.idx verbatim (e.g. a jump past the ring size); later adds continue from it. */
  writeRawAvailIdx(idx: number): void {
    this.avail16[AVAIL_IDX >>> 1] = idx & 0xffff;
    this.availIdxValue = idx & 0xffff;
    this.kickedIdx = idx & 0xffff;
  }

  /**
   * Before any request: starts avail.idx, used.idx and every shadow index at `idx`, as a
   * ring resumed after many requests would (u16 wraparound without 65536 requests).
   * The device must be given the same index (SET_VRING_BASE) and read used.idx after.
   */
  startAt(idx: number): void {
    if (this.free !== this.size) throw new DriverQueueError('startAt needs an idle queue');
    const v = idx & 0xffff;
    this.avail16[AVAIL_IDX >>> 1] = v;
    this.used16[USED_IDX >>> 1] = v;
    if (this.eventIdx) this.avail16[usedEventOffset(this.size) >>> 1] = v;
    this.availIdxValue = v;
    this.kickedIdx = v;
    this.lastUsed = v;
  }

  /** Writes avail.ring[slot] verbatim without touching the index. */
  writeRawAvailEntry(slot: number, head: number): void {
    this.avail16[2 + (slot & this.mask)] = head & 0xffff;
  }
}

function checkBuffer(b: GuestBuffer): void {
  if (!Number.isSafeInteger(b.addr) || b.addr < 0 || !Number.isInteger(b.len) || b.len < 0 || b.len > 0xffffffff) {
    throw new DriverQueueError(`bad buffer addr=${b.addr} len=${b.len}`);
  }
}

function writeDesc(
  d32: Uint32Array, d16: Uint16Array, w: number, addr: number | bigint, len: number, flags: number, next: number,
): void {
  if (typeof addr === 'bigint') {
    const a = BigInt.asUintN(64, addr);
    d32[w] = Number(a & 0xffffffffn);
    d32[w + 1] = Number(a >> 32n);
  } else {
    d32[w] = addr % 0x100000000;
    d32[w + 1] = Math.floor(addr / 0x100000000);
  }
  d32[w + 2] = len >>> 0;
  d16[2 * w + 6] = flags & 0xffff;
  d16[2 * w + 7] = next & 0xffff;
}
