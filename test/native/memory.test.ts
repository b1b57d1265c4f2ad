import { expect } from 'chai';
import { closeSync, ftruncateSync, openSync, readFileSync, readSync } from 'node:fs';
import { native } from '../../src/native/index.js';
import { collectGarbage as collect, nativeError } from './helpers.js';

const GiB = 1024 ** 3;

function isMapped(address: number): boolean {
  const hex = address.toString(16);
  return readFileSync('/proc/self/maps', 'utf8')
    .split('\n')
    .some((line) => line.startsWith(`${hex}-`));
}


describe('native: memfd and mmap', () => {
  it('two mappings of one memfd share bytes', () => {
    const fd = native.memfdCreate('guest', 1 << 20);
    const a = native.mmap(fd, 0, 1 << 20, true);
    const b = native.mmap(fd, 0, 1 << 20, true);
    try {
      expect(a.address).to.not.equal(b.address);
      expect(a.length).to.equal(1 << 20);
      expect(a.windows).to.have.length(1);
      expect(a.mapped).to.equal(true);
      new DataView(a.windows[0]!).setUint32(4096, 0xdeadbeef, true);
      expect(new DataView(b.windows[0]!).getUint32(4096, true)).to.equal(0xdeadbeef);
      const buf = Buffer.alloc(4);
      readSync(fd, buf, 0, 4, 4096);
      expect(buf.readUInt32LE(0)).to.equal(0xdeadbeef);
    } finally {
      a.unmap();
      b.unmap();
      native.close(fd);
    }
  });

  it('maps at an offset', () => {
    const fd = native.memfdCreate('offset', 3 * 4096);
    const whole = native.mmap(fd, 0, 3 * 4096, true);
    const tail = native.mmap(fd, 4096, 2 * 4096, false);
    new Uint8Array(whole.windows[0]!)[4096 + 7] = 99;
    expect(new Uint8Array(tail.windows[0]!)[7]).to.equal(99);
    whole.unmap();
    tail.unmap();
    native.close(fd);
  });

  it('unmap detaches every window, is idempotent, and really unmaps', () => {
    const fd = native.memfdCreate('unmap', 8192);
    const m = native.mmap(fd, 0, 8192, true);
    const window = m.windows[0]!;
    const view = new Uint8Array(window);
    expect(isMapped(m.address)).to.equal(true);
    m.unmap();
    expect(m.mapped).to.equal(false);
    expect(window.byteLength).to.equal(0);
    expect(view.length).to.equal(0);
    expect(view[0]).to.equal(undefined);
    expect(isMapped(m.address)).to.equal(false);
    m.unmap();
    native.close(fd);
  });

  it('splits a mapping over 1 GiB into windows', () => {
    const size = 1.5 * GiB;
    const fd = native.memfdCreate('big', size);
    const m = native.mmap(fd, 0, size, true);
    try {
      expect(native.WINDOW_SIZE).to.equal(GiB);
      expect(m.windows.map((w) => w.byteLength)).to.deep.equal([GiB, 0.5 * GiB]);
      expect(Object.isFrozen(m.windows)).to.equal(true);
      new Uint8Array(m.windows[1]!)[10] = 77;
      new Uint8Array(m.windows[0]!)[GiB - 1] = 66;
      const buf = Buffer.alloc(12);
      readSync(fd, buf, 0, 12, GiB - 1);
      expect(buf[0]).to.equal(66);
      expect(buf[11]).to.equal(77);
    } finally {
      m.unmap();
      native.close(fd);
    }
    expect(m.windows.every((w) => w.byteLength === 0)).to.equal(true);
  });

  it('is unmapped once Mapping and windows are garbage-collected', async function () {
    const fd = native.memfdCreate('gc', 4096);
    let address = 0;
    let keep: ArrayBuffer | undefined;
    (() => {
      const m = native.mmap(fd, 0, 4096, true);
      address = m.address;
      keep = m.windows[0];
    })();
    await collect();
    // a surviving window keeps the memory mapped even though the Mapping is gone
    expect(isMapped(address)).to.equal(true);
    new Uint8Array(keep!)[0] = 1;
    keep = undefined;
    await collect();
    expect(isMapped(address)).to.equal(false);
    native.close(fd);
  });

  it('GC after an explicit unmap does not unmap again', async () => {
    const fd = native.memfdCreate('gc2', 4096);
    (() => native.mmap(fd, 0, 4096, true).unmap())();
    await collect();
    // a new mapping probably reuses the freed address range; it must survive the GC
    const again = native.mmap(fd, 0, 4096, true);
    await collect();
    expect(isMapped(again.address)).to.equal(true);
    new Uint8Array(again.windows[0]!)[0] = 1;
    again.unmap();
    native.close(fd);
  });

  it('reports errors with errno', () => {
    expect(nativeError(() => native.mmap(123456, 0, 4096, true)).code).to.equal('EBADF');
    const fd = native.memfdCreate('err', 4096);
    expect(nativeError(() => native.mmap(fd, 0, 0, true)).code).to.equal('EINVAL');
    expect(nativeError(() => native.mmap(fd, 100, 4096, true)).code).to.equal('EINVAL');
    native.close(fd);
  });

  it('seals a memfd against growing, shrinking and further sealing when asked', () => {
    const F_SEAL_SEAL = 0x1, F_SEAL_SHRINK = 0x2, F_SEAL_GROW = 0x4;
    const sealed = native.memfdCreate('sealed', 8192, true);
    const plain = native.memfdCreate('plain', 8192);
    try {
      expect(native.memfdSeals(sealed)).to.equal(F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW);
      expect(native.memfdSeals(plain), 'a memfd created without sealing carries F_SEAL_SEAL only').to.equal(F_SEAL_SEAL);
      expect(() => ftruncateSync(sealed, 4096)).to.throw(/EPERM/);
      expect(() => ftruncateSync(sealed, 16384)).to.throw(/EPERM/);
      ftruncateSync(plain, 4096);
      const m = native.mmap(sealed, 0, 8192, true);
      new Uint8Array(m.windows[0]!).fill(7); // still an ordinary writable mapping
      m.unmap();
    } finally {
      native.close(sealed);
      native.close(plain);
    }
    const file = openSync('/proc/self/stat', 'r');
    try {
      expect(native.memfdSeals(file), 'a file that cannot carry seals').to.equal(-1);
    } finally {
      closeSync(file);
    }
  });
});
