// A virtio-blk driver without a kernel: builds virtio-blk requests (header, data, status
// byte) in shared memory and sends them through VirtioClient to any vhost-user-blk
// backend — vhost-s3 or qemu-storage-daemon.
import { BlkStatus, BlkType, CONFIG_SIZE, DISCARD_SEGMENT_SIZE, ID_BYTES, OUTHDR_SIZE, SECTOR_SIZE,
  VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_RO,
  VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_TOPOLOGY, VIRTIO_BLK_F_WRITE_ZEROES,
} from '../blk/protocol.js';
import type { VhostLogger } from '../vhost/backend-session.js';
import type { SharedBuffer } from './memory.js';
import { STATUS_DISCONNECTED, type BlkIo } from './blk-load.js';
import { VirtioClient } from './virtio-client.js';

/** Status reported when the device gave back a chain without a believable status byte. */
export const STATUS_BAD_REPLY = -1;
export { STATUS_DISCONNECTED };

export type BlkDone = (status: number) => void;

export interface BlkRange {
  readonly offset: number;
  readonly length: number;
}

export interface BlkClientOptions {
  readonly queues?: number;
  readonly queueSize?: number;
  readonly memorySize?: number;
  readonly indirect?: boolean;
  readonly eventIdx?: boolean;
  readonly log?: VhostLogger;
  /** Negotiate INFLIGHT_SHMFD when offered, as QEMU (default true; see VirtioClientOptions). */
  readonly inflight?: boolean;
  /** Reconnect to a restarted backend and have it finish outstanding requests (see VirtioClientOptions). */
  readonly reconnectMs?: number;
}

/** The parts of struct virtio_blk_config the client uses. */
export interface BlkConfig {
  readonly capacitySectors: number;
  readonly sizeMax: number;
  readonly segMax: number;
  readonly blkSize: number;
  readonly numQueues: number;
  readonly maxDiscardSectors: number;
  readonly maxDiscardSeg: number;
  readonly maxWriteZeroesSectors: number;
  readonly maxWriteZeroesSeg: number;
}

export function decodeBlkConfig(bytes: Uint8Array): BlkConfig {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return {
    capacitySectors: Number(v.getBigUint64(0, true)),
    sizeMax: v.getUint32(8, true),
    segMax: v.getUint32(12, true),
    blkSize: v.getUint32(20, true),
    numQueues: v.getUint16(34, true),
    maxDiscardSectors: v.getUint32(36, true),
    maxDiscardSeg: v.getUint32(40, true),
    maxWriteZeroesSectors: v.getUint32(48, true),
    maxWriteZeroesSeg: v.getUint32(52, true),
  };
}

const MAX_RANGES = 16;
/** Per-request scratch in shared memory: header, discard ranges, status byte, id buffer. */
const SLOT_HDR = 0;
const SLOT_RANGES = OUTHDR_SIZE;
const SLOT_STATUS = SLOT_RANGES + MAX_RANGES * DISCARD_SEGMENT_SIZE;
const SLOT_ID = SLOT_STATUS + 8;
const SLOT_SIZE = 320;

interface Slot {
  readonly mem: SharedBuffer;
  readonly view: DataView;
  readonly hdr: SharedBuffer;
  readonly status: SharedBuffer;
  readonly id: SharedBuffer;
  done: BlkDone | null;
}

export const BLK_FEATURES = VIRTIO_BLK_F_SIZE_MAX | VIRTIO_BLK_F_SEG_MAX | VIRTIO_BLK_F_RO | VIRTIO_BLK_F_BLK_SIZE
  | VIRTIO_BLK_F_FLUSH | VIRTIO_BLK_F_TOPOLOGY | VIRTIO_BLK_F_MQ | VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES;

export class BlkClient implements BlkIo {
  private readonly slots: Slot[][] = [];
  private readonly freeSlots: Slot[][] = [];
  /** Requests waiting for a free slot (more in flight than the queue size). */
  private readonly waiting: (() => void)[][] = [];

  private constructor(
    private readonly client: VirtioClient<Slot>,
    readonly config: BlkConfig,
  ) {
    for (let q = 0; q < client.numQueues; q++) {
      const slots: Slot[] = [];
      for (let i = 0; i < 256; i++) slots.push(makeSlot(client.memory.alloc(SLOT_SIZE, 64)));
      this.slots.push(slots);
      this.freeSlots.push([...slots]);
      this.waiting.push([]);
    }
    client.onDisconnect(() => this.failOutstanding());
  }

