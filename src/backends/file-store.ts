// A local directory as an object store (`file:/path/store`), the embedded default.
//
// Layout (see file-keys.ts for the key ↔ path mapping):
//   <root>/d<seg>/…/o<seg>     one file per object: a 4 KiB header, then the bytes
//   <root>/…/t<random>         a write in progress (ignored by listings and reads)
//   <root>/u<uploadId>/        a multipart upload: info.json and p<number>-<etag> parts
//
// Object file: bytes 0..4095 are the header — magic "VHS3OBJ1", u32le JSON length, JSON
// {etag, lastModified (ms), contentType?, metadata} — and the object's bytes start at
// offset 4096 (HEADER_SIZE, page aligned, so the blk layer may read chunk files directly at
// HEADER_SIZE + offset). The metadata lives in the object file rather than a sidecar so
// that bytes and metadata change together with ONE rename: with a sidecar, a crash between
// the two renames pairs new bytes with old metadata.
//
// Writes: temp file in the destination directory, write, fsync, then rename (or link for
// If-None-Match, which fails atomically with EEXIST), then fsync the directory (and the
// parents of directories just created). A crash leaves either the old object or the new
// one, plus at worst a stray 't…' file that nothing reads (`removeStaleTemps` sweeps them).
//
// Conditional writes: If-None-Match is atomic across processes (link(2)); If-Match is a
// check-then-rename, atomic among writers in this process (per-key lock) but not against
// another process writing the same store — one gateway process owns a store directory.
import { randomBytes } from 'node:crypto';
import { constants as fsc } from 'node:fs';
import { constants as osc } from 'node:os';
import { copyFile, link, mkdir, open, readdir, rename, rm, rmdir, stat, unlink, type FileHandle } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { errnoOf } from '../util/errors.js';
import { listPage, isAfter, type ListPosition, type SeekSource } from './listing.js';
import { classifyName, keyToPath, OBJECT_TAG, TEMP_TAG, UPLOAD_TAG } from './file-keys.js';
import {
  DELETE_BATCH,
  MAX_PART_SIZE,
  MAX_PARTS,
  MIN_PART_SIZE,
  StoreError,
  compareKeys,
  newEtag,
  normalizeMetadata,
  requireConditional,
  validateKey,
  validatePartList,
  validatePartNumber,
  validateRange,
  type ByteRange,
  type CompleteOptions,
  type CompletedPart,
  type CopyOptions,
  type GetResult,
  type ListOptions,
  type ListPage,
  type Metadata,
  type MultipartOptions,
  type ObjectHead,
  type ObjectInfo,
  type ObjectStore,
  type PutBody,
  type PutOptions,
  type PutResult,
  type ReadIntoResult,
  type StoreCapabilities,
} from './object-store.js';

export const HEADER_SIZE = 4096;
const MAGIC = Buffer.from('VHS3OBJ1', 'latin1');
const COPY_CHUNK = 8 * 1024 * 1024;
const errno = osc.errno;

interface Header {
  readonly etag: string;
  readonly lastModified: number;
  readonly contentType?: string;
  readonly metadata: Metadata;
}

export interface FileStoreOptions {
  /** Create the root directory if it does not exist (default false: a missing root is ENOENT, like a missing bucket). */
  readonly create?: boolean;
  /** Skip fsync (tests only: durability is then not guaranteed). Default false. */
  readonly noSync?: boolean;
  /** Default 5 MiB as S3; tests of the layers above may lower it. */
  readonly minPartSize?: number;
}

export class FileStore implements ObjectStore {
  readonly kind = 'file' as const;
  readonly description: string;
  readonly capabilities: StoreCapabilities;
  readonly root: string;
  private readonly sync: boolean;
  private readonly locks = new Map<string, Promise<unknown>>();

  constructor(root: string, opts: FileStoreOptions = {}) {
    this.root = resolve(root);
    this.description = `file:${this.root}`;
    this.sync = !opts.noSync;
    this.capabilities = { conditionalWrites: true, minPartSize: opts.minPartSize ?? MIN_PART_SIZE, maxPartSize: MAX_PART_SIZE, maxParts: MAX_PARTS };
  }

