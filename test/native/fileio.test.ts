import { expect } from 'chai';
import { closeSync, fstatSync, mkdirSync, openSync, readFileSync, renameSync, statSync, symlinkSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, native } from '../../src/native/index.js';
import { nativeError, useFileAndMemory } from './helpers.js';

describe('native: synchronous file I/O into mapped memory', () => {
  const fx = useFileAndMemory('vhs-fileio-');

  it('preadv scatters a file into guest memory; pwritev gathers it back', () => {
    const path = join(fx.dir, 'data');
    const content = Buffer.alloc(8192);
    for (let i = 0; i < content.length; i++) content[i] = (i * 7) & 0xff;
    writeFileSync(path, content);
    const fd = openSync(path, 'r+');
    try {
      const iov = new Float64Array([fx.mem.address + 65536, 1000, fx.mem.address + 4096, 3096, 0, 0]);
      expect(native.preadv(fd, iov, 2, 100)).to.equal(4096);
      const bytes = new Uint8Array(fx.mem.windows[0]!);
      expect(Buffer.from(bytes.subarray(65536, 66536)).equals(content.subarray(100, 1100))).to.equal(true);
      expect(Buffer.from(bytes.subarray(4096, 7192)).equals(content.subarray(1100, 4196))).to.equal(true);

      bytes.fill(0xab, 200000, 200512);
      const out = new Float64Array([fx.mem.address + 200000, 512]);
      expect(native.pwritev(fd, out, 1, 8192)).to.equal(512);
      native.fdatasync(fd);
      const back = readFileSync(path);
      expect(back.length).to.equal(8704);
      expect(back.subarray(8192).every((b) => b === 0xab)).to.equal(true);
      // short read at EOF
      expect(native.preadv(fd, out, 1, 8704 - 10)).to.equal(10);
    } finally {
      closeSync(fd);
    }
  });

  it('refuses iovecs outside live mappings with EFAULT', () => {
    const path = join(fx.dir, 'f');
    writeFileSync(path, Buffer.alloc(4096, 1));
    const fd = openSync(path, 'r+');
    try {
      const end = fx.mem.address + fx.mem.length;
      const bad = [
        [end - 10, 20],
        [4096, 10],
        [fx.mem.address - 1, 2],
        [-1, 1],
        [fx.mem.address + 0.5, 1],
      ];
      for (const [addr, len] of bad) {
        const iov = new Float64Array([fx.mem.address, 16, addr!, len!]);
        expect(nativeError(() => native.preadv(fd, iov, 2, 0)).code, `${addr}`).to.equal('EFAULT');
        expect(nativeError(() => native.pwritev(fd, iov, 2, 0)).code).to.equal('EFAULT');
      }
      // a range ending exactly at the end of the mapping is fine
      expect(native.preadv(fd, new Float64Array([end - 16, 16]), 1, 0)).to.equal(16);
      // after unmap the range is gone
      const other = native.mmap(fx.memfd, 0, 4096, true);
      const iov = new Float64Array([other.address, 16]);
      expect(native.preadv(fd, iov, 1, 0)).to.equal(16);
      other.unmap();
      expect(nativeError(() => native.preadv(fd, iov, 1, 0)).code).to.equal('EFAULT');
    } finally {
      closeSync(fd);
    }
  });

  it('checks iovCount against the array and IOV_MAX', () => {
    const iov = new Float64Array(2 * 1025);
    expect(() => native.preadv(0, iov, 2000, 0)).to.throw(RangeError);
    expect(() => native.preadv(0, new Float64Array(4), 3, 0)).to.throw(RangeError);
    expect(() => native.preadv(0, new Float64Array(4), -1, 0)).to.throw(RangeError);
    expect(() => native.preadv(0, new Float64Array(4) as unknown as Float64Array, 1, -2)).to.throw(RangeError);
  });

  it('fallocate punches holes that read as zeros', () => {
    const path = join(fx.dir, 'sparse');
    writeFileSync(path, Buffer.alloc(1 << 20, 0xff));
    const fd = openSync(path, 'r+');
    try {
      native.fdatasync(fd);
      const blocksBefore = fstatSync(fd).blocks;
      native.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 65536, 262144);
      const st = fstatSync(fd);
      expect(st.size).to.equal(1 << 20);
      expect(st.blocks).to.be.lessThan(blocksBefore);
      const data = readFileSync(path);
      expect(data.subarray(65536, 65536 + 262144).every((b) => b === 0)).to.equal(true);
      expect(data[65535]).to.equal(0xff);
      expect(data[65536 + 262144]).to.equal(0xff);
      expect(nativeError(() => native.fallocate(fd, FALLOC_FL_PUNCH_HOLE, 0, 4096)).code).to.equal('EOPNOTSUPP');
    } finally {
      closeSync(fd);
    }
  });

  it('isFile tells whether a path still names a file (st_dev and st_ino as fs.statSync gives them)', () => {
    const path = join(fx.dir, 'obj');
    writeFileSync(path, 'one');
    const { dev, ino } = statSync(path);
    expect(native.isFile(path, dev, ino)).to.equal(true);
    expect(native.isFile(path, dev, ino + 1)).to.equal(false);
    expect(native.isFile(path, dev + 1, ino)).to.equal(false);
    const link = join(fx.dir, 'link');
    symlinkSync(path, link);
    expect(native.isFile(link, dev, ino)).to.equal(true); // followed, as statSync does
    // Replaced by rename (a store's put), while the old one stays open: another file.
    const fd = openSync(path, 'r');
    try {
      writeFileSync(join(fx.dir, 'tmp'), 'two');
      renameSync(join(fx.dir, 'tmp'), path);
      expect(native.isFile(path, dev, ino)).to.equal(false);
      const now = statSync(path);
      expect(native.isFile(path, now.dev, now.ino)).to.equal(true);
      // Errors are "no": gone, a file where a directory should be, a path too long.
      unlinkSync(path);
      expect(native.isFile(path, now.dev, now.ino)).to.equal(false);
      writeFileSync(join(fx.dir, 'plain'), '');
      expect(native.isFile(join(fx.dir, 'plain', 'x'), now.dev, now.ino)).to.equal(false);
      expect(native.isFile('/' + 'a/'.repeat(3000), now.dev, now.ino)).to.equal(false);
      mkdirSync(join(fx.dir, 'd'));
      const d = statSync(join(fx.dir, 'd'));
      expect(native.isFile(join(fx.dir, 'd'), d.dev, d.ino)).to.equal(true); // any kind of file
    } finally {
      closeSync(fd);
    }
    expect(() => (native.isFile as (...a: unknown[]) => boolean)(path, 'x', 1)).to.throw(TypeError);
    // The longest path the kernel takes (PATH_MAX 4096 with its NUL): still looked up.
    let long = fx.dir;
    while (4094 - long.length > 255) long = join(long, 'd'.repeat(200)); // the last name fits NAME_MAX
    mkdirSync(long, { recursive: true });
    long = join(long, 'f'.repeat(4095 - long.length - 1));
    expect(long.length).to.equal(4095);
    writeFileSync(long, '');
    const ls = statSync(long);
    expect(native.isFile(long, ls.dev, ls.ino)).to.equal(true);
    expect(native.isFile(long + 'x', ls.dev, ls.ino)).to.equal(false);
  });
});
