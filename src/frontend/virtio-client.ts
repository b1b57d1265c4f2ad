// The device-independent half of the QEMU-free frontend: connects to a vhost-user
// backend, negotiates like QEMU 7.2, shares a memfd as guest RAM, sets up driver-side
// rings with kick/call eventfds, and delivers completions. Device clients (blk, fs)
// build requests on top of it.
import { native, POLL_READABLE, type Poller } from '../native/index.js';
import { FRONTEND_PROTOCOL_FEATURES, FrontendSession, type InflightFd } from '../vhost/frontend-session.js';
import type { VhostLogger } from '../vhost/backend-session.js';
import { ProtocolFeature } from '../vhost/protocol.js';
import { DriverQueue, type GuestBuffer } from '../virtio/driver-queue.js';
import { VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC } from '../virtio/features.js';
import { FrontendMemory, type SharedBuffer } from './memory.js';

/** Descriptors per indirect table: the longest scatter list a request may carry. */
export const MAX_INDIRECT = 64;

export interface VirtioClientOptions {
  /** Queues to set up (capped by what the backend offers). */
  readonly queues: number;
  readonly queueSize: number;
  /** Bytes of shared guest RAM for rings and request buffers. */
  readonly memorySize: number;
  /** Device feature bits to accept when offered (transport bits are added here). */
  readonly deviceFeatures: bigint;
  /** Use indirect descriptors / EVENT_IDX when offered (default true, as Linux). */
  readonly indirect?: boolean;
  readonly eventIdx?: boolean;
  readonly log?: VhostLogger;
  /**
   * Negotiate INFLIGHT_SHMFD when the backend offers it and keep its region, as QEMU's
   * vhost-user-blk does (default true), so that the backend pays for the tracking as it
   * does under QEMU. Needed for reconnectMs.
   */
  readonly inflight?: boolean;
  /**
   * What QEMU does with `-chardev socket,reconnect=N` and INFLIGHT_SHMFD: when the backend
   * goes away, requests stay outstanding, the client connects again (for up to this many
   * ms) and replays the device state — inflight region, features, memory, rings with
   * base = used.idx — so that the new backend completes them. 0 (default): no reconnect.
   */
  readonly reconnectMs?: number;
}

export type CompletionHandler<T> = (queue: number, token: T, len: number) => void;

interface ClientQueue<T> {
  readonly ring: DriverQueue<T>;
  readonly kickFd: number;
  readonly callFd: number;
  readonly poller: Poller;
  /** Requests that did not fit in the ring, sent as completions free descriptors. */
  readonly backlog: { readable: GuestBuffer[]; writable: GuestBuffer[]; token: T }[];
  kickScheduled: boolean;
}

/** A completion of a chain published with the ring's raw methods (hostile tests). */
export interface RawCompletion {
  readonly queue: number;
  readonly head: number;
  readonly len: number;
}

export class VirtioClient<T> {
  private readonly queues: ClientQueue<T>[] = [];
  private closed = false;
  private lost = false;
  private onLost: (() => void) | null = null;
  private sessionValue: FrontendSession;
  /** The inflight region of INFLIGHT_SHMFD, kept for the next backend (null when not negotiated). */
  private inflight: InflightFd | null = null;
  private reconnecting: Promise<void> | null = null;
  /** Times the client connected again after losing the backend. */
  reconnects = 0;
  /** Completions of raw chains (no token), in arrival order; tests take them from here. */
  readonly rawCompletions: RawCompletion[] = [];

  private constructor(
    session: FrontendSession,
    private readonly path: string,
    private readonly opts: VirtioClientOptions,
    readonly memory: FrontendMemory,
    /** Features acked (SET_FEATURES), without the vhost-user protocol bit. */
    readonly features: bigint,
    /** Queues the backend can serve (GET_QUEUE_NUM). */
    readonly backendQueues: number,
    private readonly onComplete: CompletionHandler<T>,
  ) {
    this.sessionValue = session;
    this.watch(session);
  }

  /** The current connection (a new one after a reconnect). */
  get session(): FrontendSession {
    return this.sessionValue;
  }

  /** The inflight region in use, if INFLIGHT_SHMFD was negotiated. */
  get inflightRegion(): InflightFd | null {
    return this.inflight;
  }

  private watch(session: FrontendSession): void {
    void session.closed.then(() => {
      if (session === this.sessionValue) this.backendGone();
    });
  }

  /** True once the backend closed the connection (rather than close() here): nothing more will complete. */
  get disconnected(): boolean {
    return this.lost;
  }

