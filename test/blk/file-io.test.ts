// The file I/O engines directly: large requests (handed to io-wq with IOSQE_ASYNC) and
// small ones (tried inline at submit) mixed in one batch must land and read back alike.
import { expect } from 'chai';
import { closeSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { ASYNC_MIN_BYTES, createFileIo } from '../../src/blk/file-io.js';
import { native, type Mapping } from '../../src/native/index.js';
import type { Segment } from '../../src/virtio/memory.js';
import { TmpDir, makeRawFile, patternBytes } from '../support/tmp.js';

const MiB = 1 << 20;

describe('blk file I/O engines', function () {
  this.timeout(30000);
  let dir: TmpDir;
  let memfd: number;
  let mem: Mapping;

  beforeEach(() => {
    dir = new TmpDir();
    memfd = native.memfdCreate('guest', 16 * MiB);
    mem = native.mmap(memfd, 0, 16 * MiB, true);
  });
  afterEach(() => {
    mem.unmap();
    native.close(memfd);
    dir.remove();
  });

  const seg = (offset: number, length: number): Segment => ({ buf: mem.windows[0]!, offset, length, hostAddr: mem.address + offset });

  for (const engine of ['uring', 'sync'] as const) {
    it(`writes and reads large scattered and small requests in one batch (${engine})`, async () => {
      const path = makeRawFile(dir.file('disk.raw'), 8 * MiB);
      const fd = openSync(path, 'r+');
      const io = createFileIo(engine);
      try {
        const bytes = new Uint8Array(mem.windows[0]!);
        const big = patternBytes(1, 2 * MiB);
        const small = patternBytes(2, 4096);
        bytes.set(big, 0);
        bytes.set(small, 3 * MiB);
        expect(2 * MiB).to.be.at.least(ASYNC_MIN_BYTES);
        const results: number[] = [];
        await new Promise<void>((resolve) => {
          let left = 3;
          const done = (r: number): void => {
            results.push(r);
            if (--left === 0) resolve();
          };
          // 2 MiB in three uneven segments, a 512 KiB one, and a 4 KiB one
          io.writev(fd, [seg(0, 3 * 65536), seg(3 * 65536, MiB), seg(3 * 65536 + MiB, MiB - 3 * 65536)], 0, done);
          io.writev(fd, [seg(0, ASYNC_MIN_BYTES)], 4 * MiB, done);
          io.writev(fd, [seg(3 * MiB, 4096)], 6 * MiB, done);
          io.unplug();
        });
        expect(results.sort((a, b) => a - b)).to.deep.equal([4096, ASYNC_MIN_BYTES, 2 * MiB]);
        const file = readFileSync(path);
        expect(Buffer.compare(file.subarray(0, 2 * MiB), big)).to.equal(0);
        expect(Buffer.compare(file.subarray(4 * MiB, 4 * MiB + ASYNC_MIN_BYTES), big.subarray(0, ASYNC_MIN_BYTES))).to.equal(0);
        expect(Buffer.compare(file.subarray(6 * MiB, 6 * MiB + 4096), small)).to.equal(0);

        const reads: number[] = [];
        await new Promise<void>((resolve) => {
          let left = 2;
          const done = (r: number): void => {
            reads.push(r);
            if (--left === 0) resolve();
          };
          io.readv(fd, [seg(8 * MiB, MiB), seg(9 * MiB, MiB)], 0, done);
          io.readv(fd, [seg(12 * MiB, 4096)], 6 * MiB, done);
          io.unplug();
        });
        expect(reads.sort((a, b) => a - b)).to.deep.equal([4096, 2 * MiB]);
        expect(Buffer.compare(bytes.subarray(8 * MiB, 10 * MiB), big)).to.equal(0);
        expect(Buffer.compare(bytes.subarray(12 * MiB, 12 * MiB + 4096), small)).to.equal(0);
      } finally {
        io.close();
        closeSync(fd);
      }
    });
  }

  it('reads more requests in one turn than the ring has slots: the rest wait and complete, bytes in place (uring)', async () => {
    const n = 24;
    const size = ASYNC_MIN_BYTES; // handed to io-wq: nothing completes inside a submission
    const content = patternBytes(7, n * size);
    const path = dir.file('data.raw');
    writeFileSync(path, content);
    const fd = openSync(path, 'r');
    const io = createFileIo('uring', 4); // 4 SQ entries, 16 request slots
    try {
      const results = new Array<number>(n).fill(0);
      await new Promise<void>((resolve) => {
        let left = n;
        for (let i = 0; i < n; i++) {
          // Backwards, so that each lands somewhere else than a same-order copy would put it.
          io.readv(fd, [seg(i * size, size)], (n - 1 - i) * size, (r) => {
            results[i] = r;
            if (--left === 0) resolve();
          });
          io.unplugSoon();
        }
      });
      expect(results.every((r) => r === size)).to.equal(true);
      const bytes = new Uint8Array(mem.windows[0]!);
      for (let i = 0; i < n; i++) {
        const want = content.subarray((n - 1 - i) * size, (n - i) * size);
        expect(Buffer.compare(bytes.subarray(i * size, (i + 1) * size), want), `request ${i}`).to.equal(0);
      }
    } finally {
      io.close();
      closeSync(fd);
    }
  });

  it('unplugSoon() sends the requests prepared in one turn in one submission, once the turn is done (uring)', async () => {
    const path = makeRawFile(dir.file('disk.raw'), 4 * MiB);
    const fd = openSync(path, 'r');
    const io = createFileIo('uring');
    if (io.engine !== 'uring') {
      io.close();
      closeSync(fd);
      return; // no io_uring on this host: nothing batched to check
    }
    const ring = (io as unknown as { ring: { submit(reap?: boolean): number } }).ring;
    const submit = ring.submit.bind(ring);
    const submitted: number[] = [];
    // (The addon's methods are read-only properties of the prototype: shadowed by defining.)
    Object.defineProperty(ring, 'submit', {
      value: (reap?: boolean): number => {
        const n = submit(reap);
        submitted.push(n);
        return n;
      },
    });
    try {
      const results: number[] = [];
      const all = new Promise<void>((resolve) => {
        for (let i = 0; i < 4; i++) {
          // 4 KiB reads: a submission would complete them inline (page cache), within it.
          io.readv(fd, [seg(i * 4096, 4096)], i * 4096, (r) => {
            results.push(r);
            if (results.length === 4) resolve();
          });
          io.unplugSoon();
        }
      });
      expect(submitted).to.deep.equal([]); // nothing sent while this turn runs
      await all;
      expect(submitted).to.deep.equal([4]);
      expect(results).to.deep.equal([4096, 4096, 4096, 4096]);
      // Closed with a turn's requests prepared: the queued unplug does nothing (no EBADF thrown).
      io.readv(fd, [seg(0, 4096)], 0, () => expect.fail('a request prepared before close() completed'));
      io.unplugSoon();
      io.close();
      await new Promise((resolve) => setImmediate(resolve));
      expect(submitted).to.deep.equal([4]);
    } finally {
      io.close();
      closeSync(fd);
    }
  });
  it('maxAsync: at most that many IOSQE_ASYNC requests in the kernel, the others go in arrival order, bytes in place (uring)', async () => {
    const n = 8;
    const size = ASYNC_MIN_BYTES;
    const content = patternBytes(11, n * size);
    const path = dir.file('data.raw');
    writeFileSync(path, content);
    const fd = openSync(path, 'r');
    const io = createFileIo('uring', 64, { maxAsync: 2 });
    if (io.engine !== 'uring') {
      io.close();
      closeSync(fd);
      return; // no io_uring on this host
    }
    const ring = (io as unknown as { ring: { prepReadv(...a: unknown[]): void } }).ring;
    const prep = ring.prepReadv.bind(ring);
    const prepared: number[] = []; // file offsets, in the order they reached the ring
    let inKernel = 0;
    let most = 0;
    Object.defineProperty(ring, 'prepReadv', {
      value: (...a: unknown[]): void => {
        prep(...a);
        prepared.push(a[3] as number);
        most = Math.max(most, ++inKernel);
      },
    });
    try {
      const order: number[] = [];
      await new Promise<void>((resolve) => {
        for (let i = 0; i < n; i++) {
          io.readv(fd, [seg(i * size, size)], i * size, (r) => {
            inKernel--;
            expect(r).to.equal(size);
            order.push(i);
            if (order.length === n) resolve();
          });
        }
        io.unplugSoon();
      });
      expect(most).to.equal(2);
      expect(prepared).to.deep.equal([...Array(n).keys()].map((i) => i * size));
      expect(Buffer.compare(new Uint8Array(mem.windows[0]!, 0, n * size), content)).to.equal(0);
    } finally {
      io.close();
      closeSync(fd);
    }
  });

  it('maxAsync leaves small (inline) requests alone and refuses less than 1', async () => {
    expect(() => createFileIo('uring', 64, { maxAsync: 0 })).to.throw(RangeError);
    const path = makeRawFile(dir.file('disk.raw'), 4 * MiB);
    const fd = openSync(path, 'r');
    const io = createFileIo('uring', 64, { maxAsync: 1 });
    const ring = (io as unknown as { ring?: { prepReadv(...a: unknown[]): void } }).ring;
    let prepared = 0;
    if (ring !== undefined) {
      const prep = ring.prepReadv.bind(ring);
      Object.defineProperty(ring, 'prepReadv', { value: (...a: unknown[]): void => { prep(...a); prepared++; } });
    }
    try {
      const atFirst: number[] = [];
      const reads = [0, 1, 2, 3].map((i) => new Promise<number>((resolve) => {
        io.readv(fd, [seg(i * 4096, 4096)], i * 4096, (r) => {
          atFirst.push(prepared);
          resolve(r);
        });
      }));
      io.unplugSoon();
      const results = await Promise.all(reads);
      expect(results).to.deep.equal([4096, 4096, 4096, 4096]);
      // All four were in the ring before any completed (none waited for another).
      if (ring !== undefined) expect(atFirst[0]).to.equal(4);
    } finally {
      io.close();
      closeSync(fd);
    }
  });
});
