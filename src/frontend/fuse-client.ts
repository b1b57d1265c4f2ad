// A FUSE driver without a kernel: builds FUSE requests in shared memory and sends them
// through VirtioClient to any vhost-user-fs backend — vhost-s3 or virtiofsd. Queue 0 is
// hiprio (FORGET, BATCH_FORGET, INTERRUPT; no reply), queues 1..N carry requests.
// Requests and replies use the same codec as the server (src/fuse/), so a mistake in one
// shows up against the other peer.
//
// The typed methods throw ErrnoError when the server answers with an errno and
// ReplyFormatError when the reply is malformed; request() / raw() return whatever came
// back, for hostile tests.
import { ErrnoError } from '../util/errors.js';
import type { VhostLogger } from '../vhost/backend-session.js';
import {
  FATTR_ATIME, FATTR_ATIME_NOW, FATTR_CTIME, FATTR_FH, FATTR_GID, FATTR_MODE, FATTR_MTIME, FATTR_MTIME_NOW,
  FATTR_SIZE, FATTR_UID, FUSE_ASYNC_READ, FUSE_ATOMIC_O_TRUNC, FUSE_BIG_WRITES, FUSE_DO_READDIRPLUS,
  FUSE_GETATTR_FH, FUSE_INIT_EXT, FUSE_KERNEL_MINOR_VERSION, FUSE_KERNEL_VERSION, FUSE_MAX_PAGES,
  FUSE_PARALLEL_DIROPS, FUSE_READDIRPLUS_AUTO, IN_HEADER_SIZE, OUT_HEADER_SIZE, Opcode, decodeOutHeader,
  errnoName, opcodeName, type OutHeader,
} from '../fuse/abi.js';
import { cstr, encode, encodeRequest, type ForgetOne } from '../fuse/requests.js';
import {
  ReplyFormatError, decodeAttrOut, decodeDirents, decodeDirentsPlus, decodeEntryOut, decodeInitOut,
  decodeLseekOut, decodeOpenOut, decodeSizeOut, decodeStatfsOut, decodeXattrList, type DecodedEntry, type Dirent,
  type DirentPlus, type InitOut, type KStatfs,
} from '../fuse/replies.js';
import type { WireAttr } from '../fuse/abi.js';
import type { SharedBuffer } from './memory.js';
import { MAX_INDIRECT, VirtioClient } from './virtio-client.js';

export interface FuseClientOptions {
  /** Request queues to start (default 1; capped by the backend's queue count minus hiprio). */
  readonly requestQueues?: number;
  readonly queueSize?: number;
  /** Largest READ / WRITE payload (default 1 MiB). */
  readonly maxIo?: number;
  /** Requests in flight at once; more wait for a free slot (default 64). */
  readonly maxInFlight?: number;
  /** Cut every buffer into descriptors of at most this many bytes (tests of chains that span descriptors). */
  readonly segmentSize?: number;
  readonly indirect?: boolean;
  readonly eventIdx?: boolean;
  /** Credentials put in every request header (default: this process's). */
  readonly uid?: number;
  readonly gid?: number;
  readonly pid?: number;
  readonly log?: VhostLogger;
}

/** What came back for one request. */
export interface RawReply {
  /** Used length reported by the device. */
  readonly len: number;
  /** The out header, or null when fewer than 16 bytes came back. */
  readonly header: OutHeader | null;
  /** header.error (0 when there is no header). */
  readonly error: number;
  /** Bytes after the out header (a copy), as many as the used length says. */
  readonly payload: Uint8Array;
}

export interface RequestOptions {
  /** Queue (default: request queues in turn; 0 is hiprio). */
  readonly queue?: number;
  readonly unique?: bigint;
  /** Room for the reply payload after the out header (default 4096). */
  readonly replyRoom?: number;
  readonly uid?: number;
  readonly gid?: number;
  readonly pid?: number;
}

export interface SetattrChanges {
  readonly mode?: number;
  readonly uid?: number;
  readonly gid?: number;
  readonly size?: number;
  readonly atimeNs?: bigint | 'now';
  readonly mtimeNs?: bigint | 'now';
  readonly ctimeNs?: bigint;
  readonly fh?: number;
}

