// The FUSE codec: every opcode the engine speaks round-trips through the client's
// encoders and the server's decoder; truncated, oversized and otherwise malformed
// messages become an errno (never a throw); random bytes never crash the decoder or the
// engine (property-based).
import { expect } from 'chai';
import fc from 'fast-check';
import {
  DIRENTPLUS_SIZE, DIRENT_SIZE, E, ENTRY_OUT_SIZE, FOPEN_PASSTHROUGH, FUSE2_PASSTHROUGH, IN_HEADER_SIZE, Opcode, decodeAttr, decodeInHeader,
  decodeOutHeader, direntAlign, encodeAttr, encodeInHeader, encodeOutHeader, errnoName, isNoReply, opcodeName, viewOf,
  type WireAttr,
} from '../../src/fuse/abi.js';
import { checkName, cstr, decodeRequest, encode, encodeRequest, type FuseRequest } from '../../src/fuse/requests.js';
import {
  DirentWriter, decodeAttrOut, decodeDirents, decodeDirentsPlus, decodeEntryOut, decodeInitOut, decodeOpenOut,
  decodeStatfsOut, decodeXattrList, encodeAttrOut, encodeEntryOut, encodeInitOut, encodeOpenOut, encodeStatfsOut,
} from '../../src/fuse/replies.js';
import { FuseServer } from '../../src/fuse/server.js';
import { MemoryVfs } from './memory-vfs.js';

const te = new TextEncoder();

function msg(opcode: number, args: Uint8Array[], nodeid = 1, unique = 42n): Uint8Array {
  return encodeRequest({ opcode, unique, nodeid, uid: 1000, gid: 100, pid: 7 }, args);
}

function ok(bytes: Uint8Array): FuseRequest {
  const d = decodeRequest(bytes);
  if (!d.ok) throw new Error(`decode failed: ${d.why}`);
  return d.req;
}

function errnoOf(bytes: Uint8Array): number {
  const d = decodeRequest(bytes);
  return d.ok ? 0 : d.errno;
}

/** The message with its last byte cut off (header.len adjusted) or one byte added. */
function truncated(m: Uint8Array): Uint8Array {
  const t = m.slice(0, m.length - 1);
  viewOf(t).setUint32(0, t.length, true);
  return t;
}
function oversized(m: Uint8Array): Uint8Array {
  const t = new Uint8Array(m.length + 1);
  t.set(m);
  viewOf(t).setUint32(0, t.length, true);
  return t;
}

const attr: WireAttr = {
  ino: 77, size: 2 ** 40 + 3, blocks: 9, atimeNs: 1_700_000_000_123_456_789n, mtimeNs: -1_500_000_000n, ctimeNs: 0n,
  mode: 0o100644, nlink: 1, uid: 1000, gid: 100, rdev: 0, blksize: 4096, flags: 0,
};

