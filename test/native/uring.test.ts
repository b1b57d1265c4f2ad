import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import { closeSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, native, Uring } from '../../src/native/index.js';
import { collectGarbage, fdCount, nativeError, useFileAndMemory } from './helpers.js';

interface Batch {
  tags: number[];
  results: number[];
}

/** A ring whose completions are collected; `wait(n)` resolves once n have arrived. */
function collectingRing(entries: number) {
  const batches: Batch[] = [];
  const done = new Map<number, number>();
  let waiter: { n: number; resolve: () => void } | undefined;
  const ring = native.createUring(entries, (tags, results, count) => {
    const batch: Batch = { tags: [], results: [] };
    for (let i = 0; i < count; i++) {
      batch.tags.push(tags[i]!);
      batch.results.push(results[i]!);
      done.set(tags[i]!, results[i]!);
    }
    batches.push(batch);
    if (waiter && done.size >= waiter.n) waiter.resolve();
  });
  const wait = (n: number) =>
    new Promise<void>((resolve) => {
      if (done.size >= n) resolve();
      else waiter = { n, resolve };
    });
  return { ring, batches, done, wait };
}

describe('native: io_uring', function () {
  const fx = useFileAndMemory('vhs-uring-');

  before(function () {
    const probe = native.createUring(4, () => undefined);
    if (!probe) this.skip();
    probe.close();
  });

  it('runs a batch of writev, fdatasync and readv with their tags', async () => {
    const path = join(fx.dir, 'disk');
    writeFileSync(path, Buffer.alloc(0));
    const fd = openSync(path, 'r+');
    const { ring, batches, done, wait } = collectingRing(8);
    try {
      const bytes = new Uint8Array(fx.mem.windows[0]!);
      bytes.fill(1, 0, 4096);
      bytes.fill(2, 8192, 8192 + 4096);
      const iov = new Float64Array(8);
      expect(ring!.sqSpace).to.equal(8);
      iov.set([fx.mem.address, 4096]);
      ring!.prepWritev(fd, iov, 1, 0, 101);
      // the iovec array is copied at prep: reusing it for the next request is safe
      iov.set([fx.mem.address + 8192, 2048, fx.mem.address + 8192 + 2048, 2048]);
      ring!.prepWritev(fd, iov, 2, 4096, 102);
      expect(ring!.sqSpace).to.equal(6);
      expect(ring!.submit()).to.equal(2);
      await wait(2);
      ring!.prepFdatasync(fd, 103);
      expect(ring!.submit()).to.equal(1);
      await wait(3);
      expect(done.get(101)).to.equal(4096);
      expect(done.get(102)).to.equal(4096);
      expect(done.get(103)).to.equal(0);
      const file = readFileSync(path);
      expect(file.length).to.equal(8192);
      expect(file.subarray(0, 4096).every((b) => b === 1)).to.equal(true);
      expect(file.subarray(4096).every((b) => b === 2)).to.equal(true);

      iov.set([fx.mem.address + 100000, 8192]);
      ring!.prepReadv(fd, iov, 1, 0, 104);
      iov.set([fx.mem.address + 200000, 100, fx.mem.address + 300000, 100]);
      ring!.prepReadv(fd, iov, 2, 8192 - 150, 105);
      ring!.submit();
      await wait(5);
      expect(done.get(104)).to.equal(8192);
      expect(done.get(105)).to.equal(150);
      expect(Buffer.from(bytes.subarray(100000, 108192)).equals(file)).to.equal(true);
      expect(bytes.subarray(200000, 200100).every((b) => b === 2)).to.equal(true);
      expect(bytes.subarray(300000, 300050).every((b) => b === 2)).to.equal(true);
      expect(bytes[300050]).to.equal(0);
      // completions come in batches, never more callbacks than requests
      expect(batches.reduce((n, b) => n + b.tags.length, 0)).to.equal(5);
      expect(ring!.sqSpace).to.equal(8);
    } finally {
      ring!.close();
      closeSync(fd);
    }
  });

  it('runs async (IOSQE_ASYNC) readv and writev through io-wq with the same results', async () => {
    const path = join(fx.dir, 'async');
    writeFileSync(path, Buffer.alloc(0));
    const fd = openSync(path, 'r+');
    const { ring, done, wait } = collectingRing(8);
    try {
      const bytes = new Uint8Array(fx.mem.windows[0]!);
      for (let i = 0; i < 65536; i++) bytes[i] = (i * 7) & 0xff;
      const iov = new Float64Array(4);
      iov.set([fx.mem.address, 32768, fx.mem.address + 32768, 32768]);
      ring!.prepWritev(fd, iov, 2, 0, 1, true);
      expect(ring!.submit()).to.equal(1);
      await wait(1);
      expect(done.get(1)).to.equal(65536);
      iov.set([fx.mem.address + 524288, 65536]);
      ring!.prepReadv(fd, iov, 1, 0, 2, true);
      ring!.prepReadv(fd, iov, 1, 0, 3, false);
      ring!.prepReadv(fd, iov, 1, 0, 4, undefined);
      expect(ring!.submit()).to.equal(3);
      await wait(4);
      expect([done.get(2), done.get(3), done.get(4)]).to.deep.equal([65536, 65536, 65536]);
      expect(Buffer.from(bytes.subarray(524288, 524288 + 65536)).equals(Buffer.from(bytes.subarray(0, 65536)))).to.equal(true);
      // a non-boolean async flag is a TypeError and leaves the slot free
      expect(() => ring!.prepReadv(fd, iov, 1, 0, 5, 1 as unknown as boolean)).to.throw(TypeError);
      expect(ring!.sqSpace).to.equal(8);
    } finally {
      ring!.close();
      closeSync(fd);
    }
  });

  it('submit(true) delivers inline completions before returning; later ones still wake the loop', async () => {
    const path = join(fx.dir, 'reap');
    writeFileSync(path, Buffer.alloc(64 * 1024, 9)); // in the page cache: reads complete inline
    const fd = openSync(path, 'r+');
    const { ring, batches, done, wait } = collectingRing(16);
    try {
      const iov = new Float64Array(2);
      for (let i = 0; i < 8; i++) {
        iov.set([fx.mem.address + i * 4096, 4096]);
        ring!.prepReadv(fd, iov, 1, i * 4096, 200 + i);
      }
      expect(ring!.submit(true)).to.equal(8);
      expect(done.size).to.equal(8);
      expect([...done.values()].every((r) => r === 4096)).to.equal(true);
      expect(batches.length).to.equal(1);
      expect(ring!.sqSpace).to.equal(16);
      // fdatasync never completes inline: its completion comes through the eventfd
      ring!.prepFdatasync(fd, 300);
      expect(ring!.submit(true)).to.equal(1);
      await wait(9);
      expect(done.get(300)).to.equal(0);
      // nothing left over: no spurious empty batch was delivered
      await new Promise((r) => setTimeout(r, 20));
      expect(batches.every((b) => b.tags.length > 0)).to.equal(true);
    } finally {
      ring!.close();
      closeSync(fd);
    }
  });

  it('a submit(true) from inside onComplete only submits; the running delivery picks its completions up', async () => {
    const path = join(fx.dir, 'nested');
    writeFileSync(path, Buffer.alloc(64 * 1024, 5));
    const fd = openSync(path, 'r');
    const seen: number[] = [];
    const iov = new Float64Array(2);
    let ring: Uring | null = null;
    let depth = 0;
    let maxDepth = 0;
    ring = native.createUring(8, (tags, results, count) => {
      depth++;
      maxDepth = Math.max(maxDepth, depth);
      const mine = Array.from(tags.subarray(0, count));
      for (let i = 0; i < count; i++) expect(results[i]).to.equal(4096);
      for (const t of mine) {
        seen.push(t);
        if (t < 10) {
          iov.set([fx.mem.address + t * 4096, 4096]);
          ring!.prepReadv(fd, iov, 1, 0, t + 1);
          ring!.submit(true);
        }
      }
      // the arrays were not overwritten by a nested delivery
      expect(Array.from(tags.subarray(0, count))).to.deep.equal(mine);
      depth--;
    });
    try {
      iov.set([fx.mem.address, 4096]);
      ring!.prepReadv(fd, iov, 1, 0, 1);
      ring!.submit(true);
      // inline completions chain through the same delivery loop, never nested
      for (let i = 0; i < 50 && seen.length < 10; i++) await new Promise((r) => setTimeout(r, 5));
      expect(seen).to.deep.equal([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
      expect(maxDepth).to.equal(1);
    } finally {
      ring!.close();
      closeSync(fd);
    }
  });

  it('delivers many completions in few callbacks', async () => {
    const path = join(fx.dir, 'many');
    writeFileSync(path, Buffer.alloc(64 * 1024, 7));
    const fd = openSync(path, 'r');
    const { ring, batches, done, wait } = collectingRing(64);
    try {
      const iov = new Float64Array(2);
      for (let i = 0; i < 64; i++) {
        iov.set([fx.mem.address + i * 1024, 1024]);
        ring!.prepReadv(fd, iov, 1, i * 1024, 1000 + i);
      }
      expect(ring!.sqSpace).to.equal(0);
      expect(ring!.submit()).to.equal(64);
      await wait(64);
      expect([...done.values()].every((r) => r === 1024)).to.equal(true);
      expect(batches.length).to.be.lessThan(64);
      expect(new Uint8Array(fx.mem.windows[0]!, 0, 65536).every((b) => b === 7)).to.equal(true);
    } finally {
      ring!.close();
      closeSync(fd);
    }
  });

  it('fallocate punches a hole; errors come back as negative errno results', async () => {
    const path = join(fx.dir, 'holes');
    writeFileSync(path, Buffer.alloc(1 << 20, 0xee));
    const fd = openSync(path, 'r+');
    const { ring, done, wait } = collectingRing(4);
    try {
      ring!.prepFallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 4096, 8192, 1);
      ring!.prepFdatasync(987654, 2);
      ring!.submit();
      await wait(2);
      expect(done.get(1)).to.equal(0);
      expect(done.get(2)).to.equal(-9); // EBADF
      const data = readFileSync(path);
      expect(data.length).to.equal(1 << 20);
      expect(data.subarray(4096, 12288).every((b) => b === 0)).to.equal(true);
      expect(data[4095]).to.equal(0xee);
      expect(data[12288]).to.equal(0xee);
    } finally {
      ring!.close();
      closeSync(fd);
    }
  });

  it('refuses iovecs outside mappings with EFAULT and leaves the ring usable', () => {
    const { ring } = collectingRing(4);
    try {
      const iov = new Float64Array([fx.mem.address + fx.mem.length - 1, 2]);
      expect(nativeError(() => ring!.prepReadv(0, iov, 1, 0, 1)).code).to.equal('EFAULT');
      expect(nativeError(() => ring!.prepWritev(0, iov, 1, 0, 1)).code).to.equal('EFAULT');
      expect(() => ring!.prepReadv(0, iov, 2, 0, 1)).to.throw(RangeError);
      expect(ring!.sqSpace).to.equal(4);
      expect(ring!.submit()).to.equal(0);
    } finally {
      ring!.close();
    }
  });

  it('close is idempotent and later calls throw EBADF', () => {
    const { ring } = collectingRing(4);
    const r = ring as Uring;
    r.close();
    r.close();
    expect(r.sqSpace).to.equal(0);
    expect(nativeError(() => r.submit()).code).to.equal('EBADF');
    expect(nativeError(() => r.prepFdatasync(0, 1)).code).to.equal('EBADF');
  });

  it('close() waits for submitted requests and drops their completions', () => {
    const path = join(fx.dir, 'inflight');
    writeFileSync(path, Buffer.alloc(1 << 20, 3));
    const fd = openSync(path, 'r');
    let calls = 0;
    const ring = native.createUring(16, () => calls++)!;
    const iov = new Float64Array(2);
    for (let i = 0; i < 16; i++) {
      iov.set([fx.mem.address + i * 65536, 65536]);
      ring.prepReadv(fd, iov, 1, i * 65536, i);
    }
    ring.submit();
    ring.close();
    // every read finished before close() returned
    expect(new Uint8Array(fx.mem.windows[0]!).every((b) => b === 3)).to.equal(true);
    expect(calls).to.equal(0);
    closeSync(fd);
  });

  it('a ring with no JS reference closed by its own onComplete calls back once and is reclaimed', async () => {
    const path = join(fx.dir, 'self-close');
    writeFileSync(path, Buffer.alloc(4096, 5));
    const fd = openSync(path, 'r');
    const before = fdCount();
    let calls = 0;
    const delivered = new Promise<void>((resolve) => {
      (() => {
        const owner: { ring: Uring | null } = { ring: null };
        owner.ring = native.createUring(8, () => {
          calls++;
          owner.ring!.close();
          resolve();
        });
        const iov = new Float64Array([fx.mem.address, 4096]);
        owner.ring!.prepReadv(fd, iov, 1, 0, 1);
        owner.ring!.submit();
      })();
    });
    // Busy: the ring (and so its callback) survives a GC with nothing referring to it.
    await collectGarbage();
    await delivered;
    await collectGarbage();
    expect(calls).to.equal(1);
    expect(fdCount()).to.equal(before); // the ring's fds went with close()
    closeSync(fd);
  });

  it('unclosed idle rings are reclaimed by GC', async () => {
    const before = fdCount();
    (() => {
      for (let i = 0; i < 50; i++) {
        const owner: { ring: Uring | null } = { ring: null };
        owner.ring = native.createUring(8, () => owner.ring?.submit());
      }
    })();
    expect(fdCount()).to.equal(before + 100);
    await collectGarbage();
    expect(fdCount()).to.equal(before);
  });

  it('throws EAGAIN when the submission queue is full', () => {
    const { ring } = collectingRing(2);
    try {
      // the kernel rounds entries up to a power of two
      let prepared = 0;
      const err = nativeError(() => {
        for (;;) {
          ring!.prepFdatasync(0, prepared);
          prepared++;
        }
      });
      expect(err.code).to.equal('EAGAIN');
      expect(prepared).to.equal(2);
    } finally {
      ring!.close();
    }
  });
});

describe('native: process lifetime', () => {
  const index = fileURLToPath(new URL('../../src/native/index.js', import.meta.url));

  function run(script: string) {
    return spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 20000 });
  }

  it('an idle ring and an unstarted poller do not keep the process alive', () => {
    const r = run(`
      import { native } from ${JSON.stringify(index)};
      const ring = native.createUring(8, () => {});
      const p = native.createPoller(native.eventfd(0), () => {});
      console.log('ok', ring === null ? 'no-uring' : 'uring');
    `);
    expect(r.status).to.equal(0);
    expect(r.stdout).to.match(/^ok/);
  });

  it('an exception thrown by a poller callback reaches uncaughtException', () => {
    const r = run(`
      import { native } from ${JSON.stringify(index)};
      process.on('uncaughtException', (err) => { console.log('caught', err.message); process.exit(0); });
      const p = native.createPoller(native.eventfd(1), () => { throw new Error('boom'); });
      p.start(1);
    `);
    expect(r.stdout).to.equal('caught boom\n');
    expect(r.status).to.equal(0);
  });

  it('promise jobs queued by a callback run right after it', () => {
    const r = run(`
      import { native } from ${JSON.stringify(index)};
      const efd = native.eventfd(1);
      const p = native.createPoller(efd, () => {
        native.eventfdRead(efd);
        p.close();
        Promise.resolve().then(() => console.log('microtask'));
        process.nextTick(() => console.log('tick'));
      });
      p.start(1);
    `);
    expect(r.stdout).to.equal('tick\nmicrotask\n');
  });
});
