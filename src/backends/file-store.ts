// A local directory as an object store (`file:/path/store`), the embedded default.
//
// Layout (see file-keys.ts for the key ↔ path mapping):
//   <root>/d<seg>/…/o<seg>     one file per object: a 4 KiB header, then the bytes
//   <root>/…/t<prefix><count>  a write in progress (ignored by listings and reads)
//   <root>/u<uploadId>/        a multipart upload: info.json and p<number>-<etag> parts
//
// Object file: bytes 0..4095 are the header — magic "VHS3OBJ1", u32le JSON length, JSON
// {etag, lastModified (ms), contentType?, metadata} — and the object's bytes start at
// offset 4096 (HEADER_SIZE, page aligned, so the blk layer may read chunk files directly at
// HEADER_SIZE + offset). The metadata lives in the object file rather than a sidecar so
// that bytes and metadata change together with ONE rename: with a sidecar, a crash between
// the two renames pairs new bytes with old metadata.
//
// Writes: temp file in the destination directory, write, then rename (or link for
// If-None-Match, which fails atomically with EEXIST). A process killed mid-write leaves the
// old object, plus at worst a stray 't…' file that nothing reads (`removeStaleTemps`
// sweeps them).
//
// Durability (the ObjectStore contract): a completed write is visible to every reader at
// once and survives the gateway process dying; it survives a crash of the machine once a
// later `sync()` completed. The store remembers the files and directories written since
// the last sync and `sync()` fsyncs them (the file, then its directory): that is what
// FUSE FSYNC/SYNCFS and a virtio-blk FLUSH ask for, and what virtiofsd does too (it
// fsyncs on FSYNC only, not on close). Past MAX_UNSYNCED remembered paths the store stops
// remembering and the next `sync()` is one syncfs(2) of the store's file system instead:
// writes never wait for a sync, and a sync after many writes costs one system call rather
// than two fsyncs per object (it also writes back whatever else is dirty on that file
// system, which a store on a busy shared disk pays for in that one sync's latency). A machine crash may lose writes not synced (an object may
// then be missing, old, or unreadable: EIO), never synced ones.
//
// System calls: metadata work (HEAD, the header reads of a listing, small puts) is done
// with synchronous calls on the event loop. On a local file system they take microseconds
// (page cache), less than the hand-off to libuv's thread pool and back that each
// `fs/promises` call costs (~36 µs on a 2-core VM, 4–10 per operation); bulk data (bodies
// over SYNC_IO_MAX) and fsync go through the thread pool so that the loop is never blocked
// for long. The gateway's event loop serves this store only.
//
// Conditional writes: If-None-Match is atomic across processes (link(2)); If-Match is a
// check-then-rename, atomic among writers in this process (per-key lock) but not against
// another process writing the same store — one gateway process owns a store directory.
import { randomBytes } from 'node:crypto';
import {
  closeSync, constants as fsc, type Stats, fstatSync, linkSync, mkdirSync, openSync, read as readCb, readSync, readvSync, renameSync, rmdirSync,
  statSync, unlinkSync, writevSync,
} from 'node:fs';
import { availableParallelism, constants as osc } from 'node:os';
import { copyFile, mkdir, open, readdir, rename, rm, stat, unlink, type FileHandle } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { getSystemErrorName } from 'node:util';
import { native } from '../native/index.js';
import { errnoOf } from '../util/errors.js';
import { ASYNC_MIN_BYTES, IOV_MAX, createFileIo, type FileIo } from '../blk/file-io.js';
import type { Segment } from '../virtio/memory.js';
import { forEachLimit } from './posix/locks.js';
import { listPage, isAfter, type ListPosition, type SeekSource } from './listing.js';
import { classifyName, encodeSegment, keyPathFits, keyToPath, nameFits, DIR_TAG, NAME_MAX, OBJECT_TAG, TEMP_TAG, UPLOAD_TAG } from './file-keys.js';
import { pastBytes } from '../util/bytes.js';
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
  validateListOptions,
  validatePartList,
  validatePartNumber,
  validateRange,
  type ByteRange,
  type CompleteOptions,
  type CompletedPart,
  type PartCopySource,
  readPartCopySource,
  type CopyOptions,
  type GetResult,
  type ListOptions,
  type ListPage,
  type Metadata,
  type MultipartOptions,
  type ObjectHead,
  type ObjectReader,
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
/** Bodies up to this are written and read with synchronous calls (see the top of the file). */
const SYNC_IO_MAX = 256 * 1024;
/**
 * Reads up to this are synchronous too: a read of a local file is mostly a copy out of the
 * kernel's page cache (~1 ms for 8 MiB), cheaper than two thread hand-offs, which on a busy
 * machine wait for a CPU each (measured: read-1m 83 MiB/s through the pool with the load
 * of other processes at 1.6 cores, against virtiofsd's 436 MiB/s).
 */
const SYNC_READ_MAX = 8 * 1024 * 1024;
/**
 * Files and directories remembered for the next sync(); beyond this the next sync() is a
 * syncfs(2) of the whole file system. (It used to sync them from the write that went past
 * the bound: 40 µs per write of a long create loop on tmpfs, for open+fsync+close of every
 * path through the thread pool.)
 */
const MAX_UNSYNCED = 8192;
/**
 * The sorted entries of a directory read for a listing are reused while the directory's
 * identity (inode, mtime, ctime in ns) is unchanged, so the pages of one listing read it
 * once, yet another process's writes to the store (a second gateway, `vhost-s3 image`) show
 * in the next listing, as S3 lists after a write. File-system timestamps advance in coarse
 * ticks, so entries read while the directory's mtime is younger than this are not reused
 * (a change later in the same tick would keep the same mtime).
 */
