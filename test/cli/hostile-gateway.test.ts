// A hostile guest against the running gateway: `vhost-s3 serve` (what `npm start`
// runs) serves a disk and a share from one process. A driver sends malformed chains, a
// head past the ring, random FUSE messages (the fuzz target's generator) and random blk
// headers on purpose; after each, normal I/O on the same connection and on the other
// device served by the same process must still work, the process must stay up with
// nothing logged above warn, and it must still shut down cleanly.
import { expect } from 'chai';
import { join } from 'node:path';
import fc from 'fast-check';
import { BlkClient } from '../../src/frontend/blk-client.js';
import { FuseClient } from '../../src/frontend/fuse-client.js';
import type { DriverQueue } from '../../src/virtio/driver-queue.js';
import { VIRTQ_DESC_F_NEXT as NEXT, VIRTQ_DESC_F_WRITE as WRITE } from '../../src/virtio/layout.js';
import { BlkStatus, BlkType } from '../../src/blk/protocol.js';
import { IN_HEADER_SIZE, OUT_HEADER_SIZE, O_CREAT, O_RDWR, Opcode, decodeOutHeader, encodeInHeader, isNoReply } from '../../src/fuse/abi.js';
import { encode, encodeRequest } from '../../src/fuse/requests.js';
import { CliProcess } from '../support/cli.js';
import { TmpDir, patternBytes } from '../support/tmp.js';
import { waitFor } from '../support/wait.js';
import { MALFORMED_DESCRIPTORS, MALFORMED_SHAPES, sendRawChain, writeMalformedChain, type RawRings } from '../support/hostile-chains.js';
import { argsFor, fuseInputArb } from '../fuzz/fuse-messages.js';

const MiB = 1 << 20;
const td = new TextDecoder();

