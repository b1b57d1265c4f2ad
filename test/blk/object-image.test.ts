// Object-backed disk images served by the real gateway (`vhost-s3 blk` as a child process)
// and driven by the QEMU-free frontend, on an s3:// image in s3rver and on a file: image in
// a local directory store. Every case keeps a reference copy of the disk and compares the
// device's reads, and the chunk objects in the store, with it.
import { expect } from 'chai';
import { readFileSync } from 'node:fs';

import { createImage } from '../../src/blk/image-admin.js';
import { ImageKeys } from '../../src/blk/image-format.js';
import { BlkStatus } from '../../src/blk/protocol.js';
import { listKeys, type ObjectStore } from '../../src/backends/object-store.js';
import type { SharedBuffer } from '../../src/frontend/memory.js';
import { BlkClient } from '../../src/frontend/blk-client.js';
import { startBlkServer, type CliProcess } from '../support/cli.js';
import { startImageBackend, type ImageBackend } from '../support/image-backend.js';
import { TmpDir } from '../support/tmp.js';
import { xorshift32 } from '../../src/util/xorshift.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const CS = 64 * KiB; // chunk size of every image here: boundaries are crossed often

// The AWS SDK's Node 20 notice (the CLI silences it the same way).
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

// ---- helpers --------------------------------------------------------------------------

/** xorshift32: deterministic random numbers for the workloads. */
function rng(seed: number): (n: number) => number {
  const next = xorshift32(seed);
  return (n: number) => next() % n;
}

/** Non-zero pseudo-random bytes (so that no written sector is ever all zeros by accident). */
function randomBytes(seed: number, length: number): Uint8Array {
  const next = rng(seed * 7919 + length);
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i++) out[i] = 1 + next(255);
  return out;
}

/** Compares byte arrays, naming the first difference (never dumps megabytes). */
function expectSame(got: Uint8Array, want: Uint8Array, what: string, base = 0): void {
  expect(got.byteLength, `${what}: length`).to.equal(want.byteLength);
  if (Buffer.from(got.buffer, got.byteOffset, got.byteLength).equals(Buffer.from(want.buffer, want.byteOffset, want.byteLength))) return;
  let i = 0;
  while (got[i] === want[i]) i++;
  const off = base + i;
  expect.fail(`${what}: first difference at byte ${off} (chunk ${Math.floor(off / CS)} +${off % CS}): got ${got[i]}, want ${want[i]}`);
}

function isZero(b: Uint8Array): boolean {
  for (let i = 0; i < b.length; i++) if (b[i] !== 0) return false;
  return true;
}

/** The chunk objects of an image: index -> bytes. */
async function storedChunks(store: ObjectStore, keys: ImageKeys): Promise<Map<number, Uint8Array>> {
  const out = new Map<number, Uint8Array>();
  for await (const k of listKeys(store, keys.chunksPrefix)) {
    const i = keys.chunkIndex(k);
    expect(i, `unexpected key ${k} under the chunks prefix`).to.be.at.least(0);
    out.set(i, (await store.get(k)).body);
  }
  return out;
}

/** The store holds exactly the reference: an object for every non-zero chunk, none for zero chunks. */
async function expectStoreHolds(store: ObjectStore, keys: ImageKeys, ref: Uint8Array): Promise<void> {
  const chunks = await storedChunks(store, keys);
  for (let i = 0; i * CS < ref.length; i++) {
    const want = ref.subarray(i * CS, (i + 1) * CS);
    const got = chunks.get(i);
    if (isZero(want)) {
      expect(got === undefined, `chunk ${i} is all zeros: no object should be stored for it`).to.equal(true);
    } else {
      expect(got, `chunk ${i} has data: its object should be stored`).to.not.equal(undefined);
      expectSame(got!, want, `stored chunk ${i}`, i * CS);
    }
  }
  expect([...chunks.keys()].every((i) => i * CS < ref.length), 'no chunk beyond the end of the image').to.equal(true);
}