  static async connect(path: string, opts: BlkClientOptions = {}): Promise<BlkClient> {
    let config: BlkConfig | null = null;
    let self: BlkClient | null = null;
    const client = await VirtioClient.connect<Slot>(
      path,
      {
        queues: opts.queues ?? 1,
        queueSize: opts.queueSize ?? 128,
        memorySize: opts.memorySize ?? 64 << 20,
        deviceFeatures: BLK_FEATURES,
        indirect: opts.indirect,
        eventIdx: opts.eventIdx,
        log: opts.log,
        inflight: opts.inflight,
        reconnectMs: opts.reconnectMs,
      },
      (queue, slot, len) => self!.complete(queue, slot, len),
      async (session, _features, backendQueues) => {
        config = decodeBlkConfig(await session.getConfig(0, CONFIG_SIZE));
        const offered = config.numQueues > 0 ? Math.min(config.numQueues, backendQueues) : backendQueues;
        return Math.min(opts.queues ?? 1, offered);
      },
    );
    self = new BlkClient(client, config!);
    return self;
  }

  get capacity(): number {
    return this.config.capacitySectors * SECTOR_SIZE;
  }
  get numQueues(): number {
    return this.client.numQueues;
  }
  get features(): bigint {
    return this.client.features;
  }
  get readOnly(): boolean {
    return (this.client.features & VIRTIO_BLK_F_RO) !== 0n;
  }
  get broken(): boolean {
    return this.client.broken;
  }
  /** The backend closed the connection: every request now completes with STATUS_DISCONNECTED. */
  get disconnected(): boolean {
    return this.client.disconnected;
  }
  /** The generic client underneath: raw rings and raw completions for hostile tests. */
  get virtio(): VirtioClient<unknown> {
    return this.client as VirtioClient<unknown>;
  }

  /** Allocates a buffer in shared memory (guest RAM) for request data. */
  allocBuffer(length: number): SharedBuffer {
    return this.client.memory.alloc(length, 4096);
  }

  // ---- callback API (hot path) ------------------------------------------------------

  read(queue: number, offset: number, bufs: SharedBuffer | readonly SharedBuffer[], done: BlkDone): void {
    this.request(queue, BlkType.In, offset, [], asList(bufs), done);
  }
  write(queue: number, offset: number, bufs: SharedBuffer | readonly SharedBuffer[], done: BlkDone): void {
    this.request(queue, BlkType.Out, offset, asList(bufs), [], done);
  }
  flush(queue: number, done: BlkDone): void {
    this.request(queue, BlkType.Flush, 0, [], [], done);
  }
  discard(queue: number, ranges: readonly BlkRange[], done: BlkDone): void {
    this.rangeRequest(queue, BlkType.Discard, ranges, false, done);
  }
  writeZeroes(queue: number, ranges: readonly BlkRange[], unmap: boolean, done: BlkDone): void {
    this.rangeRequest(queue, BlkType.WriteZeroes, ranges, unmap, done);
  }
  /** GET_ID: the serial (NUL padding stripped), or null with the failing status. */
  getId(queue: number, done: (status: number, id: string | null) => void): void {
    this.withSlot(queue, (slot) => {
      this.send(queue, slot, BlkType.GetId, 0, [slot.hdr], [slot.id, slot.status], (status) => {
        if (status !== BlkStatus.Ok) return done(status, null);
        const bytes = slot.id.bytes;
        const end = bytes.indexOf(0);
        done(status, new TextDecoder().decode(bytes.subarray(0, end < 0 ? ID_BYTES : end)));
      });
    });
  }

  /**
   * Any request: `type` and byte `offset` (sent as sector offset/512) with the given data
   * buffers after the header and before the status byte. For tests that send odd requests.
   */
  request(queue: number, type: number, offset: number, readable: readonly SharedBuffer[], writable: readonly SharedBuffer[], done: BlkDone): void {
    this.withSlot(queue, (slot) => {
      this.send(queue, slot, type, Math.floor(offset / SECTOR_SIZE), [slot.hdr, ...readable], [...writable, slot.status], done);
    });
  }

  // ---- promise API (tests, tools) ---------------------------------------------------