describe('FUSE codec', () => {
  describe('headers and attributes', () => {
    it('round-trips fuse_in_header, fuse_out_header and fuse_attr', () => {
      const h = encodeInHeader({ len: 123, opcode: 26, unique: 2n ** 63n + 5n, nodeid: 2n ** 60n, uid: 1, gid: 2, pid: 3, extLen: 16 });
      const d = decodeInHeader(h);
      expect(d).to.deep.include({ len: 123, opcode: 26, unique: 2n ** 63n + 5n, uid: 1, gid: 2, pid: 3, extLen: 16 });
      expect(d.nodeid).to.be.greaterThan(Number.MAX_SAFE_INTEGER);
      expect(decodeOutHeader(encodeOutHeader({ len: 16, error: -2, unique: 9n }))).to.deep.equal({ len: 16, error: -2, unique: 9n });
      const b = new Uint8Array(88);
      encodeAttr(viewOf(b), 0, attr);
      expect(decodeAttr(viewOf(b), 0)).to.deep.equal(attr);
    });

    it('reads a short header as zeros instead of throwing', () => {
      const d = decodeInHeader(new Uint8Array([5, 0, 0, 0, 1]));
      expect(d.len).to.equal(5);
      expect(d.opcode).to.equal(1);
      expect(d.unique).to.equal(0n);
    });

    it('names opcodes and errnos', () => {
      expect(opcodeName(Opcode.READDIRPLUS)).to.equal('READDIRPLUS');
      expect(opcodeName(9999)).to.equal('OPCODE_9999');
      expect(errnoName(E.ENOENT)).to.equal('ENOENT');
      expect(errnoName(E.EOPNOTSUPP)).to.equal('EOPNOTSUPP');
      expect(isNoReply(Opcode.FORGET) && isNoReply(Opcode.BATCH_FORGET) && isNoReply(Opcode.INTERRUPT)).to.equal(true);
      expect(isNoReply(Opcode.LOOKUP)).to.equal(false);
    });
  });

  describe('requests', () => {
    /** [opcode, args, what the decoded request must contain] for every opcode with arguments. */
    const cases: [string, Opcode, Uint8Array[], Record<string, unknown>][] = [
      ['INIT (7.38)', Opcode.INIT, [encode.init(7, 38, 65536, 0x40000001, 3)], { major: 7, minor: 38, maxReadahead: 65536, flags: 0x40000001, flags2: 3 }],
      ['LOOKUP', Opcode.LOOKUP, [cstr('hello.txt')], { name: 'hello.txt' }],
      ['FORGET', Opcode.FORGET, [encode.forget(5)], { nlookup: 5 }],
      ['GETATTR', Opcode.GETATTR, [encode.getattr(1, 9)], { flags: 1, fh: 9 }],
      ['READLINK', Opcode.READLINK, [], {}],
      ['SYMLINK', Opcode.SYMLINK, [cstr('ln'), cstr('../target/x')], { name: 'ln', target: '../target/x' }],
      ['MKNOD', Opcode.MKNOD, [encode.mknod(0o100600, 0, 0o22), cstr('n')], { name: 'n', mode: 0o100600, umask: 0o22 }],
      ['MKDIR', Opcode.MKDIR, [encode.mkdir(0o755, 0o22), cstr('d')], { name: 'd', mode: 0o755, umask: 0o22 }],
      ['UNLINK', Opcode.UNLINK, [cstr('f')], { name: 'f' }],
      ['RMDIR', Opcode.RMDIR, [cstr('d')], { name: 'd' }],
      ['RENAME', Opcode.RENAME, [encode.rename(5), cstr('a'), cstr('b')], { newdir: 5, name: 'a', newname: 'b', flags: 0 }],
      ['RENAME2', Opcode.RENAME2, [encode.rename2(6, 1), cstr('a'), cstr('b')], { newdir: 6, name: 'a', newname: 'b', flags: 1 }],
      ['LINK', Opcode.LINK, [encode.link(3), cstr('l')], { oldnodeid: 3, name: 'l' }],
      ['OPEN', Opcode.OPEN, [encode.open(0o1002)], { flags: 0o1002, openFlags: 0 }],
      ['READ', Opcode.READ, [encode.read(4, 2 ** 40, 131072)], { fh: 4, offset: 2 ** 40, size: 131072 }],
      ['WRITE', Opcode.WRITE, [encode.write(4, 10, 3), te.encode('abc')], { fh: 4, offset: 10 }],
      ['STATFS', Opcode.STATFS, [], {}],
      ['RELEASE', Opcode.RELEASE, [encode.release(4, 2, 1)], { fh: 4, flags: 2, releaseFlags: 1 }],
      ['FSYNC', Opcode.FSYNC, [encode.fsync(4, 1)], { fh: 4, fsyncFlags: 1 }],
      ['SETXATTR', Opcode.SETXATTR, [encode.setxattr(3, 1), cstr('user.a'), te.encode('xyz')], { name: 'user.a', flags: 1 }],
      ['GETXATTR', Opcode.GETXATTR, [encode.getxattr(100), cstr('user.a')], { name: 'user.a', size: 100 }],
      ['LISTXATTR', Opcode.LISTXATTR, [encode.getxattr(0)], { size: 0 }],
      ['REMOVEXATTR', Opcode.REMOVEXATTR, [cstr('user.a')], { name: 'user.a' }],
      ['FLUSH', Opcode.FLUSH, [encode.flush(8)], { fh: 8 }],
      ['OPENDIR', Opcode.OPENDIR, [encode.open(0)], { flags: 0 }],
      ['READDIR', Opcode.READDIR, [encode.read(2, 5, 4096)], { fh: 2, offset: 5, size: 4096 }],
      ['RELEASEDIR', Opcode.RELEASEDIR, [encode.release(2)], { fh: 2 }],
      ['FSYNCDIR', Opcode.FSYNCDIR, [encode.fsync(2, 0)], { fh: 2 }],
      ['GETLK', Opcode.GETLK, [encode.lk(1, 2n, { start: 0n, end: 10n, type: 1, pid: 5 })], { fh: 1, owner: 2n }],
      ['SETLK', Opcode.SETLK, [encode.lk(1, 2n, { start: 0n, end: 10n, type: 1, pid: 5 })], { fh: 1 }],
      ['SETLKW', Opcode.SETLKW, [encode.lk(1, 2n, { start: 0n, end: 10n, type: 1, pid: 5 })], { fh: 1 }],
      ['ACCESS', Opcode.ACCESS, [encode.access(4)], { mask: 4 }],
      ['CREATE', Opcode.CREATE, [encode.create(0o102, 0o100644, 0o22), cstr('c')], { name: 'c', flags: 0o102, mode: 0o100644, umask: 0o22 }],
      ['INTERRUPT', Opcode.INTERRUPT, [encode.interrupt(2n ** 64n - 2n)], { target: 2n ** 64n - 2n }],
      ['DESTROY', Opcode.DESTROY, [], {}],
      ['BATCH_FORGET', Opcode.BATCH_FORGET, [encode.batchForget([{ nodeid: 2, nlookup: 1 }, { nodeid: 3, nlookup: 7 }])],
        { items: [{ nodeid: 2, nlookup: 1 }, { nodeid: 3, nlookup: 7 }] }],
      ['FALLOCATE', Opcode.FALLOCATE, [encode.fallocate(3, 4096, 8192, 0)], { fh: 3, offset: 4096, length: 8192, mode: 0 }],
      ['READDIRPLUS', Opcode.READDIRPLUS, [encode.read(2, 0, 8192)], { fh: 2, offset: 0, size: 8192 }],
      ['LSEEK', Opcode.LSEEK, [encode.lseek(3, -5, 2)], { fh: 3, offset: -5, whence: 2 }],
      ['SYNCFS', Opcode.SYNCFS, [encode.syncfs()], {}],
    ];

    for (const [name, op, args, want] of cases) {
      it(`decodes ${name} and rejects it truncated or oversized`, () => {
        const m = msg(op, args, 9, 1234n);
        const req = ok(m);
        expect(req.op).to.equal(op);
        expect(req.h).to.deep.include({ opcode: op, unique: 1234n, nodeid: 9, uid: 1000, gid: 100, pid: 7, len: m.length });
        expect(req).to.deep.include(want);
        if (m.length > IN_HEADER_SIZE && op !== Opcode.INIT) expect(errnoOf(truncated(m)), 'truncated').to.be.oneOf([E.EINVAL, E.ENOENT]);
        if (op !== Opcode.INIT) expect(errnoOf(oversized(m)), 'oversized').to.not.equal(0);
      });
    }

    it('decodes the write data and xattr value as views of the message', () => {
      const w = ok(msg(Opcode.WRITE, [encode.write(1, 0, 5), te.encode('12345')]));
      expect(w.op === Opcode.WRITE && new TextDecoder().decode(w.data)).to.equal('12345');
      const x = ok(msg(Opcode.SETXATTR, [encode.setxattr(2, 0), cstr('user.k'), te.encode('vv')]));
      expect(x.op === Opcode.SETXATTR && new TextDecoder().decode(x.value)).to.equal('vv');
    });

    it('decodes INIT from a 7.31 kernel (16-byte fuse_init_in, no flags2)', () => {
      const req = ok(msg(Opcode.INIT, [encode.init(7, 31, 4096, 0xffff)]));
      expect(req).to.deep.include({ minor: 31, flags: 0xffff, flags2: 0 });
      expect(errnoOf(msg(Opcode.INIT, [new Uint8Array(12)]))).to.equal(E.EINVAL);
    });

    it('passes unknown opcodes on as "other" (ENOSYS is the server\'s answer)', () => {
      for (const op of [0, 7, 19, 37, 39, 40, 47, 48, 49, 51, 4096, 0xffffffff]) expect(ok(msg(op, [new Uint8Array(3)])).op).to.equal('other');
    });

    it('checks the header: length, extensions', () => {
      const m = msg(Opcode.GETATTR, [encode.getattr(0, 0)]);
      expect(errnoOf(m.slice(0, 39))).to.equal(E.EINVAL);
      const long = m.slice();
      viewOf(long).setUint32(0, m.length + 1, true);
      expect(errnoOf(long)).to.equal(E.EINVAL);
      const short = m.slice();
      viewOf(short).setUint32(0, 39, true);
      expect(errnoOf(short)).to.equal(E.EINVAL);
      const ext = m.slice();
      viewOf(ext).setUint16(36, 100, true); // 800 bytes of extensions in a 56-byte message
      expect(errnoOf(ext)).to.equal(E.EINVAL);
      // extensions that fit are skipped: 8 bytes of extension after the getattr_in
      const withExt = encodeRequest({ opcode: Opcode.GETATTR, unique: 1n, nodeid: 1 }, [encode.getattr(0, 5), new Uint8Array(8)]);
      viewOf(withExt).setUint16(36, 1, true);
      expect(ok(withExt)).to.deep.include({ fh: 5 });
      // a message whose bytes run past header.len is read up to header.len only
      const padded = new Uint8Array(m.length + 10);
      padded.set(m);
      expect(ok(padded).op).to.equal(Opcode.GETATTR);
    });

    it('validates names: EINVAL for empty, "/", NUL, "." and ".."; ENAMETOOLONG over 255 bytes; ENOENT for LOOKUP of dots', () => {
      const name = (n: string | Uint8Array, op = Opcode.MKDIR): number =>
        errnoOf(msg(op, op === Opcode.MKDIR ? [encode.mkdir(0o755, 0), cstr(n)] : [cstr(n)]));
      expect(name('')).to.equal(E.EINVAL);
      expect(name('a/b')).to.equal(E.EINVAL);
      expect(name('.')).to.equal(E.EINVAL);
      expect(name('..')).to.equal(E.EINVAL);
      expect(name('...')).to.equal(0);
      expect(name('.hidden')).to.equal(0);
      expect(name('x'.repeat(255))).to.equal(0);
      expect(name('x'.repeat(256))).to.equal(E.ENAMETOOLONG);
      expect(name('é'.repeat(128))).to.equal(E.ENAMETOOLONG); // 256 bytes
      expect(name(new Uint8Array([0x66, 0xff, 0xfe]))).to.equal(E.EINVAL); // not UTF-8
      expect(name('.', Opcode.LOOKUP)).to.equal(E.ENOENT);
      expect(name('..', Opcode.LOOKUP)).to.equal(E.ENOENT);
      expect(name('', Opcode.LOOKUP)).to.equal(E.EINVAL);
      expect(name('.', Opcode.UNLINK)).to.equal(E.EINVAL);
      // NUL inside: the name ends early and bytes follow → EINVAL
      expect(errnoOf(msg(Opcode.LOOKUP, [te.encode('ab\0cd\0')]))).to.equal(E.EINVAL);
      // no NUL at all
      expect(errnoOf(msg(Opcode.LOOKUP, [te.encode('abc')]))).to.equal(E.EINVAL);
      // both names of a rename are checked
      expect(errnoOf(msg(Opcode.RENAME, [encode.rename(1), cstr('a'), cstr('..')]))).to.equal(E.EINVAL);
      expect(errnoOf(msg(Opcode.RENAME, [encode.rename(1), cstr('a/b'), cstr('c')]))).to.equal(E.EINVAL);
      expect(errnoOf(msg(Opcode.RENAME, [encode.rename(1), cstr('a')]))).to.equal(E.EINVAL);
      expect(checkName(te.encode('ok'))).to.equal(0);
    });

    it('decodes names the same on the ASCII fast path and through the UTF-8 decoder, bounded by the argument area', () => {
      const lookup = (n: string | Uint8Array): FuseRequest => ok(msg(Opcode.LOOKUP, [cstr(n)]));
      for (const n of ['a', 'f123', 'x'.repeat(64), 'x'.repeat(65), 'y'.repeat(255), 'é', `${'x'.repeat(63)}é`, '日本語', '..a', '~!@#$%^&*()']) {
        expect(lookup(n)).to.include({ name: n });
      }
      expect(lookup(new Uint8Array([0x7f, 0x01]))).to.include({ name: '\x7f\x01' });
      expect(errnoOf(msg(Opcode.LOOKUP, [cstr(new Uint8Array([0x61, 0xc3]))]))).to.equal(E.EINVAL); // truncated UTF-8
      expect(errnoOf(msg(Opcode.LOOKUP, [cstr(new Uint8Array([0xc0, 0xaf]))]))).to.equal(E.EINVAL); // overlong '/'
      // the NUL must be inside the argument area: one in the extensions after it does not count
      const m = msg(Opcode.LOOKUP, [te.encode('abc'), new Uint8Array([0, 0, 0, 0, 0, 0, 0, 0])]);
      viewOf(m).setUint16(36, 1, true); // total_extlen: the last 8 bytes are extensions
      expect(errnoOf(m)).to.equal(E.EINVAL);
      const m2 = msg(Opcode.LOOKUP, [te.encode('abc\0'), new Uint8Array(8)]);
      viewOf(m2).setUint16(36, 1, true);
      expect(ok(m2)).to.include({ name: 'abc' });
    });

    it('checks variable parts: write size, xattr value size and name, symlink target, batch forget count', () => {
      expect(errnoOf(msg(Opcode.WRITE, [encode.write(1, 0, 4), te.encode('abc')]))).to.equal(E.EINVAL);
      expect(errnoOf(msg(Opcode.WRITE, [encode.write(1, 0, 2), te.encode('abc')]))).to.equal(E.EINVAL);
      expect(errnoOf(msg(Opcode.WRITE, [encode.write(1, 0, 0xffffffff), te.encode('abc')]))).to.equal(E.EINVAL);
      expect(errnoOf(msg(Opcode.SETXATTR, [encode.setxattr(5, 0), cstr('user.a'), te.encode('abc')]))).to.equal(E.EINVAL);
      expect(errnoOf(msg(Opcode.SETXATTR, [encode.setxattr(70000, 0), cstr('user.a'), new Uint8Array(70000)]))).to.equal(E.E2BIG);
      expect(errnoOf(msg(Opcode.SETXATTR, [encode.setxattr(0, 0), cstr(''), new Uint8Array(0)]))).to.equal(E.ERANGE);
      expect(errnoOf(msg(Opcode.GETXATTR, [encode.getxattr(0), cstr('u'.repeat(256))]))).to.equal(E.ERANGE);
      expect(errnoOf(msg(Opcode.SYMLINK, [cstr('l'), cstr('')]))).to.equal(E.ENOENT);
      expect(errnoOf(msg(Opcode.SYMLINK, [cstr('l'), cstr('t'.repeat(4096))]))).to.equal(E.ENAMETOOLONG);
      expect(errnoOf(msg(Opcode.SYMLINK, [cstr('l'), te.encode('target')]))).to.equal(E.EINVAL);
      const bf = encode.batchForget([{ nodeid: 2, nlookup: 1 }]);
      viewOf(bf).setUint32(0, 2, true);
      expect(errnoOf(msg(Opcode.BATCH_FORGET, [bf]))).to.equal(E.EINVAL);
      viewOf(bf).setUint32(0, 0xffffffff, true);
      expect(errnoOf(msg(Opcode.BATCH_FORGET, [bf]))).to.equal(E.EINVAL);
    });

    it('keeps numbers beyond 2^53 beyond 2^53 (never wrapped to something valid)', () => {
      const m = msg(Opcode.READ, [encode.read(0, 0, 1)]);
      viewOf(m).setBigUint64(IN_HEADER_SIZE, 2n ** 64n - 1n, true);
      viewOf(m).setBigUint64(IN_HEADER_SIZE + 8, 2n ** 63n, true);
      const r = ok(m);
      expect(r.op === Opcode.READ && r.fh > Number.MAX_SAFE_INTEGER && r.offset > Number.MAX_SAFE_INTEGER).to.equal(true);
      const l = ok(msg(Opcode.LSEEK, [encode.lseek(1, -(2 ** 40), 0)]));
      expect(l.op === Opcode.LSEEK && l.offset).to.equal(-(2 ** 40));
    });
  });

  describe('replies', () => {
    it('round-trips entry, attr, open, statfs and init replies', () => {
      const e = { nodeid: 5, generation: 2, entryValidMs: 1500, attrValidMs: 250, attr };
      expect(decodeEntryOut(encodeEntryOut(e))).to.deep.equal(e);
      expect(decodeAttrOut(encodeAttrOut(1000, attr))).to.deep.equal({ attrValidMs: 1000, attr });
      expect(decodeOpenOut(encodeOpenOut(77, 2))).to.deep.equal({ fh: 77, openFlags: 2, backingId: 0 });
      expect(decodeOpenOut(encodeOpenOut(78, FOPEN_PASSTHROUGH, 5))).to.deep.equal({ fh: 78, openFlags: FOPEN_PASSTHROUGH, backingId: 5 });
      const s = { blocks: 10, bfree: 5, bavail: 4, files: 100, ffree: 50, bsize: 4096, namelen: 255, frsize: 4096 };
      expect(decodeStatfsOut(encodeStatfsOut(s))).to.deep.equal(s);
      const i = {
        major: 7, minor: 38, maxReadahead: 131072, flags: 0x40000000, maxBackground: 64, congestionThreshold: 48,
        maxWrite: 1 << 20, timeGran: 1, maxPages: 256, mapAlignment: 0, flags2: FUSE2_PASSTHROUGH, maxStackDepth: 1,
      };
      expect(decodeInitOut(encodeInitOut(i))).to.deep.equal(i);
      // a 7.22-sized (24 byte) init_out reads newer fields as 0
      expect(decodeInitOut(encodeInitOut(i).subarray(0, 24))).to.deep.include({ maxWrite: 1 << 20, maxPages: 0 });
    });

    it('packs dirents 8-byte aligned and stops at the buffer size', () => {
      const w = new DirentWriter(100);
      expect(w.add(1, 1, 4, te.encode('.'))).to.equal(true); // 25 → 32
      expect(w.add(2, 2, 8, te.encode('abcdefgh'))).to.equal(true); // 32 → 32
      expect(w.length).to.equal(64);
      expect(w.add(3, 3, 8, te.encode('x'.repeat(20)))).to.equal(false); // 44 → 48 > 36 left
      expect(w.add(3, 3, 8, te.encode('y'))).to.equal(true);
      expect(w.length).to.equal(96);
      const d = decodeDirents(w.bytes());
      expect(d.map((x) => [x.ino, x.off, x.type, x.name])).to.deep.equal([[1, 1n, 4, '.'], [2, 2n, 8, 'abcdefgh'], [3, 3n, 8, 'y']]);
      expect(direntAlign(DIRENT_SIZE + 1)).to.equal(32);

      const p = new DirentWriter(2 * 200);
      const e = { nodeid: 9, generation: 0, entryValidMs: 1000, attrValidMs: 1000, attr: { ...attr, ino: 9 } };
      expect(p.addPlus(e, 1, 8, te.encode('file'))).to.equal(true);
      expect(p.length).to.equal(direntAlign(DIRENTPLUS_SIZE + 4));
      expect(p.addPlus(e, 2, 8, te.encode('second'))).to.equal(true);
      expect(p.addPlus(e, 3, 8, te.encode('third'))).to.equal(false);
      const dp = decodeDirentsPlus(p.bytes());
      expect(dp.map((x) => [x.name, x.off, x.ino, x.entry.nodeid])).to.deep.equal([['file', 1n, 9, 9], ['second', 2n, 9, 9]]);
      expect(ENTRY_OUT_SIZE).to.equal(128);
    });

    it('hands out every encoded reply as its own zero-padded bytes (replies share slabs, never bytes)', () => {
      const e = { nodeid: 5, generation: 2, entryValidMs: 1500, attrValidMs: 250, attr };
      const outs: Uint8Array[] = [];
      // enough replies to cross several 64 KiB slabs
      for (let i = 0; i < 2000; i++) {
        outs.push(encodeEntryOut({ ...e, nodeid: i }), encodeAttrOut(i, { ...attr, ino: i }), encodeOpenOut(i, 0));
        if (i % 100 === 0) outs.push(new DirentWriter(20_000).bytes(), new DirentWriter(4096).bytes());
      }
      let k = 0;
      for (let i = 0; i < 2000; i++) {
        const en = outs[k++]!;
        const at = outs[k++]!;
        const op = outs[k++]!;
        expect(en.length).to.equal(ENTRY_OUT_SIZE);
        expect(decodeEntryOut(en)).to.deep.equal({ ...e, nodeid: i });
        expect(decodeAttrOut(at)).to.deep.equal({ attrValidMs: i, attr: { ...attr, ino: i } });
        expect(decodeOpenOut(op)).to.deep.equal({ fh: i, openFlags: 0, backingId: 0 });
        expect(op.subarray(12).every((b) => b === 0)).to.equal(true); // padding
        if (i % 100 === 0) k += 2;
      }
      // a page is zero where nothing was written, and a large one is its own buffer
      const w = new DirentWriter(4096);
      w.add(1, 1, 4, te.encode('abc'));
      const page = w.bytes();
      expect(page.length).to.equal(32);
      expect(page.subarray(DIRENT_SIZE + 3).every((b) => b === 0)).to.equal(true);
      const big = new DirentWriter(20_000);
      expect(big.add(7, 1, 8, te.encode('x'.repeat(200)))).to.equal(true);
      expect(decodeDirents(big.bytes())[0]).to.deep.include({ ino: 7, name: 'x'.repeat(200) });
    });

    it('decodes xattr lists', () => {
      expect(decodeXattrList(te.encode('user.a\0user.bb\0'))).to.deep.equal(['user.a', 'user.bb']);
      expect(decodeXattrList(new Uint8Array(0))).to.deep.equal([]);
      expect(() => decodeXattrList(te.encode('user.a'))).to.throw();
    });
  });

  describe('hostile input (property-based)', () => {
    const opcodes = [
      1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33,
      34, 35, 36, 38, 42, 43, 44, 45, 46, 50, 0, 7, 41, 99, 4096,
    ];

    it('the decoder turns random bytes into a request or an errno, never a throw', () => {
      fc.assert(fc.property(fc.uint8Array({ maxLength: 300 }), (bytes) => {
        const d = decodeRequest(bytes);
        if (!d.ok) expect(d.errno).to.be.greaterThan(0);
      }), { numRuns: 3000 });
    });

    it('the decoder handles well-framed messages with random arguments for every opcode', () => {
      fc.assert(fc.property(fc.constantFrom(...opcodes), fc.uint8Array({ maxLength: 200 }), fc.nat(3), (op, args, extWords) => {
        const m = msg(op, [args]);
        viewOf(m).setUint16(36, extWords, true);
        const d = decodeRequest(m);
        if (d.ok) expect(d.req.h.opcode).to.equal(op);
        else expect(d.errno).to.be.greaterThan(0);
      }), { numRuns: 5000 });
    });

    it('the engine answers random requests with a reply or nothing (FORGET & co.), never a throw, and keeps serving', async () => {
      const vfs = new MemoryVfs();
      vfs.put('dir/file', 'contents');
      const server = new FuseServer(vfs);
      const init = await server.handle(msg(Opcode.INIT, [encode.init(7, 38, 0, 0xffffffff)], 0, 1n));
      expect(init!.error).to.equal(0);
      // a couple of real handles and nodes for the random requests to hit
      await server.handle(msg(Opcode.LOOKUP, [cstr('dir')], 1));
      await server.handle(msg(Opcode.OPENDIR, [encode.open(0)], 1));
      await fc.assert(fc.asyncProperty(
        fc.constantFrom(...opcodes.filter((o) => o !== Opcode.INIT && o !== Opcode.DESTROY)),
        fc.constantFrom(0, 1, 2, 3, 2 ** 53, 0xffffffff),
        fc.oneof(fc.uint8Array({ maxLength: 120 }), fc.constant(new Uint8Array(40)), fc.constant(cstr('file'))),
        fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
        async (op, nodeid, args, unique) => {
          const reply = await server.handle(msg(op, [args], nodeid, unique), 8192);
          if (reply === null) {
            expect(isNoReply(op)).to.equal(true);
            return;
          }
          expect(reply.unique).to.equal(unique);
          expect(reply.error).to.be.at.most(0);
          if (reply.error < 0) expect(reply.length).to.equal(0);
          expect(reply.length).to.be.at.most(8192);
        },
      ), { numRuns: 3000 });
      const r = await server.handle(msg(Opcode.GETATTR, [encode.getattr(0, 0)], 1));
      expect(r!.error).to.equal(0);
      await server.idle();
      expect(server.inflightCount).to.equal(0);
    });

    it('the engine answers random bytes (framing included) without throwing', async () => {
      const server = new FuseServer(new MemoryVfs());
      await server.handle(msg(Opcode.INIT, [encode.init(7, 38, 0, 0)], 0));
      await fc.assert(fc.asyncProperty(fc.uint8Array({ maxLength: 200 }), async (bytes) => {
        const reply = await server.handle(bytes, 4096);
        if (reply !== null) expect(reply.error).to.be.at.most(0);
      }), { numRuns: 2000 });
    });
  });
});

