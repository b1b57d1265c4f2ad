// A verifying file system workload for the reliability tests, driven through our FUSE
// client (the guest's side of virtio-fs) against a `vhost-s3 fs` child: files created and
// written with known patterns, existing files overwritten in the middle (read-modify-write
// of the stored object), fsync, reads back, lookups and listings. A model holds what the
// client was told is written; after every successful fsync the object is read straight
// from the store and compared. Every request must succeed or fail with EIO: ENOENT for a
// file that exists, a partial listing or a short read would be a wrong success.
import { expect } from 'chai';
import type { ObjectStore } from '../../src/backends/object-store.js';
import type { FuseClient } from '../../src/frontend/fuse-client.js';
import { O_CREAT, O_RDONLY, O_RDWR } from '../../src/fuse/abi.js';
import { ErrnoError } from '../../src/util/errors.js';
import { patternBytes } from '../support/tmp.js';
import type { Rng } from './blk-workload.js';

export const ROOT = 1;
/** Largest request the workload sends (the client is connected with maxIo ≥ this). */
export const FS_MAX_IO = 128 * 1024;

export interface FsTally {
  opsOk: number;
  /** Requests answered EIO. */
  opsFailed: number;
  fsyncsOk: number;
  fsyncsFailed: number;
  /** Bytes compared with the model: read back through the gateway and read straight from the store. */
  bytesVerified: number;
}

export function newFsTally(): FsTally {
  return { opsOk: 0, opsFailed: 0, fsyncsOk: 0, fsyncsFailed: 0, bytesVerified: 0 };
}

export class FsModel {
  /** Name (in the root directory) → the content the client was told is written. */
  readonly files = new Map<string, Uint8Array>();
  /** Files whose last fsync failed (or that were never synced): stored by a later fsync. */
  readonly unsynced = new Set<string>();
  /** Files a write to failed (EIO): their content is not known, only that they exist. */
  readonly unknown = new Set<string>();
  /** Names an unlink or rename that failed (EIO) may or may not have removed or made, with the content they have if they exist. */
  readonly maybe = new Map<string, Uint8Array>();
  /** Name → the content last seen in the store (the same array as in `files` when nothing changed since). */
  readonly verified = new Map<string, Uint8Array>();
  /** Files with known content. */
  known(): string[] {
    return [...this.files.keys()].filter((n) => !this.unknown.has(n));
  }
  /** Files with known content, stored as they are, not big (candidates for unlink and rename: a rename copies the object). */
  settled(): string[] {
    return this.known().filter((n) => !this.unsynced.has(n) && this.files.get(n)!.length < BIG_FILE);
  }
}

export interface FsWorkload {
  readonly client: FuseClient;
  readonly model: FsModel;
  readonly rng: Rng;
  readonly tally: FsTally;
  /** The store as the gateway sees it, read directly (not through the proxy), and the key prefix of the root. */
  readonly store: ObjectStore;
  readonly prefix: string;
}

/** Runs `op`; true when it succeeded, false when it failed with EIO; any other outcome fails the test. */
async function attempt(w: FsWorkload, what: string, op: () => Promise<void>): Promise<boolean> {
  try {
    await op();
    w.tally.opsOk++;
    return true;
  } catch (err) {
    if (!(err instanceof ErrnoError)) throw err;
    expect(err.code, `${what}: ${err.message}`).to.equal('EIO');
    w.tally.opsFailed++;
    return false;
  }
}

function errCode(err: unknown): string {
  if (err instanceof ErrnoError) return err.code;
  throw err;
}

/** Reads the object straight from the store and compares it with the model. Returns bytes compared. */
export async function verifyStoredFile(w: FsWorkload, name: string): Promise<number> {
  const want = w.model.files.get(name)!;
  const got = (await w.store.get(w.prefix + name)).body;
  expect(got.length, `${name} in the store: size`).to.equal(want.length);
  expect(Buffer.from(got).equals(Buffer.from(want)), `${name} in the store: content`).to.equal(true);
  w.model.verified.set(name, want);
  return want.length;
}