  /** Checks (or with `create`, makes) the root directory. */
  static async open(root: string, opts: FileStoreOptions = {}): Promise<FileStore> {
    const store = new FileStore(root, opts);
    if (opts.create) await mkdir(store.root, { recursive: true });
    let st;
    try {
      st = await stat(store.root);
    } catch (err) {
      throw store.fsError(err, 'open', undefined);
    }
    if (!st.isDirectory()) throw new StoreError('ENOTDIR', `${store.description} is not a directory`, { op: 'open', missingContainer: true });
    return store;
  }

  /** The file holding `key` (its bytes start at HEADER_SIZE). */
  pathOf(key: string): string {
    validateKey(key);
    const p = keyToPath(key);
    return join(this.root, ...p.dirs, p.file);
  }

  // ---- reads

  async get(key: string, opts: { readonly range?: ByteRange } = {}): Promise<GetResult> {
    const path = this.pathOf(key);
    const fh = await this.openObject(path, key, 'get');
    try {
      const { head, size } = await readHead(fh, key, path);
      let offset = 0;
      let length = size;
      if (opts.range) {
        validateRange(opts.range.offset, opts.range.length);
        offset = Math.min(opts.range.offset, size);
        length = Math.min(opts.range.length, size - offset);
      }
      const body = new Uint8Array(length);
      const n = await readFully(fh, body, HEADER_SIZE + offset);
      return { ...head, body: n === length ? body : body.subarray(0, n) };
    } finally {
      await fh.close();
    }
  }

  async getInto(key: string, offset: number, target: Uint8Array): Promise<ReadIntoResult> {
    validateRange(offset, target.length);
    const path = this.pathOf(key);
    const fh = await this.openObject(path, key, 'get');
    try {
      const { head, size } = await readHead(fh, key, path);
      const want = Math.max(0, Math.min(target.length, size - offset));
      const n = want === 0 ? 0 : await readFully(fh, target.subarray(0, want), HEADER_SIZE + offset);
      return { ...head, bytesRead: n };
    } finally {
      await fh.close();
    }
  }

  async head(key: string): Promise<ObjectHead | null> {
    const path = this.pathOf(key);
    let fh: FileHandle;
    try {
      fh = await this.openObject(path, key, 'head');
    } catch (err) {
      if (err instanceof StoreError && err.code === 'ENOENT' && !err.missingContainer) return null;
      throw err;
    }
    try {
      return (await readHead(fh, key, path)).head;
    } finally {
      await fh.close();
    }
  }

  async list(opts: ListOptions = {}): Promise<ListPage> {
    return listPage(new TreeSeeker(this), opts);
  }

  // ---- writes

  async put(key: string, body: PutBody, opts: PutOptions = {}): Promise<PutResult> {
    const path = this.pathOf(key);
    const metadata = normalizeMetadata(opts.metadata);
    requireConditional(this, 'put', key, opts);
    const header: Header = { etag: newEtag(), lastModified: Date.now(), metadata, ...(opts.contentType !== undefined ? { contentType: opts.contentType } : {}) };
    return this.withLock(key, () =>
      this.commit(key, path, 'put', opts, async (fh) => {
        await writeAll(fh, encodeHeader(header, key), 0);
        if (body instanceof Uint8Array) await writeAll(fh, body, HEADER_SIZE);
        else await copyInto(body.path, fh, HEADER_SIZE);
        return header.etag;
      }),
    );
  }

  async copy(src: string, dst: string, opts: CopyOptions = {}): Promise<PutResult> {
    const srcPath = this.pathOf(src);
    const dstPath = this.pathOf(dst);
    const replace = opts.metadata !== undefined;
    const metadata = replace ? normalizeMetadata(opts.metadata, 'copy') : undefined;
    return this.withLock(dst, () =>
      this.commit(dst, dstPath, 'copy', {}, async (fh, tmp) => {
        // Copy the whole file (header included; reflink where the file system can), then
        // rewrite the header from the copy itself so header and bytes are the same version.
        await fh.close();
        try {
          await copyFile(srcPath, tmp, fsc.COPYFILE_FICLONE);
        } catch (err) {
          throw this.fsError(err, 'copy', src);
        }
        const copyFh = await open(tmp, 'r+');
        try {
          const { head } = await readHead(copyFh, src, srcPath);
          const header: Header = {
            etag: newEtag(),
            lastModified: Date.now(),
            metadata: metadata ?? head.metadata,
            ...((replace && opts.contentType !== undefined ? opts.contentType : head.contentType) !== undefined
              ? { contentType: replace && opts.contentType !== undefined ? opts.contentType : head.contentType }
              : {}),
          };
          await writeAll(copyFh, encodeHeader(header, dst), 0);
          if (this.sync) await copyFh.sync();
          return header.etag;
        } finally {
          await copyFh.close();
        }
      }, { closesHandle: true }),
    );
  }

