// The inode table: lookup counts, forgetting, detaching, and re-keying on rename.
import { expect } from 'chai';
import { InodeTable, joinPath, parentPath } from '../../src/fuse/inodes.js';

describe('FUSE inode table', () => {
  it('gives the root node id 1 and never drops it', () => {
    const t = new InodeTable();
    expect(t.get(1)?.path).to.equal('');
    expect(t.lookup('', 'dir')).to.equal(t.root);
    expect(t.forget(1, 1000)).to.equal(false);
    expect(t.get(1)).to.equal(t.root);
  });

  it('counts lookups, drops at zero, never reuses node ids', () => {
    const t = new InodeTable(3);
    const a = t.lookup('a', 'file');
    expect(a.generation).to.equal(3);
    expect(t.lookup('a', 'file')).to.equal(a);
    expect(a.lookups).to.equal(2);
    expect(t.forget(a.nodeid, 1)).to.equal(false);
    expect(t.forget(a.nodeid, 5)).to.equal(true); // more than held: clamps
    expect(t.get(a.nodeid)).to.equal(undefined);
    expect(t.atPath('a')).to.equal(undefined);
    const a2 = t.lookup('a', 'file');
    expect(a2.nodeid).to.be.greaterThan(a.nodeid);
    expect(t.forget(999, 1)).to.equal(false);
  });

  it('gives a new node id when the kind at a path changed', () => {
    const t = new InodeTable();
    const f = t.lookup('x', 'file');
    const d = t.lookup('x', 'dir');
    expect(d.nodeid).to.not.equal(f.nodeid);
    expect(f.path).to.equal(null);
    expect(t.get(f.nodeid)).to.equal(f); // still held by the kernel until it forgets
    expect(t.atPath('x')).to.equal(d);
  });

  it('detaches unlinked inodes and everything below a removed directory', () => {
    const t = new InodeTable();
    const d = t.lookup('d', 'dir');
    const c = t.lookup('d/c', 'file');
    const other = t.lookup('dd', 'file');
    t.unlink('d');
    expect(d.path).to.equal(null);
    expect(c.path).to.equal(null);
    expect(other.path).to.equal('dd');
    expect(t.forget(c.nodeid, 1)).to.equal(true);
  });

  it('re-keys a renamed directory and all its descendants, detaching what was replaced', () => {
    const t = new InodeTable();
    const a = t.lookup('a', 'dir');
    const ab = t.lookup('a/b', 'dir');
    const abc = t.lookup('a/b/c', 'file');
    const ax = t.lookup('ax', 'file'); // shares the prefix "a" but is not below a/
    const target = t.lookup('z', 'dir');
    t.rename('a', 'z');
    expect([a.path, ab.path, abc.path, ax.path]).to.deep.equal(['z', 'z/b', 'z/b/c', 'ax']);
    expect(target.path).to.equal(null);
    expect(t.atPath('z/b/c')).to.equal(abc);
    expect(t.atPath('a/b')).to.equal(undefined);
    // a file over a file
    const f = t.lookup('f', 'file');
    const g = t.lookup('g', 'file');
    t.rename('f', 'g');
    expect(f.path).to.equal('g');
    expect(g.path).to.equal(null);
    expect(t.atPath('g')).to.equal(f);
    // into a subdirectory of a renamed tree
    t.rename('z/b/c', 'ax2');
    expect(abc.path).to.equal('ax2');
  });

  it('clear() drops everything but the root and bumps the generation', () => {
    const t = new InodeTable(0);
    const a = t.lookup('a', 'file');
    t.clear();
    expect(t.size).to.equal(1);
    expect(a.path).to.equal(null);
    expect(t.lookup('a', 'file').generation).to.equal(1);
  });

  it('joins and splits paths', () => {
    expect(joinPath('', 'a')).to.equal('a');
    expect(joinPath('a/b', 'c')).to.equal('a/b/c');
    expect(parentPath('a/b/c')).to.equal('a/b');
    expect(parentPath('a')).to.equal('');
  });
});
