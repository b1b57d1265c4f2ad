// Our FUSE client against QEMU's C virtiofsd (Debian's qemu-system-common) sharing a host
// directory: files made through the client appear on the host with the right bytes, and
// host files are seen through the client — the client speaks real FUSE over virtio-fs,
// not just what our own server accepts.
import { expect } from 'chai';
import { existsSync, lstatSync, mkdirSync, readFileSync, readdirSync, readlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { FuseClient } from '../../src/frontend/fuse-client.js';
import { O_CREAT, O_EXCL, O_RDONLY, O_RDWR, S_IFDIR, S_IFMT, S_IFREG } from '../../src/fuse/abi.js';
import type { DirentPlus } from '../../src/fuse/replies.js';
import { TmpDir, patternBytes } from '../support/tmp.js';
import { errnoCode } from '../support/errno.js';
import { startVirtiofsd, virtiofsdUsable, type Virtiofsd } from '../support/guest/fs-checks.js';

const te = new TextEncoder();
const td = new TextDecoder();


describe('FUSE client against virtiofsd', function () {
  this.timeout(30000);
  let dir: TmpDir;
  let shared: string;
  let vfsd: Virtiofsd | null = null;
  let c: FuseClient | null = null;

  before(function () {
    if (!virtiofsdUsable()) this.skip();
  });

  beforeEach(async () => {
    dir = new TmpDir();
    shared = dir.file('shared');
    mkdirSync(shared);
    const socket = dir.file('fs.sock');
    vfsd = await startVirtiofsd({ source: shared, socket });
    c = await FuseClient.connect(socket, { maxIo: 256 * 1024 });
  });

  afterEach(async () => {
    await c?.close();
    c = null;
    await vfsd?.stop();
    vfsd = null;
    dir.remove();
  });

  it('creates, writes and reads files that appear on the host, and lists directories', async () => {
    const cl = c!;
    const init = await cl.init();
    expect(init.major).to.equal(7);
    expect(init.minor).to.be.within(31, 38);
    expect(init.maxWrite).to.be.greaterThan(4096);

    const { entry, fh } = await cl.create(1, 'hello.txt', O_CREAT | O_EXCL | O_RDWR, S_IFREG | 0o644);
    expect(entry.nodeid).to.be.greaterThan(1);
    expect(entry.attr.mode & S_IFMT).to.equal(S_IFREG);
    const text = te.encode('hello from the vhost-s3 FUSE client\n');
    expect(await cl.write(entry.nodeid, fh, 0, text)).to.equal(text.length);
    expect(td.decode(await cl.read(entry.nodeid, fh, 0, 4096))).to.equal(td.decode(text));
    await cl.flush(entry.nodeid, fh);
    await cl.release(entry.nodeid, fh);
    expect(readFileSync(join(shared, 'hello.txt'), 'utf8')).to.equal(td.decode(text));
    expect(lstatSync(join(shared, 'hello.txt')).mode & 0o777).to.equal(0o644);

    // a directory with a larger file written in several requests
    const sub = await cl.mkdir(1, 'sub', 0o755);
    expect(sub.attr.mode & S_IFMT).to.equal(S_IFDIR);
    const big = await cl.create(sub.nodeid, 'data.bin', O_CREAT | O_RDWR, S_IFREG | 0o600);
    const data = patternBytes(11, 600 * 1024);
    const step = 128 * 1024;
    await Promise.all(Array.from({ length: Math.ceil(data.length / step) }, (_, i) =>
      cl.write(big.entry.nodeid, big.fh, i * step, data.subarray(i * step, (i + 1) * step))));
    const back = await cl.read(big.entry.nodeid, big.fh, 100_000, 200_000);
    expect(Buffer.from(back).equals(Buffer.from(data.subarray(100_000, 300_000)))).to.equal(true);
    // readInto (the benchmarks' READ): into the caller's buffer, short at the end of the file
    const into = new Uint8Array(128 * 1024).fill(0xee);
    expect(await cl.readInto(big.entry.nodeid, big.fh, data.length - 1000, into)).to.equal(1000);
    expect(Buffer.from(into.subarray(0, 1000)).equals(Buffer.from(data.subarray(data.length - 1000)))).to.equal(true);
    expect(into[1000], 'bytes past what came back are left alone').to.equal(0xee);
    expect((await cl.getattr(big.entry.nodeid)).attr.size).to.equal(data.length);
    await cl.fsync(big.entry.nodeid, big.fh);
    await cl.release(big.entry.nodeid, big.fh);
    expect(Buffer.from(readFileSync(join(shared, 'sub', 'data.bin'))).equals(Buffer.from(data))).to.equal(true);

    // READDIR and READDIRPLUS of the root
    const names = (await cl.listdir(1)).map((e) => e.name).sort();
    expect(names).to.include.members(['hello.txt', 'sub']);
    const plus = (await cl.listdir(1, true)) as DirentPlus[];
    const h = plus.find((e) => e.name === 'hello.txt')!;
    expect(h.entry.nodeid).to.equal(entry.nodeid);
    expect(h.entry.attr.size).to.equal(text.length);

    // a file made on the host is visible through the client
    writeFileSync(join(shared, 'from-host'), 'made on the host');
    const fromHost = await cl.lookup(1, 'from-host');
    const o = await cl.open(fromHost.nodeid, O_RDONLY);
    expect(td.decode(await cl.read(fromHost.nodeid, o.fh, 0, 100))).to.equal('made on the host');
    await cl.release(fromHost.nodeid, o.fh);

    // a directory larger than one page: offsets are virtiofsd's telldir cookies (beyond 2^53)
    mkdirSync(join(shared, 'many'));
    const many = Array.from({ length: 150 }, (_, i) => `host-file-number-${i}`);
    for (const n of many) writeFileSync(join(shared, 'many', n), n);
    const m = await cl.lookup(1, 'many');
    const listed = await cl.listdir(m.nodeid, false, 1024);
    expect(listed.filter((e) => e.name !== '.' && e.name !== '..').map((e) => e.name).sort()).to.deep.equal([...many].sort());
    const listedPlus = (await cl.listdir(m.nodeid, true, 4096)) as DirentPlus[];
    expect(listedPlus.filter((e) => e.entry.nodeid !== 0).length).to.equal(150);

    const st = await cl.statfs();
    expect(st.bsize).to.be.greaterThan(0);
  });

  it('renames, truncates, unlinks, symlinks, and reports errnos the way the host does', async () => {
    const cl = c!;
    await cl.init();
    const { entry, fh } = await cl.create(1, 'a', O_CREAT | O_RDWR);
    await cl.write(entry.nodeid, fh, 0, te.encode('0123456789'));
    await cl.release(entry.nodeid, fh);
    await cl.setattr(entry.nodeid, { size: 4 });
    expect(readFileSync(join(shared, 'a'), 'utf8')).to.equal('0123');
    const d = await cl.mkdir(1, 'd');
    await cl.rename(1, 'a', d.nodeid, 'b');
    expect(readdirSync(join(shared, 'd'))).to.deep.equal(['b']);
    expect(existsSync(join(shared, 'a'))).to.equal(false);
    await cl.symlink(1, 'ln', 'd/b');
    expect(readlinkSync(join(shared, 'ln'))).to.equal('d/b');
    expect(await cl.readlink((await cl.lookup(1, 'ln')).nodeid)).to.equal('d/b');

    expect(await errnoCode(cl.lookup(1, 'missing'))).to.equal('ENOENT');
    expect(await errnoCode(cl.mkdir(1, 'd'))).to.equal('EEXIST');
    expect(await errnoCode(cl.rmdir(1, 'd'))).to.equal('ENOTEMPTY');
    expect(await errnoCode(cl.unlink(1, 'd'))).to.equal('EISDIR');

    await cl.unlink(d.nodeid, 'b');
    await cl.rmdir(1, 'd');
    expect(readdirSync(shared).sort()).to.deep.equal(['ln']);
    // the kernel's FORGET on hiprio is taken without a reply
    expect(await cl.forget(entry.nodeid, 1)).to.equal(0);
    expect((await cl.getattr(1)).attr.mode & S_IFMT).to.equal(S_IFDIR);
  });
});