  async delete(key: string): Promise<void> {
    const path = this.pathOf(key);
    await this.withLock(key, async () => {
      try {
        await unlink(path);
      } catch (err) {
        if (errnoOf(err) === errno.ENOENT) {
          await this.checkRoot('delete', key);
          return;
        }
        throw this.fsError(err, 'delete', key);
      }
      await this.syncDir(dirname(path));
      await this.pruneDirs(dirname(path));
    });
  }

  async deleteMany(keys: readonly string[]): Promise<void> {
    for (const k of keys) validateKey(k, 'deleteMany');
    const failed: string[] = [];
    let first: unknown;
    for (let i = 0; i < keys.length; i += DELETE_BATCH) {
      const batch = keys.slice(i, i + DELETE_BATCH);
      // A few at a time: enough to overlap the fsyncs, bounded so a huge list does not open thousands of files.
      for (let j = 0; j < batch.length; j += 16) {
        await Promise.all(
          batch.slice(j, j + 16).map((k) =>
            this.delete(k).catch((err: unknown) => {
              failed.push(k);
              first ??= err;
            }),
          ),
        );
      }
    }
    if (failed.length > 0) {
      const e = first instanceof StoreError ? first : this.fsError(first, 'deleteMany', failed[0]);
      throw new StoreError(e.code, `deleteMany: ${failed.length} of ${keys.length} keys failed: ${e.message}`, { op: 'deleteMany', failedKeys: failed, missingContainer: e.missingContainer });
    }
  }

  // ---- multipart

  async createMultipart(key: string, opts: MultipartOptions = {}): Promise<string> {
    validateKey(key, 'createMultipart');
    keyToPath(key);
    const metadata = normalizeMetadata(opts.metadata, 'createMultipart');
    await this.checkRoot('createMultipart', key);
    const id = randomBytes(16).toString('hex');
    const dir = join(this.root, UPLOAD_TAG + id);
    await mkdir(dir);
    await writeFileSynced(join(dir, 'info.json'), Buffer.from(JSON.stringify({ key, metadata, contentType: opts.contentType })), this.sync);
    return id;
  }

  async uploadPart(key: string, uploadId: string, partNumber: number, body: Uint8Array): Promise<string> {
    validatePartNumber(partNumber);
    const dir = await this.uploadDir(key, uploadId, 'uploadPart');
    if (body.length > this.capabilities.maxPartSize) throw new StoreError('EFBIG', 'uploadPart: part too large', { op: 'uploadPart', key });
    const etag = newEtag();
    const name = partName(partNumber, etag);
    await writeFileSynced(join(dir, name), body, this.sync);
    // A re-uploaded part replaces the earlier one.
    const prefix = `p${partNumber}-`;
    for (const n of await readdir(dir)) if (n.startsWith(prefix) && n !== name && !n.startsWith(TEMP_TAG)) await unlink(join(dir, n)).catch(() => undefined);
    return etag;
  }

