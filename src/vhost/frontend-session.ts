// The frontend side of vhost-user: what QEMU does, without a VM. Used by the QEMU-free
// frontend (src/frontend/) and by tests, against our backends and against others
// (qemu-storage-daemon, virtiofsd).
//
// Requests are serialized: one request (and its reply, if any) at a time, in call order.
// With REPLY_ACK negotiated every request without a natural reply is sent with
// NEED_REPLY and its promise resolves only once the backend acked it (rejecting with a
// ProtocolError when the backend reports a failure).
import { native } from '../native/index.js';
import { nullLogger, type VhostLogger } from './backend-session.js';
import {
  ProtocolError,
  decodeConfig,
  decodeInflight,
  decodeU64,
  decodeVringState,
  encodeConfig,
  encodeInflight,
  encodeMemRegionMsg,
  encodeMemTable,
  encodeU64,
  encodeVringAddr,
  encodeVringFile,
  encodeVringState,
  isReply,
  requestFlags,
  type InflightPayload,
  type MemRegion,
  type VhostUserMessage,
} from './codec.js';
import {
  FrontendReq,
  MAX_VRING_SIZE,
  MEM_TABLE_MAX_REGIONS,
  ProtocolFeature,
  REQUESTS_WITH_REPLY,
  VHOST_USER_F_PROTOCOL_FEATURES,
  protocolFeatureNames,
  requestName,
} from './protocol.js';
import { MessageChannel, closeFds } from './stream.js';

/** A memory region to share, with the fd that backs it (the caller keeps its fd). */
export interface SharedRegion extends MemRegion {
  readonly fd: number;
}

export interface VringSetup {
  /** Ring size (power of 2, ≤ 32768). */
  readonly size: number;
  /** First avail index the backend should read (0 for a fresh ring). */
  readonly base?: number;
  /** Ring addresses in the frontend's virtual address space (region userAddr based). */
  readonly desc: number;
  readonly avail: number;
  readonly used: number;
  readonly flags?: number;
  /** eventfd the frontend writes to kick the backend; -1/undefined sends NOFD. */
  readonly kickFd?: number;
  /** eventfd the backend writes to signal used buffers; -1/undefined sends NOFD. */
  readonly callFd?: number;
  /** eventfd the backend writes on ring errors; omitted: not sent. */
  readonly errFd?: number;
}

/** The inflight region a backend handed out (GET_INFLIGHT_FD); the caller owns the fd. */
export interface InflightFd extends InflightPayload {
  readonly fd: number;
}

export interface NegotiateOptions {
  /** Protocol features to accept if offered (default: MQ, REPLY_ACK, CONFIG, CONFIGURE_MEM_SLOTS). */
  readonly protocolFeatures?: bigint;
}

export interface NegotiationResult {
  /** Virtio features offered by the backend (GET_FEATURES), bit 30 included. */
  readonly features: bigint;
  /** Protocol features now in effect (offered ∩ wanted), 0 without F_PROTOCOL_FEATURES. */
  readonly protocolFeatures: bigint;
  /** GET_QUEUE_NUM (1 without MQ). */
  readonly queueNum: number;
  /** GET_MAX_MEM_SLOTS (8 without CONFIGURE_MEM_SLOTS: the SET_MEM_TABLE limit). */
  readonly maxMemSlots: number;
}

export interface FrontendSessionOptions {
  log?: VhostLogger;
  /** A request whose reply takes longer fails with ETIMEDOUT and closes the session (default 30 s; 0 = never). */
  timeoutMs?: number;
  /**
   * How long connect() keeps trying while the socket is missing or refuses (a backend
   * that is starting: the socket file exists between its bind() and listen()). Default 2 s.
   */
  connectRetryMs?: number;
}

/** Protocol features the frontend knows how to use. */
export const FRONTEND_PROTOCOL_FEATURES =
  ProtocolFeature.MQ | ProtocolFeature.REPLY_ACK | ProtocolFeature.CONFIG | ProtocolFeature.CONFIGURE_MEM_SLOTS;

