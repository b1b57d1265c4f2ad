// Typed face of the C++ addon (native/). The addon only performs system calls and
// memory fences; every decision (what to map, which fd belongs to which queue, whether
// an address is valid) is made in TypeScript. Errors thrown by the addon are
// `NativeError`s carrying the positive errno in `.errno` and its name in `.code`.
import { createRequire } from 'node:module';

export interface RecvResult {
  /** Bytes received; 0 means the peer closed the connection. */
  readonly bytes: number;
  /** File descriptors received with SCM_RIGHTS (already O_CLOEXEC). */
  readonly fds: number[];
}

/**
 * One mmap() of a memory-region fd. The mapping is exposed as consecutive external
 * ArrayBuffer windows of at most WINDOW_SIZE bytes each (V8 cannot hold one buffer
 * over 4 GiB). `unmap()` detaches every window (later JS access sees length 0 rather
 * than faulting) and munmaps once; calling it again, or the GC finalizer running
 * after it, does nothing.
 */
export interface Mapping {
  /** Host virtual address of byte 0 (fits in a double: user addresses are < 2^47). */
  readonly address: number;
  readonly length: number;
  /** windows[i] covers bytes [i*WINDOW_SIZE, min(length, (i+1)*WINDOW_SIZE)). */
  readonly windows: ArrayBuffer[];
  readonly mapped: boolean;
  /**
   * Also removes the range from the addon's iovec registry. Do not unmap memory that
   * submitted io_uring requests still target (close or drain the ring first).
   */
  unmap(): void;
}

export const POLL_READABLE = 1;
export const POLL_WRITABLE = 2;

/**
 * A uv_poll watcher on an fd; the callback runs on the event loop thread (as a Node
 * I/O callback: nextTick and promise jobs run right after it, and an exception it
 * throws goes to 'uncaughtException'). At most one Poller per fd. While open, the
 * addon's close(fd) refuses the fd with EBUSY: close the Poller first. A started
 * Poller keeps the process alive, a stopped or closed one does not.
 */
export interface Poller {
  /** status is 0 or a negative errno; events is a POLL_* mask. Restarting replaces the mask. */
  start(events: number): void;
  stop(): void;
  /** Idempotent; start() afterwards throws EBADF. */
  close(): void;
}

export type IoOp = 'readv' | 'writev' | 'fdatasync' | 'fallocate';

/**
 * An io_uring instance whose completion eventfd is watched by the event loop.
 * Submissions are queued by the prepare calls and sent with one io_uring_submit()
 * per `submit()`; completions arrive in batches as (tag, result) pairs, result being
 * bytes transferred or a negative errno. The tags/results arrays passed to onComplete
 * are reused for the next batch: read them before returning. Completed requests have
 * already released their slots when onComplete runs, so it may prepare new ones.
 * position -1 means the fd's current file position. The iovec array is copied at
 * prepare time, so the caller may reuse its Float64Array immediately.
 * A prepare call throws EAGAIN when no slot is free (see sqSpace) and EBADF after
 * close(). While requests are prepared or in flight, the ring keeps the process alive.
 * iovecs are packed as [address, length, address, length, ...] of host virtual
 * addresses; every (address, length) pair must lie inside a live Mapping or the
 * prepare call throws EFAULT (a second line of defence behind the TS bounds checks).
 */
export interface Uring {
  /**
   * `async` (default false) sets IOSQE_ASYNC: the request is not tried inline at submit
   * but handed to one of the kernel's io-wq worker threads, so a large page-cache copy
   * runs on another CPU instead of blocking the event loop inside submit().
   */
  prepReadv(fd: number, iov: Float64Array, iovCount: number, position: number, tag: number, async?: boolean): void;
  prepWritev(fd: number, iov: Float64Array, iovCount: number, position: number, tag: number, async?: boolean): void;
  prepFdatasync(fd: number, tag: number): void;
  prepFallocate(fd: number, mode: number, offset: number, length: number, tag: number): void;
  /**
   * Submits everything prepared; returns the number submitted. With `reap` true,
   * completions that are ready when the kernel returns (page-cache hits are served
   * inline) are delivered to onComplete synchronously, before submit returns, and cost
   * no event-loop wake-up; later ones arrive through the event loop as usual. A
   * submit(true) made from inside onComplete only submits: the delivery loop already
   * running picks up its completions. An exception thrown by onComplete propagates out
   * of submit (undelivered completions then arrive through the event loop).
   */
  submit(reap?: boolean): number;
  /**
   * Number of requests that can still be prepared: the free submission-queue entries,
   * capped by the free request slots (4 × entries may be prepared or in flight at
   * once). 0 right after preparing `entries` requests means submit(); 0 with nothing
   * prepared means wait for completions.
   */
  readonly sqSpace: number;
  /**
   * Idempotent. Blocks until submitted requests have completed (they may target guest
   * memory about to be unmapped); their completions, and unsubmitted requests, are
   * dropped without calling onComplete.
   */
  close(): void;
}

