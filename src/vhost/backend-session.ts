// One vhost-user connection from a frontend (QEMU, or our own FrontendSession) to a
// VhostUserDevice. The session owns the socket, the guest memory mappings and every fd
// the frontend sent; the device owns request handling and never sees a message.
//
// Messages are processed strictly in order, one at a time, even when a handler waits
// (GET_VRING_BASE waits for the device to finish the ring's in-flight requests).
// A malformed or unsupported message gets an error reply (or a log line when no reply
// is possible) and the session carries on; only framing errors and disconnects end it.
import { EventEmitter } from 'node:events';
import { fstatSync } from 'node:fs';
import { native, POLL_READABLE, type Mapping, type Poller } from '../native/index.js';
import { GuestMemory } from '../virtio/memory.js';
import { DeviceQueue, type RingAddresses } from '../virtio/queue.js';
import { VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC } from '../virtio/features.js';
import { InflightRegion, inflightRegionBytes } from '../virtio/inflight.js';
import type { VhostUserDevice } from './device.js';
import {
  ProtocolError,
  REPLY_FLAGS,
  decodeConfig,
  decodeEmpty,
  decodeInflight,
  decodeMemRegionMsg,
  decodeMemTable,
  decodeU64,
  decodeVringAddr,
  decodeVringFile,
  decodeVringState,
  encodeConfig,
  encodeInflight,
  encodeU64,
  encodeVringState,
  needsReply,
  isReply,
  type MemRegion,
  type VhostUserMessage,
} from './codec.js';
import {
  FrontendReq,
  MAX_CONFIG_SIZE,
  MAX_VRING_SIZE,
  ProtocolFeature,
  REQUESTS_WITH_REPLY,
  VHOST_USER_F_PROTOCOL_FEATURES,
  VHOST_VRING_F_LOG,
  protocolFeatureNames,
  requestName,
} from './protocol.js';
import { MessageChannel, closeFds } from './stream.js';

/** The logging surface the vhost layer needs (src/util/log.ts's Logger satisfies it). */
export interface VhostLogger {
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
}

const noop = (): void => {};
export const nullLogger: VhostLogger = { debug: noop, info: noop, warn: noop, error: noop };

export interface BackendSessionOptions {
  log?: VhostLogger;
  /** GET_MAX_MEM_SLOTS answer and the size of the region table (default 32). */
  maxMemSlots?: number;
}

/** Protocol features this session implements (the device may add CONFIG). */
export const BACKEND_PROTOCOL_FEATURES =
  ProtocolFeature.MQ | ProtocolFeature.REPLY_ACK | ProtocolFeature.CONFIGURE_MEM_SLOTS | ProtocolFeature.RESET_DEVICE;
/**
 * Protocol features a device may ask for through `protocolFeatures`. INFLIGHT_SHMFD is the
 * device's choice: resubmitting a request after a crash is only right where requests can
 * be repeated (a block read or write can, a FUSE rename cannot).
 */
const DEVICE_PROTOCOL_FEATURES = ProtocolFeature.CONFIG | ProtocolFeature.INFLIGHT_SHMFD;

export const DEFAULT_MAX_MEM_SLOTS = 32;
const PAGE_SIZE = 4096;
/** Queued messages beyond which the session stops reading the socket for a while. */
const BACKLOG_HIGH = 64;
/** Replies queued for a frontend that does not read beyond which processing waits. */
const REPLY_BACKLOG_HIGH = 16;

interface Vring {
  readonly index: number;
  readonly queue: DeviceQueue;
  /** SET_VRING_NUM (0 = not set yet). */
  size: number;
  /** SET_VRING_BASE, and the value GET_VRING_BASE returns once the ring stopped. */
  base: number;
  addrs: RingAddresses | null;
  kickFd: number;
  callFd: number;
  errFd: number;
  enabled: boolean;
  /** device.startQueue() was called and device.stopQueue() not yet. */
  started: boolean;
  poller: Poller | null;
  polling: boolean;
}

/** A natural reply that carries fds (GET_INFLIGHT_FD); the session closes them once sent. */
interface ReplyWithFds {
  readonly payload: Uint8Array;
  readonly fds: number[];
}

/** Result of a handler: a natural reply payload, or undefined (ack with 0 if asked). */
type HandlerResult = Uint8Array | ReplyWithFds | undefined;

/** The INFLIGHT_SHMFD region the frontend handed us (SET_INFLIGHT_FD). */
interface InflightArea {
  readonly fd: number;
  readonly mapping: Mapping;
  readonly region: InflightRegion;
  readonly queueSize: number;
}

/** fcntl seal bit: the file cannot shrink. */
const F_SEAL_SHRINK = 0x2;

/** Largest num_queues accepted in GET/SET_INFLIGHT_FD (besides the device's own limit). */
const MAX_INFLIGHT_QUEUES = 1024;

