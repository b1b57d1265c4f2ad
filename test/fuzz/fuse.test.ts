// Fuzz target: FUSE messages over virtio-fs. The real VirtioFsDevice and FuseServer serve
// the file system of `vhost-s3 fs` (BucketVfs) over an in-memory object store, on a
// hiprio queue and a request queue in guarded guest memory. Inputs are sequences of
// messages: every opcode (and unknown ones), arguments built well-formed and then
// truncated, extended, given a lying header length or extension length, names that are
// empty, too long, not UTF-8, with '/', NUL, '.', '..', or without their NUL; node ids
// and handles the server handed out earlier or made up; the message split over random
// descriptors and the reply room cut anywhere. Invariants, per message and per input:
// - nothing throws, every chain comes back within a bounded time;
// - a reply is absent (hiprio, FORGET & co., no room for a header) or well-formed: an
//   out header whose length is the used length, within the room, echoing `unique`, with
//   0 or a negative errno; READ/READDIR replies fit the size asked for;
// - guest memory changes only in the reply buffers and the used ring; canaries intact;
// - the store never gets a key from a bad name (empty, '.', '..' segments, NUL);
// - after every input a well-formed session (INIT if needed, CREATE, WRITE, READ,
//   RELEASE, UNLINK) works on the same queue.
import { expect } from 'chai';
import fc from 'fast-check';
import { FuseServer } from '../../src/fuse/server.js';
import { VirtioFsDevice } from '../../src/fuse/virtiofs-device.js';
import { BucketVfs } from '../../src/backends/posix/bucket-vfs.js';
import { MemoryStore } from '../../src/backends/memory-store.js';
import {
  IN_HEADER_SIZE, OUT_HEADER_SIZE, O_CREAT, O_EXCL, O_RDWR, Opcode, encodeInHeader, isNoReply,
} from '../../src/fuse/abi.js';
import { cstr, encode, encodeRequest } from '../../src/fuse/requests.js';
import { DeviceQueue } from '../../src/virtio/queue.js';
import { DriverQueue, type GuestBuffer } from '../../src/virtio/driver-queue.js';
import { silentLogger } from '../../src/util/log.js';
import { GuardedGuestRam } from './guest-ram.js';
import { check, fuzzTests, type FuzzTarget } from './runner.js';

const R0 = { guestAddr: 0x100000, size: 0x40000 };
const R1 = { guestAddr: 0x140000, size: 0x20000 };
const R2 = { guestAddr: 0x800000, size: 0x20000 };
const QUEUE_SIZE = 64;
const MAX_IND = 16;
const RING_SLOT = 0x8000;
const DATA0 = R0.guestAddr + 2 * RING_SLOT;

type Ref = { readonly k: 'root' } | { readonly k: 'known'; readonly i: number } | { readonly k: 'raw'; readonly v: bigint };

export interface FuseMessage {
  readonly opcode: number;
  readonly node: Ref;
  readonly fh: Ref;
  /** Small numbers for modes, flags, sizes (u32). */
  readonly nums: number[];
  /** Offsets, lengths, lock owners (u64). */
  readonly bigs: bigint[];
  readonly names: Uint8Array[];
  readonly data: Uint8Array;
  readonly trunc: number;
  readonly extra: Uint8Array;
  readonly lenSkew: number;
  readonly extLen: number;
  /** Byte positions where the message is cut into descriptors. */
  readonly cuts: number[];
  /** Reply room, cut into descriptors. */
  readonly room: number[];
  readonly queue: 0 | 1;
  readonly place: 'r0' | 'cross' | 'r2';
  readonly indirect: boolean;
}

export interface FuseInput {
  readonly messages: FuseMessage[];
}

const OPCODES = Object.values(Opcode).filter((v): v is number => typeof v === 'number');

const te = new TextEncoder();
const NAMES: Uint8Array[] = [
  te.encode('a'), te.encode('file.txt'), te.encode('dir'), te.encode('sub dir'), te.encode('é'),
  te.encode('.'), te.encode('..'), te.encode('...'), te.encode('a/b'), te.encode('/'), te.encode('dir/'),
  new Uint8Array([0x78, 0, 0x79]), new Uint8Array(0), new Uint8Array([0xff, 0xfe]), new Uint8Array([0xc3]),
  te.encode('n'.repeat(255)), te.encode('n'.repeat(256)), te.encode('é'.repeat(128)),
];
const XATTR_NAMES: Uint8Array[] = [
  te.encode('user.a'), te.encode('user.b'), te.encode('security.x'), te.encode(''), te.encode(`user.${'x'.repeat(250)}`),
  te.encode(`user.${'x'.repeat(251)}`), new Uint8Array([0x75, 0xff]),
];