interface Waiter {
  readonly request: number;
  resolve(msg: VhostUserMessage): void;
  reject(err: Error): void;
}

interface Region {
  readonly spec: MemRegion;
  /** Our dup of the caller's fd (SET_MEM_TABLE resends every region's fd). */
  readonly fd: number;
}

export class FrontendSession {
  /** Resolves when the connection is gone (closed by us or by the backend). */
  readonly closed: Promise<void>;
  private resolveClosed!: () => void;
  private readonly log: VhostLogger;
  private readonly timeoutMs: number;
  private readonly channel: MessageChannel;
  private tail: Promise<unknown> = Promise.resolve();
  private waiter: Waiter | null = null;
  private isClosed = false;
  private closeError: Error | undefined;
  private offered = 0n;
  private protocol = 0n;
  private readonly regions: Region[] = [];

  private constructor(fd: number, options: FrontendSessionOptions) {
    this.log = options.log ?? nullLogger;
    this.timeoutMs = options.timeoutMs ?? 30_000;
    this.closed = new Promise((resolve) => (this.resolveClosed = resolve));
    this.channel = new MessageChannel(fd, {
      onMessage: (msg) => this.onMessage(msg),
      onClose: (err, byPeer) => this.onClose(err, byPeer),
    });
  }

  /** Connects to a backend's Unix socket. */
  static async connect(path: string, options: FrontendSessionOptions = {}): Promise<FrontendSession> {
    const deadline = Date.now() + (options.connectRetryMs ?? 2000);
    for (;;) {
      try {
        return new FrontendSession(native.unixConnect(path), options);
      } catch (err) {
        const code = (err as { code?: string }).code;
        if ((code !== 'ECONNREFUSED' && code !== 'ENOENT') || Date.now() >= deadline) throw err;
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    }
  }

  /** Wraps an already connected socket (the session owns it from now on). */
  static fromFd(fd: number, options: FrontendSessionOptions = {}): FrontendSession {
    return new FrontendSession(fd, options);
  }

  get isOpen(): boolean {
    return !this.isClosed;
  }
  /** Protocol features in effect (after setProtocolFeatures). */
  get protocolFeatures(): bigint {
    return this.protocol;
  }
  /** True when protocol feature `bit` was negotiated. */
  has(bit: bigint): boolean {
    return (this.protocol & bit) !== 0n;
  }

  /** Closes the socket. Pending requests fail with ECONNRESET. Regions' dup fds are closed. */
  close(): void {
    this.channel.close();
  }

  // ---- negotiation -------------------------------------------------------------------

  /**
   * The connect sequence of QEMU 7.2: GET_FEATURES, GET/SET_PROTOCOL_FEATURES,
   * GET_QUEUE_NUM, GET_MAX_MEM_SLOTS, SET_OWNER, GET_FEATURES. Ring fds, SET_FEATURES,
   * memory and rings are the caller's next steps.
   */
  async negotiate(options: NegotiateOptions = {}): Promise<NegotiationResult> {
    const features = await this.getFeatures();
    let protocolFeatures = 0n;
    if ((features & VHOST_USER_F_PROTOCOL_FEATURES) !== 0n) {
      const offered = await this.getProtocolFeatures();
      protocolFeatures = offered & (options.protocolFeatures ?? FRONTEND_PROTOCOL_FEATURES);
      await this.setProtocolFeatures(protocolFeatures);
    }
    const queueNum = (protocolFeatures & ProtocolFeature.MQ) !== 0n ? await this.getQueueNum() : 1;
    const maxMemSlots =
      (protocolFeatures & ProtocolFeature.CONFIGURE_MEM_SLOTS) !== 0n ? await this.getMaxMemSlots() : MEM_TABLE_MAX_REGIONS;
    await this.setOwner();
    const again = await this.getFeatures();
    if (again !== features) this.log.warn('backend features changed between two GET_FEATURES');
    this.log.debug('vhost-user negotiated', {
      features: `0x${features.toString(16)}`,
      protocolFeatures: protocolFeatureNames(protocolFeatures),
      queueNum,
      maxMemSlots,
    });
    return { features, protocolFeatures, queueNum, maxMemSlots };
  }

  async getFeatures(): Promise<bigint> {
    const reply = await this.call(FrontendReq.GET_FEATURES);
    this.offered = decodeU64(reply.payload, 'GET_FEATURES reply');
    return this.offered;
  }

  /**
   * SET_FEATURES. Like QEMU, adds VHOST_USER_F_PROTOCOL_FEATURES when the backend offered
   * it (pass the virtio features the driver acked).
   */
  async setFeatures(features: bigint): Promise<void> {
    await this.set(FrontendReq.SET_FEATURES, encodeU64(features | (this.offered & VHOST_USER_F_PROTOCOL_FEATURES)));
  }

  async getProtocolFeatures(): Promise<bigint> {
    const reply = await this.call(FrontendReq.GET_PROTOCOL_FEATURES);
    return decodeU64(reply.payload, 'GET_PROTOCOL_FEATURES reply');
  }

  /** SET_PROTOCOL_FEATURES; REPLY_ACK takes effect from the next request. Never asks for an ack itself. */
  async setProtocolFeatures(features: bigint): Promise<void> {
    await this.enqueue(async () => {
      this.sendRaw(FrontendReq.SET_PROTOCOL_FEATURES, encodeU64(features), [], false);
      this.protocol = features;
    });
  }

  async setOwner(): Promise<void> {
    await this.set(FrontendReq.SET_OWNER);
  }

  /** RESET_DEVICE when negotiated, else RESET_OWNER (what QEMU does). */
  async resetDevice(): Promise<void> {
    const req = this.has(ProtocolFeature.RESET_DEVICE) ? FrontendReq.RESET_DEVICE : FrontendReq.RESET_OWNER;
    await this.set(req);
  }

  async getQueueNum(): Promise<number> {
    const reply = await this.call(FrontendReq.GET_QUEUE_NUM);
    return Number(decodeU64(reply.payload, 'GET_QUEUE_NUM reply'));
  }

  async getMaxMemSlots(): Promise<number> {
    const reply = await this.call(FrontendReq.GET_MAX_MEM_SLOTS);
    return Number(decodeU64(reply.payload, 'GET_MAX_MEM_SLOTS reply'));
  }

  // ---- memory ------------------------------------------------------------------------

  /**
   * Shares one region: ADD_MEM_REG when CONFIGURE_MEM_SLOTS was negotiated, else the
   * whole table again with SET_MEM_TABLE. The caller keeps its fd (we keep a dup).
   */
  async addMemRegion(region: SharedRegion): Promise<void> {
    const spec: MemRegion = {
      guestAddr: region.guestAddr,
      size: region.size,
      userAddr: region.userAddr,
      mmapOffset: region.mmapOffset,
    };
    const fd = native.dup(region.fd);
    const entry: Region = { spec, fd };
    try {
      if (this.has(ProtocolFeature.CONFIGURE_MEM_SLOTS)) {
        await this.set(FrontendReq.ADD_MEM_REG, encodeMemRegionMsg(spec), [fd]);
        this.regions.push(entry);
      } else {
        if (this.regions.length >= MEM_TABLE_MAX_REGIONS) {
          throw new ProtocolError('ENOSPC', `SET_MEM_TABLE holds at most ${MEM_TABLE_MAX_REGIONS} regions`);
        }
        const all = [...this.regions, entry];
        await this.set(FrontendReq.SET_MEM_TABLE, encodeMemTable(all.map((r) => r.spec)), all.map((r) => r.fd));
        this.regions.push(entry);
      }
    } catch (err) {
      closeFds([fd]);
      throw err;
    }
  }

  /** Removes a region added before (matched by guest address, size and user address). */
  async removeMemRegion(region: MemRegion): Promise<void> {
    const i = this.regions.findIndex(
      (r) => r.spec.guestAddr === region.guestAddr && r.spec.size === region.size && r.spec.userAddr === region.userAddr,
    );
    if (i < 0) throw new ProtocolError('ENOENT', `no region at guest 0x${region.guestAddr.toString(16)}`);
    const entry = this.regions[i]!;
    if (this.has(ProtocolFeature.CONFIGURE_MEM_SLOTS)) {
      // QEMU sends the region's fd along; backends ignore (close) it.
      await this.set(FrontendReq.REM_MEM_REG, encodeMemRegionMsg(entry.spec), [entry.fd]);
      this.regions.splice(i, 1);
    } else {
      const rest = this.regions.filter((_, j) => j !== i);
      await this.set(FrontendReq.SET_MEM_TABLE, encodeMemTable(rest.map((r) => r.spec)), rest.map((r) => r.fd));
      this.regions.splice(i, 1);
    }
    closeFds([entry.fd]);
  }

  /** Replaces the whole table with SET_MEM_TABLE (at most 8 regions). */
  async setMemTable(regions: readonly SharedRegion[]): Promise<void> {
    if (regions.length > MEM_TABLE_MAX_REGIONS) {
      throw new ProtocolError('ENOSPC', `SET_MEM_TABLE holds at most ${MEM_TABLE_MAX_REGIONS} regions`);
    }
    const entries: Region[] = [];
    try {
      for (const r of regions) {
        entries.push({
          spec: { guestAddr: r.guestAddr, size: r.size, userAddr: r.userAddr, mmapOffset: r.mmapOffset },
          fd: native.dup(r.fd),
        });
      }
      await this.set(FrontendReq.SET_MEM_TABLE, encodeMemTable(entries.map((e) => e.spec)), entries.map((e) => e.fd));
    } catch (err) {
      closeFds(entries.map((e) => e.fd));
      throw err;
    }
    closeFds(this.regions.splice(0).map((r) => r.fd));
    this.regions.push(...entries);
  }

  // ---- vrings ------------------------------------------------------------------------

  /** SET_VRING_NUM, SET_VRING_BASE, SET_VRING_ADDR, SET_VRING_KICK, SET_VRING_CALL (+ERR). */
  async setVring(index: number, setup: VringSetup): Promise<void> {
    if (setup.size < 1 || setup.size > MAX_VRING_SIZE || (setup.size & (setup.size - 1)) !== 0) {
      throw new ProtocolError('EINVAL', `ring size ${setup.size} is not a power of 2 in 1..${MAX_VRING_SIZE}`);
    }
    await this.setVringNum(index, setup.size);
    await this.setVringBase(index, setup.base ?? 0);
    await this.setVringAddr(index, { desc: setup.desc, avail: setup.avail, used: setup.used, flags: setup.flags ?? 0 });
    await this.setVringKick(index, setup.kickFd ?? -1);
    await this.setVringCall(index, setup.callFd ?? -1);
    if (setup.errFd !== undefined) await this.setVringErr(index, setup.errFd);
  }

  async setVringNum(index: number, size: number): Promise<void> {
    await this.set(FrontendReq.SET_VRING_NUM, encodeVringState({ index, num: size }));
  }

  async setVringBase(index: number, base: number): Promise<void> {
    await this.set(FrontendReq.SET_VRING_BASE, encodeVringState({ index, num: base }));
  }

  async setVringAddr(index: number, a: { desc: number; avail: number; used: number; flags?: number }): Promise<void> {
    const payload = encodeVringAddr({ index, flags: a.flags ?? 0, desc: a.desc, used: a.used, avail: a.avail, log: 0n });
    await this.set(FrontendReq.SET_VRING_ADDR, payload);
  }

  /** fd < 0 sends the NOFD flag. The caller keeps its fd. */
  async setVringKick(index: number, fd: number): Promise<void> {
    await this.set(FrontendReq.SET_VRING_KICK, encodeVringFile({ index, noFd: fd < 0 }), fd < 0 ? [] : [fd]);
  }

  async setVringCall(index: number, fd: number): Promise<void> {
    await this.set(FrontendReq.SET_VRING_CALL, encodeVringFile({ index, noFd: fd < 0 }), fd < 0 ? [] : [fd]);
  }

  async setVringErr(index: number, fd: number): Promise<void> {
    await this.set(FrontendReq.SET_VRING_ERR, encodeVringFile({ index, noFd: fd < 0 }), fd < 0 ? [] : [fd]);
  }

  async enableVring(index: number, enable: boolean): Promise<void> {
    await this.set(FrontendReq.SET_VRING_ENABLE, encodeVringState({ index, num: enable ? 1 : 0 }));
  }

  /** Stops the ring (the backend finishes its in-flight requests) and returns the next avail index. */
  async getVringBase(index: number): Promise<number> {
    const reply = await this.call(FrontendReq.GET_VRING_BASE, encodeVringState({ index, num: 0 }));
    const s = decodeVringState(reply.payload, 'GET_VRING_BASE reply');
    if (s.index !== index) throw new ProtocolError('EPROTO', `GET_VRING_BASE reply for queue ${s.index}, asked ${index}`);
    return s.num;
  }

  // ---- inflight region (INFLIGHT_SHMFD) ------------------------------------------------

  /**
   * GET_INFLIGHT_FD: the backend allocates the region where it tracks requests in flight.
   * Keep it, and give it back with setInflightFd() to this backend and to any later one
   * that takes over the same device after a crash.
   */
  async getInflightFd(numQueues: number, queueSize: number): Promise<InflightFd> {
    const req = encodeInflight({ mmapSize: 0n, mmapOffset: 0n, numQueues, queueSize });
    const reply = await this.call(FrontendReq.GET_INFLIGHT_FD, req);
    const fds = reply.fds.slice();
    try {
      const p = decodeInflight(reply.payload);
      if (fds.length !== 1) throw new ProtocolError('EPROTO', `GET_INFLIGHT_FD reply with ${fds.length} fds`);
      if (p.mmapSize === 0n) throw new ProtocolError('EIO', 'GET_INFLIGHT_FD: the backend returned no region');
      const fd = fds.pop()!;
      return { ...p, fd };
    } finally {
      closeFds(fds);
    }
  }

  /** SET_INFLIGHT_FD, before the rings start. The caller keeps its fd. */
  async setInflightFd(region: InflightFd): Promise<void> {
    await this.set(FrontendReq.SET_INFLIGHT_FD, encodeInflight(region), [region.fd]);
  }

  // ---- config ------------------------------------------------------------------------

  async getConfig(offset: number, size: number, flags = 0): Promise<Uint8Array> {
    const reply = await this.call(FrontendReq.GET_CONFIG, encodeConfig({ offset, flags, data: new Uint8Array(size) }));
    const c = decodeConfig(reply.payload);
    if (c.offset !== offset || c.size !== size) {
      throw new ProtocolError('EPROTO', `GET_CONFIG reply for [${c.offset}, +${c.size}), asked [${offset}, +${size})`);
    }
    return c.data;
  }

  async setConfig(offset: number, data: Uint8Array, flags = 0): Promise<void> {
    await this.set(FrontendReq.SET_CONFIG, encodeConfig({ offset, flags, data }));
  }

  // ---- raw access (tests, unusual backends) -------------------------------------------

  /**
   * Sends any request. `reply: 'natural'` waits for the request's own reply (returned,
   * even an empty one); 'ack' sends NEED_REPLY and waits for the u64 status (returned as
   * the message); 'none' returns null once sent.
   */
  async request(
    request: number,
    payload?: Uint8Array,
    fds: readonly number[] = [],
    reply: 'natural' | 'ack' | 'none' = REQUESTS_WITH_REPLY.has(request) ? 'natural' : 'none',
  ): Promise<VhostUserMessage | null> {
    return this.enqueue(async () => {
      if (reply === 'none') {
        this.sendRaw(request, payload, fds, false);
        return null;
      }
      const p = this.expectReply(request);
      this.sendRaw(request, payload, fds, reply === 'ack');
      return p;
    });
  }

  // ---- internals ---------------------------------------------------------------------

  /** A request with a natural reply; an empty reply means the backend failed it. */
  private async call(request: number, payload?: Uint8Array): Promise<VhostUserMessage> {
    const reply = (await this.request(request, payload, [], 'natural'))!;
    if (reply.payload.byteLength === 0) {
      throw new ProtocolError('EIO', `${requestName(request)} failed in the backend (empty reply)`);
    }
    return reply;
  }

  /** A request without a natural reply: acked when REPLY_ACK is in effect. */
  private async set(request: number, payload?: Uint8Array, fds: readonly number[] = []): Promise<void> {
    const ack = this.has(ProtocolFeature.REPLY_ACK);
    const reply = await this.request(request, payload, fds, ack ? 'ack' : 'none');
    if (reply === null) return;
    const status = decodeU64(reply.payload, `${requestName(request)} ack`);
    if (status !== 0n) {
      throw new ProtocolError('EIO', `${requestName(request)} failed in the backend (status ${status})`);
    }
  }

  private enqueue<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.tail.then(() => {
      if (this.isClosed) throw this.closedError();
      return fn();
    });
    this.tail = run.catch(() => undefined);
    return run;
  }