/** Flags the client offers at INIT by default (what Linux 6.1's virtio-fs offers, minus caching extras). */
export const CLIENT_INIT_FLAGS = FUSE_ASYNC_READ | FUSE_ATOMIC_O_TRUNC | FUSE_BIG_WRITES | FUSE_DO_READDIRPLUS
  | FUSE_READDIRPLUS_AUTO | FUSE_PARALLEL_DIROPS | FUSE_MAX_PAGES | FUSE_INIT_EXT;

const XATTR_ROOM = 65536 + 4096;

interface Slot {
  readonly inBuf: SharedBuffer;
  readonly outBuf: SharedBuffer;
  done: ((len: number) => void) | null;
  /** Fails the request in flight (the backend went away). */
  fail: ((err: Error) => void) | null;
}

function sub(b: SharedBuffer, off: number, len: number): SharedBuffer {
  return { gpa: b.gpa + off, uva: b.uva + off, bytes: b.bytes.subarray(off, off + len) };
}

export class FuseClient {
  private readonly free: Slot[] = [];
  private readonly waiting: ((slot: Slot) => void)[] = [];
  private slotsMade = 0;
  private uniqueNext = 2n;
  private rr = 0;
  /** Slots whose request is in the rings. */
  private readonly inFlight = new Set<Slot>();
  /** Set by init(). */
  initOut: InitOut | null = null;

  private constructor(
    private readonly client: VirtioClient<Slot>,
    private readonly opts: Required<Omit<FuseClientOptions, 'log' | 'segmentSize' | 'indirect' | 'eventIdx'>> & { segmentSize: number },
    private readonly argsRoom: number,
    private readonly replyRoomMax: number,
  ) {
    // A backend that dies (kill -9) never answers what it had: those requests fail with
    // ENOTCONN, as Linux fails them when a FUSE connection is gone.
    client.onDisconnect(() => {
      for (const slot of [...this.inFlight]) slot.fail?.(new ErrnoError('ENOTCONN', 'the backend closed the connection'));
    });
  }

  static async connect(path: string, options: FuseClientOptions = {}): Promise<FuseClient> {
    const maxIo = options.maxIo ?? 1 << 20;
    const maxInFlight = options.maxInFlight ?? 64;
    const argsRoom = Math.max(maxIo, XATTR_ROOM) + 4096;
    const replyRoomMax = Math.max(maxIo, XATTR_ROOM) + 4096;
    const slotBytes = IN_HEADER_SIZE + argsRoom + OUT_HEADER_SIZE + replyRoomMax + 256;
    const queueSize = options.queueSize ?? 128;
    const requestQueues = options.requestQueues ?? 1;
    const memorySize = Math.ceil((maxInFlight * slotBytes + (requestQueues + 1) * (queueSize * 1100 + 16384) + (1 << 20)) / 4096) * 4096;
    let self: FuseClient | null = null;
    const client = await VirtioClient.connect<Slot>(
      path,
      {
        queues: 1 + requestQueues,
        queueSize,
        memorySize,
        deviceFeatures: 0n,
        indirect: options.indirect,
        eventIdx: options.eventIdx,
        log: options.log,
      },
      (_queue, slot, len) => self!.complete(slot, len),
      async (_session, _features, backendQueues) => {
        if (backendQueues < 2) throw new Error(`backend offers ${backendQueues} queues; virtio-fs needs hiprio and a request queue`);
        return Math.min(1 + requestQueues, backendQueues);
      },
    );
    self = new FuseClient(client, {
      requestQueues: client.numQueues - 1,
      queueSize,
      maxIo,
      maxInFlight,
      segmentSize: options.segmentSize ?? 0,
      uid: options.uid ?? process.getuid?.() ?? 0,
      gid: options.gid ?? process.getgid?.() ?? 0,
      pid: options.pid ?? process.pid,
    }, argsRoom, replyRoomMax);
    return self;
  }

  /** Request queues running (queue numbers 1..requestQueues). */
  get requestQueues(): number {
    return this.opts.requestQueues;
  }
  get maxIo(): number {
    return this.opts.maxIo;
  }
  /** The generic client underneath: raw rings and raw completions for hostile tests. */
  get virtio(): VirtioClient<unknown> {
    return this.client as VirtioClient<unknown>;
  }
  get broken(): boolean {
    return this.client.broken;
  }