describe('gateway (vhost-s3 serve: a disk and a share in one process) against a hostile guest', function () {
  this.timeout(240_000);
  let dir: TmpDir;
  let server: CliProcess;
  let blk: BlkClient | null = null;
  let fs: FuseClient | null = null;
  let files = 0;

  const diskSock = (): string => join(dir.path, 'data', 'disk0.sock');
  const fsSock = (): string => join(dir.path, 'data', 'fs.sock');

  before(async () => {
    dir = new TmpDir('vhost-s3-hostile-');
    server = new CliProcess(['serve', '--data-dir', join(dir.path, 'data'), '--disk-size', '16M', '--log-level', 'warn']);
    await server.waitFor('the QEMU arguments on stdout', (out) => out.includes('Press Ctrl-C'), 60_000);
    blk = await BlkClient.connect(diskSock());
    fs = await FuseClient.connect(fsSock(), { maxIo: 64 * 1024 });
    await fs.init();
  });

  after(async () => {
    await blk?.close().catch(() => undefined);
    await fs?.close().catch(() => undefined);
    if (server?.running) {
      const st = await server.stop('SIGTERM');
      expect(st.code, server.describe()).to.equal(0);
    }
    dir?.remove();
  });

  /** A write and a read back on the disk. */
  async function diskWorks(seed: number): Promise<void> {
    const c = blk!;
    const w = c.allocBuffer(4096);
    w.bytes.set(patternBytes(seed, 4096));
    const offset = (seed % 1000) * 8192;
    expect(await c.writeAsync(0, offset, w), 'disk write').to.equal(BlkStatus.Ok);
    const r = c.allocBuffer(4096);
    expect(await c.readAsync(0, offset, r), 'disk read').to.equal(BlkStatus.Ok);
    expect(Buffer.from(r.bytes).equals(Buffer.from(w.bytes)), 'disk data').to.equal(true);
  }

  /** A file created, written, read back and removed on the share. */
  async function shareWorks(): Promise<void> {
    const c = fs!;
    const name = `ok-${++files}`;
    const { entry, fh } = await c.create(1, name, O_CREAT | O_RDWR);
    const text = `contents of ${name}`;
    expect(await c.write(entry.nodeid, fh, 0, new TextEncoder().encode(text))).to.equal(text.length);
    expect(td.decode(await c.read(entry.nodeid, fh, 0, 100))).to.equal(text);
    await c.release(entry.nodeid, fh);
    await c.unlink(1, name);
    await c.forget(entry.nodeid, 1);
  }

  /** Publishes a malformed chain on a ring and waits for it to come back; returns the used length. */
  async function sendMalformed(c: BlkClient | FuseClient, queue: number, shape: (typeof MALFORMED_SHAPES)[number], req: { addr: number; len: number }, reply: { addr: number; len: number }): Promise<number> {
    const mem = c.virtio.memory;
    return sendRawChain(c.virtio as RawRings<unknown>, queue, (ring, d) => writeMalformedChain(ring, d, shape, { request: req, reply, end: mem.guestBase + mem.size }), {
      descs: MALFORMED_DESCRIPTORS, timeoutMs: 10_000, what: `the ${shape} chain back`,
    });
  }

  it('fails every malformed chain on the disk with length 0; the disk and the share keep serving', async () => {
    const hdr = blk!.allocBuffer(16);
    new DataView(hdr.bytes.buffer, hdr.bytes.byteOffset, 16).setUint32(0, BlkType.In, true);
    const status = blk!.allocBuffer(1);
    for (const [i, shape] of MALFORMED_SHAPES.entries()) {
      expect(await sendMalformed(blk!, 0, shape, { addr: hdr.gpa, len: 16 }, { addr: status.gpa, len: 1 }), shape).to.equal(0);
      await diskWorks(i);
      await shareWorks();
    }
  });

  it('fails every malformed chain on the share (hiprio and request queue) with length 0; both devices keep serving', async () => {
    const req = fs!.allocBuffer(64);
    req.bytes.set(encodeRequest({ opcode: Opcode.GETATTR, unique: 2n, nodeid: 1 }, [encode.getattr(0, 0)]));
    const out = fs!.allocBuffer(256);
    for (const queue of [0, 1]) {
      for (const [i, shape] of MALFORMED_SHAPES.entries()) {
        expect(await sendMalformed(fs!, queue, shape, { addr: req.gpa, len: 56 }, { addr: out.gpa, len: 256 }), `${shape} on queue ${queue}`).to.equal(0);
        await shareWorks();
        await diskWorks(100 + i);
      }
    }
  });

  it('answers random FUSE messages and random disk requests, and both devices keep serving', async () => {
    const c = fs!;
    const messages = fc.sample(fuseInputArb, { numRuns: 60, seed: 1234 }).flatMap((x) => x.messages);
    let replies = 0;
    for (const m of messages) {
      // DESTROY ends the session (the client would have to INIT again): not what this test is about.
      const opcode = m.opcode === Opcode.DESTROY ? Opcode.GETATTR : m.opcode;
      const args = argsFor({ ...m, opcode }, 0, () => 1);
      const body = Buffer.concat(args).subarray(0, Math.max(0, Buffer.concat(args).length - m.trunc));
      const msg = new Uint8Array(IN_HEADER_SIZE + body.length + m.extra.length);
      msg.set(body, IN_HEADER_SIZE);
      msg.set(m.extra, IN_HEADER_SIZE + body.length);
      const unique = c.nextUnique();
      encodeInHeader({ len: Math.max(0, msg.length + m.lenSkew), opcode, unique, nodeid: 1, extLen: m.extLen }, msg);
      const room = Math.min(m.room.reduce((a, b) => a + b, 0), 8192);
      const r = await c.raw(msg, room, 1);
      if (r.len === 0) {
        expect(isNoReply(opcode) || room < OUT_HEADER_SIZE, `no reply to opcode ${opcode} with ${room} bytes of room`).to.equal(true);
        continue;
      }
      replies++;
      const h = decodeOutHeader(r.bytes)!;
      expect(h.len).to.equal(r.len);
      expect(r.len).to.be.within(OUT_HEADER_SIZE, room);
      expect(h.unique).to.equal(unique);
      expect(h.error).to.be.within(-4095, 0);
    }
    expect(replies).to.be.greaterThan(messages.length / 2);
    await c.init(); // a random INIT may have started a new session
    await shareWorks();
    await diskWorks(200);

    // Disk requests with random types and sectors, through hand-written chains.
    const ring = blk!.virtio.rawRing(0) as DriverQueue<unknown>;
    const hdr = blk!.allocBuffer(16);
    const data = blk!.allocBuffer(4096);
    const status = blk!.allocBuffer(1);
    const reqs = fc.sample(fc.record({
      type: fc.oneof(fc.constantFrom(0, 1, 4, 8, 11, 13), fc.integer({ min: 0, max: 0xffffffff })),
      sector: fc.oneof(fc.integer({ min: 0, max: 32767 }).map(BigInt), fc.bigInt({ min: 0n, max: 2n ** 64n - 1n })),
      len: fc.constantFrom(0, 1, 511, 512, 4096),
      writable: fc.boolean(),
    }), { numRuns: 150, seed: 4321 });
    for (const q of reqs) {
      const v = new DataView(hdr.bytes.buffer, hdr.bytes.byteOffset, 16);
      v.setUint32(0, q.type >>> 0, true);
      v.setBigUint64(8, q.sector, true);
      status.bytes[0] = 0xee;
      const d = ring.takeRaw(3);
      ring.writeRawDescriptor(d[0]!, hdr.gpa, 16, NEXT, d[1]!);
      ring.writeRawDescriptor(d[1]!, data.gpa, q.len, (q.writable ? WRITE : 0) | NEXT, d[2]!);
      ring.writeRawDescriptor(d[2]!, status.gpa, 1, WRITE, 0);
      ring.publishRawHead(d[0]!);
      ring.kick();
      await waitFor(() => blk!.virtio.rawCompletions.length > 0, 10_000, 'a disk request back');
      const done = blk!.virtio.rawCompletions.shift()!;
      ring.releaseRaw(d);
      // A device-readable buffer after a writable one is a malformed chain (length 0).
      if (done.len === 0) expect(q.writable || q.len === 0, JSON.stringify(q, (_k, x: unknown) => (typeof x === 'bigint' ? x.toString() : x))).to.equal(false);
      else expect([BlkStatus.Ok, BlkStatus.IoErr, BlkStatus.Unsupp]).to.include(status.bytes[0]);
    }
    await diskWorks(201);
    await shareWorks();
  });

  it('a head past the ring breaks only that queue: the other device keeps serving and a new connection works', async () => {
    let ring = blk!.virtio.rawRing(0) as DriverQueue<unknown>;
    ring.publishRawHead(ring.size + 5);
    ring.kick();
    await new Promise((r) => setTimeout(r, 200));
    await shareWorks();
    await blk!.close();
    blk = await BlkClient.connect(diskSock());
    await diskWorks(300);

    ring = fs!.virtio.rawRing(1) as DriverQueue<unknown>;
    ring.publishRawHead(ring.size + 5);
    ring.kick();
    await new Promise((r) => setTimeout(r, 200));
    await diskWorks(301);
    await fs!.close();
    fs = await FuseClient.connect(fsSock(), { maxIo: 64 * 1024 });
    await fs.init();
    await shareWorks();
    expect(blk!.capacity).to.equal(16 * MiB);
  });

  it('stayed up, logged nothing above warn, and logged the malformed chains', () => {
    expect(server.running, server.describe()).to.equal(true);
    const lines = server.logLines();
    const loud = lines.filter((l) => l['level'] !== 'warn');
    expect(loud, server.describe()).to.deep.equal([]);
    expect(lines.some((l) => l['msg'] === 'malformed descriptor chain'), server.describe()).to.equal(true);
  });
});
