// The FUSE engine: turns decoded FUSE requests into calls on a path-based Vfs and encodes
// the replies. Transport-independent: virtio-fs (virtiofs-device.ts) and /dev/fuse hand
// it whole request messages and write back what it returns.
//
// Requests run concurrently: dispatch() starts each one and returns at once; a slow Vfs
// call holds up only its own request. Every request gets exactly one completion call —
// a reply, or null for the opcodes that take none (FORGET, BATCH_FORGET, INTERRUPT,
// NOTIFY_REPLY).
//
// Semantics worth knowing:
// - INIT: major must be 7 and minor >= 31, else EPROTO. Offered: ASYNC_READ,
//   ATOMIC_O_TRUNC, BIG_WRITES, DO_READDIRPLUS, READDIRPLUS_AUTO, PARALLEL_DIROPS,
//   MAX_PAGES (max_write 1 MiB, 256 pages); never EXPORT_SUPPORT. A second INIT (a
//   rebooted guest on the same connection) starts a new session: open files are
//   released, the inode table is emptied. Other requests before INIT get EIO.
// - Permissions are the kernel's business: virtio-fs mounts use default_permissions,
//   so the kernel checks modes itself and ACCESS, should it come, is answered 0.
// - LINK → EPERM (no hard links in an object store); MKNOD of anything but a regular
//   file → EPERM; GETLK/SETLK/SETLKW → ENOSYS (the kernel then keeps locks locally);
//   FALLOCATE modes other than 0 → EOPNOTSUPP; LSEEK sees files as never sparse.
// - Modes passed to the Vfs (mkdir, create, symlink, setattr) are permission bits only
//   (07777): the Vfs owns the file type. umask has been applied by the kernel.
// - nlink is 1 for everything (as btrfs reports directories): link counts are unknown;
//   0 for an open file that was unlinked (the Vfs says so: FileAttr.nlink), as Linux.
// - INTERRUPT is best effort: the interrupted request is answered EINTR at once if it
//   is still running; whatever it did (an entry looked up, a file opened) is undone
//   when the Vfs call returns. A READ being copied into the guest's buffers off the event
//   loop (OpenFile.readIntoAsync) is not interrupted: it completes normally.
// - A reply longer than the transport's room is replaced: ERANGE for xattrs,
//   ENAMETOOLONG for READLINK, EIO otherwise.
// - A file unlinked (or replaced by rename) while open stays usable through the handles
//   already open: GETATTR and SETATTR of its node id, which the kernel sends without a
//   handle for fstat/fchmod/fchown/futimens, go to one of them (OpenFile.attr/setattr).
//   Opening it again by node id (/proc/self/fd/N) fails with ENOENT, as the path-based
//   Vfs has nothing to open it by.
import { ErrnoError, errnoOf } from '../util/errors.js';
import { silentLogger, type Logger } from '../util/log.js';
import {
  DT_DIR, DT_LNK, DT_REG, E, FATTR_ATIME, FATTR_ATIME_NOW, FATTR_CTIME, FATTR_FH, FATTR_GID, FATTR_KILL_SUIDGID,
  FATTR_MODE, FATTR_MTIME, FATTR_MTIME_NOW, FATTR_SIZE, FATTR_UID, FOPEN_PASSTHROUGH, FUSE2_PASSTHROUGH, FUSE_ASYNC_READ, FUSE_ATOMIC_O_TRUNC,
  FUSE_BIG_WRITES, FUSE_DO_READDIRPLUS, FUSE_FSYNC_FDATASYNC, FUSE_GETATTR_FH, FUSE_INIT_EXT, FUSE_KERNEL_MINOR_VERSION,
  FUSE_KERNEL_VERSION, FUSE_MAX_PAGES, FUSE_MIN_MINOR_VERSION, FUSE_PARALLEL_DIROPS, FUSE_READDIRPLUS_AUTO,
  FUSE_ROOT_ID, O_ACCMODE, O_APPEND, O_EXCL, O_RDONLY, O_TRUNC, O_WRONLY, Opcode, RENAME_NOREPLACE, S_IFDIR,
  S_IFMT, S_IFREG, SEEK_CUR, SEEK_DATA, SEEK_END, SEEK_HOLE, SEEK_SET, XATTR_CREATE, XATTR_REPLACE,
  isNoReply, opcodeName, type WireAttr,
} from './abi.js';
import { checkName, decodeRequest, type FuseRequest, type ReadLikeRequest } from './requests.js';
import {
  DirentWriter, encodeAttrOut, encodeEntryOut, encodeInitOut, encodeLseekOut, encodeOpenOut, encodeSizeOut,
  encodeStatfsOut, errorReply, okReply, type EntryOut, type FuseReply,
} from './replies.js';
import { InodeTable, joinPath, parentPath, type Inode } from './inodes.js';
import { HandleTable, type DirHandle, type DirSnapshotEntry, type FileHandle } from './handles.js';
import { Passthrough, type Backing, type PassthroughOptions } from './passthrough.js';
import type { Caller, CreateFlags, FileAttr, FileKind, OpenFile, OpenFlags, Vfs } from './vfs.js';
import type { RequestObserver } from '../metrics/observer.js';
import type { Segment } from '../virtio/memory.js';
import { errnoName, IN_HEADER_SIZE } from './abi.js';
import { workInFlight } from '../native/index.js';

export interface FuseServerOptions {
  /** How long the kernel may cache a name → node binding (default 1000 ms). */
  readonly entryTimeoutMs?: number;
  /** How long the kernel may cache attributes (default 1000 ms). */
  readonly attrTimeoutMs?: number;
  /** When > 0, a failed LOOKUP is a cacheable negative entry (node id 0) for this long (default 0: ENOENT). */
  readonly negativeTimeoutMs?: number;
  /** max_write offered at INIT (default 1 MiB); also the largest READ served. */
  readonly maxWrite?: number;
  /** max_pages offered at INIT (default 256). */
  readonly maxPages?: number;
  /** max_background / congestion_threshold offered at INIT (default 64 / 48). */
  readonly maxBackground?: number;
  readonly congestionThreshold?: number;
  /** st_blksize reported for every file (default 4096). */
  readonly blockSize?: number;
  readonly log?: Logger;
  /** Reports every request (metrics); absent: nothing is measured. */
  readonly observer?: RequestObserver;
}

export interface FuseCounters {
  requests: number;
  errors: number;
  /** Requests that could not be decoded. */
  malformed: number;
  interrupted: number;
}

/** Called exactly once per dispatched request: its reply, or null when it takes none. */
export type ReplyCallback = (reply: FuseReply | null) => void;

/**
 * Offered by a transport whose reply buffers are memory it can hand out (virtio-fs: the
 * guest's writable descriptors): views of the first `length` bytes of the reply payload
 * room (after the out header), or null. A READ of a file that can read in place
 * (OpenFile.readInto) fills them and answers with an `inPlace` reply: one copy, from the
 * file into guest memory.
 */
export type PayloadTarget = (length: number) => readonly Uint8Array[] | null;

