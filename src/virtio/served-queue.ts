// A started queue as a device serves it (shared by the blk and fs devices):
// - the pop loop with notification suppression and the re-check virtio requires;
// - completions pushed as requests finish and published once per batch: one fenced
//   used.idx store and at most one interrupt per event-loop turn;
// - requests in flight, so that stopping (GET_VRING_BASE) can wait for them.
import type { DeviceQueue, PopResult } from './queue.js';

export class ServedQueue {
  private inflight = 0;
  private flushScheduled = false;
  private stopping = false;
  private drained: (() => void)[] = [];

  constructor(readonly queue: DeviceQueue) {}

  /** Hands every available chain (and every bad one) to `handle` until the ring is empty. */
  drain(handle: (r: Exclude<PopResult, { kind: 'empty' }>) => void): void {
    if (this.stopping) return;
    const q = this.queue;
    q.disableNotification();
    for (;;) {
      for (let r = q.pop(); r.kind !== 'empty'; r = q.pop()) handle(r);
      if (!q.enableNotification()) break;
      q.disableNotification();
    }
  }

  /** A request goes asynchronous: stop() waits for its end(). */
  begin(): void {
    this.inflight++;
  }

  /** The asynchronous request's completion has been pushed. */
  end(): void {
    if (--this.inflight === 0 && this.drained.length > 0) {
      const waiters = this.drained;
      this.drained = [];
      for (const w of waiters) w();
    }
  }

  /** Pushes a used element; the ring is published after the current callback. */
  complete(head: number, written: number): void {
    this.queue.push(head, written);
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    queueMicrotask(() => this.flush());
  }

  /** Serves nothing more; resolves once every request in flight completed and was published. */
  async stop(): Promise<void> {
    this.stopping = true;
    if (this.inflight > 0) await new Promise<void>((resolve) => this.drained.push(resolve));
    this.flush();
  }

  private flush(): void {
    if (!this.flushScheduled) return;
    this.flushScheduled = false;
    this.queue.flush();
  }
}
