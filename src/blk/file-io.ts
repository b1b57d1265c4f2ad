// Vectored file I/O straight into guest memory, with two engines behind one interface:
// io_uring (batched submissions, one completion eventfd watched by the event loop) and a
// synchronous fallback for hosts where io_uring is unavailable (old kernels, seccomp).
// The sync engine blocks the event loop for the duration of each syscall, which is cheap
// for page-cache hits and the reason io_uring is the default.
import { native, type Uring } from '../native/index.js';
import type { Segment } from '../virtio/memory.js';
import type { Completion } from './image.js';
import { errnoOf } from '../util/errors.js';

/** Linux IOV_MAX: larger requests are split by the caller's limits, never here. */
export const IOV_MAX = 1024;

export type IoEngineName = 'uring' | 'sync';

export interface FileIo {
  readonly engine: IoEngineName;
  readv(fd: number, segs: readonly Segment[], position: number, done: Completion): void;
  writev(fd: number, segs: readonly Segment[], position: number, done: Completion): void;
  fdatasync(fd: number, done: Completion): void;
  fallocate(fd: number, mode: number, offset: number, length: number, done: Completion): void;
  /** Sends what was prepared since the last call. */
  unplug(): void;
  /**
   * unplug() once the code running now is done (a microtask): the requests prepared in
   * the same event-loop turn — a guest's batch of READs popped in one drain — go to the
   * kernel in one submission instead of one each.
   */
  unplugSoon(): void;
  close(): void;
}

/**
 * Settled once: `then` on it queues a plain V8 microtask (Node's queueMicrotask wraps
 * every callback in an AsyncResource).
 */
const resolved = Promise.resolve();

function packIov(segs: readonly Segment[], iov: Float64Array): number {
  if (segs.length > IOV_MAX) return -1;
  for (let i = 0; i < segs.length; i++) {
    const s = segs[i]!;
    iov[2 * i] = s.hostAddr;
    iov[2 * i + 1] = s.length;
  }
  return segs.length;
}

const EINVAL = 22;
const EAGAIN = 11;

/**
 * Requests of at least this many bytes skip io_uring's inline attempt (IOSQE_ASYNC) and
 * run in a kernel io-wq worker. A page-cache hit is otherwise copied inside submit() on
 * the event-loop thread, which caps large sequential I/O at one CPU's memcpy speed;
 * handed off, several copies run on other CPUs while the loop keeps serving the ring.
 * The hand-off costs a cross-CPU wake-up (tens of microseconds here), which only pays
 * for itself on large copies: measured on 2 vCPUs at QD8, 512 KiB and 1 MiB reads gain
 * 30-100%, 64-256 KiB reads lose 5-25%, so smaller requests stay inline.
 */
export const ASYNC_MIN_BYTES = 512 * 1024;

function totalLength(segs: readonly Segment[]): number {
  let n = 0;
  for (let i = 0; i < segs.length; i++) n += segs[i]!.length;
  return n;
}

class SyncFileIo implements FileIo {
  readonly engine = 'sync';
  private readonly iov = new Float64Array(2 * IOV_MAX);

  readv(fd: number, segs: readonly Segment[], position: number, done: Completion): void {
    this.vectored(native.preadv, fd, segs, position, done);
  }
  writev(fd: number, segs: readonly Segment[], position: number, done: Completion): void {
    this.vectored(native.pwritev, fd, segs, position, done);
  }
  fdatasync(fd: number, done: Completion): void {
    done(this.attempt(() => native.fdatasync(fd)));
  }
  fallocate(fd: number, mode: number, offset: number, length: number, done: Completion): void {
    done(this.attempt(() => native.fallocate(fd, mode, offset, length)));
  }
  unplug(): void {}
  unplugSoon(): void {}
  close(): void {}

  private vectored(
    call: (fd: number, iov: Float64Array, n: number, pos: number) => number,
    fd: number, segs: readonly Segment[], position: number, done: Completion,
  ): void {
    const n = packIov(segs, this.iov);
    if (n < 0) return done(-EINVAL);
    let result = 0;
    try {
      result = call(fd, this.iov, n, position);
    } catch (err) {
      result = -errnoOf(err);
    }
    done(result);
  }