const DIR_SETTLED_MS = 50;
const DIR_CACHE_ENTRIES = 256;
/** Object headers remembered by headSync (~0.5 KiB each). */
const HEAD_CACHE_ENTRIES = 65536;
/** A missing store directory is noticed within this (checkRoot). */
const ROOT_CHECK_MS = 1000;
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
  /** Skip fsync in sync() (tests only: durability is then not guaranteed). Default false. */
  readonly noSync?: boolean;
  /** Default 5 MiB as S3; tests of the layers above may lower it. */
  readonly minPartSize?: number;
  /** Paths remembered for sync() before it becomes a syncfs (default MAX_UNSYNCED; tests lower it). */
  readonly maxUnsynced?: number;
}

/** fsyncs done by sync(), for tests that check that durability is asked for where it must be. */
export interface FileStoreSyncStats {
  /** sync() calls that completed. */
  syncs: number;
  files: number;
  dirs: number;
  /** syncfs(2) calls (sync() after more writes than the store remembers). */
  syncfs: number;
}

export class FileStore implements ObjectStore {
  readonly kind = 'file' as const;
  readonly description: string;
  readonly capabilities: StoreCapabilities;
  readonly root: string;
  /** The root with one trailing '/'. */
  private readonly rootSlash: string;
  readonly syncStats: FileStoreSyncStats = { syncs: 0, files: 0, dirs: 0, syncfs: 0 };
  private readonly fsyncs: boolean;
  private readonly locks = new Map<string, Promise<unknown>>();
  /** Written since the last sync(): object files, and directories whose entries changed. */
  private unsyncedFiles = new Set<string>();
  private unsyncedDirs = new Set<string>();
  /** More was written since the last sync() than the sets hold: the next sync() is a syncfs. */
  private unsyncedOverflow = false;
  private readonly maxUnsynced: number;
  /** Headers read, by path, with the identity of the file they were read from (headSync). */
  private readonly heads = new Map<string, { readonly ino: number; readonly size: number; readonly mtimeMs: number; readonly ctimeMs: number; readonly head: ObjectHead }>();
  /** ObjectReader.readAsync's engine: undefined until first asked for, null when unavailable. */
  private io: FileIo | null | undefined;
  /** When checkRoot last found the store directory. */
  private rootSeenAt = -Infinity;
  /** Directory → its key-space entries in listing order (see DIR_CACHE_MS). */
  private readonly dirCache = new Map<string, { readonly entries: DirEntry[]; readonly identity: string }>();

