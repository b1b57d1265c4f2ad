// BucketVfs under concurrent requests, as the FUSE engine sends them (many in flight):
// writes through several handles racing flushes and reads, creates racing listings,
// lookups sharing one round of requests, the request counts the caches save.
import { expect } from 'chai';
import { BucketVfs } from '../../src/backends/posix/bucket-vfs.js';
import { MemoryStore } from '../../src/backends/memory-store.js';
import { patternBytes, TmpDir } from '../support/tmp.js';
import { CALLER, CountingStore, NEW, RO, RW, equalBytes, names, readFile, writeFile } from './helpers.js';

const KiB = 1024;

describe('BucketVfs under concurrency', function () {
  this.timeout(60_000);
  let tmp: TmpDir;
  before(() => {
    tmp = new TmpDir('vhost-s3-posix-conc-');
  });
  after(() => tmp.remove());

  function mk(opts: Partial<ConstructorParameters<typeof BucketVfs>[0]> = {}): { vfs: BucketVfs; store: CountingStore; inner: MemoryStore } {
    const inner = new MemoryStore({ minPartSize: 8 * KiB });
    const store = new CountingStore(inner);
    return { vfs: new BucketVfs({ store, tempDir: tmp.path, ...opts }), store, inner };
  }

  it('writes through several handles racing flushes and reads; a flush after the last acknowledged write stores them all', async () => {
    const { vfs, inner } = mk({ spillThreshold: 32 * KiB, memoryBudget: 64 * KiB, multipartThreshold: 48 * KiB, partSize: 8 * KiB, blockSize: 8 * KiB });
    const base = patternBytes(1, 200 * KiB);
    await writeFile(vfs, 'f', base);
    const handles = await Promise.all([vfs.open('f', RW), vfs.open('f', RW), vfs.open('f', RO)]);
    const chunk = 3 * KiB + 17;
    const ops: Promise<unknown>[] = [];
    for (let i = 0; i * chunk < 260 * KiB; i++) {
      const off = i * chunk;
      const data = patternBytes(100 + i, chunk);
      ops.push(handles[i % 2]!.write(off, data));
      if (i % 7 === 3) ops.push(handles[(i + 1) % 2]!.flush());
      if (i % 5 === 1) ops.push(handles[2]!.read(Math.max(0, off - 10 * KiB), 16 * KiB));
    }
    // Build the expected content independently of the racing above.
    const expected = new Uint8Array(Math.max(base.length, Math.ceil((260 * KiB) / chunk) * chunk));
    expected.set(base);
    for (let i = 0; i * chunk < 260 * KiB; i++) expected.set(patternBytes(100 + i, chunk), i * chunk);
    await Promise.all(ops);
    // After all writes were acknowledged, one flush stores all of them.
    await handles[0]!.flush();
    expect(equalBytes((await inner.get('f')).body, expected)).to.equal(true);
    for (const h of handles) await h.release();
    expect(equalBytes(await readFile(vfs, 'f'), expected)).to.equal(true);
    expect(vfs.stats.openFiles).to.equal(0);
    await vfs.close();
  });

  it('many files closing at once share a bounded upload memory (and all get stored)', async () => {
    const { vfs, inner } = mk({ spillThreshold: 16 * KiB, memoryBudget: 64 * KiB, multipartThreshold: 48 * KiB, partSize: 8 * KiB, uploadConcurrency: 2, uploadMemory: 40 * KiB });
    const bodies = Array.from({ length: 12 }, (_, i) => patternBytes(i + 1, i % 2 === 0 ? 100 * KiB : 30 * KiB + i));
    const files = await Promise.all(bodies.map((_, i) => vfs.create(`f${i}`, 0o644, CALLER, NEW)));
    await Promise.all(files.map(({ file }, i) => file.write(0, bodies[i]!)));
    await Promise.all(files.map(({ file }) => file.release()));
    for (let i = 0; i < bodies.length; i++) expect(equalBytes((await inner.get(`f${i}`)).body, bodies[i]!), `f${i}`).to.equal(true);
    await vfs.close();
  });

  it('creates racing listings and stats in one directory', async () => {
    const { vfs } = mk();
    await vfs.mkdir('d', 0o755, CALLER);
    const created: string[] = [];
    const work: Promise<unknown>[] = [];
    for (let i = 0; i < 60; i++) {
      const name = `f${i}`;
      created.push(name);
      work.push(writeFile(vfs, `d/${name}`, `content ${i}`));
      if (i % 10 === 0) work.push(vfs.list('d'));
      if (i % 4 === 0) work.push(vfs.stat(`d/f${i + 1}`));
    }
    await Promise.all(work);
    expect(await names(vfs, 'd')).to.deep.equal(created.sort());
    for (const n of created) expect((await vfs.stat(`d/${n}`))!.size).to.equal(`content ${n.slice(1)}`.length);
    await vfs.close();
  });

  it('shares one lookup among concurrent stats of a path, and answers misses from a fresh listing', async () => {
    const { vfs, store, inner } = mk();
    await inner.put('dir/a', new Uint8Array(3));
    store.reset();
    const all = await Promise.all(Array.from({ length: 20 }, () => vfs.stat('dir/a')));
    for (const a of all) expect(a!.size).to.equal(3);
    expect(store.count('head')).to.equal(2);
    await vfs.list('dir');
    store.reset();
    // Names a fresh listing does not have cost nothing (the kernel looks up before every create).
    for (let i = 0; i < 10; i++) expect(await vfs.stat(`dir/missing${i}`)).to.equal(null);
    const { file } = await vfs.create('dir/new', 0o644, CALLER, NEW);
    await file.release();
    expect([...store.counts.entries()].filter(([op]) => op === 'head' || op === 'list')).to.deep.equal([]);
    expect(await names(vfs, 'dir')).to.deep.equal(['a', 'new']);
    expect(store.count('list')).to.equal(0);
    await vfs.close();
  });

  it('a directory just made has a known, empty listing: lookups and creates in it ask the store nothing', async () => {
    const { vfs, store } = mk();
    await vfs.mkdir('made', 0o755, CALLER);
    store.reset();
    for (let i = 0; i < 5; i++) {
      expect(await vfs.stat(`made/f${i}`)).to.equal(null);
      const { file } = await vfs.create(`made/f${i}`, 0o644, CALLER, NEW);
      await file.write(0, new Uint8Array([120, 10]));
      await file.flush();
      await file.release();
    }
    expect([...store.counts.entries()].filter(([op]) => op === 'head' || op === 'list')).to.deep.equal([]);
    expect(store.count('put')).to.equal(5);
    expect(await names(vfs, 'made')).to.deep.equal(['f0', 'f1', 'f2', 'f3', 'f4']);
    expect((await vfs.stat('made/f3'))!.size).to.equal(2);
    // What others put there is seen once the listing has expired (listTtlMs).
    const short = mk({ listTtlMs: 50 });
    await short.vfs.mkdir('m2', 0o755, CALLER);
    await short.inner.put('m2/theirs', new Uint8Array(1));
    await new Promise((r) => setTimeout(r, 80));
    expect((await short.vfs.stat('m2/theirs'))!.size).to.equal(1);
    await short.vfs.close();
    await vfs.close();
  });

  it('a listing of several pages asks for its files\' attributes while its later pages are still being listed', async () => {
    const { vfs, store, inner } = mk();
    for (let i = 0; i < 2500; i++) await inner.put(`big/f${String(i).padStart(4, '0')}`, new Uint8Array(1));
    await inner.put('big/sub/x', new Uint8Array(1));
    const order: string[] = [];
    const list = store.list.bind(store);
    const head = store.head.bind(store);
    store.list = async (o) => {
      order.push('list');
      return list(o);
    };
    store.head = async (k) => {
      order.push('head');
      return head(k);
    };
    expect((await vfs.stat('big'))!.kind).to.equal('dir');
    order.length = 0;
    const listed = await vfs.list('big');
    expect(listed.length).to.equal(2501);
    expect(listed.find((e) => e.name === 'sub')!.attr.kind).to.equal('dir');
    expect(order.filter((o) => o === 'list').length).to.be.at.least(3);
    expect(order.indexOf('head')).to.be.below(order.lastIndexOf('list'));
    expect(order.filter((o) => o === 'head').length).to.equal(2501);
    await vfs.close();
  });

  it('under an expired small listing, lookups cost one LIST until it expires again, not requests per name', async () => {
    const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
    const { vfs, store, inner } = mk({ listTtlMs: 40 });
    await vfs.mkdir('d', 0o755, CALLER);
    for (let i = 0; i < 3; i++) await writeFile(vfs, `d/f${i}`, new Uint8Array([i]));
    await sleep(60);
    store.reset();
    for (let i = 3; i < 8; i++) expect(await vfs.stat(`d/f${i}`)).to.equal(null);
    // One LIST; the files we wrote are listed unchanged and keep their cached attributes.
    expect(store.count('list')).to.equal(1);
    expect(store.count('head')).to.equal(0);
    expect((await vfs.stat('d/f1'))!.size).to.equal(1);
    // What others put there is found by the next refresh (one HEAD for the unknown object).
    await inner.put('d/theirs', new Uint8Array(2));
    await sleep(60);
    store.reset();
    expect((await vfs.stat('d/theirs'))!.size).to.equal(2);
    expect([store.count('list'), store.count('head')]).to.deep.equal([1, 1]);
    await vfs.close();

    // A listing of more entries than one page, or with many entries whose attributes are no
    // longer cached, is not reloaded for a lookup: the name is asked for (HEAD file, HEAD
    // marker, LIST of what is below it).
    for (const [opts, n] of [[{ listTtlMs: 40 }, 1001], [{ listTtlMs: 40, attrCacheEntries: 4 }, 40]] as const) {
      const m = mk(opts);
      for (let i = 0; i < n; i++) await m.inner.put(`big/e${i}`, new Uint8Array(0));
      expect((await m.vfs.list('big')).length).to.equal(n);
      await sleep(60);
      m.store.reset();
      expect(await m.vfs.stat('big/new')).to.equal(null);
      expect([m.store.count('list'), m.store.count('head')], `${n} entries`).to.deep.equal([1, 2]);
      await m.vfs.close();
    }
  });

  it('parallel readers of one big file share block fetches', async () => {
    const { vfs, store } = mk({ blockSize: 16 * KiB, readAheadBytes: 64 * KiB });
    const body = patternBytes(9, 512 * KiB);
    await writeFile(vfs, 'big', body);
    const fresh = new BucketVfs({ store, tempDir: tmp.path, blockSize: 16 * KiB, readAheadBytes: 64 * KiB });
    store.reset();
    const readers = await Promise.all(Array.from({ length: 4 }, () => fresh.open('big', RO)));
    const results = await Promise.all(
      readers.map(async (h) => {
        const out = new Uint8Array(body.length);
        for (let off = 0; off < body.length; off += 8 * KiB) out.set(await h.read(off, 8 * KiB), off);
        return out;
      }),
    );
    for (const r of results) expect(equalBytes(r, body)).to.equal(true);
    // 32 blocks, each fetched once however many readers wanted it (read-ahead fetches
    // several in one GET).
    expect(store.bytesRead).to.equal(body.length);
    expect(store.count('getInto')).to.be.at.most(32);
    for (const h of readers) await h.release();
    await fresh.close();
    await vfs.close();
  });
});