export class BackendSession extends EventEmitter {
  readonly device: VhostUserDevice;
  /** Resolves once the session is fully torn down (queues stopped, memory unmapped). */
  readonly closed: Promise<void>;
  private resolveClosed!: () => void;
  private readonly log: VhostLogger;
  private readonly channel: MessageChannel;
  private readonly maxMemSlots: number;
  private memory: GuestMemory;
  /** Region layout key → identity (dev:ino) of the file it maps, to spot unchanged tables. */
  private readonly regionFiles = new Map<string, string>();
  private readonly vrings: Vring[];
  private readonly backlog: VhostUserMessage[] = [];
  private pumping: Promise<void> | null = null;
  private wakePump: (() => void) | null = null;
  private closing = false;
  private owner = false;
  private inflight: InflightArea | null = null;
  private acked = 0n;
  private protocolAcked = 0n;

  constructor(fd: number, device: VhostUserDevice, options: BackendSessionOptions = {}) {
    super();
    this.device = device;
    this.log = options.log ?? nullLogger;
    this.maxMemSlots = options.maxMemSlots ?? DEFAULT_MAX_MEM_SLOTS;
    this.memory = new GuestMemory(this.maxMemSlots);
    this.closed = new Promise((resolve) => (this.resolveClosed = resolve));
    this.vrings = [];
    for (let i = 0; i < device.maxQueues; i++) this.vrings.push(this.newVring(i));
    this.channel = new MessageChannel(fd, {
      onMessage: (msg) => this.enqueue(msg),
      onClose: (err, byPeer) => this.onChannelClose(err, byPeer),
    });
  }

  /** Virtio features the frontend acked (SET_FEATURES), including bit 30. */
  get ackedFeatures(): bigint {
    return this.acked;
  }
  /** Protocol features the frontend set (SET_PROTOCOL_FEATURES). */
  get protocolFeatures(): bigint {
    return this.protocolAcked;
  }
  get isClosing(): boolean {
    return this.closing;
  }
  /** The current guest memory map (replaced by SET_MEM_TABLE). */
  get guestMemory(): GuestMemory {
    return this.memory;
  }
  /** Messages received and not yet processed (bounded by back-pressure). */
  get queuedMessages(): number {
    return this.backlog.length;
  }
  /** Replies waiting for the frontend to read them (bounded by back-pressure). */
  get queuedReplies(): number {
    return this.channel.writeBacklog;
  }
  /** Which rings are being served (for tests and diagnostics). */
  get startedQueues(): number[] {
    return this.vrings.filter((v) => v.started).map((v) => v.index);
  }

  /**
   * Ends the session gracefully: stops reading messages, waits for the message being
   * handled, stops every ring (in-flight requests complete), closes the socket, unmaps
   * guest memory and resets the device. Resolves when done.
   */
  close(): Promise<void> {
    this.teardown('closed locally', undefined);
    return this.closed;
  }

  // ---- message queue -----------------------------------------------------------------

  private enqueue(msg: VhostUserMessage): void {
    if (this.closing) {
      closeFds(msg.fds);
      return;
    }
    this.backlog.push(msg);
    if (this.backlog.length >= BACKLOG_HIGH) this.channel.pause();
    if (this.pumping === null) this.pumping = this.pump();
  }

  private async pump(): Promise<void> {
    try {
      while (this.backlog.length > 0 && !this.closing) {
        // A frontend that does not read its replies stalls us rather than our memory.
        if (this.channel.writeBacklog >= REPLY_BACKLOG_HIGH) {
          await new Promise<void>((resolve) => {
            this.wakePump = resolve; // teardown must not wait for a peer that never reads
            void this.channel.drained().then(resolve);
          });
          this.wakePump = null;
          continue;
        }
        const msg = this.backlog.shift()!;
        if (this.backlog.length < BACKLOG_HIGH / 2) this.channel.resume();
        await this.process(msg);
      }
    } finally {
      this.pumping = null;
    }
  }

  private async process(msg: VhostUserMessage): Promise<void> {
    const name = requestName(msg.request);
    const fds = msg.fds.slice();
    const naturalReply = REQUESTS_WITH_REPLY.has(msg.request);
    this.log.debug('vhost-user request', { request: name, flags: msg.flags, size: msg.payload.byteLength, fds: fds.length });
    let result: HandlerResult;
    let error: ProtocolError | undefined;
    try {
      if (isReply(msg.flags)) throw new ProtocolError('EPROTO', `${name}: a frontend request with the REPLY flag`);
      result = await this.dispatch(msg, fds);
    } catch (err) {
      error = toProtocolError(err, name);
    } finally {
      // Whatever a handler did not take is closed here.
      closeFds(fds.filter((fd) => fd >= 0));
    }
    if (this.channel.closed) {
      if (result !== undefined && !(result instanceof Uint8Array)) closeFds(result.fds);
      return;
    }
    if (error !== undefined) {
      this.log.warn('vhost-user request failed', { request: name, code: error.code, error: error.message });
      if (naturalReply && KNOWN_REQUESTS.has(msg.request)) {
        // An empty payload cannot match the expected reply size: the frontend fails the
        // request instead of waiting for an answer that will never come.
        this.channel.send(msg.request, REPLY_FLAGS);
      } else if (needsReply(msg.flags)) {
        this.channel.send(msg.request, REPLY_FLAGS, encodeU64(BigInt(error.errno || 1)));
      }
      return;
    }
    if (result instanceof Uint8Array) {
      this.channel.send(msg.request, REPLY_FLAGS, result);
    } else if (result !== undefined) {
      this.channel.send(msg.request, REPLY_FLAGS, result.payload, result.fds);
      closeFds(result.fds); // the channel sent them or holds dups
    } else if (needsReply(msg.flags)) {
      this.channel.send(msg.request, REPLY_FLAGS, encodeU64(0n));
    }
  }

