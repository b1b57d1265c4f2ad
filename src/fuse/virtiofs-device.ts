// The virtio-fs device (vhost-user-fs): FUSE over virtqueues, served by a FuseServer.
//
// Queue 0 is hiprio: the guest sends FORGET / BATCH_FORGET (and could send INTERRUPT)
// there and expects no reply; each chain is given back with length 0 once handled.
// Queues 1..N carry requests: the device-readable part is fuse_in_header + arguments,
// the device-writable part receives fuse_out_header + the reply; both may span any
// number of descriptors. QEMU serves the config space (tag, num_request_queues) itself,
// so getConfig() is all zeros.
//
// Everything in a chain comes from the guest. A request is copied once out of guest
// memory into a fresh buffer (write data included: the Vfs may keep it, and a guest must
// not be able to change it underneath). A reply is written part by part straight into
// the writable descriptors (READ data goes from the Vfs's buffer to guest memory in one
// copy; a file that reads in place, as the file store's do, is read by preadv straight
// into the descriptors: PayloadTarget in server.ts; a large one by an io_uring worker,
// with the guest memory pinned and the chain kept until the copy completed:
// AsyncPayloadTarget). A chain whose writable part cannot
// hold even an out header is given back with length 0; one with too much readable data is
// answered EINVAL without being copied.
import type { VhostUserDevice } from '../vhost/device.js';
import type { DeviceQueue, PopResult } from '../virtio/queue.js';
import { ServedQueue } from '../virtio/served-queue.js';
import type { DescriptorChain } from '../virtio/chain.js';
import type { GuestMemory, Segment } from '../virtio/memory.js';
import { VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC } from '../virtio/features.js';
import type { Logger } from '../util/log.js';
import { E, IN_HEADER_SIZE, OUT_HEADER_SIZE, Opcode, opcodeName } from './abi.js';
import type { FuseServer } from './server.js';
import type { FuseReply } from './replies.js';

/** Size of struct virtio_fs_config (tag[36] + le32 num_request_queues). */
export const VIRTIO_FS_CONFIG_SIZE = 40;
/** Largest hiprio message accepted: a BATCH_FORGET of 4096 entries. */
const MAX_HIPRIO_BYTES = IN_HEADER_SIZE + 8 + 4096 * 16;

export interface VirtioFsDeviceOptions {
  readonly server: FuseServer;
  /** Request queues (1..N); the device has one more queue, hiprio. */
  readonly requestQueues: number;
  readonly log: Logger;
  /**
   * Largest device-readable part accepted on a request queue (default: the server's
   * max_write + 64 KiB, room for a write or the largest xattr value plus headers).
   */
  readonly maxRequestBytes?: number;
}

export interface VirtioFsCounters {
  requests: number;
  hiprio: number;
  badChains: number;
  /** Chains given back with length 0 because no reply could be written into them. */
  dropped: number;
}

/**
 * The out header of the reply being written (replies are written one at a time, each
 * completely, on the event loop's thread): no buffer or view per reply.
 */
const outHeader = new Uint8Array(OUT_HEADER_SIZE);
const outHeaderView = new DataView(outHeader.buffer);

/** Per started queue: what is in flight, so that stopping can wait for it. */
export class VirtioFsDevice implements VhostUserDevice {
  readonly kind = 'fs';
  readonly maxQueues: number;
  readonly features = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | VIRTIO_RING_F_INDIRECT_DESC;
  readonly protocolFeatures = 0n;
  readonly counters: VirtioFsCounters = { requests: 0, hiprio: 0, badChains: 0, dropped: 0 };
  readonly server: FuseServer;
  private readonly log: Logger;
  private readonly maxRequestBytes: number;
  /** Started queues, each with its chain handler (made once, not a closure per kick). */
  private readonly queues = new Map<number, { readonly st: ServedQueue; readonly handle: (r: Exclude<PopResult, { kind: 'empty' }>) => void }>();
  private resetting: Promise<void> = Promise.resolve();

  constructor(opts: VirtioFsDeviceOptions) {
    if (!Number.isInteger(opts.requestQueues) || opts.requestQueues < 1 || opts.requestQueues > 1023) {
      throw new RangeError('virtio-fs needs 1..1023 request queues');
    }
    this.server = opts.server;
    this.log = opts.log;
    this.maxQueues = 1 + opts.requestQueues;
    this.maxRequestBytes = opts.maxRequestBytes ?? opts.server.maxIo + 65536;
  }

  getConfig(_offset: number, size: number): Uint8Array {
    return new Uint8Array(size);
  }

  setConfig(): boolean {
    return false;
  }

  setFeatures(): void {}

  startQueue(queue: DeviceQueue): void {
    const st = new ServedQueue(queue);
    this.queues.set(queue.index, {
      st,
      handle: (r) => {
        if (r.kind === 'bad') this.failBadChain(st, r.head, r.error);
        else if (queue.index === 0) this.hiprio(st, r.chain);
        else this.request(st, r.chain);
      },
    });
  }

  /** Requests the driver made available and the device has not taken yet, over every queue. */
  get queueDepth(): number {
    let n = 0;
    for (const { st } of this.queues.values()) n += st.queue.available();
    return n;
  }

  onKick(queue: DeviceQueue): void {
    const q = this.queues.get(queue.index);
    if (!q || q.st.queue !== queue) return;
    q.st.drain(q.handle);
  }

  async stopQueue(queue: DeviceQueue): Promise<void> {
    const st = this.queues.get(queue.index)?.st;
    if (!st) return;
    await st.stop();
    this.queues.delete(queue.index);
  }