const refArb: fc.Arbitrary<Ref> = fc.oneof(
  { weight: 3, arbitrary: fc.constant({ k: 'root' } as const) },
  { weight: 5, arbitrary: fc.nat(15).map((i) => ({ k: 'known', i }) as const) },
  { weight: 1, arbitrary: fc.constantFrom(0n, 2n, 999n, 2n ** 53n, 2n ** 64n - 1n).map((v) => ({ k: 'raw', v }) as const) },
);

const numArb = fc.oneof(
  fc.constantFrom(0, 1, 2, 3, 0o644, 0o100644, 0o40755, 0o120777, 0o20644, O_RDWR | O_CREAT, O_RDWR | O_CREAT | O_EXCL, 0o1002, 0o2001, 4096, 65536, 0xffffffff),
  fc.nat(0xffff),
  fc.integer({ min: 0, max: 0xffffffff }),
);
const bigArb = fc.oneof(
  fc.constantFrom(0n, 1n, 100n, 4096n, 2n ** 31n, 2n ** 53n - 1n, 2n ** 53n, 2n ** 63n, 2n ** 64n - 1n),
  fc.bigInt({ min: 0n, max: 1n << 20n }),
  fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
);

const messageArb: fc.Arbitrary<FuseMessage> = fc.record({
  opcode: fc.oneof(
    { weight: 20, arbitrary: fc.constantFrom(...OPCODES) },
    { weight: 1, arbitrary: fc.constantFrom(0, 7, 19, 52, 53, 4096, 0xffffffff) },
  ),
  node: refArb,
  fh: refArb,
  nums: fc.array(numArb, { minLength: 6, maxLength: 6 }),
  bigs: fc.array(bigArb, { minLength: 4, maxLength: 4 }),
  names: fc.array(fc.oneof({ weight: 4, arbitrary: fc.constantFrom(...NAMES) }, { weight: 1, arbitrary: fc.constantFrom(...XATTR_NAMES) }, { weight: 1, arbitrary: fc.uint8Array({ maxLength: 12 }) }), { minLength: 3, maxLength: 3 }),
  data: fc.oneof(fc.uint8Array({ maxLength: 64 }), fc.constantFrom(new Uint8Array(300).fill(7), new Uint8Array(0))),
  trunc: fc.oneof({ weight: 8, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.integer({ min: 1, max: 24 }) }),
  extra: fc.oneof({ weight: 8, arbitrary: fc.constant(new Uint8Array(0)) }, { weight: 1, arbitrary: fc.uint8Array({ minLength: 1, maxLength: 24 }) }),
  lenSkew: fc.oneof({ weight: 10, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.integer({ min: -48, max: 48 }) }, { weight: 1, arbitrary: fc.constantFrom(-1e9, 0x7fffffff) }),
  extLen: fc.oneof({ weight: 10, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.constantFrom(8, 16, 64, 8 * 0xffff) }),
  cuts: fc.array(fc.nat(200), { maxLength: 3 }),
  room: fc.oneof(
    { weight: 6, arbitrary: fc.constant<number[]>([4096 + 256]) },
    { weight: 2, arbitrary: fc.array(fc.constantFrom(0, 1, 8, 15, 16, 17, 24, 100, 128, 144, 160, 300, 4096), { minLength: 1, maxLength: 3 }) },
  ),
  queue: fc.oneof({ weight: 6, arbitrary: fc.constant<0 | 1>(1) }, { weight: 1, arbitrary: fc.constant<0 | 1>(0) }),
  place: fc.constantFrom<FuseMessage['place']>('r0', 'cross', 'r2'),
  indirect: fc.boolean(),
});

export const fuseInputArb: fc.Arbitrary<FuseInput> = fc.record({ messages: fc.array(messageArb, { minLength: 1, maxLength: 8 }) });

