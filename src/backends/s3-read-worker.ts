// Large ranged GETs on worker threads.
//
// Why: receiving a GET body is CPU per byte — socket reads into fresh 64 KiB buffers, HTTP
// parsing, the copy into the reader's buffer, the garbage they leave — and on the event
// loop it competes with everything else the gateway does (FUSE/virtio requests, their
// replies). A cold sequential read of a mounted file was bounded by that one thread (and
// on a loaded machine by the small share of the cores one thread gets). A worker thread
// receives the body straight into the caller's buffer, which must be in shared memory (the
// page cache allocates its blocks so for such a store); the event loop only posts the
// request and takes the answer. A cold `dd` through a mount: the daemon's CPU per MiB fell
// by about a third and the rate rose 1.3-2× (docs/performance-storage.md, "fs, s3").
// Reads into private memory (a blk image's chunk cache) stay on the event loop: copying
// out of a worker's buffer cost more CPU in all than reading there.
//
// Each worker runs its own S3Store with the same options (so the same retries, resumption
// of broken bodies, ETag pinning and errno mapping); errors come back as StoreErrors, and
// the worker's requests and attempts are reported to the main thread's observer (metrics).
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import type { S3Observer } from '../metrics/observer.js';
import { StoreError, type ReadIntoResult, type StoreErrorDetails } from './object-store.js';
import type { ErrnoName } from '../util/errors.js';
import { workInFlight } from '../native/index.js';

/** The S3Store options a worker can be given (structured-clonable: no logger, no observer). */
export interface WorkerStoreOptions {
  readonly [k: string]: unknown;
}

interface ReadRequest {
  readonly id: number;
  readonly key: string;
  readonly offset: number;
  readonly length: number;
  readonly buffer: SharedArrayBuffer;
  readonly byteOffset: number;
}

/** Workers that died before they were ready, after which none is started again. */
const MAX_START_FAILURES = 3;

type WorkerMessage =
  | { readonly type: 'ready' }
  | { readonly type: 'done'; readonly id: number; readonly result: ReadIntoResult }
  | { readonly type: 'failed'; readonly id: number; readonly code: ErrnoName; readonly message: string; readonly details: StoreErrorDetails }
  | { readonly type: 'attempt'; readonly operation: string; readonly status: number; readonly sent: number; readonly received: number }
  | { readonly type: 'finished'; readonly operation: string; readonly attempts: number };

interface Pending {
  readonly resolve: (r: ReadIntoResult) => void;
  readonly reject: (e: Error) => void;
}

/** A pool of worker threads that run `getInto` for the main thread. */
export class S3ReadWorkers {
  private readonly workers: (Worker | null)[];
  /** Workers whose store is up (loading the SDK in a new thread takes a while). */
  private readonly ready = new Set<Worker>();
  private readonly pending = new Map<number, { readonly worker: number } & Pending>();
  private nextId = 0;
  /** No worker could be made: reads stay on the caller's thread. */
  private unavailable = false;
  private startFailures = 0;
  /** Reads in flight per worker. */
  private readonly inFlight: number[] = [];
  /** Reads the workers have served. */
  served = 0;
  private nextWorker = 0;
  private closed = false;

  constructor(
    private readonly storeOptions: WorkerStoreOptions,
    count: number,
    private readonly observer?: S3Observer,
  ) {
    this.workers = Array.from({ length: Math.max(1, count) }, () => null);
  }

  /**
   * Reads `target.length` bytes at `offset` of `key` into `target` (in shared memory) on a
   * worker; null (and the worker is started) while no worker is ready: the caller reads on
   * its own thread meanwhile, so that the first reads do not wait for a thread to load the
   * SDK. Null too for a target in private memory.
   */
  tryGetInto(key: string, offset: number, target: Uint8Array): Promise<ReadIntoResult> | null {
    if (this.closed || !(target.buffer instanceof SharedArrayBuffer)) return null;
    const w = this.nextWorker;
    const worker = this.worker(w);
    if (!worker || !this.ready.has(worker)) return null;
    this.nextWorker = (w + 1) % this.workers.length;
    return this.getInto(worker, w, key, offset, target);
  }

  private getInto(worker: Worker, w: number, key: string, offset: number, target: Uint8Array): Promise<ReadIntoResult> {
    const id = this.nextId++;
    return new Promise<ReadIntoResult>((resolve, reject) => {
      this.pending.set(id, { worker: w, resolve, reject });
      this.busy(w, 1);
      const msg: ReadRequest = { id, key, offset, length: target.length, buffer: target.buffer as SharedArrayBuffer, byteOffset: target.byteOffset };
      worker.postMessage(msg);
    });
  }

  /** Starts the workers (if not yet) and resolves once all of them are ready. */
  async whenReady(): Promise<void> {
    await Promise.all(this.workers.map((_, i) => {
      const w = this.worker(i);
      if (!w || this.ready.has(w)) return undefined;
      // Someone waits for it: the worker keeps the process alive until it is ready.
      this.busy(i, 1);
      return new Promise<void>((resolve, reject) => {
        const settle = (): void => {
          w.off('message', onMessage);
          w.off('exit', onExit);
          this.busy(i, -1);
        };
        const onMessage = (m: WorkerMessage): void => {
          if (m.type !== 'ready') return;
          settle();
          resolve();
        };
        const onExit = (code: number): void => {
          settle();
          reject(new StoreError('EIO', `S3 read worker exited (${code}) before it was ready`, { op: 'get' }));
        };
        w.on('message', onMessage);
        w.once('exit', onExit);
      });
    }));
  }