let seed = 1000;

/** Over the fs gateway's multipart threshold (32 MiB). */
export const BIG_FILE = 33 * 1024 * 1024 + 4321;

export async function writeAll(w: FsWorkload, nodeid: number, fh: number, offset: number, data: Uint8Array): Promise<void> {
  for (let p = 0; p < data.length; p += FS_MAX_IO) {
    const piece = data.subarray(p, Math.min(p + FS_MAX_IO, data.length));
    const n = await w.client.write(nodeid, fh, offset + p, piece);
    expect(n, 'bytes written').to.equal(piece.length);
  }
}

/** fsync; on success the object must be in the store as the model says, right away. */
async function syncAndCheck(w: FsWorkload, name: string, nodeid: number, fh: number): Promise<void> {
  try {
    await w.client.fsync(nodeid, fh);
  } catch (err) {
    expect(errCode(err), `fsync ${name}`).to.equal('EIO');
    w.tally.fsyncsFailed++;
    w.model.unsynced.add(name);
    return;
  }
  w.tally.fsyncsOk++;
  w.model.unsynced.delete(name);
  if (!w.model.unknown.has(name)) w.tally.bytesVerified += await verifyStoredFile(w, name);
}

/**
 * One round: `creates` new files written and fsync'ed (the first one a multipart upload
 * when `bigFile`), one existing file overwritten in the middle and fsync'ed, `reads`
 * existing files read back, one listing of the root.
 */
export async function fsRound(w: FsWorkload, label: string, creates = 2, reads = 2, bigFile = false): Promise<void> {
  const { client, model, rng } = w;
  const existing = model.known();
  for (let k = 0; k < creates; k++) {
    const name = `${label}-${k}`;
    // The big file is over the gateway's multipart threshold (32 MiB): stored part by part.
    const size = bigFile && k === 0 ? BIG_FILE : rng.int(1, 400) * 1024 + rng.int(0, 1024);
    const data = patternBytes(seed++, size);
    let created: { nodeid: number; fh: number } | null = null;
    await attempt(w, `create ${name}`, async () => {
      const c = await client.create(ROOT, name, O_RDWR | O_CREAT, 0o644);
      created = { nodeid: c.entry.nodeid, fh: c.fh };
    });
    if (!created) continue;
    const { nodeid, fh } = created;
    // A create is not stored before its first flush: the file now exists (empty) for the client.
    model.files.set(name, new Uint8Array(0));
    model.unsynced.add(name);
    if (await attempt(w, `write ${name}`, () => writeAll(w, nodeid, fh, 0, data))) model.files.set(name, data);
    else model.unknown.add(name);
    await syncAndCheck(w, name, nodeid, fh);
    await client.release(nodeid, fh);
  }
  if (existing.length > 0) {
    const name = existing[rng.int(0, existing.length)]!;
    const old = model.files.get(name)!;
    const off = rng.int(0, old.length + 1);
    const patch = patternBytes(seed++, rng.int(1, 64) * 1024);
    let opened: { nodeid: number; fh: number } | null = null;
    await attempt(w, `lookup+open ${name}`, async () => {
      const e = await client.lookup(ROOT, name);
      opened = { nodeid: e.nodeid, fh: (await client.open(e.nodeid, O_RDWR)).fh };
    });
    if (opened) {
      const { nodeid, fh } = opened;
      if (await attempt(w, `overwrite ${name}`, () => writeAll(w, nodeid, fh, off, patch))) {
        const next = new Uint8Array(Math.max(old.length, off + patch.length));
        next.set(old);
        next.set(patch, off);
        model.files.set(name, next);
        model.unsynced.add(name);
      } else model.unknown.add(name);
      // The overwrite needs the stored bytes around it (read-modify-write) when it is stored.
      await syncAndCheck(w, name, nodeid, fh);
      await client.release(nodeid, fh);
    }
  }
  for (let k = 0; k < reads && existing.length > 0; k++) {
    const name = existing[rng.int(0, existing.length)]!;
    await attempt(w, `read ${name}`, () => readBack(w, name));
  }
  // Unlink and rename (a copy and a delete in the store): answered OK, the store must show
  // it at once; answered EIO, the names involved may or may not exist, with their old content.
  const settled = model.settled();
  if (settled.length >= 4) {
    const name = settled[rng.int(0, settled.length)]!;
    const data = model.files.get(name)!;
    model.files.delete(name);
    if (await attempt(w, `unlink ${name}`, () => client.unlink(ROOT, name))) {
      expect(await w.store.head(w.prefix + name), `${name} unlinked: gone from the store`).to.equal(null);
    } else model.maybe.set(name, data);
  }
  const movable = model.settled();
  if (movable.length >= 4) {
    const name = movable[rng.int(0, movable.length)]!;
    const to = `${label}-mv`;
    const data = model.files.get(name)!;
    model.files.delete(name);
    if (await attempt(w, `rename ${name} ${to}`, () => client.rename(ROOT, name, ROOT, to))) {
      model.files.set(to, data);
      expect(await w.store.head(w.prefix + name), `${name} renamed: gone from the store`).to.equal(null);
      w.tally.bytesVerified += await verifyStoredFile(w, to);
    } else {
      model.maybe.set(name, data);
      model.maybe.set(to, data);
    }
  }
  await attempt(w, 'list /', async () => {
    const names = (await client.listdir(ROOT)).map((d) => d.name).filter((n) => n !== '.' && n !== '..');
    const missing = [...model.files.keys()].filter((n) => !names.includes(n));
    const extra = names.filter((n) => !model.files.has(n) && !model.maybe.has(n));
    expect({ missing, extra }, 'a listing is complete or an error').to.deep.equal({ missing: [], extra: [] });
  });
}