  constructor(root: string, opts: FileStoreOptions = {}) {
    this.root = resolve(root);
    this.rootSlash = this.root.endsWith('/') ? this.root : this.root + '/';
    this.description = `file:${this.root}`;
    this.fsyncs = !opts.noSync;
    this.maxUnsynced = opts.maxUnsynced ?? MAX_UNSYNCED;
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

  /** Every segment must fit in a file name once encoded (see file-keys.ts). */
  keyFits(key: string): boolean {
    // A segment takes at most 3 bytes per UTF-16 unit once encoded ('%' → '%25', UTF-8):
    // a short key fits without encoding it.
    return key.length * 3 < NAME_MAX || keyPathFits(key);
  }

  /** The file holding `key` (its bytes start at HEADER_SIZE). */
  pathOf(key: string): string {
    validateKey(key);
    const p = keyToPath(key);
    // The components are plain names (never empty, '.', '..', nor holding '/': file-keys.ts),
    // so concatenation is the join, without path.join's normalising pass.
    return p.dirs.length === 0 ? this.rootSlash + p.file : this.rootSlash + p.dirs.join('/') + '/' + p.file;
  }

  // ---- reads

  async get(key: string, opts: { readonly range?: ByteRange } = {}): Promise<GetResult> {
    if (opts.range) validateRange(opts.range.offset, opts.range.length);
    const path = this.pathOf(key);
    const fd = this.openObject(path, key, 'get');
    try {
      const { head, size } = readHead(fd, key, path);
      let offset = 0;
      let length = size;
      if (opts.range) {
        offset = Math.min(opts.range.offset, size);
        length = Math.min(opts.range.length, size - offset);
      }
      const body = new Uint8Array(length);
      const n = await readFully(fd, body, HEADER_SIZE + offset);
      return { ...head, body: n === length ? body : body.subarray(0, n) };
    } finally {
      closeSync(fd);
    }
  }

  async getInto(key: string, offset: number, target: Uint8Array): Promise<ReadIntoResult> {
    validateRange(offset, target.length);
    const path = this.pathOf(key);
    const fd = this.openObject(path, key, 'get');
    try {
      const { head, size } = readHead(fd, key, path);
      const want = Math.max(0, Math.min(target.length, size - offset));
      const n = want === 0 ? 0 : await readFully(fd, target.subarray(0, want), HEADER_SIZE + offset);
      return { ...head, bytesRead: n };
    } finally {
      closeSync(fd);
    }
  }

  /** Reads straight into the caller's buffers with one preadv (virtio-fs READ into guest memory). */
  readIntoSync(key: string, etag: string, offset: number, length: number, targets: readonly Uint8Array[]): number {
    validateRange(offset, length);
    const path = this.pathOf(key);
    const fd = this.openObject(path, key, 'get');
    try {
      const { head, size } = readHead(fd, key, path);
      if (head.etag !== etag) throw new StoreError('ESTALE', `get: ${key} changed (ETag ${head.etag})`, { op: 'get', key });
      return preadvInto(fd, offset, Math.max(0, Math.min(length, size - offset)), targets);
    } finally {
      closeSync(fd);
    }
  }

  /**
   * Version `etag` of `key` held open (an open file's READs): an object file is never
   * written in place (writes go to a temp file renamed over it), so the descriptor reads
   * that version for as long as it is open; current() notices a replacement by the
   * file's identity, one stat of the path.
   */
  openReader(key: string, etag: string): ObjectReader {
    const path = this.pathOf(key);
    const fd = this.openObject(path, key, 'get');
    try {
      const { head, size, stat } = readHead(fd, key, path);
      if (head.etag !== etag) throw new StoreError('ESTALE', `get: ${key} changed (ETag ${head.etag})`, { op: 'get', key });
      return new FileObjectReader(this, fd, path, key, etag, size, stat.ino, stat.dev);
    } catch (err) {
      closeSync(fd);
      throw err;
    }
  }

  /** ASYNC_MIN_BYTES with io_uring, Infinity without (the reads then stay synchronous). */
  get asyncReadMinBytes(): number {
    return this.asyncIo() === null ? Infinity : ASYNC_READ_MIN_BYTES;
  }

  /** @internal The io_uring engine of ObjectReader.readAsync, made on first use; null where io_uring is unavailable. */
  asyncIo(): FileIo | null {
    if (this.io === undefined) {
      const io = createFileIo('uring', 64, { maxAsync: ASYNC_READS_MAX });
      if (io.engine === 'uring') this.io = io;
      else {
        io.close();
        this.io = null;
      }
    }
    return this.io;
  }

  async head(key: string): Promise<ObjectHead | null> {
    return this.headSync(key, this.pathOf(key), 'head');
  }

  headNow(key: string): ObjectHead | null {
    return this.headSync(key, this.pathOf(key), 'head');
  }

  async list(opts: ListOptions = {}): Promise<ListPage> {
    // A lookup of a name that is neither a file nor a marker asks whether any key lies under
    // `name/` (an implicit directory); mostly there is no directory for it, which one stat
    // tells without the seek machinery (the first page only: a token means there was one).
    const prefix = opts.prefix;
    if (prefix !== undefined && prefix.endsWith('/') && opts.continuationToken === undefined) {
      validateListOptions(opts);
      const dir = this.prefixDir(prefix);
      if (dir === null || !isDirSync(dir)) {
        this.checkRoot('list', undefined); // a missing store directory is an error, not an empty listing
        return { objects: [], commonPrefixes: [] };
      }
    }
    return listPage(new TreeSeeker(this), opts);
  }

  /** @internal The directory holding every key that starts with `base` (empty or ending in '/'); null when a segment cannot be a file name (no such keys). */
  prefixDir(base: string): string | null {
    if (base === '') return this.root;
    const names = base.slice(0, -1).split('/').map((s) => DIR_TAG + encodeSegment(s));
    if (!names.every(nameFits)) return null;
    // Plain names (see pathOf): concatenated, without path.join's normalising pass.
    return this.rootSlash + names.join('/');
  }

  // ---- writes

  async put(key: string, body: PutBody, opts: PutOptions = {}): Promise<PutResult> {
    const path = this.pathOf(key);
    const metadata = normalizeMetadata(opts.metadata);
    requireConditional(this, 'put', key, opts);
    const header: Header = { etag: newEtag(), lastModified: Date.now(), metadata, ...(opts.contentType !== undefined ? { contentType: opts.contentType } : {}) };
    if (body instanceof Uint8Array && body.length <= SYNC_IO_MAX) {
      // Small: the whole write as a few synchronous calls, atomic with respect to this
      // event loop (no lock needed: nothing else runs meanwhile), so the header is encoded
      // into one scratch buffer shared by all of them.
      if (!this.locks.has(key)) return this.putSmall(key, path, encodeHeader(header, key, smallPutHeader), body, header.etag, opts);
    }
    const encoded = encodeHeader(header, key);
    return this.withLock(key, () =>
      this.commit(key, path, 'put', opts, async (fh) => {
        await writeAll(fh, encoded, 0);
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
        const fd = openSync(tmp, 'r+');
        try {
          const { head } = readHead(fd, src, srcPath);
          const ct = replace && opts.contentType !== undefined ? opts.contentType : head.contentType;
          const header: Header = { etag: newEtag(), lastModified: Date.now(), metadata: metadata ?? head.metadata, ...(ct !== undefined ? { contentType: ct } : {}) };
          writeAllSync(fd, [encodeHeader(header, dst)], 0);
          return header.etag;
        } finally {
          closeSync(fd);
        }
      }, { closesHandle: true }),
    );
  }

  async delete(key: string): Promise<void> {
    const path = this.pathOf(key);
    await this.withLock(key, async () => {
      try {
        unlinkSync(path);
      } catch (err) {
        if (errnoOf(err) === errno.ENOENT || errnoOf(err) === errno.ENOTDIR) {
          this.checkRoot('delete', key);
          return;
        }
        throw this.fsError(err, 'delete', key);
      }
      this.unsyncedFiles.delete(path);
      this.heads.delete(path);
      this.pruneDirs(dirname(path));
    });
  }

  async deleteMany(keys: readonly string[]): Promise<void> {
    for (const k of keys) validateKey(k, 'deleteMany');
    const failed: string[] = [];
    let first: unknown;
    for (let i = 0; i < keys.length; i += DELETE_BATCH) {
      const batch = keys.slice(i, i + DELETE_BATCH);
      for (const k of batch) {
        await this.delete(k).catch((err: unknown) => {
          failed.push(k);
          first ??= err;
        });
      }
    }
    if (failed.length > 0) {
      const e = first instanceof StoreError ? first : this.fsError(first, 'deleteMany', failed[0]);
      throw new StoreError(e.code, `deleteMany: ${failed.length} of ${keys.length} keys failed: ${e.message}`, { op: 'deleteMany', failedKeys: failed, missingContainer: e.missingContainer });
    }
  }

  /**
   * Makes every write completed before the call durable: fsyncs the object files written
   * since the last sync, then the directories whose entries changed (renames, new
   * directories, removals).
   */
  async sync(): Promise<void> {
    const files = this.unsyncedFiles;
    const dirs = this.unsyncedDirs;
    const overflow = this.unsyncedOverflow;
    this.unsyncedFiles = new Set();
    this.unsyncedDirs = new Set();
    this.unsyncedOverflow = false;
    if (!this.fsyncs) return;
    if (overflow) {
      try {
        await syncfsPath(this.root);
        this.syncStats.syncfs++;
        this.syncStats.syncs++;
      } catch (err) {
        this.unsyncedOverflow = true;
        throw this.fsError(err, 'sync', '');
      }
      return;
    }
    try {
      await forEachLimit([...files], 16, async (f) => {
        if (await fsyncPath(f, false)) this.syncStats.files++;
      });
      // Deepest first: a new directory's own entry lives in its parent.
      const ordered = [...dirs].sort((a, b) => b.length - a.length);
      await forEachLimit(ordered, 16, async (d) => {
        if (await fsyncPath(d, true)) this.syncStats.dirs++;
      });
      this.syncStats.syncs++;
    } catch (err) {
      // Not durable: keep them for the next sync().
      for (const f of files) this.rememberFile(f);
      for (const d of dirs) this.rememberDir(d);
      throw this.fsError(err, 'sync', '');
    }
  }

  // ---- multipart

  async createMultipart(key: string, opts: MultipartOptions = {}): Promise<string> {
    validateKey(key, 'createMultipart');
    keyToPath(key);
    const metadata = normalizeMetadata(opts.metadata, 'createMultipart');
    this.checkRoot('createMultipart', key);
    const id = randomBytes(16).toString('hex');
    const dir = join(this.root, UPLOAD_TAG + id);
    await mkdir(dir);
    await writeFileAtomic(join(dir, 'info.json'), Buffer.from(JSON.stringify({ key, metadata, contentType: opts.contentType })));
    return id;
  }

  async uploadPart(key: string, uploadId: string, partNumber: number, body: Uint8Array): Promise<string> {
    validatePartNumber(partNumber);
    const dir = await this.uploadDir(key, uploadId, 'uploadPart');
    if (body.length > this.capabilities.maxPartSize) throw new StoreError('EFBIG', 'uploadPart: part too large', { op: 'uploadPart', key });
    const etag = newEtag();
    const name = partName(partNumber, etag);
    await writeFileAtomic(join(dir, name), body);
    // A re-uploaded part replaces the earlier one.
    const prefix = `p${partNumber}-`;
    for (const n of await readdir(dir)) if (n.startsWith(prefix) && n !== name && !n.startsWith(TEMP_TAG)) await unlink(join(dir, n)).catch(() => undefined);
    return etag;
  }

  /** Reads the range and stores it as the part (a local store has nothing to gain from a server-side copy). */
  async uploadPartCopy(key: string, uploadId: string, partNumber: number, source: PartCopySource): Promise<string> {
    return this.uploadPart(key, uploadId, partNumber, await readPartCopySource(this, source));
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

  /** Called after the last read (the Vfs's close): a read still in flight would never complete. */
  async close(): Promise<void> {
    this.io?.close();
    this.io = null;
  }

  /** Removes temporary files (from crashed writers) older than `olderThanMs`. Returns how many. */
  async removeStaleTemps(olderThanMs = 3600_000): Promise<number> {
    // Sub-millisecond now (Date.now() is whole milliseconds, mtimes are not): with 0, a temp
    // file written earlier in the same millisecond counts as old enough.
    const cutoff = performance.timeOrigin + performance.now() - olderThanMs;
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
          if (st && st.mtimeMs <= cutoff && (await unlink(p).then(() => true, () => false))) removed++;
        }
      }
    };
    await walk(this.root);
    return removed;
  }

  // ---- internals

  /**
   * @internal HEAD with synchronous calls: a stat, and when the file is not the one whose
   * header was read last time (same inode, size, mtime and ctime: every write makes a new
   * inode), open, fstat, one read of the header, close.
   */
  headSync(key: string, path: string, op: string): ObjectHead | null {
    // A missing key is common (a lookup asks for the file and the directory marker): stat
    // first, since a throwing openSync costs more (an Error with a stack) than the stat.
    const st = statSync(path, { throwIfNoEntry: false });
    if (st === undefined) {
      this.checkRoot(op, key);
      return null;
    }
    const known = this.heads.get(path);
    if (known && known.ino === st.ino && known.size === st.size && known.mtimeMs === st.mtimeMs && known.ctimeMs === st.ctimeMs && known.head.key === key) {
      const h = known.head;
      return { ...h, lastModified: new Date(h.lastModified.getTime()), metadata: { ...h.metadata } };
    }
    let fd: number;
    try {
      fd = this.openObject(path, key, op);
    } catch (err) {
      if (err instanceof StoreError && err.code === 'ENOENT' && !err.missingContainer) return null;
      throw err;
    }
    try {
      const got = readHead(fd, key, path);
      const now = got.stat;
      this.heads.delete(path);
      if (this.heads.size >= HEAD_CACHE_ENTRIES) this.heads.delete(this.heads.keys().next().value!);
      this.heads.set(path, { ino: now.ino, size: now.size, mtimeMs: now.mtimeMs, ctimeMs: now.ctimeMs, head: { ...got.head, metadata: { ...got.head.metadata } } });
      return got.head;
    } finally {
      closeSync(fd);
    }
  }

  /** A small put: temp file written with one writev, renamed (or linked) into place. */
  private putSmall(key: string, path: string, header: Buffer, body: Uint8Array, etag: string, cond: PutOptions): PutResult {
    const dir = dirname(path);
    const { fd, tmp } = this.createTempSync(dir, 'put', key);
    let published = false;
    try {
      try {
        writeAllSync(fd, body.length > 0 ? [header, body] : [header], 0);
      } finally {
        closeSync(fd);
      }
      this.publish(key, path, tmp, 'put', cond);
      published = true;
      return { etag };
    } catch (err) {
      if (!published) tryUnlink(tmp);
      throw err instanceof StoreError ? err : this.fsError(err, 'put', key);
    }
  }

  /**
   * Writes a new version of `key` into a temp file with `fill` and makes it the object
   * (rename, or link for If-None-Match). Durable at the next sync().
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
    const { fd, tmp } = this.createTempSync(dir, op, key);
    closeSync(fd);
    let published = false;
    try {
      const fh = await open(tmp, 'r+');
      let etag: string;
      try {
        etag = await fill(fh, tmp);
      } finally {
        if (!flags.closesHandle) await fh.close();
      }
      this.publish(key, path, tmp, op, cond);
      published = true;
      return { etag };
    } catch (err) {
      if (!published) tryUnlink(tmp);
      throw err instanceof StoreError ? err : this.fsError(err, op, key);
    }
  }

  /** Moves a written temp file into place as `key`, honouring the conditions; remembers it for sync(). */
  private publish(key: string, path: string, tmp: string, op: string, cond: { ifNoneMatch?: string; ifMatch?: string }): void {
    if (cond.ifNoneMatch === '*') {
      const exists = (): StoreError => new StoreError('EEXIST', `${op}: ${key} exists`, { op, key, storeCode: 'PreconditionFailed', httpStatus: 412 });
      try {
        // link(2) fails with EEXIST atomically, even against other processes.
        linkSync(tmp, path);
        unlinkSync(tmp);
      } catch (err) {
        const e = errnoOf(err);
        if (e === errno.EEXIST) throw exists();
        if (e !== errno.EPERM && e !== errno.ENOTSUP && e !== errno.EOPNOTSUPP && e !== errno.EMLINK) throw this.fsError(err, op, key);
        // No hard links on this file system: check and rename, atomic within this process (per-key lock).
        if (this.headSync(key, path, op) !== null) throw exists();
        renameSync(tmp, path);
      }
    } else {
      if (cond.ifMatch !== undefined) {
        const cur = this.headSync(key, path, op);
        if (cur === null) throw new StoreError('ENOENT', `${op}: no such key: ${key}`, { op, key, storeCode: 'NoSuchKey' });
        if (cur.etag !== cond.ifMatch) throw new StoreError('ESTALE', `${op}: ${key} changed (ETag ${cur.etag})`, { op, key, storeCode: 'PreconditionFailed', httpStatus: 412 });
      }
      renameSync(tmp, path);
    }
    this.rememberFile(path);
    this.rememberDir(dirname(path));
    this.dirCache.delete(dirname(path));
    // Not only the identity check: a freed inode number may come back at once, and a
    // timestamp tick is coarser than two writes.
    this.heads.delete(path);
  }

  /** Remembers a written object file for the next sync() (see rememberDir). */
  private rememberFile(path: string): void {
    if (this.unsyncedOverflow) return;
    this.unsyncedFiles.add(path);
    if (this.unsyncedFiles.size + this.unsyncedDirs.size > this.maxUnsynced) this.overflow();
  }

  /** Remembers a directory whose entries changed; past the bound, forgets all and makes the next sync() a syncfs. */
  private rememberDir(path: string): void {
    if (this.unsyncedOverflow) return;
    this.unsyncedDirs.add(path);
    if (this.unsyncedFiles.size + this.unsyncedDirs.size > this.maxUnsynced) this.overflow();
  }

  private overflow(): void {
    this.unsyncedOverflow = true;
    this.unsyncedFiles = new Set();
    this.unsyncedDirs = new Set();
  }

  /** Opens a fresh temp file in `dir`, creating the directories (remembered for sync()). */
  private createTempSync(dir: string, op: string, key: string): { fd: number; tmp: string } {
    // Usually the directory exists: try that first (one system call), make it on ENOENT.
    try {
      return openTemp(dir);
    } catch (err) {
      if (errnoOf(err) !== errno.ENOENT) throw this.fsError(err, op, key);
    }
    for (let attempt = 0; ; attempt++) {
      if (dir !== this.root) {
        this.checkRoot(op, key, true);
        let first: string | undefined;
        try {
          first = mkdirSync(dir, { recursive: true });
        } catch (err) {
          throw this.fsError(err, op, key);
        }
        if (first !== undefined) {
          // The new directories' entries must reach the disk with the object: remember every
          // parent from the first created one up.
          for (let d = dir; ; d = dirname(d)) {
            this.rememberDir(dirname(d));
            this.dirCache.delete(dirname(d));
            if (d === first) break;
          }
        }
      }
      try {
        return openTemp(dir);
      } catch (err) {
        if (errnoOf(err) === errno.ENOENT) {
          this.checkRoot(op, key);
          // A concurrent delete removed the (then empty) directory between mkdir and open: retry.
          if (attempt < 5) continue;
        }
        throw this.fsError(err, op, key);
      }
    }
  }

  private openObject(path: string, key: string, op: string): number {
    try {
      return openSync(path, 'r');
    } catch (err) {
      const e = errnoOf(err);
      if (e === errno.ENOENT || e === errno.ENOTDIR) {
        this.checkRoot(op, key);
        throw new StoreError('ENOENT', `${op}: no such key: ${key}`, { op, key, storeCode: 'NoSuchKey' });
      }
      throw this.fsError(err, op, key);
    }
  }

  /** @internal Throws ENOENT (missingContainer) if the store directory itself is gone. */
  checkRoot(op: string, key: string | undefined, fresh = false): void {
    // Asked on every miss (a lookup of a new name misses three times): a second's grace,
    // except before making directories (`fresh`), which must never recreate the root.
    const now = performance.now();
    if (!fresh && now - this.rootSeenAt < ROOT_CHECK_MS) return;
    try {
      if (statSync(this.root).isDirectory()) {
        this.rootSeenAt = now;
        return;
      }
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
      this.checkRoot(op, key);
      throw noSuch();
    }
    if (info.key !== key) throw noSuch();
    return dir;
  }

  /** Removes now-empty key directories from `dir` up to (not including) the root; the removals and the last entry removed are remembered for sync(). */
  private pruneDirs(dir: string): void {
    this.rememberDir(dir);
    this.dirCache.delete(dir);
    for (let d = dir; d !== this.root && d.startsWith(this.root + '/'); d = dirname(d)) {
      try {
        rmdirSync(d);
      } catch {
        return; // not empty (or already gone, or in use): stop
      }
      this.unsyncedDirs.delete(d);
      this.rememberDir(dirname(d));
      this.dirCache.delete(dirname(d));
    }
  }

  /** @internal The key-space entries of `dir` in listing order ([] when it does not exist). */
  async dirEntries(dir: string): Promise<DirEntry[]> {
    const seen = directoryIdentity(dir);
    const hit = this.dirCache.get(dir);
    if (hit && seen && hit.identity === seen.identity) return hit.entries;
    let names: string[];
    try {
      names = await readdir(dir);
    } catch (err) {
      if (dir === this.root) throw this.fsError(err, 'list', undefined);
      names = []; // removed concurrently, or never made
    }
    const entries: DirEntry[] = [];
    for (const name of names) {
      const c = classifyName(name);
      if (c) entries.push({ name, isDir: c.isDir, sortKey: c.isDir ? c.segment + '/' : c.segment });
    }
    entries.sort((a, b) => compareKeys(a.sortKey, b.sortKey));
    this.dirCache.delete(dir);
    if (seen?.settled) {
      if (this.dirCache.size >= DIR_CACHE_ENTRIES) this.dirCache.delete(this.dirCache.keys().next().value!);
      this.dirCache.set(dir, { entries, identity: seen.identity });
    }
    return entries;
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
    return new StoreError(known.includes(code) ? code : 'EIO', `${op}${key ? ` ${key}` : ''}: ${msg}`, { op, key, storeCode: code });
  }
}