  async completeMultipart(key: string, uploadId: string, parts: readonly CompletedPart[], opts: CompleteOptions = {}): Promise<PutResult> {
    const dir = await this.uploadDir(key, uploadId, 'completeMultipart');
    validatePartList(parts);
    requireConditional(this, 'completeMultipart', key, opts);
    const info = JSON.parse((await readSmall(join(dir, 'info.json'))).toString('utf8')) as { metadata: Metadata; contentType?: string };
    const files: { path: string; size: number }[] = [];
    for (const [i, p] of parts.entries()) {
      const path = join(dir, partName(p.partNumber, p.etag));
      let size: number;
      try {
        size = (await stat(path)).size;
      } catch {
        throw new StoreError('EINVAL', `completeMultipart: part ${p.partNumber} not uploaded or ETag mismatch`, { op: 'completeMultipart', key, storeCode: 'InvalidPart' });
      }
      if (i < parts.length - 1 && size < this.capabilities.minPartSize)
        throw new StoreError('EINVAL', `completeMultipart: part ${p.partNumber} smaller than ${this.capabilities.minPartSize} bytes`, { op: 'completeMultipart', key, storeCode: 'EntityTooSmall' });
      files.push({ path, size });
    }
    const header: Header = { etag: newEtag(), lastModified: Date.now(), metadata: info.metadata, ...(info.contentType !== undefined ? { contentType: info.contentType } : {}) };
    const path = this.pathOf(key);
    const result = await this.withLock(key, () =>
      this.commit(key, path, 'completeMultipart', opts, async (fh) => {
        await writeAll(fh, encodeHeader(header, key), 0);
        let pos = HEADER_SIZE;
        for (const f of files) {
          await copyInto(f.path, fh, pos);
          pos += f.size;
        }
        return header.etag;
      }),
    );
    await rm(dir, { recursive: true, force: true });
    return result;
  }

  async abortMultipart(key: string, uploadId: string): Promise<void> {
    const dir = await this.uploadDir(key, uploadId, 'abortMultipart');
    await rm(dir, { recursive: true, force: true });
  }

  async close(): Promise<void> {}

  /** Removes temporary files (from crashed writers) older than `olderThanMs`. Returns how many. */
  async removeStaleTemps(olderThanMs = 3600_000): Promise<number> {
    const cutoff = Date.now() - olderThanMs;
    let removed = 0;
    const walk = async (dir: string): Promise<void> => {
      let names: string[];
      try {
        names = await readdir(dir);
      } catch {
        return;
      }
      for (const n of names) {
        const p = join(dir, n);
        const c = classifyName(n);
        if (c?.isDir) await walk(p);
        else if (n.startsWith(TEMP_TAG)) {
          const st = await stat(p).catch(() => null);
          if (st && st.mtimeMs < cutoff && (await unlink(p).then(() => true, () => false))) removed++;
        }
      }
    };
    await walk(this.root);
    return removed;
  }

  // ---- internals

  /**
   * Writes a new version of `key` into a temp file with `fill`, syncs it and makes it the
   * object (rename, or link for If-None-Match), then syncs the directory.
   */
  private async commit(
    key: string,
    path: string,
    op: string,
    cond: { ifNoneMatch?: string; ifMatch?: string },
    fill: (fh: FileHandle, tmp: string) => Promise<string>,
    flags: { closesHandle?: boolean } = {},
  ): Promise<PutResult> {
    const dir = dirname(path);
    const { fh, tmp } = await this.createTemp(dir, op, key);
    let committed = false;
    try {
      let etag: string;
      try {
        etag = await fill(fh, tmp);
        if (!flags.closesHandle && this.sync) await fh.sync();
      } finally {
        if (!flags.closesHandle) await fh.close();
      }
      if (cond.ifNoneMatch === '*') {
        const exists = (): StoreError => new StoreError('EEXIST', `${op}: ${key} exists`, { op, key, storeCode: 'PreconditionFailed', httpStatus: 412 });
        try {
          // link(2) fails with EEXIST atomically, even against other processes.
          await link(tmp, path);
          await unlink(tmp);
        } catch (err) {
          const e = errnoOf(err);
          if (e === errno.EEXIST) throw exists();
          if (e !== errno.EPERM && e !== errno.ENOTSUP && e !== errno.EOPNOTSUPP && e !== errno.EMLINK) throw this.fsError(err, op, key);
          // No hard links on this file system: check and rename, atomic within this process (per-key lock).
          if ((await this.head(key)) !== null) throw exists();
          await rename(tmp, path);
        }
      } else {
        if (cond.ifMatch !== undefined) {
          const cur = await this.head(key);
          if (cur === null) throw new StoreError('ENOENT', `${op}: no such key: ${key}`, { op, key, storeCode: 'NoSuchKey' });
          if (cur.etag !== cond.ifMatch) throw new StoreError('ESTALE', `${op}: ${key} changed (ETag ${cur.etag})`, { op, key, storeCode: 'PreconditionFailed', httpStatus: 412 });
        }
        await rename(tmp, path);
      }
      committed = true;
      await this.syncDir(dir);
      return { etag };
    } catch (err) {
      if (!committed) await unlink(tmp).catch(() => undefined);
      throw err instanceof StoreError ? err : this.fsError(err, op, key);
    }
  }