/** Writes `bytes` into chunk objects directly (as an earlier writer would have stored them). */
async function storeBytes(store: ObjectStore, keys: ImageKeys, offset: number, bytes: Uint8Array): Promise<void> {
  for (let pos = 0; pos < bytes.length;) {
    const i = Math.floor((offset + pos) / CS);
    const inChunk = (offset + pos) % CS;
    const n = Math.min(CS - inChunk, bytes.length - pos);
    let chunk: Uint8Array;
    try {
      chunk = Uint8Array.from((await store.get(keys.chunk(i))).body);
    } catch {
      chunk = new Uint8Array(CS);
    }
    chunk.set(bytes.subarray(pos, pos + n), inChunk);
    await store.put(keys.chunk(i), chunk);
    pos += n;
  }
}

/** A connected frontend with a pool of request buffers. */
class Disk {
  private readonly pool: SharedBuffer[];
  private readonly waiters: ((b: SharedBuffer) => void)[] = [];
  private constructor(readonly client: BlkClient, depth: number, private readonly bufSize: number) {
    this.pool = Array.from({ length: depth }, () => client.allocBuffer(bufSize));
  }
  static async connect(socket: string, depth = 8, bufSize = MiB): Promise<Disk> {
    const client = await BlkClient.connect(socket, { memorySize: (depth + 2) * bufSize + 16 * MiB });
    return new Disk(client, depth, bufSize);
  }
  get size(): number {
    return this.client.capacity;
  }
  private async take(): Promise<SharedBuffer> {
    return this.pool.pop() ?? new Promise((resolve) => this.waiters.push(resolve));
  }
  private give(b: SharedBuffer): void {
    const w = this.waiters.shift();
    if (w) w(b);
    else this.pool.push(b);
  }
  async write(offset: number, data: Uint8Array): Promise<number> {
    expect(data.length, 'request larger than the buffers').to.be.at.most(this.bufSize);
    const b = await this.take();
    try {
      const view = { ...b, bytes: b.bytes.subarray(0, data.length) };
      view.bytes.set(data);
      return await this.client.writeAsync(0, offset, view);
    } finally {
      this.give(b);
    }
  }
  async read(offset: number, length: number): Promise<{ status: number; data: Uint8Array }> {
    expect(length, 'request larger than the buffers').to.be.at.most(this.bufSize);
    const b = await this.take();
    try {
      const view = { ...b, bytes: b.bytes.subarray(0, length) };
      const status = await this.client.readAsync(0, offset, view);
      return { status, data: view.bytes.slice() };
    } finally {
      this.give(b);
    }
  }
  /** Reads the whole disk (1 MiB requests, several in flight). */
  async readAll(): Promise<Uint8Array> {
    const out = new Uint8Array(this.size);
    const jobs: Promise<void>[] = [];
    for (let off = 0; off < this.size; off += MiB) {
      const len = Math.min(MiB, this.size - off);
      jobs.push(this.read(off, len).then((r) => {
        expect(r.status, `read at ${off}`).to.equal(BlkStatus.Ok);
        out.set(r.data, off);
      }));
    }
    await Promise.all(jobs);
    return out;
  }
  flush(): Promise<number> {
    return this.client.flushAsync();
  }
  close(): Promise<void> {
    return this.client.close();
  }
}

// ---- the cases, for each store ----------------------------------------------------------

