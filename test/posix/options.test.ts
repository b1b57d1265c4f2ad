// Each tuning setting of BucketVfs (the flags of `vhost-s3 fs`/`mount`, see
// test/cli/fs-options.test.ts) changes what the file system does: the same work under two
// values of one setting, told apart by what reaches the store (calls, bytes, calls in
// flight at once) or by the file system's own counters.
import { expect } from 'chai';
import { BucketVfs, type BucketVfsOptions } from '../../src/backends/posix/bucket-vfs.js';
import { MemoryStore } from '../../src/backends/memory-store.js';
import type { PutResult, ReadIntoResult } from '../../src/backends/object-store.js';
import { patternBytes, TmpDir } from '../support/tmp.js';
import { CALLER, CountingStore, NEW, RO, readAll, sleep, writeFile, type StoreOp } from './helpers.js';

const KiB = 1024;
const MiB = 1024 * KiB;

/** A CountingStore that also records the most calls of each kind in flight at once (each call takes a few ms). */
class ProbeStore extends CountingStore {
  readonly peak = new Map<StoreOp, number>();
  private readonly now = new Map<StoreOp, number>();

  peakOf(op: StoreOp): number {
    return this.peak.get(op) ?? 0;
  }

  private async track<T>(op: StoreOp, fn: () => Promise<T>): Promise<T> {
    const n = (this.now.get(op) ?? 0) + 1;
    this.now.set(op, n);
    this.peak.set(op, Math.max(n, this.peakOf(op)));
    try {
      await sleep(3);
      return await fn();
    } finally {
      this.now.set(op, (this.now.get(op) ?? 1) - 1);
    }
  }

  override getInto(key: string, offset: number, target: Uint8Array): Promise<ReadIntoResult> {
    return this.track('getInto', () => super.getInto(key, offset, target));
  }
  override uploadPart(key: string, uploadId: string, partNumber: number, body: Uint8Array): Promise<string> {
    return this.track('uploadPart', () => super.uploadPart(key, uploadId, partNumber, body));
  }
  override copy(src: string, dst: string, opts?: Parameters<CountingStore['copy']>[2]): Promise<PutResult> {
    return this.track('copy', () => super.copy(src, dst, opts));
  }
}

