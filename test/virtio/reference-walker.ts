// A slow, obvious model of what DeviceQueue.pop() must return for a ring in guest
// memory: the chain walk read byte by byte through the real translator. Shared by the
// property tests (fake mappings) and the chain fuzz target (real guarded memory).
import type { GuestMemory, Segment } from '../../src/virtio/memory.js';
import type { RingAddresses } from '../../src/virtio/queue.js';
import { VIRTQ_DESC_F_INDIRECT as IND, VIRTQ_DESC_F_NEXT as NEXT, VIRTQ_DESC_F_WRITE as WRITE } from '../../src/virtio/layout.js';
import { readGuest } from './helpers.js';

export interface Desc {
  addr: bigint;
  len: number;
  flags: number;
  next: number;
}

export type RefResult = { error: string } | { r: Array<[number, number]>; w: Array<[number, number]> };

/** Slow, obvious walk of a chain through the real translator (bytes read via BigInt). */
export function refWalk(memory: GuestMemory, descTable: number, size: number, head: number, indirect: boolean, maxIndirect: number): RefResult {
  const mapped = (a: bigint, len: number): boolean => a < 2n ** 53n && a + BigInt(len) < 2n ** 53n && memory.translate(Number(a), len, []);
  const read = (table: bigint, i: number): Desc => {
    const dv = new DataView(readGuest(memory, Number(table) + 16 * i, 16).buffer);
    return { addr: dv.getBigUint64(0, true), len: dv.getUint32(8, true), flags: dv.getUint16(12, true), next: dv.getUint16(14, true) };
  };
  let table = BigInt(descTable);
  let max = size;
  let i = head;
  let count = 0;
  let inIndirect = false;
  let sawWritable = false;
  let total = 0;
  const r: Array<[number, number]> = [];
  const w: Array<[number, number]> = [];
  for (;;) {
    count++;
    if (count > max) return { error: 'loop-or-too-long' };
    const d = read(table, i);
    if (d.flags & IND) {
      if (!indirect) return { error: 'indirect-not-negotiated' };
      if (inIndirect) return { error: 'nested-indirect' };
      if (d.flags & NEXT) return { error: 'indirect-with-next' };
      if (d.len === 0 || d.len % 16 !== 0 || d.len / 16 > Math.max(maxIndirect, size)) return { error: 'bad-indirect-size' };
      if (!mapped(d.addr, d.len)) return { error: 'addr-out-of-range' };
      table = d.addr;
      max = d.len / 16;
      i = 0;
      count = 0;
      inIndirect = true;
      continue;
    }
    const isW = (d.flags & WRITE) !== 0;
    if (isW) sawWritable = true;
    else if (sawWritable) return { error: 'readable-after-writable' };
    if (d.len > 0) {
      if (!mapped(d.addr, d.len)) return { error: 'addr-out-of-range' };
      (isW ? w : r).push([Number(d.addr), d.len]);
    }
    total += d.len;
    if (total > 0xffffffff) return { error: 'loop-or-too-long' };
    if (!(d.flags & NEXT)) break;
    if (d.next >= max) return { error: 'next-out-of-range' };
    i = d.next;
  }
  return { r, w };
}

export function segsFor(memory: GuestMemory, ranges: Array<[number, number]>): Segment[] {
  const out: Segment[] = [];
  for (const [a, l] of ranges) if (!memory.translate(a, l, out)) throw new Error('reference range unmapped');
  return out;
}

export function sameSegments(a: readonly Segment[], b: readonly Segment[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) {
    const x = a[i]!;
    const y = b[i]!;
    if (x.buf !== y.buf || x.offset !== y.offset || x.length !== y.length || x.hostAddr !== y.hostAddr) return false;
  }
  return true;
}

/**
 * What successive pops must give for the ring at `guest` (device at lastAvailIdx 0):
 * one result per available head, 'bad-head' (and nothing after) for a head >= size;
 * nothing when avail.idx ran more than `size` ahead. `n` is avail.idx.
 */
export function expectedPops(
  memory: GuestMemory, guest: RingAddresses, size: number, indirect: boolean, maxIndirect: number,
): { n: number; expected: Array<RefResult | 'bad-head'> } {
  const n = new DataView(readGuest(memory, guest.avail + 2, 2).buffer).getUint16(0, true);
  const expected: Array<RefResult | 'bad-head'> = [];
  if (n <= size) {
    for (let k = 0; k < n; k++) {
      const head = new DataView(readGuest(memory, guest.avail + 4 + 2 * (k % size), 2).buffer).getUint16(0, true);
      if (head >= size) {
        expected.push('bad-head');
        break;
      }
      expected.push(refWalk(memory, guest.desc, size, head, indirect, maxIndirect));
    }
  }
  return { n, expected };
}