/** Reads a file through the gateway (lookup, open, read, release) and compares it with the model. */
export async function readBack(w: FsWorkload, name: string): Promise<void> {
  const { client } = w;
  const e = await client.lookup(ROOT, name);
  const want = w.model.files.get(name)!;
  expect(e.attr.size, `size of ${name}`).to.equal(want.length);
  const { fh } = await client.open(e.nodeid, O_RDONLY);
  try {
    for (let p = 0; p < want.length; p += FS_MAX_IO) {
      const got = await client.read(e.nodeid, fh, p, FS_MAX_IO);
      const exp = want.subarray(p, Math.min(p + FS_MAX_IO, want.length));
      expect(got.length, `read of ${name} at ${p}`).to.equal(exp.length);
      expect(Buffer.from(got).equals(Buffer.from(exp)), `read of ${name} at ${p}`).to.equal(true);
      w.tally.bytesVerified += got.length;
    }
  } finally {
    await client.release(e.nodeid, fh);
  }
}

/** Without faults: every file whose fsync failed is fsync'ed again (must succeed), then every file is compared in the store. */
export async function settleAndVerify(w: FsWorkload): Promise<void> {
  for (const name of [...w.model.unsynced]) {
    const e = await w.client.lookup(ROOT, name);
    const { fh } = await w.client.open(e.nodeid, O_RDWR);
    await w.client.fsync(e.nodeid, fh);
    await w.client.release(e.nodeid, fh);
    w.model.unsynced.delete(name);
  }
  for (const [name, data] of [...w.model.maybe]) {
    w.model.maybe.delete(name);
    const e = await w.client.lookup(ROOT, name).catch((err: unknown) => {
      if (errCode(err) === 'ENOENT') return null;
      throw err;
    });
    if (e) w.model.files.set(name, data);
  }
  for (const name of w.model.known()) {
    // Unchanged since it was last compared in the store: not read again (big files are 33 MiB).
    if (w.model.verified.get(name) !== w.model.files.get(name)) w.tally.bytesVerified += await verifyStoredFile(w, name);
  }
}
