// The virtio-blk device: turns descriptor chains into image-driver calls and writes the
// status byte back. Every field of a request comes from the guest and is checked here
// before the image sees it; a bad request gets IOERR/UNSUPP and serving goes on.
import type { VhostUserDevice } from '../vhost/device.js';
import type { DeviceQueue } from '../virtio/queue.js';
import { ServedQueue } from '../virtio/served-queue.js';
import type { DescriptorChain } from '../virtio/chain.js';
import type { Segment } from '../virtio/memory.js';
import { VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC } from '../virtio/features.js';
import type { Logger } from '../util/log.js';
import type { BlockImage } from './image.js';
import type { RequestObserver } from '../metrics/observer.js';
import { BlkRequestMeter, NO_TYPE } from './request-meter.js';
import { DEFAULT_LIMITS, encodeBlkConfig, type BlkLimits } from './config-space.js';
import {
  BlkStatus, BlkType, DISCARD_SEGMENT_SIZE, ID_BYTES, OUTHDR_SIZE, SECTOR_SHIFT, SECTOR_SIZE,
  VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_RO,
  VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_TOPOLOGY, VIRTIO_BLK_F_WRITE_ZEROES,
  WRITE_ZEROES_FLAG_UNMAP,
} from './protocol.js';

/** vhost-user protocol feature CONFIG: QEMU refuses a vhost-user-blk backend without it. */
const VHOST_USER_PROTOCOL_F_CONFIG = 1n << 9n;
/**
 * INFLIGHT_SHMFD: requests in flight are tracked in memory the frontend keeps, so that a
 * restarted gateway serves again what a killed one had taken (block requests can be repeated).
 */
const VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD = 1n << 12n;

export interface BlkDeviceOptions {
  readonly image: BlockImage;
  readonly numQueues: number;
  /** GET_ID answer (at most 20 bytes); without one GET_ID is unsupported. */
  readonly serial?: string;
  readonly limits?: BlkLimits;
  readonly log: Logger;
  /** Reports every request (metrics); absent: nothing is measured. */
  readonly observer?: RequestObserver;
}

export interface BlkCounters {
  requests: number;
  errors: number;
  badChains: number;
}

export class BlkDevice implements VhostUserDevice {
  readonly kind = 'blk';
  readonly maxQueues: number;
  readonly features: bigint;
  readonly protocolFeatures = VHOST_USER_PROTOCOL_F_CONFIG | VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD;
  readonly counters: BlkCounters = { requests: 0, errors: 0, badChains: 0 };
  private readonly image: BlockImage;
  private readonly limits: BlkLimits;
  private readonly serial: Uint8Array | null;
  private readonly config: Uint8Array;
  private readonly log: Logger;
  private readonly queues = new Map<number, ServedQueue>();
  private readonly capacitySectors: number;
  private readonly meter: BlkRequestMeter | undefined;

  constructor(opts: BlkDeviceOptions) {
    this.meter = opts.observer && new BlkRequestMeter(opts.observer);
    this.image = opts.image;
    this.limits = opts.limits ?? DEFAULT_LIMITS;
    this.log = opts.log;
    this.maxQueues = opts.numQueues;
    this.capacitySectors = Math.floor(opts.image.size / SECTOR_SIZE);
    this.serial = opts.serial === undefined || opts.serial === '' ? null : encodeSerial(opts.serial);
    let f = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | VIRTIO_RING_F_INDIRECT_DESC
      | VIRTIO_BLK_F_SIZE_MAX | VIRTIO_BLK_F_SEG_MAX | VIRTIO_BLK_F_BLK_SIZE | VIRTIO_BLK_F_FLUSH
      | VIRTIO_BLK_F_TOPOLOGY | VIRTIO_BLK_F_MQ;
    if (opts.image.readOnly) f |= VIRTIO_BLK_F_RO;
    else {
      if (opts.image.canDiscard) f |= VIRTIO_BLK_F_DISCARD;
      if (opts.image.canWriteZeroes) f |= VIRTIO_BLK_F_WRITE_ZEROES;
    }
    this.features = f;
    this.config = encodeBlkConfig({
      capacitySectors: this.capacitySectors,
      logicalBlockSize: opts.image.logicalBlockSize,
      optimalIoSize: opts.image.optimalIoSize,
      numQueues: opts.numQueues,
      limits: this.limits,
    });
  }