  private dispatch(msg: VhostUserMessage, fds: number[]): HandlerResult | Promise<HandlerResult> {
    const p = msg.payload;
    switch (msg.request) {
      case FrontendReq.GET_FEATURES:
        decodeEmpty(p, 'GET_FEATURES');
        return encodeU64(this.offeredFeatures());
      case FrontendReq.SET_FEATURES:
        return this.setFeatures(decodeU64(p, 'SET_FEATURES'));
      case FrontendReq.GET_PROTOCOL_FEATURES:
        decodeEmpty(p, 'GET_PROTOCOL_FEATURES');
        return encodeU64(this.offeredProtocolFeatures());
      case FrontendReq.SET_PROTOCOL_FEATURES:
        return this.setProtocolFeatures(decodeU64(p, 'SET_PROTOCOL_FEATURES'));
      case FrontendReq.SET_OWNER:
        decodeEmpty(p, 'SET_OWNER');
        this.owner = true;
        return undefined;
      case FrontendReq.RESET_OWNER:
      case FrontendReq.RESET_DEVICE:
        decodeEmpty(p, requestName(msg.request));
        return this.resetDevice(msg.request === FrontendReq.RESET_OWNER);
      case FrontendReq.GET_QUEUE_NUM:
        decodeEmpty(p, 'GET_QUEUE_NUM');
        return encodeU64(BigInt(this.device.maxQueues));
      case FrontendReq.GET_MAX_MEM_SLOTS:
        decodeEmpty(p, 'GET_MAX_MEM_SLOTS');
        return encodeU64(BigInt(this.maxMemSlots));
      case FrontendReq.SET_MEM_TABLE:
        return this.setMemTable(decodeMemTable(p), fds);
      case FrontendReq.ADD_MEM_REG:
        return this.addMemReg(decodeMemRegionMsg(p), fds);
      case FrontendReq.REM_MEM_REG:
        return this.remMemReg(decodeMemRegionMsg(p), fds);
      case FrontendReq.SET_VRING_NUM:
        return this.setVringNum(p);
      case FrontendReq.SET_VRING_ADDR:
        return this.setVringAddr(p);
      case FrontendReq.SET_VRING_BASE:
        return this.setVringBase(p);
      case FrontendReq.GET_VRING_BASE:
        return this.getVringBase(p);
      case FrontendReq.SET_VRING_KICK:
      case FrontendReq.SET_VRING_CALL:
      case FrontendReq.SET_VRING_ERR:
        return this.setVringFd(msg.request, p, fds);
      case FrontendReq.SET_VRING_ENABLE:
        return this.setVringEnable(p);
      case FrontendReq.GET_CONFIG:
        return this.getConfig(p);
      case FrontendReq.SET_CONFIG:
        return this.setConfig(p);
      case FrontendReq.GET_INFLIGHT_FD:
        return this.getInflightFd(p);
      case FrontendReq.SET_INFLIGHT_FD:
        return this.setInflightFd(p, fds);
      case FrontendReq.SET_LOG_BASE:
      case FrontendReq.SET_LOG_FD:
        throw new ProtocolError('ENOTSUP', 'dirty logging (LOG_SHMFD, F_LOG_ALL) is not supported');
      default:
        if (KNOWN_REQUESTS.has(msg.request)) {
          throw new ProtocolError('ENOTSUP', `${requestName(msg.request)} is not supported`);
        }
        throw new ProtocolError('ENOTSUP', `unknown request ${msg.request}`);
    }
  }

  // ---- features ----------------------------------------------------------------------

  private offeredFeatures(): bigint {
    return this.device.features | VHOST_USER_F_PROTOCOL_FEATURES;
  }

  private offeredProtocolFeatures(): bigint {
    return BACKEND_PROTOCOL_FEATURES | (this.device.protocolFeatures & DEVICE_PROTOCOL_FEATURES);
  }

  private setFeatures(features: bigint): undefined {
    const extra = features & ~this.offeredFeatures();
    if (extra !== 0n) {
      throw new ProtocolError('EINVAL', `SET_FEATURES: bits 0x${extra.toString(16)} were not offered`);
    }
    if (this.vrings.some((v) => v.started)) {
      this.log.warn('SET_FEATURES while rings are running; applies from their next start');
    }
    this.acked = features;
    // Spec: without F_PROTOCOL_FEATURES rings start enabled, with it they start disabled
    // and wait for SET_VRING_ENABLE 1.
    const enabled = (features & VHOST_USER_F_PROTOCOL_FEATURES) === 0n;
    for (const v of this.vrings) if (!v.started) v.enabled = enabled;
    this.callDevice('setFeatures', () => this.device.setFeatures(features & ~VHOST_USER_F_PROTOCOL_FEATURES));
    this.log.debug('features acked', { features: `0x${features.toString(16)}` });
    for (const v of this.vrings) this.maybeStart(v);
    return undefined;
  }