  /** Opens a fresh temp file in `dir`, creating the directories (and syncing their parents). */
  private async createTemp(dir: string, op: string, key: string): Promise<{ fh: FileHandle; tmp: string }> {
    for (let attempt = 0; ; attempt++) {
      if (dir !== this.root) {
        await this.checkRoot(op, key);
        let first: string | undefined;
        try {
          first = await mkdir(dir, { recursive: true });
        } catch (err) {
          throw this.fsError(err, op, key);
        }
        if (first !== undefined && this.sync) {
          // Make the new directory entries durable: sync every parent from the first created one up.
          for (let d = dir; ; d = dirname(d)) {
            await this.syncDir(dirname(d));
            if (d === first) break;
          }
        }
      }
      const tmp = join(dir, TEMP_TAG + randomBytes(12).toString('hex'));
      try {
        return { fh: await open(tmp, 'wx', 0o644), tmp };
      } catch (err) {
        if (errnoOf(err) === errno.ENOENT) {
          await this.checkRoot(op, key);
          // A concurrent delete removed the (then empty) directory between mkdir and open: retry.
          if (attempt < 5) continue;
        }
        throw this.fsError(err, op, key);
      }
    }
  }

  private async openObject(path: string, key: string, op: string): Promise<FileHandle> {
    try {
      return await open(path, 'r');
    } catch (err) {
      const e = errnoOf(err);
      if (e === errno.ENOENT || e === errno.ENOTDIR) {
        await this.checkRoot(op, key);
        throw new StoreError('ENOENT', `${op}: no such key: ${key}`, { op, key, storeCode: 'NoSuchKey' });
      }
      throw this.fsError(err, op, key);
    }
  }

  /** Throws ENOENT (missingContainer) if the store directory itself is gone. */
  private async checkRoot(op: string, key: string | undefined): Promise<void> {
    try {
      const st = await stat(this.root);
      if (st.isDirectory()) return;
    } catch {
      /* reported below */
    }
    throw new StoreError('ENOENT', `${op}: store directory ${this.root} does not exist`, { op, key, missingContainer: true, storeCode: 'NoSuchBucket' });
  }

  private async uploadDir(key: string, uploadId: string, op: string): Promise<string> {
    validateKey(key, op);
    const noSuch = (): StoreError => new StoreError('ENOENT', `${op}: no such upload ${uploadId} for ${key}`, { op, key, storeCode: 'NoSuchUpload' });
    if (!/^[0-9a-f]{32}$/.test(uploadId)) throw noSuch();
    const dir = join(this.root, UPLOAD_TAG + uploadId);
    let info: { key?: unknown };
    try {
      info = JSON.parse((await readSmall(join(dir, 'info.json'))).toString('utf8')) as { key?: unknown };
    } catch {
      await this.checkRoot(op, key);
      throw noSuch();
    }
    if (info.key !== key) throw noSuch();
    return dir;
  }

  private async syncDir(dir: string): Promise<void> {
    if (!this.sync) return;
    let fh: FileHandle | undefined;
    try {
      fh = await open(dir, 'r');
      await fh.sync();
    } catch (err) {
      // Some file systems refuse fsync on directories; the rename is still done.
      const e = errnoOf(err);
      if (e !== errno.EINVAL && e !== errno.ENOTSUP && e !== errno.ENOENT) throw this.fsError(err, 'sync', undefined);
    } finally {
      await fh?.close();
    }
  }

  /** Removes now-empty key directories from `dir` up to (not including) the root. */
  private async pruneDirs(dir: string): Promise<void> {
    for (let d = dir; d !== this.root && d.startsWith(this.root + '/'); d = dirname(d)) {
      try {
        await rmdir(d);
      } catch {
        return; // not empty (or already gone, or in use): stop
      }
    }
  }

