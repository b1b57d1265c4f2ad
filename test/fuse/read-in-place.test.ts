// READ straight into the guest's descriptors (PayloadTarget + OpenFile.readInto/readIntoAsync) over real
// virtqueues, BucketVfs on a file store: the bytes of any range (reply split over many
// descriptors, short at the end of file, past it), the in-place path really taken, and the
// ordinary path for what it cannot serve (a file with unstored writes, an object replaced
// behind the open file's back).
import { expect } from 'chai';
import { FileStore } from '../../src/backends/file-store.js';
import { BucketVfs } from '../../src/backends/posix/bucket-vfs.js';
import { FsExport } from '../../src/fuse/export.js';
import { FuseClient } from '../../src/frontend/fuse-client.js';
import { O_RDONLY, O_RDWR } from '../../src/fuse/abi.js';
import { silentLogger } from '../../src/util/log.js';
import { TmpDir, patternBytes } from '../support/tmp.js';

describe('FUSE READ in place (virtio-fs, file store)', function () {
  this.timeout(30_000);
  let dir: TmpDir;
  let store: FileStore;
  let exp: FsExport;
  let c: FuseClient;
  let inPlace = 0;
  const body = patternBytes(11, 3 * 1024 * 1024 + 123);

  beforeEach(async () => {
    dir = new TmpDir('vhost-s3-inplace-');
    store = await FileStore.open(dir.file('store'), { create: true, noSync: true });
    await store.put('f', body);
    // Reads in place go through the reader an open file holds (FileStore.openReader):
    // synchronously, or for large ones on io_uring workers (read-async.test.ts).
    const openReader = store.openReader.bind(store);
    inPlace = 0;
    store.openReader = (key, etag) => {
      const r = openReader(key, etag);
      const sync = r.readIntoSync.bind(r);
      const copy = r.readAsync.bind(r);
      r.readIntoSync = (...args) => {
        inPlace++;
        return sync(...args);
      };
      r.readAsync = (...args) => {
        const started = copy(...args);
        if (started) inPlace++;
        return started;
      };
      return r;
    };
    const vfs = new BucketVfs({ store, logger: silentLogger });
    exp = await FsExport.start({ socket: dir.file('fs.sock'), vfs, requestQueues: 1, log: silentLogger });
    // 4 KiB descriptors: a 1 MiB reply spans 256 of them (as Linux's page-sized buffers).
    c = await FuseClient.connect(dir.file('fs.sock'), { segmentSize: 4096 });
    await c.init();
  });
  afterEach(async () => {
    await c.close();
    await exp.close();
    dir.remove();
  });

  it('reads any range into scattered descriptors, short at the end, nothing past it', async () => {
    const e = await c.lookup(1, 'f');
    const { fh } = await c.open(e.nodeid, O_RDONLY);
    const ranges: [number, number][] = [[0, 1 << 20], [1, 4095], [4097, 65536], [(3 << 20) - 5000, 1 << 20], [body.length - 1, 10], [body.length, 4096], [body.length + 9999, 1]];
    for (const [off, len] of ranges) {
      const got = await c.read(e.nodeid, fh, off, len);
      expect(Buffer.from(got).equals(Buffer.from(body.subarray(off, off + len))), `${off}+${len}`).to.equal(true);
    }
    expect(inPlace).to.equal(5); // the two past the end need no read
    await c.release(e.nodeid, fh);
  });

  it('falls back to the ordinary path for a file with unstored writes, and for an object replaced behind its back', async () => {
    const e = await c.lookup(1, 'f');
    const { fh } = await c.open(e.nodeid, O_RDWR);
    await c.write(e.nodeid, fh, 10, new Uint8Array([1, 2, 3]));
    const got = await c.read(e.nodeid, fh, 0, 64);
    const want = Buffer.from(body.subarray(0, 64));
    want.set([1, 2, 3], 10);
    expect(Buffer.from(got).equals(want)).to.equal(true);
    expect(inPlace).to.equal(0);
    await c.release(e.nodeid, fh);

    const { fh: fh2 } = await c.open(e.nodeid, O_RDONLY);
    const other = patternBytes(12, 5000);
    await new FileStore(dir.file('store')).put('f', other); // another writer
    const after = await c.read(e.nodeid, fh2, 0, 5000);
    expect(Buffer.from(after).equals(Buffer.from(other))).to.equal(true);
    await c.release(e.nodeid, fh2);
  });
});