  readAsync(queue: number, offset: number, bufs: SharedBuffer | readonly SharedBuffer[]): Promise<number> {
    return new Promise((resolve) => this.read(queue, offset, bufs, resolve));
  }
  writeAsync(queue: number, offset: number, bufs: SharedBuffer | readonly SharedBuffer[]): Promise<number> {
    return new Promise((resolve) => this.write(queue, offset, bufs, resolve));
  }
  flushAsync(queue = 0): Promise<number> {
    return new Promise((resolve) => this.flush(queue, resolve));
  }
  discardAsync(queue: number, ranges: readonly BlkRange[]): Promise<number> {
    return new Promise((resolve) => this.discard(queue, ranges, resolve));
  }
  writeZeroesAsync(queue: number, ranges: readonly BlkRange[], unmap = false): Promise<number> {
    return new Promise((resolve) => this.writeZeroes(queue, ranges, unmap, resolve));
  }
  getIdAsync(queue = 0): Promise<{ status: number; id: string | null }> {
    return new Promise((resolve) => this.getId(queue, (status, id) => resolve({ status, id })));
  }
  requestAsync(queue: number, type: number, offset: number, readable: readonly SharedBuffer[], writable: readonly SharedBuffer[]): Promise<number> {
    return new Promise((resolve) => this.request(queue, type, offset, readable, writable, resolve));
  }

  close(): Promise<void> {
    return this.client.close();
  }

  // ---- internals -----------------------------------------------------------------------

  private rangeRequest(queue: number, type: BlkType, ranges: readonly BlkRange[], unmap: boolean, done: BlkDone): void {
    if (ranges.length === 0 || ranges.length > MAX_RANGES) throw new RangeError(`1..${MAX_RANGES} ranges per request`);
    this.withSlot(queue, (slot) => {
      ranges.forEach((r, i) => {
        const p = SLOT_RANGES + i * DISCARD_SEGMENT_SIZE;
        slot.view.setBigUint64(p, BigInt(Math.floor(r.offset / SECTOR_SIZE)), true);
        slot.view.setUint32(p + 8, Math.floor(r.length / SECTOR_SIZE), true);
        slot.view.setUint32(p + 12, unmap ? 1 : 0, true);
      });
      const hdrAndRanges = this.client.memory.at(slot.mem.gpa - this.client.memory.guestBase, OUTHDR_SIZE + ranges.length * DISCARD_SEGMENT_SIZE);
      this.send(queue, slot, type, 0, [hdrAndRanges], [slot.status], done);
    });
  }

  private withSlot(queue: number, use: (slot: Slot) => void): void {
    const free = this.freeSlots[queue];
    if (!free) throw new RangeError(`queue ${queue} is not running`);
    const slot = free.pop();
    if (slot) use(slot);
    else this.waiting[queue]!.push(() => this.withSlot(queue, use));
  }

  private send(queue: number, slot: Slot, type: number, sector: number, readable: SharedBuffer[], writable: SharedBuffer[], done: BlkDone): void {
    if (this.client.disconnected) {
      this.freeSlots[queue]!.push(slot);
      queueMicrotask(() => done(STATUS_DISCONNECTED));
      return;
    }
    slot.view.setUint32(SLOT_HDR, type, true);
    slot.view.setUint32(SLOT_HDR + 4, 0, true);
    slot.view.setBigUint64(SLOT_HDR + 8, BigInt(sector), true);
    slot.status.bytes[0] = 0xff; // so that a device that never writes it is caught
    slot.done = done;
    this.client.submit(queue, readable, writable, slot);
  }

  /** The backend is gone: requests in the ring, in the backlog or waiting for a slot fail now. */
  private failOutstanding(): void {
    for (let q = 0; q < this.slots.length; q++) {
      for (const slot of this.slots[q]!) {
        const done = slot.done;
        if (done === null) continue;
        slot.done = null;
        this.freeSlots[q]!.push(slot);
        done(STATUS_DISCONNECTED);
      }
      for (const waiter of this.waiting[q]!.splice(0)) waiter();
    }
  }

  private complete(queue: number, slot: Slot, len: number): void {
    const done = slot.done!;
    slot.done = null;
    const status = slot.status.bytes[0]!;
    this.freeSlots[queue]!.push(slot);
    const waiter = this.waiting[queue]!.shift();
    if (waiter) waiter();
    done(len >= 1 && status <= BlkStatus.Unsupp ? status : STATUS_BAD_REPLY);
  }
}

function asList(bufs: SharedBuffer | readonly SharedBuffer[]): readonly SharedBuffer[] {
  return Array.isArray(bufs) ? bufs : [bufs as SharedBuffer];
}

function makeSlot(mem: SharedBuffer): Slot {
  const sub = (off: number, len: number): SharedBuffer => ({ gpa: mem.gpa + off, uva: mem.uva + off, bytes: mem.bytes.subarray(off, off + len) });
  return {
    mem,
    view: new DataView(mem.bytes.buffer, mem.bytes.byteOffset, mem.bytes.byteLength),
    hdr: sub(SLOT_HDR, OUTHDR_SIZE),
    status: sub(SLOT_STATUS, 1),
    id: sub(SLOT_ID, ID_BYTES),
    done: null,
  };
}
