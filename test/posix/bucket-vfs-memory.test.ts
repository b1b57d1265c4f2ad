// The BucketVfs behavioural suite over the in-memory store.
import { expect } from 'chai';
import { MemoryStore } from '../../src/backends/memory-store.js';
import { BucketVfs } from '../../src/backends/posix/bucket-vfs.js';
import { CALLER, expectErrno } from './helpers.js';
import { bucketVfsSuite } from './suite.js';

bucketVfsSuite({
  name: 'the memory store',
  open: async () => {
    const store = new MemoryStore({ minPartSize: 64 * 1024 });
    return { store, close: () => store.close() };
  },
});

describe('BucketVfs with an empty prefix (the whole bucket)', () => {
  it('keeps the root attributes in memory and works on top-level keys', async () => {
    const store = new MemoryStore();
    await store.put('top', new TextEncoder().encode('x'));
    await store.put('dir/inner', new TextEncoder().encode('y'));
    const vfs = new BucketVfs({ store, defaultDirMode: 0o750 });
    const root = (await vfs.stat(''))!;
    expect(root.kind).to.equal('dir');
    expect(root.mode & 0o7777).to.equal(0o750);
    expect((await vfs.list('')).map((e) => e.name).sort()).to.deep.equal(['dir', 'top']);
    expect((await vfs.setattr('', { mode: 0o711 })).mode & 0o7777).to.equal(0o711);
    expect((await vfs.stat(''))!.mode & 0o7777).to.equal(0o711);
    await vfs.setxattr('', 'user.a', new Uint8Array([1]), { create: true, replace: false });
    expect(await vfs.listxattr('')).to.deep.equal(['user.a']);
    await expectErrno(vfs.rmdir(''), 'EBUSY');
    await expectErrno(vfs.rename('', 'x', false), 'EBUSY');
    await expectErrno(vfs.mkdir('', 0o755, CALLER), 'EEXIST');
    await vfs.rename('dir', 'moved', false);
    expect((await vfs.list('')).map((e) => e.name).sort()).to.deep.equal(['moved', 'top']);
    expect(await store.head('dir/inner')).to.equal(null);
    expect(await store.head('moved/inner')).to.not.equal(null);
    // Nothing was written for the root itself.
    expect((await store.list({})).objects.map((o) => o.key).sort()).to.deep.equal(['moved/inner', 'top']);
    await vfs.close();
  });
});