/**
 * The same room for a copy made off the event loop (OpenFile.readIntoAsync): the
 * segments of the first `length` bytes of the payload room, kept mapped until `release`
 * is called (GuestMemory.pin), or null.
 */
export type AsyncPayloadTarget = (length: number) => { readonly segments: readonly Segment[]; readonly release: () => void } | null;

/** INIT flags we turn on when the kernel offers them. */
const WANTED_FLAGS = FUSE_ASYNC_READ | FUSE_ATOMIC_O_TRUNC | FUSE_BIG_WRITES | FUSE_DO_READDIRPLUS
  | FUSE_READDIRPLUS_AUTO | FUSE_PARALLEL_DIROPS | FUSE_MAX_PAGES;

const S_ISUID = 0o4000;
const S_ISGID = 0o2000;
const S_IXGRP = 0o010;
const PERM_BITS = 0o7777;
const MAX_SAFE = Number.MAX_SAFE_INTEGER;
/**
 * READs up to this size are answered inside dispatch() when the file can read in place
 * into the transport's reply buffers, or has the bytes at hand (OpenFile.readNow): a 4 KiB
 * random read then costs no promise chain. Larger ones may be copied off the event loop
 * (readIntoAsync, from 512 KiB).
 */
const SYNC_READ_MAX_BYTES = 128 * 1024;

/** One request in flight. */
class Pending {
  settled = false;
  /** A READ being copied into the reply buffers off the event loop: not interruptible (readIntoAsync). */
  copying = false;
  /** A READ whose file was asked to read in place already (readInPlace). */
  triedInPlace = false;
  /**
   * What to undo if the reply is not delivered (interrupted, did not fit): the lookup of
   * the node entered first (`entered`, 0 for none: the common case needs no closure), then
   * `undos` in order (made on first use).
   */
  private entered = 0;
  private undos: (() => void)[] | null = null;
  constructor(
    readonly req: FuseRequest, readonly maxReply: number, readonly done: ReplyCallback,
    readonly payload: PayloadTarget | undefined, readonly asyncPayload: AsyncPayloadTarget | undefined,
  ) {}

  onUndo(f: () => void): void {
    (this.undos ??= []).push(f);
  }

  /** The reply hands the kernel one lookup of `nodeid`. */
  onUndoForget(inodes: InodeTable, nodeid: number): void {
    if (this.entered === 0 && this.undos === null) this.entered = nodeid;
    else this.onUndo(() => inodes.forget(nodeid, 1));
  }

  undo(inodes: InodeTable): void {
    if (this.entered !== 0) inodes.forget(this.entered, 1);
    const u = this.undos;
    if (u !== null) for (const f of u) f();
  }
}

/** The open(2) flags of an OPEN or CREATE as the Vfs takes them. */
function openFlags(raw: number): OpenFlags {
  const acc = raw & O_ACCMODE;
  const write = acc !== O_RDONLY;
  return { read: acc !== O_WRONLY, write, truncate: write && (raw & O_TRUNC) !== 0, append: (raw & O_APPEND) !== 0 };
}

/**
 * The flags of a CREATE: openFlags() plus O_EXCL, copied field by field rather than
 * spread (a spread plus a property made a slow-path object per CREATE: runtime calls in
 * the create profile), so that the handle, which reads these flags again, sees one shape.
 */
function createFlags(raw: number): CreateFlags {
  const f = openFlags(raw);
  return { read: f.read, write: f.write, truncate: f.truncate, append: f.append, exclusive: (raw & O_EXCL) !== 0 };
}

/** MKNOD of a regular file: made like O_CREAT|O_EXCL and closed at once. */
const MKNOD_FLAGS: CreateFlags = { read: false, write: false, truncate: false, append: false, exclusive: true };

function kindType(kind: FileKind): number {
  return kind === 'dir' ? DT_DIR : kind === 'symlink' ? DT_LNK : DT_REG;
}

function fail(code: keyof typeof E, message?: string): never {
  throw new ErrnoError(code, message);
}

/** A stable pseudo inode number for READDIR entries the kernel does not know yet (FNV-1a, above 2^32). */
function pseudoIno(path: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < path.length; i++) {
    h ^= path.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return 0x100000000 + h;
}

const utf8 = new TextEncoder();

/** fuse_write_in.size: after the in header, fh (8) and offset (8). */
const WRITE_SIZE_OFFSET = IN_HEADER_SIZE + 16;

/** `done`, reporting the request to `obs` first (opcode, errno, bytes moved). */
function observed(obs: RequestObserver, bytes: Uint8Array, done: ReplyCallback): ReplyCallback {
  const start = obs.start();
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const opcode = bytes.length >= 8 ? view.getUint32(4, true) : -1;
  // Only opcodes the codec knows become labels: a guest must not be able to mint series.
  const op = opcode in Opcode ? opcodeName(opcode) : 'unknown';
  const written = opcode === Opcode.WRITE && bytes.length >= WRITE_SIZE_OFFSET + 4 ? view.getUint32(WRITE_SIZE_OFFSET, true) : 0;
  return (reply) => {
    const ok = reply === null || reply.error === 0;
    const status = ok ? 'ok' : errnoName(-reply.error) ?? 'unknown';
    obs.done(start, op, status, ok && reply !== null && opcode === Opcode.READ ? reply.length : 0, ok ? written : 0);
    done(reply);
  };
}

export class FuseServer {
  readonly counters: FuseCounters = { requests: 0, errors: 0, malformed: 0, interrupted: 0 };
  private readonly opts: Required<Omit<FuseServerOptions, 'log' | 'observer'>>;
  private readonly log: Logger;
  private readonly observer: RequestObserver | undefined;
  private readonly inodes = new InodeTable(0);
  private readonly handles = new HandleTable();
  private readonly pending = new Map<bigint, Pending>();
  private initialized = false;
  private protoMinor = 0;
  private epoch = 0;
  private inflight = 0;
  private idleWaiters: (() => void)[] = [];
  private closing: Promise<void> | null = null;
  /** What the transport offers for FUSE passthrough (offerPassthrough), and the session's use of it once negotiated. */
  private passthroughOffer: PassthroughOptions | null = null;
  private passthrough: Passthrough | null = null;

  constructor(private readonly vfs: Vfs, opts: FuseServerOptions = {}) {
    this.opts = {
      entryTimeoutMs: opts.entryTimeoutMs ?? 1000,
      attrTimeoutMs: opts.attrTimeoutMs ?? 1000,
      negativeTimeoutMs: opts.negativeTimeoutMs ?? 0,
      maxWrite: opts.maxWrite ?? 1 << 20,
      maxPages: opts.maxPages ?? 256,
      maxBackground: opts.maxBackground ?? 64,
      congestionThreshold: opts.congestionThreshold ?? 48,
      blockSize: opts.blockSize ?? 4096,
    };
    this.log = opts.log ?? silentLogger;
    this.observer = opts.observer;
  }

  /**
   * From the /dev/fuse transport, before the session starts: backing files can be
   * registered, so FUSE_PASSTHROUGH is accepted at INIT when the kernel offers it.
   */
  offerPassthrough(o: PassthroughOptions): void {
    this.passthroughOffer = o;
  }

