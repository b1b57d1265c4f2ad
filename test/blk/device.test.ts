// The virtio-blk device over a raw file, driven through a real vhost-user socket by the
// QEMU-free frontend: data paths, status codes, limits, and hostile requests.
import { expect } from 'chai';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { BlkExport } from '../../src/blk/export.js';
import { RawImage } from '../../src/blk/raw-image.js';
import { BlkClient } from '../../src/frontend/blk-client.js';
import { BlkStatus, BlkType } from '../../src/blk/protocol.js';
import { silentLogger } from '../../src/util/log.js';
import { ConfigError } from '../../src/util/errors.js';
import { TmpDir, makeRawFile, patternBytes } from '../support/tmp.js';
import type { GuestMemory, Segment } from '../../src/virtio/memory.js';

const MiB = 1 << 20;

describe('virtio-blk device over a raw file', function () {
  this.timeout(30000);
  let dir: TmpDir;
  let raw: string;
  let exp: BlkExport | null = null;
  let client: BlkClient | null = null;

  async function start(opts: { readOnly?: boolean; queues?: number; serial?: string; ioEngine?: 'uring' | 'sync'; size?: number } = {}): Promise<BlkClient> {
    makeRawFile(raw, opts.size ?? 16 * MiB);
    const image = RawImage.open(raw, { readOnly: opts.readOnly ?? false, ioEngine: opts.ioEngine ?? 'uring' });
    exp = await BlkExport.start({
      socket: dir.file('blk.sock'), image, locator: raw, queues: opts.queues ?? 1, serial: opts.serial ?? 'TESTDISK', log: silentLogger,
    });
    client = await BlkClient.connect(dir.file('blk.sock'), { queues: opts.queues ?? 1 });
    return client;
  }

  beforeEach(() => {
    dir = new TmpDir();
    raw = dir.file('disk.raw');
  });
  afterEach(async () => {
    await client?.close();
    client = null;
    await exp?.close();
    exp = null;
    dir.remove();
  });

  it('pins guest memory while a read is in flight, so that a SET_MEM_TABLE cannot unmap it under the copy', async () => {
    makeRawFile(raw, 16 * MiB);
    const image = RawImage.open(raw, { readOnly: false, ioEngine: 'uring' });
    const held: (() => void)[] = [];
    // Completions held back: the read stays "in flight" for as long as the test needs.
    const gated = Object.assign(Object.create(image) as RawImage, {
      read: (offset: number, segs: readonly Segment[], done: (r: number) => void) => image.read(offset, segs, (r) => held.push(() => done(r))),
    });
    exp = await BlkExport.start({ socket: dir.file('blk.sock'), image: gated, locator: raw, queues: 1, serial: 'PIN', log: silentLogger });
    client = await BlkClient.connect(dir.file('blk.sock'), { queues: 1 });
    const memory = (): GuestMemory => exp!.vhostServer.session!.guestMemory;
    const buf = client.allocBuffer(64 * 1024);
    const reading = client.readAsync(0, 4096, buf);
    try {
      for (let i = 0; i < 200 && held.length === 0; i++) await new Promise((r) => setTimeout(r, 5));
      expect(held.length).to.equal(1);
      expect(memory().pinCount).to.equal(1);
    } finally {
      held.splice(0).forEach((f) => f());
    }
    expect(await reading).to.equal(BlkStatus.Ok);
    expect(memory().pinCount).to.equal(0);
  });

  for (const ioEngine of ['uring', 'sync'] as const) {
    it(`writes and reads back scattered buffers at several offsets (${ioEngine})`, async () => {
      const c = await start({ ioEngine });
      expect(c.capacity).to.equal(16 * MiB);
      const offsets = [0, 4096, 7 * MiB + 512, 16 * MiB - 8192, 16 * MiB - 512];
      for (const [i, off] of offsets.entries()) {
        const len = Math.min(8192, 16 * MiB - off);
        const a = c.allocBuffer(len / 2);
        const b = c.allocBuffer(len / 2);
        const data = patternBytes(i + 1, len);
        a.bytes.set(data.subarray(0, len / 2));
        b.bytes.set(data.subarray(len / 2));
        expect(await c.writeAsync(0, off, [a, b])).to.equal(BlkStatus.Ok);
        const r = c.allocBuffer(len);
        expect(await c.readAsync(0, off, r)).to.equal(BlkStatus.Ok);
        expect(Buffer.from(r.bytes).equals(Buffer.from(data))).to.equal(true);
      }
      expect(await c.flushAsync()).to.equal(BlkStatus.Ok);
      const file = readFileSync(raw);
      expect(Buffer.compare(file.subarray(16 * MiB - 512), Buffer.from(patternBytes(5, 512)))).to.equal(0);
    });
  }

  it('reads what was in the file before', async () => {
    const c = await start();
    const data = patternBytes(42, 4096);
    writeFileSync(raw, data, { flag: 'r+' });
    const r = c.allocBuffer(4096);
    expect(await c.readAsync(0, 0, r)).to.equal(BlkStatus.Ok);
    expect(Buffer.from(r.bytes).equals(Buffer.from(data))).to.equal(true);
  });

  it('answers out-of-range, misaligned and oversized requests with IOERR and keeps serving', async () => {
    const c = await start();
    const buf = c.allocBuffer(8192);
    expect(await c.readAsync(0, 16 * MiB, c.allocBuffer(512))).to.equal(BlkStatus.IoErr);
    expect(await c.readAsync(0, 16 * MiB - 512, buf)).to.equal(BlkStatus.IoErr);
    expect(await c.writeAsync(0, 16 * MiB - 4096, buf)).to.equal(BlkStatus.IoErr);
    const odd = c.allocBuffer(100);
    expect(await c.readAsync(0, 0, odd)).to.equal(BlkStatus.IoErr);
    // sector far beyond the disk: 2^63 sectors does not fit any arithmetic
    expect(await c.requestAsync(0, BlkType.In, 2 ** 62, [], [c.allocBuffer(512)])).to.equal(BlkStatus.IoErr);
    const big = c.allocBuffer(33 * MiB);
    expect(await c.readAsync(0, 0, big)).to.equal(BlkStatus.IoErr);
    expect(await c.readAsync(0, 0, c.allocBuffer(512))).to.equal(BlkStatus.Ok);
  });

  it('answers unknown request types with UNSUPP', async () => {
    const c = await start();
    for (const type of [2, 3, 5, 14, 0x80000000, 0xffffffff]) {
      expect(await c.requestAsync(0, type, 0, [], [c.allocBuffer(512)]), `type ${type}`).to.equal(BlkStatus.Unsupp);
    }
  });

  it('returns the serial for GET_ID', async () => {
    const c = await start({ serial: 'VM1DISK' });
    expect(await c.getIdAsync()).to.deep.equal({ status: BlkStatus.Ok, id: 'VM1DISK' });
  });

  it('GET_ID is unsupported without a serial', async () => {
    const c = await start({ serial: '' });
    expect((await c.getIdAsync()).status).to.equal(BlkStatus.Unsupp);
  });

  it('discards by punching holes and write-zeroes zeroes ranges', async () => {
    const c = await start();
    const data = c.allocBuffer(MiB);
    data.bytes.set(patternBytes(7, MiB));
    expect(await c.writeAsync(0, 0, data)).to.equal(BlkStatus.Ok);
    expect(await c.writeAsync(0, 2 * MiB, data)).to.equal(BlkStatus.Ok);
    expect(await c.flushAsync()).to.equal(BlkStatus.Ok);
    const before = statSync(raw).blocks;
    expect(await c.discardAsync(0, [{ offset: 0, length: 512 * 1024 }])).to.equal(BlkStatus.Ok);
    expect(await c.writeZeroesAsync(0, [{ offset: 2 * MiB + 4096, length: 8192 }], false)).to.equal(BlkStatus.Ok);
    expect(await c.writeZeroesAsync(0, [{ offset: 2 * MiB + 65536, length: 65536 }], true)).to.equal(BlkStatus.Ok);
    expect(statSync(raw).blocks).to.be.lessThan(before);
    const r = c.allocBuffer(MiB);
    expect(await c.readAsync(0, 0, r)).to.equal(BlkStatus.Ok);
    expect(r.bytes.subarray(0, 512 * 1024).every((b) => b === 0)).to.equal(true);
    expect(Buffer.from(r.bytes.subarray(512 * 1024)).equals(Buffer.from(patternBytes(7, MiB).subarray(512 * 1024)))).to.equal(true);
    expect(await c.readAsync(0, 2 * MiB, r)).to.equal(BlkStatus.Ok);
    const expected = patternBytes(7, MiB);
    expected.fill(0, 4096, 4096 + 8192);
    expected.fill(0, 65536, 131072);
    expect(Buffer.from(r.bytes).equals(Buffer.from(expected))).to.equal(true);
  });

  it('rejects discard ranges outside the disk, bad payloads and flags it does not know', async () => {
    const c = await start();
    expect(await c.discardAsync(0, [{ offset: 16 * MiB - 512, length: 1024 }])).to.equal(BlkStatus.IoErr);
    const seg = (flags: number, count = 1): ReturnType<BlkClient['allocBuffer']> => {
      const b = c.allocBuffer(16);
      const v = new DataView(b.bytes.buffer, b.bytes.byteOffset, 16);
      v.setBigUint64(0, 0n, true);
      v.setUint32(8, count, true);
      v.setUint32(12, flags, true);
      return b;
    };
    // the unmap flag is only defined for WRITE_ZEROES; unknown flags for neither
    expect(await c.requestAsync(0, BlkType.Discard, 0, [seg(1)], [])).to.equal(BlkStatus.Unsupp);
    expect(await c.requestAsync(0, BlkType.WriteZeroes, 0, [seg(2)], [])).to.equal(BlkStatus.Unsupp);
    expect(await c.requestAsync(0, BlkType.WriteZeroes, 0, [seg(1)], [])).to.equal(BlkStatus.Ok);
    // no segment at all, a partial segment, too many sectors
    expect(await c.requestAsync(0, BlkType.Discard, 0, [], [])).to.equal(BlkStatus.IoErr);
    expect(await c.requestAsync(0, BlkType.Discard, 0, [c.allocBuffer(8)], [])).to.equal(BlkStatus.IoErr);
    expect(await c.requestAsync(0, BlkType.Discard, 0, [seg(0, 0xffffffff)], [])).to.equal(BlkStatus.IoErr);
    expect(await c.discardAsync(0, [{ offset: 0, length: 4096 }])).to.equal(BlkStatus.Ok);
  });

  it('refuses writes, discards and write-zeroes on a read-only disk', async () => {
    const c = await start({ readOnly: true });
    expect(c.readOnly).to.equal(true);
    const buf = c.allocBuffer(4096);
    expect(await c.writeAsync(0, 0, buf)).to.equal(BlkStatus.IoErr);
    expect(await c.discardAsync(0, [{ offset: 0, length: 4096 }])).to.equal(BlkStatus.IoErr);
    expect(await c.writeZeroesAsync(0, [{ offset: 0, length: 4096 }])).to.equal(BlkStatus.IoErr);
    expect(await c.readAsync(0, 0, buf)).to.equal(BlkStatus.Ok);
    expect(await c.flushAsync()).to.equal(BlkStatus.Ok);
  });

  it('serves several queues at once', async () => {
    const c = await start({ queues: 4 });
    expect(c.numQueues).to.equal(4);
    const writes = [0, 1, 2, 3].map(async (q) => {
      const b = c.allocBuffer(65536);
      b.bytes.set(patternBytes(100 + q, 65536));
      expect(await c.writeAsync(q, q * MiB, b)).to.equal(BlkStatus.Ok);
    });
    await Promise.all(writes);
    for (const q of [0, 1, 2, 3]) {
      const r = c.allocBuffer(65536);
      expect(await c.readAsync((q + 1) % 4, q * MiB, r)).to.equal(BlkStatus.Ok);
      expect(Buffer.from(r.bytes).equals(Buffer.from(patternBytes(100 + q, 65536)))).to.equal(true);
    }
  });

  it('keeps many requests in flight (more than the queue size)', async () => {
    const c = await start();
    const n = 600;
    const ops: Promise<number>[] = [];
    for (let i = 0; i < n; i++) {
      const b = c.allocBuffer(4096);
      b.bytes.set(patternBytes(i, 4096));
      ops.push(c.writeAsync(0, i * 4096, b));
    }
    expect(new Set(await Promise.all(ops))).to.deep.equal(new Set([BlkStatus.Ok]));
    const file = readFileSync(raw);
    for (let i = 0; i < n; i += 97) {
      expect(Buffer.compare(file.subarray(i * 4096, (i + 1) * 4096), Buffer.from(patternBytes(i, 4096))), `block ${i}`).to.equal(0);
    }
  });

  it('serves a new connection from a clean state after the frontend disconnects', async () => {
    const c = await start();
    const b = c.allocBuffer(4096);
    b.bytes.set(patternBytes(9, 4096));
    expect(await c.writeAsync(0, 8192, b)).to.equal(BlkStatus.Ok);
    await c.close();
    client = null;
    for (let round = 0; round < 3; round++) {
      const again = await BlkClient.connect(dir.file('blk.sock'));
      const r = again.allocBuffer(4096);
      expect(await again.readAsync(0, 8192, r)).to.equal(BlkStatus.Ok);
      expect(Buffer.from(r.bytes).equals(Buffer.from(patternBytes(9, 4096)))).to.equal(true);
      await again.close();
    }
  });

  it('refuses to take over the socket of a running server, which keeps serving', async () => {
    const c = await start();
    const other = makeRawFile(dir.file('other.raw'), MiB);
    let err: unknown;
    try {
      await BlkExport.start({ socket: dir.file('blk.sock'), image: RawImage.open(other, { readOnly: false, ioEngine: 'sync' }), locator: other, queues: 1, serial: '', log: silentLogger });
    } catch (e) {
      err = e;
    }
    expect(err).to.be.instanceOf(ConfigError);
    expect((err as Error).message).to.match(/in use/);
    expect(await c.readAsync(0, 0, c.allocBuffer(512))).to.equal(BlkStatus.Ok);
  });

  it('works with direct descriptors and without EVENT_IDX (as SeaBIOS drives it)', async () => {
    await start();
    await client!.close();
    client = await BlkClient.connect(dir.file('blk.sock'), { indirect: false, eventIdx: false });
    const b = client.allocBuffer(4096);
    b.bytes.set(patternBytes(3, 4096));
    expect(await client.writeAsync(0, 0, b)).to.equal(BlkStatus.Ok);
    const r = client.allocBuffer(4096);
    expect(await client.readAsync(0, 0, r)).to.equal(BlkStatus.Ok);
    expect(Buffer.from(r.bytes).equals(Buffer.from(patternBytes(3, 4096)))).to.equal(true);
  });
});
