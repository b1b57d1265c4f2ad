// Offline image operations (src/blk/image-admin.ts) on a store with conditional writes
// (memory) and on the local directory store: create, info, list, remove, import, export,
// and what happens with manifests this version does not understand.
import { expect } from 'chai';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';

import { createImage, exportImage, imageInfo, importImage, listImages, removeImage } from '../../src/blk/image-admin.js';
import { ImageKeys, encodeManifest, newManifest, type ImageManifest } from '../../src/blk/image-format.js';
import { ObjectImage } from '../../src/blk/object-image.js';
import { FileStore } from '../../src/backends/file-store.js';
import { MemoryStore } from '../../src/backends/memory-store.js';
import { listKeys, type ObjectStore } from '../../src/backends/object-store.js';
import { errnoOf } from '../../src/util/errors.js';
import { silentLogger } from '../../src/util/log.js';
import { TmpDir, makeRawFile } from '../support/tmp.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const CS = 64 * KiB;

const EEXIST = 17;
const ENOENT = 2;
const EBUSY = 16;
const EINVAL = 22;

async function rejects(p: Promise<unknown>): Promise<Error & { errno?: number }> {
  try {
    await p;
  } catch (err) {
    return err as Error;
  }
  expect.fail('expected a rejection');
}

async function keysUnder(store: ObjectStore, prefix: string): Promise<string[]> {
  const out: string[] = [];
  for await (const k of listKeys(store, prefix)) out.push(k);
  return out;
}

function pattern(seed: number, n: number): Uint8Array {
  return Uint8Array.from({ length: n }, (_, i) => ((i * 167 + seed * 13) % 253) + 1);
}

function leaseBody(heartbeatAgoMs: number): Uint8Array {
  return new TextEncoder().encode(JSON.stringify({
    holder: 'h-1', host: 'host-a', pid: 777, heartbeat: new Date(Date.now() - heartbeatAgoMs).toISOString(), ttlMs: 30_000,
  }));
}