// ---- listing: a seek over the directory tree, with the directories read once per page

interface DirEntry {
  readonly name: string;
  readonly isDir: boolean;
  /** Segment for objects, segment + '/' for directories (the order within the directory). */
  readonly sortKey: string;
}

type Found = ObjectHead | null | 'stop';

class TreeSeeker implements SeekSource {
  /** The directories read for this page (each read once per page even when the store's cache expires meanwhile). */
  private readonly dirs = new Map<string, DirEntry[]>();
  constructor(private readonly store: FileStore) {}

  async seek(pos: ListPosition, prefix: string): Promise<ObjectHead | null> {
    // Every key under `prefix` lies in the directory of the prefix's complete segments:
    // start there rather than reading every directory on the way down.
    const cut = prefix.lastIndexOf('/');
    let dir = this.store.root;
    let base = '';
    if (cut >= 0) {
      base = prefix.slice(0, cut + 1);
      // A segment too long for a file name holds no key of this store.
      const d = this.store.prefixDir(base);
      if (d === null) return null;
      dir = d;
      if (!this.dirs.has(dir) && !isDirSync(dir)) {
        this.store.checkRoot('list', undefined); // a missing store directory is an error, not an empty listing
        return null;
      }
    }
    const r = await this.visit(dir, base, pos, prefix);
    return r === 'stop' ? null : r;
  }