describe('BucketVfs settings take effect', function () {
  this.timeout(60_000);
  let tmp: TmpDir;
  const made: BucketVfs[] = [];

  beforeEach(() => {
    tmp = new TmpDir('vhost-s3-options-');
  });
  afterEach(async () => {
    for (const v of made.splice(0)) await v.close().catch(() => undefined);
    tmp.remove();
  });

  /** A file system on a fresh memory store (parts from 64 KiB) with these settings. */
  function mk(opts: Partial<BucketVfsOptions>): { vfs: BucketVfs; store: ProbeStore } {
    const store = new ProbeStore(new MemoryStore({ minPartSize: 64 * KiB }));
    const vfs = new BucketVfs({ store, tempDir: tmp.path, ...opts });
    made.push(vfs);
    return { vfs, store };
  }

  /** A file of `size` bytes put straight into the store, and a BucketVfs on it. */
  async function withFile(opts: Partial<BucketVfsOptions>, size: number): Promise<{ vfs: BucketVfs; store: ProbeStore }> {
    const r = mk(opts);
    await r.store.inner.put('f', patternBytes(1, size));
    r.store.reset();
    return r;
  }

  it('spillThreshold (--spill-threshold): a file\'s write buffer moves to a temporary file beyond it', async () => {
    for (const [spill, spilled] of [[1 * MiB, 1], [8 * MiB, 0]] as const) {
      const { vfs } = mk({ spillThreshold: spill });
      const { file } = await vfs.create('f', 0o644, CALLER, NEW);
      await file.write(0, patternBytes(2, 3 * MiB));
      expect(vfs.stats.spilledFiles, `spill threshold ${spill}`).to.equal(spilled);
      await file.release();
    }
  });

  it('blockSize (--cache-block-size): a 1-byte read fetches one block', async () => {
    for (const block of [64 * KiB, 1 * MiB]) {
      const { vfs, store } = await withFile({ blockSize: block, readAheadBytes: 0 }, 4 * MiB);
      const f = await vfs.open('f', RO);
      await f.read(2 * MiB + 5, 1);
      await f.release();
      expect(store.bytesRead, `block ${block}`).to.equal(block);
    }
  });

  it('readAheadBytes (--read-ahead): a sequential reader gets blocks fetched ahead, none with 0', async () => {
    const fetched: number[] = [];
    for (const ahead of [0, 1 * MiB]) {
      const { vfs, store } = await withFile({ blockSize: 64 * KiB, readAheadBytes: ahead }, 4 * MiB);
      const f = await vfs.open('f', RO);
      for (let off = 0; off < 256 * KiB; off += 64 * KiB) await f.read(off, 64 * KiB);
      await sleep(50); // read-ahead runs in the background
      await f.release();
      fetched.push(store.bytesRead);
    }
    expect(fetched[0]).to.equal(256 * KiB);
    expect(fetched[1]).to.be.above(256 * KiB);
  });

  it('fetchConcurrency (--fetch-concurrency): ranged GETs in flight at most', async () => {
    const peaks: number[] = [];
    for (const n of [2, 8]) {
      const { vfs, store } = await withFile({ blockSize: 64 * KiB, readAheadBytes: 0, fetchConcurrency: n }, 2 * MiB);
      const f = await vfs.open('f', RO);
      await Promise.all(Array.from({ length: 16 }, (_, i) => f.read(i * 128 * KiB, 1)));
      await f.release();
      peaks.push(store.peakOf('getInto'));
    }
    expect(peaks[0]).to.equal(2);
    expect(peaks[1]).to.be.above(2).and.at.most(8);
  });

  it('multipartThreshold and partSize (--multipart-threshold, --part-size): one PUT up to the threshold, parts of partSize above it', async () => {
    const runs: [number, number, number, number][] = [];
    for (const [threshold, part] of [[32 * MiB, 16 * MiB], [1 * MiB, 1 * MiB], [1 * MiB, 512 * KiB]] as const) {
      const { vfs, store } = mk({ multipartThreshold: threshold, partSize: part });
      await writeFile(vfs, 'f', patternBytes(3, 3 * MiB));
      runs.push([store.count('put'), store.count('createMultipart'), store.count('uploadPart'), store.count('completeMultipart')]);
      expect((await vfs.stat('f'))!.size).to.equal(3 * MiB);
    }
    expect(runs).to.deep.equal([[1, 0, 0, 0], [0, 1, 3, 1], [0, 1, 6, 1]]);
  });

  it('uploadConcurrency (--upload-concurrency): parts of one upload in flight at most', async () => {
    const peaks: number[] = [];
    for (const n of [1, 4]) {
      const { vfs, store } = mk({ multipartThreshold: 256 * KiB, partSize: 128 * KiB, uploadConcurrency: n });
      await writeFile(vfs, 'f', patternBytes(4, 2 * MiB));
      expect(store.count('uploadPart')).to.equal(16);
      peaks.push(store.peakOf('uploadPart'));
    }
    expect(peaks).to.deep.equal([1, 4]);
  });

  it('uploadMemory (--upload-memory): uploads of several files share the budget, beyond it they wait', async () => {
    const peaks: number[] = [];
    for (const budget of [256 * KiB, 64 * MiB]) {
      // Each upload holds 2 parts × 128 KiB = 256 KiB: a 256 KiB budget lets one run at a time.
      const { vfs, store } = mk({ multipartThreshold: 256 * KiB, partSize: 128 * KiB, uploadConcurrency: 2, uploadMemory: budget });
      const files = await Promise.all(['a', 'b', 'c'].map((name) => vfs.create(name, 0o644, CALLER, NEW)));
      for (const { file } of files) await file.write(0, patternBytes(5, 1 * MiB));
      await Promise.all(files.map(({ file }) => file.release()));
      expect(store.count('completeMultipart')).to.equal(3);
      peaks.push(store.peakOf('uploadPart'));
    }
    expect(peaks[0]).to.equal(2);
    expect(peaks[1]).to.be.above(2);
  });

  it('metaConcurrency (--meta-concurrency): copies in flight while a directory is renamed', async () => {
    const peaks: number[] = [];
    for (const n of [2, 16]) {
      const { vfs, store } = mk({ metaConcurrency: n });
      await vfs.mkdir('d', 0o755, CALLER);
      for (let i = 0; i < 20; i++) await store.inner.put(`d/f${i}`, patternBytes(i, 10));
      await vfs.rename('d', 'e', false);
      expect(store.count('copy')).to.equal(21);
      peaks.push(store.peakOf('copy'));
    }
    expect(peaks[0]).to.equal(2);
    expect(peaks[1]).to.be.above(2);
  });

  it('attrCacheEntries (--attr-cache-entries): names beyond it are looked up again', async () => {
    const heads: number[] = [];
    for (const entries of [1, 100]) {
      const { vfs, store } = mk({ attrCacheEntries: entries });
      for (const name of ['a', 'b', 'c']) await store.inner.put(name, patternBytes(6, 10));
      for (const name of ['a', 'b', 'c', 'a', 'b', 'c']) expect((await vfs.stat(name))!.size).to.equal(10);
      heads.push(store.count('head'));
    }
    // Each lookup of a file is a HEAD of the file and one of a directory marker.
    expect(heads).to.deep.equal([12, 6]);
  });

  it('listCacheEntries (--list-cache-entries): listings beyond it are loaded again', async () => {
    const lists: number[] = [];
    for (const entries of [1, 10]) {
      const { vfs, store } = mk({ listCacheEntries: entries });
      // Made in the store: a directory made through the file system starts with its (empty) listing cached.
      for (const d of ['d1', 'd2', 'd3']) await store.inner.put(`${d}/`, new Uint8Array(0));
      store.reset();
      for (const d of ['d1', 'd2', 'd3', 'd1', 'd2', 'd3']) await vfs.list(d);
      lists.push(store.count('list'));
    }
    expect(lists[0]).to.equal(2 * lists[1]!);
  });

  it('readAll of a file read under every non-default setting at once is the file', async () => {
    const { vfs } = await withFile({ blockSize: 16 * KiB, readAheadBytes: 128 * KiB, fetchConcurrency: 3, attrCacheEntries: 2, listCacheEntries: 1 }, 300 * KiB);
    const f = await vfs.open('f', RO);
    expect(Buffer.from(await readAll(f, 10_000)).equals(Buffer.from(patternBytes(1, 300 * KiB)))).to.equal(true);
    await f.release();
  });
});
