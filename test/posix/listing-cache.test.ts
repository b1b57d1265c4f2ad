// TtlCache: freshness, peek of expired entries, trees, and the entry count it reports
// (it keeps a permanent internal entry so that lru-cache never empties its backing arrays
// on the delete of its last entry: that entry must never show).
import { expect } from 'chai';
import { TtlCache } from '../../src/backends/posix/listing-cache.js';

describe('TtlCache', () => {
  it('serves fresh entries, peeks expired ones, and counts only real entries', () => {
    let now = 0;
    const c = new TtlCache<{ v: number }>(100, 10, () => now);
    expect(c.size).to.equal(0);
    c.set('a', { v: 1 });
    expect(c.size).to.equal(1);
    expect(c.get('a')).to.deep.equal({ v: 1 });
    now = 150;
    expect(c.get('a')).to.equal(undefined);
    expect(c.peek('a')).to.deep.equal({ value: { v: 1 }, fresh: false });
    c.delete('a');
    expect(c.size).to.equal(0);
    expect(c.get('a')).to.equal(undefined);
    expect(c.peek('a')).to.equal(undefined);
    // The internal entry is not a path anyone can see or set.
    expect(c.get('\0')).to.equal(undefined);
    expect(c.peek('\0')).to.equal(undefined);
    c.set('\0', { v: 2 });
    expect(c.size).to.equal(0);
  });

  it('deletes the last entry, trees and everything, and holds its maximum', () => {
    const c = new TtlCache<{ v: number }>(1000, 3);
    for (let i = 0; i < 10; i++) {
      c.set(`d/${i}`, { v: i });
      c.delete(`d/${i}`);
      expect(c.size).to.equal(0);
    }
    for (const k of ['a', 'b', 'c', 'd', 'd/x', 'd/y', 'e']) c.set(k, { v: 0 });
    // LRU: the oldest went (the internal entry may lend its slot: one more than the maximum).
    expect(c.size).to.be.within(3, 4);
    expect(c.get('a')).to.equal(undefined);
    c.deleteTree('d');
    expect(c.size).to.equal(1);
    expect(c.get('e')).to.deep.equal({ v: 0 });
    c.clear();
    expect(c.size).to.equal(0);
    c.set('f', { v: 1 });
    expect(c.get('f')).to.deep.equal({ v: 1 });
  });

  it('resize (configuration reload) keeps the most recently used entries within the new bound, and can grow', () => {
    const c = new TtlCache<{ v: number }>(1000, 10, () => 0);
    for (let i = 0; i < 10; i++) c.set(`p${i}`, { v: i });
    c.get('p0'); // the most recently used
    c.resize(3);
    expect(c.maxEntries).to.equal(3);
    expect(c.size).to.equal(3);
    expect(c.get('p0')).to.deep.equal({ v: 0 });
    expect(c.get('p9')).to.deep.equal({ v: 9 });
    expect(c.get('p1')).to.equal(undefined);
    c.resize(20);
    for (let i = 10; i < 30; i++) c.set(`p${i}`, { v: i });
    expect(c.size).to.be.within(20, 21);
    expect(c.get('\0')).to.equal(undefined);
  });

  it('a changed TTL (configuration reload) applies at once to entries stored before', () => {
    let now = 0;
    const c = new TtlCache<{ v: number }>(100, 10, () => now);
    c.set('a', { v: 1 });
    now = 50;
    c.ttlMs = 30; // shorter: the 50 ms old entry is stale now, not at its old expiry
    expect(c.get('a')).to.equal(undefined);
    c.ttlMs = 1000; // longer: the same entry is fresh again, until 1000 ms after it was stored
    expect(c.get('a')).to.deep.equal({ v: 1 });
    now = 999;
    expect(c.peek('a')).to.deep.equal({ value: { v: 1 }, fresh: true });
    now = 1000;
    expect(c.get('a')).to.equal(undefined);
    c.ttlMs = 0; // off: nothing is cached
    c.set('b', { v: 2 });
    expect(c.get('b')).to.equal(undefined);
  });
});