  getConfig(offset: number, size: number): Uint8Array {
    const out = new Uint8Array(size);
    if (offset < this.config.length) out.set(this.config.subarray(offset, Math.min(this.config.length, offset + size)));
    return out;
  }

  /** The writeback byte is the only writable field (CONFIG_WCE), which we do not offer. */
  setConfig(): boolean {
    return false;
  }

  setFeatures(): void {}

  startQueue(queue: DeviceQueue): void {
    this.queues.set(queue.index, new ServedQueue(queue));
    this.meter?.startQueue(queue.index, queue.size);
  }

  /** Requests the driver made available and the device has not taken yet, over every queue. */
  get queueDepth(): number {
    let n = 0;
    for (const st of this.queues.values()) n += st.queue.available();
    return n;
  }

  onKick(queue: DeviceQueue): void {
    const st = this.queues.get(queue.index);
    if (!st || st.queue !== queue) return;
    st.drain((r) => (r.kind === 'chain' ? this.handle(st, r.chain) : this.failBadChain(st, r.head, r.error)));
    this.image.unplug();
  }

  async stopQueue(queue: DeviceQueue): Promise<void> {
    const st = this.queues.get(queue.index);
    if (!st) return;
    await st.stop();
    this.queues.delete(queue.index);
  }

  reset(): void {
    this.queues.clear();
  }

  private failBadChain(st: ServedQueue, head: number, error: string): void {
    this.counters.badChains++;
    this.log.warn('malformed descriptor chain', { queue: st.queue.index, head, error });
    if (head >= 0 && head < st.queue.size) st.complete(head, 0);
  }

  private handle(st: ServedQueue, chain: DescriptorChain): void {
    this.counters.requests++;
    if (this.meter !== undefined) {
      const known = chain.readableLength >= OUTHDR_SIZE;
      this.meter.begin(st.queue.index, chain.head, known ? chain.readU32(0) : NO_TYPE, known ? chain.readableLength - OUTHDR_SIZE : 0);
    }
    const wlen = chain.writableLength;
    if (wlen < 1) {
      // No room for a status byte: nothing can be reported; hand the buffers back.
      this.counters.errors++;
      this.meter?.end(st.queue.index, chain.head, BlkStatus.IoErr, 0);
      st.complete(chain.head, 0);
      return;
    }
    if (chain.readableLength < OUTHDR_SIZE) return this.finish(st, chain, BlkStatus.IoErr, 0);
    const type = chain.readU32(0);
    const sector = chain.readU64(8);
    switch (type) {
      case BlkType.In:
        return this.readWrite(st, chain, sector, false);
      case BlkType.Out:
        return this.readWrite(st, chain, sector, true);
      case BlkType.Flush:
        st.begin();
        this.image.flush((res) => this.finishAsync(st, chain, res < 0 ? BlkStatus.IoErr : BlkStatus.Ok, 0));
        return;
      case BlkType.GetId:
        return this.getId(st, chain);
      case BlkType.Discard:
      case BlkType.WriteZeroes:
        return this.discardOrZero(st, chain, type === BlkType.Discard);
      default:
        return this.finish(st, chain, BlkStatus.Unsupp, 0);
    }
  }

  private readWrite(st: ServedQueue, chain: DescriptorChain, sector: number, isWrite: boolean): void {
    const dataLen = isWrite ? chain.readableLength - OUTHDR_SIZE : chain.writableLength - 1;
    // Data goes one way only: a write's data is device-readable and a read's device-writable.
    // Anything else in the other direction means a confused or hostile driver.
    const stray = isWrite ? chain.writableLength - 1 : chain.readableLength - OUTHDR_SIZE;
    if (stray !== 0 || (isWrite && this.image.readOnly)) return this.finish(st, chain, BlkStatus.IoErr, 0);
    if (!this.inRange(sector, dataLen) || dataLen % SECTOR_SIZE !== 0 || dataLen > this.limits.maxRequestBytes) {
      return this.finish(st, chain, BlkStatus.IoErr, 0);
    }
    if (dataLen === 0) return this.finish(st, chain, BlkStatus.Ok, 0);
    const segs: Segment[] = [];
    const ok = isWrite ? chain.sliceReadable(OUTHDR_SIZE, dataLen, segs) : chain.sliceWritable(0, dataLen, segs);
    if (!ok) return this.finish(st, chain, BlkStatus.IoErr, 0);
    const offset = sector * SECTOR_SIZE;
    // The kernel may copy to or from these segments on another thread (io_uring workers):
    // a SET_MEM_TABLE meanwhile must not unmap them (GuestMemory.pin).
    const unpin = st.queue.guestMemory?.pin();
    st.begin();
    const done = (res: number): void => {
      unpin?.();
      this.finishAsync(st, chain, res < 0 ? BlkStatus.IoErr : BlkStatus.Ok, res < 0 || isWrite ? 0 : dataLen);
    };
    if (isWrite) this.image.write(offset, segs, done);
    else this.image.read(offset, segs, done);
  }

