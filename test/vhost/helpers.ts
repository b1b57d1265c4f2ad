// Test helpers for the vhost-user layer: an "echo" VhostUserDevice (copies each
// request's readable bytes into its writable bytes), frontend-side guest memory on a
// memfd, and small waiting utilities.
import { readdirSync } from 'node:fs';
import { native, type Mapping } from '../../src/native/index.js';
import type { VhostUserDevice } from '../../src/vhost/device.js';
import type { DeviceQueue } from '../../src/virtio/queue.js';
import type { DescriptorChain } from '../../src/virtio/chain.js';
import { DriverQueue, type GuestBuffer } from '../../src/virtio/driver-queue.js';
import { VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC } from '../../src/virtio/features.js';
import { ProtocolFeature } from '../../src/vhost/protocol.js';
import type { FrontendSession } from '../../src/vhost/frontend-session.js';
import { TmpDir } from '../support/tmp.js';
import { sleep, waitFor } from '../support/wait.js';

export { sleep, waitFor };

interface Held {
  queue: DeviceQueue;
  chain: DescriptorChain;
}

export class EchoDevice implements VhostUserDevice {
  readonly kind = 'echo';
  readonly maxQueues: number;
  readonly features = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | VIRTIO_RING_F_INDIRECT_DESC;
  readonly protocolFeatures = ProtocolFeature.CONFIG;
  readonly config = Uint8Array.from({ length: 24 }, (_, i) => 0xa0 + i);
  /** While true, popped requests wait in `held` until release(). */
  hold = false;
  readonly held: Held[] = [];
  readonly events: string[] = [];
  acked = -1n;
  resets = 0;
  served = 0;
  badChains = 0;
  private readonly waiters = new Map<number, Array<() => void>>();

  constructor(maxQueues = 2) {
    this.maxQueues = maxQueues;
  }

  getConfig(offset: number, size: number): Uint8Array {
    const out = new Uint8Array(size);
    out.set(this.config.subarray(offset, offset + size));
    return out;
  }
  setConfig(offset: number, data: Uint8Array): boolean {
    if (offset + data.byteLength > this.config.byteLength) return false;
    this.config.set(data, offset);
    return true;
  }
  setFeatures(features: bigint): void {
    this.acked = features;
    this.events.push('setFeatures');
  }
  startQueue(queue: DeviceQueue): void {
    this.events.push(`start ${queue.index}`);
  }
  onKick(queue: DeviceQueue): void {
    do {
      queue.disableNotification();
      for (let r = queue.pop(); r.kind !== 'empty'; r = queue.pop()) {
        if (r.kind === 'bad') {
          this.badChains++;
          if (r.error !== 'head-out-of-range') queue.push(r.head, 0);
          continue;
        }
        if (this.hold) this.held.push({ queue, chain: r.chain });
        else this.complete(queue, r.chain);
      }
    } while (queue.enableNotification());
    queue.flush();
  }
  /** Completes every held request. */
  release(): void {
    const held = this.held.splice(0);
    const queues = new Set<DeviceQueue>();
    for (const h of held) {
      this.complete(h.queue, h.chain);
      queues.add(h.queue);
    }
    for (const q of queues) {
      q.flush();
      this.wake(q.index);
    }
  }
  stopQueue(queue: DeviceQueue): Promise<void> {
    this.events.push(`stop ${queue.index}`);
    if (!this.held.some((h) => h.queue === queue)) return Promise.resolve();
    return new Promise((resolve) => {
      const list = this.waiters.get(queue.index) ?? [];
      list.push(resolve);
      this.waiters.set(queue.index, list);
    });
  }
  reset(): void {
    this.resets++;
    this.acked = -1n;
    this.events.push('reset');
  }
  private complete(queue: DeviceQueue, chain: DescriptorChain): void {
    const n = Math.min(chain.readableLength, chain.writableLength);
    const tmp = new Uint8Array(n);
    chain.read(0, tmp);
    chain.write(0, tmp);
    queue.push(chain.head, n);
    this.served++;
  }
  private wake(index: number): void {
    if (this.held.some((h) => h.queue.index === index)) return;
    for (const w of this.waiters.get(index) ?? []) w();
    this.waiters.delete(index);
  }
}

/** Guest memory as a frontend owns it: a memfd mapped into this process. */
export class FrontendMemory {
  readonly fd: number;
  readonly mapping: Mapping;
  readonly size: number;
  readonly guestAddr: number;
  readonly userAddr: number;
  readonly bytes: Uint8Array;