/** The argument area of a message as the kernel would build it for `opcode` (before mutations). */
function argsFor(m: FuseMessage, fh: number | bigint, node: (r: Ref) => number | bigint): Uint8Array[] {
  const [n0, n1, n2, n3] = m.nums as [number, number, number, number, number, number];
  const [b0, b1, b2] = m.bigs as [bigint, bigint, bigint, bigint];
  const [nameA, nameB, nameC] = m.names as [Uint8Array, Uint8Array, Uint8Array];
  const fhn = typeof fh === 'bigint' ? Number(BigInt.asUintN(53, fh)) : fh;
  const u53 = (b: bigint): number => Number(BigInt.asUintN(53, b));
  switch (m.opcode) {
    case Opcode.INIT:
      return [encode.init(n0 % 2 === 0 ? 7 : n0, 26 + (n1 % 16), n2, n3, 0)];
    case Opcode.LOOKUP:
    case Opcode.UNLINK:
    case Opcode.RMDIR:
      return [cstr(nameA)];
    case Opcode.FORGET:
      return [encode.forget(n0 % 4)];
    case Opcode.BATCH_FORGET: {
      const items = [{ nodeid: Number(node({ k: 'known', i: n1 % 16 })), nlookup: n0 % 3 }, { nodeid: u53(b0), nlookup: 1 }];
      return [encode.batchForget(items)];
    }
    case Opcode.GETATTR:
      return [encode.getattr(n0 & 1, fhn)];
    case Opcode.SETATTR:
      return [encode.setattr({ valid: n0, fh: fhn, size: u53(b0) % (1 << 20), mode: n1, uid: n2, gid: n3, atimeNs: b1, mtimeNs: BigInt.asIntN(64, b2) })];
    case Opcode.SYMLINK:
      return [cstr(nameA), cstr(nameB)];
    case Opcode.MKNOD:
      return [encode.mknod(n0, n1, n2 & 0o777), cstr(nameA)];
    case Opcode.MKDIR:
      return [encode.mkdir(n0, n1 & 0o777), cstr(nameA)];
    case Opcode.RENAME:
      return [encode.rename(Number(node(m.fh))), cstr(nameA), cstr(nameB)];
    case Opcode.RENAME2:
      return [encode.rename2(Number(node(m.fh)), n0 & 7), cstr(nameA), cstr(nameB)];
    case Opcode.LINK:
      return [encode.link(Number(node(m.fh))), cstr(nameA)];
    case Opcode.OPEN:
    case Opcode.OPENDIR:
      return [encode.open(n0)];
    case Opcode.READ:
    case Opcode.READDIR:
    case Opcode.READDIRPLUS:
      return [encode.read(fhn, b0 % 2n === 0n ? b0 % 8192n : b0, n1 % 3 === 0 ? n1 : n1 % 8192)];
    case Opcode.WRITE:
      return [encode.write(fhn, u53(b0) % 8192, m.data.length, n0 & 3), m.data];
    case Opcode.RELEASE:
    case Opcode.RELEASEDIR:
      return [encode.release(fhn, n0)];
    case Opcode.FSYNC:
    case Opcode.FSYNCDIR:
      return [encode.fsync(fhn, n0 & 1)];
    case Opcode.SETXATTR:
      return [encode.setxattr(m.data.length, n0 & 3), cstr(nameC), m.data];
    case Opcode.GETXATTR:
      return [encode.getxattr(n0 % 512), cstr(nameC)];
    case Opcode.LISTXATTR:
      return [encode.getxattr(n0 % 512)];
    case Opcode.REMOVEXATTR:
      return [cstr(nameC)];
    case Opcode.FLUSH:
      return [encode.flush(fhn)];
    case Opcode.GETLK:
    case Opcode.SETLK:
    case Opcode.SETLKW:
      return [encode.lk(fhn, b0, { start: b1, end: b2, type: n0 % 3, pid: n1 }, n2 & 1)];
    case Opcode.ACCESS:
      return [encode.access(n0 & 7)];
    case Opcode.CREATE:
      return [encode.create(n0, n1, n2 & 0o777), cstr(nameA)];
    case Opcode.INTERRUPT:
      return [encode.interrupt(b0 % 64n)];
    case Opcode.FALLOCATE:
      return [encode.fallocate(fhn, u53(b0) % 65536, u53(b1) % 65536, n0 % 3 === 0 ? 0 : n0)];
    case Opcode.LSEEK:
      return [encode.lseek(fhn, Number(BigInt.asIntN(32, b0)), n0 % 6)];
    case Opcode.SYNCFS:
      return [encode.syncfs()];
    case Opcode.READLINK:
    case Opcode.STATFS:
    case Opcode.DESTROY:
      return [];
    default:
      return [m.data];
  }
}

