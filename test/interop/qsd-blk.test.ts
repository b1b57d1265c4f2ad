// Layer 2, both ways: our QEMU-free frontend (BlkClient) against qemu-storage-daemon's
// vhost-user-blk export (the reference backend) and against vhost-s3 started through its
// command line, with the same assertions for both, so that neither our frontend nor our
// backend can hide a mistake the other one shares. The host reads and writes the raw file
// directly to check where the bytes are. `vhost-s3 bench blk --verify` (a child process)
// is run against both peers as well.
import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import { openSync, closeSync, readSync, statSync } from 'node:fs';

import { BlkClient, STATUS_BAD_REPLY } from '../../src/frontend/blk-client.js';
import { BlkStatus } from '../../src/blk/protocol.js';
import { startQsdBlk } from '../support/guest/index.js';
import { runCli, startBlkServer } from '../support/cli.js';
import { TmpDir, makeRawFile, patternBytes, writeAt } from '../support/tmp.js';

const MiB = 1 << 20;
const SIZE = 32 * MiB;
const haveQsd = spawnSync('qemu-storage-daemon', ['--version']).status === 0;

interface Running {
  stop(): Promise<void>;
  describe(): string;
}

interface Peer {
  name: string;
  /** What GET_ID answers (qemu-storage-daemon has a fixed serial; vhost-s3 serves --serial). */
  serial: string;
  available: boolean;
  start(o: { image: string; socket: string; queues: number; readOnly?: boolean }): Promise<Running>;
}

const peers: Peer[] = [
  {
    name: 'qemu-storage-daemon',
    serial: 'vhost_user_blk',
    available: haveQsd,
    async start(o) {
      const q = await startQsdBlk({ image: o.image, socket: o.socket, numQueues: o.queues, writable: !o.readOnly, discard: 'unmap' });
      return { stop: () => q.stop(), describe: () => q.output() };
    },
  },
  {
    name: 'vhost-s3 (child process)',
    serial: 'INTEROP-DISK-01',
    available: true,
    async start(o) {
      const p = await startBlkServer({ socket: o.socket, image: `file:${o.image}`, queues: o.queues, readonly: o.readOnly, serial: 'INTEROP-DISK-01', logLevel: 'warn' });
      return {
        async stop() {
          const st = await p.stop('SIGTERM');
          if (st.code !== 0) throw new Error(`vhost-s3 exited with ${st.code ?? st.signal} on SIGTERM\n${p.describe()}`);
        },
        describe: () => p.describe(),
      };
    },
  },
];

function readFileAt(path: string, offset: number, length: number): Buffer {
  const fd = openSync(path, 'r');
  try {
    const buf = Buffer.alloc(length);
    const n = readSync(fd, buf, 0, length, offset);
    return buf.subarray(0, n);
  } finally {
    closeSync(fd);
  }
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
}