  async close(): Promise<void> {
    this.closed = true;
    const ws = this.workers.splice(0);
    this.ready.clear();
    await Promise.all(ws.map((w) => w?.terminate()));
    this.failAll(() => new StoreError('EIO', 'store closed during a read', { op: 'get' }));
  }

  /** The worker `i` (started if need be); null when no worker can be made in this process. */
  private worker(i: number): Worker | null {
    const existing = this.workers[i];
    if (existing || this.unavailable) return existing ?? null;
    const w = this.spawn();
    if (!w) {
      this.unavailable = true;
      return null;
    }
    // An idle worker does not keep the process alive (busy() refs it while it reads).
    w.unref();
    w.on('message', (m: WorkerMessage) => {
      if (m.type === 'ready') this.ready.add(w);
      else this.onMessage(m);
    });
    const lost = (why: string): void => {
      // A worker that dies before it is ready would die again: after a few, none is made.
      if (!this.ready.has(w) && this.workers[i] === w && ++this.startFailures >= MAX_START_FAILURES) this.unavailable = true;
      this.ready.delete(w);
      if (this.workers[i] === w) this.workers[i] = null;
      this.failAll(() => new StoreError('EIO', `S3 read worker ${why}`, { op: 'get' }), i);
    };
    w.on('error', (err) => lost(`failed: ${err instanceof Error ? err.message : String(err)}`));
    w.on('exit', (code) => lost(`exited (${code})`));
    this.workers[i] = w;
    return w;
  }

  /**
   * A worker with the process's flags (so --cpu-prof profiles it too). Node inherits them
   * leaving out those a thread cannot have, but not --input-type, which refuses to load a
   * module file: with it, the flags are given explicitly, and if Node refuses one of them
   * (a per-process flag such as --max-old-space-size), none.
   */
  private spawn(): Worker | null {
    const workerData = { s3ReadWorker: true, options: this.storeOptions };
    const url = new URL(import.meta.url);
    const flags = process.execArgv.filter((a) => !a.startsWith('--input-type'));
    const tries: (string[] | undefined)[] = flags.length === process.execArgv.length ? [undefined, []] : [flags, []];
    for (const execArgv of tries) {
      try {
        return new Worker(url, { workerData, ...(execArgv ? { execArgv } : {}) });
      } catch {
        // ERR_WORKER_INVALID_EXEC_ARGV, or threads unavailable: the next try, else none.
      }
    }
    return null;
  }

  private onMessage(m: Exclude<WorkerMessage, { type: 'ready' }>): void {
    switch (m.type) {
      case 'attempt':
        this.observer?.attempt(m.operation, m.status, m.sent, m.received);
        return;
      case 'finished':
        this.observer?.finished(m.operation, m.attempts);
        return;
    }
    const p = this.pending.get(m.id);
    if (!p) return;
    this.pending.delete(m.id);
    this.busy(p.worker, -1);
    this.served++;
    if (m.type === 'done') p.resolve(m.result);
    else p.reject(new StoreError(m.code, m.message, m.details));
  }

  private failAll(err: () => Error, worker?: number): void {
    for (const [id, p] of this.pending) {
      if (worker !== undefined && p.worker !== worker) continue;
      this.pending.delete(id);
      this.busy(p.worker, -1);
      p.reject(err());
    }
  }

  /**
   * Counts a worker's reads in flight: while it has some it keeps the process alive (an
   * answer from an unref'ed worker would not, and a command whose only work left is that
   * read would exit with it unanswered).
   */
  private busy(i: number, delta: number): void {
    // The event loop does not busy-poll while a read is in flight: the worker needs the CPU.
    workInFlight[0]! += delta;
    const n = (this.inFlight[i] ?? 0) + delta;
    this.inFlight[i] = n;
    const w = this.workers[i];
    if (!w) return;
    if (n > 0 && delta > 0 && n === 1) w.ref();
    else if (n === 0) w.unref();
  }
}

// ---- the worker side

async function serve(): Promise<void> {
  const port = parentPort!;
  const { S3Store } = await import('./s3-store.js');
  const options = (workerData as { options: WorkerStoreOptions }).options;
  const post = (m: WorkerMessage): void => port.postMessage(m);
  const store = new S3Store({
    ...(options as unknown as ConstructorParameters<typeof S3Store>[0]),
    readWorkers: 0,
    observer: {
      attempt: (operation, status, sent, received) => post({ type: 'attempt', operation, status, sent, received }),
      finished: (operation, attempts) => post({ type: 'finished', operation, attempts }),
    },
  });
  post({ type: 'ready' });
  port.on('message', (r: ReadRequest) => {
    store.getInto(r.key, r.offset, new Uint8Array(r.buffer, r.byteOffset, r.length)).then(
      (result) => post({ type: 'done', id: r.id, result: { ...result, metadata: { ...result.metadata } } }),
      (err: unknown) => {
        const e = err instanceof StoreError ? err : new StoreError('EIO', err instanceof Error ? err.message : String(err), { op: 'get', key: r.key });
        post({
          type: 'failed', id: r.id, code: e.code, message: e.message,
          details: { op: e.op, key: e.key, storeCode: e.storeCode, httpStatus: e.httpStatus, missingContainer: e.missingContainer },
        });
      },
    );
  });
}

if (!isMainThread && (workerData as { s3ReadWorker?: boolean } | null)?.s3ReadWorker) void serve();