  /** Allocates a buffer in shared memory (guest RAM), for hand-written chains. */
  allocBuffer(length: number): SharedBuffer {
    return this.client.memory.alloc(length, 64);
  }

  /** The unique the next request will carry unless told otherwise. */
  nextUnique(): bigint {
    const u = this.uniqueNext;
    this.uniqueNext += 2n;
    return u;
  }

  close(): Promise<void> {
    return this.client.close();
  }

  // ---- transport ---------------------------------------------------------------------------

  private takeSlot(): Promise<Slot> {
    const s = this.free.pop();
    if (s !== undefined) return Promise.resolve(s);
    if (this.slotsMade < this.opts.maxInFlight) {
      this.slotsMade++;
      const mem = this.client.memory;
      return Promise.resolve({
        inBuf: mem.alloc(IN_HEADER_SIZE + this.argsRoom, 64),
        outBuf: mem.alloc(OUT_HEADER_SIZE + this.replyRoomMax, 64),
        done: null,
        fail: null,
      });
    }
    return new Promise((resolve) => this.waiting.push(resolve));
  }

  private giveSlot(slot: Slot): void {
    const w = this.waiting.shift();
    if (w) w(slot);
    else this.free.push(slot);
  }

  private complete(slot: Slot, len: number): void {
    const done = slot.done;
    slot.done = null;
    slot.fail = null;
    this.inFlight.delete(slot);
    done?.(len);
  }

  /** With segmentSize: pieces of that size, at most MAX_INDIRECT / 4 of them (the last takes the rest). */
  private segments(b: SharedBuffer): SharedBuffer[] {
    const n = this.opts.segmentSize;
    if (n <= 0 || b.bytes.length <= n) return [b];
    const out: SharedBuffer[] = [];
    const budget = MAX_INDIRECT / 4;
    let off = 0;
    while (off < b.bytes.length) {
      const len = out.length === budget - 1 ? b.bytes.length - off : Math.min(n, b.bytes.length - off);
      out.push(sub(b, off, len));
      off += len;
    }
    return out;
  }

  private pickQueue(queue: number | undefined): number {
    if (queue !== undefined) return queue;
    const q = 1 + (this.rr % this.opts.requestQueues);
    this.rr++;
    return q;
  }

  /**
   * Sends a whole message as given (it need not be valid FUSE) with `replyRoom` bytes of
   * device-writable space (0: none), and resolves with the used length and those bytes.
   */
  async raw(message: Uint8Array, replyRoom: number, queue?: number): Promise<{ len: number; bytes: Uint8Array }> {
    return this.exchange(message, replyRoom, queue, (out, len) => ({ len, bytes: out.slice(0, Math.min(len, replyRoom)) }));
  }

  /**
   * raw()'s exchange; `take` gets the slot's reply bytes (valid only during the call) and
   * the used length, and makes the result.
   */
  private async exchange<T>(message: Uint8Array, replyRoom: number, queue: number | undefined, take: (out: Uint8Array, len: number) => T): Promise<T> {
    if (message.length > IN_HEADER_SIZE + this.argsRoom) throw new RangeError(`request of ${message.length} bytes is larger than the client's slots`);
    if (replyRoom > OUT_HEADER_SIZE + this.replyRoomMax) throw new RangeError(`reply room of ${replyRoom} bytes is larger than the client's slots`);
    const slot = await this.takeSlot();
    try {
      slot.inBuf.bytes.set(message);
      slot.outBuf.bytes.fill(0, 0, Math.min(replyRoom, OUT_HEADER_SIZE));
      const readable = message.length > 0 ? this.splitRequest(sub(slot.inBuf, 0, message.length)) : [];
      const writable = replyRoom > 0 ? this.splitReply(sub(slot.outBuf, 0, replyRoom)) : [];
      if (readable.length + writable.length > MAX_INDIRECT) throw new RangeError('too many descriptors for one request');
      if (this.client.disconnected) throw new ErrnoError('ENOTCONN', 'the backend closed the connection');
      const len = await new Promise<number>((resolve, reject) => {
        slot.done = resolve;
        slot.fail = (err) => {
          slot.done = null;
          slot.fail = null;
          this.inFlight.delete(slot);
          reject(err);
        };
        this.inFlight.add(slot);
        this.client.submit(this.pickQueue(queue), readable, writable, slot);
      });
      return take(slot.outBuf.bytes, len);
    } finally {
      this.giveSlot(slot);
    }
  }