  private setProtocolFeatures(features: bigint): undefined {
    const extra = features & ~this.offeredProtocolFeatures();
    if (extra !== 0n) {
      throw new ProtocolError('EINVAL', `SET_PROTOCOL_FEATURES: bits 0x${extra.toString(16)} were not offered`);
    }
    this.protocolAcked = features;
    this.log.debug('protocol features set', { features: protocolFeatureNames(features) });
    return undefined;
  }

  private async resetDevice(dropOwner: boolean): Promise<undefined> {
    for (const v of this.vrings) await this.stopVring(v);
    for (const v of this.vrings) this.clearVring(v);
    this.acked = 0n;
    if (dropOwner) this.owner = false;
    this.callDevice('reset', () => this.device.reset());
    return undefined;
  }

  // ---- memory ------------------------------------------------------------------------

  /** True if `regions` (with their fds) is exactly the current table, same files included. */
  private sameTable(regions: readonly MemRegion[], fds: readonly number[]): boolean {
    const current = this.memory.regions();
    if (regions.length === 0 || current.length !== regions.length || this.regionFiles.size !== regions.length) return false;
    return regions.every((r, i) => {
      const id = this.regionFiles.get(regionKey(r));
      return id !== undefined && id !== '' && id === fileId(fds[i]!);
    });
  }

  private mapRegion(r: MemRegion, fd: number): Mapping {
    if (r.size <= 0) throw new ProtocolError('EINVAL', 'memory region of size 0');
    if (r.mmapOffset % PAGE_SIZE !== 0) {
      // libvhost-user maps [0, mmap_offset+size) and offsets into it; GuestMemory wants a
      // mapping that starts at the region, so the offset must be page-aligned.
      throw new ProtocolError('EINVAL', `memory region mmap_offset 0x${r.mmapOffset.toString(16)} is not page-aligned`);
    }
    // A mapping past the end of a file faults (SIGBUS) on first access: refuse it.
    let st;
    try {
      st = fstatSync(fd);
    } catch (err) {
      throw new ProtocolError('EBADF', `memory region fd: ${err instanceof Error ? err.message : String(err)}`);
    }
    if (st.isFile() && r.mmapOffset + r.size > st.size) {
      throw new ProtocolError(
        'EINVAL',
        `memory region [0x${r.mmapOffset.toString(16)}, +0x${r.size.toString(16)}) is past the end of its file (${st.size} bytes)`,
      );
    }
    try {
      return native.mmap(fd, r.mmapOffset, r.size, true);
    } catch (err) {
      throw new ProtocolError('EINVAL', `cannot map memory region: ${err instanceof Error ? err.message : String(err)}`);
    }
  }

  private setMemTable(regions: MemRegion[], fds: number[]): undefined {
    if (fds.length !== regions.length) {
      throw new ProtocolError('EBADF', `SET_MEM_TABLE: ${regions.length} regions but ${fds.length} fds`);
    }
    if (this.sameTable(regions, fds)) {
      // Frontends resend an unchanged table (QEMU without CONFIGURE_MEM_SLOTS does on
      // every memory listener commit). Keep the mappings so running rings and in-flight
      // requests are undisturbed; the new fds are closed by process().
      this.log.debug('memory table unchanged', { regions: regions.length });
      return undefined;
    }
    const mem = new GuestMemory(this.maxMemSlots);
    try {
      regions.forEach((r, i) => {
        const mapping = this.mapRegion(r, fds[i]!);
        try {
          mem.addRegion({ ...r, mapping });
        } catch (err) {
          mapping.unmap();
          throw toProtocolError(err, 'SET_MEM_TABLE');
        }
      });
    } catch (err) {
      mem.clear();
      throw err;
    }
    this.flushRunningRings();
    const old = this.memory;
    this.memory = mem;
    this.regionFiles.clear();
    regions.forEach((r, i) => this.regionFiles.set(regionKey(r), fileId(fds[i]!)));
    this.remapRunningRings();
    old.clear();
    this.log.debug('memory table set', { regions: regions.length });
    return undefined;
  }

  private addMemReg(r: MemRegion, fds: number[]): undefined {
    if (fds.length !== 1) throw new ProtocolError('EBADF', `ADD_MEM_REG with ${fds.length} fds (expected 1)`);
    const mapping = this.mapRegion(r, fds[0]!);
    try {
      this.memory.addRegion({ ...r, mapping });
    } catch (err) {
      mapping.unmap();
      throw toProtocolError(err, 'ADD_MEM_REG');
    }
    this.regionFiles.set(regionKey(r), fileId(fds[0]!));
    this.log.debug('memory region added', { guestAddr: r.guestAddr, size: r.size, regions: this.memory.regionCount });
    return undefined;
  }