  constructor(size: number, guestAddr: number) {
    this.size = size;
    this.guestAddr = guestAddr;
    this.fd = native.memfdCreate('vhost-test', size);
    this.mapping = native.mmap(this.fd, 0, size, true);
    this.userAddr = this.mapping.address;
    this.bytes = new Uint8Array(this.mapping.windows[0]!);
  }

  get region(): { fd: number; guestAddr: number; size: number; userAddr: number; mmapOffset: number } {
    return { fd: this.fd, guestAddr: this.guestAddr, size: this.size, userAddr: this.userAddr, mmapOffset: 0 };
  }

  /** A DriverQueue whose rings live at `offset` of this memory. */
  driverQueue(offset: number, size: number, opts: { eventIdx?: boolean; indirect?: boolean; kickFd?: number } = {}): DriverQueue<number> {
    const layout = DriverQueue.layoutFor(size, opts.indirect ?? false);
    return new DriverQueue<number>({
      size,
      eventIdx: opts.eventIdx ?? false,
      indirect: opts.indirect ?? false,
      kickFd: opts.kickFd ?? -1,
      area: {
        buf: this.mapping.windows[0]!,
        offset,
        length: layout.total,
        guestAddr: this.guestAddr + offset,
        userAddr: this.userAddr + offset,
      },
    });
  }

  buffer(offset: number, len: number): GuestBuffer {
    return { addr: this.guestAddr + offset, len };
  }

  close(): void {
    this.mapping.unmap();
    native.close(this.fd);
  }
}

/** One ring set up through a FrontendSession, with its eventfds. */
export class TestRing {
  readonly kickFd = native.eventfd(0);
  readonly callFd = native.eventfd(0);
  readonly errFd = native.eventfd(0);
  readonly dq: DriverQueue<number>;
  constructor(
    readonly mem: FrontendMemory,
    readonly index: number,
    offset: number,
    size: number,
    opts: { eventIdx?: boolean; indirect?: boolean } = {},
  ) {
    this.dq = mem.driverQueue(offset, size, { ...opts, kickFd: this.kickFd });
  }
  async setup(fe: FrontendSession, base = 0): Promise<void> {
    const a = this.dq.ringAddresses;
    await fe.setVring(this.index, {
      size: this.dq.size,
      base,
      desc: a.desc,
      avail: a.avail,
      used: a.used,
      kickFd: this.kickFd,
      callFd: this.callFd,
      errFd: this.errFd,
    });
  }
  /** Sends `data` and waits for it to come back in a buffer of `data.length` bytes. */
  async echo(data: Uint8Array, inOffset: number, outOffset: number, token = 1): Promise<Uint8Array> {
    const head = this.submit(data, inOffset, outOffset, token);
    if (head < 0) throw new Error('ring full');
    const done = await this.waitCompletions(1);
    if (done[0]!.len !== data.length) throw new Error(`echo returned ${done[0]!.len} bytes`);
    return this.mem.bytes.slice(outOffset, outOffset + data.length);
  }
  submit(data: Uint8Array, inOffset: number, outOffset: number, token = 1, indirect?: boolean): number {
    this.mem.bytes.set(data, inOffset);
    this.mem.bytes.fill(0, outOffset, outOffset + data.length);
    const half = data.length >> 1;
    const readable = indirect ? [this.mem.buffer(inOffset, half), this.mem.buffer(inOffset + half, data.length - half)] : [this.mem.buffer(inOffset, data.length)];
    const head = this.dq.add(readable, [this.mem.buffer(outOffset, data.length)], token, indirect);
    this.dq.kick();
    return head;
  }
  async waitCompletions(n: number, timeoutMs = 5000): Promise<Array<{ head: number; token: number | undefined; len: number }>> {
    const out: Array<{ head: number; token: number | undefined; len: number }> = [];
    await waitFor(() => {
      out.push(...this.dq.poll());
      return out.length >= n;
    }, timeoutMs);
    return out;
  }
  close(): void {
    native.close(this.kickFd);
    native.close(this.callFd);
    native.close(this.errFd);
  }
}


export function fdCount(): number {
  return readdirSync('/proc/self/fd').length;
}

/** A temporary directory named vhost-test-…. */
export class TempDir extends TmpDir {
  constructor() {
    super('vhost-test-');
  }
}

/** Resolves to 'pending' if p has not settled after ms. */
export async function settledWithin<T>(p: Promise<T>, ms: number): Promise<'pending' | 'settled'> {
  let settled = false;
  p.then(
    () => (settled = true),
    () => (settled = true),
  );
  await sleep(ms);
  return settled ? 'settled' : 'pending';
}