  /** Header and arguments in separate descriptors, as Linux sends them. */
  private splitRequest(b: SharedBuffer): SharedBuffer[] {
    if (b.bytes.length <= IN_HEADER_SIZE) return this.segments(b);
    return [...this.segments(sub(b, 0, IN_HEADER_SIZE)), ...this.segments(sub(b, IN_HEADER_SIZE, b.bytes.length - IN_HEADER_SIZE))];
  }

  private splitReply(b: SharedBuffer): SharedBuffer[] {
    if (b.bytes.length <= OUT_HEADER_SIZE) return this.segments(b);
    return [...this.segments(sub(b, 0, OUT_HEADER_SIZE)), ...this.segments(sub(b, OUT_HEADER_SIZE, b.bytes.length - OUT_HEADER_SIZE))];
  }

  /** Any request: the header is built here from the opcode, node id and options. Never throws on an errno. */
  async request(opcode: number, nodeid: number | bigint, args: readonly Uint8Array[], o: RequestOptions = {}): Promise<RawReply> {
    const unique = o.unique ?? this.nextUnique();
    const msg = encodeRequest({
      opcode, unique, nodeid, uid: o.uid ?? this.opts.uid, gid: o.gid ?? this.opts.gid, pid: o.pid ?? this.opts.pid,
    }, args);
    const room = o.replyRoom ?? 4096;
    const { len, bytes } = await this.raw(msg, OUT_HEADER_SIZE + room, o.queue);
    // raw() already copied the reply out of the slot: the payload is a view of that copy.
    return replyOf(bytes, len);
  }

  /** A request whose reply must be a success: returns the payload; throws ErrnoError / ReplyFormatError. */
  private async call(opcode: Opcode, nodeid: number, args: readonly Uint8Array[], replyRoom = 4096, queue?: number): Promise<Uint8Array> {
    const unique = this.nextUnique();
    const r = await this.request(opcode, nodeid, args, { replyRoom, unique, queue });
    return checkReply(opcode, unique, r);
  }

  /** A request that takes no reply, on hiprio by default: resolves once the device gave the buffers back. */
  async noReply(opcode: number, nodeid: number, args: readonly Uint8Array[], queue = 0): Promise<number> {
    const msg = encodeRequest({ opcode, unique: this.nextUnique(), nodeid, uid: this.opts.uid, gid: this.opts.gid, pid: this.opts.pid }, args);
    return (await this.raw(msg, 0, queue)).len;
  }

  // ---- operations --------------------------------------------------------------------------

  async init(o: { minor?: number; major?: number; flags?: number; flags2?: number; maxReadahead?: number } = {}): Promise<InitOut> {
    const minor = o.minor ?? FUSE_KERNEL_MINOR_VERSION;
    const args = encode.init(o.major ?? FUSE_KERNEL_VERSION, minor, o.maxReadahead ?? 1 << 17, o.flags ?? CLIENT_INIT_FLAGS, o.flags2 ?? 0);
    const out = decodeInitOut(await this.call(Opcode.INIT, 0, [args], 4096));
    this.initOut = out;
    return out;
  }

  async lookup(parent: number, name: string): Promise<DecodedEntry> {
    return decodeEntryOut(await this.call(Opcode.LOOKUP, parent, [cstr(name)]));
  }

  forget(nodeid: number, nlookup: number, queue = 0): Promise<number> {
    return this.noReply(Opcode.FORGET, nodeid, [encode.forget(nlookup)], queue);
  }

  batchForget(items: readonly ForgetOne[], queue = 0): Promise<number> {
    return this.noReply(Opcode.BATCH_FORGET, 0, [encode.batchForget(items)], queue);
  }

  interrupt(target: bigint, queue = 0): Promise<number> {
    return this.noReply(Opcode.INTERRUPT, 0, [encode.interrupt(target)], queue);
  }

