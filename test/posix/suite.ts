// One behavioural suite for BucketVfs, run over every ObjectStore (memory, file, s3 on
// s3rver). Each test works under its own key prefix of one shared store, through a
// CountingStore wrapper (call counts, injected write failures).
import { expect } from 'chai';
import { BucketVfs, type BucketVfsOptions } from '../../src/backends/posix/bucket-vfs.js';
import { S_IFDIR, S_IFLNK, S_IFREG } from '../../src/backends/posix/metadata.js';
import type { ObjectStore } from '../../src/backends/object-store.js';
import { patternBytes, TmpDir } from '../support/tmp.js';
import { CALLER, CountingStore, NEW, RO, RW, equalBytes, expectErrno, names, readAll, readFile, sleep, str, text, writeFile } from './helpers.js';

const KiB = 1024;
const MiB = 1024 * 1024;

export interface VfsTargetQuirks {
  /** Keys with empty, '.', '..' segments can be stored (not s3rver: keys are file paths). Default true. */
  readonly pathLikeKeys?: boolean;
  /** Key segments over 255 bytes can be stored (not the file store or s3rver). Default true. */
  readonly longSegments?: boolean;
  /** A delimited listing reports `a/` for a key `a/b/c` with nothing at `a/b` (not s3rver: it skips directories below a common prefix). Default true. */
  readonly deepCommonPrefixes?: boolean;
  /** The store copies parts of multipart uploads (UploadPartCopy; not s3rver: 501). Default true. */
  readonly partCopy?: boolean;
}

export interface VfsTarget {
  readonly name: string;
  /** The shared store (empty at start). */
  open(): Promise<{ store: ObjectStore; close(): Promise<void> }>;
  readonly quirks?: VfsTargetQuirks;
}

