// The FUSE engine served as a vhost-user-fs device (FsExport on a socket) and driven by
// our FUSE client over real virtqueues, on the in-memory Vfs: INIT negotiation, the data
// path, directories across pages with concurrent changes, lookup counts and FORGET,
// errnos, hiprio, many requests in flight, INTERRUPT, hostile chains, disconnects.
import { expect } from 'chai';
import { FsExport } from '../../src/fuse/export.js';
import { workInFlight } from '../../src/native/index.js';
import { CLIENT_INIT_FLAGS, FuseClient, type FuseClientOptions } from '../../src/frontend/fuse-client.js';
import {
  E, FUSE_ASYNC_READ, FUSE_ATOMIC_O_TRUNC, FUSE_BIG_WRITES, FUSE_DO_READDIRPLUS, FUSE_EXPORT_SUPPORT, FUSE_INIT_EXT,
  FUSE_MAX_PAGES, FUSE_PARALLEL_DIROPS, FUSE_POSIX_LOCKS, FUSE_READDIRPLUS_AUTO, FUSE_WRITEBACK_CACHE, IN_HEADER_SIZE,
  OUT_HEADER_SIZE, O_APPEND, O_CREAT, O_EXCL, O_RDONLY, O_RDWR, O_TRUNC, O_WRONLY, Opcode, RENAME_EXCHANGE,
  RENAME_NOREPLACE, S_IFDIR, S_IFIFO, S_IFLNK, S_IFMT, S_IFREG, SEEK_CUR, SEEK_DATA, SEEK_END, SEEK_HOLE, SEEK_SET,
  XATTR_CREATE, XATTR_REPLACE, decodeOutHeader, viewOf,
} from '../../src/fuse/abi.js';
import { cstr, encode, encodeRequest } from '../../src/fuse/requests.js';
import type { DirentPlus } from '../../src/fuse/replies.js';
import type { FuseServerOptions } from '../../src/fuse/server.js';
import { silentLogger } from '../../src/util/log.js';
import { TmpDir, patternBytes } from '../support/tmp.js';
import { errnoCode } from '../support/errno.js';
import { MemoryVfs } from './memory-vfs.js';
import { waitFor } from '../support/wait.js';

const te = new TextEncoder();
const td = new TextDecoder();
const MiB = 1 << 20;

const until = (cond: () => boolean, ms = 5000): Promise<void> => waitFor(cond, ms, 'condition', 2);

function gate(): { wait: Promise<void>; open: () => void } {
  let open!: () => void;
  const wait = new Promise<void>((r) => (open = r));
  return { wait, open };
}