  /** The driver went away or reset the device: the FUSE session ends (open files are released). */
  reset(): void {
    this.queues.clear();
    const prev = this.resetting;
    this.resetting = prev.then(() => this.server.reset()).catch((err: unknown) => {
      this.log.error('ending the FUSE session failed', { error: err });
    });
  }

  /** Resolves once the cleanup started by the last reset() is done. */
  whenReset(): Promise<void> {
    return this.resetting;
  }

  private failBadChain(st: ServedQueue, head: number, error: string): void {
    this.counters.badChains++;
    this.log.warn('malformed descriptor chain', { queue: st.queue.index, head, error });
    if (head >= 0 && head < st.queue.size) st.complete(head, 0);
  }

  /** FORGET, BATCH_FORGET, INTERRUPT: no reply; anything else is not for this queue. */
  private hiprio(st: ServedQueue, chain: DescriptorChain): void {
    this.counters.hiprio++;
    const len = chain.readableLength;
    const opcode = chain.readU32(4);
    if (len < IN_HEADER_SIZE || len > MAX_HIPRIO_BYTES
      || (opcode !== Opcode.FORGET && opcode !== Opcode.BATCH_FORGET && opcode !== Opcode.INTERRUPT)) {
      this.counters.dropped++;
      this.log.debug('ignoring a hiprio chain', { opcode: opcodeName(opcode), length: len });
      st.complete(chain.head, 0);
      return;
    }
    const bytes = new Uint8Array(len);
    chain.read(0, bytes);
    this.server.dispatch(bytes, 0, () => st.complete(chain.head, 0));
  }

  private request(st: ServedQueue, chain: DescriptorChain): void {
    this.counters.requests++;
    const wlen = chain.writableLength;
    const rlen = chain.readableLength;
    if (wlen < OUT_HEADER_SIZE) {
      // No room for an answer. (A FORGET here needs none: serve it anyway.)
      const opcode = chain.readU32(4);
      if ((opcode === Opcode.FORGET || opcode === Opcode.BATCH_FORGET || opcode === Opcode.INTERRUPT) && rlen <= MAX_HIPRIO_BYTES) {
        const bytes = new Uint8Array(rlen);
        chain.read(0, bytes);
        this.server.dispatch(bytes, 0, () => undefined);
      } else {
        this.counters.dropped++;
      }
      st.complete(chain.head, 0);
      return;
    }
    if (rlen > this.maxRequestBytes) {
      this.log.debug('FUSE request too large', { length: rlen });
      this.replyNow(st, chain, { unique: chain.readU64Big(8), error: -E.EINVAL, parts: [], length: 0 });
      return;
    }
    const bytes = Buffer.allocUnsafe(rlen);
    const got = chain.read(0, bytes);
    // The memory the chain was translated in (popped this turn): pinned while the kernel
    // copies into its buffers on another thread (a large READ of a local file).
    const memory = st.queue.guestMemory;
    st.begin();
    // Only a READ can use the reply room as its buffer (see PayloadTarget): no closure for the rest.
    const isRead = got >= 8 && bytes.readUInt32LE(4) === Opcode.READ;
    this.server.dispatch(got === rlen ? bytes : bytes.subarray(0, got), wlen - OUT_HEADER_SIZE, (reply) => {
      if (reply === null) st.complete(chain.head, 0);
      else this.replyNow(st, chain, reply);
      st.end();
    }, isRead ? (length) => payloadViews(chain, length) : undefined,
    isRead && memory !== null ? (length) => pinnedPayload(chain, memory, length) : undefined);
  }

  /** Writes out header + parts into the writable part and returns the chain. */
  private replyNow(st: ServedQueue, chain: DescriptorChain, reply: FuseReply): void {
    const total = OUT_HEADER_SIZE + reply.length;
    if (total > chain.writableLength) {
      // The server sized the reply to the room it was given; only a bug gets here.
      this.counters.dropped++;
      st.complete(chain.head, 0);
      return;
    }
    outHeaderView.setUint32(0, total, true);
    outHeaderView.setInt32(4, reply.error | 0, true);
    outHeaderView.setBigUint64(8, reply.unique, true); // wraps modulo 2^64 (ToBigUint64)
    chain.write(0, outHeader);
    if (reply.inPlace) {
      // The payload was read straight into the writable descriptors (PayloadTarget).
      st.complete(chain.head, total);
      return;
    }
    let pos = OUT_HEADER_SIZE;
    for (const part of reply.parts) {
      chain.write(pos, part);
      pos += part.length;
    }
    st.complete(chain.head, total);
  }
}

/**
 * The guest's writable buffers after the out header as segments for a copy off the event
 * loop, with `memory` pinned until release(); null when they are not all mapped.
 */
function pinnedPayload(chain: DescriptorChain, memory: GuestMemory, length: number): { segments: Segment[]; release: () => void } | null {
  const room = chain.writableLength - OUT_HEADER_SIZE;
  if (length <= 0 || length > room) return null;
  const segments: Segment[] = [];
  if (!chain.sliceWritable(OUT_HEADER_SIZE, length, segments)) return null;
  // A window detached by an unmap (byteLength 0) would have the kernel write into freed addresses.
  for (const g of segments) if (g.buf.byteLength < g.offset + g.length) return null;
  return { segments, release: memory.pin() };
}

/** Views of the guest's writable buffers after the out header (the reply payload room), or null. */
function payloadViews(chain: DescriptorChain, length: number): Uint8Array[] | null {
  const room = chain.writableLength - OUT_HEADER_SIZE;
  if (length <= 0 || length > room) return null;
  const segs: Segment[] = [];
  if (!chain.sliceWritable(OUT_HEADER_SIZE, length, segs)) return null;
  return segs.map((g) => new Uint8Array(g.buf, g.offset, g.length));
}