  private remMemReg(r: MemRegion, fds: number[]): undefined {
    // QEMU sends the region's fd along; we have no use for it (closed by process()).
    if (fds.length > 1) throw new ProtocolError('EBADF', `REM_MEM_REG with ${fds.length} fds`);
    this.flushRunningRings();
    if (!this.memory.removeRegion(r.guestAddr, r.size, r.userAddr)) {
      throw new ProtocolError('ENOENT', `REM_MEM_REG: no region at guest 0x${r.guestAddr.toString(16)}`);
    }
    for (const k of this.regionFiles.keys()) if (k.startsWith(`${r.guestAddr}:${r.size}:${r.userAddr}:`)) this.regionFiles.delete(k);
    this.remapRunningRings();
    return undefined;
  }

  /**
   * Publishes completions a device pushed but has not flushed yet, while the old
   * mappings are still in place: re-resolving a ring re-reads used.idx from memory.
   */
  private flushRunningRings(): void {
    for (const v of this.vrings) {
      if (v.started && v.queue.ready) this.callDevice('flush', () => void v.queue.flush());
    }
  }

  /** Re-resolves the ring addresses of running rings after the memory map changed. */
  private remapRunningRings(): void {
    for (const v of this.vrings) {
      if (!v.started || v.addrs === null) continue;
      if (!v.queue.setAddresses(this.memory, v.addrs)) {
        this.log.error('ring addresses no longer mapped; ring stopped', { queue: v.index });
        this.breakVring(v);
      }
    }
  }

  // ---- vrings ------------------------------------------------------------------------

  private newVring(index: number): Vring {
    return {
      index,
      queue: new DeviceQueue(index),
      size: 0,
      base: 0,
      addrs: null,
      kickFd: -1,
      callFd: -1,
      errFd: -1,
      enabled: false,
      started: false,
      poller: null,
      polling: false,
    };
  }

  private vring(index: number, what: string): Vring {
    const v = this.vrings[index];
    if (v === undefined) {
      throw new ProtocolError('EINVAL', `${what}: queue index ${index} out of range (${this.vrings.length} queues)`);
    }
    return v;
  }

  private setVringNum(p: Uint8Array): undefined {
    const s = decodeVringState(p, 'SET_VRING_NUM');
    const v = this.vring(s.index, 'SET_VRING_NUM');
    if (s.num === 0 || s.num > MAX_VRING_SIZE || (s.num & (s.num - 1)) !== 0) {
      throw new ProtocolError('EINVAL', `SET_VRING_NUM: size ${s.num} is not a power of 2 in 1..${MAX_VRING_SIZE}`);
    }
    if (v.started) throw new ProtocolError('EBUSY', `SET_VRING_NUM: queue ${s.index} is running`);
    v.size = s.num;
    return undefined;
  }

  private setVringBase(p: Uint8Array): undefined {
    const s = decodeVringState(p, 'SET_VRING_BASE');
    const v = this.vring(s.index, 'SET_VRING_BASE');
    if (s.num > 0xffff) throw new ProtocolError('EINVAL', `SET_VRING_BASE: ${s.num} is not a split-ring index`);
    if (v.started) throw new ProtocolError('EBUSY', `SET_VRING_BASE: queue ${s.index} is running`);
    v.base = s.num;
    return undefined;
  }

  private setVringAddr(p: Uint8Array): undefined {
    const a = decodeVringAddr(p);
    const v = this.vring(a.index, 'SET_VRING_ADDR');
    if ((a.flags & VHOST_VRING_F_LOG) !== 0) this.log.warn('SET_VRING_ADDR asks for used-ring logging; ignored');
    const addrs: RingAddresses = { desc: a.desc, avail: a.avail, used: a.used, flags: a.flags };
    v.addrs = addrs;
    if (v.started) {
      if (!v.queue.setAddresses(this.memory, addrs)) {
        this.breakVring(v);
        throw new ProtocolError('EINVAL', `SET_VRING_ADDR: queue ${a.index} rings are not in mapped memory`);
      }
      return undefined;
    }
    if (v.size === 0) throw new ProtocolError('EINVAL', `SET_VRING_ADDR: queue ${a.index} has no size yet`);
    v.queue.size = v.size;
    if (!v.queue.setAddresses(this.memory, addrs)) {
      throw new ProtocolError('EINVAL', `SET_VRING_ADDR: queue ${a.index} rings are not in mapped memory`);
    }
    this.maybeStart(v);
    return undefined;
  }

  private async getVringBase(p: Uint8Array): Promise<Uint8Array> {
    const s = decodeVringState(p, 'GET_VRING_BASE');
    const v = this.vring(s.index, 'GET_VRING_BASE');
    await this.stopVring(v);
    this.closeKick(v);
    return encodeVringState({ index: s.index, num: v.base });
  }

