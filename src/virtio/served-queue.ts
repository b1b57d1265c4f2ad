// A started queue as a device serves it (shared by the blk and fs devices):
// - the pop loop with notification suppression and the re-check virtio requires;
// - completions pushed as requests finish and published once per batch: one fenced
//   used.idx store and at most one interrupt per drain (what was answered while the
//   drain ran) or per microtask checkpoint (what finished asynchronously);
// - requests in flight, so that stopping (GET_VRING_BASE) can wait for them.
import type { DeviceQueue, PopResult } from './queue.js';
import { workInFlight } from '../native/index.js';

/**
 * Settled once: `then` on it queues a plain V8 microtask. (Node's queueMicrotask wraps
 * every callback in an AsyncResource and a bound function: measurable per request.)
 */
const resolved = Promise.resolve();

export class ServedQueue {
  private inflight = 0;
  /** Pushed and not yet published. */
  private dirty = false;
  /** A microtask will publish (completions made outside a drain). */
  private flushScheduled = false;
  private draining = false;
  private stopping = false;
  private drained: (() => void)[] = [];
  private readonly flushLater = (): void => {
    this.flushScheduled = false;
    this.flush();
  };

  constructor(readonly queue: DeviceQueue) {}

  /**
   * Hands every available chain (and every bad one) to `handle` until the ring is empty,
   * then publishes what was completed meanwhile (one interrupt for the whole batch).
   */
  drain(handle: (r: Exclude<PopResult, { kind: 'empty' }>) => void): void {
    if (this.stopping) return;
    const q = this.queue;
    this.draining = true;
    try {
      q.disableNotification();
      for (;;) {
        for (let r = q.pop(); r.kind !== 'empty'; r = q.pop()) handle(r);
        if (!q.enableNotification()) break;
        q.disableNotification();
      }
    } finally {
      this.draining = false;
      this.flush();
    }
  }

  /** A request goes asynchronous: stop() waits for its end(). */
  begin(): void {
    this.inflight++;
    workInFlight[0]!++;
  }

  /** The asynchronous request's completion has been pushed. */
  end(): void {
    workInFlight[0]!--;
    if (--this.inflight === 0 && this.drained.length > 0) {
      const waiters = this.drained;
      this.drained = [];
      for (const w of waiters) w();
    }
  }

  /**
   * Pushes a used element; the ring is published at the end of the drain running now, or
   * else in a microtask (so completions that settle together share one interrupt).
   */
  complete(head: number, written: number): void {
    this.queue.push(head, written);
    this.dirty = true;
    if (this.draining || this.flushScheduled) return;
    this.flushScheduled = true;
    void resolved.then(this.flushLater);
  }

  /** Serves nothing more; resolves once every request in flight completed and was published. */
  async stop(): Promise<void> {
    this.stopping = true;
    if (this.inflight > 0) await new Promise<void>((resolve) => this.drained.push(resolve));
    this.flush();
  }

  private flush(): void {
    if (!this.dirty) return;
    this.dirty = false;
    this.queue.flush();
  }
}
