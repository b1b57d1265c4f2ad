// Offline operations on object-backed images: create, info, list, remove, import from a
// raw file and export to one. All-zero chunks are never uploaded and missing chunks are
// never written, so both directions keep images sparse.
import { open, stat } from 'node:fs/promises';
import PQueue from 'p-queue';
import { listAll, listKeys, type ObjectStore } from '../backends/object-store.js';
import { ErrnoError, errnoOf } from '../util/errors.js';
import { ImageKeys, encodeManifest, newManifest, type ImageManifest } from './image-format.js';
import { ObjectImage } from './object-image.js';
import { describeHolder, isStale, type LeaseRecord } from './image-lease.js';

export type Progress = (done: number, total: number) => void;

export interface ImageInfo {
  readonly manifest: ImageManifest;
  readonly chunksStored: number;
  readonly bytesStored: number;
  readonly lease: (LeaseRecord & { readonly stale: boolean; readonly description: string }) | null;
}

async function writeManifest(store: ObjectStore, keys: ImageKeys, m: ImageManifest): Promise<void> {
  try {
    await store.put(keys.manifest, encodeManifest(m), store.capabilities.conditionalWrites ? { ifNoneMatch: '*' } : {});
  } catch (err) {
    if (errnoOf(err) === 17) throw new ErrnoError('EEXIST', `an image already exists at ${store.description}/${keys.prefix}`);
    throw err;
  }
  // The manifest comes last (after an import's chunks): once it is there, all of it is durable.
  await store.sync();
}

/**
 * A new image must start empty: refused where a manifest exists, and where chunks are left
 * over without one (an interrupted import or removal), which would show through as data.
 */
async function refuseExisting(store: ObjectStore, keys: ImageKeys): Promise<void> {
  if (await store.head(keys.manifest)) throw new ErrnoError('EEXIST', `an image already exists at ${store.description}/${keys.prefix}`);
  const page = await store.list({ prefix: keys.chunksPrefix, maxKeys: 1 });
  if (page.objects.length > 0) {
    throw new ErrnoError('EEXIST', `chunks are left over at ${store.description}/${keys.chunksPrefix} (an interrupted import or removal); remove them first with vhost-s3 image rm`);
  }
}

export async function createImage(store: ObjectStore, keys: ImageKeys, size: number, chunkSize: number): Promise<ImageManifest> {
  const m = newManifest(size, chunkSize);
  await refuseExisting(store, keys);
  await writeManifest(store, keys, m);
  return m;
}

async function readLease(store: ObjectStore, keys: ImageKeys): Promise<LeaseRecord | null> {
  try {
    return JSON.parse(new TextDecoder().decode((await store.get(keys.lease)).body)) as LeaseRecord;
  } catch (err) {
    if (errnoOf(err) === 2) return null;
    if (err instanceof SyntaxError) return null;
    throw err;
  }
}

export async function imageInfo(store: ObjectStore, keys: ImageKeys): Promise<ImageInfo> {
  const manifest = await ObjectImage.readManifest(store, keys);
  let chunksStored = 0;
  let bytesStored = 0;
  for await (const e of listAll(store, { prefix: keys.chunksPrefix })) {
    if (e.type === 'object' && keys.chunkIndex(e.key) >= 0) {
      chunksStored++;
      bytesStored += e.size;
    }
  }
  const lease = await readLease(store, keys);
  return {
    manifest, chunksStored, bytesStored,
    lease: lease ? { ...lease, stale: isStale(lease), description: describeHolder(lease) } : null,
  };
}

/** Images directly under `prefix` (each a "directory" holding a manifest.json). */
export async function listImages(store: ObjectStore, prefix: string): Promise<{ name: string; manifest: ImageManifest }[]> {
  const out: { name: string; manifest: ImageManifest }[] = [];
  for await (const e of listAll(store, { prefix, delimiter: '/' })) {
    if (e.type !== 'prefix') continue;
    try {
      out.push({ name: e.prefix.slice(prefix.length).replace(/\/$/, ''), manifest: await ObjectImage.readManifest(store, new ImageKeys(e.prefix)) });
    } catch (err) {
      if (errnoOf(err) !== 2 && errnoOf(err) !== 22) throw err; // not an image: skip
    }
  }
  return out;
}

/**
 * Removes an image: chunks first, then the lease, then the manifest, so that an
 * interrupted removal can simply be run again. Refused while a writer holds a fresh lease.
 */