  private async withLock<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.locks.get(key) ?? Promise.resolve();
    const run = prev.then(fn, fn);
    const tail = run.catch(() => undefined);
    this.locks.set(key, tail);
    try {
      return await run;
    } finally {
      if (this.locks.get(key) === tail) this.locks.delete(key);
    }
  }

  fsError(err: unknown, op: string, key: string | undefined): StoreError {
    if (err instanceof StoreError) return err;
    const e = errnoOf(err);
    const msg = err instanceof Error ? err.message : String(err);
    if (e === errno.ENOENT && key === undefined)
      return new StoreError('ENOENT', `${op}: store directory ${this.root} does not exist`, { op, missingContainer: true, storeCode: 'NoSuchBucket' });
    const code = (Object.entries(errno).find(([, v]) => v === e)?.[0] ?? 'EIO') as ConstructorParameters<typeof StoreError>[0];
    const known: readonly string[] = ['ENOENT', 'EACCES', 'EPERM', 'ENOSPC', 'EDQUOT', 'EROFS', 'ENAMETOOLONG', 'ENOTDIR', 'EISDIR', 'EEXIST', 'EIO', 'EMFILE', 'ENFILE', 'EFBIG'];
    return new StoreError(known.includes(code) ? code : 'EIO', `${op}${key !== undefined ? ` ${key}` : ''}: ${msg}`, { op, key, storeCode: code });
  }
}

// ---- listing: a seek over the directory tree, with the directories read once per page

interface DirEntry {
  readonly name: string;
  readonly isDir: boolean;
  /** Segment for objects, segment + '/' for directories (the order within the directory). */
  readonly sortKey: string;
}

type Found = ObjectInfo | null | 'stop';

class TreeSeeker implements SeekSource {
  private readonly dirs = new Map<string, DirEntry[]>();
  constructor(private readonly store: FileStore) {}

  async seek(pos: ListPosition, prefix: string): Promise<ObjectInfo | null> {
    const r = await this.visit(this.store.root, '', pos, prefix);
    return r === 'stop' ? null : r;
  }

  private async entries(dir: string): Promise<DirEntry[]> {
    let cached = this.dirs.get(dir);
    if (cached) return cached;
    let names: string[];
    try {
      names = await readdir(dir);
    } catch (err) {
      if (dir === this.store.root) throw this.store.fsError(err, 'list', undefined);
      names = []; // removed concurrently
    }
    cached = [];
    for (const name of names) {
      const c = classifyName(name);
      if (c) cached.push({ name, isDir: c.isDir, sortKey: c.isDir ? c.segment + '/' : c.segment });
    }
    cached.sort((a, b) => compareKeys(a.sortKey, b.sortKey));
    this.dirs.set(dir, cached);
    return cached;
  }

  private async visit(dir: string, base: string, pos: ListPosition, prefix: string): Promise<Found> {
    const list = await this.entries(dir);
    const full = (e: DirEntry): string => base + e.sortKey;
    // Lower bound: the first entry that can hold a key >= `bound`; the directory just before
    // it may hold such keys when `bound` lies inside it.
    const lowerBound = (bound: string): number => {
      let lo = 0;
      let hi = list.length;
      while (lo < hi) {
        const mid = (lo + hi) >>> 1;
        if (compareKeys(full(list[mid]!), bound) < 0) lo = mid + 1;
        else hi = mid;
      }
      const prev = list[lo - 1];
      return prev && prev.isDir && bound.startsWith(full(prev)) ? lo - 1 : lo;
    };
    let start = lowerBound(prefix);
    if (pos.after !== null) start = Math.max(start, lowerBound(pos.after));
    for (let i = start; i < list.length; i++) {
      const e = list[i]!;
      const f = full(e);
      if (!f.startsWith(prefix) && !(e.isDir && prefix.startsWith(f))) {
        if (compareKeys(f, prefix) > 0) return 'stop';
        continue;
      }
      if (!e.isDir) {
        if (!isAfter(f, pos)) continue;
        const info = await this.info(join(dir, e.name), f);
        if (info) return info;
        continue;
      }
      if (pos.after !== null && pos.skipUnder && f.startsWith(pos.after)) continue;
      const r = await this.visit(join(dir, e.name), f, pos, prefix);
      if (r !== null) return r;
    }
    return null;
  }