  private async entries(dir: string): Promise<DirEntry[]> {
    let cached = this.dirs.get(dir);
    if (!cached) {
      cached = await this.store.dirEntries(dir);
      this.dirs.set(dir, cached);
    }
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
        // Deleted since the directory was read: null, go on.
        const head = this.store.headSync(f, join(dir, e.name), 'list');
        if (head) return head;
        continue;
      }
      if (pos.after !== null && pos.skipUnder && f.startsWith(pos.after)) continue;
      const r = await this.visit(join(dir, e.name), f, pos, prefix);
      if (r !== null) return r;
    }
    return null;
  }
}

// ---- file helpers

function partName(partNumber: number, etag: string): string {
  return `p${partNumber}-${etag.replace(/"/g, '')}`;
}

/** The header of small puts (see put): written with no await after encoding, so one buffer serves them all. */
const smallPutHeader = { buf: Buffer.alloc(HEADER_SIZE), end: HEADER_SIZE };

/**
 * The 4 KiB header for `h`, zero past the JSON (nothing of the process's memory reaches the
 * file), in a new buffer or, for small puts, in `scratch` (which must not be in use: its
 * previous contents are overwritten).
 */
function encodeHeader(h: Header, key: string, scratch?: { buf: Buffer; end: number }): Buffer {
  const json = JSON.stringify(h);
  const buf = scratch?.buf ?? Buffer.alloc(HEADER_SIZE);
  // write() stops before a character that does not fit whole; 4 bytes left over means
  // every one did (checked exactly only when the header comes close to full).
  const len = buf.write(json, 12, 'utf8');
  if (len > HEADER_SIZE - 16 && Buffer.byteLength(json, 'utf8') !== len) {
    if (scratch) {
      buf.fill(0, 12); // what this attempt wrote
      scratch.end = 12;
    }
    throw new StoreError('EINVAL', `metadata of ${key} too large`, { op: 'put', key });
  }
  MAGIC.copy(buf, 0);
  buf.writeUInt32LE(len, 8);
  if (scratch) {
    // Zero what the previous, longer header left.
    if (scratch.end > 12 + len) buf.fill(0, 12 + len, scratch.end);
    scratch.end = 12 + len;
  }
  return buf;
}