  /**
   * `fn` runs once if the backend goes away, after every completion it published has been
   * delivered; the requests still outstanding then will never complete.
   */
  onDisconnect(fn: () => void): void {
    this.onLost = fn;
  }

  private backendGone(): void {
    if (this.closed || this.lost || this.reconnecting !== null) return;
    // The call eventfd may not have been read yet: deliver what the backend completed before it left.
    for (let i = 0; i < this.queues.length; i++) this.drain(i);
    if ((this.opts.reconnectMs ?? 0) > 0 && this.inflight !== null) {
      this.reconnecting = this.reconnect().finally(() => (this.reconnecting = null));
      return;
    }
    this.giveUp();
  }

  private giveUp(): void {
    if (this.lost) return;
    this.lost = true;
    this.onLost?.();
  }

  /**
   * Connects to the socket again until a backend answers (or reconnectMs passes), then
   * brings the device up as it was: what QEMU's vhost-user-blk does on CHR_EVENT_OPENED.
   */
  private async reconnect(): Promise<void> {
    const deadline = Date.now() + (this.opts.reconnectMs ?? 0);
    while (!this.closed) {
      let session: FrontendSession | null = null;
      try {
        session = await FrontendSession.connect(this.path, { log: this.opts.log, connectRetryMs: Math.max(0, deadline - Date.now()) });
        await this.restore(session);
        this.sessionValue = session;
        this.reconnects++;
        this.watch(session);
        for (const q of this.queues) q.ring.kick();
        return;
      } catch (err) {
        session?.close();
        this.opts.log?.warn('reconnecting to the vhost-user backend failed', { error: err });
        if (Date.now() >= deadline) break;
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    }
    if (!this.closed) this.giveUp();
  }

  private async restore(session: FrontendSession): Promise<void> {
    const neg = await session.negotiate({ protocolFeatures: FRONTEND_PROTOCOL_FEATURES | ProtocolFeature.INFLIGHT_SHMFD });
    if ((neg.features & this.features) !== this.features) throw new Error('the new backend does not offer the features in use');
    if (!session.has(ProtocolFeature.INFLIGHT_SHMFD)) throw new Error('the new backend does not offer INFLIGHT_SHMFD');
    if (neg.queueNum < this.queues.length) throw new Error(`the new backend serves ${neg.queueNum} queues, ${this.queues.length} in use`);
    await session.setInflightFd(this.inflight!);
    await session.setFeatures(this.features);
    await session.addMemRegion(this.memory.region);
    for (let i = 0; i < this.queues.length; i++) {
      const q = this.queues[i]!;
      const a = q.ring.ringAddresses;
      // As QEMU after losing a backend: the avail index it reached is unknown, used.idx is
      // not; the backend finds the difference in the inflight region.
      const base = q.ring.lastUsedIdx;
      await session.setVring(i, { size: q.ring.size, base, desc: a.desc, avail: a.avail, used: a.used, kickFd: q.kickFd, callFd: q.callFd });
      await session.enableVring(i, true);
    }
  }

  /**
   * Connects and brings the device up the way QEMU does on DRIVER_OK. `beforeRings` runs
   * after feature negotiation (e.g. to read config space) and returns how many queues to start.
   */
  static async connect<T>(
    path: string,
    opts: VirtioClientOptions,
    onComplete: CompletionHandler<T>,
    beforeRings: (session: FrontendSession, features: bigint, backendQueues: number) => Promise<number> = async () => opts.queues,
  ): Promise<VirtioClient<T>> {
    const session = await FrontendSession.connect(path, { log: opts.log });
    let memory: FrontendMemory | null = null;
    let inflight: InflightFd | null = null;
    try {
      const neg = await session.negotiate(
        opts.inflight === false ? {} : { protocolFeatures: FRONTEND_PROTOCOL_FEATURES | ProtocolFeature.INFLIGHT_SHMFD },
      );
      const want = opts.deviceFeatures | VIRTIO_F_VERSION_1
        | (opts.indirect === false ? 0n : VIRTIO_RING_F_INDIRECT_DESC)
        | (opts.eventIdx === false ? 0n : VIRTIO_RING_F_EVENT_IDX);
      const features = neg.features & want;
      if ((features & VIRTIO_F_VERSION_1) === 0n) throw new Error('backend does not offer VIRTIO_F_VERSION_1');
      const nq = Math.min(await beforeRings(session, features, neg.queueNum), neg.queueNum);
      memory = FrontendMemory.create(opts.memorySize);
      if (session.has(ProtocolFeature.INFLIGHT_SHMFD)) {
        // QEMU's vhost-user-blk order: the region first, then features, memory and rings.
        inflight = await session.getInflightFd(nq, opts.queueSize);
        await session.setInflightFd(inflight);
      }
      await session.setFeatures(features);
      await session.addMemRegion(memory.region);
      const client = new VirtioClient<T>(session, path, opts, memory, features, neg.queueNum, onComplete);
      client.inflight = inflight;
      inflight = null;
      for (let i = 0; i < nq; i++) await client.startQueue(i, opts.queueSize);
      return client;
    } catch (err) {
      session.close();
      memory?.close();
      if (inflight !== null) native.close(inflight.fd);
      throw err;
    }
  }

  get numQueues(): number {
    return this.queues.length;
  }

  private async startQueue(index: number, size: number): Promise<void> {
    const indirect = (this.features & VIRTIO_RING_F_INDIRECT_DESC) !== 0n;
    const eventIdx = (this.features & VIRTIO_RING_F_EVENT_IDX) !== 0n;
    const layout = DriverQueue.layoutFor(size, indirect, MAX_INDIRECT);
    const area = this.memory.alloc(layout.total, 4096);
    const kickFd = native.eventfd(0);
    const callFd = native.eventfd(0);
    const ring = new DriverQueue<T>({
      size, eventIdx, indirect, maxIndirect: MAX_INDIRECT, kickFd,
      area: { buf: this.memory.buffer, offset: area.gpa - this.memory.guestBase, length: layout.total, guestAddr: area.gpa, userAddr: area.uva },
    });
    const poller = native.createPoller(callFd, () => this.onCall(index));
    const q: ClientQueue<T> = { ring, kickFd, callFd, poller, backlog: [], kickScheduled: false };
    this.queues.push(q);
    const a = ring.ringAddresses;
    await this.session.setVring(index, { size, base: 0, desc: a.desc, avail: a.avail, used: a.used, kickFd, callFd });
    await this.session.enableVring(index, true);
    poller.start(POLL_READABLE);
  }

  /** Queues a request; the kick is sent once per event-loop turn for all requests added in it. */
  submit(queue: number, readable: readonly SharedBuffer[], writable: readonly SharedBuffer[], token: T): void {
    const q = this.queues[queue];
    if (!q || this.closed) throw new RangeError(`queue ${queue} is not running`);
    const r = readable.map(toGuest);
    const w = writable.map(toGuest);
    if (q.backlog.length > 0 || q.ring.add(r, w, token) < 0) {
      q.backlog.push({ readable: r, writable: w, token });
      return;
    }
    this.scheduleKick(q);
  }

  private scheduleKick(q: ClientQueue<T>): void {
    if (q.kickScheduled) return;
    q.kickScheduled = true;
    queueMicrotask(() => {
      q.kickScheduled = false;
      q.ring.kick();
    });
  }

  private onCall(index: number): void {
    const q = this.queues[index];
    if (!q) return;
    native.eventfdRead(q.callFd);
    this.drain(index);
  }

  private drain(index: number): void {
    const q = this.queues[index]!;
    do {
      for (const c of q.ring.poll()) {
        if (c.token !== undefined) this.onComplete(index, c.token, c.len);
        else this.rawCompletions.push({ queue: index, head: c.head, len: c.len });
      }
      while (q.backlog.length > 0 && !this.lost) {
        const next = q.backlog[0]!;
        if (q.ring.add(next.readable, next.writable, next.token) < 0) break;
        q.backlog.shift();
        this.scheduleKick(q);
      }
    } while (q.ring.enableCallbacks());
  }

  /** The driver-side ring of a queue, for tests that write malformed descriptors (kick it with kickRaw). */
  rawRing(queue: number): DriverQueue<T> {
    const q = this.queues[queue];
    if (!q) throw new RangeError(`queue ${queue} is not running`);
    return q.ring;
  }

  /** True if the device returned something impossible on any queue. */
  get broken(): boolean {
    return this.queues.some((q) => q.ring.broken);
  }

  /** Stops every ring (GET_VRING_BASE waits for the backend's in-flight requests), then disconnects. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.reconnecting;
    try {
      for (let i = 0; i < this.queues.length; i++) await this.session.getVringBase(i);
    } catch {
      // The backend may already be gone; everything below is ours to release anyway.
    }
    if (this.inflight !== null) native.close(this.inflight.fd);
    this.inflight = null;
    for (const q of this.queues) {
      q.poller.close();
      native.close(q.kickFd);
      native.close(q.callFd);
    }
    this.session.close();
    this.memory.close();
  }
}

function toGuest(b: SharedBuffer): GuestBuffer {
  return { addr: b.gpa, len: b.bytes.byteLength };
}
