// Malformed descriptor chains a hostile driver can put in front of any device, written
// through the driver ring's raw access. Shared by the device hostile tests, the blk fuzz
// target and the gateway test; every one of them must come back with used length 0.
import { expect } from 'chai';
import type { DriverQueue } from '../../src/virtio/driver-queue.js';
import type { RawCompletion } from '../../src/frontend/virtio-client.js';
import { waitFor } from './wait.js';
import { VIRTQ_DESC_F_INDIRECT as IND, VIRTQ_DESC_F_NEXT as NEXT, VIRTQ_DESC_F_WRITE as WRITE } from '../../src/virtio/layout.js';

export const MALFORMED_SHAPES = [
  'data outside guest memory', 'buffer running off the end of guest memory', 'u64 address overflow', 'a next loop',
  'next beyond the table', 'readable after writable', 'indirect inside indirect', 'indirect table pointing at itself',
  'indirect table of odd length', 'indirect with next',
] as const;
export type MalformedShape = (typeof MALFORMED_SHAPES)[number];

export interface ChainBuffers {
  /** A device-readable request (a blk header, a FUSE message). */
  readonly request: { readonly addr: number; readonly len: number };
  /** A device-writable reply buffer (status byte, FUSE reply). */
  readonly reply: { readonly addr: number; readonly len: number };
  /** One past the last guest-physical byte of the region the buffers are in. */
  readonly end: number;
}

/** What sendRawChain needs of a client's VirtioClient (BlkClient.virtio, FuseClient.virtio). */
export interface RawRings<T> {
  rawRing(queue: number): DriverQueue<T>;
  readonly rawCompletions: RawCompletion[];
}

export interface SendRawOptions {
  /** Descriptors to take for `write` (default 3). */
  descs?: number;
  /** How long the device may take to give the chain back (default 5 s), polled every intervalMs (default 2). */
  timeoutMs?: number;
  intervalMs?: number;
  /** What the wait is for, in its timeout error. */
  what?: string;
}

/**
 * Publishes a hand-written chain on `queue`: `write` fills the descriptors taken for it
 * (d[0] is the head), then the ring is kicked and the chain waited for; its head is
 * checked, the descriptors released, and the used length returned.
 */
export async function sendRawChain<T>(
  virtio: RawRings<T>, queue: number, write: (ring: DriverQueue<T>, d: number[]) => void, o: SendRawOptions = {},
): Promise<number> {
  const ring = virtio.rawRing(queue);
  const d = ring.takeRaw(o.descs ?? 3);
  write(ring, d);
  ring.publishRawHead(d[0]!);
  ring.kick();
  await waitFor(() => virtio.rawCompletions.length > 0, o.timeoutMs ?? 5000, o.what ?? 'condition', o.intervalMs ?? 2);
  const done = virtio.rawCompletions.shift()!;
  expect(done.head).to.equal(d[0]);
  ring.releaseRaw(d);
  return done.len;
}

/** Descriptors a shape needs from takeRaw(). */
export const MALFORMED_DESCRIPTORS = 3;

/** Writes the malformed chain `shape` headed by d[0] (d from ring.takeRaw(MALFORMED_DESCRIPTORS)). */
export function writeMalformedChain(ring: DriverQueue<unknown>, d: readonly number[], shape: MalformedShape, b: ChainBuffers): void {
  const [d0, d1, d2] = d as [number, number, number];
  const { request: rq, reply: rp } = b;
  const t0 = ring.indirectTableAddr(d0);
  switch (shape) {
    case 'data outside guest memory':
      ring.writeRawDescriptor(d0, rq.addr, rq.len, NEXT, d1);
      ring.writeRawDescriptor(d1, 0x7000_0000_0000, 512, WRITE | NEXT, d2);
      ring.writeRawDescriptor(d2, rp.addr, rp.len, WRITE, 0);
      return;
    case 'buffer running off the end of guest memory':
      ring.writeRawDescriptor(d0, rq.addr, rq.len, NEXT, d1);
      ring.writeRawDescriptor(d1, b.end - 256, 512, WRITE | NEXT, d2);
      ring.writeRawDescriptor(d2, rp.addr, rp.len, WRITE, 0);
      return;
    case 'u64 address overflow':
      ring.writeRawDescriptor(d0, 0xffff_ffff_ffff_ff00n, 0x1000, NEXT, d1);
      ring.writeRawDescriptor(d1, rp.addr, rp.len, WRITE, 0);
      return;
    case 'a next loop':
      ring.writeRawDescriptor(d0, rq.addr, rq.len, NEXT, d1);
      ring.writeRawDescriptor(d1, rp.addr, rp.len, WRITE | NEXT, d0);
      return;
    case 'next beyond the table':
      ring.writeRawDescriptor(d0, rq.addr, rq.len, NEXT, 60000);
      return;
    case 'readable after writable':
      ring.writeRawDescriptor(d0, rp.addr, rp.len, WRITE | NEXT, d1);
      ring.writeRawDescriptor(d1, rq.addr, rq.len, 0, 0);
      return;
    case 'indirect inside indirect':
      ring.writeRawIndirect(d0, 0, rq.addr, rq.len, NEXT, 1);
      ring.writeRawIndirect(d0, 1, ring.indirectTableAddr(d1), 32, IND, 0);
      ring.writeRawDescriptor(d0, t0, 32, IND, 0);
      return;
    case 'indirect table pointing at itself':
      ring.writeRawIndirect(d0, 0, rq.addr, rq.len, NEXT, 1);
      ring.writeRawIndirect(d0, 1, t0, 32, IND, 0);
      ring.writeRawDescriptor(d0, t0, 32, IND, 0);
      return;
    case 'indirect table of odd length':
      ring.writeRawDescriptor(d0, t0, 17, IND, 0);
      return;
    case 'indirect with next':
      ring.writeRawIndirect(d0, 0, rq.addr, rq.len, NEXT, 1);
      ring.writeRawIndirect(d0, 1, rp.addr, rp.len, WRITE, 0);
      ring.writeRawDescriptor(d0, t0, 32, IND | NEXT, d1);
      ring.writeRawDescriptor(d1, rp.addr, rp.len, WRITE, 0);
      return;
  }
}
