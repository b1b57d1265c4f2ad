// ReadOnlyVfs (--readonly): refuses every change with EROFS, and passes on what the inner
// Vfs offers for speed — LOOKUP/GETATTR answered without waiting (statNow), READs into
// the reply buffers or from the cache (readInto, readNow, readIntoAsync) and the FUSE
// passthrough backing — so that a read-only share reads as fast as a writable one. (Those
// were once left out: a --readonly share took the slow path for every read.)
import { expect } from 'chai';
import { ReadOnlyVfs } from '../../src/fuse/read-only-vfs.js';
import type { FileAttr, OpenFile, Vfs } from '../../src/fuse/vfs.js';
import type { Segment } from '../../src/virtio/memory.js';

const ATTR = { kind: 'file', size: 5 } as unknown as FileAttr;
const RO = { read: true, write: false, truncate: false, append: false };

function spyFile(calls: string[]): OpenFile {
  return {
    read: async () => new Uint8Array(5),
    readInto: (_o: number, _l: number, _t: readonly Uint8Array[]) => (calls.push('readInto'), 3),
    readNow: () => (calls.push('readNow'), new Uint8Array(2)),
    readIntoAsync: (_o: number, _l: number, _t: readonly Segment[], done: (r: number) => void) => (calls.push('readIntoAsync'), done(4), true),
    backingFile: async () => (calls.push('backingFile'), { fd: 9, bytes: 5 }),
    write: async () => (calls.push('write'), 0),
    attr: async () => ATTR,
    flush: async () => undefined,
    fsync: async () => undefined,
    allocate: async () => (calls.push('allocate'), undefined),
    setattr: async () => (calls.push('setattr'), ATTR),
    release: async () => undefined,
  };
}

describe('ReadOnlyVfs', () => {
  it('passes on statNow, the fast read paths and the passthrough backing', async () => {
    const calls: string[] = [];
    const inner = { open: async () => spyFile(calls), statNow: (p: string) => (calls.push(`statNow ${p}`), ATTR) } as unknown as Vfs;
    const vfs = new ReadOnlyVfs(inner);
    expect(vfs.statNow!('a/b')).to.equal(ATTR);
    const f = await vfs.open('a/b', RO);
    expect(f.readInto!(0, 3, [new Uint8Array(3)])).to.equal(3);
    expect(f.readNow!(0, 2)).to.have.length(2);
    let done = -1;
    expect(f.readIntoAsync!(0, 4, [], (r) => (done = r))).to.equal(true);
    expect(done).to.equal(4);
    expect(await f.backingFile!(100)).to.deep.equal({ fd: 9, bytes: 5 });
    expect(calls).to.deep.equal(['statNow a/b', 'readInto', 'readNow', 'readIntoAsync', 'backingFile']);
  });

  it('answers "not this way" where the inner Vfs has no such path, and still refuses changes', async () => {
    const plain = spyFile([]);
    for (const k of ['readInto', 'readNow', 'readIntoAsync', 'backingFile'] as const) delete (plain as { [K in typeof k]?: unknown })[k];
    const vfs = new ReadOnlyVfs({ open: async () => plain } as unknown as Vfs);
    expect(vfs.statNow!('x')).to.equal(undefined);
    const f = await vfs.open('x', RO);
    expect(f.readInto!(0, 1, [new Uint8Array(1)])).to.equal(null);
    expect(f.readNow!(0, 1)).to.equal(null);
    expect(f.readIntoAsync!(0, 1, [], () => expect.fail('done called'))).to.equal(false);
    expect(await f.backingFile!(100)).to.equal(null);
    for (const change of [() => f.write(0, new Uint8Array(1)), () => f.allocate(0, 1), () => f.setattr({ size: 0 })]) {
      await change().then(() => expect.fail('changed a read-only file'), (e: { code?: string }) => expect(e.code).to.equal('EROFS'));
    }
    await vfs.open('x', { ...RO, write: true }).then(() => expect.fail('opened for writing'), (e: { code?: string }) => expect(e.code).to.equal('EROFS'));
  });
});