/** Reused by every header read: they are synchronous, so never two at once. */
const headerScratch = Buffer.alloc(HEADER_SIZE);

function readHead(fd: number, key: string, path: string): { head: ObjectHead; size: number; stat: Stats } {
  const st = fstatSync(fd);
  const buf = headerScratch;
  const n = st.size < 12 ? 0 : readSync(fd, buf, 0, Math.min(HEADER_SIZE, st.size), 0);
  const corrupt = (): StoreError => new StoreError('EIO', `file store: ${path} is not an object file (bad header)`, { op: 'get', key, storeCode: 'Corrupt' });
  if (n < 12 || st.size < HEADER_SIZE || !buf.subarray(0, 8).equals(MAGIC)) throw corrupt();
  const len = buf.readUInt32LE(8);
  if (len > HEADER_SIZE - 12) throw corrupt();
  let h: Header;
  try {
    h = JSON.parse(buf.toString('utf8', 12, 12 + len)) as Header;
  } catch {
    throw corrupt();
  }
  if (typeof h.etag !== 'string' || typeof h.lastModified !== 'number' || typeof h.metadata !== 'object' || h.metadata === null) throw corrupt();
  const size = st.size - HEADER_SIZE;
  return {
    size,
    stat: st,
    head: { key, size, etag: h.etag, lastModified: new Date(h.lastModified), metadata: { ...h.metadata }, ...(h.contentType !== undefined ? { contentType: h.contentType } : {}) },
  };
}