  /** The session's passthrough state (null when not negotiated). */
  get passthroughState(): Passthrough | null {
    return this.passthrough;
  }

  /** INIT has been answered (and no DESTROY since). */
  get isInitialized(): boolean {
    return this.initialized;
  }
  /** The protocol minor agreed at INIT. */
  get minor(): number {
    return this.protoMinor;
  }
  /** Largest READ / WRITE payload served. */
  get maxIo(): number {
    return this.opts.maxWrite;
  }
  /** Inodes the kernel holds (the root included) and open handles: for tests and metrics. */
  get inodeCount(): number {
    return this.inodes.size;
  }
  get handleCount(): number {
    return this.handles.size;
  }
  /** The lookup count of a node id (undefined when unknown): for tests. */
  lookupCount(nodeid: number): number | undefined {
    return this.inodes.get(nodeid)?.lookups;
  }
  /**
   * Requests started and not yet finished (including interrupted ones whose Vfs call still
   * runs), and files an undone OPEN or CREATE opened that are still being released.
   */
  get inflightCount(): number {
    return this.inflight;
  }

  /** Resolves once no request is running. */
  idle(): Promise<void> {
    if (this.inflight === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /**
   * Handles one request message (header first). `maxReply` is the room for the payload
   * after the out header. `done` may be called before dispatch() returns.
   */
  dispatch(bytes: Uint8Array, maxReply: number, done: ReplyCallback, payload?: PayloadTarget, asyncPayload?: AsyncPayloadTarget): void {
    this.counters.requests++;
    if (this.observer !== undefined) done = observed(this.observer, bytes, done);
    const d = decodeRequest(bytes);
    if (!d.ok) {
      this.counters.malformed++;
      this.log.debug('malformed FUSE request', { opcode: opcodeName(d.h.opcode), unique: d.h.unique, why: d.why });
      if (isNoReply(d.h.opcode)) return done(null);
      this.counters.errors++;
      return done(errorReply(d.h.unique, d.errno));
    }
    const req = d.req;
    switch (req.op) {
      case Opcode.FORGET:
        this.forget(req.h.nodeid, req.nlookup);
        return done(null);
      case Opcode.BATCH_FORGET:
        for (const it of req.items) this.forget(it.nodeid, it.nlookup);
        return done(null);
      case Opcode.INTERRUPT:
        this.interrupt(req.target);
        return done(null);
      case 'other':
        if (isNoReply(req.h.opcode)) return done(null);
        break;
      default:
        break;
    }
    if (!this.initialized && req.op !== Opcode.INIT) {
      this.counters.errors++;
      return done(errorReply(req.h.unique, E.EIO));
    }
    const p = new Pending(req, maxReply, done, payload, asyncPayload);
    if (req.op === Opcode.LOOKUP || req.op === Opcode.GETATTR || req.op === Opcode.READDIR || req.op === Opcode.READDIRPLUS
      || (req.op === Opcode.READ && req.size <= SYNC_READ_MAX_BYTES)) {
      // Answered from what the Vfs has cached, the directory handle holds or the file reads
      // in place or has at hand: no promise chain, nothing in flight.
      let reply: FuseReply | undefined;
      try {
        reply = this.answerNow(req, p);
      } catch (err) {
        reply = this.failure(req, err);
      }
      if (reply !== undefined) return this.finish(p, reply);
    }
    const unique = req.h.unique;
    this.pending.set(unique, p);
    this.began();
    // A large READ copied off the event loop: answered from the copy's callback, with no
    // promise or async function in between (the common request of a sequential reader).
    if (req.op === Opcode.READ && asyncPayload !== undefined && this.startCopyRead(p, req)) return;
    // LOOKUP and GETATTR (a cache miss) in small functions of their own: run() is too
    // large for the optimizing compiler.
    const result = req.op === Opcode.LOOKUP ? this.lookupLater(req, p)
      : req.op === Opcode.GETATTR ? this.getattrLater(req)
        : this.run(req, p);
    void result.then(
      (reply) => this.settle(p, reply),
      (err: unknown) => this.settle(p, this.failure(req, err)),
    );
  }

  /** The end of a request that went asynchronous: its reply, then it is no longer in flight. */
  private settle(p: Pending, reply: FuseReply): void {
    try {
      this.finish(p, reply);
    } finally {
      const unique = p.req.h.unique;
      if (this.pending.get(unique) === p) this.pending.delete(unique);
      this.ended();
    }
  }

  /** A request goes asynchronous (or the server starts work of its own): counted until ended(). */
  private began(): void {
    this.inflight++;
    workInFlight[0]!++;
  }

  /** Something counted in `inflight` is over: wakes idle() waiters at zero. */
  private ended(): void {
    workInFlight[0]!--;
    if (--this.inflight === 0) {
      const w = this.idleWaiters;
      this.idleWaiters = [];
      for (const f of w) f();
    }
  }

  /** Promise form of dispatch(), for tests and simple transports. */
  handle(bytes: Uint8Array, maxReply = this.opts.maxWrite + 4096): Promise<FuseReply | null> {
    return new Promise((resolve) => this.dispatch(bytes, maxReply, resolve));
  }

  /**
   * Ends the session (the peer disconnected or reset the device): waits for running
   * requests, releases every open file (storing what they buffered), empties the inode
   * table. The next request must be INIT.
   */
  async reset(): Promise<void> {
    this.initialized = false;
    await this.idle();
    await this.endSession();
  }

  /**
   * The end of serving, for the transport's shutdown: ends the session as reset() does, then
   * closes the Vfs (Vfs.close: everything buffered is stored). Once: later calls wait for
   * the first. A later INIT is refused (ENODEV).
   */
  close(): Promise<void> {
    return (this.closing ??= this.reset().then(() => this.vfs.close()));
  }

  /**
   * New cache timeouts for the replies sent from now on (a configuration reload, e.g.
   * SIGHUP); what the kernel was told before stays valid for the time it was given.
   */
  setTimeouts(t: { readonly entryTimeoutMs: number; readonly attrTimeoutMs: number; readonly negativeTimeoutMs: number }): void {
    Object.assign(this.opts, { entryTimeoutMs: t.entryTimeoutMs, attrTimeoutMs: t.attrTimeoutMs, negativeTimeoutMs: t.negativeTimeoutMs });
  }

  // ---- plumbing -----------------------------------------------------------------------------

  private failure(req: FuseRequest, err: unknown): FuseReply {
    const errno = errnoOf(err);
    if (err instanceof ErrnoError) {
      this.log.debug('FUSE request failed', { opcode: opcodeName(req.h.opcode), errno: err.code });
    } else {
      this.log.warn('FUSE request failed unexpectedly', { opcode: opcodeName(req.h.opcode), error: err });
    }
    return errorReply(req.h.unique, errno);
  }

  private finish(p: Pending, reply: FuseReply): void {
    if (p.settled) {
      // Interrupted: the kernel already has EINTR. Undo what the late result did.
      p.undo(this.inodes);
      return;
    }
    p.settled = true;
    if (reply.length > p.maxReply) {
      p.undo(this.inodes);
      const op = p.req.h.opcode;
      const errno = op === Opcode.GETXATTR || op === Opcode.LISTXATTR ? E.ERANGE : op === Opcode.READLINK ? E.ENAMETOOLONG : E.EIO;
      this.log.debug('FUSE reply does not fit', { opcode: opcodeName(op), length: reply.length, room: p.maxReply });
      reply = errorReply(reply.unique, errno);
    }
    if (reply.error !== 0) this.counters.errors++;
    this.deliver(p, reply);
  }

  /** Hands a reply to the transport; a transport that throws must not become an unhandled rejection. */
  private deliver(p: Pending, reply: FuseReply): void {
    try {
      p.done(reply);
    } catch (err) {
      this.log.error('the transport failed to take a FUSE reply', { opcode: opcodeName(p.req.h.opcode), error: err });
    }
  }

  private interrupt(target: bigint): void {
    const p = this.pending.get(target);
    // A READ being copied into the guest's buffers finishes normally: answered now, its
    // buffers would go back to the guest while the kernel still writes them.
    if (p === undefined || p.settled || p.copying) return;
    p.settled = true;
    this.counters.interrupted++;
    this.counters.errors++;
    this.deliver(p, errorReply(target, E.EINTR));
  }

  private forget(nodeid: number, nlookup: number): void {
    this.inodes.forget(nodeid, nlookup);
  }

  private async endSession(): Promise<void> {
    const files = this.handles.drain();
    this.inodes.clear(++this.epoch);
    for (const h of files) {
      this.releaseBacking(h);
      try {
        await h.file.release();
      } catch (err) {
        this.log.warn('releasing an open file at the end of a FUSE session failed', { error: err });
      }
    }
  }

  /**
   * Starts a READ copied into the reply buffers off the event loop (OpenFile.readIntoAsync)
   * when nothing stands in its way, and answers it from the copy's callback (settle):
   * true. false when it does not apply — an unknown or unreadable handle, a size run()
   * refuses, a file or transport that cannot copy it — and run() then serves (or fails)
   * the READ as usual. The caller has entered `p` as pending and in flight. The reply
   * waits for the copy, whatever happens meanwhile (INTERRUPT, RELEASE).
   */
  private startCopyRead(p: Pending, req: ReadLikeRequest): boolean {
    const h = Number.isSafeInteger(req.fh) ? this.handles.file(req.fh) : undefined;
    const size = req.size;
    if (h === undefined || !h.readable || h.file.readIntoAsync === undefined || size === 0 || req.offset > MAX_SAFE
      || this.readSizeError(req, p) !== null) return false;
    const room = p.asyncPayload!(size);
    if (room === null) return false;
    // Before the call: the copy may complete (and settle) before readIntoAsync returns.
    p.copying = true;
    let started = false;
    let answered = false;
    try {
      started = h.file.readIntoAsync(req.offset, size, room.segments, (result) => {
        answered = true;
        room.release();
        p.copying = false;
        this.settle(p, this.readReply(req, result));
      });
    } catch (err) {
      // As run() would have: the READ fails with what the Vfs threw (unless it was answered).
      p.copying = false;
      room.release();
      if (!answered) this.settle(p, this.failure(req, err));
      return true;
    }
    if (!started) {
      p.copying = false;
      room.release();
    }
    return started;
  }

  /** The reply to a READ copied off the event loop: `result` bytes copied, or a negative errno. */
  private readReply(req: ReadLikeRequest, result: number): FuseReply {
    const u = req.h.unique;
    if (result < 0) {
      this.log.debug('asynchronous READ failed', { errno: -result });
      return errorReply(u, E.EIO);
    }
    return { unique: u, error: 0, parts: [], length: Math.min(result, req.size), inPlace: true };
  }

  // ---- helpers -----------------------------------------------------------------------------

  private inode(nodeid: number): Inode {
    const ino = this.inodes.get(nodeid);
    if (ino === undefined) fail('ESTALE', `unknown node id ${nodeid}`);
    return ino;
  }

  /** The current path of a node id (ENOENT once unlinked). */
  private pathOf(nodeid: number): string {
    const p = this.inode(nodeid).path;
    if (p === null) fail('ENOENT');
    return p;
  }

  /** The path of `name` in directory `nodeid`. */
  private childPath(nodeid: number, name: string): string {
    const dir = this.inode(nodeid);
    if (dir.path === null) fail('ENOENT');
    if (dir.kind !== 'dir') fail('ENOTDIR');
    return joinPath(dir.path, name);
  }

  private caller(req: FuseRequest): Caller {
    return { uid: req.h.uid, gid: req.h.gid, pid: req.h.pid };
  }

  private wireAttr(nodeid: number, a: FileAttr): WireAttr {
    const size = Number.isSafeInteger(a.size) && a.size > 0 ? a.size : 0;
    return {
      ino: nodeid, size, blocks: Math.ceil(size / 512), atimeNs: a.atime, mtimeNs: a.mtime, ctimeNs: a.ctime,
      mode: a.mode, nlink: a.nlink ?? 1, uid: a.uid, gid: a.gid, rdev: 0, blksize: this.opts.blockSize, flags: 0,
    };
  }

  private entry(ino: Inode, attr: FileAttr): EntryOut {
    ino.attr = attr;
    return {
      nodeid: ino.nodeid, generation: ino.generation, entryValidMs: this.opts.entryTimeoutMs,
      attrValidMs: this.opts.attrTimeoutMs, attr: this.wireAttr(ino.nodeid, attr),
    };
  }

  /**
   * Registers the object just found or made as `name` in directory `parent` (one lookup)
   * and encodes its entry. Uses the parent's path as it is now: a concurrent rename of the
   * parent moved the object too.
   */
  private enter(p: Pending, parent: number, name: string, attr: FileAttr, known?: string): Uint8Array {
    return encodeEntryOut(this.entry(this.enterInode(p, parent, name, attr, known), attr));
  }

  private enterInode(p: Pending, parent: number, name: string, attr: FileAttr, known?: string): Inode {
    // `known`: the path just computed, with nothing run since (the synchronous LOOKUP).
    const path = known ?? this.childPath(parent, name);
    const ino = this.inodes.lookup(path, attr.kind);
    if (ino !== this.inodes.root) p.onUndoForget(this.inodes, ino.nodeid);
    return ino;
  }

  private fileHandle(fh: number): FileHandle {
    const h = Number.isSafeInteger(fh) ? this.handles.file(fh) : undefined;
    if (h === undefined) fail('EBADF');
    return h;
  }

  /** The open file a READ reads: EBADF, and the errno of readSizeError. */
  private readableHandle(req: ReadLikeRequest, p: Pending): FileHandle {
    const h = this.fileHandle(req.fh);
    if (!h.readable) fail('EBADF');
    const e = this.readSizeError(req, p);
    if (e !== null) fail(e, e === 'EINVAL' ? 'read larger than max_pages' : 'no room for the read data');
    return h;
  }

  /** EINVAL for a READ larger than was agreed at INIT, EIO for one the reply room cannot hold, else null. */
  private readSizeError(req: ReadLikeRequest, p: Pending): 'EINVAL' | 'EIO' | null {
    if (req.size > Math.max(this.opts.maxWrite, this.opts.maxPages * 4096)) return 'EINVAL';
    return req.size > p.maxReply ? 'EIO' : null;
  }

  /** A READ answered by the file reading into the transport's reply buffers (PayloadTarget), or null. Tried once per request. */
  private readInPlace(req: ReadLikeRequest, p: Pending, h: FileHandle): FuseReply | null {
    if (p.payload === undefined || h.file.readInto === undefined) return null;
    p.triedInPlace = true;
    const views = p.payload(req.size);
    const n = views === null ? null : h.file.readInto(req.offset, req.size, views);
    return n === null ? null : { unique: req.h.unique, error: 0, parts: [], length: Math.min(n, req.size), inPlace: true };
  }

  private dirHandle(fh: number): DirHandle {
    const h = Number.isSafeInteger(fh) ? this.handles.dir(fh) : undefined;
    if (h === undefined) fail('EBADF');
    return h;
  }

  private async snapshot(dir: Inode): Promise<DirSnapshotEntry[]> {
    if (dir.path === null) fail('ENOENT');
    const listed = await this.vfs.list(dir.path);
    const out: DirSnapshotEntry[] = [
      { name: '.', bytes: utf8.encode('.'), kind: 'dir', attr: null },
      { name: '..', bytes: utf8.encode('..'), kind: 'dir', attr: null },
    ];
    for (const e of listed) {
      // Buffer.from slices Node's shared pool; TextEncoder gives every name its own
      // ArrayBuffer (3x the time per name, and the GC's work, on a 10,000-entry listing).
      const bytes = Buffer.from(e.name, 'utf8');
      if (checkName(bytes) !== 0) continue; // the Vfs should not list it; never pass it on
      out.push({ name: e.name, bytes, kind: e.attr.kind, attr: e.attr });
    }
    return out;
  }

  // ---- the operations ------------------------------------------------------------------------

  /**
   * LOOKUP or GETATTR answered from Vfs.statNow, READDIR(PLUS) from the handle's snapshot
   * (synchronously), or undefined when it needs the Vfs's asynchronous stat, an open
   * file's attributes or a new listing.
   */
  private answerNow(req: Extract<FuseRequest, { op: Opcode.LOOKUP | Opcode.GETATTR }> | ReadLikeRequest, p: Pending): FuseReply | undefined {
    if (req.op === Opcode.READDIR || req.op === Opcode.READDIRPLUS) {
      const h = this.dirHandle(req.fh);
      return req.offset === 0 && h.consumed ? undefined : okReply(req.h.unique, [this.readdirPage(req, p, h)]);
    }
    if (req.op === Opcode.READ) {
      const h = this.readableHandle(req, p);
      if (req.size === 0 || req.offset > MAX_SAFE) return okReply(req.h.unique, []);
      const inPlace = this.readInPlace(req, p, h);
      if (inPlace !== null) return inPlace;
      const data = h.file.readNow?.(req.offset, req.size);
      return data != null ? okReply(req.h.unique, [data.length > req.size ? data.subarray(0, req.size) : data]) : undefined;
    }
    const vfs = this.vfs;
    if (vfs.statNow === undefined) return undefined;
    if (req.op === Opcode.LOOKUP) {
      const path = this.childPath(req.h.nodeid, req.name);
      const attr = vfs.statNow(path);
      return attr === undefined ? undefined : this.lookupReply(p, req, attr, path);
    }
    if (req.op !== Opcode.GETATTR) return undefined; // READ: answered above
    const ino = this.inode(req.h.nodeid);
    if (this.getattrHandle(req, ino) !== undefined) return undefined;
    const gone = this.detachedAttr(ino);
    if (gone !== null) return this.attrReply(req, ino, gone);
    const attr = vfs.statNow(this.pathOf(req.h.nodeid));
    return attr === undefined ? undefined : this.attrReply(req, ino, attr);
  }

  private lookupReply(p: Pending, req: Extract<FuseRequest, { op: Opcode.LOOKUP }>, attr: FileAttr | null, path?: string): FuseReply {
    if (attr !== null) return okReply(req.h.unique, [this.enter(p, req.h.nodeid, req.name, attr, path)]);
    if (this.opts.negativeTimeoutMs <= 0) fail('ENOENT');
    const neg: EntryOut = {
      nodeid: 0, generation: 0, entryValidMs: this.opts.negativeTimeoutMs, attrValidMs: 0,
      attr: this.wireAttr(0, { kind: 'file', mode: 0, uid: 0, gid: 0, size: 0, atime: 0n, mtime: 0n, ctime: 0n }),
    };
    return okReply(req.h.unique, [encodeEntryOut(neg)]);
  }

  /** The open file a GETATTR is answered from: the one it names, or (fstat of an unlinked file comes without a handle) one of its own. */
  private getattrHandle(req: Extract<FuseRequest, { op: Opcode.GETATTR }>, ino: Inode): FileHandle | undefined {
    const named = (req.flags & FUSE_GETATTR_FH) !== 0 && Number.isSafeInteger(req.fh) ? this.handles.file(req.fh) : undefined;
    return named?.inode === ino ? named : ino.path === null ? this.handles.anyFileOf(ino) : undefined;
  }

  /**
   * What a GETATTR of a directory removed or replaced while open answers (the kernel asks
   * by node id only, never with the directory's handle): its last attributes with no
   * links, as Linux reports fstat of such a directory. Null for anything else (a detached
   * inode nobody has open is gone: ENOENT).
   */
  private detachedAttr(ino: Inode): FileAttr | null {
    if (ino.path !== null || ino.attr === null || ino.kind !== 'dir' || !this.handles.hasDirOf(ino)) return null;
    return { ...ino.attr, nlink: 0 };
  }

  private attrReply(req: FuseRequest, ino: Inode, attr: FileAttr | null): FuseReply {
    if (attr === null) fail('ENOENT');
    ino.attr = attr;
    return okReply(req.h.unique, [encodeAttrOut(this.opts.attrTimeoutMs, this.wireAttr(ino.nodeid, attr))]);
  }

  private async lookupLater(req: Extract<FuseRequest, { op: Opcode.LOOKUP }>, p: Pending): Promise<FuseReply> {
    return this.lookupReply(p, req, await this.vfs.stat(this.childPath(req.h.nodeid, req.name)));
  }

  private async getattrLater(req: Extract<FuseRequest, { op: Opcode.GETATTR }>): Promise<FuseReply> {
    const ino = this.inode(req.h.nodeid);
    const h = this.getattrHandle(req, ino);
    if (h === undefined) {
      const gone = this.detachedAttr(ino);
      if (gone !== null) return this.attrReply(req, ino, gone);
    }
    return this.attrReply(req, ino, h !== undefined ? await h.file.attr() : await this.vfs.stat(this.pathOf(req.h.nodeid)));
  }

  private async run(req: FuseRequest, p: Pending): Promise<FuseReply> {
    const u = req.h.unique;
    const ok = (...parts: Uint8Array[]): FuseReply => okReply(u, parts);
    switch (req.op) {
      case Opcode.INIT:
        return this.init(req);
      case Opcode.LOOKUP:
        return this.lookupLater(req, p);
      case Opcode.GETATTR:
        return this.getattrLater(req);
      case Opcode.SETATTR:
        return ok(await this.setattr(req));
      case Opcode.READLINK: {
        const target = await this.vfs.readlink(this.pathOf(req.h.nodeid));
        return ok(utf8.encode(target));
      }
      case Opcode.SYMLINK: {
        const attr = await this.vfs.symlink(this.childPath(req.h.nodeid, req.name), req.target, this.caller(req));
        return ok(this.enter(p, req.h.nodeid, req.name, attr));
      }
      case Opcode.MKNOD: {
        const type = req.mode & S_IFMT;
        if (type !== 0 && type !== S_IFREG) fail('EPERM', 'only regular files can be made with mknod');
        const made = await this.vfs.create(this.childPath(req.h.nodeid, req.name), req.mode & PERM_BITS, this.caller(req), MKNOD_FLAGS);
        await made.file.release();
        return ok(this.enter(p, req.h.nodeid, req.name, made.attr));
      }
      case Opcode.MKDIR: {
        const attr = await this.vfs.mkdir(this.childPath(req.h.nodeid, req.name), req.mode & PERM_BITS, this.caller(req));
        return ok(this.enter(p, req.h.nodeid, req.name, attr));
      }
      case Opcode.UNLINK: {
        const path = this.childPath(req.h.nodeid, req.name);
        await this.vfs.unlink(path);
        this.inodes.unlink(path);
        return ok();
      }
      case Opcode.RMDIR: {
        const path = this.childPath(req.h.nodeid, req.name);
        await this.vfs.rmdir(path);
        this.inodes.unlink(path);
        return ok();
      }
      case Opcode.RENAME:
      case Opcode.RENAME2: {
        if ((req.flags & ~RENAME_NOREPLACE) !== 0) fail('EINVAL', 'only RENAME_NOREPLACE is supported');
        const noReplace = (req.flags & RENAME_NOREPLACE) !== 0;
        const from = this.childPath(req.h.nodeid, req.name);
        const to = this.childPath(req.newdir, req.newname);
        if (from === to) {
          if (noReplace) fail('EEXIST');
          if ((await this.vfs.stat(from)) === null) fail('ENOENT');
          return ok();
        }
        if (to.startsWith(`${from}/`)) fail('EINVAL', 'cannot move a directory into itself');
        await this.vfs.rename(from, to, noReplace);
        this.inodes.rename(from, to);
        return ok();
      }
      case Opcode.LINK:
        return fail('EPERM', 'hard links are not supported');
      case Opcode.OPEN: {
        const ino = this.inode(req.h.nodeid);
        const path = this.pathOf(req.h.nodeid);
        if (ino.kind === 'dir') fail('EISDIR');
        const flags = openFlags(req.flags);
        this.refuseChangeIfPassthrough(ino, flags.write);
        const file = await this.vfs.open(path, flags);
        const pt = this.passthrough;
        let backing: Backing | null = null;
        if (pt !== null) {
          try {
            // Asked again after the await: a passthrough open may have come meanwhile.
            this.refuseChangeIfPassthrough(ino, flags.write);
            if (!flags.write) backing = await pt.acquire(ino, () => this.handles.anyFileOf(ino) !== undefined, file.backingFile?.bind(file));
          } catch (err) {
            await file.release();
            throw err;
          }
        }
        const fh = this.addFile(ino, file, flags, backing);
        p.onUndo(() => this.dropFile(fh));
        return ok(encodeOpenOut(fh, backing !== null ? FOPEN_PASSTHROUGH : 0, backing?.id ?? 0));
      }
      case Opcode.CREATE: {
        const flags = createFlags(req.flags);
        const path = this.childPath(req.h.nodeid, req.name);
        // An existing file open for passthrough reads (asked again after the await, as OPEN does).
        this.refuseChangeIfPassthrough(this.inodes.atPath(path), true);
        const made = await this.vfs.create(path, req.mode & PERM_BITS, this.caller(req), flags);
        let ino: Inode;
        try {
          this.refuseChangeIfPassthrough(this.inodes.atPath(path), true);
          ino = this.enterInode(p, req.h.nodeid, req.name, made.attr);
        } catch (err) {
          await made.file.release();
          throw err;
        }
        const fh = this.addFile(ino, made.file, flags, null);
        p.onUndo(() => this.dropFile(fh));
        return ok(encodeEntryOut(this.entry(ino, made.attr)), encodeOpenOut(fh, 0));
      }
      case Opcode.READ: {
        const h = this.readableHandle(req, p);
        if (req.size === 0 || req.offset > MAX_SAFE) return ok();
        // (A copy off the event loop, where possible, was started by startCopyRead() already.)
        // Before any await: the reply buffers are written while nothing else can run.
        const inPlace = p.triedInPlace ? null : this.readInPlace(req, p, h);
        if (inPlace !== null) return inPlace;
        const data = await h.file.read(req.offset, req.size);
        return ok(data.length > req.size ? data.subarray(0, req.size) : data);
      }
      case Opcode.WRITE:
        return this.write(req);
      case Opcode.STATFS: {
        const s = await this.vfs.statfs();
        return ok(encodeStatfsOut({
          blocks: s.blocks, bfree: s.blocksFree, bavail: s.blocksFree, files: s.files, ffree: s.filesFree,
          bsize: s.blockSize, namelen: s.nameMax, frsize: s.blockSize,
        }));
      }
      case Opcode.RELEASE: {
        const h = Number.isSafeInteger(req.fh) ? this.handles.take(req.fh, 'file') : undefined;
        if (h === undefined) fail('EBADF');
        this.releaseBacking(h);
        // appendTail only ever changes for an O_APPEND handle (write()): no await otherwise.
        if (h.append) await h.appendTail;
        await h.file.release();
        return ok();
      }
      case Opcode.RELEASEDIR: {
        const h = Number.isSafeInteger(req.fh) ? this.handles.take(req.fh, 'dir') : undefined;
        if (h === undefined) fail('EBADF');
        return ok();
      }
      case Opcode.FSYNC: {
        const h = this.fileHandle(req.fh);
        await h.file.fsync((req.fsyncFlags & FUSE_FSYNC_FDATASYNC) !== 0);
        return ok();
      }
      case Opcode.FSYNCDIR:
        // Directory operations reach the store before they are answered.
        this.dirHandle(req.fh);
        return ok();
      case Opcode.FLUSH: {
        const h = this.fileHandle(req.fh);
        if (h.append) await h.appendTail;
        await h.file.flush();
        return ok();
      }
      case Opcode.SETXATTR: {
        if ((req.flags & ~(XATTR_CREATE | XATTR_REPLACE)) !== 0) fail('EINVAL', 'unknown setxattr flags');
        await this.vfs.setxattr(this.pathOf(req.h.nodeid), req.name, req.value, {
          create: (req.flags & XATTR_CREATE) !== 0, replace: (req.flags & XATTR_REPLACE) !== 0,
        });
        return ok();
      }
      case Opcode.GETXATTR: {
        const value = await this.vfs.getxattr(this.pathOf(req.h.nodeid), req.name);
        if (req.size === 0) return ok(encodeSizeOut(value.length));
        if (value.length > req.size) fail('ERANGE');
        return ok(value);
      }
      case Opcode.LISTXATTR: {
        const names = await this.vfs.listxattr(this.pathOf(req.h.nodeid));
        const parts = names.map((n) => utf8.encode(n));
        let total = 0;
        for (const b of parts) total += b.length + 1;
        if (req.size === 0) return ok(encodeSizeOut(total));
        if (total > req.size) fail('ERANGE');
        const out = new Uint8Array(total);
        let pos = 0;
        for (const b of parts) {
          out.set(b, pos);
          pos += b.length + 1;
        }
        return ok(out);
      }
      case Opcode.REMOVEXATTR:
        await this.vfs.removexattr(this.pathOf(req.h.nodeid), req.name);
        return ok();
      case Opcode.OPENDIR: {
        const ino = this.inode(req.h.nodeid);
        if (ino.kind !== 'dir') fail('ENOTDIR');
        const entries = await this.snapshot(ino);
        const fh = this.handles.add({ kind: 'dir', inode: ino, entries, consumed: false });
        p.onUndo(() => this.handles.take(fh, 'dir'));
        return ok(encodeOpenOut(fh, 0));
      }
      case Opcode.READDIR:
      case Opcode.READDIRPLUS:
        return ok(await this.readdir(req, p));
      case Opcode.GETLK:
      case Opcode.SETLK:
      case Opcode.SETLKW:
        return fail('ENOSYS');
      case Opcode.ACCESS:
        this.pathOf(req.h.nodeid);
        return ok();
      case Opcode.DESTROY:
        this.initialized = false;
        await this.vfs.sync();
        await this.endSession();
        return ok();
      case Opcode.FALLOCATE: {
        if (req.mode !== 0) fail('EOPNOTSUPP', 'only fallocate mode 0 is supported');
        const h = this.fileHandle(req.fh);
        if (!h.writable) fail('EBADF');
        if (req.length === 0) fail('EINVAL');
        if (req.offset > MAX_SAFE || req.length > MAX_SAFE - req.offset) fail('EFBIG');
        await h.file.allocate(req.offset, req.length);
        return ok();
      }
      case Opcode.LSEEK:
        return ok(encodeLseekOut(await this.lseek(req)));
      case Opcode.SYNCFS:
        await this.vfs.sync();
        return ok();
      case Opcode.FORGET:
      case Opcode.BATCH_FORGET:
      case Opcode.INTERRUPT:
        return ok(); // handled in dispatch()
      case 'other':
        return fail('ENOSYS');
    }
  }

  private async init(req: Extract<FuseRequest, { op: Opcode.INIT }>): Promise<FuseReply> {
    if (req.major !== FUSE_KERNEL_VERSION) fail('EPROTO', `FUSE major ${req.major} is not supported`);
    if (req.minor < FUSE_MIN_MINOR_VERSION) fail('EPROTO', `FUSE 7.${req.minor} is older than 7.${FUSE_MIN_MINOR_VERSION}`);
    if (this.closing !== null) fail('ENODEV', 'the file system was closed');
    if (this.initialized) {
      // A new driver on the same connection (guest reboot): start over.
      this.initialized = false;
      await this.endSession();
    }
    let flags = req.flags & WANTED_FLAGS;
    if ((req.flags & FUSE_INIT_EXT) !== 0) flags |= FUSE_INIT_EXT;
    this.protoMinor = Math.min(req.minor, FUSE_KERNEL_MINOR_VERSION);
    // Passthrough needs FUSE_INIT_EXT (its bit is in flags2) and excludes writeback caching (not asked for).
    const passthrough = this.passthroughOffer !== null && (flags & FUSE_INIT_EXT) !== 0 && (req.flags2 & FUSE2_PASSTHROUGH) !== 0;
    this.passthrough = passthrough ? new Passthrough(this.passthroughOffer!) : null;
    if (this.passthroughOffer !== null && !passthrough) this.log.warn('FUSE passthrough was asked for, but the kernel does not offer it (Linux 6.9+); reads take the ordinary path');
    this.initialized = true;
    this.log.debug('FUSE session initialized', { minor: this.protoMinor, kernelFlags: req.flags, flags });
    return okReply(req.h.unique, [encodeInitOut({
      major: FUSE_KERNEL_VERSION, minor: this.protoMinor, maxReadahead: req.maxReadahead, flags: flags >>> 0,
      maxBackground: this.opts.maxBackground, congestionThreshold: this.opts.congestionThreshold,
      maxWrite: this.opts.maxWrite, timeGran: 1, maxPages: this.opts.maxPages, mapAlignment: 0,
      flags2: passthrough ? FUSE2_PASSTHROUGH : 0,
      // Backing files are memfds (not on a stacked file system): depth 1 is enough.
      maxStackDepth: passthrough ? 1 : 0,
    })]);
  }

  private async setattr(req: Extract<FuseRequest, { op: Opcode.SETATTR }>): Promise<Uint8Array> {
    const ino = this.inode(req.h.nodeid);
    const a = req.attr;
    const v = a.valid;
    const changes: {
      mode?: number; uid?: number; gid?: number; size?: number;
      atime?: bigint | 'now'; mtime?: bigint | 'now'; ctime?: bigint;
    } = {};
    if (v & FATTR_MODE) changes.mode = a.mode & PERM_BITS;
    if (v & FATTR_UID) changes.uid = a.uid;
    if (v & FATTR_GID) changes.gid = a.gid;
    if (v & FATTR_SIZE) {
      if (a.size > MAX_SAFE) fail('EFBIG');
      if (ino.kind === 'dir') fail('EISDIR');
      this.refuseChangeIfPassthrough(ino, true);
      changes.size = a.size;
    }
    if (v & FATTR_ATIME) changes.atime = v & FATTR_ATIME_NOW ? 'now' : a.atimeNs;
    if (v & FATTR_MTIME) changes.mtime = v & FATTR_MTIME_NOW ? 'now' : a.mtimeNs;
    if (v & FATTR_CTIME) changes.ctime = a.ctimeNs;
    // With a handle (ftruncate), the change goes to that open file. Without one, by path —
    // unless the file was unlinked or replaced (fchmod, fchown, futimens of such a file come
    // without a handle): then through one of its open handles.
    let h: FileHandle | undefined;
    if (v & FATTR_FH) {
      h = Number.isSafeInteger(a.fh) ? this.handles.file(a.fh) : undefined;
      if (h === undefined || h.inode !== ino) fail('EBADF');
    } else if (ino.path === null) h = this.handles.anyFileOf(ino);
    if (h !== undefined) await h.appendTail;
    const file = h?.file;
    const path = file === undefined ? this.pathOf(req.h.nodeid) : '';
    const current = (): Promise<FileAttr | null> => (file !== undefined ? file.attr() : this.vfs.stat(path));
    if (v & FATTR_KILL_SUIDGID && changes.mode === undefined) {
      const cur = await current();
      if (cur === null) fail('ENOENT');
      let mode = cur.mode & PERM_BITS & ~S_ISUID;
      if (cur.mode & S_IXGRP) mode &= ~S_ISGID;
      if (mode !== (cur.mode & PERM_BITS)) changes.mode = mode;
    }
    let attr: FileAttr | null;
    if (Object.keys(changes).length === 0) attr = await current();
    else attr = file !== undefined ? await file.setattr(changes) : await this.vfs.setattr(path, changes);
    if (attr === null) fail('ENOENT');
    ino.attr = attr;
    return encodeAttrOut(this.opts.attrTimeoutMs, this.wireAttr(ino.nodeid, attr));
  }

  private async write(req: Extract<FuseRequest, { op: Opcode.WRITE }>): Promise<FuseReply> {
    const h = this.fileHandle(req.fh);
    if (!h.writable) fail('EBADF');
    const data = req.data;
    if (data.length > this.opts.maxWrite) fail('EINVAL', 'write larger than max_write');
    if (!h.append) {
      if (req.offset > MAX_SAFE - data.length) fail('EFBIG');
      const n = await h.file.write(req.offset, data);
      return okReply(req.h.unique, [encodeSizeOut(n)]);
    }
    // O_APPEND: at the end of file as the Vfs sees it, one write at a time per handle.
    const run = h.appendTail.then(async () => {
      const size = (await h.file.attr()).size;
      if (size > MAX_SAFE - data.length) fail('EFBIG');
      return h.file.write(size, data);
    });
    h.appendTail = run.catch(() => undefined);
    return okReply(req.h.unique, [encodeSizeOut(await run)]);
  }

  private async lseek(req: Extract<FuseRequest, { op: Opcode.LSEEK }>): Promise<number> {
    const h = this.fileHandle(req.fh);
    const off = req.offset;
    switch (req.whence) {
      case SEEK_SET:
      case SEEK_CUR: // the kernel keeps the file position and sends absolute offsets
        if (off < 0 || off > MAX_SAFE) fail('EINVAL');
        return off;
      case SEEK_END: {
        const end = (await h.file.attr()).size + off;
        if (end < 0 || end > MAX_SAFE) fail('EINVAL');
        return end;
      }
      case SEEK_DATA:
      case SEEK_HOLE: {
        const size = (await h.file.attr()).size;
        if (off < 0 || off >= size) fail('ENXIO');
        return req.whence === SEEK_DATA ? off : size;
      }
      default:
        return fail('EINVAL');
    }
  }

  private async readdir(req: ReadLikeRequest, p: Pending): Promise<Uint8Array> {
    const h = this.dirHandle(req.fh);
    if (req.offset === 0 && h.consumed) {
      h.entries = await this.snapshot(h.inode);
      h.consumed = false;
    }
    return this.readdirPage(req, p, h);
  }

  /** One READDIR(PLUS) page from the handle's snapshot. */
  private readdirPage(req: ReadLikeRequest, p: Pending, h: DirHandle): Uint8Array {
    const plus = req.op === Opcode.READDIRPLUS;
    const entries = h.entries;
    if (req.offset >= entries.length) return new Uint8Array(0);
    const w = new DirentWriter(Math.min(req.size, p.maxReply));
    const dir = h.inode;
    const dirPath = dir.path;
    if (dirPath === null) fail('ENOENT');
    /** Node ids given a lookup by this reply: forgotten again if it is not delivered. */
    const looked: number[] = [];
    for (let i = req.offset; i < entries.length; i++) {
      const e = entries[i]!;
      if (!w.fits(e.bytes, plus)) {
        if (w.length === 0) fail('EINVAL', 'readdir buffer too small for one entry');
        break;
      }
      const type = kindType(e.kind);
      if (e.attr === null) {
        // '.' and '..': never counted as lookups (the kernel skips them in READDIRPLUS).
        const nodeid = e.name === '.' ? dir.nodeid : this.parentIno(dirPath);
        if (!plus) w.add(nodeid, i + 1, type, e.bytes);
        else {
          w.addPlus({
            nodeid: 0, generation: 0, entryValidMs: 0, attrValidMs: 0,
            attr: this.wireAttr(nodeid, { kind: 'dir', mode: S_IFDIR, uid: 0, gid: 0, size: 0, atime: 0n, mtime: 0n, ctime: 0n }),
          }, i + 1, type, e.bytes);
        }
        continue;
      }
      const path = joinPath(dirPath, e.name);
      if (!plus) {
        w.add(this.inodes.atPath(path)?.nodeid ?? pseudoIno(path), i + 1, type, e.bytes);
        continue;
      }
      const ino = this.inodes.lookup(path, e.kind);
      looked.push(ino.nodeid);
      w.addPlus(this.entry(ino, e.attr), i + 1, type, e.bytes);
    }
    if (looked.length > 0) p.onUndo(() => {
      for (const nodeid of looked) this.inodes.forget(nodeid, 1);
    });
    h.consumed = true;
    return w.bytes();
  }

  private parentIno(dirPath: string): number {
    if (dirPath === '') return FUSE_ROOT_ID;
    const pp = parentPath(dirPath);
    return pp === '' ? FUSE_ROOT_ID : this.inodes.atPath(pp)?.nodeid ?? pseudoIno(pp);
  }

  private addFile(inode: Inode, file: OpenFile, flags: OpenFlags, backing: Backing | null): number {
    return this.handles.add({
      kind: 'file', inode, file, readable: flags.read, writable: flags.write, append: flags.append, appendTail: Promise.resolve(), backing,
    });
  }

  /**
   * ETXTBSY for what would change a file that passthrough handles read from their own copy
   * (an open for writing, a truncate): the kernel allows no other kind of open beside them,
   * and the copy would not see the change (src/fuse/passthrough.ts).
   */
  private refuseChangeIfPassthrough(inode: Inode | undefined, changes: boolean): void {
    if (changes && inode !== undefined && this.passthrough?.refusesChange(inode) === true) fail('ETXTBSY', 'the file is open for passthrough reads');
  }

  private releaseBacking(h: FileHandle): void {
    if (h.backing !== null) this.passthrough?.release(h.inode, h.backing);
  }

  /** Removes a file handle and releases its file in the background (undo of OPEN/CREATE). */
  private dropFile(fh: number): void {
    const h = this.handles.take(fh, 'file');
    if (h === undefined) return;
    this.releaseBacking(h);
    // Counted in flight: idle() (and so reset()) waits for it like for a request.
    this.began();
    h.file.release().then(
      () => this.ended(),
      (err: unknown) => {
        this.log.warn('releasing an abandoned file failed', { error: err });
        this.ended();
      },
    );
  }
}