  private attempt(fn: () => void): number {
    try {
      fn();
      return 0;
    } catch (err) {
      return -errnoOf(err);
    }
  }
}

class UringFileIo implements FileIo {
  readonly engine = 'uring';
  private readonly iov = new Float64Array(2 * IOV_MAX);
  /** Completion per tag; tags are slot indexes recycled through `free`. */
  private readonly pending: (Completion | undefined)[] = [];
  private readonly free: number[] = [];
  private prepared = 0;
  /** Inside unplug() or complete(): submissions wait for the running loop. */
  private busy = false;
  /** Submissions waiting for a free ring slot, in arrival order. */
  private readonly backlog: (() => void)[] = [];
  private readonly ring: Uring;
  /** An unplugSoon() microtask is queued. */
  private unplugQueued = false;
  private closed = false;
  private readonly unplugLater = (): void => {
    this.unplugQueued = false;
    if (!this.closed) this.unplug();
  };

  /** IOSQE_ASYNC requests in the kernel now (counted only when maxAsync is finite). */
  private asyncInFlight = 0;
  /** IOSQE_ASYNC requests waiting for one of those to complete, in arrival order. */
  private readonly asyncWaiting: { op: 'readv' | 'writev'; fd: number; segs: readonly Segment[]; position: number; done: Completion }[] = [];

  constructor(private readonly entries: number, private readonly maxAsync = Infinity) {
    const ring = native.createUring(entries, (tags, results, count) => this.complete(tags, results, count));
    if (!ring) throw new Error('io_uring unavailable');
    this.ring = ring;
  }

  // iovecs are packed when the request is prepared (possibly later, from the backlog),
  // into one scratch array that the addon copies into the request's slot.
  readv(fd: number, segs: readonly Segment[], position: number, done: Completion): void {
    if (segs.length > IOV_MAX) return done(-EINVAL);
    const async = totalLength(segs) >= ASYNC_MIN_BYTES;
    if (async && this.maxAsync !== Infinity) {
      const admitted = this.admitAsync('readv', fd, segs, position, done);
      if (admitted === null) return;
      done = admitted;
    }
    // Straight into the ring when nothing waits and the SQ has room (no closure: a large
    // READ of the file store comes here for every request); else by way of prep().
    if (this.backlog.length === 0 && this.prepared < this.entries && this.free.length > 0) {
      const tag = this.free.pop()!;
      this.pending[tag] = done;
      try {
        this.ring.prepReadv(fd, this.iov, packIov(segs, this.iov), position, tag, async);
        this.prepared++;
        return;
      } catch {
        // Every ring slot in flight (EAGAIN) or a refusal: prep() sorts it out, from scratch.
        this.pending[tag] = undefined;
        this.free.push(tag);
      }
    }
    this.prep(done, (tag) => this.ring.prepReadv(fd, this.iov, packIov(segs, this.iov), position, tag, async));
  }
  writev(fd: number, segs: readonly Segment[], position: number, done: Completion): void {
    if (segs.length > IOV_MAX) return done(-EINVAL);
    const async = totalLength(segs) >= ASYNC_MIN_BYTES;
    if (async && this.maxAsync !== Infinity) {
      const admitted = this.admitAsync('writev', fd, segs, position, done);
      if (admitted === null) return;
      done = admitted;
    }
    this.prep(done, (tag) => this.ring.prepWritev(fd, this.iov, packIov(segs, this.iov), position, tag, async));
  }
  fdatasync(fd: number, done: Completion): void {
    this.prep(done, (tag) => this.ring.prepFdatasync(fd, tag));
  }
  fallocate(fd: number, mode: number, offset: number, length: number, done: Completion): void {
    this.prep(done, (tag) => this.ring.prepFallocate(fd, mode, offset, length, tag));
  }
  /**
   * Submits, and takes the completions that are ready at once (page-cache hits) in the
   * same call, so the device can answer them in the same event-loop turn as the kick.
   * Requests prepared by completion callbacks meanwhile are submitted by the loop here.
   */
  unplug(): void {
    if (this.prepared === 0 || this.busy) return;
    this.busy = true;
    try {
      while (this.prepared > 0) {
        this.prepared = 0;
        this.ring.submit(true);
      }
    } finally {
      this.busy = false;
    }
  }
  unplugSoon(): void {
    if (this.unplugQueued) return;
    this.unplugQueued = true;
    void resolved.then(this.unplugLater);
  }
  close(): void {
    this.closed = true;
    this.ring.close();
  }