  async getattr(nodeid: number, fh?: number): Promise<{ attrValidMs: number; attr: WireAttr }> {
    return decodeAttrOut(await this.call(Opcode.GETATTR, nodeid, [encode.getattr(fh === undefined ? 0 : FUSE_GETATTR_FH, fh ?? 0)]));
  }

  async setattr(nodeid: number, c: SetattrChanges): Promise<{ attrValidMs: number; attr: WireAttr }> {
    let valid = 0;
    if (c.mode !== undefined) valid |= FATTR_MODE;
    if (c.uid !== undefined) valid |= FATTR_UID;
    if (c.gid !== undefined) valid |= FATTR_GID;
    if (c.size !== undefined) valid |= FATTR_SIZE;
    if (c.atimeNs !== undefined) valid |= FATTR_ATIME | (c.atimeNs === 'now' ? FATTR_ATIME_NOW : 0);
    if (c.mtimeNs !== undefined) valid |= FATTR_MTIME | (c.mtimeNs === 'now' ? FATTR_MTIME_NOW : 0);
    if (c.ctimeNs !== undefined) valid |= FATTR_CTIME;
    if (c.fh !== undefined) valid |= FATTR_FH;
    const args = encode.setattr({
      valid, fh: c.fh, size: c.size, mode: c.mode, uid: c.uid, gid: c.gid, ctimeNs: c.ctimeNs,
      atimeNs: typeof c.atimeNs === 'bigint' ? c.atimeNs : undefined,
      mtimeNs: typeof c.mtimeNs === 'bigint' ? c.mtimeNs : undefined,
    });
    return decodeAttrOut(await this.call(Opcode.SETATTR, nodeid, [args]));
  }

  async readlink(nodeid: number): Promise<string> {
    return new TextDecoder().decode(await this.call(Opcode.READLINK, nodeid, [], 4096));
  }

  async symlink(parent: number, name: string, target: string): Promise<DecodedEntry> {
    return decodeEntryOut(await this.call(Opcode.SYMLINK, parent, [cstr(name), cstr(target)]));
  }

  async mknod(parent: number, name: string, mode: number, rdev = 0, umask = 0): Promise<DecodedEntry> {
    return decodeEntryOut(await this.call(Opcode.MKNOD, parent, [encode.mknod(mode, rdev, umask), cstr(name)]));
  }

  async mkdir(parent: number, name: string, mode = 0o755, umask = 0): Promise<DecodedEntry> {
    return decodeEntryOut(await this.call(Opcode.MKDIR, parent, [encode.mkdir(mode, umask), cstr(name)]));
  }

  async unlink(parent: number, name: string): Promise<void> {
    await this.call(Opcode.UNLINK, parent, [cstr(name)]);
  }

  async rmdir(parent: number, name: string): Promise<void> {
    await this.call(Opcode.RMDIR, parent, [cstr(name)]);
  }

  async rename(parent: number, name: string, newParent: number, newName: string): Promise<void> {
    await this.call(Opcode.RENAME, parent, [encode.rename(newParent), cstr(name), cstr(newName)]);
  }

  async rename2(parent: number, name: string, newParent: number, newName: string, flags: number): Promise<void> {
    await this.call(Opcode.RENAME2, parent, [encode.rename2(newParent, flags), cstr(name), cstr(newName)]);
  }

  async link(nodeid: number, newParent: number, newName: string): Promise<DecodedEntry> {
    return decodeEntryOut(await this.call(Opcode.LINK, newParent, [encode.link(nodeid), cstr(newName)]));
  }

  async open(nodeid: number, flags: number): Promise<{ fh: number; openFlags: number }> {
    return decodeOpenOut(await this.call(Opcode.OPEN, nodeid, [encode.open(flags)]));
  }

  async create(parent: number, name: string, flags: number, mode = 0o644, umask = 0): Promise<{ entry: DecodedEntry; fh: number; openFlags: number }> {
    const b = await this.call(Opcode.CREATE, parent, [encode.create(flags, mode, umask), cstr(name)]);
    const entry = decodeEntryOut(b);
    const o = decodeOpenOut(b, 128);
    return { entry, ...o };
  }