function readAsync(fd: number, target: Uint8Array, offset: number, length: number, position: number): Promise<number> {
  return new Promise((res, rej) => readCb(fd, target, offset, length, position, (err, n) => (err ? rej(err) : res(n))));
}

/** Small reads synchronously, large ones through the thread pool. */
async function readFully(fd: number, target: Uint8Array, position: number): Promise<number> {
  let done = 0;
  while (done < target.length) {
    const want = target.length - done;
    const n = want <= SYNC_READ_MAX ? readSync(fd, target, done, want, position + done) : await readAsync(fd, target, done, want, position + done);
    if (n === 0) break;
    done += n;
  }
  return done;
}

function writeAllSync(fd: number, parts: Uint8Array[], position: number): void {
  let pos = position;
  let rest = parts;
  while (rest.length > 0) {
    const n = writevSync(fd, rest, pos);
    pos += n;
    rest = pastBytes(rest, n);
  }
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

/** Multipart bookkeeping (parts, info.json): written whole, then renamed; made durable by the completion's object. */
async function writeFileAtomic(path: string, data: Uint8Array): Promise<void> {
  const tmp = join(dirname(path), tempName());
  const fh = await open(tmp, 'wx', 0o644);
  try {
    await writeAll(fh, data, 0);
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
    let done = 0;
    while (done < buf.length) {
      const { bytesRead } = await fh.read(buf, done, buf.length - done, done);
      if (bytesRead === 0) break;
      done += bytesRead;
    }
    return buf;
  } finally {
    await fh.close();
  }
}

/** fsync of a file or directory by path; false when it is gone (replaced or removed since: nothing left to make durable). */
async function fsyncPath(path: string, isDir: boolean): Promise<boolean> {
  let fh: FileHandle;
  try {
    fh = await open(path, 'r');
  } catch (err) {
    if (errnoOf(err) === errno.ENOENT) return false;
    throw err;
  }
  try {
    await fh.sync();
    return true;
  } catch (err) {
    // Some file systems refuse fsync on directories; the entries are as durable as they get.
    const e = errnoOf(err);
    if (isDir && (e === errno.EINVAL || e === errno.ENOTSUP)) return false;
    throw err;
  } finally {
    await fh.close();
  }
}

/**
 * Temp file names: a random prefix drawn once per process and a counter. Unique within the
 * process; another process (a second gateway on the store, `vhost-s3 image`) draws another
 * prefix, and a leftover of a crashed one that happens to match is skipped (openTemp). A
 * random draw per write cost ~6 µs of a ~55 µs small put.
 */
const tempPrefix = randomBytes(6).toString('hex');
let tempCount = 0;
function tempName(): string {
  tempCount++;
  return TEMP_TAG + tempPrefix + tempCount.toString(36);
}

/** Creates a fresh temp file in `dir` (which must exist: ENOENT otherwise). */
function openTemp(dir: string): { fd: number; tmp: string } {
  for (let attempt = 0; ; attempt++) {
    const tmp = dir + '/' + tempName();
    try {
      return { fd: openSync(tmp, 'wx', 0o644), tmp };
    } catch (err) {
      if (errnoOf(err) !== errno.EEXIST || attempt >= 3) throw err;
    }
  }
}

/** syncfs(2) of the file system holding `path` (through the thread pool). */
async function syncfsPath(path: string): Promise<void> {
  const fh = await open(path, 'r');
  try {
    const err = await new Promise<number>((res) => native.syncfs(fh.fd, res));
    if (err !== 0) throw Object.assign(new Error(`syncfs ${path}: ${getSystemErrorName(-err)}`), { errno: err });
  } finally {
    await fh.close();
  }
}

function isDirSync(path: string): boolean {
  try {
    // Mostly asked of directories that do not exist: no exception for that (an Error with a
    // stack cost more than the stat).
    return statSync(path, { throwIfNoEntry: false })?.isDirectory() ?? false;
  } catch {
    return false; // ENOTDIR and the like
  }
}

function tryUnlink(path: string): void {
  try {
    unlinkSync(path);
  } catch {
    /* already gone */
  }
}

// Re-exported for tests of the layout.
export { OBJECT_TAG, TEMP_TAG };

/** What tells a directory's entries changed, and whether its last change is old enough to trust. */
function directoryIdentity(dir: string): { readonly identity: string; readonly settled: boolean } | null {
  let st;
  try {
    st = statSync(dir, { bigint: true });
  } catch {
    return null;
  }
  const settled = Date.now() - Number(st.mtimeNs / 1_000_000n) > DIR_SETTLED_MS;
  return { identity: `${st.ino}:${st.mtimeNs}:${st.ctimeNs}`, settled };
}

/** What is left of a vector of buffers once a short readv/writev moved `n` bytes. */
/**
 * Reads of at least this many bytes go to an io_uring worker (IOSQE_ASYNC: the engine's
 * own threshold, where the cross-CPU hand-off starts paying for itself), so that several
 * READs are copied at once on other CPUs instead of one after another on the event loop.
 */
export const ASYNC_READ_MIN_BYTES = ASYNC_MIN_BYTES;

/**
 * Those reads in io-wq workers at once (one per CPU); the others wait, in order. A copy
 * from the page cache is CPU-bound: with a worker per READ of a guest's batch (8 x 1 MiB
 * at QD8 on 2 CPUs) the copies shared the CPUs, all finished together after the last one's
 * time, and the guest got the whole batch in one interrupt, then sent the next batch while
 * the workers sat idle (lock-step: 1.3 GiB/s, 7 READs per interrupt). One per CPU, READs
 * finish one after another, so that the guest consumes and re-sends while the next ones
 * are copied.
 */
export const ASYNC_READS_MAX = Math.max(1, availableParallelism());

/** Object byte offset → file offset: the bytes start after the header. */
function preadvInto(fd: number, offset: number, want: number, targets: readonly Uint8Array[]): number {
  let views: Uint8Array[] = [];
  for (const t of targets) {
    if (want === 0) break;
    const n = Math.min(t.length, want);
    views.push(n === t.length ? t : t.subarray(0, n));
    want -= n;
  }
  let done = 0;
  while (views.length > 0) {
    const n = readvSync(fd, views, HEADER_SIZE + offset + done);
    if (n === 0) break;
    done += n;
    views = pastBytes(views, n);
  }
  return done;
}

/** The first `want` bytes of `segs`, or null when they hold fewer. */
function firstSegments(segs: readonly Segment[], want: number): readonly Segment[] | null {
  // The common case, a room sized to the read: no copy of the list.
  if (segs.length === 1 && segs[0]!.length === want) return segs;
  const out: Segment[] = [];
  for (const g of segs) {
    if (want === 0) break;
    const n = Math.min(g.length, want);
    out.push(n === g.length ? g : { buf: g.buf, offset: g.offset, length: n, hostAddr: g.hostAddr });
    want -= n;
  }
  return want === 0 ? out : null;
}

/** `segs` less their first `n` bytes. */
function pastSegments(segs: readonly Segment[], n: number): Segment[] {
  const rest: Segment[] = [];
  for (const g of segs) {
    if (n >= g.length) n -= g.length;
    else {
      rest.push(n > 0 ? { buf: g.buf, offset: g.offset + n, length: g.length - n, hostAddr: g.hostAddr + n } : g);
      n = 0;
    }
  }
  return rest;
}

/** FileStore.openReader: one object file held open. */
class FileObjectReader implements ObjectReader {
  /** readAsync copies not yet completed: the descriptor stays open for them. */
  private inflight = 0;
  private closed = false;

  constructor(
    private readonly store: FileStore,
    private readonly fd: number,
    private readonly path: string,
    readonly key: string,
    readonly etag: string,
    readonly size: number,
    private readonly ino: number,
    private readonly dev: number,
  ) {}

  current(): boolean {
    // One stat of the path, natively (no Stats object: this runs for every READ); an error
    // (ENOENT, ENOTDIR, EACCES ...) means not this object any more as far as we can tell.
    // While our descriptor is open the inode is alive, so its number cannot be reused.
    return !this.closed && native.isFile(this.path, this.dev, this.ino);
  }

  readIntoSync(offset: number, length: number, targets: readonly Uint8Array[]): number {
    if (this.closed) throw new StoreError('EIO', `get: reader of ${this.key} is closed`, { op: 'get', key: this.key });
    validateRange(offset, length);
    return preadvInto(this.fd, offset, Math.max(0, Math.min(length, this.size - offset)), targets);
  }

  readAsync(offset: number, length: number, targets: readonly Segment[], done: (result: number) => void): boolean {
    if (this.closed || !Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0) return false;
    const want = Math.max(0, Math.min(length, this.size - offset));
    if (want < ASYNC_READ_MIN_BYTES) return false;
    const io = this.store.asyncIo();
    const segs = firstSegments(targets, want);
    if (io === null || segs === null || segs.length > IOV_MAX) return false;
    this.inflight++;
    let got = 0;
    const step = (rest: readonly Segment[]): void => {
      io.readv(this.fd, rest, HEADER_SIZE + offset + got, (r) => {
        // A short read before the end (a signal, memory pressure): go on from there.
        if (r > 0 && got + r < want) {
          got += r;
          step(pastSegments(rest, r));
          return;
        }
        if (--this.inflight === 0 && this.closed) closeSync(this.fd);
        done(r < 0 ? r : got + r);
      });
    };
    step(segs);
    // The other READs the guest sent with this one are being served in the same turn: one
    // submission for all of them (a short read's remainder goes from the completion's turn).
    io.unplugSoon();
    return true;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.inflight === 0) closeSync(this.fd);
  }
}
