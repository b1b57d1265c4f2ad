// The blk workload's check of the store (blk-workload.ts): what it reads straight from the
// store is compared with the model, and a chunk object that is not a whole chunk is
// reported as such. It used to ignore how many bytes a read returned, so a short object
// (s3rver read mid-PUT) passed for an acknowledged write lost: sectors of zeros.
import { expect } from 'chai';
import { MemoryStore } from '../../src/backends/memory-store.js';
import { ImageKeys } from '../../src/blk/image-format.js';
import { DiskModel, verifyStoredChunks } from './blk-workload.js';

describe('blk workload: verifyStoredChunks', () => {
  const CS = 64 * 1024;
  const keys = new ImageKeys('img/');

  function setup(): { store: MemoryStore; model: DiskModel; chunk: Uint8Array } {
    const store = new MemoryStore();
    const model = new DiskModel(4 * CS);
    const chunk = new Uint8Array(CS).fill(0x5a);
    model.apply(CS, chunk);
    return { store, model, chunk };
  }

  it('compares whole chunks, and a chunk with no object as zeros', async () => {
    const { store, model, chunk } = setup();
    await store.put(keys.chunk(1), chunk);
    expect(await verifyStoredChunks(store, keys, CS, model)).to.equal(4 * CS);
  });

  it('reports a chunk object shorter than a chunk, not zeros where it ends', async () => {
    const { store, model, chunk } = setup();
    await store.put(keys.chunk(1), chunk.subarray(0, 44_544));
    const err = await verifyStoredChunks(store, keys, CS, model, [1]).then(() => null, (e: Error) => e);
    expect(err?.message).to.match(/chunks\/0+1: the stored object is 44544 bytes \(44544 read\), not a whole chunk of 65536/);
  });

  it('reports a chunk object longer than a chunk', async () => {
    const { store, model } = setup();
    await store.put(keys.chunk(1), new Uint8Array(CS + 512).fill(0x5a));
    const err = await verifyStoredChunks(store, keys, CS, model, [1]).then(() => null, (e: Error) => e);
    expect(err?.message).to.match(/is 66048 bytes \(65536 read\), not a whole chunk/);
  });
});