for (const peer of peers) {
  describe(`interop: our blk frontend against ${peer.name}`, function () {
    this.timeout(60_000);
    let dir: TmpDir;
    let image: string;
    let socket: string;
    let backend: Running | null = null;
    let client: BlkClient | null = null;

    before(function () {
      if (!peer.available) this.skip();
    });

    beforeEach(() => {
      dir = new TmpDir('vhost-s3-interop-');
      image = makeRawFile(dir.file('disk.raw'), SIZE);
      socket = dir.file('blk.sock');
    });

    afterEach(async function () {
      await client?.close();
      client = null;
      const b = backend;
      backend = null;
      if (this.currentTest?.state === 'failed' && b) console.log(`--- ${peer.name} output ---\n${b.describe()}`);
      await b?.stop();
      dir.remove();
    });

    async function start(o: { queues?: number; readOnly?: boolean } = {}): Promise<BlkClient> {
      backend = await peer.start({ image, socket, queues: o.queues ?? 2, readOnly: o.readOnly });
      client = await BlkClient.connect(socket, { queues: o.queues ?? 2 });
      return client;
    }

    it('reads on every queue what the host wrote into the file', async () => {
      const regions = [
        { offset: 0, data: patternBytes(11, 8192) },
        { offset: MiB + 512, data: patternBytes(12, 3 * 512) },
        { offset: SIZE - 4096, data: patternBytes(13, 4096) },
      ];
      for (const r of regions) writeAt(image, r.offset, r.data);
      const c = await start({ queues: 2 });
      expect(c.numQueues).to.equal(2);
      expect(c.capacity).to.equal(SIZE);
      expect(c.readOnly).to.equal(false);
      for (let q = 0; q < 2; q++) {
        for (const r of regions) {
          const buf = c.allocBuffer(r.data.length);
          expect(await c.readAsync(q, r.offset, buf), `read @${r.offset} on queue ${q}`).to.equal(BlkStatus.Ok);
          expect(sameBytes(buf.bytes, r.data), `data @${r.offset} on queue ${q}`).to.equal(true);
        }
      }
      // A never-written region reads as zeros.
      const z = c.allocBuffer(64 * 1024);
      z.bytes.fill(0xee);
      expect(await c.readAsync(1, 5 * MiB, z)).to.equal(BlkStatus.Ok);
      expect(z.bytes.every((b) => b === 0)).to.equal(true);
    });

    it('writes (scattered buffers, first and last sector) are in the file after FLUSH', async () => {
      const c = await start();
      const writes = [
        { offset: 0, data: patternBytes(21, 16 * 1024) },
        { offset: 7 * MiB + 512, data: patternBytes(22, 5 * 512) },
        { offset: SIZE - 512, data: patternBytes(23, 512) },
      ];
      for (const [i, w] of writes.entries()) {
        // Split each write over two buffers (two descriptors) at a sector boundary.
        const cut = Math.max(512, Math.floor(w.data.length / 1024) * 512);
        const parts = cut < w.data.length ? [w.data.subarray(0, cut), w.data.subarray(cut)] : [w.data];
        const bufs = parts.map((p) => {
          const b = c.allocBuffer(p.length);
          b.bytes.set(p);
          return b;
        });
        expect(await c.writeAsync(i % 2, w.offset, bufs), `write @${w.offset}`).to.equal(BlkStatus.Ok);
      }
      expect(await c.flushAsync(0)).to.equal(BlkStatus.Ok);
      // The host sees the bytes while the backend still runs.
      for (const w of writes) expect(sameBytes(readFileAt(image, w.offset, w.data.length), w.data), `file @${w.offset}`).to.equal(true);
      // Neighbours are untouched.
      expect(readFileAt(image, 7 * MiB, 512).every((b) => b === 0)).to.equal(true);
      expect(readFileAt(image, SIZE - 1024, 512).every((b) => b === 0)).to.equal(true);
    });

    it('multiqueue: 64 requests in flight on each of 2 queues, read back crosswise', async () => {
      const c = await start({ queues: 2 });
      expect(c.numQueues).to.equal(2);
      const BS = 16 * 1024;
      const N = 64;
      const base = 8 * MiB;
      const data = Array.from({ length: 2 * N }, (_, i) => patternBytes(1000 + i, BS));
      const bufs = data.map((d) => {
        const b = c.allocBuffer(BS);
        b.bytes.set(d);
        return b;
      });
      // Block i goes through queue i % 2; all submitted in the same turn of the event loop.
      const st = await Promise.all(bufs.map((b, i) => c.writeAsync(i % 2, base + i * BS, b)));
      expect(st.every((s) => s === BlkStatus.Ok), `write statuses ${st.join(',')}`).to.equal(true);
      expect(await c.flushAsync(1)).to.equal(BlkStatus.Ok);
      const rbufs = data.map(() => c.allocBuffer(BS));
      const rs = await Promise.all(rbufs.map((b, i) => c.readAsync((i + 1) % 2, base + i * BS, b)));
      expect(rs.every((s) => s === BlkStatus.Ok), `read statuses ${rs.join(',')}`).to.equal(true);
      rbufs.forEach((b, i) => expect(sameBytes(b.bytes, data[i]!), `block ${i} read through queue ${(i + 1) % 2}`).to.equal(true));
      const file = readFileAt(image, base, 2 * N * BS);
      data.forEach((d, i) => expect(sameBytes(file.subarray(i * BS, (i + 1) * BS), d), `file block ${i}`).to.equal(true));
      expect(c.broken).to.equal(false);
    });

    it('DISCARD punches holes, WRITE_ZEROES zeroes, GET_ID answers, out-of-range requests fail', async () => {
      const region = 12 * MiB;
      writeAt(image, region, patternBytes(31, 4 * MiB));
      const blocksBefore = statSync(image).blocks;
      const c = await start();
      expect(await c.discardAsync(0, [{ offset: region, length: 2 * MiB }])).to.equal(BlkStatus.Ok);
      expect(await c.writeZeroesAsync(1, [{ offset: region + 2 * MiB, length: MiB }], false)).to.equal(BlkStatus.Ok);
      expect(await c.flushAsync(0)).to.equal(BlkStatus.Ok);
      const buf = c.allocBuffer(4 * MiB);
      expect(await c.readAsync(0, region, buf)).to.equal(BlkStatus.Ok);
      expect(buf.bytes.subarray(0, 3 * MiB).every((b) => b === 0), 'discarded and zeroed ranges read as zeros').to.equal(true);
      expect(sameBytes(buf.bytes.subarray(3 * MiB), patternBytes(31, 4 * MiB).subarray(3 * MiB)), 'the rest is intact').to.equal(true);
      expect(readFileAt(image, region, 3 * MiB).every((b) => b === 0), 'file zeros').to.equal(true);
      const freed = (blocksBefore - statSync(image).blocks) * 512;
      expect(freed, 'bytes of storage freed by DISCARD').to.be.at.least(2 * MiB);

      const id = await c.getIdAsync(0);
      expect(id.status).to.equal(BlkStatus.Ok);
      expect(id.id).to.equal(peer.serial);

      const one = c.allocBuffer(512);
      expect(await c.readAsync(0, SIZE, one), 'read at the capacity').to.equal(BlkStatus.IoErr);
      expect(await c.writeAsync(1, SIZE - 512, [one, c.allocBuffer(512)]), 'write across the end').to.equal(BlkStatus.IoErr);
      expect(await c.readAsync(0, SIZE - 512, one), 'the last sector is still readable').to.equal(BlkStatus.Ok);
      expect(c.broken).to.equal(false);
    });

    it('read-only export: reads work, writes fail and leave the file alone', async () => {
      const data = patternBytes(41, 4096);
      writeAt(image, 4096, data);
      const c = await start({ readOnly: true, queues: 1 });
      expect(c.readOnly).to.equal(true);
      const r = c.allocBuffer(4096);
      expect(await c.readAsync(0, 4096, r)).to.equal(BlkStatus.Ok);
      expect(sameBytes(r.bytes, data)).to.equal(true);
      const w = c.allocBuffer(4096);
      w.bytes.fill(0x5a);
      const st = await c.writeAsync(0, 4096, w);
      expect(st).to.be.oneOf([BlkStatus.IoErr, BlkStatus.Unsupp]);
      expect(st).not.to.equal(STATUS_BAD_REPLY);
      expect(sameBytes(readFileAt(image, 4096, 4096), data), 'file unchanged').to.equal(true);
    });

    it('a second connection sees what the first one wrote (reconnect from a clean state)', async () => {
      const c1 = await start({ queues: 2 });
      const data = patternBytes(51, 64 * 1024);
      const b = c1.allocBuffer(data.length);
      b.bytes.set(data);
      expect(await c1.writeAsync(1, 20 * MiB, b)).to.equal(BlkStatus.Ok);
      expect(await c1.flushAsync(1)).to.equal(BlkStatus.Ok);
      await c1.close();
      client = null;
      for (const queues of [1, 2]) {
        // Different ring sizes and memory layout each time: nothing of the old session may leak.
        const c2 = await BlkClient.connect(socket, { queues, queueSize: 64 * queues, memorySize: 16 * MiB * queues });
        client = c2;
        expect(c2.numQueues).to.equal(queues);
        const r = c2.allocBuffer(data.length);
        expect(await c2.readAsync(queues - 1, 20 * MiB, r)).to.equal(BlkStatus.Ok);
        expect(sameBytes(r.bytes, data), `data after reconnect with ${queues} queue(s)`).to.equal(true);
        await c2.close();
        client = null;
      }
    });

    it('vhost-s3 bench blk --verify --json runs against it with 0 errors', async () => {
      backend = await peer.start({ image, socket, queues: 2 });
      const r = await runCli(['bench', 'blk', '--socket', socket, '--rw', 'randrw', '--bs', '4k', '--iodepth', '8', '--queues', '2',
        '--runtime', '2', '--verify', '--json', '--log-level', 'warn'], { timeoutMs: 30_000 });
      expect(r.code, `bench exit\n${r.stdout}\n${r.stderr}`).to.equal(0);
      const lines = r.stdout.trim().split('\n');
      expect(lines.length, r.stdout).to.equal(1);
      const res = JSON.parse(lines[0]!) as { errors: number; ios: number; iops: number; verified_bytes: number; lat_us: { p50: number; p99: number } };
      expect(res.errors).to.equal(0);
      expect(res.ios).to.be.greaterThan(100);
      expect(res.iops).to.be.greaterThan(0);
      expect(res.verified_bytes, 'bytes read back and verified').to.be.greaterThan(0);
      expect(res.lat_us.p99).to.be.at.least(res.lat_us.p50);
      // A sequential write of a byte budget, then a verifying sequential read of the same blocks.
      const w = await runCli(['bench', 'blk', '--socket', socket, '--rw', 'read', '--bs', '64k', '--iodepth', '4',
        '--size', '4M', '--verify', '--json', '--log-level', 'warn'], { timeoutMs: 30_000 });
      expect(w.code, `bench exit\n${w.stdout}\n${w.stderr}`).to.equal(0);
      const wr = JSON.parse(w.stdout) as { errors: number; verified_bytes: number };
      expect(wr.errors).to.equal(0);
      expect(wr.verified_bytes).to.equal(4 * MiB);
    });
  });
}