for (const kind of ['memory', 'file'] as const) {
  describe(`image admin (${kind} store)`, function () {
    this.timeout(30_000);
    let dir: TmpDir;
    let store: ObjectStore;
    const keys = (name: string): ImageKeys => new ImageKeys(`images/${name}/`);

    beforeEach(async () => {
      dir = new TmpDir('vhost-s3-admin-');
      store = kind === 'memory' ? new MemoryStore() : await FileStore.open(dir.file('store'), { create: true });
    });
    afterEach(async () => {
      await store.close();
      dir.remove();
    });

    it('create writes a manifest only, and refuses an existing image', async () => {
      const m = await createImage(store, keys('vm1'), 20 * 2 ** 30, 4 * MiB);
      expect(m).to.include({ format: 'vhost-s3-image', version: 1, size: 20 * 2 ** 30, chunkSize: 4 * MiB });
      expect(m.uuid).to.match(/^[0-9a-f-]{36}$/);
      expect(Date.now() - Date.parse(m.createdAt)).to.be.within(0, 60_000);
      expect(await keysUnder(store, '')).to.deep.equal(['images/vm1/manifest.json']);
      const stored = JSON.parse(new TextDecoder().decode((await store.get('images/vm1/manifest.json')).body)) as ImageManifest;
      expect(stored).to.deep.equal(m);

      const err = await rejects(createImage(store, keys('vm1'), MiB, CS));
      expect(errnoOf(err)).to.equal(EEXIST);
      expect(err.message).to.match(/already exists/);
      expect((await ObjectImage.readManifest(store, keys('vm1'))).uuid, 'the first image is untouched').to.equal(m.uuid);
    });

    it('create checks the geometry before storing anything', async () => {
      for (const [size, cs] of [[1000, CS], [0, CS], [MiB, 3 * CS], [MiB, 32 * KiB], [MiB, 128 * MiB]]) {
        const err = await rejects(createImage(store, keys('bad'), size!, cs!));
        expect(errnoOf(err), `${size}/${cs}`).to.equal(EINVAL);
        expect(err.message).to.match(/multiple of 512|power of two/);
      }
      expect(await keysUnder(store, '')).to.deep.equal([]);
    });

    it('info reports size, chunk size, chunks and bytes stored, and the lease', async () => {
      const k = keys('vm1');
      await createImage(store, k, 16 * MiB, CS);
      let info = await imageInfo(store, k);
      expect(info.manifest.size).to.equal(16 * MiB);
      expect(info.manifest.chunkSize).to.equal(CS);
      expect(info.chunksStored).to.equal(0);
      expect(info.bytesStored).to.equal(0);
      expect(info.lease).to.equal(null);

      await store.put(k.chunk(0), pattern(1, CS));
      await store.put(k.chunk(200), pattern(2, CS));
      await store.put(`${k.chunksPrefix}not-a-chunk`, pattern(3, 10)); // ignored
      await store.put(k.lease, leaseBody(1000));
      info = await imageInfo(store, k);
      expect(info.chunksStored).to.equal(2);
      expect(info.bytesStored).to.equal(2 * CS);
      expect(info.lease).to.include({ host: 'host-a', pid: 777, stale: false });
      expect(info.lease!.description).to.match(/host-a pid 777/);

      await store.put(k.lease, leaseBody(3600_000));
      expect((await imageInfo(store, k)).lease!.stale).to.equal(true);
    });

    it('lists the images under a prefix and skips what is not an image', async () => {
      await createImage(store, keys('vm1'), 16 * MiB, CS);
      await createImage(store, keys('vm10'), 32 * MiB, CS);
      await createImage(store, new ImageKeys('images/team/vm2/'), MiB, CS); // one level down
      await createImage(store, new ImageKeys('other/vm3/'), MiB, CS);
      await store.put('images/notes/readme.txt', pattern(1, 10)); // a folder without a manifest
      await store.put('images/loose-object', pattern(1, 10));
      const list = await listImages(store, 'images/');
      expect(list.map((i) => i.name)).to.deep.equal(['vm1', 'vm10']);
      expect(list.map((i) => i.manifest.size)).to.deep.equal([16 * MiB, 32 * MiB]);
      expect((await listImages(store, 'images/team/')).map((i) => i.name)).to.deep.equal(['vm2']);
      expect(await listImages(store, 'nothing/')).to.deep.equal([]);
    });

    it('rm removes every chunk, the lease and the manifest, and nothing of a neighbour', async () => {
      const k = keys('vm1');
      await createImage(store, k, 16 * MiB, CS);
      await createImage(store, keys('vm10'), 16 * MiB, CS);
      await store.put(keys('vm10').chunk(1), pattern(9, CS));
      for (const i of [0, 1, 7, 255]) await store.put(k.chunk(i), pattern(i, CS));
      await store.put(k.lease, leaseBody(3600_000)); // stale: its writer is gone
      expect(await removeImage(store, k, false)).to.equal(4);
      expect(await keysUnder(store, 'images/vm1/')).to.deep.equal([]);
      expect(await keysUnder(store, 'images/vm10/')).to.deep.equal(['images/vm10/chunks/0000000000000001', 'images/vm10/manifest.json']);
      const err = await rejects(removeImage(store, k, false));
      expect(errnoOf(err)).to.equal(ENOENT);
      expect(err.message).to.match(/no image/);
    });

    it('rm refuses while a writer holds a fresh lease (naming it), unless forced', async () => {
      const k = keys('vm1');
      await createImage(store, k, 16 * MiB, CS);
      await store.put(k.chunk(3), pattern(3, CS));
      await store.put(k.lease, leaseBody(1000));
      const err = await rejects(removeImage(store, k, false));
      expect(errnoOf(err)).to.equal(EBUSY);
      expect(err.message).to.match(/in use by host-a pid 777/);
      expect(await keysUnder(store, 'images/vm1/'), 'nothing removed').to.have.length(3);
      expect(await removeImage(store, k, true)).to.equal(1);
      expect(await keysUnder(store, 'images/vm1/')).to.deep.equal([]);
    });

    it('a manifest of an unknown version (or not a manifest at all) gives a clear error everywhere', async () => {
      const k = keys('future');
      const m = { ...newManifest(16 * MiB, CS), version: 2 };
      await store.put(k.manifest, encodeManifest(m as unknown as ImageManifest));
      const opts = {
        readOnly: true, force: false, cacheBytes: MiB, maxDirtyBytes: MiB, writethrough: false, uploadConcurrency: 1,
        fetchConcurrency: 1, readAheadChunks: 0, writebackDelayMs: 0, log: silentLogger,
      };
      for (const [what, run] of [
        ['readManifest', () => ObjectImage.readManifest(store, k)],
        ['open', () => ObjectImage.open(store, k, opts)],
        ['info', () => imageInfo(store, k)],
        ['export', () => exportImage(store, k, dir.file('out.raw'), 2)],
      ] as const) {
        const err = await rejects(run());
        expect(errnoOf(err), what).to.equal(EINVAL);
        expect(err.message, what).to.match(/image format version 2 is not supported \(this vhost-s3 reads version 1\)/);
        expect(err.message, what).to.include('images/future/manifest.json');
      }
      await store.put(k.manifest, new TextEncoder().encode('{"hello":'));
      expect((await rejects(ObjectImage.readManifest(store, k))).message).to.match(/manifest is not JSON/);
      await store.put(k.manifest, new TextEncoder().encode('{"format":"qcow2"}'));
      expect((await rejects(ObjectImage.readManifest(store, k))).message).to.match(/not a vhost-s3 image manifest/);
      await store.put(k.manifest, encodeManifest({ ...newManifest(16 * MiB, CS), chunkSize: 1000 }));
      expect((await rejects(ObjectImage.readManifest(store, k))).message).to.match(/chunk size must be a power of two/);
      const missing = await rejects(ObjectImage.readManifest(store, keys('nope')));
      expect(errnoOf(missing)).to.equal(ENOENT);
      expect(missing.message).to.match(/no image at .*images\/nope\/ \(no manifest\.json\)/);
    });

    it('import then export of a sparse raw file is byte-identical, uploads no all-zero chunk and writes a sparse file', async () => {
      const size = 8 * MiB + 5 * 512; // not a multiple of the chunk size: the last chunk is short
      const raw = makeRawFile(dir.file('in.raw'), size);
      const fh = await open(raw, 'r+');
      const put = async (off: number, b: Uint8Array): Promise<void> => void (await fh.write(b, 0, b.length, off));
      await put(0, pattern(1, 4 * KiB)); // chunk 0
      await put(3 * CS - 512, pattern(2, 1024)); // chunks 2 and 3
      await put(10 * CS + 7 * 512, pattern(3, 512)); // chunk 10
      await put(size - 512, pattern(4, 512)); // the short last chunk (128)
      await put(40 * CS, new Uint8Array(10 * CS)); // explicit (allocated) zeros: still not uploaded
      await fh.close();
      const original = readFileSync(raw);
      expect(original.length).to.equal(size);

      const k = keys('imported');
      const progress: number[] = [];
      const r = await importImage(raw, store, k, CS, 4, (done, total) => {
        expect(total).to.equal(size);
        progress.push(done);
      });
      expect(r.manifest.size).to.equal(size);
      expect(r.manifest.chunkSize).to.equal(CS);
      expect(r.chunksUploaded).to.equal(5);
      expect(Math.max(...progress)).to.equal(size);
      const chunkKeys = (await keysUnder(store, k.chunksPrefix)).map((x) => k.chunkIndex(x));
      expect(chunkKeys).to.deep.equal([0, 2, 3, 10, 128]);
      expect((await imageInfo(store, k)).chunksStored).to.equal(5);

      const out = dir.file('out.raw');
      const e = await exportImage(store, k, out, 4);
      expect(e.chunksWritten).to.equal(5);
      const exported = readFileSync(out);
      expect(exported.length).to.equal(size);
      expect(exported.equals(original), 'export equals the imported file').to.equal(true);
      // Sparse: no more blocks allocated than the five chunks that hold data.
      expect(statSync(out).blocks * 512).to.be.at.most(5 * CS);

      // Importing over an existing image is refused; nothing is overwritten.
      const again = await rejects(importImage(raw, store, k, CS, 4));
      expect(errnoOf(again)).to.equal(EEXIST);
      expect((await ObjectImage.readManifest(store, k)).uuid).to.equal(r.manifest.uuid);
    });

    it('import rounds a file that is not a whole number of sectors up to the next sector', async () => {
      const raw = dir.file('odd.raw');
      writeFileSync(raw, pattern(5, 1000));
      const k = keys('odd');
      const r = await importImage(raw, store, k, CS, 2);
      expect(r.manifest.size).to.equal(1024);
      const out = dir.file('odd.out');
      await exportImage(store, k, out, 2);
      const got = readFileSync(out);
      expect(got.length).to.equal(1024);
      expect(got.subarray(0, 1000).equals(Buffer.from(pattern(5, 1000)))).to.equal(true);
      expect(got.subarray(1000).every((b) => b === 0)).to.equal(true);
    });

    it('an interrupted import leaves no image: the manifest is written last', async () => {
      const raw = makeRawFile(dir.file('in.raw'), 2 * MiB, { offset: 0, bytes: pattern(1, 2 * MiB) });
      const k = keys('broken');
      let puts = 0;
      const failing = new Proxy(store, {
        get(target, prop, receiver) {
          if (prop === 'put') {
            return (key: string, body: Uint8Array) => (++puts === 5 ? Promise.reject(Object.assign(new Error('injected'), { code: 'EIO' })) : target.put(key, body));
          }
          return Reflect.get(target, prop, receiver) as unknown;
        },
      });
      await rejects(importImage(raw, failing, k, CS, 2));
      expect(await store.head(k.manifest)).to.equal(null);
      expect(errnoOf(await rejects(imageInfo(store, k)))).to.equal(ENOENT);
      const leftovers = await keysUnder(store, k.chunksPrefix);
      expect(leftovers.length, 'the chunks stored before the failure are still there').to.be.greaterThan(0);
      // A new image under that name must not show them: create and import refuse until rm cleans up.
      for (const [what, run] of [
        ['create', () => createImage(store, k, 2 * MiB, CS)],
        ['import', () => importImage(makeRawFile(dir.file('zeros.raw'), 2 * MiB), store, k, CS, 2)],
      ] as const) {
        const err = await rejects(run());
        expect(errnoOf(err), what).to.equal(EEXIST);
        expect(err.message, what).to.match(/left over.*image rm/);
      }
      expect(await removeImage(store, k, false)).to.equal(leftovers.length);
      await createImage(store, k, 2 * MiB, CS);
      expect(await keysUnder(store, k.chunksPrefix), 'the new image starts with no chunks').to.deep.equal([]);
    });
  });
}