  /** READ of up to `size` bytes (a copy of what came back). */
  async read(nodeid: number, fh: number, offset: number, size: number, queue?: number): Promise<Uint8Array> {
    return this.call(Opcode.READ, nodeid, [encode.read(fh, offset, size)], size, queue);
  }

  /**
   * READ of up to `into.length` bytes into `into`: the number that came back. The reply is
   * copied from the slot into the caller's buffer, with no new buffer per READ: a fresh
   * 1 MiB copy per READ made the client's own page faults (the allocator returning and
   * taking back its heap) the noisiest part of a read benchmark.
   */
  async readInto(nodeid: number, fh: number, offset: number, into: Uint8Array, queue?: number): Promise<number> {
    const unique = this.nextUnique();
    const msg = encodeRequest({ opcode: Opcode.READ, unique, nodeid, uid: this.opts.uid, gid: this.opts.gid, pid: this.opts.pid }, [encode.read(fh, offset, into.length)]);
    const room = OUT_HEADER_SIZE + into.length;
    return this.exchange(msg, room, queue, (out, len) => {
      const payload = checkReply(Opcode.READ, unique, replyOf(out.subarray(0, Math.min(len, room)), len));
      into.set(payload);
      return payload.length;
    });
  }

  async write(nodeid: number, fh: number, offset: number, data: Uint8Array, queue?: number): Promise<number> {
    return decodeSizeOut(await this.call(Opcode.WRITE, nodeid, [encode.write(fh, offset, data.length), data], 64, queue));
  }

  async statfs(): Promise<KStatfs> {
    return decodeStatfsOut(await this.call(Opcode.STATFS, 1, []));
  }

  async release(nodeid: number, fh: number, flags = 0): Promise<void> {
    await this.call(Opcode.RELEASE, nodeid, [encode.release(fh, flags)]);
  }

  async releasedir(nodeid: number, fh: number): Promise<void> {
    await this.call(Opcode.RELEASEDIR, nodeid, [encode.release(fh)]);
  }

  async fsync(nodeid: number, fh: number, datasync = false): Promise<void> {
    await this.call(Opcode.FSYNC, nodeid, [encode.fsync(fh, datasync ? 1 : 0)]);
  }

  async fsyncdir(nodeid: number, fh: number): Promise<void> {
    await this.call(Opcode.FSYNCDIR, nodeid, [encode.fsync(fh, 0)]);
  }

  async flush(nodeid: number, fh: number): Promise<void> {
    await this.call(Opcode.FLUSH, nodeid, [encode.flush(fh)]);
  }

  async setxattr(nodeid: number, name: string, value: Uint8Array, flags = 0): Promise<void> {
    await this.call(Opcode.SETXATTR, nodeid, [encode.setxattr(value.length, flags), cstr(name), value]);
  }

  /** With size 0: the value's length (as a one-element array's length is awkward, returned as a number). */
  async getxattrSize(nodeid: number, name: string): Promise<number> {
    return decodeSizeOut(await this.call(Opcode.GETXATTR, nodeid, [encode.getxattr(0), cstr(name)]));
  }

  async getxattr(nodeid: number, name: string, size = 65536): Promise<Uint8Array> {
    return this.call(Opcode.GETXATTR, nodeid, [encode.getxattr(size), cstr(name)], size);
  }

  async listxattr(nodeid: number, size = 65536): Promise<string[]> {
    return decodeXattrList(await this.call(Opcode.LISTXATTR, nodeid, [encode.getxattr(size)], size));
  }

  async listxattrSize(nodeid: number): Promise<number> {
    return decodeSizeOut(await this.call(Opcode.LISTXATTR, nodeid, [encode.getxattr(0)]));
  }

  async removexattr(nodeid: number, name: string): Promise<void> {
    await this.call(Opcode.REMOVEXATTR, nodeid, [cstr(name)]);
  }

  async opendir(nodeid: number): Promise<{ fh: number; openFlags: number }> {
    return decodeOpenOut(await this.call(Opcode.OPENDIR, nodeid, [encode.open(0)]));
  }

  async readdir(nodeid: number, fh: number, offset: number | bigint, size = 4096): Promise<Dirent[]> {
    return decodeDirents(await this.call(Opcode.READDIR, nodeid, [encode.read(fh, offset, size)], size));
  }