  private async info(path: string, key: string): Promise<ObjectInfo | null> {
    let fh: FileHandle;
    try {
      fh = await open(path, 'r');
    } catch {
      return null; // deleted since the directory was read
    }
    try {
      const { head } = await readHead(fh, key, path);
      return { key, size: head.size, etag: head.etag, lastModified: head.lastModified };
    } finally {
      await fh.close();
    }
  }
}

// ---- file helpers

function partName(partNumber: number, etag: string): string {
  return `p${partNumber}-${etag.replace(/"/g, '')}`;
}

function encodeHeader(h: Header, key: string): Buffer {
  const json = Buffer.from(JSON.stringify(h), 'utf8');
  if (json.length > HEADER_SIZE - 12) throw new StoreError('EINVAL', `metadata of ${key} too large`, { op: 'put', key });
  const buf = Buffer.alloc(HEADER_SIZE);
  MAGIC.copy(buf, 0);
  buf.writeUInt32LE(json.length, 8);
  json.copy(buf, 12);
  return buf;
}

async function readHead(fh: FileHandle, key: string, path: string): Promise<{ head: ObjectHead; size: number }> {
  const st = await fh.stat();
  const buf = Buffer.alloc(HEADER_SIZE);
  const n = await readFully(fh, buf, 0);
  const corrupt = (): StoreError => new StoreError('EIO', `file store: ${path} is not an object file (bad header)`, { op: 'get', key, storeCode: 'Corrupt' });
  if (n < 12 || st.size < HEADER_SIZE || !buf.subarray(0, 8).equals(MAGIC)) throw corrupt();
  const len = buf.readUInt32LE(8);
  if (len > HEADER_SIZE - 12) throw corrupt();
  let h: Header;
  try {
    h = JSON.parse(buf.subarray(12, 12 + len).toString('utf8')) as Header;
  } catch {
    throw corrupt();
  }
  if (typeof h.etag !== 'string' || typeof h.lastModified !== 'number' || typeof h.metadata !== 'object' || h.metadata === null) throw corrupt();
  const size = st.size - HEADER_SIZE;
  return {
    size,
    head: { key, size, etag: h.etag, lastModified: new Date(h.lastModified), metadata: { ...h.metadata }, ...(h.contentType !== undefined ? { contentType: h.contentType } : {}) },
  };
}

async function readFully(fh: FileHandle, target: Uint8Array, position: number): Promise<number> {
  let done = 0;
  while (done < target.length) {
    const { bytesRead } = await fh.read(target, done, target.length - done, position + done);
    if (bytesRead === 0) break;
    done += bytesRead;
  }
  return done;
}

async function writeAll(fh: FileHandle, data: Uint8Array, position: number): Promise<void> {
  let done = 0;
  while (done < data.length) {
    const { bytesWritten } = await fh.write(data, done, data.length - done, position + done);
    done += bytesWritten;
  }
}

/** Appends the whole of `srcPath` to `fh` at `position`. Returns the bytes copied. */
async function copyInto(srcPath: string, fh: FileHandle, position: number): Promise<number> {
  const src = await open(srcPath, 'r');
  try {
    const buf = Buffer.allocUnsafe(COPY_CHUNK);
    let done = 0;
    for (;;) {
      // Sequential reads (no position), so pipes and FIFOs work as sources too.
      const { bytesRead } = await src.read(buf, 0, buf.length, null);
      if (bytesRead === 0) return done;
      await writeAll(fh, buf.subarray(0, bytesRead), position + done);
      done += bytesRead;
    }
  } finally {
    await src.close();
  }
}

async function writeFileSynced(path: string, data: Uint8Array, sync: boolean): Promise<void> {
  const tmp = join(dirname(path), TEMP_TAG + randomBytes(8).toString('hex'));
  const fh = await open(tmp, 'wx', 0o644);
  try {
    await writeAll(fh, data, 0);
    if (sync) await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, path);
}

async function readSmall(path: string): Promise<Buffer> {
  const fh = await open(path, 'r');
  try {
    const st = await fh.stat();
    const buf = Buffer.alloc(st.size);
    await readFully(fh, buf, 0);
    return buf;
  } finally {
    await fh.close();
  }
}

// Re-exported for tests of the layout.
export { OBJECT_TAG, TEMP_TAG };