  private setVringFd(request: number, p: Uint8Array, fds: number[]): undefined {
    const name = requestName(request);
    const f = decodeVringFile(p, name);
    const v = this.vring(f.index, name);
    let fd = -1;
    if (!f.noFd) {
      if (fds.length !== 1) throw new ProtocolError('EBADF', `${name}: ${fds.length} fds (expected 1)`);
      fd = fds[0]!;
      fds[0] = -1; // taken
    }
    if (request === FrontendReq.SET_VRING_KICK) {
      this.closeKick(v);
      v.kickFd = fd;
      if (fd < 0) {
        // Polling mode (no kick fd) is not offered: the ring waits for a real kick fd.
        this.log.warn('SET_VRING_KICK without fd: ring cannot be served until a kick fd arrives', { queue: v.index });
        return undefined;
      }
      if (v.started) {
        if (v.enabled) this.startPolling(v);
      } else {
        this.maybeStart(v);
      }
    } else if (request === FrontendReq.SET_VRING_CALL) {
      const old = v.callFd;
      v.callFd = fd;
      v.queue.callFd = fd;
      if (old >= 0) closeFds([old]);
    } else {
      const old = v.errFd;
      v.errFd = fd;
      if (old >= 0) closeFds([old]);
    }
    return undefined;
  }

  private setVringEnable(p: Uint8Array): undefined {
    const s = decodeVringState(p, 'SET_VRING_ENABLE');
    const v = this.vring(s.index, 'SET_VRING_ENABLE');
    if (s.num > 1) throw new ProtocolError('EINVAL', `SET_VRING_ENABLE: ${s.num} is neither 0 nor 1`);
    v.enabled = s.num === 1;
    if (v.started) {
      if (v.enabled) {
        this.startPolling(v);
        this.kickDevice(v);
      } else {
        this.stopPolling(v);
      }
    } else {
      this.maybeStart(v);
    }
    return undefined;
  }

  /** Starts a ring once it has everything: size, addresses, a kick fd, and is enabled. */
  private maybeStart(v: Vring): void {
    if (v.started || this.closing || !v.enabled || v.kickFd < 0 || v.addrs === null || v.size === 0) return;
    const q = v.queue;
    q.size = v.size;
    q.lastAvailIdx = v.base;
    q.callFd = v.callFd;
    q.eventIdx = (this.acked & VIRTIO_RING_F_EVENT_IDX) !== 0n;
    q.indirect = (this.acked & VIRTIO_RING_F_INDIRECT_DESC) !== 0n;
    if (!q.setAddresses(this.memory, v.addrs)) {
      this.log.error('cannot start ring: addresses are not in mapped memory', { queue: v.index });
      this.signalErr(v);
      return;
    }
    this.trackInflight(v);
    v.started = true;
    if (!this.callDevice('startQueue', () => this.device.startQueue(q))) {
      v.started = false;
      this.signalErr(v);
      return;
    }
    this.log.debug('ring started', { queue: v.index, size: v.size, base: v.base });
    this.startPolling(v);
    // Serve buffers made available before the kick fd was watched.
    this.kickDevice(v);
  }

  /** Hooks the ring to its slice of the inflight region, resubmitting what a crashed backend left. */
  private trackInflight(v: Vring): void {
    const area = this.inflight;
    if (area === null || (this.protocolAcked & ProtocolFeature.INFLIGHT_SHMFD) === 0n) return;
    const slice = area.region.queues[v.index];
    if (slice === undefined) return;
    if (area.queueSize !== v.size) {
      this.log.warn('inflight region is for another ring size; requests of this ring are not tracked', {
        queue: v.index, ringSize: v.size, regionSize: area.queueSize,
      });
      return;
    }
    const r = v.queue.trackInflight(slice);
    if (!r.fresh) {
      this.log.info('ring recovered from the inflight region', {
        queue: v.index, resubmit: r.resubmit.length, repaired: r.repaired, base: v.base, lastAvailIdx: r.lastAvailIdx,
      });
    }
  }

  /** Stops serving a ring: no more kicks, and waits for its in-flight requests. */
  private async stopVring(v: Vring): Promise<void> {
    if (!v.started) return;
    this.stopPolling(v);
    try {
      await this.device.stopQueue(v.queue);
    } catch (err) {
      this.log.error('device failed to stop queue', { queue: v.index, error: err });
    }
    v.started = false;
    v.base = v.queue.lastAvailIdx & 0xffff;
    v.queue.reset();
    this.log.debug('ring stopped', { queue: v.index, base: v.base });
  }

  /** A ring that cannot go on (its memory vanished): stop kicks, tell the frontend. */
  private breakVring(v: Vring): void {
    this.stopPolling(v);
    this.signalErr(v);
  }

  private signalErr(v: Vring): void {
    if (v.errFd < 0) return;
    try {
      native.eventfdWrite(v.errFd, 1);
    } catch (err) {
      this.log.warn('cannot signal the error eventfd', { queue: v.index, error: err });
    }
  }