export async function removeImage(store: ObjectStore, keys: ImageKeys, force: boolean): Promise<number> {
  const hasManifest = (await store.head(keys.manifest)) !== null;
  const lease = await readLease(store, keys);
  if (lease && !isStale(lease) && !force) {
    throw new ErrnoError('EBUSY', `image is in use by ${describeHolder(lease)}; stop it first (or --force)`);
  }
  const chunks: string[] = [];
  for await (const k of listKeys(store, keys.chunksPrefix)) chunks.push(k);
  if (!hasManifest && chunks.length === 0) throw new ErrnoError('ENOENT', `no image at ${store.description}/${keys.prefix}`);
  await store.deleteMany(chunks);
  await store.delete(keys.lease);
  await store.delete(keys.manifest);
  return chunks.length;
}

/** At most `concurrency` tasks at once; the first failure stops new work and is rethrown by finish(). */
class BoundedWork {
  private readonly queue: PQueue;
  private failure: unknown = null;
  constructor(private readonly concurrency: number) {
    this.queue = new PQueue({ concurrency });
  }
  get failed(): boolean {
    return this.failure !== null;
  }
  room(): Promise<void> {
    return this.queue.onSizeLessThan(this.concurrency);
  }
  add(task: () => Promise<void>): void {
    this.queue.add(task).catch((err: unknown) => {
      this.failure ??= err;
    });
  }
  async finish(): Promise<void> {
    await this.queue.onIdle();
    if (this.failure !== null) throw this.failure;
  }
}

function isZero(buf: Uint8Array): boolean {
  const words = new BigUint64Array(buf.buffer, buf.byteOffset, buf.byteLength >>> 3);
  for (let i = 0; i < words.length; i++) if (words[i] !== 0n) return false;
  for (let i = words.length * 8; i < buf.byteLength; i++) if (buf[i] !== 0) return false;
  return true;
}

/** Imports a raw file (its size rounded up to a sector). Returns the chunks uploaded. */
export async function importImage(
  path: string, store: ObjectStore, keys: ImageKeys, chunkSize: number, concurrency: number, progress?: Progress,
): Promise<{ manifest: ImageManifest; chunksUploaded: number }> {
  const st = await stat(path);
  if (!st.isFile()) throw new ErrnoError('EINVAL', `${path} is not a regular file`);
  const size = Math.max(512, Math.ceil(st.size / 512) * 512);
  const manifest = newManifest(size, chunkSize);
  await refuseExisting(store, keys);
  const fh = await open(path, 'r');
  const queue = new BoundedWork(concurrency);
  let uploaded = 0;
  let done = 0;
  try {
    const count = Math.ceil(size / chunkSize);
    for (let i = 0; i < count && !queue.failed; i++) {
      // Bounded memory: at most `concurrency` chunks read ahead of the uploads.
      await queue.room();
      const buf = new Uint8Array(chunkSize);
      const { bytesRead } = await fh.read(buf, 0, chunkSize, i * chunkSize);
      queue.add(async () => {
        if (!isZero(buf.subarray(0, bytesRead))) {
          await store.put(keys.chunk(i), buf);
          uploaded++;
        }
        done += Math.min(chunkSize, size - i * chunkSize);
        progress?.(done, size);
      });
    }
    await queue.finish();
  } finally {
    await fh.close();
  }
  // The manifest goes last: an interrupted import leaves no image that looks complete.
  await writeManifest(store, keys, manifest);
  return { manifest, chunksUploaded: uploaded };
}

/** Exports an image to a sparse raw file of the image's size. Returns the chunks written. */
export async function exportImage(
  store: ObjectStore, keys: ImageKeys, path: string, concurrency: number, progress?: Progress,
): Promise<{ manifest: ImageManifest; chunksWritten: number }> {
  const manifest = await ObjectImage.readManifest(store, keys);
  const chunkCount = Math.ceil(manifest.size / manifest.chunkSize);
  const indexes: number[] = [];
  for await (const k of listKeys(store, keys.chunksPrefix)) {
    const i = keys.chunkIndex(k);
    if (i >= 0 && i < chunkCount) indexes.push(i);
  }
  const fh = await open(path, 'w');
  const queue = new BoundedWork(concurrency);
  let written = 0;
  try {
    await fh.truncate(manifest.size);
    for (const i of indexes) {
      if (queue.failed) break;
      await queue.room();
      queue.add(async () => {
        const { body } = await store.get(keys.chunk(i));
        const length = Math.min(body.byteLength, manifest.size - i * manifest.chunkSize);
        if (!isZero(body.subarray(0, length))) await fh.write(body, 0, length, i * manifest.chunkSize);
        written++;
        progress?.(written, indexes.length);
      });
    }
    await queue.finish();
    await fh.sync();
  } finally {
    await fh.close();
  }
  return { manifest, chunksWritten: written };
}