  async readdirplus(nodeid: number, fh: number, offset: number | bigint, size = 4096): Promise<DirentPlus[]> {
    return decodeDirentsPlus(await this.call(Opcode.READDIRPLUS, nodeid, [encode.read(fh, offset, size)], size));
  }

  /** Every entry of a directory, page by page (opendir … releasedir). */
  async listdir(nodeid: number, plus = false, pageSize = 4096): Promise<(Dirent | DirentPlus)[]> {
    const { fh } = await this.opendir(nodeid);
    try {
      const all: (Dirent | DirentPlus)[] = [];
      let off = 0n;
      for (;;) {
        const page = plus ? await this.readdirplus(nodeid, fh, off, pageSize) : await this.readdir(nodeid, fh, off, pageSize);
        if (page.length === 0) return all;
        all.push(...page);
        off = page[page.length - 1]!.off;
      }
    } finally {
      await this.releasedir(nodeid, fh);
    }
  }

  async access(nodeid: number, mask: number): Promise<void> {
    await this.call(Opcode.ACCESS, nodeid, [encode.access(mask)]);
  }

  async fallocate(nodeid: number, fh: number, offset: number, length: number, mode = 0): Promise<void> {
    await this.call(Opcode.FALLOCATE, nodeid, [encode.fallocate(fh, offset, length, mode)]);
  }

  async lseek(nodeid: number, fh: number, offset: number, whence: number): Promise<number> {
    return decodeLseekOut(await this.call(Opcode.LSEEK, nodeid, [encode.lseek(fh, offset, whence)]));
  }

  async syncfs(): Promise<void> {
    await this.call(Opcode.SYNCFS, 1, [encode.syncfs()]);
  }

  async destroy(): Promise<void> {
    await this.call(Opcode.DESTROY, 0, []);
  }
}

/**
 * Buffers for READs in flight, one per READ, each reused once its READ is done: readInto()
 * with no allocation per READ (the bench and `vhost-s3 bench fs` read loops).
 */
export class ReadBuffers {
  private readonly free: Uint8Array[];

  constructor(count: number, size: number) {
    this.free = Array.from({ length: count }, () => new Uint8Array(size));
  }

  /** readInto() with a free buffer: the bytes that came back. At most `count` at once. */
  async read(c: FuseClient, nodeid: number, fh: number, offset: number): Promise<number> {
    const b = this.free.pop();
    if (b === undefined) throw new RangeError('more READs in flight than ReadBuffers has buffers');
    try {
      return await c.readInto(nodeid, fh, offset, b);
    } finally {
      this.free.push(b);
    }
  }
}

/** A reply from the bytes the device wrote (at most the reply room) and its used length. */
function replyOf(bytes: Uint8Array, len: number): RawReply {
  const header = len >= OUT_HEADER_SIZE ? decodeOutHeader(bytes) : null;
  return { len, header, error: header?.error ?? 0, payload: bytes.subarray(OUT_HEADER_SIZE, Math.max(OUT_HEADER_SIZE, len)) };
}

/** Checks the out header of a typed call: unique, length and error. Returns the payload. */
function checkReply(opcode: Opcode, unique: bigint, r: RawReply): Uint8Array {
  const name = opcodeName(opcode);
  if (r.header === null) throw new ReplyFormatError(`${name}: the device returned ${r.len} bytes, no out header`);
  if (r.header.unique !== unique) throw new ReplyFormatError(`${name}: reply for unique ${r.header.unique}, expected ${unique}`);
  if (r.header.len !== r.len) throw new ReplyFormatError(`${name}: out header says ${r.header.len} bytes, device wrote ${r.len}`);
  if (r.error > 0 || r.error < -4095) throw new ReplyFormatError(`${name}: error ${r.error} is not a negative errno`);
  if (r.error < 0) {
    if (r.payload.length !== 0) throw new ReplyFormatError(`${name}: error reply with a payload`);
    const code = errnoName(-r.error);
    throw code !== undefined ? new ErrnoError(code, `${name}: ${code}`) : new ErrnoError('EIO', `${name}: errno ${-r.error}`);
  }
  return r.payload;
}