  /**
   * An IOSQE_ASYNC request under maxAsync: null when maxAsync of them are in the kernel
   * (it waits, in order, and is made again once one completes), else the `done` to give
   * the ring, which lets the next waiting request in once it ran.
   */
  private admitAsync(op: 'readv' | 'writev', fd: number, segs: readonly Segment[], position: number, done: Completion): Completion | null {
    if (this.asyncInFlight >= this.maxAsync) {
      this.asyncWaiting.push({ op, fd, segs, position, done });
      return null;
    }
    this.asyncInFlight++;
    return (result) => {
      this.asyncInFlight--;
      try {
        done(result);
      } finally {
        // Prepared now, submitted by the unplug() that ends this completion batch.
        const next = this.asyncWaiting.shift();
        if (next !== undefined) this[next.op](next.fd, next.segs, next.position, next.done);
      }
    };
  }

  private prep(done: Completion, prepare: (tag: number) => void): void {
    if (this.backlog.length > 0) {
      this.backlog.push(() => this.prep(done, prepare));
      return;
    }
    // Every unplug() submits the whole SQ, so `prepared` is its fill level (no call into
    // the addon per request); slots all in flight still come back as EAGAIN below.
    if (this.prepared >= this.entries) this.unplug();
    const tag = this.free.length > 0 ? this.free.pop()! : this.pending.length;
    this.pending[tag] = done;
    try {
      prepare(tag);
    } catch (err) {
      this.pending[tag] = undefined;
      this.free.push(tag);
      // Every request slot of the ring is in flight: wait for completions, never fail the request.
      if (errnoOf(err) === EAGAIN) this.backlog.push(() => this.prep(done, prepare));
      else done(-errnoOf(err));
      return;
    }
    this.prepared++;
  }

  private complete(tags: Float64Array, results: Int32Array, count: number): void {
    // While completions are delivered, nothing is submitted (a full SQ sends requests to
    // the backlog instead): the loop in unplug(), or the call at the end, submits them.
    const nested = this.busy;
    this.busy = true;
    try {
      for (let i = 0; i < count; i++) {
        const tag = tags[i]!;
        const done = this.pending[tag];
        if (!done) continue;
        this.pending[tag] = undefined;
        this.free.push(tag);
        done(results[i]!);
      }
      if (this.backlog.length > 0) {
        const waiting = this.backlog.splice(0);
        for (const retry of waiting) retry();
      }
    } finally {
      this.busy = nested;
    }
    this.unplug();
  }
}

export interface FileIoOptions {
  /**
   * io_uring: IOSQE_ASYNC requests (ASYNC_MIN_BYTES and larger) in the kernel at once;
   * more wait here, in arrival order, for one of them to complete (default: no limit).
   * Each runs in its own io-wq worker: page-cache copies beyond one per CPU only share
   * the CPUs, so that all of a batch finish together, late, instead of one after another.
   */
  readonly maxAsync?: number;
}

/** io_uring when asked for and available, otherwise synchronous syscalls. */
export function createFileIo(preferred: IoEngineName, entries = 256, opts: FileIoOptions = {}): FileIo {
  const maxAsync = opts.maxAsync ?? Infinity;
  if (!(maxAsync >= 1)) throw new RangeError('maxAsync must be at least 1');
  if (preferred === 'uring') {
    try {
      return new UringFileIo(entries, maxAsync);
    } catch {
      // fall through: the sync engine is always available
    }
  }
  return new SyncFileIo();
}