  private startPolling(v: Vring): void {
    if (v.kickFd < 0 || v.polling) return;
    if (v.poller === null) {
      const fd = v.kickFd;
      // The poller resets the kick counter itself before calling back.
      v.poller = native.createPoller(fd, (status) => this.onKick(v, fd, status), true);
    }
    v.poller.start(POLL_READABLE);
    v.polling = true;
  }

  private stopPolling(v: Vring): void {
    if (v.poller !== null && v.polling) v.poller.stop();
    v.polling = false;
  }

  private closeKick(v: Vring): void {
    this.stopPolling(v);
    if (v.poller !== null) {
      v.poller.close();
      v.poller = null;
    }
    if (v.kickFd >= 0) closeFds([v.kickFd]);
    v.kickFd = -1;
  }

  private onKick(v: Vring, fd: number, status: number): void {
    if (fd !== v.kickFd || !v.polling) return;
    if (status < 0) {
      this.log.error('kick fd poll or read error; ring no longer polled', { queue: v.index, status });
      this.breakVring(v);
      return;
    }
    this.kickDevice(v);
  }

  private kickDevice(v: Vring): void {
    if (!v.started || !v.enabled) return;
    // callDevice without its closure: this runs for every kick.
    try {
      this.device.onKick(v.queue);
    } catch (err) {
      this.log.error('device onKick failed', { device: this.device.kind, error: err });
      this.signalErr(v);
    }
  }

  /** Runs a device callback; a throw is logged, never propagated. */
  private callDevice(what: string, fn: () => void): boolean {
    try {
      fn();
      return true;
    } catch (err) {
      this.log.error(`device ${what} failed`, { device: this.device.kind, error: err });
      return false;
    }
  }

  private clearVring(v: Vring): void {
    this.closeKick(v);
    if (v.callFd >= 0) closeFds([v.callFd]);
    if (v.errFd >= 0) closeFds([v.errFd]);
    v.callFd = -1;
    v.errFd = -1;
    v.queue.callFd = -1;
    v.size = 0;
    v.base = 0;
    v.addrs = null;
    v.enabled = false;
  }

  // ---- inflight region (INFLIGHT_SHMFD) ------------------------------------------------

  private checkInflightShape(what: string, numQueues: number, queueSize: number): void {
    if (numQueues < 1 || numQueues > Math.min(this.device.maxQueues, MAX_INFLIGHT_QUEUES)) {
      throw new ProtocolError('EINVAL', `${what}: ${numQueues} queues (the device has ${this.device.maxQueues})`);
    }
    if (queueSize < 1 || queueSize > MAX_VRING_SIZE || (queueSize & (queueSize - 1)) !== 0) {
      throw new ProtocolError('EINVAL', `${what}: queue size ${queueSize} is not a power of 2 in 1..${MAX_VRING_SIZE}`);
    }
  }

  /** A zeroed memfd sized for the queues; the frontend keeps it and gives it back with SET_INFLIGHT_FD. */
  private getInflightFd(p: Uint8Array): ReplyWithFds {
    const req = decodeInflight(p);
    this.checkInflightShape('GET_INFLIGHT_FD', req.numQueues, req.queueSize);
    const size = inflightRegionBytes(req.numQueues, req.queueSize);
    const fd = native.memfdCreate('vhost-s3-inflight', size, true);
    this.log.debug('inflight region created', { queues: req.numQueues, queueSize: req.queueSize, size });
    return {
      payload: encodeInflight({ mmapSize: BigInt(size), mmapOffset: 0n, numQueues: req.numQueues, queueSize: req.queueSize }),
      fds: [fd],
    };
  }

  private setInflightFd(p: Uint8Array, fds: number[]): undefined {
    const req = decodeInflight(p);
    if (fds.length !== 1) throw new ProtocolError('EBADF', `SET_INFLIGHT_FD with ${fds.length} fds (expected 1)`);
    if ((this.protocolAcked & ProtocolFeature.INFLIGHT_SHMFD) === 0n) {
      throw new ProtocolError('EPROTO', 'SET_INFLIGHT_FD without INFLIGHT_SHMFD negotiated');
    }
    if (this.vrings.some((v) => v.started)) throw new ProtocolError('EBUSY', 'SET_INFLIGHT_FD while rings are running');
    this.checkInflightShape('SET_INFLIGHT_FD', req.numQueues, req.queueSize);
    const need = inflightRegionBytes(req.numQueues, req.queueSize);
    if (req.mmapSize < BigInt(need)) {
      throw new ProtocolError('EINVAL', `SET_INFLIGHT_FD: ${req.mmapSize} bytes for ${req.numQueues} queues of ${req.queueSize} (need ${need})`);
    }
    if (req.mmapOffset % BigInt(PAGE_SIZE) !== 0n || req.mmapOffset > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw new ProtocolError('EINVAL', `SET_INFLIGHT_FD: mmap_offset 0x${req.mmapOffset.toString(16)} is not page-aligned`);
    }
    const fd = fds[0]!;
    const offset = Number(req.mmapOffset);
    let fileSize: number;
    try {
      fileSize = fstatSync(fd).size;
    } catch (err) {
      throw new ProtocolError('EBADF', `SET_INFLIGHT_FD fd: ${err instanceof Error ? err.message : String(err)}`);
    }
    // A mapping past the end of the file faults (SIGBUS) on first access: refuse it.
    if (offset + need > fileSize) {
      throw new ProtocolError('EINVAL', `SET_INFLIGHT_FD: [${offset}, +${need}) is past the end of a ${fileSize}-byte file`);
    }
    if ((native.memfdSeals(fd) & F_SEAL_SHRINK) === 0) {
      // Not one of ours (ours are sealed): a frontend that truncated it would kill us with SIGBUS.
      this.log.warn('the inflight region can be shrunk by the frontend (not a size-sealed memfd)');
    }
    const mapping = native.mmap(fd, offset, need, true);
    const region = new InflightRegion(mapping.windows[0]!, 0, req.numQueues, req.queueSize);
    this.dropInflight();
    fds[0] = -1; // kept for the session's life
    this.inflight = { fd, mapping, region, queueSize: req.queueSize };
    this.log.info('inflight region set', { queues: req.numQueues, queueSize: req.queueSize });
    return undefined;
  }