for (const kind of ['s3', 'file'] as const) {
  describe(`object-backed image over ${kind === 's3' ? 's3:// (s3rver)' : 'file: (local store)'}: frontend-driven`, function () {
    this.timeout(90_000);
    let be: ImageBackend;
    let dir: TmpDir;
    const gateways: CliProcess[] = [];
    const disks: Disk[] = [];
    let n = 0;

    before(async () => {
      be = await startImageBackend(kind, 'vhost-s3-objimg-');
    });
    after(async () => {
      await be?.stop();
    });
    beforeEach(() => {
      dir = new TmpDir('vhost-s3-objimg-sock-');
    });
    afterEach(async function () {
      for (const d of disks.splice(0)) await d.close().catch(() => undefined);
      const failed = this.currentTest?.state === 'failed';
      for (const g of gateways.splice(0)) {
        if (failed) console.log(g.describe());
        await g.kill();
      }
      dir.remove();
    });

    /** A new, empty image (created through the API: the CLI's own tests cover `image create`). */
    async function newImage(size: number): Promise<{ name: string; keys: ImageKeys; locator: string }> {
      const name = `img${++n}`;
      await createImage(be.store, be.keys(name), size, CS);
      return { name, keys: be.keys(name), locator: be.locator(name) };
    }

    async function gateway(locator: string, extra: string[] = []): Promise<{ g: CliProcess; disk: Disk }> {
      const socket = dir.file(`blk${gateways.length}.sock`);
      const g = await startBlkServer({ socket, image: locator, env: be.env, logLevel: 'warn', extra });
      gateways.push(g);
      const disk = await Disk.connect(socket);
      disks.push(disk);
      return { g, disk };
    }

    /** Ends a gateway: clean stop (flush, release the lease) or SIGKILL (nothing more is stored). */
    async function endGateway(g: CliProcess, disk: Disk, how: 'stop' | 'kill'): Promise<void> {
      await disk.close();
      disks.splice(disks.indexOf(disk), 1);
      if (how === 'kill') {
        await g.kill();
        return;
      }
      const st = await g.stop('SIGTERM');
      expect(st.code, `clean stop\n${g.describe()}`).to.equal(0);
    }

    it('random writes and reads of mixed sizes (512 B .. 1 MiB) match a reference; after FLUSH and kill -9, a fresh gateway reads it all back', async () => {
      const size = 16 * MiB;
      const img = await newImage(size);
      const ref = new Uint8Array(size);
      // Writes reach the store only through FLUSH (no timer) or a write ending a chunk.
      const { g, disk } = await gateway(img.locator, ['--writeback-delay', '0', '--cache-size', '4M', '--dirty-size', '64M']);
      expect(disk.size).to.equal(size);
      const next = rng(kind === 's3' ? 11 : 12);
      let ops = 0;
      let bytesWritten = 0;
      for (let batch = 0; batch < 40; batch++) {
        // Up to 8 requests in flight, on ranges that do not overlap (their order is undefined).
        const taken: [number, number][] = [];
        const jobs: Promise<void>[] = [];
        const pending: (() => void)[] = [];
        for (let k = 0; k < 8; k++) {
          const len = 512 * (1 + next(2 ** next(12))); // 512 B .. 1 MiB, mostly small
          const off = 512 * next((size - len) / 512 + 1);
          if (taken.some(([a, b]) => off < b && a < off + len)) continue;
          taken.push([off, off + len]);
          ops++;
          const what = next(10);
          if (what < 5) {
            const data = randomBytes(ops, len);
            bytesWritten += len;
            pending.push(() => ref.set(data, off));
            jobs.push(disk.write(off, data).then((s) => void expect(s, `write ${off}+${len}`).to.equal(BlkStatus.Ok)));
          } else if (what < 9) {
            const want = ref.slice(off, off + len);
            jobs.push(disk.read(off, len).then((r) => {
              expect(r.status, `read ${off}+${len}`).to.equal(BlkStatus.Ok);
              expectSame(r.data, want, `read ${off}+${len} (op ${ops})`, off);
            }));
          } else {
            pending.push(() => ref.fill(0, off, off + len));
            const zero = next(2) === 0
              ? disk.client.discardAsync(0, [{ offset: off, length: len }])
              : disk.client.writeZeroesAsync(0, [{ offset: off, length: len }], next(2) === 0);
            jobs.push(zero.then((s) => void expect(s, `zero ${off}+${len}`).to.equal(BlkStatus.Ok)));
          }
        }
        await Promise.all(jobs);
        for (const p of pending) p();
        if (batch % 10 === 9) expect(await disk.flush()).to.equal(BlkStatus.Ok);
      }
      expect(bytesWritten).to.be.greaterThan(2 * MiB);
      expectSame(await disk.readAll(), ref, 'whole disk through the writer');
      expect(await disk.flush()).to.equal(BlkStatus.Ok);
      await expectStoreHolds(be.store, img.keys, ref);
      // Only FLUSH made it durable: kill the writer (no shutdown flush) and read with a new process.
      await endGateway(g, disk, 'kill');
      const fresh = await gateway(img.locator, ['--readonly']);
      expectSame(await fresh.disk.readAll(), ref, 'whole disk through a fresh gateway');
    });

    it('writes crossing chunk boundaries merge with chunks stored earlier (read-modify-write with an empty cache)', async () => {
      const size = 16 * MiB;
      const img = await newImage(size);
      const ref = new Uint8Array(size);
      // Chunks 0..15 and the last two chunks stored by an earlier writer.
      const base = randomBytes(1, MiB);
      await storeBytes(be.store, img.keys, 0, base);
      ref.set(base, 0);
      const tail = randomBytes(2, 2 * CS);
      await storeBytes(be.store, img.keys, size - 2 * CS, tail);
      ref.set(tail, size - 2 * CS);

      const { g, disk } = await gateway(img.locator, ['--writeback-delay', '0']);
      const writes: [number, number][] = [
        [CS - 512, 1024], // one sector each side of a boundary
        [3 * CS - 4 * KiB, 2 * CS + 8 * KiB], // partial, whole, partial
        [7 * CS + 512, 512], // one sector inside a stored chunk
        [9 * CS + 100 * 512, 3 * CS], // three partial pieces... starting mid-chunk
        [size - CS - 512, 1024], // across the boundary of the last chunk
        [size - 512, 512], // the last sector
        [20 * CS - 512, 512 + CS + 512], // a chunk that was never stored, and its neighbours
      ];
      for (const [i, [off, len]] of writes.entries()) {
        const data = randomBytes(100 + i, len);
        expect(await disk.write(off, data), `write ${off}+${len}`).to.equal(BlkStatus.Ok);
        ref.set(data, off);
      }
      // Reads that need both the written sectors and the stored bytes around them.
      for (const [off, len] of [[0, MiB], [size - 4 * CS, 4 * CS], [19 * CS, 3 * CS], [CS - 1024, 2048]] as const) {
        const r = await disk.read(off, len);
        expect(r.status).to.equal(BlkStatus.Ok);
        expectSame(r.data, ref.subarray(off, off + len), `read ${off}+${len}`, off);
      }
      expect(await disk.flush()).to.equal(BlkStatus.Ok);
      await expectStoreHolds(be.store, img.keys, ref);
      await endGateway(g, disk, 'stop');
      const fresh = await gateway(img.locator, ['--readonly']);
      expectSame(await fresh.disk.readAll(), ref, 'whole disk through a fresh gateway');
    });

    it('an image whose size is not a whole number of chunks: the short last chunk is written, read and stored', async () => {
      const size = 2 * MiB + 3 * 512; // chunk 32 holds 3 sectors of disk
      const img = await newImage(size);
      const ref = new Uint8Array(size);
      const { g, disk } = await gateway(img.locator, ['--writeback-delay', '0']);
      expect(disk.size).to.equal(size);
      for (const [i, [off, len]] of ([[size - 512, 512], [32 * CS - 1024, 2048], [size - 4 * KiB, 4 * KiB - 512]] as const).entries()) {
        const data = randomBytes(200 + i, len);
        expect(await disk.write(off, data), `write ${off}+${len}`).to.equal(BlkStatus.Ok);
        ref.set(data, off);
      }
      expect((await disk.read(size - 512, 1024)).status, 'a read past the end').to.equal(BlkStatus.IoErr);
      expect(await disk.write(size, randomBytes(1, 512)), 'a write past the end').to.equal(BlkStatus.IoErr);
      expectSame((await disk.read(size - 64 * KiB, 64 * KiB)).data, ref.subarray(size - 64 * KiB), 'the end of the disk', size - 64 * KiB);
      expect(await disk.flush()).to.equal(BlkStatus.Ok);
      const last = (await storedChunks(be.store, img.keys)).get(32);
      expect(last, 'the short last chunk is stored').to.not.equal(undefined);
      expectSame(last!.subarray(0, 3 * 512), ref.subarray(32 * CS), 'stored last chunk');
      expect(isZero(last!.subarray(3 * 512)), 'past the end of the disk the chunk is zeros').to.equal(true);
      await endGateway(g, disk, 'kill');
      const fresh = await gateway(img.locator, ['--readonly']);
      expectSame(await fresh.disk.readAll(), ref, 'whole disk through a fresh gateway');
    });

    it('discard and write-zeroes delete whole chunks and zero partial ones', async () => {
      const size = 16 * MiB;
      const img = await newImage(size);
      const ref = new Uint8Array(size);
      const data = randomBytes(3, 16 * CS);
      await storeBytes(be.store, img.keys, 0, data); // chunks 0..15 stored
      ref.set(data, 0);
      const { g, disk } = await gateway(img.locator, ['--writeback-delay', '0']);
      // Chunks 16..19 only in the cache (written, not flushed).
      const cached = randomBytes(4, 4 * CS);
      expect(await disk.write(16 * CS, cached)).to.equal(BlkStatus.Ok);
      ref.set(cached, 16 * CS);

      const zeroes: [string, number, number][] = [
        ['discard', 1 * CS, 2 * CS], // chunks 1 and 2 whole
        ['discard', 3 * CS, CS / 2], // first half of chunk 3
        ['zeroes', 4 * CS + 3 * KiB, 2 * CS], // end of 4, all of 5, start of 6
        ['zeroes-unmap', 7 * CS, CS], // chunk 7 whole
        ['discard', 8 * CS, CS / 2], // chunk 8 in two halves: all zeros in the end
        ['zeroes', 8 * CS + CS / 2, CS / 2],
        ['discard', 16 * CS, CS], // a chunk that was never stored
        ['zeroes', 17 * CS + 512, 512], // one sector of a cached chunk
        ['discard', 12 * CS - 512, 512], // last sector of chunk 11
      ];
      for (const [how, off, len] of zeroes) {
        const st = how === 'discard'
          ? await disk.client.discardAsync(0, [{ offset: off, length: len }])
          : await disk.client.writeZeroesAsync(0, [{ offset: off, length: len }], how === 'zeroes-unmap');
        expect(st, `${how} ${off}+${len}`).to.equal(BlkStatus.Ok);
        ref.fill(0, off, off + len);
      }
      // Two ranges in one request.
      expect(await disk.client.discardAsync(0, [{ offset: 13 * CS, length: CS }, { offset: 14 * CS + 4 * KiB, length: 4 * KiB }])).to.equal(BlkStatus.Ok);
      ref.fill(0, 13 * CS, 14 * CS);
      ref.fill(0, 14 * CS + 4 * KiB, 14 * CS + 8 * KiB);

      expectSame((await disk.read(0, 16 * CS)).data, ref.subarray(0, 16 * CS), 'read after discards');
      expectSame((await disk.read(16 * CS, 8 * CS)).data, ref.subarray(16 * CS, 24 * CS), 'read after discards', 16 * CS);
      expect(await disk.flush()).to.equal(BlkStatus.Ok);
      const chunks = await storedChunks(be.store, img.keys);
      for (const gone of [1, 2, 5, 7, 8, 13, 16]) expect(chunks.has(gone), `chunk ${gone} object deleted`).to.equal(false);
      for (const kept of [0, 3, 4, 6, 9, 11, 14, 17]) expect(chunks.has(kept), `chunk ${kept} object kept`).to.equal(true);
      await expectStoreHolds(be.store, img.keys, ref);
      await endGateway(g, disk, 'stop');
      const fresh = await gateway(img.locator, ['--readonly']);
      expectSame(await fresh.disk.readAll(), ref, 'whole disk through a fresh gateway');
    });

    it('many writes to the same chunks in flight at once (also while the chunk is fetched and while it is uploaded)', async () => {
      const size = 16 * MiB;
      const img = await newImage(size);
      const ref = new Uint8Array(size);
      const stored = randomBytes(5, 2 * CS);
      await storeBytes(be.store, img.keys, 2 * CS, stored); // chunks 2 and 3 exist in the store
      ref.set(stored, 2 * CS);
      const { g, disk } = await gateway(img.locator, ['--writeback-delay', '0']);

      const next = rng(77);
      const round = async (seed: number, withFlush: boolean): Promise<void> => {
        const jobs: Promise<unknown>[] = [];
        const updates: (() => void)[] = [];
        const used = new Set<number>();
        // 96 one-sector writes and 32 1 KiB writes spread over chunks 2, 3 (stored) and 5 (not).
        for (let k = 0; k < 128; k++) {
          const chunk = [2, 3, 5][k % 3]!;
          const sectors = k < 96 ? 1 : 2;
          let s: number;
          do s = next(CS / 512 - 1); while (used.has(chunk * 1000 + s) || used.has(chunk * 1000 + s + sectors - 1));
          for (let j = 0; j < sectors; j++) used.add(chunk * 1000 + s + j);
          const off = chunk * CS + s * 512;
          const data = randomBytes(seed * 1000 + k, sectors * 512);
          updates.push(() => ref.set(data, off));
          jobs.push(disk.write(off, data).then((st) => expect(st, `write ${off}`).to.equal(BlkStatus.Ok)));
          if (withFlush && k === 64) jobs.push(disk.flush().then((st) => expect(st, 'flush in the middle').to.equal(BlkStatus.Ok)));
        }
        // Reads of sectors nobody writes in this round, in flight with the writes.
        const unwritten = [2, 3].map((chunk) => {
          let s: number;
          do s = next(CS / 512); while (used.has(chunk * 1000 + s));
          return chunk * CS + s * 512;
        });
        const wantUnwritten = unwritten.map((off) => ref.slice(off, off + 512));
        jobs.push(...unwritten.map((off, i) => disk.read(off, 512).then((r) => expectSame(r.data, wantUnwritten[i]!, `read ${off} during writes`, off))));
        await Promise.all(jobs);
        for (const u of updates) u();
      };
      await round(1, false); // the first writes race the fetch of chunks 2 and 3
      await round(2, true); // a FLUSH among them: writes during the upload go to a copy
      await round(3, true);
      expectSame((await disk.read(0, 8 * CS)).data, ref.subarray(0, 8 * CS), 'chunks 0..7 after the rounds');
      expect(await disk.flush()).to.equal(BlkStatus.Ok);
      await expectStoreHolds(be.store, img.keys, ref);
      await endGateway(g, disk, 'kill');
      const fresh = await gateway(img.locator, ['--readonly']);
      expectSame((await fresh.disk.read(0, 8 * CS)).data, ref.subarray(0, 8 * CS), 'chunks 0..7 through a fresh gateway');
    });

    it('an image much bigger than the cache is written and read back (1 MiB of cache, 24 MiB of disk)', async () => {
      const size = 24 * MiB;
      const img = await newImage(size);
      const ref = new Uint8Array(size);
      const { g, disk } = await gateway(img.locator, ['--cache-size', '1M', '--dirty-size', '1M', '--readahead', '2']);
      // Sequential 1 MiB writes over 16 MiB (16 times the cache), 4 in flight.
      const jobs: Promise<void>[] = [];
      for (let off = 0; off < 16 * MiB; off += MiB) {
        const data = randomBytes(off / MiB + 1, MiB);
        ref.set(data, off);
        jobs.push(disk.write(off, data).then((s) => void expect(s, `write ${off}`).to.equal(BlkStatus.Ok)));
        if (jobs.length >= 4) await jobs.shift();
      }
      await Promise.all(jobs);
      // Small random writes that each dirty (and fetch) a whole evicted chunk.
      const next = rng(5);
      for (let k = 0; k < 32; k++) {
        const off = 512 * next(size / 512 - 8);
        const data = randomBytes(1000 + k, 4 * KiB);
        ref.set(data, off);
        expect(await disk.write(off, data)).to.equal(BlkStatus.Ok);
      }
      // Random reads of evicted chunks, then everything in order.
      for (let k = 0; k < 24; k++) {
        const off = 512 * next(size / 512 - 128);
        const r = await disk.read(off, 64 * KiB);
        expectSame(r.data, ref.subarray(off, off + 64 * KiB), `random read ${off}`, off);
      }
      expectSame(await disk.readAll(), ref, 'whole disk through the writer');
      expect(await disk.flush()).to.equal(BlkStatus.Ok);
      // The cache stayed small: peak resident memory well below the 64 MiB the image holds.
      const hwm = Number(/VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${g.pid}/status`, 'utf8'))![1]) * KiB;
      console.log(`      gateway peak RSS ${(hwm / MiB).toFixed(0)} MiB`);
      await endGateway(g, disk, 'stop');
      const fresh = await gateway(img.locator, ['--readonly', '--cache-size', '1M']);
      expectSame(await fresh.disk.readAll(), ref, 'whole disk through a fresh gateway');
    });

    it('--writethrough stores every write before completing it (write-back does not)', async () => {
      const size = 16 * MiB;
      const img = await newImage(size);
      const off = 3 * CS + 17 * 512;
      const data = randomBytes(6, 4 * KiB);
      const stored = async (i: number): Promise<Uint8Array | null> =>
        (await storedChunks(be.store, img.keys)).get(i) ?? null;

      // Write-back (and no timer): the write completes, the store has nothing until FLUSH.
      {
        const { g, disk } = await gateway(img.locator, ['--writeback-delay', '0']);
        expect(await disk.write(off, data)).to.equal(BlkStatus.Ok);
        expect(await stored(3), 'write-back: nothing stored before FLUSH').to.equal(null);
        expect(await disk.flush()).to.equal(BlkStatus.Ok);
        expectSame((await stored(3))!.subarray(17 * 512, 17 * 512 + data.length), data, 'write-back: stored after FLUSH');
        await endGateway(g, disk, 'stop');
      }
      // Write-through: each completed request is already in the store, no FLUSH sent.
      const { g, disk } = await gateway(img.locator, ['--writethrough', '--writeback-delay', '0']);
      const data2 = randomBytes(7, 8 * KiB);
      const off2 = 6 * CS - 4 * KiB; // across a boundary: two chunks stored
      expect(await disk.write(off2, data2)).to.equal(BlkStatus.Ok);
      const c5 = await stored(5);
      const c6 = await stored(6);
      expect(c5, 'chunk 5 stored when the write completed').to.not.equal(null);
      expect(c6, 'chunk 6 stored when the write completed').to.not.equal(null);
      expectSame(c5!.subarray(CS - 4 * KiB), data2.subarray(0, 4 * KiB), 'chunk 5');
      expectSame(c6!.subarray(0, 4 * KiB), data2.subarray(4 * KiB), 'chunk 6');
      // An overwrite of a stored chunk is visible at once too.
      const data3 = randomBytes(8, 512);
      expect(await disk.write(off, data3)).to.equal(BlkStatus.Ok);
      const c3 = (await stored(3))!;
      expectSame(c3.subarray(17 * 512, 18 * 512), data3, 'chunk 3 overwritten');
      expectSame(c3.subarray(18 * 512, 17 * 512 + data.length), data.subarray(512), 'chunk 3 keeps the rest');
      // A whole-chunk discard deletes the object before completing.
      expect(await disk.client.discardAsync(0, [{ offset: 5 * CS, length: CS }])).to.equal(BlkStatus.Ok);
      expect(await stored(5), 'chunk 5 deleted when the discard completed').to.equal(null);
      await endGateway(g, disk, 'kill');
    });

    it('a read-only open takes no lease, reads, and refuses writes with IOERR', async () => {
      const size = 16 * MiB;
      const img = await newImage(size);
      const data = randomBytes(9, 2 * CS);
      await storeBytes(be.store, img.keys, 4 * CS, data);
      const head = async (): Promise<unknown> => be.store.head(img.keys.lease);

      // Without a writer: no lease object appears.
      const ro = await gateway(img.locator, ['--readonly']);
      expect(ro.disk.client.readOnly).to.equal(true);
      expect(await head(), 'a read-only open writes no lease').to.equal(null);
      expectSame((await ro.disk.read(4 * CS, 2 * CS)).data, data, 'read-only read');
      expect(await ro.disk.write(0, randomBytes(10, 4096)), 'write on a read-only disk').to.equal(BlkStatus.IoErr);
      expect(await ro.disk.client.discardAsync(0, [{ offset: 4 * CS, length: CS }])).to.equal(BlkStatus.IoErr);
      expect(await ro.disk.client.writeZeroesAsync(0, [{ offset: 4 * CS, length: CS }])).to.equal(BlkStatus.IoErr);
      expect(await ro.disk.flush()).to.equal(BlkStatus.Ok);
      await endGateway(ro.g, ro.disk, 'stop');
      expect((await storedChunks(be.store, img.keys)).size, 'nothing changed in the store').to.equal(2);

      // With a writer holding the lease: a second, read-only, gateway still opens.
      const w = await gateway(img.locator);
      const lease = JSON.parse(new TextDecoder().decode((await be.store.get(img.keys.lease)).body)) as { pid: number };
      expect(lease.pid).to.equal(w.g.pid);
      const ro2 = await gateway(img.locator, ['--readonly']);
      expectSame((await ro2.disk.read(4 * CS, 2 * CS)).data, data, 'read-only read beside a writer');
      expect(await ro2.disk.write(4 * CS, randomBytes(11, 512))).to.equal(BlkStatus.IoErr);
      const after = JSON.parse(new TextDecoder().decode((await be.store.get(img.keys.lease)).body)) as { pid: number };
      expect(after.pid, 'the writer still holds the lease').to.equal(w.g.pid);
    });
  });
}
