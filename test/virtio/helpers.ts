// Shared fixtures for the virtio tests: fake mappings whose windows are plain
// ArrayBuffers, guest memory over them, and a DriverQueue wired to a DeviceQueue over
// the same memory.
import type { Mapping } from '../../src/native/index.js';
import { GuestMemory, type Segment } from '../../src/virtio/memory.js';
import { DeviceQueue } from '../../src/virtio/queue.js';
import { DriverQueue } from '../../src/virtio/driver-queue.js';
import type { RingOps } from '../../src/virtio/ring-ops.js';

export class FakeMapping implements Mapping {
  readonly address: number;
  readonly length: number;
  windows: ArrayBuffer[];
  mapped = true;
  unmapCalls = 0;

  constructor(length: number, windowSize: number, address: number) {
    this.address = address;
    this.length = length;
    this.windows = [];
    for (let o = 0; o < length; o += windowSize) this.windows.push(new ArrayBuffer(Math.min(windowSize, length - o)));
  }

  unmap(): void {
    this.unmapCalls++;
    if (!this.mapped) return;
    this.mapped = false;
    // Detach like the addon does: later access sees length 0.
    for (const w of this.windows) structuredClone(w, { transfer: [w] });
  }
}

export interface RegionDef {
  guestAddr: number;
  size: number;
  userAddr: number;
  windowSize: number;
}

export interface Fixture {
  memory: GuestMemory;
  mappings: FakeMapping[];
  regions: RegionDef[];
}

export function makeMemory(regions: RegionDef[], maxRegions = 8): Fixture {
  const memory = new GuestMemory(maxRegions);
  const mappings: FakeMapping[] = [];
  let host = 0x7f1200000000;
  for (const r of regions) {
    const m = new FakeMapping(r.size, r.windowSize, host);
    host += r.size + 0x100000;
    mappings.push(m);
    memory.addRegion({ guestAddr: r.guestAddr, size: r.size, userAddr: r.userAddr, mmapOffset: 0, mapping: m });
  }
  return { memory, mappings, regions };
}

/** Writes bytes to guest-physical memory (test side, through the real translator). */
export function writeGuest(memory: GuestMemory, gpa: number, data: Uint8Array): void {
  const segs: Segment[] = [];
  if (!memory.translate(gpa, data.length, segs)) throw new Error(`unmapped ${gpa}+${data.length}`);
  let at = 0;
  for (const s of segs) {
    new Uint8Array(s.buf, s.offset, s.length).set(data.subarray(at, at + s.length));
    at += s.length;
  }
}

export function readGuest(memory: GuestMemory, gpa: number, len: number): Uint8Array {
  const segs: Segment[] = [];
  if (!memory.translate(gpa, len, segs)) throw new Error(`unmapped ${gpa}+${len}`);
  return concat(segs);
}

export function concat(segs: readonly Segment[]): Uint8Array {
  let n = 0;
  for (const s of segs) n += s.length;
  const out = new Uint8Array(n);
  let at = 0;
  for (const s of segs) {
    out.set(new Uint8Array(s.buf, s.offset, s.length), at);
    at += s.length;
  }
  return out;
}

export function pattern(len: number, seed: number): Uint8Array {
  const b = new Uint8Array(len);
  let x = seed * 2654435761 + 1;
  for (let i = 0; i < len; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    b[i] = x >>> 24;
  }
  return b;
}

// Standard layout for the ring tests: one region of 4 MiB at guest 1 MiB, user
// 0x7f0000000000, in windows of 256 KiB. The ring area is window 0; data buffers live
// from guest 1 MiB + 512 KiB on.
export const GUEST_BASE = 0x100000;
export const USER_BASE = 0x7f0000000000;
export const REGION_SIZE = 4 << 20;
export const WINDOW = 256 << 10;
export const DATA_BASE = GUEST_BASE + 2 * WINDOW;

export interface RingPair {
  fx: Fixture;
  memory: GuestMemory;
  driver: DriverQueue<number>;
  device: DeviceQueue;
}

export interface RingPairOptions {
  size?: number;
  eventIdx?: boolean;
  indirect?: boolean; // driver uses indirect tables and the device accepts them
  deviceIndirect?: boolean; // override what the device accepts
  maxIndirect?: number;
  ops?: RingOps;
  kickFd?: number;
  callFd?: number;
}

export function makeRingPair(o: RingPairOptions = {}): RingPair {
  const size = o.size ?? 16;
  const fx = makeMemory([{ guestAddr: GUEST_BASE, size: REGION_SIZE, userAddr: USER_BASE, windowSize: WINDOW }]);
  const windowBuf = fx.mappings[0]!.windows[0]!;
  const driver = new DriverQueue<number>({
    size,
    area: { buf: windowBuf, offset: 0, length: windowBuf.byteLength, guestAddr: GUEST_BASE, userAddr: USER_BASE },
    eventIdx: o.eventIdx ?? false,
    indirect: o.indirect ?? false,
    maxIndirect: o.maxIndirect ?? Math.min(size, 32),
    kickFd: o.kickFd ?? -1,
    ...(o.ops ? { ops: o.ops } : {}),
  });
  const device = o.ops ? new DeviceQueue(0, o.ops) : new DeviceQueue(0);
  device.size = size;
  device.eventIdx = o.eventIdx ?? false;
  device.indirect = o.deviceIndirect ?? o.indirect ?? false;
  device.callFd = o.callFd ?? -1;
  device.lastAvailIdx = 0;
  if (!device.setAddresses(fx.memory, driver.ringAddresses)) throw new Error('setAddresses failed');
  return { fx, memory: fx.memory, driver, device };
}