  private sendRaw(request: number, payload: Uint8Array | undefined, fds: readonly number[], needReply: boolean): void {
    if (this.isClosed) throw this.closedError();
    this.log.debug('vhost-user send', { request: requestName(request), needReply, fds: fds.length });
    this.channel.send(request, requestFlags(needReply), payload, fds);
  }

  private expectReply(request: number): Promise<VhostUserMessage> {
    return new Promise<VhostUserMessage>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const done = (): void => {
        if (timer !== undefined) clearTimeout(timer);
        this.waiter = null;
      };
      this.waiter = {
        request,
        resolve: (m) => {
          done();
          resolve(m);
        },
        reject: (e) => {
          done();
          reject(e);
        },
      };
      if (this.timeoutMs > 0) {
        timer = setTimeout(() => {
          const w = this.waiter;
          if (w === null) return;
          w.reject(new ProtocolError('ETIMEDOUT', `no reply to ${requestName(request)} in ${this.timeoutMs} ms`));
          this.close();
        }, this.timeoutMs);
      }
    });
  }

  private onMessage(msg: VhostUserMessage): void {
    // The backend sends nothing on this channel but replies; only GET_INFLIGHT_FD's carries an fd.
    const w = this.waiter;
    const wanted = w !== null && isReply(msg.flags) && msg.request === w.request && msg.request === FrontendReq.GET_INFLIGHT_FD;
    if (!wanted) closeFds(msg.fds);
    if (w === null || !isReply(msg.flags)) {
      this.log.warn('unexpected message from the backend', { request: requestName(msg.request), flags: msg.flags });
      return;
    }
    if (msg.request !== w.request) {
      w.reject(new ProtocolError('EPROTO', `reply to ${requestName(msg.request)} while waiting for ${requestName(w.request)}`));
      this.close();
      return;
    }
    w.resolve(msg);
  }

  private onClose(err: Error | undefined, byPeer: boolean): void {
    if (this.isClosed) return;
    this.isClosed = true;
    this.closeError = err;
    if (err !== undefined) this.log.warn('vhost-user connection failed', { error: err });
    else if (byPeer) this.log.info('vhost-user backend closed the connection');
    this.waiter?.reject(this.closedError());
    closeFds(this.regions.splice(0).map((r) => r.fd));
    this.resolveClosed();
  }

  private closedError(): ProtocolError {
    const why = this.closeError !== undefined ? `: ${this.closeError.message}` : '';
    return new ProtocolError('ECONNRESET', `vhost-user connection closed${why}`);
  }
}