  private getId(st: ServedQueue, chain: DescriptorChain): void {
    if (!this.serial) return this.finish(st, chain, BlkStatus.Unsupp, 0);
    const n = Math.min(ID_BYTES, chain.writableLength - 1);
    chain.write(0, this.serial.subarray(0, n));
    this.finish(st, chain, BlkStatus.Ok, n);
  }

  private discardOrZero(st: ServedQueue, chain: DescriptorChain, isDiscard: boolean): void {
    const supported = isDiscard ? this.features & VIRTIO_BLK_F_DISCARD : this.features & VIRTIO_BLK_F_WRITE_ZEROES;
    if (this.image.readOnly) return this.finish(st, chain, BlkStatus.IoErr, 0);
    if (!supported) return this.finish(st, chain, BlkStatus.Unsupp, 0);
    const payload = chain.readableLength - OUTHDR_SIZE;
    const maxSegs = isDiscard ? this.limits.maxDiscardSegments : this.limits.maxWriteZeroesSegments;
    const maxSectors = isDiscard ? this.limits.maxDiscardSectors : this.limits.maxWriteZeroesSectors;
    if (payload <= 0 || payload % DISCARD_SEGMENT_SIZE !== 0 || payload / DISCARD_SEGMENT_SIZE > maxSegs) {
      return this.finish(st, chain, BlkStatus.IoErr, 0);
    }
    const ranges: { offset: number; length: number; unmap: boolean }[] = [];
    for (let p = OUTHDR_SIZE; p < chain.readableLength; p += DISCARD_SEGMENT_SIZE) {
      const sector = chain.readU64(p);
      const count = chain.readU32(p + 8);
      const flags = chain.readU32(p + 12);
      const allowedFlags = isDiscard ? 0 : WRITE_ZEROES_FLAG_UNMAP;
      if ((flags & ~allowedFlags) !== 0) return this.finish(st, chain, BlkStatus.Unsupp, 0);
      if (count > maxSectors || !this.inRange(sector, count * SECTOR_SIZE)) {
        return this.finish(st, chain, BlkStatus.IoErr, 0);
      }
      if (count > 0) ranges.push({ offset: sector * SECTOR_SIZE, length: count << SECTOR_SHIFT, unmap: (flags & 1) !== 0 });
    }
    if (ranges.length === 0) return this.finish(st, chain, BlkStatus.Ok, 0);
    let remaining = ranges.length;
    let status = BlkStatus.Ok;
    st.begin();
    const done = (res: number): void => {
      if (res < 0) status = BlkStatus.IoErr;
      if (--remaining === 0) this.finishAsync(st, chain, status, 0);
    };
    for (const r of ranges) {
      if (isDiscard) this.image.discard(r.offset, r.length, done);
      else this.image.writeZeroes(r.offset, r.length, r.unmap, done);
    }
  }

  /** sector and byte length lie inside the disk (sector = -1 when it did not fit a double). */
  private inRange(sector: number, byteLen: number): boolean {
    return sector >= 0 && sector <= this.capacitySectors && byteLen <= (this.capacitySectors - sector) * SECTOR_SIZE;
  }

  private finishAsync(st: ServedQueue, chain: DescriptorChain, status: BlkStatus, dataWritten: number): void {
    this.finish(st, chain, status, dataWritten);
    st.end();
  }

  /** Writes the status byte (the chain's last writable byte) and returns the chain. */
  private finish(st: ServedQueue, chain: DescriptorChain, status: BlkStatus, dataWritten: number): void {
    if (status !== BlkStatus.Ok) this.counters.errors++;
    chain.writeU8(chain.writableLength - 1, status);
    this.meter?.end(st.queue.index, chain.head, status, dataWritten);
    st.complete(chain.head, dataWritten + 1);
  }


}

function encodeSerial(serial: string): Uint8Array {
  const bytes = new Uint8Array(ID_BYTES);
  bytes.set(new TextEncoder().encode(serial).subarray(0, ID_BYTES));
  return bytes;
}
