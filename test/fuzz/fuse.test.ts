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
import { FuseServer } from '../../src/fuse/server.js';
import { VirtioFsDevice } from '../../src/fuse/virtiofs-device.js';
import { BucketVfs } from '../../src/backends/posix/bucket-vfs.js';
import { MemoryStore } from '../../src/backends/memory-store.js';
import { FileStore } from '../../src/backends/file-store.js';
import type { ObjectStore } from '../../src/backends/object-store.js';
import { TmpDir } from '../support/tmp.js';
import {
  IN_HEADER_SIZE, OUT_HEADER_SIZE, O_CREAT, O_EXCL, O_RDWR, Opcode, encodeInHeader, isNoReply,
} from '../../src/fuse/abi.js';
import { cstr, encode, encodeRequest } from '../../src/fuse/requests.js';
import { OPCODES, argsFor, fuseInputArb, type FuseInput, type FuseMessage, type Ref } from './fuse-messages.js';
import { DeviceQueue } from '../../src/virtio/queue.js';
import { DriverQueue, type GuestBuffer } from '../../src/virtio/driver-queue.js';
import { silentLogger } from '../../src/util/log.js';
import { GuardedGuestRam } from './guest-ram.js';
import { check, fuzzSuite, type FuzzTarget } from './runner.js';

const R0 = { guestAddr: 0x100000, size: 0x40000 };
const R1 = { guestAddr: 0x140000, size: 0x20000 };
const R2 = { guestAddr: 0x800000, size: 0x20000 };
const QUEUE_SIZE = 64;
const te = new TextEncoder();
const MAX_IND = 16;
const RING_SLOT = 0x8000;
const DATA0 = R0.guestAddr + 2 * RING_SLOT;

interface QueuePair {
  driver: DriverQueue<number>;
  device: DeviceQueue;
}

export function makeFuseTarget(
  ram: GuardedGuestRam, store: ObjectStore, vfs: BucketVfs, server: FuseServer, device: VirtioFsDevice, label: string,
): FuzzTarget<FuseInput> & { stop(): Promise<void> } {
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
    label,
    arbitrary: fuseInputArb,
    async run(input) {
      const features = new Set<string>();
      for (const m of input.messages) await send(m, features);
      check(errors.length === 0, () => `the device threw: ${String(errors[0])}`);
      expect(ram.changedCanaries(), 'canaries between the regions (memfd offsets)').to.deep.equal([]);
      await server.idle();
      // Whatever the guest was told is written must be storable (a name the store cannot
      // hold, say, must have been refused, not buffered for ever).
      try {
        await vfs.sync();
      } catch (err) {
        throw new Error(`the file system cannot store what it accepted: ${(err as Error).message}`);
      }
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

function fuseSuite(title: string, label: string, open: (dir: TmpDir) => Promise<{ store: ObjectStore; prefix: string }>): void {
  fuzzSuite(title, 'vhost-s3-fuzz-fuse-', async ({ dir, defer }) => {
    const ram = new GuardedGuestRam([R0, R1, R2]);
    defer(() => ram.close());
    const opened = await open(dir);
    const store = opened.store;
    defer(() => store.close());
    const vfs = new BucketVfs({ store, prefix: opened.prefix, logger: silentLogger });
    defer(() => vfs.close());
    const server = new FuseServer(vfs, { log: silentLogger, maxWrite: 64 * 1024 });
    const device = new VirtioFsDevice({ server, requestQueues: 1, log: silentLogger });
    const target = makeFuseTarget(ram, store, vfs, server, device, label);
    defer(() => target.stop());
    return target;
  });
}

fuseSuite('fuzz: FUSE messages over virtio-fs (bucket file system on a memory store, guarded guest memory)', 'fuse (memory store)', async () => ({
  store: new MemoryStore(), prefix: '',
}));

// The store of `npm start` (and `vhost-s3 fs --bucket file:`): a directory, with its own limits on names.
fuseSuite('fuzz: FUSE messages over virtio-fs (bucket file system on a file store, as npm start serves)', 'fuse (file store)', async (dir) => ({
  store: await FileStore.open(dir.file('store'), { create: true, noSync: true }), prefix: 'share/',
}));
