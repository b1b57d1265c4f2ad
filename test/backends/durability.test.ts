// The durability contract (object-store.ts): the file store does not fsync when a write
// completes, only in sync(); and every path that acknowledges durability calls sync():
// FUSE FSYNC and SYNCFS (over real virtqueues, BucketVfs on a file store), a virtio-blk
// FLUSH (the chunk cache's flush), image creation. FLUSH/RELEASE of a file (close) store the
// object without asking for durability, as virtiofsd does not fsync on close either.
import { expect } from 'chai';
import { mkdirSync, readFileSync, rmSync } from 'node:fs';
import { FileStore, HEADER_SIZE } from '../../src/backends/file-store.js';
import { BucketVfs } from '../../src/backends/posix/bucket-vfs.js';
import { ChunkCache } from '../../src/backends/chunk-cache.js';
import { createImage } from '../../src/blk/image-admin.js';
import { ImageKeys } from '../../src/blk/image-format.js';
import { FsExport } from '../../src/fuse/export.js';
import { FuseClient } from '../../src/frontend/fuse-client.js';
import { O_CREAT, O_WRONLY } from '../../src/fuse/abi.js';
import { silentLogger } from '../../src/util/log.js';
import { TmpDir, patternBytes } from '../support/tmp.js';

describe('durability: fsync only where it is asked for', function () {
  this.timeout(30_000);
  let dir: TmpDir;
  let store: FileStore;

  beforeEach(async () => {
    dir = new TmpDir('vhost-s3-durability-');
    store = await FileStore.open(dir.file('store'), { create: true });
  });
  afterEach(() => dir.remove());

  const fsyncs = (): number => store.syncStats.files + store.syncStats.dirs;

  describe('file store', () => {
    it('completes put, copy and delete without fsync; sync() fsyncs the files, then their directories', async () => {
      await store.put('a/b/one', patternBytes(1, 5000));
      await store.put('two', patternBytes(2, 300 * 1024)); // the large-body path
      await store.copy('two', 'c/three');
      await store.delete('two');
      expect(fsyncs()).to.equal(0);
      await store.sync();
      expect(store.syncStats.syncs).to.equal(1);
      // a/b/one and c/three (two is gone); their directories and the root.
      expect(store.syncStats.files).to.equal(2);
      expect(store.syncStats.dirs).to.be.at.least(3);
      // The data was there all along and is still.
      expect(Buffer.from((await store.get('a/b/one')).body).equals(patternBytes(1, 5000))).to.equal(true);
      expect((await store.get('c/three')).body.length).to.equal(300 * 1024);
      expect(readFileSync(store.pathOf('a/b/one')).length).to.equal(HEADER_SIZE + 5000);
    });

    it('a sync() with nothing written since the last one fsyncs nothing', async () => {
      await store.put('k', patternBytes(3, 10));
      await store.sync();
      const before = fsyncs();
      await store.sync();
      expect(fsyncs()).to.equal(before);
      expect(store.syncStats.syncs).to.equal(2);
    });

    it('past the paths it remembers, writes still never sync and the next sync() is one syncfs', async () => {
      const small = await FileStore.open(dir.file('small'), { create: true, maxUnsynced: 8 });
      const stats = small.syncStats;
      for (let i = 0; i < 20; i++) await small.put(`d${i % 3}/k${i}`, patternBytes(i, 100));
      await small.copy('d0/k0', 'e/copy');
      await small.delete('d1/k1');
      expect(stats.syncs + stats.files + stats.dirs + stats.syncfs).to.equal(0);
      await small.sync();
      expect(stats).to.deep.equal({ syncs: 1, files: 0, dirs: 0, syncfs: 1 });
      // Back to remembering paths: a few writes are fsynced one by one again.
      await small.put('again', patternBytes(99, 10));
      await small.sync();
      expect(stats).to.include({ syncs: 2, files: 1, syncfs: 1 });
      for (let i = 2; i < 20; i++) expect(Buffer.from((await small.get(`d${i % 3}/k${i}`)).body).equals(patternBytes(i, 100))).to.equal(true);
      expect(await small.head('d1/k1')).to.equal(null);
      expect((await small.get('e/copy')).body.length).to.equal(100);
    });

    it('a failed syncfs is retried by the next sync()', async () => {
      const small = await FileStore.open(dir.file('gone'), { create: true, maxUnsynced: 2 });
      for (let i = 0; i < 5; i++) await small.put(`k${i}`, patternBytes(i, 10));
      rmSync(dir.file('gone'), { recursive: true, force: true });
      await small.sync().then(
        () => expect.fail('sync() of a removed store succeeded'),
        (err: unknown) => expect(err).to.have.property('code', 'ENOENT'),
      );
      mkdirSync(dir.file('gone'));
      await small.sync();
      expect(small.syncStats).to.include({ syncs: 1, syncfs: 1 });
    });

    it('with noSync (tests only) never fsyncs', async () => {
      const quick = await FileStore.open(dir.file('quick'), { create: true, noSync: true });
      await quick.put('k', patternBytes(4, 10));
      await quick.sync();
      expect(quick.syncStats.files + quick.syncStats.dirs).to.equal(0);
    });
  });

  describe('FUSE over virtio-fs on a file store', () => {
    let exp: FsExport;
    let c: FuseClient;
    beforeEach(async () => {
      const vfs = new BucketVfs({ store, logger: silentLogger });
      exp = await FsExport.start({ socket: dir.file('fs.sock'), vfs, requestQueues: 1, log: silentLogger });
      c = await FuseClient.connect(dir.file('fs.sock'));
      await c.init();
    });
    afterEach(async () => {
      await c.close();
      await exp.close();
    });

    it('FLUSH and RELEASE store the file without fsync; FSYNC makes it durable', async () => {
      const { entry, fh } = await c.create(1, 'f', O_CREAT | O_WRONLY, 0o644);
      await c.write(entry.nodeid, fh, 0, patternBytes(5, 4096));
      await c.flush(entry.nodeid, fh);
      expect((await store.head('f'))?.size).to.equal(4096);
      expect(fsyncs()).to.equal(0);
      await c.fsync(entry.nodeid, fh);
      expect(store.syncStats.syncs).to.equal(1);
      expect(store.syncStats.files).to.equal(1);
      await c.release(entry.nodeid, fh, O_WRONLY);
      const { entry: e2, fh: fh2 } = await c.create(1, 'g', O_CREAT | O_WRONLY, 0o644);
      await c.write(e2.nodeid, fh2, 0, patternBytes(6, 100));
      await c.release(e2.nodeid, fh2, O_WRONLY);
      expect((await store.head('g'))?.size).to.equal(100);
      expect(store.syncStats.syncs).to.equal(1);
    });

    it('SYNCFS makes every stored file durable', async () => {
      for (const name of ['x', 'y']) {
        const { entry, fh } = await c.create(1, name, O_CREAT | O_WRONLY, 0o644);
        await c.write(entry.nodeid, fh, 0, patternBytes(7, 10));
        await c.release(entry.nodeid, fh, O_WRONLY);
      }
      expect(fsyncs()).to.equal(0);
      await c.syncfs();
      expect(store.syncStats.syncs).to.equal(1);
      expect(store.syncStats.files).to.equal(2);
    });
  });

  describe('object-backed images', () => {
    it('a chunk cache flush (virtio-blk FLUSH) makes the stored chunks durable', async () => {
      const cs = 64 * 1024;
      const cache = new ChunkCache({
        store, keyOf: (i) => `img/chunks/${i}`, chunkSize: cs, cacheBytes: 4 * cs, maxDirtyBytes: 4 * cs, uploadConcurrency: 2,
        fetchConcurrency: 2, fetchPartSize: cs, writebackDelayMs: 0, log: silentLogger,
      });
      const data = patternBytes(8, cs);
      await cache.write(0, 0, cs, (buf, o) => buf.set(data, o));
      await cache.write(1, 0, cs, (buf, o) => buf.set(data, o));
      expect(fsyncs()).to.equal(0);
      await cache.flush();
      expect(store.syncStats.syncs).to.equal(1);
      expect(store.syncStats.files).to.equal(2);
      await cache.close();
    });

    it('creating an image makes its manifest durable', async () => {
      await createImage(store, new ImageKeys('images/vm1/'), 1 << 20, 64 * 1024);
      expect(store.syncStats.syncs).to.equal(1);
      expect(store.syncStats.files).to.equal(1);
    });
  });
});