interface QueuePair {
  driver: DriverQueue<number>;
  device: DeviceQueue;
}

export function makeFuseTarget(ram: GuardedGuestRam, store: MemoryStore, server: FuseServer, device: VirtioFsDevice): FuzzTarget<FuseInput> & { stop(): Promise<void> } {
  const pairs: QueuePair[] = [];
  const errors: unknown[] = [];
  const nodes: number[] = [];
  const handles: number[] = [];
  let token = 0;
  let unique = 100n;
  let probes = 0;

  for (let q = 0; q < 2; q++) {
    const l = DriverQueue.layoutFor(QUEUE_SIZE, true, MAX_IND);
    const driver = new DriverQueue<number>({
      size: QUEUE_SIZE, indirect: true, maxIndirect: MAX_IND, eventIdx: true,
      area: { buf: ram.host.buffer as ArrayBuffer, offset: ram.fileOffset(R0.guestAddr) + q * RING_SLOT, length: l.total, guestAddr: R0.guestAddr + q * RING_SLOT, userAddr: ram.regions[0]!.userAddr + q * RING_SLOT },
    });
    const dq = new DeviceQueue(q);
    dq.size = QUEUE_SIZE;
    dq.indirect = true;
    dq.eventIdx = true;
    if (!dq.setAddresses(ram.memory, driver.ringAddresses)) throw new Error('setAddresses failed');
    pairs.push({ driver, device: dq });
    device.startQueue(dq);
    device.onKick(dq);
  }

  const ringWrites = (q: number): Array<{ offset: number; length: number }> => {
    const l = pairs[q]!.driver.layout;
    const base = ram.fileOffset(R0.guestAddr) + q * RING_SLOT;
    return [{ offset: base + l.used, length: 8 * QUEUE_SIZE + 6 }, { offset: base + l.avail + 4 + 2 * QUEUE_SIZE, length: 2 }];
  };

  /** Sends one chain and waits (bounded) for it to come back; returns the used length. */
  async function roundTrip(q: number, readable: GuestBuffer[], writable: GuestBuffer[], indirect: boolean): Promise<{ used: number; before: Buffer } | null> {
    const p = pairs[q]!;
    const total = readable.length + writable.length;
    const useIndirect = indirect && total <= MAX_IND;
    if (total === 0 || (!useIndirect && total > p.driver.numFree)) return null;
    const head = p.driver.add(readable, writable, ++token, useIndirect);
    check(head >= 0, 'no room in the ring');
    p.driver.kick();
    const before = ram.snapshot();
    try {
      device.onKick(p.device);
    } catch (err) {
      errors.push(err);
    }
    const deadline = Date.now() + 10_000;
    for (;;) {
      for (const c of p.driver.poll()) if (c.head === head) return { used: c.len, before };
      check(!p.driver.broken, 'the device returned an impossible used element');
      check(Date.now() < deadline, () => `no completion within 10 s on queue ${q} (hang)`);
      await new Promise((r) => setImmediate(r));
    }
  }

  function place(where: FuseMessage['place']): (len: number) => number {
    let at = where === 'r0' ? DATA0 : where === 'r2' ? R2.guestAddr : R1.guestAddr - 300;
    return (len) => {
      const a = at;
      at += len + (where === 'cross' ? 0 : 8);
      return a;
    };
  }

  const resolve = (r: Ref, list: number[]): number | bigint => (r.k === 'root' ? 1 : r.k === 'raw' ? r.v : list.length === 0 ? 1 : list[r.i % list.length]!);

  async function send(m: FuseMessage, features: Set<string>): Promise<void> {
    const nodeOf = (r: Ref): number | bigint => resolve(r, nodes);
    const args = argsFor(m, resolve(m.fh, handles), nodeOf);
    let body = new Uint8Array(Buffer.concat(args));
    if (m.trunc > 0) body = body.subarray(0, Math.max(0, body.length - m.trunc));
    if (m.extra.length > 0) body = new Uint8Array(Buffer.concat([body, m.extra]));
    const u = ++unique;
    const msg = new Uint8Array(IN_HEADER_SIZE + body.length);
    msg.set(body, IN_HEADER_SIZE);
    const len = Math.max(0, Math.min(0xffffffff, msg.length + m.lenSkew));
    encodeInHeader({ len, opcode: m.opcode, unique: u, nodeid: nodeOf(m.node), uid: 0, gid: 0, pid: 1, extLen: m.extLen }, msg);
    const alloc = place(m.place);
    const readable: GuestBuffer[] = [];
    const cuts = [...new Set(m.cuts.filter((c) => c > 0 && c < msg.length))].sort((a, b) => a - b);
    let from = 0;
    for (const c of [...cuts, msg.length]) {
      const piece = msg.subarray(from, c);
      const a = alloc(piece.length);
      ram.write(a, piece);
      readable.push({ addr: a, len: piece.length });
      from = c;
    }
    const writable = m.room.map((len) => ({ addr: alloc(len), len }));
    for (const w of writable) ram.write(w.addr, new Uint8Array(w.len).fill(0xee));
    const q = m.queue;
    const done = await roundTrip(q, readable, writable, m.indirect);
    if (done === null) return;
    const { used, before } = done;
    const stray = ram.changedOutside(before, [...writable.flatMap((w) => ram.fileRanges(w.addr, w.len)), ...ringWrites(q)]);
    check(stray.length === 0, () => `guest memory changed outside the reply buffers at memfd offsets ${stray.join(',')}`);
    const room = m.room.reduce((a, b) => a + b, 0);
    const name = OPCODES.includes(m.opcode) ? Opcode[m.opcode] : `OPCODE_${m.opcode}`;
    if (q === 0 || room < OUT_HEADER_SIZE) {
      check(used === 0, () => `${name} on queue ${q} with ${room} bytes of room: used length ${used}, expected 0`);
      features.add(`${name}:q${q}:noroom`);
      return;
    }
    if (used === 0) {
      // No reply: only for the opcodes that take none.
      check(isNoReply(m.opcode), () => `${name}: no reply`);
      features.add(`${name}:noreply`);
      return;
    }
    const reply = new Uint8Array(Buffer.concat(writable.map((w) => ram.read(w.addr, w.len))));
    const v = new DataView(reply.buffer);
    const rlen = v.getUint32(0, true);
    const error = v.getInt32(4, true);
    const runique = v.getBigUint64(8, true);
    check(used >= OUT_HEADER_SIZE && used <= room, () => `${name}: used length ${used} with ${room} bytes of room`);
    check(rlen === used, () => `${name}: out header length ${rlen}, used length ${used}`);
    check(error <= 0 && error >= -4095, () => `${name}: error ${error}`);
    check(runique === u, () => `${name}: unique ${runique}, sent ${u}`);
    check(error === 0 || rlen === OUT_HEADER_SIZE, () => `${name}: an error reply with ${rlen - OUT_HEADER_SIZE} bytes of payload`);
    features.add(`${name}:${error}`);
    if (error !== 0) return;
    const payload = reply.subarray(OUT_HEADER_SIZE, rlen);
    const pv = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
    const remember = (list: number[], at: number): void => {
      if (payload.length < at + 8) return;
      const id = Number(pv.getBigUint64(at, true));
      if (id !== 0 && !list.includes(id)) list.push(id);
      if (list.length > 16) list.shift();
    };
    switch (m.opcode) {
      case Opcode.LOOKUP:
      case Opcode.MKDIR:
      case Opcode.MKNOD:
      case Opcode.SYMLINK:
        remember(nodes, 0);
        break;
      case Opcode.CREATE:
        remember(nodes, 0);
        remember(handles, 128);
        break;
      case Opcode.OPEN:
      case Opcode.OPENDIR:
        remember(handles, 0);
        break;
      case Opcode.READ:
      case Opcode.READDIR:
      case Opcode.READDIRPLUS: {
        const asked = body.length >= 20 ? new DataView(body.buffer, body.byteOffset).getUint32(16, true) : 0;
        check(payload.length <= asked, () => `${name}: ${payload.length} bytes for a request of ${asked}`);
        break;
      }
    }
  }

  /** Every key in the store is one a valid path could have made. */
  async function checkKeys(): Promise<void> {
    let token: string | undefined;
    do {
      const page = await store.list(token === undefined ? {} : { continuationToken: token });
      for (const o of page.objects) {
        const segs = o.key.replace(/\/$/, '').split('/');
        check(!o.key.includes('\0') && segs.every((s) => s !== '' && s !== '.' && s !== '..' && te.encode(s).length <= 255), () => `the store holds a key no valid name makes: ${JSON.stringify(o.key)}`);
      }
      token = page.nextToken;
    } while (token !== undefined);
  }

  /** A request the way a kernel sends it; returns the reply's error and payload. */
  async function call(opcode: Opcode, nodeid: number, args: Uint8Array[], room = 4096 + 256): Promise<{ error: number; payload: Uint8Array }> {
    const u = ++unique;
    const msg = encodeRequest({ opcode, unique: u, nodeid, uid: 0, gid: 0, pid: 1 }, args);
    const a = DATA0 + 0x10000;
    ram.write(a, msg);
    const out = a + msg.length + 64;
    const used = (await roundTrip(1, [{ addr: a, len: msg.length }], [{ addr: out, len: room }], true))?.used ?? 0;
    check(used >= OUT_HEADER_SIZE, `probe ${Opcode[opcode]}: no reply`);
    const reply = ram.read(out, used);
    const v = new DataView(reply.buffer);
    check(v.getUint32(0, true) === used && v.getBigUint64(8, true) === u, `probe ${Opcode[opcode]}: bad out header`);
    return { error: v.getInt32(4, true), payload: reply.subarray(OUT_HEADER_SIZE) };
  }

  async function probe(): Promise<void> {
    if (!server.isInitialized) {
      const r = await call(Opcode.INIT, 0, [encode.init(7, 38, 0, 0)]);
      check(r.error === 0, `probe INIT: error ${r.error}`);
    }
    const name = `probe-${++probes}`;
    const c = await call(Opcode.CREATE, 1, [encode.create(O_RDWR | O_CREAT | O_EXCL, 0o644, 0), cstr(name)]);
    check(c.error === 0, `probe CREATE: error ${c.error}`);
    const pv = new DataView(c.payload.buffer, c.payload.byteOffset);
    const nodeid = Number(pv.getBigUint64(0, true));
    const fh = Number(pv.getBigUint64(128, true));
    const data = te.encode(`contents of ${name}`);
    const w = await call(Opcode.WRITE, nodeid, [encode.write(fh, 0, data.length), data]);
    check(w.error === 0 && new DataView(w.payload.buffer, w.payload.byteOffset).getUint32(0, true) === data.length, `probe WRITE: error ${w.error}`);
    const r = await call(Opcode.READ, nodeid, [encode.read(fh, 0, 4096)]);
    check(r.error === 0 && Buffer.from(r.payload).equals(Buffer.from(data)), `probe READ: error ${r.error}, ${r.payload.length} bytes`);
    check((await call(Opcode.RELEASE, nodeid, [encode.release(fh)])).error === 0, 'probe RELEASE failed');
    check((await call(Opcode.UNLINK, 1, [cstr(name)])).error === 0, 'probe UNLINK failed');
  }

  return {
    name: 'fuse',
    arbitrary: fuseInputArb,
    async run(input) {
      const features = new Set<string>();
      for (const m of input.messages) await send(m, features);
      check(errors.length === 0, () => `the device threw: ${String(errors[0])}`);
      expect(ram.changedCanaries(), 'canaries between the regions (memfd offsets)').to.deep.equal([]);
      await server.idle();
      await checkKeys();
      await probe();
      return features;
    },
    async stop() {
      for (const p of pairs) await device.stopQueue(p.device);
      device.reset();
      await device.whenReset();
    },
  };
}

describe('fuzz: FUSE messages over virtio-fs (bucket file system on a memory store, guarded guest memory)', function () {
  this.timeout(120_000);
  let ram: GuardedGuestRam;
  let vfs: BucketVfs;
  let target: ReturnType<typeof makeFuseTarget>;
  const uncaught: unknown[] = [];
  const onUncaught = (e: unknown): void => {
    uncaught.push(e);
  };
  before(() => {
    process.on('uncaughtException', onUncaught);
    process.on('unhandledRejection', onUncaught);
    ram = new GuardedGuestRam([R0, R1, R2]);
    const store = new MemoryStore();
    vfs = new BucketVfs({ store, logger: silentLogger });
    const server = new FuseServer(vfs, { log: silentLogger, maxWrite: 64 * 1024 });
    const device = new VirtioFsDevice({ server, requestQueues: 1, log: silentLogger });
    target = makeFuseTarget(ram, store, server, device);
  });
  after(async () => {
    process.off('uncaughtException', onUncaught);
    process.off('unhandledRejection', onUncaught);
    await target?.stop();
    await vfs?.close();
    ram?.close();
    expect(uncaught, 'exceptions that escaped').to.deep.equal([]);
  });
  fuzzTests(() => target);
});