describe('FUSE engine over vhost-user-fs', function () {
  this.timeout(30000);
  let dir: TmpDir;
  let vfs: MemoryVfs;
  let exp: FsExport | null = null;
  let c: FuseClient | null = null;

  async function start(opts: { fuse?: Omit<FuseServerOptions, 'log'>; requestQueues?: number; client?: FuseClientOptions; init?: boolean } = {}): Promise<FuseClient> {
    exp = await FsExport.start({ socket: dir.file('fs.sock'), vfs, requestQueues: opts.requestQueues ?? 1, fuse: opts.fuse, log: silentLogger });
    c = await FuseClient.connect(dir.file('fs.sock'), { requestQueues: opts.requestQueues ?? 1, ...opts.client });
    if (opts.init !== false) await c.init();
    return c;
  }

  beforeEach(() => {
    dir = new TmpDir();
    vfs = new MemoryVfs();
  });
  afterEach(async () => {
    vfs.hooks = {};
    await c?.close();
    c = null;
    await exp?.close();
    exp = null;
    dir.remove();
  });

  describe('INIT', () => {
    it('negotiates flags, max_write, max_pages and the minor; never EXPORT_SUPPORT', async () => {
      const cl = await start({ init: false });
      const out = await cl.init({ flags: CLIENT_INIT_FLAGS | FUSE_EXPORT_SUPPORT | FUSE_WRITEBACK_CACHE | FUSE_POSIX_LOCKS, maxReadahead: 12345 });
      expect(out.major).to.equal(7);
      expect(out.minor).to.equal(38);
      expect(out.maxWrite).to.equal(MiB);
      expect(out.maxPages).to.equal(256);
      expect(out.maxReadahead).to.equal(12345);
      expect(out.flags).to.equal(FUSE_ASYNC_READ | FUSE_ATOMIC_O_TRUNC | FUSE_BIG_WRITES | FUSE_DO_READDIRPLUS
        | FUSE_READDIRPLUS_AUTO | FUSE_PARALLEL_DIROPS | FUSE_MAX_PAGES | FUSE_INIT_EXT);
      expect(out.flags & FUSE_EXPORT_SUPPORT).to.equal(0);
      expect(out.flags2).to.equal(0);
    });

    it('answers a 7.31 kernel with 7.31 and only the flags it offered', async () => {
      const cl = await start({ init: false });
      const out = await cl.init({ minor: 31, flags: FUSE_ASYNC_READ | FUSE_BIG_WRITES });
      expect(out.minor).to.equal(31);
      expect(out.flags).to.equal(FUSE_ASYNC_READ | FUSE_BIG_WRITES);
    });

    it('refuses major != 7 and minor < 31 (EPROTO), and requests before INIT (EIO)', async () => {
      const cl = await start({ init: false });
      expect(await errnoCode(cl.getattr(1))).to.equal('EIO');
      expect(await errnoCode(cl.init({ major: 8 }))).to.equal('EPROTO');
      expect(await errnoCode(cl.init({ major: 6 }))).to.equal('EPROTO');
      expect(await errnoCode(cl.init({ minor: 30 }))).to.equal('EPROTO');
      expect(await errnoCode(cl.getattr(1))).to.equal('EIO');
      await cl.init();
      expect((await cl.getattr(1)).attr.mode & S_IFMT).to.equal(S_IFDIR);
    });

    it('a second INIT on the same connection (a rebooted guest) starts a new session', async () => {
      const cl = await start();
      const f = await cl.create(1, 'f', O_CREAT | O_RDWR);
      expect(vfs.openFiles).to.equal(1);
      await cl.init();
      expect(vfs.openFiles).to.equal(0);
      expect(await errnoCode(cl.getattr(f.entry.nodeid))).to.equal('ESTALE');
      const again = await cl.lookup(1, 'f');
      expect(again.nodeid).to.be.greaterThan(f.entry.nodeid);
      expect(again.generation).to.be.greaterThan(f.entry.generation);
    });
  });

  describe('files', () => {
    it('creates, writes, reads back, flushes, fsyncs and releases', async () => {
      const cl = await start();
      const { entry, fh } = await cl.create(1, 'hello.txt', O_CREAT | O_EXCL | O_RDWR, 0o100640);
      expect(entry.nodeid).to.be.greaterThan(1);
      expect(entry.attr.mode).to.equal(S_IFREG | 0o640);
      expect(entry.attr.ino).to.equal(entry.nodeid);
      expect(entry.attr.uid).to.equal(process.getuid!());
      expect(entry.entryValidMs).to.equal(1000);
      expect(await cl.write(entry.nodeid, fh, 0, te.encode('hello, '))).to.equal(7);
      expect(await cl.write(entry.nodeid, fh, 7, te.encode('world'))).to.equal(5);
      expect(td.decode(await cl.read(entry.nodeid, fh, 0, 100))).to.equal('hello, world');
      expect(td.decode(await cl.read(entry.nodeid, fh, 7, 3))).to.equal('wor');
      expect((await cl.read(entry.nodeid, fh, 100, 10)).length).to.equal(0);
      expect((await cl.getattr(entry.nodeid, fh)).attr.size).to.equal(12);
      expect((await cl.getattr(entry.nodeid)).attr.size).to.equal(12);
      await cl.flush(entry.nodeid, fh);
      await cl.fsync(entry.nodeid, fh, true);
      await cl.release(entry.nodeid, fh);
      expect(vfs.openFiles).to.equal(0);
      expect(td.decode(vfs.get('hello.txt')!)).to.equal('hello, world');
      expect(await errnoCode(cl.release(entry.nodeid, fh))).to.equal('EBADF');
      expect(await errnoCode(cl.read(entry.nodeid, fh, 0, 1))).to.equal('EBADF');
    });

    it('moves 1 MiB writes and reads (max_write) and refuses larger ones', async () => {
      const cl = await start();
      const { entry, fh } = await cl.create(1, 'big', O_CREAT | O_RDWR);
      const data = patternBytes(3, MiB);
      expect(await cl.write(entry.nodeid, fh, MiB, data)).to.equal(MiB);
      const back = await cl.read(entry.nodeid, fh, MiB, MiB);
      expect(Buffer.from(back).equals(Buffer.from(data))).to.equal(true);
      const hole = await cl.read(entry.nodeid, fh, 0, 4096);
      expect(hole.every((b) => b === 0)).to.equal(true);
      // readInto: the same bytes into the caller's buffer, reused; an errno is thrown as by read()
      const into = new Uint8Array(MiB);
      expect(await cl.readInto(entry.nodeid, fh, MiB, into)).to.equal(MiB);
      expect(Buffer.from(into).equals(Buffer.from(data))).to.equal(true);
      expect(await cl.readInto(entry.nodeid, fh, 2 * MiB - 10, into)).to.equal(10);
      expect(Buffer.from(into.subarray(0, 10)).equals(Buffer.from(data.subarray(MiB - 10)))).to.equal(true);
      expect(await errnoCode(cl.readInto(entry.nodeid, fh + 1000, 0, into))).to.equal('EBADF');
      // a write of max_write + 1 bytes, sent raw (the client's slots are sized for maxIo + headers)
      const r = await cl.request(Opcode.WRITE, entry.nodeid, [encode.write(fh, 0, MiB + 1), new Uint8Array(MiB + 1)]);
      expect(r.error).to.equal(-E.EINVAL);
      const rr = await cl.request(Opcode.READ, entry.nodeid, [encode.read(fh, 0, 2 * MiB)], { replyRoom: MiB });
      expect(rr.error).to.equal(-E.EINVAL);
    });

    it('opens existing files with O_TRUNC (ATOMIC_O_TRUNC) and O_APPEND', async () => {
      vfs.put('f', 'abcdef');
      const cl = await start();
      const e = await cl.lookup(1, 'f');
      expect(e.attr.size).to.equal(6);
      const ro = await cl.open(e.nodeid, O_RDONLY);
      expect(await errnoCode(cl.write(e.nodeid, ro.fh, 0, te.encode('x')))).to.equal('EBADF');
      const ap = await cl.open(e.nodeid, O_WRONLY | O_APPEND);
      await Promise.all([cl.write(e.nodeid, ap.fh, 0, te.encode('12')), cl.write(e.nodeid, ap.fh, 0, te.encode('34'))]);
      const got = td.decode(vfs.get('f')!);
      expect(got.slice(0, 6)).to.equal('abcdef');
      expect(got.slice(6)).to.be.oneOf(['1234', '3412']);
      expect(await errnoCode(cl.read(e.nodeid, ap.fh, 0, 4))).to.equal('EBADF');
      const tr = await cl.open(e.nodeid, O_WRONLY | O_TRUNC);
      expect(vfs.get('f')!.length).to.equal(0);
      // CREATE (not exclusive) of a file that exists: opened as it is, truncated with O_TRUNC
      vfs.put('g', 'existing');
      const keep = await cl.create(1, 'g', O_CREAT | O_RDWR);
      expect(keep.entry.attr.size).to.equal(8);
      const trunc = await cl.create(1, 'g', O_CREAT | O_WRONLY | O_TRUNC);
      expect(trunc.entry.attr.size).to.equal(0);
      expect(vfs.get('g')!.length).to.equal(0);
      await cl.release(keep.entry.nodeid, keep.fh);
      await cl.release(trunc.entry.nodeid, trunc.fh);
      for (const h of [ro, ap, tr]) await cl.release(e.nodeid, h.fh);
    });

    it('CREATE hands the Vfs its open flags decoded (access mode, O_TRUNC, O_APPEND, O_EXCL); the handle honours them', async () => {
      const cl = await start();
      const ro = await cl.create(1, 'ro', O_CREAT | O_EXCL | O_RDONLY);
      const ap = await cl.create(1, 'ap', O_CREAT | O_WRONLY | O_APPEND | O_TRUNC);
      const rw = await cl.create(1, 'rw', O_CREAT | O_RDWR);
      await cl.mknod(1, 'nod', S_IFREG | 0o644);
      expect(vfs.createFlags).to.deep.equal([
        { read: true, write: false, truncate: false, append: false, exclusive: true },
        { read: false, write: true, truncate: true, append: true, exclusive: false },
        { read: true, write: true, truncate: false, append: false, exclusive: false },
        { read: false, write: false, truncate: false, append: false, exclusive: true },
      ]);
      expect(await errnoCode(cl.write(ro.entry.nodeid, ro.fh, 0, te.encode('x')))).to.equal('EBADF');
      expect(await errnoCode(cl.read(ap.entry.nodeid, ap.fh, 0, 1))).to.equal('EBADF');
      await cl.write(ap.entry.nodeid, ap.fh, 0, te.encode('ab'));
      await cl.write(ap.entry.nodeid, ap.fh, 0, te.encode('cd'));
      expect(td.decode(vfs.get('ap')!)).to.equal('abcd');
      for (const h of [ro, ap, rw]) await cl.release(h.entry.nodeid, h.fh);
    });

    it('keeps an unlinked open file usable through its handle', async () => {
      const cl = await start();
      const { entry, fh } = await cl.create(1, 'tmp', O_CREAT | O_RDWR);
      await cl.write(entry.nodeid, fh, 0, te.encode('still here'));
      await cl.unlink(1, 'tmp');
      expect(await errnoCode(cl.lookup(1, 'tmp'))).to.equal('ENOENT');
      expect(td.decode(await cl.read(entry.nodeid, fh, 0, 100))).to.equal('still here');
      expect((await cl.getattr(entry.nodeid, fh)).attr.size).to.equal(10);
      await cl.release(entry.nodeid, fh);
      expect(await errnoCode(cl.getattr(entry.nodeid))).to.equal('ENOENT');
    });

    it('GETATTR and SETATTR of an unlinked open file act on its handle (fstat, ftruncate, fchmod, fchown, futimens)', async () => {
      const cl = await start();
      const { entry, fh } = await cl.create(1, 'tmp', O_CREAT | O_RDWR);
      const other = await cl.create(1, 'other', O_CREAT | O_RDWR);
      await cl.write(entry.nodeid, fh, 0, te.encode('hello world'));
      await cl.unlink(1, 'tmp');
      // fstat, fchmod, fchown, futimens: the kernel sends no handle.
      expect((await cl.getattr(entry.nodeid)).attr.size).to.equal(11);
      expect((await cl.setattr(entry.nodeid, { mode: 0o600 })).attr.mode).to.equal(S_IFREG | 0o600);
      const o = await cl.setattr(entry.nodeid, { uid: 1234, gid: 5678, mtimeNs: 2_000_000_000_000n });
      expect([o.attr.uid, o.attr.gid, o.attr.mtimeNs]).to.deep.equal([1234, 5678, 2_000_000_000_000n]);
      // ftruncate: with the handle.
      expect((await cl.setattr(entry.nodeid, { size: 5, fh })).attr.size).to.equal(5);
      expect(td.decode(await cl.read(entry.nodeid, fh, 0, 100))).to.equal('hello');
      expect((await cl.getattr(entry.nodeid)).attr.mode).to.equal(S_IFREG | 0o600);
      // A handle of another file is not this file's.
      expect(await errnoCode(cl.setattr(entry.nodeid, { size: 1, fh: other.fh }))).to.equal('EBADF');
      expect((await cl.getattr(other.entry.nodeid)).attr.size).to.equal(0);
      expect(vfs.calls.get('setattr') ?? 0).to.equal(0);
      expect(vfs.calls.get('fileSetattr')).to.equal(3);
      await cl.release(entry.nodeid, fh);
      await cl.release(other.entry.nodeid, other.fh);
      expect(await errnoCode(cl.setattr(entry.nodeid, { mode: 0o644 }))).to.equal('ENOENT');
    });

    it('SETATTR with a handle (ftruncate) goes to the open file, without one by path', async () => {
      vfs.put('f', 'abcdef');
      const cl = await start();
      const e = await cl.lookup(1, 'f');
      const { fh } = await cl.open(e.nodeid, O_RDWR);
      expect((await cl.setattr(e.nodeid, { size: 3, fh })).attr.size).to.equal(3);
      expect([vfs.calls.get('fileSetattr'), vfs.calls.get('setattr') ?? 0]).to.deep.equal([1, 0]);
      expect((await cl.setattr(e.nodeid, { size: 2 })).attr.size).to.equal(2);
      expect([vfs.calls.get('fileSetattr'), vfs.calls.get('setattr')]).to.deep.equal([1, 1]);
      expect(td.decode(vfs.get('f')!)).to.equal('ab');
      await cl.release(e.nodeid, fh);
    });

    it('setattr: chmod keeps the type, truncate, chown, utimens (explicit and now)', async () => {
      vfs.put('f', 'abcdef', 0o644);
      const cl = await start();
      const e = await cl.lookup(1, 'f');
      expect((await cl.setattr(e.nodeid, { mode: S_IFREG | 0o4711 })).attr.mode).to.equal(S_IFREG | 0o4711);
      expect((await cl.setattr(e.nodeid, { size: 2 })).attr.size).to.equal(2);
      expect(td.decode(vfs.get('f')!)).to.equal('ab');
      const a = await cl.setattr(e.nodeid, { uid: 1234, gid: 5678 });
      expect([a.attr.uid, a.attr.gid]).to.deep.equal([1234, 5678]);
      const t = await cl.setattr(e.nodeid, { atimeNs: 1_000_000_000_500n, mtimeNs: 2_000_000_000_000n });
      expect(t.attr.atimeNs).to.equal(1_000_000_000_500n);
      expect(t.attr.mtimeNs).to.equal(2_000_000_000_000n);
      const before = BigInt(Date.now() - 1000) * 1_000_000n;
      const n = await cl.setattr(e.nodeid, { mtimeNs: 'now' });
      expect(n.attr.mtimeNs > before).to.equal(true);
      expect((await cl.setattr(e.nodeid, {})).attr.size).to.equal(2);
      const d = await cl.mkdir(1, 'd');
      expect(await errnoCode(cl.setattr(d.nodeid, { size: 0 }))).to.equal('EISDIR');
      expect(await errnoCode(cl.setattr(e.nodeid, { size: 1, fh: 999 }))).to.equal('EBADF');
    });

    it('fallocate mode 0 extends; other modes are EOPNOTSUPP', async () => {
      const cl = await start();
      const { entry, fh } = await cl.create(1, 'f', O_CREAT | O_RDWR);
      await cl.fallocate(entry.nodeid, fh, 0, 8192);
      expect((await cl.getattr(entry.nodeid, fh)).attr.size).to.equal(8192);
      expect(await errnoCode(cl.fallocate(entry.nodeid, fh, 0, 4096, 1))).to.equal('EOPNOTSUPP');
      expect(await errnoCode(cl.fallocate(entry.nodeid, fh, 0, 4096, 0x10))).to.equal('EOPNOTSUPP');
      expect(await errnoCode(cl.fallocate(entry.nodeid, fh, 2 ** 53, 4096))).to.equal('EFBIG');
      await cl.release(entry.nodeid, fh);
    });

    it('lseek: SET/CUR/END, and DATA/HOLE as a file without holes', async () => {
      vfs.put('f', 'x'.repeat(1000));
      const cl = await start();
      const e = await cl.lookup(1, 'f');
      const { fh } = await cl.open(e.nodeid, O_RDONLY);
      expect(await cl.lseek(e.nodeid, fh, 10, SEEK_SET)).to.equal(10);
      expect(await cl.lseek(e.nodeid, fh, 20, SEEK_CUR)).to.equal(20);
      expect(await cl.lseek(e.nodeid, fh, -100, SEEK_END)).to.equal(900);
      expect(await cl.lseek(e.nodeid, fh, 5, SEEK_DATA)).to.equal(5);
      expect(await cl.lseek(e.nodeid, fh, 5, SEEK_HOLE)).to.equal(1000);
      expect(await errnoCode(cl.lseek(e.nodeid, fh, 1000, SEEK_DATA))).to.equal('ENXIO');
      expect(await errnoCode(cl.lseek(e.nodeid, fh, 1000, SEEK_HOLE))).to.equal('ENXIO');
      expect(await errnoCode(cl.lseek(e.nodeid, fh, -1, SEEK_SET))).to.equal('EINVAL');
      expect(await errnoCode(cl.lseek(e.nodeid, fh, -1001, SEEK_END))).to.equal('EINVAL');
      expect(await errnoCode(cl.lseek(e.nodeid, fh, 0, 9))).to.equal('EINVAL');
      await cl.release(e.nodeid, fh);
    });

    it('symlinks, xattrs and statfs', async () => {
      const cl = await start();
      const l = await cl.symlink(1, 'ln', '../some/where');
      expect(l.attr.mode & S_IFMT).to.equal(S_IFLNK);
      expect(l.attr.size).to.equal(13);
      expect(await cl.readlink(l.nodeid)).to.equal('../some/where');
      const d = await cl.mkdir(1, 'd');
      expect(await errnoCode(cl.readlink(d.nodeid))).to.equal('EINVAL');

      await cl.setxattr(d.nodeid, 'user.one', te.encode('1'));
      await cl.setxattr(d.nodeid, 'user.two', te.encode('22'), XATTR_CREATE);
      expect(await errnoCode(cl.setxattr(d.nodeid, 'user.two', te.encode('x'), XATTR_CREATE))).to.equal('EEXIST');
      expect(await errnoCode(cl.setxattr(d.nodeid, 'user.three', te.encode('x'), XATTR_REPLACE))).to.equal('ENODATA');
      expect(await errnoCode(cl.setxattr(d.nodeid, 'user.three', te.encode('x'), 4))).to.equal('EINVAL');
      expect(td.decode(await cl.getxattr(d.nodeid, 'user.two'))).to.equal('22');
      expect(await cl.getxattrSize(d.nodeid, 'user.two')).to.equal(2);
      expect(await errnoCode(cl.getxattr(d.nodeid, 'user.two', 1))).to.equal('ERANGE');
      expect(await errnoCode(cl.getxattr(d.nodeid, 'user.nope'))).to.equal('ENODATA');
      expect((await cl.listxattr(d.nodeid)).sort()).to.deep.equal(['user.one', 'user.two']);
      expect(await cl.listxattrSize(d.nodeid)).to.equal(18);
      expect(await errnoCode(cl.listxattr(d.nodeid, 10))).to.equal('ERANGE');
      await cl.removexattr(d.nodeid, 'user.one');
      expect(await errnoCode(cl.removexattr(d.nodeid, 'user.one'))).to.equal('ENODATA');
      const big = patternBytes(9, 65536);
      await cl.setxattr(d.nodeid, 'user.big', big);
      expect(Buffer.from(await cl.getxattr(d.nodeid, 'user.big')).equals(Buffer.from(big))).to.equal(true);
      // the reply room is smaller than the value the kernel said it could take
      const r = await cl.request(Opcode.GETXATTR, d.nodeid, [encode.getxattr(65536), cstr('user.big')], { replyRoom: 100 });
      expect(r.error).to.equal(-E.ERANGE);

      const s = await cl.statfs();
      expect(s).to.deep.include({ bsize: 4096, namelen: 255, blocks: 1 << 20, bfree: 1 << 19, bavail: 1 << 19, frsize: 4096 });
    });
  });

  describe('directories', () => {
    it('mkdir, lookup, rmdir and the errnos of the name operations', async () => {
      const cl = await start();
      const d = await cl.mkdir(1, 'dir', 0o750);
      expect(d.attr.mode).to.equal(S_IFDIR | 0o750);
      expect((await cl.lookup(1, 'dir')).nodeid).to.equal(d.nodeid);
      expect(await errnoCode(cl.mkdir(1, 'dir'))).to.equal('EEXIST');
      expect(await errnoCode(cl.create(1, 'dir', O_CREAT | O_EXCL | O_WRONLY))).to.equal('EEXIST');
      const f = await cl.create(d.nodeid, 'f', O_CREAT | O_WRONLY);
      await cl.release(f.entry.nodeid, f.fh);
      expect(await errnoCode(cl.rmdir(1, 'dir'))).to.equal('ENOTEMPTY');
      expect(await errnoCode(cl.rmdir(d.nodeid, 'f'))).to.equal('ENOTDIR');
      expect(await errnoCode(cl.unlink(1, 'dir'))).to.equal('EISDIR');
      expect(await errnoCode(cl.open(d.nodeid, O_RDONLY))).to.equal('EISDIR');
      expect(await errnoCode(cl.opendir(f.entry.nodeid))).to.equal('ENOTDIR');
      expect(await errnoCode(cl.lookup(1, 'missing'))).to.equal('ENOENT');
      expect(await errnoCode(cl.unlink(1, 'missing'))).to.equal('ENOENT');
      expect(await errnoCode(cl.rmdir(1, 'missing'))).to.equal('ENOENT');
      expect(await errnoCode(cl.lookup(f.entry.nodeid, 'x'))).to.equal('ENOTDIR');
      for (const bad of ['', '.', '..', 'a/b']) expect(await errnoCode(cl.mkdir(1, bad)), `mkdir "${bad}"`).to.equal('EINVAL');
      expect(await errnoCode(cl.create(1, 'x/y', O_CREAT))).to.equal('EINVAL');
      expect(await errnoCode(cl.lookup(1, '..'))).to.equal('ENOENT');
      expect(await errnoCode(cl.mkdir(1, 'n'.repeat(256)))).to.equal('ENAMETOOLONG');
      await cl.unlink(d.nodeid, 'f');
      await cl.rmdir(1, 'dir');
      expect(await errnoCode(cl.getattr(d.nodeid))).to.equal('ENOENT');
      expect(vfs.names('')).to.deep.equal([]);
    });

    it('link is EPERM, mknod makes regular files only, locks are ENOSYS, access is 0, unknown opcodes ENOSYS', async () => {
      vfs.put('f', 'x');
      const cl = await start();
      const f = await cl.lookup(1, 'f');
      expect(await errnoCode(cl.link(f.nodeid, 1, 'hard'))).to.equal('EPERM');
      expect(await errnoCode(cl.mknod(1, 'fifo', S_IFIFO | 0o644))).to.equal('EPERM');
      const n = await cl.mknod(1, 'reg', S_IFREG | 0o600);
      expect(n.attr.mode).to.equal(S_IFREG | 0o600);
      expect(vfs.get('reg')!.length).to.equal(0);
      expect(vfs.openFiles).to.equal(0);
      for (const op of [Opcode.GETLK, Opcode.SETLK, Opcode.SETLKW]) {
        const r = await cl.request(op, f.nodeid, [encode.lk(0, 0n, { start: 0n, end: 1n, type: 1, pid: 1 })]);
        expect(r.error).to.equal(-E.ENOSYS);
      }
      await cl.access(f.nodeid, 7);
      for (const op of [Opcode.BMAP, Opcode.IOCTL, Opcode.POLL, Opcode.COPY_FILE_RANGE, Opcode.TMPFILE, 200]) {
        expect((await cl.request(op, 1, [new Uint8Array(16)])).error, `opcode ${op}`).to.equal(-E.ENOSYS);
      }
      expect(await errnoCode(cl.getattr(424242))).to.equal('ESTALE');
      expect(await errnoCode(cl.lookup(424242, 'x'))).to.equal('ESTALE');
    });

    it('renames files and directories: descendants keep their node ids under the new path', async () => {
      vfs.put('a/b/c.txt', 'deep');
      vfs.put('a/top', 'top');
      vfs.put('z/old', 'old');
      const cl = await start();
      const a = await cl.lookup(1, 'a');
      const b = await cl.lookup(a.nodeid, 'b');
      const cf = await cl.lookup(b.nodeid, 'c.txt');
      const z = await cl.lookup(1, 'z');
      const old = await cl.lookup(z.nodeid, 'old');
      await cl.rename(1, 'a', z.nodeid, 'moved');
      expect(vfs.names('z')).to.deep.equal(['moved', 'old']);
      // the child's node id still works: it now lives at z/moved/b/c.txt
      const { fh } = await cl.open(cf.nodeid, O_RDONLY);
      expect(td.decode(await cl.read(cf.nodeid, fh, 0, 10))).to.equal('deep');
      await cl.release(cf.nodeid, fh);
      expect((await cl.getattr(b.nodeid)).attr.mode & S_IFMT).to.equal(S_IFDIR);
      await cl.mkdir(b.nodeid, 'new');
      expect(vfs.names('z/moved/b')).to.deep.equal(['c.txt', 'new']);
      const m = await cl.lookup(z.nodeid, 'moved');
      expect(m.nodeid).to.equal(a.nodeid);
      expect((await cl.lookup(m.nodeid, 'b')).nodeid).to.equal(b.nodeid);
      // a file over a file: the replaced one is gone for path-based calls
      await cl.rename(b.nodeid, 'c.txt', z.nodeid, 'old');
      expect(await errnoCode(cl.getattr(old.nodeid))).to.equal('ENOENT');
      expect((await cl.lookup(z.nodeid, 'old')).nodeid).to.equal(cf.nodeid);
      // RENAME_NOREPLACE, unsupported flags, a directory into itself, same name
      await cl.mkdir(1, 'p');
      expect(await errnoCode(cl.rename2(z.nodeid, 'old', 1, 'p', RENAME_NOREPLACE))).to.equal('EEXIST');
      await cl.rename2(z.nodeid, 'old', 1, 'fresh', RENAME_NOREPLACE);
      expect(await errnoCode(cl.rename2(1, 'fresh', 1, 'p', RENAME_EXCHANGE))).to.equal('EINVAL');
      expect(await errnoCode(cl.rename(1, 'z', m.nodeid, 'inside'))).to.equal('EINVAL');
      await cl.rename(1, 'fresh', 1, 'fresh');
      expect(await errnoCode(cl.rename(1, 'nothing', 1, 'nothing'))).to.equal('ENOENT');
      expect(await errnoCode(cl.rename(1, 'nothing', 1, 'x'))).to.equal('ENOENT');
      expect(await errnoCode(cl.rename(1, 'z', 1, '..'))).to.equal('EINVAL');
    });

    it('reads a directory in pages with stable offsets while it changes, and rewinds', async () => {
      const names = Array.from({ length: 300 }, (_, i) => `file-with-a-longish-name-${String(i).padStart(4, '0')}`);
      for (const n of names) vfs.put(`big/${n}`, n);
      const cl = await start();
      const d = await cl.lookup(1, 'big');
      const { fh } = await cl.opendir(d.nodeid);
      const seen: string[] = [];
      let off = 0n;
      let pages = 0;
      let lastOff = 0n;
      for (;;) {
        const page = await cl.readdir(d.nodeid, fh, off, 1024);
        if (page.length === 0) break;
        pages++;
        for (const e of page) {
          expect(e.off > lastOff).to.equal(true);
          lastOff = e.off;
          seen.push(e.name);
        }
        off = page[page.length - 1]!.off;
        // concurrent changes between pages: offsets handed out stay valid
        await cl.unlink(d.nodeid, names[pages * 7]!);
        const f = await cl.create(d.nodeid, `new-${pages}`, O_CREAT | O_WRONLY);
        await cl.release(f.entry.nodeid, f.fh);
      }
      expect(pages).to.be.greaterThan(10);
      expect(seen).to.deep.equal(['.', '..', ...names]);
      // rewinddir: offset 0 takes a new snapshot
      const again = await cl.readdir(d.nodeid, fh, 0, 64 * 1024);
      expect(again.some((e) => e.name === 'new-1')).to.equal(true);
      expect(again.some((e) => e.name === names[7])).to.equal(false);
      // an offset past the end is the end
      expect(await cl.readdir(d.nodeid, fh, 100000, 4096)).to.deep.equal([]);
      // a buffer too small for one entry
      const tiny = await cl.request(Opcode.READDIR, d.nodeid, [encode.read(fh, 3, 16)], { replyRoom: 16 });
      expect(tiny.error).to.equal(-E.EINVAL);
      await cl.releasedir(d.nodeid, fh);
      expect(await errnoCode(cl.readdir(d.nodeid, fh, 0))).to.equal('EBADF');
      expect(await errnoCode(cl.releasedir(d.nodeid, fh))).to.equal('EBADF');
    });

    it('READDIRPLUS hands out entries with attributes and counts a lookup for each (not for . and ..)', async () => {
      for (let i = 0; i < 50; i++) vfs.put(`d/f${i}`, 'x'.repeat(i));
      vfs.put('d/sub/inner', '1');
      const cl = await start();
      const d = await cl.lookup(1, 'd');
      const base = exp!.server.inodeCount;
      const all = (await cl.listdir(d.nodeid, true, 2048)) as DirentPlus[];
      expect(all.length).to.equal(53);
      const dots = all.filter((e) => e.name === '.' || e.name === '..');
      expect(dots.map((e) => e.entry.nodeid)).to.deep.equal([0, 0]);
      expect(dots[0]!.ino).to.equal(d.nodeid);
      expect(dots[1]!.ino).to.equal(1);
      const real = all.filter((e) => e.entry.nodeid !== 0);
      expect(real.length).to.equal(51);
      for (const e of real) {
        expect(e.ino).to.equal(e.entry.nodeid);
        expect(e.entry.attr.ino).to.equal(e.entry.nodeid);
        if (e.name.startsWith('f')) expect(e.entry.attr.size).to.equal(Number(e.name.slice(1)));
        expect(exp!.server.lookupCount(e.entry.nodeid)).to.equal(1);
      }
      const sub = real.find((e) => e.name === 'sub')!;
      expect(sub.type).to.equal(4);
      expect(sub.entry.attr.mode & S_IFMT).to.equal(S_IFDIR);
      expect(exp!.server.inodeCount).to.equal(base + 51);
      // the kernel forgets them again
      await cl.batchForget(real.map((e) => ({ nodeid: e.entry.nodeid, nlookup: 1 })));
      expect(exp!.server.inodeCount).to.equal(base);
      // plain READDIR counts nothing, and reports node ids the kernel already knows
      const f3 = await cl.lookup(d.nodeid, 'f3');
      const plain = await cl.listdir(d.nodeid, false);
      expect(plain.find((e) => e.name === 'f3')!.ino).to.equal(f3.nodeid);
      expect(plain.find((e) => e.name === 'f4')!.ino).to.be.greaterThan(0);
      expect(exp!.server.inodeCount).to.equal(base + 1);
    });
  });

  describe('lookup counts and FORGET', () => {
    it('counts every entry reply, drops the inode when the kernel forgets it all, never drops the root', async () => {
      vfs.put('f', 'x');
      const cl = await start();
      const n = (await cl.lookup(1, 'f')).nodeid;
      expect((await cl.lookup(1, 'f')).nodeid).to.equal(n);
      expect((await cl.lookup(1, 'f')).nodeid).to.equal(n);
      expect(exp!.server.lookupCount(n)).to.equal(3);
      expect(await cl.forget(n, 2)).to.equal(0); // hiprio: no reply, buffers back with length 0
      expect(exp!.server.lookupCount(n)).to.equal(1);
      await cl.batchForget([{ nodeid: n, nlookup: 1 }, { nodeid: 9999, nlookup: 1 }]);
      expect(exp!.server.lookupCount(n)).to.equal(undefined);
      expect(await errnoCode(cl.getattr(n))).to.equal('ESTALE');
      const again = (await cl.lookup(1, 'f')).nodeid;
      expect(again).to.not.equal(n);
      await cl.forget(1, 100);
      expect((await cl.getattr(1)).attr.mode & S_IFMT).to.equal(S_IFDIR);
      // a FORGET on a request queue is also taken, without a reply
      expect(await cl.forget(again, 1, 1)).to.equal(0);
      expect(exp!.server.lookupCount(again)).to.equal(undefined);
    });

    it('create, mkdir, symlink and mknod count a lookup each', async () => {
      const cl = await start();
      const f = await cl.create(1, 'f', O_CREAT | O_WRONLY);
      const d = await cl.mkdir(1, 'd');
      const s = await cl.symlink(1, 's', 't');
      const m = await cl.mknod(1, 'm', S_IFREG | 0o644);
      for (const id of [f.entry.nodeid, d.nodeid, s.nodeid, m.nodeid]) expect(exp!.server.lookupCount(id)).to.equal(1);
      await cl.release(f.entry.nodeid, f.fh);
    });

    it('answers a failed LOOKUP with a negative entry when negativeTimeoutMs > 0', async () => {
      const cl = await start({ fuse: { negativeTimeoutMs: 2500, entryTimeoutMs: 300, attrTimeoutMs: 1500 } });
      const neg = await cl.lookup(1, 'nothing');
      expect(neg.nodeid).to.equal(0);
      expect(neg.entryValidMs).to.equal(2500);
      vfs.put('x', '');
      const e = await cl.lookup(1, 'x');
      expect(e.entryValidMs).to.equal(300);
      expect(e.attrValidMs).to.equal(1500);
      expect((await cl.getattr(e.nodeid)).attrValidMs).to.equal(1500);
    });
  });

  describe('transport', () => {
    it('serves chains cut into many small descriptors (headers and names span segments)', async () => {
      const cl = await start({ client: { segmentSize: 7, maxIo: 64 * 1024 } });
      const d = await cl.mkdir(1, 'a-directory-name-longer-than-seven');
      const { entry, fh } = await cl.create(d.nodeid, 'file', O_CREAT | O_RDWR);
      const data = patternBytes(5, 300);
      expect(await cl.write(entry.nodeid, fh, 3, data)).to.equal(300);
      const back = await cl.read(entry.nodeid, fh, 3, 300);
      expect(Buffer.from(back).equals(Buffer.from(data))).to.equal(true);
      const list = (await cl.listdir(d.nodeid, true)) as DirentPlus[];
      expect(list.map((e) => e.name)).to.deep.equal(['.', '..', 'file']);
      await cl.release(entry.nodeid, fh);
    });

    it('the hiprio queue takes FORGET/BATCH_FORGET/INTERRUPT only and never replies', async () => {
      vfs.put('f', 'x');
      const cl = await start();
      const n = (await cl.lookup(1, 'f')).nodeid;
      // a LOOKUP on hiprio is not served (it would count a lookup the kernel never sees)
      const r = await cl.request(Opcode.LOOKUP, 1, [cstr('f')], { queue: 0 });
      expect(r.len).to.equal(0);
      expect(exp!.server.lookupCount(n)).to.equal(1);
      // a hiprio chain with writable buffers still gets length 0
      const raw = await cl.raw(encodeRequest({ opcode: Opcode.FORGET, unique: 5n, nodeid: n }, [encode.forget(1)]), 64, 0);
      expect(raw.len).to.equal(0);
      expect(exp!.server.lookupCount(n)).to.equal(undefined);
      // garbage on hiprio
      expect((await cl.raw(new Uint8Array(10), 0, 0)).len).to.equal(0);
      expect(exp!.device.counters.hiprio).to.equal(3);
    });

    it('answers malformed requests with EINVAL and returns chains without room for a header with length 0', async () => {
      const cl = await start();
      // garbage: an out header with EINVAL (unique read from the bytes that were there)
      const g = await cl.raw(new Uint8Array(20).fill(0xab), 64);
      expect(g.len).to.equal(OUT_HEADER_SIZE);
      const h = decodeOutHeader(g.bytes)!;
      expect(h.error).to.equal(-E.EINVAL);
      expect(h.len).to.equal(16);
      // no writable part at all / too small for an out header
      const m = encodeRequest({ opcode: Opcode.GETATTR, unique: 8n, nodeid: 1 }, [encode.getattr(0, 0)]);
      expect((await cl.raw(m, 0)).len).to.equal(0);
      expect((await cl.raw(m, 15)).len).to.equal(0);
      // a reply that does not fit: header only with EIO
      const small = await cl.raw(m, 40);
      expect(small.len).to.equal(16);
      expect(decodeOutHeader(small.bytes)!.error).to.equal(-E.EIO);
      // a READ asking for more than the writable room: EIO, not a short read
      vfs.put('f', 'x'.repeat(5000));
      const e = await cl.lookup(1, 'f');
      const { fh } = await cl.open(e.nodeid, O_RDONLY);
      const rr = await cl.request(Opcode.READ, e.nodeid, [encode.read(fh, 0, 4096)], { replyRoom: 100 });
      expect(rr.error).to.equal(-E.EIO);
      // READLINK longer than the room
      await cl.symlink(1, 'l', 't'.repeat(200));
      const l = await cl.lookup(1, 'l');
      expect((await cl.request(Opcode.READLINK, l.nodeid, [], { replyRoom: 50 })).error).to.equal(-E.ENAMETOOLONG);
      // header.len lies
      const lie = m.slice();
      viewOf(lie).setUint32(0, 4000, true);
      expect(decodeOutHeader((await cl.raw(lie, 64)).bytes)!.error).to.equal(-E.EINVAL);
      // an xattr value over 64 KiB
      const huge = await cl.request(Opcode.SETXATTR, e.nodeid, [encode.setxattr(MiB, 0), cstr('user.x'), new Uint8Array(MiB)]);
      expect(huge.error).to.equal(-E.E2BIG);
      // and the connection still works
      expect(td.decode(await cl.read(e.nodeid, fh, 0, 3))).to.equal('xxx');
      await cl.release(e.nodeid, fh);
      expect(cl.broken).to.equal(false);
    });

    it('refuses a request larger than anything it accepts without copying it', async () => {
      vfs.put('f', '');
      const cl = await start({ client: { maxIo: 4 * MiB } });
      const e = await cl.lookup(1, 'f');
      const { fh } = await cl.open(e.nodeid, O_RDWR);
      const r = await cl.request(Opcode.WRITE, e.nodeid, [encode.write(fh, 0, 2 * MiB), new Uint8Array(2 * MiB)]);
      expect(r.error).to.equal(-E.EINVAL);
      expect(vfs.calls.get('write')).to.equal(undefined);
      expect(await cl.write(e.nodeid, fh, 0, te.encode('ok'))).to.equal(2);
      await cl.release(e.nodeid, fh);
    });

    it('keeps many requests in flight on several queues; a slow Vfs call holds up only itself', async () => {
      vfs.put('slow', 'slow data');
      const cl = await start({ requestQueues: 3 });
      expect(cl.requestQueues).to.equal(3);
      const held = gate();
      let holding = false;
      vfs.hooks.before = async (op, path) => {
        if (op === 'read' && path === 'slow') {
          holding = true;
          await held.wait;
        } else if (op === 'write' || op === 'read') {
          await new Promise((r) => setTimeout(r, Math.random() * 3));
        }
      };
      const s = await cl.lookup(1, 'slow');
      const so = await cl.open(s.nodeid, O_RDONLY);
      const base = workInFlight[0]!;
      const slowRead = cl.read(s.nodeid, so.fh, 0, 100, 2);
      await until(() => holding);
      const files = await Promise.all(Array.from({ length: 8 }, (_, i) => cl.create(1, `f${i}`, O_CREAT | O_RDWR)));
      const chunk = 4096;
      const ops: Promise<unknown>[] = [];
      for (const [i, f] of files.entries()) {
        for (let k = 0; k < 25; k++) {
          ops.push(cl.write(f.entry.nodeid, f.fh, k * chunk, patternBytes(i * 100 + k, chunk), 1 + ((i + k) % 3)));
        }
      }
      await Promise.all(ops);
      const reads = await Promise.all(files.map((f, i) => Promise.all(
        Array.from({ length: 25 }, (_, k) => cl.read(f.entry.nodeid, f.fh, k * chunk, chunk, 1 + (k % 3)).then((b) => {
          expect(Buffer.from(b).equals(Buffer.from(patternBytes(i * 100 + k, chunk)))).to.equal(true);
        })),
      )));
      expect(reads.length).to.equal(8);
      expect(exp!.server.inflightCount).to.equal(1); // only the held read
      // The count the event loop's polling looks at: the held read, once by its queue and once by the server.
      expect(workInFlight[0]).to.equal(base + 2);
      held.open();
      expect(td.decode(await slowRead)).to.equal('slow data');
      await until(() => workInFlight[0] === base);
      await Promise.all(files.map((f) => cl.release(f.entry.nodeid, f.fh)));
      await cl.release(s.nodeid, so.fh);
      expect(vfs.openFiles).to.equal(0);
    });

    it('INTERRUPT answers a running request with EINTR and undoes what it did when the Vfs returns', async () => {
      vfs.put('f', 'data');
      const cl = await start();
      const held = gate();
      let holding = 0;
      vfs.hooks.before = async (op) => {
        if (op === 'read' || op === 'open') {
          holding++;
          await held.wait;
        }
      };
      const e = await cl.lookup(1, 'f');
      // an OPEN interrupted while the Vfs opens the file
      const u1 = cl.nextUnique();
      const open = cl.request(Opcode.OPEN, e.nodeid, [encode.open(O_RDONLY)], { unique: u1 });
      await until(() => holding === 1);
      await cl.interrupt(u1);
      expect((await open).error).to.equal(-E.EINTR);
      // interrupting something that is not running is ignored
      await cl.interrupt(123456n);
      held.open();
      await exp!.server.idle();
      expect(exp!.server.handleCount).to.equal(0);
      expect(vfs.openFiles).to.equal(0);
      expect(exp!.server.counters.interrupted).to.equal(1);
      // the same on a request queue, for a READ
      const held2 = gate();
      holding = 0;
      vfs.hooks.before = async (op) => {
        if (op === 'read') {
          holding++;
          await held2.wait;
        }
      };
      const { fh } = await cl.open(e.nodeid, O_RDONLY);
      const u2 = cl.nextUnique();
      const read = cl.request(Opcode.READ, e.nodeid, [encode.read(fh, 0, 10)], { unique: u2 });
      await until(() => holding === 1);
      await cl.interrupt(u2, 1);
      expect((await read).error).to.equal(-E.EINTR);
      held2.open();
      await exp!.server.idle();
      vfs.hooks = {};
      expect(td.decode(await cl.read(e.nodeid, fh, 0, 10))).to.equal('data');
      await cl.release(e.nodeid, fh);
    });

    it('an interrupted READDIRPLUS that relisted the directory gives back the lookups of the entries it encoded', async () => {
      const cl = await start();
      const d = await cl.mkdir(1, 'rd', 0o755);
      for (let i = 0; i < 5; i++) await cl.mknod(d.nodeid, `e${i}`, S_IFREG | 0o644);
      const { fh } = await cl.opendir(d.nodeid);
      expect(await cl.readdirplus(d.nodeid, fh, 0)).to.have.length(7); // consumes the snapshot
      const counts = exp!.server.inodeCount;
      const held = gate();
      let holding = 0;
      vfs.hooks.before = async (op) => {
        if (op === 'list') {
          holding++;
          await held.wait;
        }
      };
      const u = cl.nextUnique();
      const again = cl.request(Opcode.READDIRPLUS, d.nodeid, [encode.read(fh, 0, 4096)], { unique: u });
      await until(() => holding === 1);
      await cl.interrupt(u);
      expect((await again).error).to.equal(-E.EINTR);
      held.open();
      await exp!.server.idle();
      vfs.hooks = {};
      expect(exp!.server.inodeCount).to.equal(counts);
      const e0 = (await cl.readdirplus(d.nodeid, fh, 0)).find((e) => e.name === 'e0')!;
      expect(exp!.server.lookupCount(e0.entry.nodeid)).to.equal(3); // MKNOD's, the first listing's and this one's
      await cl.releasedir(d.nodeid, fh);
    });

    it('a disconnect ends the session: open files are released, the data stays, a new frontend starts over', async () => {
      const cl = await start();
      const { entry, fh } = await cl.create(1, 'kept', O_CREAT | O_RDWR);
      await cl.write(entry.nodeid, fh, 0, te.encode('survives'));
      expect(vfs.openFiles).to.equal(1);
      await cl.close();
      c = null;
      await until(() => vfs.openFiles === 0);
      await exp!.device.whenReset();
      expect(exp!.server.inodeCount).to.equal(1);

      const c2 = await FuseClient.connect(dir.file('fs.sock'));
      c = c2;
      expect(await errnoCode(c2.getattr(1))).to.equal('EIO'); // INIT first
      await c2.init();
      expect(await errnoCode(c2.getattr(entry.nodeid))).to.equal('ESTALE');
      const e2 = await c2.lookup(1, 'kept');
      const o = await c2.open(e2.nodeid, O_RDONLY);
      expect(td.decode(await c2.read(e2.nodeid, o.fh, 0, 100))).to.equal('survives');
      await c2.release(e2.nodeid, o.fh);
    });

    it('DESTROY and SYNCFS sync the Vfs; DESTROY releases everything and needs a new INIT', async () => {
      const cl = await start();
      await cl.syncfs();
      expect(vfs.syncs).to.equal(1);
      const f = await cl.create(1, 'f', O_CREAT | O_RDWR);
      const d = await cl.opendir(1);
      expect(exp!.server.handleCount).to.equal(2);
      await cl.destroy();
      expect(vfs.syncs).to.equal(2);
      expect(vfs.openFiles).to.equal(0);
      expect(exp!.server.handleCount).to.equal(0);
      expect(await errnoCode(cl.getattr(f.entry.nodeid))).to.equal('EIO');
      await cl.init();
      expect(await errnoCode(cl.releasedir(1, d.fh))).to.equal('EBADF');
    });

    it('close() of the export releases open files, then closes the Vfs once; the server takes no new session', async () => {
      const cl = await start();
      await cl.create(1, 'f', O_CREAT | O_RDWR);
      let openAtClose = -1;
      vfs.hooks = { before: (op) => void (op === 'close' && (openAtClose = vfs.openFiles)) };
      await cl.close();
      c = null;
      const server = exp!.server;
      await exp!.close();
      exp = null;
      expect(vfs.openFiles).to.equal(0);
      expect([vfs.closes, openAtClose]).to.deep.equal([1, 0]);
      await server.close();
      expect(vfs.closes).to.equal(1);
      const init = await server.handle(encodeRequest({ opcode: Opcode.INIT, unique: 1n, nodeid: 0 }, [encode.init(7, 38, 0, 0)]));
      expect(init!.error).to.equal(-E.ENODEV);
    });
  });

  it('does not leak: every request accounted for, nothing in flight at the end', async () => {
    const cl = await start();
    const before = exp!.server.counters.requests;
    await Promise.all(Array.from({ length: 100 }, (_, i) => cl.mkdir(1, `d${i}`)));
    await exp!.server.idle();
    expect(exp!.server.counters.requests - before).to.equal(100);
    expect(exp!.server.inflightCount).to.equal(0);
    expect(exp!.device.counters.badChains).to.equal(0);
    expect(IN_HEADER_SIZE).to.equal(40);
  });
});