  private dropInflight(): void {
    const area = this.inflight;
    if (area === null) return;
    this.inflight = null;
    area.mapping.unmap();
    closeFds([area.fd]);
  }

  // ---- config ------------------------------------------------------------------------

  private getConfig(p: Uint8Array): Uint8Array {
    const c = decodeConfig(p);
    if (c.offset + c.size > MAX_CONFIG_SIZE) {
      throw new ProtocolError('EINVAL', `GET_CONFIG: [${c.offset}, +${c.size}) is past the config space`);
    }
    let data: Uint8Array;
    try {
      data = this.device.getConfig(c.offset, c.size);
    } catch (err) {
      throw new ProtocolError('EINVAL', `GET_CONFIG: device failed: ${err instanceof Error ? err.message : String(err)}`);
    }
    const out = new Uint8Array(c.size);
    out.set(data.subarray(0, c.size));
    return encodeConfig({ offset: c.offset, flags: c.flags, data: out });
  }

  private setConfig(p: Uint8Array): undefined {
    const c = decodeConfig(p);
    if (c.offset + c.size > MAX_CONFIG_SIZE) {
      throw new ProtocolError('EINVAL', `SET_CONFIG: [${c.offset}, +${c.size}) is past the config space`);
    }
    let ok = false;
    try {
      ok = this.device.setConfig(c.offset, c.data);
    } catch (err) {
      this.log.error('device setConfig failed', { error: err });
    }
    if (!ok) throw new ProtocolError('EINVAL', 'SET_CONFIG refused by the device');
    return undefined;
  }

  // ---- teardown ----------------------------------------------------------------------

  private onChannelClose(err: Error | undefined, byPeer: boolean): void {
    if (this.closing) return;
    if (err !== undefined) this.log.warn('vhost-user connection failed', { error: err });
    else if (byPeer) this.log.info('vhost-user frontend disconnected');
    this.teardown(byPeer ? 'peer disconnected' : 'closed', err);
  }

  private teardown(reason: string, err: Error | undefined): void {
    if (this.closing) return;
    this.closing = true;
    this.emit('closing', reason);
    this.channel.pause();
    for (const m of this.backlog.splice(0)) closeFds(m.fds);
    this.wakePump?.();
    void (async () => {
      try {
        if (this.pumping !== null) await this.pumping;
        for (const v of this.vrings) await this.stopVring(v);
        this.channel.close();
        for (const v of this.vrings) this.clearVring(v);
        this.memory.clear();
        this.regionFiles.clear();
        this.dropInflight();
        this.callDevice('reset', () => this.device.reset());
      } catch (e) {
        this.log.error('error while closing the vhost-user session', { error: e });
      } finally {
        this.log.debug('vhost-user session closed', { reason, owner: this.owner });
        this.resolveClosed();
        this.emit('close', err);
      }
    })();
  }
}

const KNOWN_REQUESTS: ReadonlySet<number> = new Set<number>(Object.values(FrontendReq));

function regionKey(r: MemRegion): string {
  return `${r.guestAddr}:${r.size}:${r.userAddr}:${r.mmapOffset}`;
}

/** dev:ino of the file behind an fd ('' if it cannot be stat'ed). */
function fileId(fd: number): string {
  try {
    const st = fstatSync(fd, { bigint: true });
    return `${st.dev}:${st.ino}`;
  } catch {
    return '';
  }
}

function toProtocolError(err: unknown, what: string): ProtocolError {
  if (err instanceof ProtocolError) return err;
  const e = err as { code?: unknown; message?: unknown } | null;
  const code = typeof e?.code === 'string' ? e.code : '';
  const message = `${what}: ${typeof e?.message === 'string' ? e.message : String(err)}`;
  if (code === 'ENOSPC') return new ProtocolError('ENOSPC', message);
  if (code === 'EEXIST' || code === 'EINVAL') return new ProtocolError('EINVAL', message);
  return new ProtocolError('EIO', message);
}
