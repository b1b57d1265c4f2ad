// Names the store cannot hold. A file store keeps one key segment per file name, so a
// segment is at most 254 bytes once encoded ('%' and NUL take three): a POSIX name of
// 255 bytes, or of 100 '%', is valid for the guest but can never be stored there. Found
// by the hostile-gateway test: CREATE of such a name was answered, its data buffered,
// every upload failed and the gateway could not stop cleanly. The file system must
// refuse such names (ENAMETOOLONG) before anything is created or buffered.
import { expect } from 'chai';
import { FileStore } from '../../src/backends/file-store.js';
import { MemoryStore } from '../../src/backends/memory-store.js';
import { BucketVfs } from '../../src/backends/posix/bucket-vfs.js';
import { silentLogger } from '../../src/util/log.js';
import { TmpDir } from '../support/tmp.js';
import { CALLER, NEW, expectErrno, readFile, writeFile } from './helpers.js';

describe('posix: names the store cannot hold', () => {
  let dir: TmpDir;
  let store: FileStore;
  let vfs: BucketVfs;

  beforeEach(async () => {
    dir = new TmpDir('vhost-s3-names-');
    store = await FileStore.open(dir.file('store'), { create: true, noSync: true });
    vfs = new BucketVfs({ store, prefix: 'share/', logger: silentLogger });
  });
  afterEach(async () => {
    await vfs.close();
    await store.close();
    dir.remove();
  });

  const long = 'n'.repeat(255);
  const percent = '%'.repeat(100); // 300 bytes once encoded

  it('a file store refuses them with ENAMETOOLONG before anything is created', async () => {
    await vfs.mkdir('d', 0o755, CALLER);
    await writeFile(vfs, 'f', 'x');
    for (const name of [long, percent, `d/${long}`]) {
      await expectErrno(vfs.create(name, 0o644, CALLER, NEW), 'ENAMETOOLONG');
      await expectErrno(vfs.mkdir(name, 0o755, CALLER), 'ENAMETOOLONG');
      await expectErrno(vfs.symlink(name, 'target', CALLER), 'ENAMETOOLONG');
      await expectErrno(vfs.rename('f', name, false), 'ENAMETOOLONG');
      expect(await vfs.stat(name)).to.equal(null);
    }
    await vfs.sync();
    const keys = (await store.list({ prefix: 'share/' })).objects.map((o) => o.key).sort();
    expect(keys).to.deep.equal(['share/d/', 'share/f']);
    expect(store.keyFits(`share/${'n'.repeat(254)}`)).to.equal(true);
    expect(store.keyFits(`share/${long}`)).to.equal(false);
    expect(store.keyFits(`share/${percent}`)).to.equal(false);
  });

  it('the longest names a file store can hold work', async () => {
    const name = 'n'.repeat(254);
    await writeFile(vfs, name, 'data');
    await vfs.mkdir(`d${'%'.repeat(84)}`, 0o755, CALLER); // 1 + 3 * 84 = 253 bytes encoded
    await vfs.sync();
    expect(new TextDecoder().decode(await readFile(vfs, name))).to.equal('data');
    expect((await store.head(`share/${name}`))?.size).to.equal(4);
  });

  it("keys over S3's 1024 bytes are refused, counted in UTF-8 bytes", async () => {
    const mem = new MemoryStore();
    const v = new BucketVfs({ store: mem, logger: silentLogger });
    let dir = '';
    for (let i = 0; i < 4; i++) {
      dir += (dir ? '/' : '') + 'é'.repeat(120); // 240 bytes a segment, 964 with the slashes
      await v.mkdir(dir, 0o755, CALLER);
    }
    await writeFile(v, `${dir}/${'é'.repeat(30)}`, 'data'); // 964 + 60 = 1024 bytes: fits
    await expectErrno(v.create(`${dir}/${'é'.repeat(31)}`, 0o644, CALLER, NEW), 'ENAMETOOLONG'); // 1026
    await v.sync();
    expect((await mem.head(`${dir}/${'é'.repeat(30)}`))?.size).to.equal(4);
    await v.close();
  });

  it('a memory store (like S3) holds 255-byte names', async () => {
    const mem = new MemoryStore();
    const v = new BucketVfs({ store: mem, logger: silentLogger });
    await writeFile(v, long, 'data');
    await v.sync();
    expect((await mem.head(long))?.size).to.equal(4);
    await v.close();
  });
});