export function bucketVfsSuite(target: VfsTarget): void {
  const q = {
    pathLikeKeys: target.quirks?.pathLikeKeys ?? true,
    longSegments: target.quirks?.longSegments ?? true,
    deepCommonPrefixes: target.quirks?.deepCommonPrefixes ?? true,
    partCopy: target.quirks?.partCopy ?? true,
  };

  describe(`BucketVfs over ${target.name}`, function () {
    this.timeout(120_000);
    let shared: { store: ObjectStore; close(): Promise<void> };
    let counter = 0;
    const open: BucketVfs[] = [];
    let tmp: TmpDir;

    before(async () => {
      shared = await target.open();
      tmp = new TmpDir('vhost-s3-posix-');
    });
    after(async () => {
      await shared?.close();
      tmp?.remove();
    });
    afterEach(async () => {
      for (const v of open.splice(0)) await v.close().catch(() => undefined);
    });

    /** A fresh file system under its own prefix. */
    function mk(opts: Partial<BucketVfsOptions> = {}, prefix?: string): { vfs: BucketVfs; store: CountingStore; prefix: string } {
      const p = prefix ?? `t${++counter}/`;
      const store = new CountingStore(shared.store);
      const vfs = new BucketVfs({ store, prefix: p, tempDir: tmp.path, ...opts });
      open.push(vfs);
      return { vfs, store, prefix: p };
    }

    describe('files', () => {
      it('creates, writes, reads back, and stores the object with s3fs metadata', async () => {
        const { vfs, store, prefix } = mk();
        const { attr, file } = await vfs.create('hello.txt', 0o640, CALLER, NEW);
        expect(attr.kind).to.equal('file');
        expect(attr.mode).to.equal(S_IFREG | 0o640);
        expect(attr.uid).to.equal(CALLER.uid);
        expect(await file.write(0, text('hello, '))).to.equal(7);
        expect(await file.write(7, text('world'))).to.equal(5);
        // Reads of a file open for writing see the buffered data, and stat its size.
        expect(str(await file.read(0, 100))).to.equal('hello, world');
        expect((await vfs.stat('hello.txt'))!.size).to.equal(12);
        expect(store.count('put')).to.equal(0);
        await file.fsync(false);
        await file.release();
        const got = await shared.store.get(`${prefix}hello.txt`);
        expect(str(got.body)).to.equal('hello, world');
        expect(got.metadata.mode).to.equal(String(S_IFREG | 0o640));
        expect(got.metadata.uid).to.equal('1000');
        expect(got.metadata.gid).to.equal('1000');
        expect(got.metadata.mtime).to.match(/^\d+(\.\d{9})?$/);
        expect(str(await readFile(vfs, 'hello.txt'))).to.equal('hello, world');
      });

      it('create honours its open flags: read-only and append handles, O_TRUNC of a file that is there, O_EXCL', async () => {
        const { vfs, prefix } = mk();
        const ro = await vfs.create('ro', 0o644, CALLER, { ...NEW, write: false });
        await expectErrno(ro.file.write(0, text('x')), 'EBADF');
        await ro.file.release();
        expect((await shared.store.head(`${prefix}ro`))!.size).to.equal(0);
        await writeFile(vfs, 'there', 'existing');
        await expectErrno(vfs.create('there', 0o644, CALLER, NEW), 'EEXIST');
        const keep = await vfs.create('there', 0o644, CALLER, { ...NEW, exclusive: false });
        expect(keep.attr.size).to.equal(8);
        const trunc = await vfs.create('there', 0o644, CALLER, { ...NEW, exclusive: false, truncate: true });
        expect(trunc.attr.size).to.equal(0);
        await trunc.file.write(0, text('new'));
        await keep.file.release();
        await trunc.file.release();
        expect(str((await shared.store.get(`${prefix}there`)).body)).to.equal('new');
      });

      it('close() stores what open files buffered, once; a second call does nothing more', async () => {
        const { vfs, store, prefix } = mk();
        const { file } = await vfs.create('f', 0o644, CALLER, NEW);
        await file.write(0, text('buffered'));
        const [a, b] = [vfs.close(), vfs.close()];
        await Promise.all([a, b]);
        await vfs.close();
        expect(store.count('put')).to.equal(1);
        expect(str((await shared.store.get(`${prefix}f`)).body)).to.equal('buffered');
      });

      it('a FLUSH of a new file still empty stores nothing; RELEASE, fsync, sync or a FLUSH with data or with a second handle open does', async () => {
        const { vfs, store, prefix } = mk();
        // `echo x > f`: FLUSH of the empty file (a dup closed), WRITE, FLUSH, RELEASE.
        const echo = await vfs.create('echo', 0o644, CALLER, NEW);
        await echo.file.flush();
        expect(store.count('put')).to.equal(0);
        await echo.file.write(0, text('x\n'));
        await echo.file.flush();
        expect(store.count('put')).to.equal(1);
        await echo.file.release();
        expect(store.count('put')).to.equal(1);
        expect(str((await shared.store.get(`${prefix}echo`)).body)).to.equal('x\n');
        // `touch f`: stored by RELEASE.
        const touch = await vfs.create('touch', 0o644, CALLER, NEW);
        await touch.file.flush();
        expect(await shared.store.head(`${prefix}touch`)).to.equal(null);
        await touch.file.release();
        expect((await shared.store.head(`${prefix}touch`))!.size).to.equal(0);
        // Stored by fsync, and by a FLUSH while another handle holds the file open.
        const synced = await vfs.create('synced', 0o644, CALLER, NEW);
        await synced.file.fsync(false);
        expect((await shared.store.head(`${prefix}synced`))!.size).to.equal(0);
        await synced.file.release();
        const shared2 = await vfs.create('two', 0o644, CALLER, NEW);
        const other = await vfs.open('two', { read: true, write: false, append: false, truncate: false });
        await shared2.file.flush();
        expect((await shared.store.head(`${prefix}two`))!.size).to.equal(0);
        await shared2.file.release();
        await other.release();
        // Stored by sync.
        const kept = await vfs.create('kept', 0o644, CALLER, NEW);
        await kept.file.flush();
        await vfs.sync();
        expect((await shared.store.head(`${prefix}kept`))!.size).to.equal(0);
        await kept.file.release();
      });

      it('shows a created file that is not stored yet in stat and in its directory', async () => {
        const { vfs } = mk();
        await vfs.mkdir('d', 0o755, CALLER);
        const { file } = await vfs.create('d/new', 0o600, CALLER, NEW);
        expect((await vfs.stat('d/new'))!.size).to.equal(0);
        expect(await names(vfs, 'd')).to.deep.equal(['new']);
        await expectErrno(vfs.rmdir('d'), 'ENOTEMPTY');
        await expectErrno(vfs.create('d/new', 0o600, CALLER, NEW), 'EEXIST');
        await file.release();
        expect(await names(vfs, 'd')).to.deep.equal(['new']);
      });

      it('overwrites the middle of an existing object, fetching only what it needs', async () => {
        const { vfs, store } = mk({ blockSize: 64 * KiB });
        const body = patternBytes(1, 300 * KiB);
        await writeFile(vfs, 'f', body);
        const f = await vfs.open('f', RW);
        store.reset();
        await f.write(100 * KiB, text('MIDDLE'));
        await f.flush();
        const want = body.slice();
        want.set(text('MIDDLE'), 100 * KiB);
        expect(equalBytes(await readAll(f), want)).to.equal(true);
        await f.release();
        expect(equalBytes(await readFile(vfs, 'f'), want)).to.equal(true);

        // A rewrite of every byte needs nothing of the old object.
        const g = await vfs.open('f', RW);
        store.reset();
        const other = patternBytes(2, 300 * KiB);
        await g.write(0, other);
        await g.release();
        expect(store.bytesRead).to.equal(0);
        expect(equalBytes(await readFile(vfs, 'f'), other)).to.equal(true);
      });

      it('appends, truncates and extends open and closed files', async () => {
        const { vfs } = mk();
        await writeFile(vfs, 'f', 'abcdef');
        const f = await vfs.open('f', { read: true, write: true, truncate: false, append: true });
        await f.write((await f.attr()).size, text('gh'));
        await f.release();
        expect(str(await readFile(vfs, 'f'))).to.equal('abcdefgh');

        // Closed file: truncate, then extend with zeros.
        expect((await vfs.setattr('f', { size: 3 })).size).to.equal(3);
        expect(str(await readFile(vfs, 'f'))).to.equal('abc');
        expect((await vfs.setattr('f', { size: 6 })).size).to.equal(6);
        expect(Array.from(await readFile(vfs, 'f'))).to.deep.equal([97, 98, 99, 0, 0, 0]);

        // Open file: truncate shorter, extend, write past the end (a hole).
        const g = await vfs.open('f', RW);
        await vfs.setattr('f', { size: 2 });
        expect((await g.attr()).size).to.equal(2);
        await g.write(4, text('Z'));
        expect(Array.from(await g.read(0, 10))).to.deep.equal([97, 98, 0, 0, 90]);
        await g.allocate(0, 8);
        expect((await g.attr()).size).to.equal(8);
        await g.release();
        expect(Array.from(await readFile(vfs, 'f'))).to.deep.equal([97, 98, 0, 0, 90, 0, 0, 0]);

        // O_TRUNC.
        const h = await vfs.open('f', { read: true, write: true, truncate: true, append: false });
        expect((await h.attr()).size).to.equal(0);
        await h.write(0, text('new'));
        await h.release();
        expect(str(await readFile(vfs, 'f'))).to.equal('new');
      });

      it('stores a big file by multipart upload and reads it back with read-ahead', async () => {
        const { vfs, store } = mk({ multipartThreshold: 6 * MiB, partSize: 5 * MiB, spillThreshold: 2 * MiB, blockSize: 256 * KiB, readAheadBytes: MiB });
        const part = Math.max(5 * MiB, shared.store.capabilities.minPartSize);
        const body = patternBytes(3, 2 * part + 123_457);
        const { file } = await vfs.create('big', 0o644, CALLER, NEW);
        for (let off = 0; off < body.length; off += 1 * MiB) await file.write(off, body.subarray(off, Math.min(body.length, off + MiB)));
        expect(vfs.stats.spilledFiles).to.equal(1);
        await file.release();
        expect(store.count('createMultipart')).to.equal(1);
        expect(store.count('uploadPart')).to.be.at.least(3);
        expect((await vfs.stat('big'))!.size).to.equal(body.length);
        const fresh = mk({ blockSize: 256 * KiB, readAheadBytes: MiB }, mkPrefixOf(vfs));
        const f = await fresh.vfs.open('big', RO);
        const got = await readAll(f, 128 * KiB);
        await f.release();
        expect(equalBytes(got, body)).to.equal(true);
        // Sequential reads were served mostly by read-ahead: few demand misses.
        expect(fresh.vfs.stats.pageMisses).to.be.below(fresh.vfs.stats.pageFetches);
      });

      it('appending to a big file copies its unchanged leading parts in the store (UploadPartCopy) instead of fetching and sending them', async () => {
        const opts = { multipartThreshold: 6 * MiB, partSize: 5 * MiB, blockSize: 256 * KiB, readAheadBytes: 0 };
        const part = Math.max(5 * MiB, shared.store.capabilities.minPartSize);
        const body = patternBytes(41, 2 * part + 100_000);
        const tail = patternBytes(42, 5000);
        for (const refuse of [false, true]) {
          const { vfs, store } = mk(opts);
          store.noPartCopy = refuse;
          await writeFile(vfs, 'big', body);
          const f = await vfs.open('big', RW);
          store.reset();
          await f.write(body.length, tail);
          await f.release();
          const copies = q.partCopy && !refuse;
          // Two parts of old bytes; the third holds the last 100,000 old bytes and the append.
          // (Refused: the parts in flight together each ask before the first refusal is known.)
          if (copies) expect([store.count('uploadPartCopy'), store.count('uploadPart')]).to.deep.equal([2, 1]);
          else expect([Math.min(1, store.count('uploadPartCopy')), store.count('uploadPartCopy') <= 2, store.count('uploadPart')], `refuse ${refuse}`).to.deep.equal([1, true, 3]);
          expect(store.bytesRead, `refuse ${refuse}`).to.equal(copies ? 100_000 : body.length);
          const want = new Uint8Array(body.length + tail.length);
          want.set(body);
          want.set(tail, body.length);
          expect(equalBytes(await readFile(mk({}, mkPrefixOf(vfs)).vfs, 'big'), want)).to.equal(true);
          expect(equalBytes(await readFile(vfs, 'big'), want)).to.equal(true);
          // A change in the second part: the first and the last are copied (a store that
          // refused is not asked again).
          const g = await vfs.open('big', RW);
          store.reset();
          await g.write(part + 10, text('CHANGED'));
          await g.release();
          expect(store.count('uploadPartCopy'), `refuse ${refuse}`).to.equal(copies ? 2 : 0);
          want.set(text('CHANGED'), part + 10);
          expect(equalBytes(await readFile(mk({}, mkPrefixOf(vfs)).vfs, 'big'), want)).to.equal(true);
        }
      });

      it('keeps mode, owner, times and xattrs when a file is rewritten', async () => {
        const { vfs } = mk();
        await writeFile(vfs, 'f', 'one', 0o600);
        await vfs.setattr('f', { uid: 42, gid: 43, mtime: 1_000_000_000_000_000_000n });
        await vfs.setxattr('f', 'user.tag', text('v'), { create: false, replace: false });
        const g = await vfs.open('f', RW);
        await g.write(0, text('two'));
        await g.release();
        const fresh = mk({}, mkPrefixOf(vfs)).vfs;
        const a = (await fresh.stat('f'))!;
        expect(a.mode).to.equal(S_IFREG | 0o600);
        expect([a.uid, a.gid]).to.deep.equal([42, 43]);
        expect(a.mtime > 1_000_000_000_000_000_000n).to.equal(true);
        expect(str(await fresh.getxattr('f', 'user.tag'))).to.equal('v');
        expect(str(await readFile(fresh, 'f'))).to.equal('two');
      });

      it('unlinks files (an open handle keeps reading), and reports EISDIR/ENOENT', async () => {
        const { vfs } = mk({ blockSize: 4 * KiB });
        const body = patternBytes(4, 20 * KiB);
        await writeFile(vfs, 'f', body);
        const f = await vfs.open('f', RO);
        expect((await f.attr()).nlink ?? 1, 'a linked file').to.equal(1);
        await vfs.unlink('f');
        expect(await vfs.stat('f')).to.equal(null);
        expect((await f.attr()).nlink, 'fstat of an unlinked open file: no links, as Linux').to.equal(0);
        expect(equalBytes(await readAll(f), body)).to.equal(true);
        await f.release();
        await expectErrno(vfs.unlink('f'), 'ENOENT');
        await vfs.mkdir('d', 0o755, CALLER);
        await expectErrno(vfs.unlink('d'), 'EISDIR');
        await expectErrno(vfs.open('missing', RO), 'ENOENT');
        await expectErrno(vfs.open('d', RO), 'EISDIR');
      });

      it('setattr through an open handle: truncate and metadata of an unlinked or replaced file stay with the handle, nothing is stored', async () => {
        const { vfs, store, prefix } = mk();
        await writeFile(vfs, 'f', 'hello world');
        await writeFile(vfs, 'g', 'other');
        const f = await vfs.open('f', RW);
        const r = await vfs.open('g', RO);
        await vfs.unlink('f');
        await writeFile(vfs, 'h', 'new g');
        await vfs.rename('h', 'g', false); // g's open file is replaced
        expect((await r.attr()).nlink, 'a file replaced by rename has no links').to.equal(0);
        store.reset();
        expect((await f.setattr({ size: 5 })).size).to.equal(5);
        const a = await f.setattr({ mode: 0o600, uid: 7, gid: 8, mtime: 2_000_000_000_000n });
        expect([a.mode, a.uid, a.gid, a.mtime, a.size]).to.deep.equal([S_IFREG | 0o600, 7, 8, 2_000_000_000_000n, 5]);
        expect(str(await readAll(f))).to.equal('hello');
        // A read-only handle may change attributes (fchmod needs no write access).
        expect((await r.setattr({ mode: 0o640 })).mode).to.equal(S_IFREG | 0o640);
        expect(str(await readAll(r))).to.equal('other');
        await f.fsync(false);
        await f.release();
        await r.release();
        expect([store.count('put'), store.count('copy'), store.count('createMultipart')]).to.deep.equal([0, 0, 0]);
        expect(await shared.store.head(`${prefix}f`)).to.equal(null);
        const g = (await shared.store.head(`${prefix}g`))!;
        expect(g.metadata.mode).to.equal(String(S_IFREG | 0o644));
        expect(str(await readFile(vfs, 'g'))).to.equal('new g');
      });

      it('setattr through an open handle of a file that is still there changes the file (chmod stored at once, truncate at flush)', async () => {
        const { vfs, prefix } = mk();
        await writeFile(vfs, 'f', 'hello world');
        const f = await vfs.open('f', RW);
        expect((await f.setattr({ mode: 0o600 })).mode).to.equal(S_IFREG | 0o600);
        expect((await shared.store.head(`${prefix}f`))!.metadata.mode).to.equal(String(S_IFREG | 0o600));
        expect((await f.setattr({ size: 4 })).size).to.equal(4);
        expect((await vfs.stat('f'))!.size).to.equal(4);
        await f.flush();
        expect(str((await shared.store.get(`${prefix}f`)).body)).to.equal('hell');
        await f.release();
        await expectErrno(f.setattr({ mode: 0o644 }), 'EBADF');
      });

      it('refuses paths whose keys the store cannot hold with ENAMETOOLONG, before writing anything', async () => {
        const { vfs, store } = mk();
        let dir = '';
        for (let i = 0; i < 4; i++) {
          dir = dir === '' ? 'x'.repeat(200) : `${dir}/${'x'.repeat(200)}`;
          await vfs.mkdir(dir, 0o755, CALLER);
        }
        store.reset();
        const tooLong = `${dir}/${'y'.repeat(250)}`;
        expect(Buffer.byteLength(vfs.keys.fileKey(tooLong))).to.be.above(1024);
        await expectErrno(vfs.create(tooLong, 0o644, CALLER, NEW), 'ENAMETOOLONG');
        await expectErrno(vfs.mkdir(tooLong, 0o755, CALLER), 'ENAMETOOLONG');
        await expectErrno(vfs.symlink(tooLong, 'target', CALLER), 'ENAMETOOLONG');
        expect(store.count('put')).to.equal(0);
        expect(await vfs.stat(tooLong)).to.equal(null);
      });
    });

    describe('directories', () => {
      it('mkdir writes a marker with metadata; rmdir, EEXIST, ENOTEMPTY, ENOTDIR, ENOENT', async () => {
        const { vfs, prefix } = mk();
        const a = await vfs.mkdir('d', 0o750, CALLER);
        expect(a.kind).to.equal('dir');
        expect(a.mode).to.equal(S_IFDIR | 0o750);
        const marker = await shared.store.head(`${prefix}d/`);
        expect(marker).to.not.equal(null);
        expect(marker!.metadata.mode).to.equal(String(S_IFDIR | 0o750));
        await expectErrno(vfs.mkdir('d', 0o755, CALLER), 'EEXIST');
        await writeFile(vfs, 'd/f', 'x');
        await expectErrno(vfs.mkdir('d/f', 0o755, CALLER), 'EEXIST');
        await expectErrno(vfs.mkdir('nope/sub', 0o755, CALLER), 'ENOENT');
        await expectErrno(vfs.mkdir('d/f/sub', 0o755, CALLER), 'ENOTDIR');
        await expectErrno(vfs.rmdir('d'), 'ENOTEMPTY');
        await expectErrno(vfs.rmdir('d/f'), 'ENOTDIR');
        await expectErrno(vfs.rmdir('zz'), 'ENOENT');
        await expectErrno(vfs.list('d/f'), 'ENOTDIR');
        await expectErrno(vfs.list('zz'), 'ENOENT');
        await vfs.unlink('d/f');
        await vfs.rmdir('d');
        expect(await vfs.stat('d')).to.equal(null);
        expect(await shared.store.head(`${prefix}d/`)).to.equal(null);
        expect(await names(vfs, '')).to.deep.equal([]);
      });

      it('lists files, directories (marker or implicit) and symlinks with their attributes', async () => {
        const { vfs } = mk();
        await vfs.mkdir('a', 0o700, CALLER);
        await writeFile(vfs, 'a/one', '1');
        await vfs.mkdir('a/sub', 0o755, CALLER);
        await writeFile(vfs, 'a/sub/deep', 'deep');
        await vfs.symlink('a/link', 'one', CALLER);
        const list = await vfs.list('a');
        const byName = new Map(list.map((e) => [e.name, e.attr]));
        expect([...byName.keys()].sort()).to.deep.equal(['link', 'one', 'sub']);
        expect(byName.get('one')!.kind).to.equal('file');
        expect(byName.get('one')!.size).to.equal(1);
        expect(byName.get('sub')!.kind).to.equal('dir');
        expect(byName.get('link')!.kind).to.equal('symlink');
        expect(byName.get('link')!.size).to.equal(3);
        expect(await names(vfs, '')).to.deep.equal(['a']);
      });

      it('a setgid directory passes its group on to new files, directories and symlinks, and its setgid bit to directories', async () => {
        const { vfs, prefix } = mk();
        await vfs.mkdir('d', 0o755, CALLER);
        await vfs.setattr('d', { mode: 0o2775, gid: 1234 });
        const sub = await vfs.mkdir('d/sub', 0o755, CALLER);
        const { attr: f, file } = await vfs.create('d/f', 0o644, CALLER, NEW);
        await file.release();
        const l = await vfs.symlink('d/l', 'f', CALLER);
        expect([sub.mode, sub.uid, sub.gid]).to.deep.equal([S_IFDIR | 0o2755, CALLER.uid, 1234]);
        expect([f.mode, f.uid, f.gid]).to.deep.equal([S_IFREG | 0o644, CALLER.uid, 1234]);
        expect([l.mode, l.gid]).to.deep.equal([S_IFLNK | 0o777, 1234]);
        // Inherited further down, and stored.
        const deeper = await vfs.mkdir('d/sub/deeper', 0o700, CALLER);
        expect([deeper.mode, deeper.gid]).to.deep.equal([S_IFDIR | 0o2700, 1234]);
        const fresh = mk({}, prefix).vfs;
        for (const [p, mode] of [['d/sub', S_IFDIR | 0o2755], ['d/f', S_IFREG | 0o644], ['d/l', S_IFLNK | 0o777]] as const) {
          const a = (await fresh.stat(p))!;
          expect([a.mode, a.gid], p).to.deep.equal([mode, 1234]);
        }
        // Without setgid: the caller's group, no setgid bit.
        await vfs.setattr('d', { mode: 0o775 });
        const plain = await vfs.mkdir('d/plain', 0o755, CALLER);
        expect([plain.mode, plain.gid]).to.deep.equal([S_IFDIR | 0o755, CALLER.gid]);
      });

      it('keeps an implicit directory when its last entry is removed', async () => {
        const { vfs, prefix } = mk();
        await shared.store.put(`${prefix}imp/only`, text('x'));
        expect((await vfs.stat('imp'))!.kind).to.equal('dir');
        await vfs.unlink('imp/only');
        expect((await vfs.stat('imp'))!.kind).to.equal('dir');
        expect(await shared.store.head(`${prefix}imp/`)).to.not.equal(null);
        await vfs.rmdir('imp');
        expect(await vfs.stat('imp')).to.equal(null);
      });
    });

    describe('rename', () => {
      it('renames files, over files, and honours RENAME_NOREPLACE', async () => {
        const { vfs, prefix } = mk();
        await writeFile(vfs, 'a', 'AAA');
        await vfs.setattr('a', { mtime: 1_000_000_000n, ctime: 2_000_000_000n });
        await vfs.setxattr('a', 'user.k', text('v'), { create: true, replace: false });
        const before = (await vfs.stat('a'))!;
        await vfs.rename('a', 'b', false);
        // rename(2) changes ctime, not mtime; a fresh view reads the same from the store.
        const after = (await mk({}, prefix).vfs.stat('b'))!;
        expect(after.mtime).to.equal(1_000_000_000n);
        expect(after.ctime > before.ctime).to.equal(true);
        expect(after.mode).to.equal(before.mode);
        expect(await vfs.stat('a')).to.equal(null);
        expect(str(await readFile(vfs, 'b'))).to.equal('AAA');
        expect(str(await vfs.getxattr('b', 'user.k'))).to.equal('v');
        expect(await shared.store.head(`${prefix}a`)).to.equal(null);
        await writeFile(vfs, 'c', 'CCC');
        await expectErrno(vfs.rename('c', 'b', true), 'EEXIST');
        await vfs.rename('c', 'b', false);
        expect(str(await readFile(vfs, 'b'))).to.equal('CCC');
        expect(await names(vfs, '')).to.deep.equal(['b']);
        await expectErrno(vfs.rename('missing', 'x', false), 'ENOENT');
        await expectErrno(vfs.rename('b', 'nodir/x', false), 'ENOENT');
      });

      it('renames an open file that has unstored writes', async () => {
        const { vfs } = mk();
        const { file } = await vfs.create('w', 0o644, CALLER, NEW);
        await file.write(0, text('pending'));
        await vfs.rename('w', 'w2', false);
        await file.write(7, text('+more'));
        await file.release();
        expect(await vfs.stat('w')).to.equal(null);
        expect(str(await readFile(vfs, 'w2'))).to.equal('pending+more');
      });

      it('renames directories with nested content (copy + delete of every key)', async () => {
        const { vfs, prefix } = mk();
        await vfs.mkdir('src', 0o711, CALLER);
        await vfs.mkdir('src/sub', 0o755, CALLER);
        await writeFile(vfs, 'src/f1', 'one');
        await writeFile(vfs, 'src/sub/f2', 'two');
        await shared.store.put(`${prefix}src/implicit/f3`, text('three'));
        const { file } = await vfs.create('src/sub/open', 0o644, CALLER, NEW);
        await file.write(0, text('unstored'));
        await vfs.rename('src', 'dst', false);
        await file.release();
        expect(await vfs.stat('src')).to.equal(null);
        expect((await vfs.stat('dst'))!.mode).to.equal(S_IFDIR | 0o711);
        expect((await mk({}, prefix).vfs.stat('dst'))!.mode).to.equal(S_IFDIR | 0o711);
        expect(await names(vfs, 'dst')).to.deep.equal(['f1', 'implicit', 'sub']);
        expect(await names(vfs, 'dst/sub')).to.deep.equal(['f2', 'open']);
        expect(str(await readFile(vfs, 'dst/sub/f2'))).to.equal('two');
        expect(str(await readFile(vfs, 'dst/implicit/f3'))).to.equal('three');
        expect(str(await readFile(vfs, 'dst/sub/open'))).to.equal('unstored');
        const left = await shared.store.list({ prefix: `${prefix}src` });
        expect(left.objects).to.deep.equal([]);
      });

      it('replaces an empty directory, refuses a non-empty one, and checks kinds', async () => {
        const { vfs } = mk();
        await vfs.mkdir('a', 0o755, CALLER);
        await writeFile(vfs, 'a/x', 'x');
        await vfs.mkdir('empty', 0o755, CALLER);
        await vfs.mkdir('full', 0o755, CALLER);
        await writeFile(vfs, 'full/y', 'y');
        await writeFile(vfs, 'file', 'f');
        await expectErrno(vfs.rename('a', 'full', false), 'ENOTEMPTY');
        await expectErrno(vfs.rename('a', 'file', false), 'ENOTDIR');
        await expectErrno(vfs.rename('file', 'empty', false), 'EISDIR');
        await expectErrno(vfs.rename('a', 'a/inside', false), 'EINVAL');
        await expectErrno(vfs.rename('a', 'empty', true), 'EEXIST');
        await vfs.rename('a', 'empty', false);
        expect(await names(vfs, '')).to.deep.equal(['empty', 'file', 'full']);
        expect(await names(vfs, 'empty')).to.deep.equal(['x']);
      });
    });

    describe('symlinks, attributes, xattrs', () => {
      it('stores symlinks as s3fs does (body = target, S_IFLNK) and reads them back', async () => {
        const { vfs, prefix } = mk();
        const a = await vfs.symlink('l', '../some/where', CALLER);
        expect(a.kind).to.equal('symlink');
        expect(a.mode & 0o170000).to.equal(S_IFLNK);
        expect(await vfs.readlink('l')).to.equal('../some/where');
        const got = await shared.store.get(`${prefix}l`);
        expect(str(got.body)).to.equal('../some/where');
        expect(Number(got.metadata.mode) & 0o170000).to.equal(S_IFLNK);
        const fresh = mk({}, prefix).vfs;
        expect(await fresh.readlink('l')).to.equal('../some/where');
        expect((await fresh.stat('l'))!.kind).to.equal('symlink');
        await writeFile(vfs, 'f', 'x');
        await expectErrno(vfs.readlink('f'), 'EINVAL');
        await expectErrno(vfs.symlink('l', 'x', CALLER), 'EEXIST');
        await expectErrno(vfs.open('l', RO), 'ELOOP');
      });

      it('chmod, chown and utimens via setattr, stored in metadata (files and directories)', async () => {
        const { vfs, prefix } = mk();
        await writeFile(vfs, 'f', 'x');
        await vfs.mkdir('d', 0o755, CALLER);
        await shared.store.put(`${prefix}imp/x`, text('x'));
        const mtime = 1_600_000_000_123_456_789n;
        const atime = 1_500_000_000_000_000_001n;
        for (const p of ['f', 'd', 'imp']) {
          const a = await vfs.setattr(p, { mode: 0o4711, uid: 7, gid: 8, mtime, atime });
          expect(a.mode & 0o7777).to.equal(0o4711);
          expect([a.uid, a.gid, a.mtime, a.atime]).to.deep.equal([7, 8, mtime, atime]);
        }
        const fresh = mk({}, prefix).vfs;
        for (const p of ['f', 'd', 'imp']) {
          const a = (await fresh.stat(p))!;
          expect(a.mode & 0o7777, p).to.equal(0o4711);
          expect([a.uid, a.gid, a.mtime, a.atime], p).to.deep.equal([7, 8, mtime, atime]);
        }
        expect((await fresh.stat('f'))!.kind).to.equal('file');
        expect(str(await readFile(fresh, 'f'))).to.equal('x');
        const now = (await vfs.setattr('f', { mtime: 'now' })).mtime;
        expect(Number(now / 1_000_000n)).to.be.closeTo(Date.now(), 60_000);
        await expectErrno(vfs.setattr('missing', { mode: 0o600 }), 'ENOENT');
      });

      it('user.* xattrs: set, get, list, remove, flags, ENODATA, EOPNOTSUPP, persisted', async () => {
        const { vfs, prefix } = mk();
        await writeFile(vfs, 'f', 'x');
        await vfs.mkdir('d', 0o755, CALLER);
        const bin = new Uint8Array([0, 1, 2, 255, 10, 13]);
        for (const p of ['f', 'd', '']) {
          await vfs.setxattr(p, 'user.bin', bin, { create: true, replace: false });
          await vfs.setxattr(p, 'user.Ünïcode Name', text('ok'), { create: false, replace: false });
          await vfs.setxattr(p, 'user.empty', new Uint8Array(0), { create: false, replace: false });
          await expectErrno(vfs.setxattr(p, 'user.bin', bin, { create: true, replace: false }), 'EEXIST');
          await expectErrno(vfs.setxattr(p, 'user.none', bin, { create: false, replace: true }), 'ENODATA');
          expect(Array.from(await vfs.getxattr(p, 'user.bin'))).to.deep.equal(Array.from(bin));
          expect((await vfs.getxattr(p, 'user.empty')).length).to.equal(0);
          expect(await vfs.listxattr(p)).to.deep.equal(['user.bin', 'user.empty', 'user.Ünïcode Name']);
          await expectErrno(vfs.getxattr(p, 'user.none'), 'ENODATA');
          await expectErrno(vfs.removexattr(p, 'user.none'), 'ENODATA');
          await expectErrno(vfs.getxattr(p, 'security.selinux'), 'EOPNOTSUPP');
          await expectErrno(vfs.setxattr(p, 'trusted.x', bin, { create: false, replace: false }), 'EOPNOTSUPP');
          await vfs.removexattr(p, 'user.empty');
        }
        await expectErrno(vfs.setxattr('f', 'user.huge', new Uint8Array(3000), { create: false, replace: false }), 'ENOSPC');
        const fresh = mk({}, prefix).vfs;
        for (const p of ['f', 'd']) {
          expect(await fresh.listxattr(p)).to.deep.equal(['user.bin', 'user.Ünïcode Name']);
          expect(str(await fresh.getxattr(p, 'user.Ünïcode Name'))).to.equal('ok');
        }
        const meta = (await shared.store.head(`${prefix}f`))!.metadata;
        expect(meta[`xattr-${Buffer.from('bin').toString('hex')}`]).to.equal(Buffer.from(bin).toString('base64'));
      });
    });

    describe('objects written by others', () => {
      it('a file that hides a directory of the same name: removing it (unlink, rename) shows the directory at once', async () => {
        const { vfs, store, prefix } = mk({ negativeTtlMs: 60_000, listTtlMs: 60_000, attrTtlMs: 60_000 });
        for (const name of ['u', 'r', 'l']) {
          await shared.store.put(`${prefix}${name}`, text('the file'));
          await shared.store.put(`${prefix}${name}/hidden`, text('hidden'));
        }
        await writeFile(vfs, 'plain', 'no directory below');
        // Not listed yet: unlink and rename cannot know what the file hid.
        expect((await vfs.stat('u'))!.kind).to.equal('file');
        await vfs.unlink('u');
        expect((await vfs.stat('u'))!.kind).to.equal('dir');
        expect(await names(vfs, 'u')).to.deep.equal(['hidden']);
        expect((await vfs.stat('r'))!.kind).to.equal('file');
        await vfs.rename('r', 'moved', false);
        expect((await vfs.stat('r'))!.kind).to.equal('dir');
        expect(str(await readFile(vfs, 'r/hidden'))).to.equal('hidden');
        expect(str(await readFile(vfs, 'moved'))).to.equal('the file');
        // With a fresh listing of the parent: it knows which names hide a directory.
        expect(await names(vfs, '')).to.deep.equal(['l', 'moved', 'plain', 'r', 'u']);
        await vfs.unlink('l');
        expect((await vfs.stat('l'))!.kind).to.equal('dir');
        expect(await names(vfs, '')).to.deep.equal(['l', 'moved', 'plain', 'r', 'u']);
        // A file that hid nothing is gone without asking the store again.
        await vfs.unlink('plain');
        store.reset();
        expect(await vfs.stat('plain')).to.equal(null);
        expect(await names(vfs, '')).to.deep.equal(['l', 'moved', 'r', 'u']);
        expect([store.count('head'), store.count('list')]).to.deep.equal([0, 0]);
      });

      it('reads objects without metadata with the configured defaults and LastModified', async () => {
        const { vfs, prefix } = mk({ defaultFileMode: 0o604, defaultDirMode: 0o705, uid: 11, gid: 12 });
        await shared.store.put(`${prefix}plain`, text('data'));
        await shared.store.put(`${prefix}dir/`, new Uint8Array(0));
        await shared.store.put(`${prefix}implicit/deeper/file`, text('x'));
        const lm = (await shared.store.head(`${prefix}plain`))!.lastModified.getTime();
        const f = (await vfs.stat('plain'))!;
        expect(f.mode).to.equal(S_IFREG | 0o604);
        expect([f.uid, f.gid, f.size]).to.deep.equal([11, 12, 4]);
        expect(f.mtime).to.equal(BigInt(lm) * 1_000_000n);
        for (const d of ['dir', 'implicit', 'implicit/deeper']) {
          const a = (await vfs.stat(d))!;
          expect(a.kind, d).to.equal('dir');
          expect(a.mode, d).to.equal(S_IFDIR | 0o705);
        }
        // s3rver does not report a common prefix whose keys are all two or more levels deeper.
        expect(await names(vfs, '')).to.deep.equal(q.deepCommonPrefixes ? ['dir', 'implicit', 'plain'] : ['dir', 'plain']);
        expect(await names(vfs, 'implicit')).to.deep.equal(['deeper']);
        expect(str(await readFile(vfs, 'implicit/deeper/file'))).to.equal('x');
      });

      it('reads s3fs metadata (decimal and octal mode) and rclone float mtimes', async () => {
        const { vfs, prefix } = mk();
        await shared.store.put(`${prefix}s3fs-dec`, text('a'), { metadata: { mode: '33261', uid: '5', gid: '6', mtime: '1700000000' } });
        await shared.store.put(`${prefix}s3fs-oct`, text('b'), { metadata: { mode: '0100600', mtime: '1700000000.000000005', ctime: '1700000001' } });
        await shared.store.put(`${prefix}rclone`, text('c'), { metadata: { mtime: '1700000000.25' } });
        await shared.store.put(`${prefix}link`, text('s3fs-dec'), { metadata: { mode: String(S_IFLNK | 0o777) } });
        await shared.store.put(`${prefix}sdir/`, new Uint8Array(0), { metadata: { mode: String(S_IFDIR | 0o750), uid: '9' } });
        await shared.store.put(`${prefix}garbage`, text('d'), { metadata: { mode: 'rwxr-xr-x', uid: '-1', mtime: 'yesterday' } });
        const dec = (await vfs.stat('s3fs-dec'))!;
        expect([dec.mode, dec.uid, dec.gid, dec.mtime]).to.deep.equal([S_IFREG | 0o755, 5, 6, 1_700_000_000_000_000_000n]);
        const oct = (await vfs.stat('s3fs-oct'))!;
        expect([oct.mode, oct.mtime, oct.ctime]).to.deep.equal([S_IFREG | 0o600, 1_700_000_000_000_000_005n, 1_700_000_001_000_000_000n]);
        expect((await vfs.stat('rclone'))!.mtime).to.equal(1_700_000_000_250_000_000n);
        expect((await vfs.stat('link'))!.kind).to.equal('symlink');
        expect(await vfs.readlink('link')).to.equal('s3fs-dec');
        const sd = (await vfs.stat('sdir'))!;
        expect([sd.kind, sd.mode, sd.uid]).to.deep.equal(['dir', S_IFDIR | 0o750, 9]);
        const g = (await vfs.stat('garbage'))!;
        expect(g.mode).to.equal(S_IFREG | 0o644);
        expect(g.size).to.equal(1);
      });

      it('skips keys that are not valid POSIX names in listings, without failing', async () => {
        const { vfs, prefix } = mk();
        const keys = ['ok-file', 'ok-dir/x'];
        if (q.pathLikeKeys) keys.push('a//b', './dot', '../dotdot', 'x/./y', 'x/../z', 'x//', 'trailing//');
        if (q.longSegments) keys.push(`${'L'.repeat(256)}`, `${'M'.repeat(300)}/f`, `ok-dir/${'é'.repeat(128)}`);
        for (const k of keys) await shared.store.put(prefix + k, text('v'));
        const root = await names(vfs, '');
        expect(root).to.include.members(['ok-file', 'ok-dir']);
        for (const n of root) expect(n === '' || n === '.' || n === '..' || Buffer.byteLength(n) > 255, n).to.equal(false);
        expect(await names(vfs, 'ok-dir')).to.deep.equal(['x']);
        if (q.pathLikeKeys) {
          expect(root).to.include('x');
          expect(root).to.include('a');
          expect(await names(vfs, 'x')).to.deep.equal([]);
          expect(await names(vfs, 'a')).to.deep.equal([]);
          // Hidden keys still count: the directory is not removed from under them.
          await expectErrno(vfs.rmdir('a'), 'ENOTEMPTY');
        }
      });
    });

    describe('caches', () => {
      it('does not see changes by others before the TTL (long TTL)', async () => {
        const { vfs, prefix } = mk({ attrTtlMs: 3_600_000, listTtlMs: 3_600_000, negativeTtlMs: 3_600_000 });
        await writeFile(vfs, 'f', 'one');
        expect(await names(vfs, '')).to.deep.equal(['f']);
        expect(await vfs.stat('g')).to.equal(null);
        await shared.store.put(`${prefix}f`, text('longer content'), { metadata: { mode: String(S_IFREG | 0o600) } });
        await shared.store.put(`${prefix}g`, text('new'));
        expect((await vfs.stat('f'))!.size).to.equal(3);
        expect(await vfs.stat('g')).to.equal(null);
        expect(await names(vfs, '')).to.deep.equal(['f']);
        // The engine's invalidate drops what we knew.
        vfs.invalidate('');
        expect((await vfs.stat('f'))!.size).to.equal(14);
        expect(await names(vfs, '')).to.deep.equal(['f', 'g']);
        // Our own changes are seen at once, through every cache.
        expect(await vfs.stat('h')).to.equal(null);
        await writeFile(vfs, 'h', 'hh');
        expect((await vfs.stat('h'))!.size).to.equal(2);
        expect(await names(vfs, '')).to.deep.equal(['f', 'g', 'h']);
        await vfs.setattr('h', { mode: 0o600 });
        expect((await vfs.list('')).find((e) => e.name === 'h')!.attr.mode).to.equal(S_IFREG | 0o600);
        await vfs.unlink('g');
        expect(await names(vfs, '')).to.deep.equal(['f', 'h']);
      });

      it('sees changes by others after the TTL (short TTL)', async () => {
        const { vfs, prefix } = mk({ attrTtlMs: 150, listTtlMs: 150, negativeTtlMs: 150 });
        await writeFile(vfs, 'f', 'one');
        expect(await names(vfs, '')).to.deep.equal(['f']);
        expect(await vfs.stat('g')).to.equal(null);
        await shared.store.put(`${prefix}f`, text('longer content'), { metadata: { mode: String(S_IFREG | 0o600) } });
        await shared.store.put(`${prefix}g`, text('new'));
        await sleep(250);
        const f = (await vfs.stat('f'))!;
        expect([f.size, f.mode]).to.deep.equal([14, S_IFREG | 0o600]);
        expect((await vfs.stat('g'))!.size).to.equal(3);
        expect(await names(vfs, '')).to.deep.equal(['f', 'g']);
        expect(str(await readFile(vfs, 'f'))).to.equal('longer content');
      });

      it('serves repeated reads from the page cache', async () => {
        const { vfs, store } = mk({ blockSize: 16 * KiB });
        const body = patternBytes(5, 100 * KiB);
        await writeFile(vfs, 'f', body);
        expect(equalBytes(await readFile(vfs, 'f'), body)).to.equal(true);
        store.reset();
        expect(equalBytes(await readFile(vfs, 'f'), body)).to.equal(true);
        expect(store.count('getInto') + store.count('get')).to.equal(0);
      });
    });

    describe('failures and memory', () => {
      it('reports an upload failure on fsync with EIO, keeps the data, and stores it on retry', async () => {
        const { vfs, store, prefix } = mk();
        const { file } = await vfs.create('f', 0o644, CALLER, NEW);
        await file.write(0, text('precious'));
        store.failWrites = true;
        await expectErrno(file.fsync(false), 'EIO');
        await expectErrno(file.flush(), 'EIO');
        expect(str(await file.read(0, 100))).to.equal('precious');
        expect(vfs.stats.dirtyFiles).to.equal(1);
        // The last release fails too, and the data is still kept for a later sync.
        await expectErrno(file.release(), 'EIO');
        expect((await vfs.stat('f'))!.size).to.equal(8);
        await expectErrno(vfs.sync(), 'EIO');
        store.failWrites = false;
        await vfs.sync();
        expect(vfs.stats.dirtyFiles).to.equal(0);
        expect(str((await shared.store.get(`${prefix}f`)).body)).to.equal('precious');
      });

      it('a store answering short for an unchanged object fails the flush (EIO) rather than storing zeros', async () => {
        const { prefix } = mk();
        await shared.store.put(`${prefix}f`, text('0123456789'));
        // A fresh gateway: none of the object's bytes are cached.
        const { vfs, store } = mk({}, prefix);
        const file = await vfs.open('f', RW);
        await file.write(4, text('ab'));
        store.shortGets = true;
        await expectErrno(file.flush(), 'EIO');
        expect(str((await shared.store.get(`${prefix}f`)).body)).to.equal('0123456789');
        store.shortGets = false;
        await file.release();
        expect(str((await shared.store.get(`${prefix}f`)).body)).to.equal('0123ab6789');
      });

      it('a failed multipart upload is reported and retried', async () => {
        const { vfs, store, prefix } = mk({ multipartThreshold: 64 * KiB, partSize: 64 * KiB });
        const body = patternBytes(6, Math.max(3 * shared.store.capabilities.minPartSize, 200 * KiB) + 5);
        const { file } = await vfs.create('f', 0o644, CALLER, NEW);
        await file.write(0, body);
        store.failWrites = true;
        await expectErrno(file.fsync(false), 'EIO');
        store.failWrites = false;
        await file.fsync(false);
        await file.release();
        expect(equalBytes((await shared.store.get(`${prefix}f`)).body, body)).to.equal(true);
      });

      it('keeps memory bounded with many open files by spilling to temporary files', async () => {
        const budget = 1 * MiB;
        const { vfs } = mk({ memoryBudget: budget, spillThreshold: 512 * KiB });
        const files = [];
        const bodies: Uint8Array[] = [];
        for (let i = 0; i < 24; i++) {
          const { file } = await vfs.create(`f${i}`, 0o644, CALLER, NEW);
          const body = patternBytes(100 + i, 200 * KiB + i);
          for (let off = 0; off < body.length; off += 32 * KiB) await file.write(off, body.subarray(off, Math.min(body.length, off + 32 * KiB)));
          files.push(file);
          bodies.push(body);
        }
        expect(vfs.stats.bufferMemoryPeak).to.be.at.most(budget);
        expect(vfs.stats.spilledFiles).to.be.greaterThan(0);
        for (let i = 0; i < files.length; i++) expect(equalBytes(await readAll(files[i]!), bodies[i]!), `f${i}`).to.equal(true);
        for (const f of files) await f.release();
        expect(vfs.stats.bufferMemory).to.equal(0);
        expect(vfs.stats.openFiles).to.equal(0);
        for (let i = 0; i < files.length; i++) expect(equalBytes(await readFile(vfs, `f${i}`), bodies[i]!), `f${i}`).to.equal(true);
      });

      it('statfs reports large constants; sync stores every dirty open file', async () => {
        const { vfs, prefix } = mk();
        const s = await vfs.statfs();
        expect(s.blocks).to.be.greaterThan(2 ** 30);
        expect(s.nameMax).to.equal(255);
        const a = await vfs.create('a', 0o644, CALLER, NEW);
        const b = await vfs.create('b', 0o644, CALLER, NEW);
        await a.file.write(0, text('A'));
        await b.file.write(0, text('B'));
        await vfs.sync();
        expect(str((await shared.store.get(`${prefix}a`)).body)).to.equal('A');
        expect(str((await shared.store.get(`${prefix}b`)).body)).to.equal('B');
        await a.file.release();
        await b.file.release();
      });
    });
  });
}

/** The prefix a BucketVfs was made with (tests open a second view of the same files). */
function mkPrefixOf(vfs: BucketVfs): string {
  return vfs.keys.prefix;
}