/** The event loop's busy-polling: its settings and what it did so far. */
export interface LoopPollStats {
  readonly maxNs: number;
  /** The window the next turn will poll for (0: it blocks at once). */
  readonly windowNs: number;
  /** Turns that polled, ended by a ready fd (hits) or by the window running out (misses). */
  readonly spins: number;
  readonly hits: number;
  readonly misses: number;
}

export interface NativeAddon {
  readonly WINDOW_SIZE: number;

  // Unix sockets (all fds non-blocking and close-on-exec).
  unixListen(path: string, backlog: number): number;
  /** Returns the accepted fd, or -1 when no connection is pending (EAGAIN). */
  unixAccept(listenFd: number): number;
  /** Connects (blocking until connected), then makes the fd non-blocking. */
  unixConnect(path: string): number;
  socketPair(): [number, number];
  /**
   * recvmsg() into buf[offset, offset+length) with room for up to maxFds fds.
   * Returns null on EAGAIN. Throws EMSGSIZE (after closing what did arrive) if the
   * control data was truncated (MSG_CTRUNC).
   */
  recvMsg(fd: number, buf: Uint8Array, offset: number, length: number, maxFds: number): RecvResult | null;
  /**
   * sendmsg() of buf[offset, offset+length) with fds as SCM_RIGHTS; returns bytes sent
   * (possibly fewer than length), -1 on EAGAIN. The fds go with the first byte sent.
   */
  sendMsg(fd: number, buf: Uint8Array, offset: number, length: number, fds: number[]): number;
  close(fd: number): void;
  dup(fd: number): number;

  /**
   * With `readEventfd` (fd being an eventfd), each readable wake-up first reads (resets) the
   * counter, before the callback: what a kick or call handler would otherwise do with
   * eventfdRead, one addon call fewer per wake-up. A failed read (not EAGAIN: a counter
   * already read is no failure) is reported as the callback's status, a negative errno.
   */
  createPoller(fd: number, callback: (status: number, events: number) => void, readEventfd?: boolean): Poller;

  // eventfd (EFD_NONBLOCK | EFD_CLOEXEC)
  eventfd(initval: number): number;
  /** Returns the counter (reset to 0), or 0 when it was already 0 (EAGAIN). */
  eventfdRead(fd: number): number;
  eventfdWrite(fd: number, value: number): void;

  // memory
  /**
   * memfd_create + ftruncate. With `seal`, the size is sealed (F_SEAL_GROW | F_SEAL_SHRINK |
   * F_SEAL_SEAL, as libvhost-user seals its inflight region): nobody it is handed to can
   * truncate it under a mapping.
   */
  memfdCreate(name: string, size: number, seal?: boolean): number;
  /** F_GET_SEALS of an fd: the seal bits (F_SEAL_SHRINK = 0x2, ...), -1 if the file cannot carry seals. */
  memfdSeals(fd: number): number;
  /**
   * MAP_SHARED mapping; offset must be page-aligned (else EINVAL). With writable false
   * the pages are PROT_READ only: a JS store into such a window kills the process.
   */
  mmap(fd: number, offset: number, length: number, writable: boolean): Mapping;
  /**
   * Test support: mmap() with `guard` bytes of PROT_NONE reserved on each side, so that a
   * native access just outside the mapping faults. length and guard are whole pages (else
   * EINVAL); unmap() releases the guards too.
   */
  mmapGuarded(fd: number, offset: number, length: number, writable: boolean, guard: number): Mapping;
  /** Full memory barrier (mfence / __atomic_thread_fence(SEQ_CST)). */
  fence(): void;
  /**
   * The fenced "publish index and decide whether to notify" step of a split ring,
   * used by the device (used ring) and by the driver (avail ring):
   *   store u16 newIdx at idxBuf[idxOffset] (little endian, release);
   *   full fence;
   *   if eventIdx: read u16 ev at evBuf[evOffset]; notify = (u16)(newIdx - ev - 1) < (u16)(newIdx - oldIdx)
   *   else:        read u16 flags at evBuf[evOffset]; notify = (flags & 1) == 0
   *   if notify and notifyFd >= 0: write 1 to the eventfd notifyFd.
   * Returns notify. Offsets must be even and inside the buffer (RangeError otherwise,
   * also once the buffer was detached by unmap()). newIdx/oldIdx are taken modulo 2^16.
   */
  publishIdx(
    idxBuf: ArrayBuffer, idxOffset: number, newIdx: number, oldIdx: number,
    evBuf: ArrayBuffer, evOffset: number, eventIdx: boolean, notifyFd: number,
  ): boolean;

  // synchronous file I/O into mapped memory (same iovec packing and EFAULT check as
  // Uring); position -1 uses the fd's file position (preadv2/pwritev2).
  preadv(fd: number, iov: Float64Array, iovCount: number, position: number): number;
  pwritev(fd: number, iov: Float64Array, iovCount: number, position: number): number;
  fdatasync(fd: number): void;
  fallocate(fd: number, mode: number, offset: number, length: number): void;
  /**
   * Whether stat(path) (following symlinks) is the file with this st_dev and st_ino, as
   * fs.statSync reports them; false when it is another or stat fails. No Stats object.
   */
  isFile(path: string, dev: number, ino: number): boolean;
  /** syncfs(2) of the file system holding `fd`, on the thread pool; `done` gets 0 or a positive errno. Keep `fd` open until then. */
  syncfs(fd: number, done: (err: number) => void): void;

  // /dev/fuse (vhost-s3 mount)
  /** Opens /dev/fuse (O_NONBLOCK, O_CLOEXEC). */
  fuseOpen(): number;
  /** mount(2); `data` is the FUSE option string ("fd=N,rootmode=40000,user_id=0,group_id=0,..."). */
  mount(source: string, target: string, type: string, flags: number, data: string): void;
  /** umount2(2), e.g. with MNT_DETACH. */
  umount(target: string, flags: number): void;
  /** read(2) of one request into buf; -1 when none is pending (EAGAIN); throws ENODEV once unmounted. */
  readFd(fd: number, buf: Uint8Array): number;
  /** writev(2) of one reply. */
  writevFd(fd: number, bufs: readonly Uint8Array[]): number;
  /**
   * FUSE_DEV_IOC_BACKING_OPEN: registers `fd` as a passthrough backing file of the /dev/fuse
   * connection `devFd` and returns its backing id; the kernel keeps its own reference (close
   * `fd` when done). EPERM without FUSE_PASSTHROUGH negotiated or without CAP_SYS_ADMIN.
   */
  fuseBackingOpen(devFd: number, fd: number): number;
  /** FUSE_DEV_IOC_BACKING_CLOSE: drops the connection's reference to backing `id`. */
  fuseBackingClose(devFd: number, id: number): void;

  /**
   * Busy-polls this thread's event loop before it blocks (native/loop_poll.cc): the
   * window adapts between 0 and `maxNs` (0: never poll). The first call installs it. It
   * does not poll while `workInFlight[0]` is not 0 (see `workInFlight` below).
   */
  setLoopPoll(maxNs: number, workInFlight?: Int32Array): void;
  loopPollStats(): LoopPollStats;

  /** Returns null when io_uring is unavailable here (old kernel, seccomp). */
  createUring(entries: number, onComplete: (tags: Float64Array, results: Int32Array, count: number) => void): Uring | null;
}

export class NativeError extends Error {
  errno = 0;
  code = '';
}

const require = createRequire(import.meta.url);

function load(): NativeAddon {
  // dist/src/native/index.js → ../../../build/Release
  const addon = require('../../../build/Release/vhost_s3_native.node') as NativeAddon & {
    setErrorClass(ctor: typeof NativeError): void;
  };
  // Addon errors are created as NativeError instances, so `instanceof` works.
  addon.setErrorClass(NativeError);
  return addon;
}

export const native: NativeAddon = load();

/**
 * Work this thread has in flight: requests the devices took from a guest (or a FUSE
 * mount) and have not answered yet, and work started on their own (an abandoned file's
 * release, S3 reads on the read workers, read-ahead included). ServedQueue, FuseServer
 * and S3ReadWorkers count into it. While it is not 0 the process waits for its own work,
 * not for the guest, so the event loop does not busy-poll
 * (`native.setLoopPoll(maxNs, workInFlight)`).
 */
export const workInFlight = new Int32Array(1);

// Linux fallocate(2) modes used by the blk device.
export const FALLOC_FL_KEEP_SIZE = 0x01;
export const FALLOC_FL_PUNCH_HOLE = 0x02;
export const FALLOC_FL_ZERO_RANGE = 0x10;
