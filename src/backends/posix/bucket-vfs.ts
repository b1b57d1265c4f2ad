// A POSIX file system over an object store: the Vfs the FUSE engine drives (src/fuse/vfs.ts),
// with the S3 ↔ POSIX mapping of DESIGN.md.
//
// Mapping (names.ts, metadata.ts):
// - A file or symlink at `path` is the object `prefix + path`; a directory is the prefix
//   `prefix + path + '/'`: it exists when its marker object (that key itself, written by
//   mkdir, carrying the directory's metadata) or any key below it exists. The root always
//   exists. When both an object `a` and keys below `a/` exist, the object wins (as in
//   s3fs): `a` is a file and what is below `a/` is hidden.
// - Attributes live in s3fs-compatible user metadata; objects without metadata get the
//   configured defaults and LastModified as mtime. Symlinks are objects whose body is the
//   target and whose mode has S_IFLNK. user.* extended attributes are metadata too.
// - Changing the metadata of an object is a CopyObject onto itself with metadata REPLACE.
// - rename of a file is copy + delete; of a directory, copy of every key below it with
//   bounded concurrency, then delete of the sources: NOT atomic (a failure part-way leaves
//   both copies of some keys, never neither), and its cost grows with the number of keys.
// - An implicit directory (no marker) would vanish with its last entry: removing that
//   entry through us writes a marker to keep it.
// - Directory mtimes do not change when entries are added or removed (that would be a
//   metadata rewrite of the parent per operation).
//
// Files open for writing (FileNode): all handles of one path share a node holding a
// WriteBuffer (write-buffer.ts). Writes, truncations and allocations go to the buffer; the
// object is stored by flush()/fsync()/release() (one PUT up to `multipartThreshold`, a
// multipart upload with `uploadConcurrency` parts in flight above it), with the file's
// metadata (mode, owner, times, xattrs, other tools' keys) carried over. Bytes of the old
// object that were not overwritten are fetched only when needed (a read, or the upload).
// A created file is stored at its first flush (not at create). A failed upload is
// reported by that flush/fsync/release as EIO, the node stays dirty (also after the last
// release) and the next flush, fsync, open+close or sync() tries again.
//
// If the stored object changes under a file being written (another writer), the bytes we
// still need from it come from the new version: the last writer wins per byte range.
//
// Caches (listing-cache.ts, page-cache.ts): attributes (TTL), negative lookups (TTL),
// directory listings (TTL), and an LRU page cache of fixed-size blocks keyed by ETag with
// sequential read-ahead. Our own changes update or drop entries at once; changes made by
// others are seen once the TTLs ran out (or on `invalidate`).
import { tmpdir } from 'node:os';
import PQueue from 'p-queue';
import type { AttrChanges, Caller, CreateFlags, DirEntry, FileAttr, OpenFile, OpenFlags, StatFs, TimeNs, Vfs } from '../../fuse/vfs.js';
import { ErrnoError, type ErrnoName } from '../../util/errors.js';
import { silentLogger, type Logger } from '../../util/log.js';
import type { Segment } from '../../virtio/memory.js';
import {
  MAX_KEY_BYTES,
  MAX_METADATA_BYTES,
  StoreError,
  compareKeys,
  listAll,
  choosePartSize,
  putLarge,
  type Metadata,
  type ObjectHead,
  type ObjectInfo,
  type ObjectReader,
  type ObjectStore,
  type PartSource,
  type PutResult,
} from '../object-store.js';
import { TtlCache } from './listing-cache.js';
import { ByteSemaphore, KeyedMutex, Mutex, forEachLimit } from './locks.js';
import {
  PERM_MASK,
  S_IFDIR,
  S_IFLNK,
  S_IFMT,
  S_IFREG,
  USER_XATTR_PREFIX,
  attrFromMetadata,
  metadataBytes,
  newObjectOwner,
  readMetadata,
  timeOfDate,
  writeMetadata,
  type AttrDefaults,
  type ObjectRole,
  type StoredAttrs,
} from './metadata.js';
import { KeyMap, NAME_MAX, PATH_MAX, baseName, checkPath, isBelow, isValidName, joinPath, parentOf, rebase } from './names.js';
import { PageCache, StaleVersionError, type ObjectVersion } from './page-cache.js';
import { copyToMemfd } from './memfd-copy.js';
import { MemoryBudget, WriteBuffer } from './write-buffer.js';

const MiB = 1024 * 1024;

export interface BucketVfsOptions {
  readonly store: ObjectStore;
  /** Key prefix of the file system: '' or ending in '/'. Default ''. */
  readonly prefix?: string;
  /** Permission bits of files whose object has no mode. Default 0o644. */
  readonly defaultFileMode?: number;
  /** Permission bits of directories without a mode (and of implicit directories and the root). Default 0o755. */
  readonly defaultDirMode?: number;
  /** Owner of objects without uid/gid metadata. Default: this process's. */
  readonly uid?: number;
  readonly gid?: number;
  /** How long attributes from the store are trusted. Default 5000 ms (0: not cached). */
  readonly attrTtlMs?: number;
  /** How long "no such file" is trusted. Default 2000 ms. */
  readonly negativeTtlMs?: number;
  /** How long a directory listing is trusted. Default 5000 ms. */
  readonly listTtlMs?: number;
  /** Entries of the attribute (and negative) cache. Default 100000. */
  readonly attrCacheEntries?: number;
  /** Directories whose listing is cached. Default 1000. */
  readonly listCacheEntries?: number;
  /** Page cache block size. Default 1 MiB. */
  readonly blockSize?: number;
  /** Page cache size in bytes. Default 256 MiB. */
  readonly pageCacheBytes?: number;
  /** Largest read-ahead window of a sequential reader (at most a quarter of the page cache is used). Default 64 MiB (0: none). */
  readonly readAheadBytes?: number;
  /** Ranged GETs in flight (reads, read-ahead, fetches before an upload). Default 16. */
  readonly fetchConcurrency?: number;
  /** A file's in-memory write buffer moves to a temporary file beyond this. Default 8 MiB. */
  readonly spillThreshold?: number;
  /** In-memory write buffers of all files together; beyond it files spill. Default 128 MiB. */
  readonly memoryBudget?: number;
  /** Where write buffers spill (files are unlinked at once). Default os.tmpdir(). */
  readonly tempDir?: string;
  /** Objects above this are stored by multipart upload. Default 32 MiB. */
  readonly multipartThreshold?: number;
  /** Part size of multipart uploads (raised where the store needs). Default 16 MiB. */
  readonly partSize?: number;
  /** Parts of one upload in flight. Default 4. */
  readonly uploadConcurrency?: number;
  /** HEADs during a listing, copies during a directory rename. Default 16. */
  readonly metaConcurrency?: number;
  /** Bytes that uploads in flight may hold in part buffers and copies, all files together (one larger upload runs alone). Default 256 MiB. */
  readonly uploadMemory?: number;
  readonly logger?: Logger;
}

type Resolved = Required<Omit<BucketVfsOptions, 'store' | 'logger'>>;

/** A directory's cached listing. */
interface Listing {
  readonly entries: Map<string, DirEntry>;
  /** Names that are a file hiding keys below `name/` (a directory of the same name). */
  readonly shadowed: ReadonlySet<string>;
}

/** A stored object behind a path. */
interface StoredVersion {
  readonly key: string;
  readonly etag: string;
  readonly size: number;
  /** ms since the epoch; NaN when we wrote it and did not ask. */
  readonly lastModified: number;
}

/** What the store says about a path. */
interface Entry {
  readonly attr: FileAttr;
  readonly xattrs: ReadonlyMap<string, Uint8Array>;
  /** Metadata keys of other tools, kept on rewrite. */
  readonly other: Metadata;
  /** The file/symlink object or directory marker; null for an implicit directory (and a root without marker). */
  readonly object: StoredVersion | null;
  /** A symlink's target once read. */
  readonly target?: string;
}

interface MutableAttrs {
  mode: number;
  uid: number;
  gid: number;
  atime: TimeNs;
  mtime: TimeNs;
  ctime: TimeNs;
}

/** The shared state of every open handle of one file. */
class FileNode {
  refs = 0;
  buf: WriteBuffer | null = null;
  dirty = false;
  unlinked = false;
  readonly lock = new Mutex();
  constructor(
    public path: string,
    public attrs: MutableAttrs,
    public xattrs: Map<string, Uint8Array>,
    public other: Metadata,
    /** The stored version our buffer is relative to (null: never stored). */
    public base: StoredVersion | null,
  ) {}

  get size(): number {
    return this.buf ? this.buf.size : (this.base?.size ?? 0);
  }
}

/** Counters for tests and metrics. */
export interface BucketVfsStats {
  readonly openFiles: number;
  readonly dirtyFiles: number;
  readonly spilledFiles: number;
  readonly bufferMemory: number;
  readonly bufferMemoryPeak: number;
  readonly pageCacheBytes: number;
  readonly uploads: number;
  readonly pageHits: number;
  readonly pageMisses: number;
  readonly pageFetches: number;
  readonly pageEvictions: number;
}

/** What the caches of a BucketVfs hold, and their bounds. */
export interface CacheSizes {
  readonly pageBytes: number;
  readonly pageMaxBytes: number;
  /** Names with cached attributes, and names cached as missing (each up to attrMaxEntries). */
  readonly attrEntries: number;
  readonly negativeEntries: number;
  readonly attrMaxEntries: number;
  readonly listEntries: number;
  readonly listMaxEntries: number;
}

const EMPTY = new Uint8Array(0);
/** How far from where the last read ended a read still counts as sequential. */
const SEQUENTIAL_SLACK = 256 * 1024;
const DIR_CONTENT_TYPE = 'application/x-directory';
/** st_size of a directory (as s3fs reports). */
const DIR_SIZE = 4096;
/**
 * A lookup under a parent whose cached listing expired refreshes that listing when it is
 * this small (one LIST page at S3's default page size) and at most this many of its
 * entries would need a HEAD (attributes no longer cached): see refreshedAbsence().
 */
const REFRESH_MAX_ENTRIES = 1000;
const REFRESH_MAX_UNKNOWN = 16;
/** S3's largest object. */
const MAX_OBJECT = 5 * 1024 * MiB * 1024;
/** Linux XATTR_SIZE_MAX. */
const XATTR_SIZE_MAX = 64 * 1024;
/** Errnos of the store that mean the same to a file system caller; others become EIO. */
const STORE_ERRNOS_KEPT = new Set<ErrnoName>(['ENOENT', 'EEXIST', 'EACCES', 'ENAMETOOLONG', 'EFBIG', 'ENOSPC', 'EDQUOT']);
/** Errnos of local I/O (temporary files) passed on. */
const LOCAL_ERRNOS_KEPT = new Set<string>(['ENOSPC', 'EDQUOT']);

const T0 = BigInt(Date.now()) * 1_000_000n - process.hrtime.bigint();
function nowNs(): TimeNs {
  return T0 + process.hrtime.bigint();
}

function errno(code: ErrnoName, message?: string): ErrnoError {
  return new ErrnoError(code, message);
}

export class BucketVfs implements Vfs {
  readonly store: ObjectStore;
  readonly keys: KeyMap;
  private o: Resolved;
  private readonly log: Logger;
  private readonly defaults: AttrDefaults;
  private readonly attrCache: TtlCache<Entry>;
  private readonly negCache: TtlCache<object>;
  /** name → entry of a directory; kept up to date in place by our own changes. */
  private readonly listCache: TtlCache<Listing>;
  private readonly pages: PageCache;
  private readonly budget: MemoryBudget;
  private readonly nodes = new Map<string, FileNode>();
  private readonly acquiring = new Map<string, Promise<FileNode>>();
  private readonly lookups = new Map<string, Promise<Entry | null>>();
  /** Listings being loaded again for lookups under them (refreshedAbsence), by directory. */
  private readonly refreshes = new Map<string, { readonly epoch: number; readonly entries: Promise<Map<string, DirEntry>> }>();
  private readonly metaLocks = new KeyedMutex();
  private readonly metaQueue: PQueue;
  private readonly uploadBytes: ByteSemaphore;
  private readonly mountTime: TimeNs = nowNs();
  private readonly maxFileSize: number;
  /** Bumped by every change we make: lookups that started before do not fill the caches. */
  private epoch = 0;
  /**
   * The last path entryNow found neither a file nor a marker at, when, and in which epoch:
   * the asynchronous lookup that follows it needs only the LIST (see fetchEntry).
   */
  private headsMissed: { readonly path: string; readonly epoch: number; readonly at: number } | null = null;
  private uploads = 0;
  /** The store copies parts (UploadPartCopy); false once it said it does not. */
  private partCopy = true;
  private closing: Promise<void> | null = null;
  /** The root's attributes when the prefix is '' (no key to keep them in): in memory only. */
  private rootEntry: Entry;

  constructor(opts: BucketVfsOptions) {
    this.store = opts.store;
    this.keys = new KeyMap(opts.prefix ?? '');
    this.log = opts.logger ?? silentLogger;
    this.o = {
      prefix: opts.prefix ?? '',
      defaultFileMode: opts.defaultFileMode ?? 0o644,
      defaultDirMode: opts.defaultDirMode ?? 0o755,
      uid: opts.uid ?? process.getuid?.() ?? 0,
      gid: opts.gid ?? process.getgid?.() ?? 0,
      attrTtlMs: opts.attrTtlMs ?? 5000,
      negativeTtlMs: opts.negativeTtlMs ?? 2000,
      listTtlMs: opts.listTtlMs ?? 5000,
      attrCacheEntries: opts.attrCacheEntries ?? 100_000,
      listCacheEntries: opts.listCacheEntries ?? 1000,
      blockSize: opts.blockSize ?? MiB,
      pageCacheBytes: opts.pageCacheBytes ?? 256 * MiB,
      readAheadBytes: opts.readAheadBytes ?? 64 * MiB,
      fetchConcurrency: opts.fetchConcurrency ?? 16,
      spillThreshold: opts.spillThreshold ?? 8 * MiB,
      memoryBudget: opts.memoryBudget ?? 128 * MiB,
      tempDir: opts.tempDir ?? tmpdir(),
      multipartThreshold: opts.multipartThreshold ?? 32 * MiB,
      partSize: opts.partSize ?? 16 * MiB,
      uploadConcurrency: opts.uploadConcurrency ?? 4,
      metaConcurrency: opts.metaConcurrency ?? 16,
      uploadMemory: opts.uploadMemory ?? 256 * MiB,
    };
    this.defaults = { fileMode: this.o.defaultFileMode, dirMode: this.o.defaultDirMode, uid: this.o.uid, gid: this.o.gid };
    this.attrCache = new TtlCache(this.o.attrTtlMs, this.o.attrCacheEntries);
    this.negCache = new TtlCache(this.o.negativeTtlMs, this.o.attrCacheEntries);
    this.listCache = new TtlCache(this.o.listTtlMs, this.o.listCacheEntries);
    this.pages = new PageCache({ store: this.store, blockSize: this.o.blockSize, maxBytes: this.o.pageCacheBytes, fetchConcurrency: this.o.fetchConcurrency });
    this.budget = new MemoryBudget(this.o.memoryBudget);
    this.metaQueue = new PQueue({ concurrency: Math.max(1, this.o.metaConcurrency) });
    this.uploadBytes = new ByteSemaphore(this.o.uploadMemory);
    const caps = this.store.capabilities;
    this.maxFileSize = Math.min(MAX_OBJECT, caps.maxParts * caps.maxPartSize);
    this.rootEntry = this.implicitDir();
  }

  /** The settings in effect, defaults filled in. */
  get options(): Readonly<Required<Omit<BucketVfsOptions, 'store' | 'logger'>>> {
    return this.o;
  }

  get stats(): BucketVfsStats {
    let dirty = 0;
    let spilled = 0;
    for (const n of this.nodes.values()) {
      if (n.dirty) dirty++;
      if (n.buf?.spilled) spilled++;
    }
    return {
      openFiles: this.nodes.size,
      dirtyFiles: dirty,
      spilledFiles: spilled,
      bufferMemory: this.budget.used,
      bufferMemoryPeak: this.budget.peak,
      pageCacheBytes: this.pages.cachedBytes,
      uploads: this.uploads,
      pageHits: this.pages.stats.hits,
      pageMisses: this.pages.stats.misses,
      pageFetches: this.pages.stats.fetches,
      pageEvictions: this.pages.stats.evictions,
    };
  }

  // =======================================================================================
  // Vfs

  stat(path: string): Promise<FileAttr | null> {
    return this.guarded('stat', async () => {
      checkPath(path);
      return (await this.attrOf(path)) ?? null;
    });
  }

  /**
   * stat() from what is open or cached, without a store call. A path found in a cache
   * passed checkPath when it was put there; one answered absent from the parent's listing
   * is checked here (an invalid one is stat()'s to refuse).
   */
  statNow(path: string): FileAttr | null | undefined {
    const n = this.liveNode(path);
    if (n) return this.nodeAttr(n);
    if (path === '' && this.keys.prefix === '') return this.rootEntry.attr;
    const hit = this.attrCache.get(path);
    if (hit) return hit.attr;
    if (this.negCache.get(path)) return null;
    if (path !== '' && this.listCache.get(parentOf(path))?.entries.has(baseName(path)) === false) {
      try {
        checkPath(path);
      } catch {
        return undefined;
      }
      return null;
    }
    return this.entryNow(path)?.attr;
  }

  /**
   * For a store that answers HEADs on the calling thread (the file store): what is at
   * `path`, fresh from the store, when one HEAD can tell (a file, or else a directory
   * marker) — an entry whose cached attributes expired is then answered without the
   * asynchronous path. Undefined when only a listing could tell (an implicit directory,
   * nothing there), the keys do not fit or the store failed (the asynchronous path
   * reports it).
   */
  private entryNow(path: string): Entry | undefined {
    if (!this.store.headNow || path === '') return undefined;
    let e: Entry | undefined;
    try {
      checkPath(path);
      const dk = this.keys.dirKey(path);
      if (!keyFits(this.store, dk)) return undefined;
      const file = this.store.headNow(this.keys.fileKey(path));
      if (file) e = this.entryOf(file, 'object');
      else {
        const marker = this.store.headNow(dk);
        if (marker) e = this.entryOf(marker, 'dir');
        else this.headsMissed = { path, epoch: this.epoch, at: performance.now() };
      }
    } catch {
      return undefined;
    }
    if (e) this.remember(path, e);
    return e;
  }

  list(path: string): Promise<DirEntry[]> {
    return this.guarded('list', async () => {
      checkPath(path);
      await this.requireDir(path);
      const entries = this.listCache.get(path)?.entries ?? (await this.loadListing(path));
      return this.overlay(path, [...entries.values()].sort((a, b) => compareKeys(a.name, b.name)));
    });
  }

  mkdir(path: string, mode: number, caller: Caller): Promise<FileAttr> {
    return this.guarded('mkdir', async () => {
      checkPath(path);
      if (path === '') throw errno('EEXIST');
      const parent = await this.requireDir(parentOf(path));
      if (await this.attrOf(path)) throw errno('EEXIST');
      this.checkKeyFits(this.keys.dirKey(path));
      const t = nowNs();
      const attrs: StoredAttrs = { ...newObjectOwner(parent, caller, S_IFDIR | (mode & PERM_MASK)), mtime: t, ctime: t, atime: t };
      const epoch = this.epoch;
      const entry = await this.putMarker(path, attrs, new Map(), {});
      // Nothing was below it a moment ago (else it would exist): its listing is known, empty,
      // and kept up to date by our own changes, so that the lookups the kernel sends before
      // every create in it cost no request while the listing is fresh.
      if (this.epoch === epoch + 1) this.listCache.set(path, { entries: new Map(), shadowed: new Set() });
      return entry.attr;
    });
  }

  rmdir(path: string): Promise<void> {
    return this.guarded('rmdir', async () => {
      checkPath(path);
      if (path === '') throw errno('EBUSY');
      const attr = await this.attrOf(path);
      if (!attr) throw errno('ENOENT');
      if (attr.kind !== 'dir') throw errno('ENOTDIR');
      if (!(await this.isEmptyDir(path))) throw errno('ENOTEMPTY');
      await this.store.delete(this.keys.dirKey(path));
      this.changedTree(path);
      this.changed(path, null);
      await this.keepParent(path);
    });
  }

  unlink(path: string): Promise<void> {
    return this.guarded('unlink', async () => {
      checkPath(path);
      const attr = await this.attrOf(path);
      if (!attr) throw errno('ENOENT');
      if (attr.kind === 'dir') throw errno('EISDIR');
      await this.detach(path);
      await this.store.delete(this.keys.fileKey(path));
      this.pages.forget(this.keys.fileKey(path));
      this.fileGone(path);
      await this.keepParent(path);
    });
  }

  rename(from: string, to: string, noReplace: boolean): Promise<void> {
    return this.guarded('rename', async () => {
      checkPath(from);
      checkPath(to);
      if (from === '' || to === '') throw errno('EBUSY');
      const src = await this.attrOf(from);
      if (!src) throw errno('ENOENT');
      await this.requireDir(parentOf(to));
      if (from === to) return;
      const dst = await this.attrOf(to);
      // Linux's order: EEXIST for NOREPLACE, then ancestry, then kinds and emptiness.
      if (dst && noReplace) throw errno('EEXIST');
      if (isBelow(to, from)) throw errno('EINVAL', 'cannot move a directory below itself');
      if (isBelow(from, to)) throw errno('ENOTEMPTY');
      if (dst) {
        if (src.kind === 'dir') {
          if (dst.kind !== 'dir') throw errno('ENOTDIR');
          if (!(await this.isEmptyDir(to))) throw errno('ENOTEMPTY');
        } else if (dst.kind === 'dir') throw errno('EISDIR');
      }
      this.checkKeyFits(src.kind === 'dir' ? this.keys.dirKey(to) : this.keys.fileKey(to));
      if (src.kind === 'dir') await this.renameDir(from, to, dst !== undefined);
      else await this.renameFile(from, to, dst !== undefined);
    });
  }

  symlink(path: string, target: string, caller: Caller): Promise<FileAttr> {
    return this.guarded('symlink', async () => {
      checkPath(path);
      if (target === '') throw errno('ENOENT');
      const body = new TextEncoder().encode(target);
      if (body.length >= PATH_MAX || target.includes('\0')) throw errno('ENAMETOOLONG');
      if (path === '') throw errno('EEXIST');
      const parent = await this.requireDir(parentOf(path));
      if (await this.attrOf(path)) throw errno('EEXIST');
      this.checkKeyFits(this.keys.fileKey(path));
      const t = nowNs();
      const attrs: StoredAttrs = { ...newObjectOwner(parent, caller, S_IFLNK | 0o777), mtime: t, ctime: t, atime: t };
      const key = this.keys.fileKey(path);
      const metadata = writeMetadata(attrs, new Map());
      const r = await this.store.put(key, body, { metadata });
      const entry: Entry = {
        attr: { kind: 'symlink', ...attrs, size: body.length },
        xattrs: new Map(),
        other: {},
        object: { key, etag: r.etag, size: body.length, lastModified: NaN },
        target,
      };
      this.changed(path, entry);
      return entry.attr;
    });
  }

  readlink(path: string): Promise<string> {
    return this.guarded('readlink', async () => {
      checkPath(path);
      if (this.liveNode(path)) throw errno('EINVAL');
      const e = await this.lookup(path);
      if (!e) throw errno('ENOENT');
      if (e.attr.kind !== 'symlink' || !e.object) throw errno('EINVAL');
      if (e.target !== undefined) return e.target;
      const epoch = this.epoch;
      const got = await this.store.get(e.object.key, { range: { offset: 0, length: PATH_MAX } });
      const target = new TextDecoder().decode(got.body);
      if (this.epoch === epoch && got.etag === e.object.etag) this.attrCache.set(path, { ...e, target });
      return target;
    });
  }

  setattr(path: string, changes: AttrChanges): Promise<FileAttr> {
    return this.guarded('setattr', async () => {
      checkPath(path);
      if (changes.size !== undefined) {
        this.checkSize(changes.size);
        const attr = await this.attrOf(path);
        if (!attr) throw errno('ENOENT');
        if (attr.kind === 'dir') throw errno('EISDIR');
        if (attr.kind === 'symlink') throw errno('EINVAL');
        const node = await this.acquire(path);
        try {
          // A file nobody else has open is stored now; otherwise with its handles' flush.
          return await this.resizeNode(node, { ...changes, size: changes.size }, true);
        } finally {
          await this.releaseNode(node);
        }
      }
      return this.updateMetadata(path, (attrs) => applyChanges(attrs, changes, false));
    });
  }

  open(path: string, flags: OpenFlags): Promise<OpenFile> {
    return this.guarded('open', async () => {
      checkPath(path);
      return (await this.openNode(path, flags)).file;
    });
  }

  private async openNode(path: string, flags: OpenFlags): Promise<{ attr: FileAttr; file: Handle }> {
    const node = await this.acquire(path);
    try {
      if (flags.truncate) await node.lock.run(() => this.truncateLocked(node, 0));
    } catch (err) {
      await this.releaseNode(node).catch(() => undefined);
      throw err;
    }
    return { attr: this.nodeAttr(node), file: new Handle(this, node, flags) };
  }

  create(path: string, mode: number, caller: Caller, flags: CreateFlags): Promise<{ attr: FileAttr; file: OpenFile }> {
    return this.guarded('create', async () => {
      checkPath(path);
      if (path === '') throw errno(flags.exclusive ? 'EEXIST' : 'EISDIR');
      const parent = await this.requireDir(parentOf(path));
      const existing = await this.attrOf(path);
      if (!existing) this.checkKeyFits(this.keys.fileKey(path));
      if (!existing && !this.liveNode(path)) {
        const t = nowNs();
        const owner = newObjectOwner(parent, caller, S_IFREG | (mode & PERM_MASK));
        // Written out (not spread): the same shape as acquire()'s, so the stores into a node's
        // attributes (every WRITE) stay on the fast path.
        const node = new FileNode(path, { mode: owner.mode, uid: owner.uid, gid: owner.gid, atime: t, mtime: t, ctime: t }, new Map(), {}, null);
        node.buf = this.newBuffer(0);
        node.dirty = true;
        node.refs = 1;
        this.nodes.set(path, node);
        // Not in the store until its first flush; the node stands in for it meanwhile.
        this.epoch++;
        this.dropLookups();
        this.attrCache.delete(path);
        this.negCache.delete(path);
        return { attr: this.nodeAttr(node), file: new Handle(this, node, flags) };
      }
      if (flags.exclusive) throw errno('EEXIST');
      if (existing?.kind === 'dir') throw errno('EISDIR');
      return this.openNode(path, flags);
    });
  }

  getxattr(path: string, name: string): Promise<Uint8Array> {
    return this.guarded('getxattr', async () => {
      checkPath(path);
      checkXattrName(name);
      const x = await this.xattrsOf(path);
      const v = x.get(name);
      if (!v) throw errno('ENODATA');
      return v.slice();
    });
  }

  setxattr(path: string, name: string, value: Uint8Array, flags: { create: boolean; replace: boolean }): Promise<void> {
    return this.guarded('setxattr', async () => {
      checkPath(path);
      checkXattrName(name);
      if (value.length > XATTR_SIZE_MAX) throw errno('E2BIG');
      const attr = await this.attrOf(path);
      if (!attr) throw errno('ENOENT');
      if (attr.kind === 'symlink') throw errno('EPERM', 'user.* attributes are not allowed on symlinks');
      await this.updateMetadata(path, (attrs, xattrs) => {
        const had = xattrs.has(name);
        if (flags.create && had) throw errno('EEXIST');
        if (flags.replace && !had) throw errno('ENODATA');
        xattrs.set(name, value.slice());
        attrs.ctime = nowNs();
      });
    });
  }

  listxattr(path: string): Promise<string[]> {
    return this.guarded('listxattr', async () => {
      checkPath(path);
      return [...(await this.xattrsOf(path)).keys()].sort();
    });
  }

  removexattr(path: string, name: string): Promise<void> {
    return this.guarded('removexattr', async () => {
      checkPath(path);
      checkXattrName(name);
      await this.updateMetadata(path, (attrs, xattrs) => {
        if (!xattrs.delete(name)) throw errno('ENODATA');
        attrs.ctime = nowNs();
      });
    });
  }

  async statfs(): Promise<StatFs> {
    // An object store has no fixed size: report large constants, as s3fs does.
    return { blockSize: 4096, blocks: 2 ** 40, blocksFree: 2 ** 40, files: 2 ** 32, filesFree: 2 ** 32, nameMax: NAME_MAX };
  }

  sync(): Promise<void> {
    return this.guarded('sync', async () => {
      const nodes = [...this.nodes.values()].filter((n) => n.dirty);
      const results = await Promise.allSettled(nodes.map((n) => this.storeNode(n)));
      const failed = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
      if (failed.length > 0) throw errno('EIO', `sync: ${failed.length} of ${nodes.length} files could not be stored: ${String((failed[0]!.reason as Error).message)}`);
      await this.durable();
    });
  }

  /** Makes what has been stored durable in the store (fsync for a local store): FSYNC and SYNCFS. */
  async durable(): Promise<void> {
    try {
      await this.store.sync();
    } catch (err) {
      throw errno('EIO', `sync: ${err instanceof Error ? err.message : String(err)}`);
    }
  }

  /**
   * New cache lifetimes (a configuration reload, e.g. SIGHUP): they apply at once, to the
   * entries already cached too.
   */
  setTtls(t: { readonly attrTtlMs: number; readonly negativeTtlMs: number; readonly listTtlMs: number }): void {
    this.attrCache.ttlMs = t.attrTtlMs;
    this.negCache.ttlMs = t.negativeTtlMs;
    this.listCache.ttlMs = t.listTtlMs;
  }

  /**
   * New cache bounds (a configuration reload): shrinking evicts the least recently used
   * entries down to them at once, growing lets the caches fill further. Returns what the
   * caches hold afterwards.
   */
  resizeCaches(b: { readonly pageCacheBytes: number; readonly attrCacheEntries: number; readonly listCacheEntries: number }): CacheSizes {
    this.pages.resize(b.pageCacheBytes);
    this.attrCache.resize(b.attrCacheEntries);
    this.negCache.resize(b.attrCacheEntries);
    this.listCache.resize(b.listCacheEntries);
    this.o = { ...this.o, ...b };
    return this.cacheSizes;
  }

  /** What the caches hold and their bounds. */
  get cacheSizes(): CacheSizes {
    return {
      pageBytes: this.pages.cachedBytes, pageMaxBytes: this.pages.maxBytes,
      attrEntries: this.attrCache.size, negativeEntries: this.negCache.size, attrMaxEntries: this.attrCache.maxEntries,
      listEntries: this.listCache.size, listMaxEntries: this.listCache.maxEntries,
    };
  }

  invalidate(path: string): void {
    this.changedTree(path);
    if (path !== '') this.listCache.delete(parentOf(path));
  }

  /**
   * Stores every dirty file and frees buffers; the store stays open (it is the caller's).
   * Rejects (EIO) if something could not be stored — it is dropped regardless. Once: later
   * calls wait for the first.
   */
  close(): Promise<void> {
    return (this.closing ??= this.closeOnce());
  }

  private async closeOnce(): Promise<void> {
    let failure: unknown = null;
    try {
      await this.sync();
    } catch (err) {
      failure = err;
    }
    for (const n of [...this.nodes.values()]) await this.dispose(n, true);
    this.pages.clear();
    this.attrCache.clear();
    this.negCache.clear();
    this.listCache.clear();
    if (failure) throw failure;
  }

  // =======================================================================================
  // Lookups and caches

  private liveNode(path: string): FileNode | undefined {
    const n = this.nodes.get(path);
    return n && !n.unlinked ? n : undefined;
  }

  private nodeAttr(n: FileNode): FileAttr {
    // An open file no name leads to any more has no links (fstat after unlink: st_nlink 0, as Linux).
    // Written out rather than spread from n.attrs: one object shape (attrFromMetadata's key
    // order), no slow-path copies.
    const a = n.attrs;
    const attr: FileAttr = { kind: 'file', mode: a.mode, uid: a.uid, gid: a.gid, size: n.size, mtime: a.mtime, ctime: a.ctime, atime: a.atime };
    return n.unlinked ? { ...attr, nlink: 0 } : attr;
  }

  /** Attributes of what is at `path` (open files included), or undefined. */
  private async attrOf(path: string): Promise<FileAttr | undefined> {
    const n = this.liveNode(path);
    if (n) return this.nodeAttr(n);
    return (await this.lookup(path))?.attr;
  }

  /** The attributes of the directory at `path`; ENOENT, ENOTDIR. */
  private async requireDir(path: string): Promise<FileAttr> {
    const a = await this.attrOf(path);
    if (!a) throw errno('ENOENT');
    if (a.kind !== 'dir') throw errno('ENOTDIR');
    return a;
  }

  /** What the store has at `path` (cached). The root always exists. */
  private async lookup(path: string): Promise<Entry | null> {
    if (path === '' && this.keys.prefix === '') return this.rootEntry;
    const hit = this.attrCache.get(path);
    if (hit) return hit;
    if (this.negCache.get(path)) return null;
    // A fresh listing of the parent knows every name in it.
    if (path !== '' && this.listCache.get(parentOf(path))?.entries.has(baseName(path)) === false) return null;
    const running = this.lookups.get(path);
    if (running) return running;
    const refresh = this.refreshParentFor(path);
    if (refresh) return refresh.then((e) => (e !== undefined ? e : (this.lookups.get(path) ?? this.askFor(path))));
    return this.askFor(path);
  }

  /** Asks the store what is at `path` (shared by concurrent lookups) and caches it. */
  private askFor(path: string): Promise<Entry | null> {
    const epoch = this.epoch;
    const p: Promise<Entry | null> = this.fetchEntry(path)
      .then((e) => {
        if (this.epoch === epoch) this.remember(path, e);
        return e;
      })
      .finally(() => {
        if (this.lookups.get(path) === p) this.lookups.delete(path);
      });
    this.lookups.set(path, p);
    return p;
  }

  /**
   * When the parent's cached listing has expired but is small, loads it again and answers
   * from it: one LIST for every lookup under that directory until it expires again, where
   * asking for the name costs a HEAD of the file, a HEAD of the marker and a LIST (a loop
   * creating files in one directory sends a lookup of each new name first). The listing
   * reuses the cached attributes of objects it shows unchanged, so only a few unknown
   * entries are allowed (each costs a HEAD). Undefined at once when this does not apply;
   * the promise gives undefined when our own changes raced with the listing or it failed
   * (the caller then asks for the name).
   */
  private refreshParentFor(path: string): Promise<Entry | null | undefined> | undefined {
    if (path === '') return undefined;
    const parent = parentOf(path);
    let running = this.refreshes.get(parent);
    if (!running) {
      const stale = this.listCache.peek(parent);
      if (!stale || stale.fresh || stale.value.entries.size > REFRESH_MAX_ENTRIES) return undefined;
      let unknown = 0;
      for (const name of stale.value.entries.keys()) {
        if (!this.attrCache.peek(joinPath(parent, name)) && ++unknown > REFRESH_MAX_UNKNOWN) return undefined;
      }
      const r = { epoch: this.epoch, entries: this.loadListing(parent) };
      void r.entries.finally(() => {
        if (this.refreshes.get(parent) === r) this.refreshes.delete(parent);
      }).catch(() => undefined);
      this.refreshes.set(parent, r);
      running = r;
    }
    const { epoch, entries } = running;
    return entries.then(
      (listed) => {
        if (this.epoch !== epoch) return undefined;
        if (listed.has(baseName(path))) return this.attrCache.get(path) ?? undefined;
        this.remember(path, null);
        return null;
      },
      () => undefined,
    );
  }

  private async fetchEntry(path: string): Promise<Entry | null> {
    const fk = this.keys.fileKey(path);
    const dk = this.keys.dirKey(path);
    if (!keyFits(this.store, dk)) {
      // The directory key does not fit; the file key may (by one byte).
      const file = path !== '' && keyFits(this.store, fk) ? await this.store.head(fk) : null;
      return file ? this.entryOf(file, 'object') : null;
    }
    const missed = this.headsMissed;
    this.headsMissed = null;
    // entryNow has just asked for both and nothing of ours changed since. "Just": an answer
    // that old is one the negative cache could have given (and never older than 50 ms).
    const recent = missed !== null && missed.path === path && missed.epoch === this.epoch && performance.now() - missed.at <= Math.min(HEADS_MISSED_MAX_AGE_MS, this.negCache.ttlMs);
    if (!recent) {
      const [file, marker] = await Promise.all([path === '' ? null : this.store.head(fk), this.store.head(dk)]);
      if (file) return this.entryOf(file, 'object');
      if (marker) return this.entryOf(marker, 'dir');
    }
    if (path === '') return this.implicitDir();
    const page = await this.store.list({ prefix: dk, maxKeys: 1 });
    return page.objects.length > 0 || page.commonPrefixes.length > 0 ? this.implicitDir() : null;
  }

  private entryOf(head: ObjectHead, role: ObjectRole): Entry {
    const meta = readMetadata(head.metadata);
    const attr = attrFromMetadata(role, meta, timeOfDate(head.lastModified), role === 'dir' ? DIR_SIZE : head.size, this.defaults);
    return {
      attr,
      xattrs: meta.xattrs,
      other: meta.other,
      object: { key: head.key, etag: head.etag, size: head.size, lastModified: head.lastModified.getTime() },
    };
  }

  private implicitDir(): Entry {
    const t = this.mountTime;
    return {
      attr: { kind: 'dir', mode: S_IFDIR | (this.o.defaultDirMode & PERM_MASK), uid: this.o.uid, gid: this.o.gid, size: DIR_SIZE, atime: t, mtime: t, ctime: t },
      xattrs: new Map(),
      other: {},
      object: null,
    };
  }

  private remember(path: string, e: Entry | null): void {
    if (e) {
      this.attrCache.set(path, e);
      this.negCache.delete(path);
    } else {
      this.attrCache.delete(path);
      this.negCache.set(path, {});
    }
  }

  /**
   * We changed `path`: `entry` is what is there now (null: nothing; undefined: unknown, ask
   * again). Updates the parent's cached listing in place (drops it when unknown) and stops
   * lookups in flight from caching what they found before the change.
   */
  private changed(path: string, entry: Entry | null | undefined): void {
    this.epoch++;
    this.dropLookups();
    if (entry === undefined) {
      this.attrCache.delete(path);
      this.negCache.delete(path);
    } else this.remember(path, entry);
    if (entry === null) this.listCache.delete(path);
    if (path === '') return;
    const parent = parentOf(path);
    const listing = this.listCache.peek(parent)?.value.entries;
    if (!listing) return;
    const name = baseName(path);
    if (entry === undefined) this.listCache.delete(parent);
    else if (entry === null) listing.delete(name);
    else listing.set(name, { name, attr: entry.attr });
  }

  /**
   * We removed the file at `path` (unlink, renamed away). Keys below `path/` that it hid
   * now make it a directory: only a fresh listing of the parent can tell that there are
   * none (then "no such file" is cached); otherwise the next lookup asks the store.
   */
  private fileGone(path: string): void {
    const listing = this.listCache.get(parentOf(path));
    this.changed(path, listing !== undefined && !listing.shadowed.has(baseName(path)) ? null : undefined);
  }

  /**
   * Lookups in flight are no longer shared with later ones (their answers may predate our
   * change). Map.clear() allocates a new table even when the map is empty, which it is on
   * nearly every change (a create loop made two per file).
   */
  private dropLookups(): void {
    if (this.lookups.size > 0) this.lookups.clear();
  }

  /** We changed everything below `path` (its own entry: see `changed`). */
  private changedTree(path: string): void {
    this.epoch++;
    this.dropLookups();
    this.attrCache.deleteTree(path);
    this.negCache.deleteTree(path);
    this.listCache.deleteTree(path);
  }

  // =======================================================================================
  // Listings

  private async loadListing(path: string): Promise<Map<string, DirEntry>> {
    const epoch = this.epoch;
    const dk = this.keys.dirKey(path);
    const files = new Map<string, ObjectInfo>();
    const dirs = new Set<string>();
    const found = new Map<string, Entry>();
    // A file's HEAD starts as soon as its page of the listing arrives (a file is never
    // hidden by a directory of the same name, so it needs its entry whatever comes later):
    // the HEADs of a large directory overlap the listing of its later pages.
    const asks: Promise<void>[] = [];
    const ask = (name: string, fn: () => Promise<Entry | null>): void => {
      const p = this.metaQueue.add(async () => {
        const e = await fn();
        if (e) found.set(name, e);
      });
      p.catch(() => undefined); // awaited below (or abandoned with the listing's own failure)
      asks.push(p);
    };
    for await (const e of listAll(this.store, { prefix: dk, delimiter: '/' })) {
      if (e.type === 'object') {
        if (e.key === dk) continue;
        const name = e.key.slice(dk.length);
        if (!isValidName(name)) continue;
        files.set(name, e);
        // Files listed with their metadata (the file store) need no request: no queueing.
        if (e.metadata) found.set(name, this.entryOf({ ...e, metadata: e.metadata }, 'object'));
        else ask(name, () => this.fileEntryFromListing(joinPath(path, name), e));
      } else {
        const name = e.prefix.slice(dk.length, -1);
        if (isValidName(name)) dirs.add(name);
      }
    }
    // A file hides a directory of the same name; the listing remembers which it hides.
    const shadowed = new Set<string>();
    for (const name of files.keys()) if (dirs.delete(name)) shadowed.add(name);
    const names = [...files.keys(), ...dirs].sort(compareKeys);
    for (const name of dirs) ask(name, () => this.dirEntryFromListing(joinPath(path, name)));
    await Promise.all(asks);
    const entries = new Map<string, DirEntry>();
    for (const name of names) {
      const e = found.get(name);
      if (!e) continue;
      entries.set(name, { name, attr: e.attr });
      if (this.epoch === epoch) this.remember(joinPath(path, name), e);
    }
    if (this.epoch === epoch) this.listCache.set(path, { entries, shadowed });
    return entries;
  }

  /** A file's entry: the cached one when the listing shows the same object, else a HEAD. */
  private async fileEntryFromListing(child: string, info: ObjectInfo): Promise<Entry | null> {
    // A store that lists metadata (the file store) needs no HEAD.
    if (info.metadata) return this.entryOf({ ...info, metadata: info.metadata }, 'object');
    const c = this.attrCache.peek(child);
    const o = c?.value.object;
    if (c && o && c.value.attr.kind !== 'dir' && o.key === info.key && o.etag === info.etag && o.size === info.size && (c.fresh || o.lastModified === info.lastModified.getTime()))
      return c.value;
    const head = await this.store.head(info.key);
    return head ? this.entryOf(head, 'object') : null;
  }

  private async dirEntryFromListing(child: string): Promise<Entry> {
    const c = this.attrCache.get(child);
    if (c && c.attr.kind === 'dir') return c;
    const dk = this.keys.dirKey(child);
    const marker = keyFits(this.store, dk) ? await this.store.head(dk) : null;
    return marker ? this.entryOf(marker, 'dir') : this.implicitDir();
  }

  /** The listing with open files laid over it (sizes not stored yet, files not stored yet). */
  private overlay(path: string, entries: readonly DirEntry[]): DirEntry[] {
    let mine: Map<string, FileAttr> | null = null;
    for (const n of this.nodes.values()) {
      if (n.unlinked || n.path === '' || parentOf(n.path) !== path) continue;
      (mine ??= new Map()).set(baseName(n.path), this.nodeAttr(n));
    }
    if (!mine) return entries.slice();
    const out: DirEntry[] = [];
    for (const e of entries) {
      const attr = mine.get(e.name);
      if (attr) {
        out.push({ name: e.name, attr });
        mine.delete(e.name);
      } else out.push(e);
    }
    for (const [name, attr] of mine) out.push({ name, attr });
    return out;
  }

  private hasNodesBelow(path: string): boolean {
    for (const n of this.nodes.values()) if (!n.unlinked && isBelow(n.path, path)) return true;
    return false;
  }

  /** No entry (visible or not: keys that are not valid names count too, so that rmdir never orphans them). */
  private async isEmptyDir(path: string): Promise<boolean> {
    if (this.hasNodesBelow(path)) return false;
    const dk = this.keys.dirKey(path);
    const page = await this.store.list({ prefix: dk, maxKeys: 2 });
    return !page.objects.some((o) => o.key !== dk) && page.commonPrefixes.length === 0;
  }

  // =======================================================================================
  // Directory markers and metadata

  private async putMarker(path: string, attrs: StoredAttrs, xattrs: ReadonlyMap<string, Uint8Array>, other: Metadata): Promise<Entry> {
    const key = this.keys.dirKey(path);
    const metadata = writeMetadata(attrs, xattrs, other);
    const r = await this.store.put(key, EMPTY, { metadata, contentType: DIR_CONTENT_TYPE });
    const entry: Entry = {
      attr: { kind: 'dir', ...attrs, size: DIR_SIZE },
      xattrs: new Map(xattrs),
      other: { ...other },
      object: { key, etag: r.etag, size: 0, lastModified: NaN },
    };
    this.changed(path, entry);
    return entry;
  }

  /** After removing `path`: an implicit parent directory that became empty gets a marker, so it does not vanish. */
  private async keepParent(path: string): Promise<void> {
    const parent = parentOf(path);
    if (parent === '') return;
    try {
      const cached = this.attrCache.peek(parent)?.value;
      if (cached?.object) return;
      const dk = this.keys.dirKey(parent);
      const page = await this.store.list({ prefix: dk, maxKeys: 1 });
      if (page.objects.length > 0 || page.commonPrefixes.length > 0) return;
      const a = cached?.attr ?? this.implicitDir().attr;
      await this.putMarker(parent, { mode: a.mode, uid: a.uid, gid: a.gid, mtime: a.mtime, ctime: a.ctime, atime: a.atime }, new Map(), {});
    } catch (err) {
      this.log.warn('could not keep an emptied directory', { path: parent, err });
    }
  }

  private async xattrsOf(path: string): Promise<ReadonlyMap<string, Uint8Array>> {
    const n = this.liveNode(path);
    if (n) return n.xattrs;
    const e = await this.lookup(path);
    if (!e) throw errno('ENOENT');
    return e.xattrs;
  }

  /**
   * Changes attributes and/or xattrs (not the size) of `path`: on an open dirty file in its
   * node (stored with its data); otherwise at once, by a CopyObject of the object onto
   * itself with the new metadata (a PUT of a marker for an implicit directory).
   */
  private async updateMetadata(path: string, fn: (attrs: MutableAttrs, xattrs: Map<string, Uint8Array>) => void): Promise<FileAttr> {
    return this.metaLocks.run(path, async () => {
      const node = this.liveNode(path);
      if (node) return this.updateNodeMetadata(node, fn);
      const e = await this.lookup(path);
      if (!e) throw errno('ENOENT');
      const a = e.attr;
      const attrs: MutableAttrs = { mode: a.mode, uid: a.uid, gid: a.gid, atime: a.atime, mtime: a.mtime, ctime: a.ctime };
      const xattrs = new Map(e.xattrs);
      fn(attrs, xattrs);
      checkMetadataSize(attrs, xattrs, e.other);
      if (path === '' && this.keys.prefix === '') {
        this.rootEntry = { ...e, attr: { ...a, ...attrs }, xattrs };
        return this.rootEntry.attr;
      }
      if (!e.object) return (await this.putMarker(path, attrs, xattrs, e.other)).attr;
      const metadata = writeMetadata(attrs, xattrs, e.other);
      const r = await this.copyObject(e.object.key, e.object.key, e.object.size, metadata);
      const entry: Entry = { ...e, attr: { ...a, ...attrs }, xattrs, object: { ...e.object, etag: r.etag, lastModified: NaN } };
      this.changed(path, entry);
      return entry.attr;
    });
  }

  /** updateMetadata of an open file's node, also of one that was unlinked (then in memory only: nothing is stored for it). */
  private async updateNodeMetadata(node: FileNode, fn: (attrs: MutableAttrs, xattrs: Map<string, Uint8Array>) => void): Promise<FileAttr> {
    return node.lock.run(async () => {
      const attrs = { ...node.attrs };
      const xattrs = new Map(node.xattrs);
      fn(attrs, xattrs);
      checkMetadataSize(attrs, xattrs, node.other);
      if (node.unlinked) {
        node.attrs = attrs;
        node.xattrs = xattrs;
        return this.nodeAttr(node);
      }
      if (!node.dirty && node.base) {
        const metadata = writeMetadata(attrs, xattrs, node.other);
        const r = await this.copyObject(node.base.key, node.base.key, node.base.size, metadata);
        node.base = { ...node.base, etag: r.etag, lastModified: NaN };
      } else node.dirty = true;
      node.attrs = attrs;
      node.xattrs = xattrs;
      if (!node.dirty) this.changed(node.path, this.entryOfNode(node));
      else if (node.refs === 0) await this.storeLocked(node);
      return this.nodeAttr(node);
    });
  }

  /** ENAMETOOLONG for a key the store cannot hold (S3: 1024 bytes; file: 254-byte names), before anything is written. */
  private checkKeyFits(key: string): void {
    if (!keyFits(this.store, key)) throw errno('ENAMETOOLONG', `path too long for the store (${MAX_KEY_BYTES}-byte keys; a file store's names are shorter)`);
  }

  private entryOfNode(n: FileNode): Entry {
    return { attr: this.nodeAttr(n), xattrs: new Map(n.xattrs), other: { ...n.other }, object: n.base };
  }

  // =======================================================================================
  // Rename

  private async renameFile(from: string, to: string, replacing: boolean): Promise<void> {
    const node = this.liveNode(from);
    const release = node ? await node.lock.acquire() : null;
    try {
      if (node) await this.storeLocked(node);
      if (replacing) await this.detach(to);
      const srcKey = this.keys.fileKey(from);
      const dstKey = this.keys.fileKey(to);
      const e = node ? null : await this.lookup(from);
      const size = node ? node.size : (e?.object?.size ?? 0);
      // rename(2) changes the file's ctime: the copy carries the new one (same request).
      const ctime = nowNs();
      const a = node ? node.attrs : e ? { ...e.attr } : null;
      const metadata = a ? writeMetadata({ ...a, ctime }, node ? node.xattrs : e!.xattrs, node ? node.other : e!.other) : undefined;
      const r = await this.copyObject(srcKey, dstKey, size, metadata);
      await this.store.delete(srcKey);
      let moved: Entry | undefined;
      if (node && this.nodes.get(from) === node) {
        this.nodes.delete(from);
        node.path = to;
        this.nodes.set(to, node);
        node.attrs.ctime = ctime;
        if (node.base) node.base = { ...node.base, key: dstKey, etag: r.etag };
        moved = this.entryOfNode(node);
      } else if (e?.object) moved = { ...e, attr: { ...e.attr, ctime }, object: { ...e.object, key: dstKey, etag: r.etag, lastModified: NaN } };
      this.fileGone(from);
      this.changed(to, moved);
      this.pages.forget(srcKey);
    } finally {
      release?.();
    }
    await this.keepParent(from);
  }

  private async renameDir(from: string, to: string, replacing: boolean): Promise<void> {
    // Open files below `from` are stored first (their objects are what moves) and kept
    // from changing until they have moved.
    const below = [...this.nodes.values()].filter((n) => !n.unlinked && isBelow(n.path, from)).sort((a, b) => compareKeys(a.path, b.path));
    const releases: (() => void)[] = [];
    try {
      for (const n of below) releases.push(await n.lock.acquire());
      for (const n of below) await this.storeLocked(n);
      const srcDk = this.keys.dirKey(from);
      const dstDk = this.keys.dirKey(to);
      const objects: { key: string; size: number }[] = [];
      for await (const e of listAll(this.store, { prefix: srcDk })) if (e.type === 'object') objects.push({ key: e.key, size: e.size });
      for (const o of objects) this.checkKeyFits(dstDk + o.key.slice(srcDk.length));
      if (replacing && !objects.some((o) => o.key === srcDk)) await this.store.delete(dstDk);
      // The directory's marker gets the new ctime (rename(2) changes it) in the same copy.
      const marker = await this.lookup(from);
      const markerMeta = marker?.object?.key === srcDk ? writeMetadata({ ...marker.attr, ctime: nowNs() }, marker.xattrs, marker.other) : undefined;
      const etags = new Map<string, string>();
      await forEachLimit(objects, this.o.metaConcurrency, async (o) => {
        const dst = dstDk + o.key.slice(srcDk.length);
        etags.set(dst, (await this.copyObject(o.key, dst, o.size, o.key === srcDk ? markerMeta : undefined)).etag);
      });
      await this.store.deleteMany(objects.map((o) => o.key));
      for (const n of below) {
        if (this.nodes.get(n.path) !== n) continue;
        this.nodes.delete(n.path);
        n.path = rebase(n.path, from, to);
        this.nodes.set(n.path, n);
        const key = this.keys.fileKey(n.path);
        if (n.base) n.base = { ...n.base, key, etag: etags.get(key) ?? n.base.etag };
      }
      for (const o of objects) this.pages.forget(o.key);
    } finally {
      for (const r of releases) r();
      this.changedTree(from);
      this.changed(from, null);
      this.changedTree(to);
      this.changed(to, undefined);
    }
    await this.keepParent(from);
  }

  /**
   * Server-side copy (with `metadata`: replacing it, also onto itself). Objects over the
   * store's copy limit (5 GiB on S3) are streamed through us as a multipart upload.
   */
  private async copyObject(src: string, dst: string, size: number, metadata?: Metadata): Promise<PutResult> {
    try {
      return await this.copyObjectOnce(src, dst, size, metadata);
    } finally {
      // Our page cache must not trust the ETag of what we wrote (s3rver keeps a stale one).
      if (src !== dst) this.pages.forget(dst);
    }
  }

  private async copyObjectOnce(src: string, dst: string, size: number, metadata?: Metadata): Promise<PutResult> {
    if (size <= this.store.capabilities.maxPartSize) return this.store.copy(src, dst, metadata ? { metadata } : {});
    const head = await this.store.head(src);
    if (!head) throw new StoreError('ENOENT', `copy: no such key: ${src}`, { op: 'copy', key: src });
    const source = {
      size: head.size,
      read: async (offset: number, target: Uint8Array): Promise<number> => {
        const r = await this.store.getInto(src, offset, target);
        if (r.etag !== head.etag) throw new StoreError('EIO', `copy: ${src} changed while being copied`, { op: 'copy', key: src });
        return r.bytesRead;
      },
    };
    return putLarge(this.store, dst, source, { metadata: metadata ?? head.metadata, contentType: head.contentType, partSize: this.o.partSize, concurrency: this.o.uploadConcurrency });
  }

  // =======================================================================================
  // Open files

  private newBuffer(baseSize: number): WriteBuffer {
    return new WriteBuffer({ budget: this.budget, spillThreshold: this.o.spillThreshold, tempDir: this.o.tempDir }, baseSize);
  }

  /** The node of a file (shared by every handle), with one more reference. */
  private async acquire(path: string): Promise<FileNode> {
    let n = this.liveNode(path);
    if (!n) {
      let pending = this.acquiring.get(path);
      if (!pending) {
        pending = (async () => {
          const e = await this.lookup(path);
          if (!e) throw errno('ENOENT');
          if (e.attr.kind === 'dir') throw errno('EISDIR');
          if (e.attr.kind === 'symlink') throw errno('ELOOP');
          const again = this.liveNode(path);
          if (again) return again;
          const a = e.attr;
          const node = new FileNode(path, { mode: a.mode, uid: a.uid, gid: a.gid, atime: a.atime, mtime: a.mtime, ctime: a.ctime }, new Map(e.xattrs), { ...e.other }, e.object);
          this.nodes.set(path, node);
          return node;
        })().finally(() => this.acquiring.delete(path));
        this.acquiring.set(path, pending);
      }
      n = await pending;
    }
    n.refs++;
    return n;
  }

  /** Drops one reference; the last one stores what is dirty and frees the node. */
  async releaseNode(n: FileNode): Promise<void> {
    n.refs = Math.max(0, n.refs - 1);
    if (n.refs > 0) return;
    try {
      await this.storeNode(n);
    } finally {
      if (n.refs === 0 && (!n.dirty || n.unlinked)) await this.dispose(n, false);
    }
  }

  private async dispose(n: FileNode, force: boolean): Promise<void> {
    if (!force && n.refs > 0) return;
    if (this.nodes.get(n.path) === n) this.nodes.delete(n.path);
    const buf = n.buf;
    n.buf = null;
    await buf?.close();
  }

  /** Created by this file system, never stored, empty, and open through one handle only. */
  isUnstoredEmpty(n: FileNode): boolean {
    return n.dirty && n.base === null && n.size === 0 && n.refs === 1;
  }

  /** Stores a dirty node; EIO (with the cause in the message) when that fails. */
  async storeNode(n: FileNode): Promise<void> {
    if (!n.dirty || n.unlinked) return;
    await n.lock.run(() => this.storeLocked(n));
  }

  private async storeLocked(n: FileNode): Promise<void> {
    if (!n.dirty || n.unlinked) return;
    try {
      const buf = (n.buf ??= this.newBuffer(n.base?.size ?? 0));
      const key = this.keys.fileKey(n.path);
      const size = buf.size;
      const single = size <= this.o.multipartThreshold;
      // Parts of a multipart upload that are unchanged bytes of the object being replaced
      // (an append, a change past some offset) are copied in the store, not fetched and sent.
      const base = n.base;
      const copyable = !single && this.partCopy && base !== null && base.key === key ? this.unchangedParts(buf, base, size) : new Map<number, number>();
      await this.materialize(n, buf, copyable);
      const metadata = writeMetadata(n.attrs, n.xattrs, n.other);
      // Memory the upload allocates: a copy of a spilled file for one PUT, or part buffers.
      const cost = single ? (buf.inMemory ? 0 : size) : Math.min(size, choosePartSize(size, this.store.capabilities, this.o.partSize) * this.o.uploadConcurrency);
      const release = cost > 0 ? await this.uploadBytes.acquire(cost) : null;
      let r: PutResult;
      try {
        if (single) r = await this.store.put(key, await buf.contents(), { metadata });
        else {
          const source: PartSource = {
            size,
            read: async (offset: number, target: Uint8Array): Promise<number> => {
              // A part meant to be copied whose copy was refused: the old object's bytes.
              if (copyable.get(offset) === target.length) this.checkBaseRead(base!, offset, target.length, await this.store.getInto(base!.key, offset, target));
              else await buf.readLocal(offset, target);
              return target.length;
            },
            copySource: (offset, length) => (copyable.get(offset) === length ? { key: base!.key, offset, length, ifMatch: base!.etag } : null),
            copyRefused: (err) => {
              if (err.code !== 'ENOTSUP' || !this.partCopy) return;
              this.partCopy = false;
              this.log.info('the store does not copy parts (UploadPartCopy): changed big files are uploaded whole', { store: this.store.description });
            },
          };
          r = await putLarge(this.store, key, source, { metadata, partSize: this.o.partSize, concurrency: this.o.uploadConcurrency });
        }
      } finally {
        release?.();
        this.pages.forget(key);
      }
      this.uploads++;
      n.base = { key, etag: r.etag, size, lastModified: NaN };
      buf.baseLimit = size;
      n.dirty = false;
      this.changed(n.path, this.entryOfNode(n));
    } catch (err) {
      this.log.warn('upload failed; the data stays buffered', { path: n.path, err });
      if (err instanceof ErrnoError && !(err instanceof StoreError) && LOCAL_ERRNOS_KEPT.has(err.code)) throw err;
      throw errno('EIO', `storing ${n.path}: ${err instanceof Error ? err.message : String(err)}`);
    }
  }

  /**
   * The parts (start → length) of a multipart upload of `size` bytes whose bytes are all
   * the stored object's (`base`) at the same offsets, none written since.
   */
  private unchangedParts(buf: WriteBuffer, base: StoredVersion, size: number): Map<number, number> {
    const part = choosePartSize(size, this.store.capabilities, this.o.partSize);
    const limit = Math.min(base.size, buf.baseLimit);
    const out = new Map<number, number>();
    for (let s = 0; s < size; s += part) {
      const e = Math.min(size, s + part);
      if (e > limit) break;
      if (buf.extents.present(s, e).length === 0) out.set(s, e - s);
    }
    return out;
  }

  /** Fetches the bytes of the stored object the buffer still relies on (but those of the parts in `skip`, start → length). */
  private async materialize(n: FileNode, buf: WriteBuffer, skip: ReadonlyMap<number, number> = new Map()): Promise<void> {
    const base = n.base;
    if (!base) {
      buf.baseLimit = 0;
      return;
    }
    const bs = this.o.blockSize;
    const pieces: [number, number][] = [];
    for (const [s, e] of subtractRanges(buf.baseGaps(), skip)) {
      for (let p = s; p < e; ) {
        const q = Math.min(e, (Math.floor(p / bs) + 1) * bs);
        pieces.push([p, q]);
        p = q;
      }
    }
    if (pieces.length === 0) return;
    const v: ObjectVersion = { key: base.key, etag: base.etag, size: base.size };
    let changed = false;
    await forEachLimit(pieces, this.o.fetchConcurrency, async ([s, e]) => {
      const block = Math.floor(s / bs);
      const cached = this.pages.peek(v, block);
      const data = new Uint8Array(e - s);
      if (cached) data.set(cached.subarray(s - block * bs, Math.min(cached.length, e - block * bs)));
      else {
        const r = await this.store.getInto(base.key, s, data);
        if (r.etag !== base.etag) changed = true;
        else this.checkBaseRead(base, s, data.length, r);
      }
      await buf.fill(s, data);
    });
    if (changed) this.log.warn('object changed by someone else while open for writing; unwritten ranges come from the new version', { path: n.path });
  }

  /**
   * The stored object answered fewer bytes than it holds at `offset` while its ETag says it
   * is the same version: a broken store. Storing the file now would put zeros where those
   * bytes were, so the flush fails (EIO) and the node stays dirty instead.
   */
  private checkBaseRead(base: { readonly key: string; readonly etag: string; readonly size: number }, offset: number, length: number, r: { readonly etag: string; readonly bytesRead: number }): void {
    const expected = Math.min(length, Math.max(0, base.size - offset));
    if (r.etag === base.etag && r.bytesRead < expected) {
      throw new StoreError('EIO', `get: ${base.key} (ETag ${base.etag}) gave ${r.bytesRead} of its ${expected} bytes at ${offset}`, { op: 'get', key: base.key });
    }
  }

  /** EINVAL / EFBIG for a file size we cannot have. */
  private checkSize(size: number): void {
    if (!Number.isSafeInteger(size) || size < 0) throw errno('EINVAL');
    if (size > this.maxFileSize) throw errno('EFBIG');
  }

  /** SETATTR with a size on a file's node; `storeIfAlone`: store it at once if ours is the only reference (nobody has it open). */
  private async resizeNode(node: FileNode, changes: AttrChanges & { readonly size: number }, storeIfAlone: boolean): Promise<FileAttr> {
    await node.lock.run(async () => {
      await this.truncateLocked(node, changes.size);
      applyChanges(node.attrs, changes, true);
      if (storeIfAlone && node.refs === 1) await this.storeLocked(node);
    });
    return this.nodeAttr(node);
  }

  /** SETATTR through an open handle (OpenFile.setattr): acts on the node, wherever it is, unlinked included. */
  async setattrNode(node: FileNode, changes: AttrChanges): Promise<FileAttr> {
    if (changes.size !== undefined) {
      this.checkSize(changes.size);
      return this.resizeNode(node, { ...changes, size: changes.size }, false);
    }
    const fn = (attrs: MutableAttrs): void => applyChanges(attrs, changes, false);
    if (node.unlinked) return this.updateNodeMetadata(node, fn);
    // The same lock as changes by path, so the two never interleave on one object.
    return this.metaLocks.run(node.path, () => this.updateNodeMetadata(node, fn));
  }

  /** Truncates or extends (under the node's lock). */
  private async truncateLocked(n: FileNode, size: number): Promise<void> {
    const buf = (n.buf ??= this.newBuffer(n.base?.size ?? 0));
    await buf.truncate(size);
    n.dirty = true;
    const t = nowNs();
    n.attrs.mtime = t;
    n.attrs.ctime = t;
  }

  /** Keeps an open file readable by its handles and out of the namespace (unlink, rename over it). */
  private async detach(path: string): Promise<void> {
    const n = this.nodes.get(path);
    if (!n) return;
    await n.lock.run(async () => {
      n.unlinked = true;
      if (this.nodes.get(path) === n) this.nodes.delete(path);
      if (n.refs === 0) {
        const buf = n.buf;
        n.buf = null;
        await buf?.close();
        return;
      }
      try {
        const buf = (n.buf ??= this.newBuffer(n.base?.size ?? 0));
        await this.materialize(n, buf);
      } catch (err) {
        this.log.warn('could not keep the content of a removed open file', { path, err });
      }
    });
  }

  async writeNode(n: FileNode, offset: number, data: Uint8Array): Promise<number> {
    if (!Number.isSafeInteger(offset) || offset < 0) throw errno('EINVAL');
    if (offset + data.length > this.maxFileSize) throw errno('EFBIG');
    if (data.length === 0) return 0;
    await n.lock.run(async () => {
      const buf = (n.buf ??= this.newBuffer(n.base?.size ?? 0));
      await buf.write(offset, data);
      n.dirty = true;
      const t = nowNs();
      n.attrs.mtime = t;
      n.attrs.ctime = t;
    });
    return data.length;
  }

  async allocateNode(n: FileNode, offset: number, length: number): Promise<void> {
    if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length <= 0) throw errno('EINVAL');
    const end = offset + length;
    if (end > this.maxFileSize) throw errno('EFBIG');
    await n.lock.run(async () => {
      if (end <= n.size) return;
      const buf = (n.buf ??= this.newBuffer(n.base?.size ?? 0));
      await buf.truncate(end);
      n.dirty = true;
      n.attrs.ctime = nowNs();
    });
  }

  /**
   * OpenFile.readNow: what readOnce would give from the page cache, when the page cache
   * holds all of it (a view of the block for a range inside one), or null. For a store
   * read over the network; the file store reads in place instead (readNodeInto).
   */
  readNodeNow(n: FileNode, offset: number, length: number, h: Handle): Uint8Array | null {
    const base = n.base;
    if (n.buf || !base || this.store.readIntoSync || !Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0) return null;
    if (offset >= base.size || length === 0) return EMPTY;
    const v: ObjectVersion = { key: base.key, etag: base.etag, size: base.size };
    const data = this.pages.cachedView(v, offset, length);
    if (data !== null) this.readAhead(h, v, offset, data.length);
    return data;
  }

  /**
   * Handle.backingFile (FUSE passthrough): a memfd copy of the node's stored version when
   * the page cache holds all of it and nothing is buffered, else null.
   */
  async backingFileOf(n: FileNode, maxBytes: number): Promise<{ fd: number; bytes: number } | null> {
    const base = n.base;
    if (n.buf || n.dirty || !base || base.size === 0 || base.size > maxBytes) return null;
    const v: ObjectVersion = { key: base.key, etag: base.etag, size: base.size };
    const blocks = this.pages.cachedBlocks(v);
    return blocks === null ? null : { fd: await copyToMemfd(blocks, v.size), bytes: v.size };
  }

  /**
   * A read straight into the caller's buffers, for a store that reads on the calling
   * thread (the file store: its files are in the kernel's page cache, so ours is skipped).
   * null when it does not apply: a file with buffered writes, another store, a version that
   * changed (read() then looks it up again).
   */
  readNodeInto(n: FileNode, offset: number, length: number, targets: readonly Uint8Array[], h: Handle): number | null {
    const base = n.base;
    if (n.buf || !base || !this.store.readIntoSync || !Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0) return null;
    if (offset >= base.size || length === 0) return 0;
    try {
      const r = this.readerOf(n, h);
      if (r !== undefined) return r === null ? null : r.readIntoSync(offset, Math.min(length, base.size - offset), targets);
      return this.store.readIntoSync(base.key, base.etag, offset, Math.min(length, base.size - offset), targets);
    } catch (err) {
      if (err instanceof StoreError && (err.code === 'ESTALE' || err.code === 'ENOENT') && !err.missingContainer) return null;
      throw this.fsError('read', err);
    }
  }

  /**
   * readNodeInto's asynchronous form for large reads (OpenFile.readIntoAsync): false when
   * it does not apply (as readNodeInto's null, or a read below the store's
   * asyncReadMinBytes), the caller then reads synchronously.
   */
  readNodeAsync(n: FileNode, offset: number, length: number, targets: readonly Segment[], h: Handle, done: (result: number) => void): boolean {
    const base = n.base;
    if (n.buf || !base || !Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || offset >= base.size) return false;
    if (Math.min(length, base.size - offset) < (this.store.asyncReadMinBytes ?? Infinity)) return false;
    let r: ObjectReader | null | undefined;
    try {
      r = this.readerOf(n, h);
    } catch {
      return false; // readNodeInto meets the same error and reports it
    }
    return r ? r.readAsync(offset, Math.min(length, base.size - offset), targets, done) : false;
  }

  /**
   * The handle's reader of its node's stored version (ObjectStore.openReader), opened on
   * first use and replaced when the version changed; null when the store no longer has
   * that version (read() then learns the new one), undefined when the store has no readers.
   * Throws what opening throws, ESTALE/ENOENT aside.
   */
  private readerOf(n: FileNode, h: Handle): ObjectReader | null | undefined {
    const base = n.base!;
    if (!this.store.openReader) return undefined;
    const held = h.reader;
    if (held !== null) {
      if (held.key === base.key && held.etag === base.etag && held.current()) return held;
      held.close();
      h.reader = null;
    }
    try {
      h.reader = this.store.openReader(base.key, base.etag);
    } catch (err) {
      if (err instanceof StoreError && (err.code === 'ESTALE' || err.code === 'ENOENT') && !err.missingContainer) return null;
      throw err;
    }
    return h.reader;
  }

  async readNode(n: FileNode, offset: number, length: number, h: Handle): Promise<Uint8Array> {
    if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0) throw errno('EINVAL');
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.readOnce(n, offset, length, h);
      } catch (err) {
        if (!(err instanceof StaleVersionError) || attempt >= 2) throw err;
        await this.refreshBase(n);
      }
    }
  }

  private async readOnce(n: FileNode, offset: number, length: number, h: Handle): Promise<Uint8Array> {
    const size = n.size;
    if (offset >= size || length === 0) return EMPTY;
    const len = Math.min(length, size - offset);
    const buf = n.buf;
    const base = n.base;
    const v: ObjectVersion | null = base ? { key: base.key, etag: base.etag, size: base.size } : null;
    if (!buf) {
      if (!v) return new Uint8Array(len);
      // Straight from the page cache (a view of the block when the range lies in one);
      // read-ahead starts before waiting for the demand fetch.
      const data = this.pages.view(v, offset, len);
      this.readAhead(h, v, offset, len);
      return data;
    }
    const out = new Uint8Array(len);
    const parts: Promise<unknown>[] = [];
    for (const [s, e] of buf.extents.present(offset, offset + len)) parts.push(buf.readLocal(s, out.subarray(s - offset, e - offset)));
    if (v) for (const [s, e] of buf.baseGaps(offset, offset + len)) parts.push(this.pages.read(v, s, out.subarray(s - offset, e - offset)));
    const results = await Promise.allSettled(parts);
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
    return out;
  }

  /**
   * Read-ahead of a sequential reader: a window that doubles with every sequential read up
   * to `readAheadBytes` (at most a quarter of the page cache, so that read-ahead does not
   * evict what the reader has yet to read), refilled once less than half of it is left
   * ahead of the reader, so that it is fetched in long runs (one GET per run of blocks).
   */
  private readAhead(h: Handle, v: ObjectVersion, offset: number, len: number): void {
    const max = Math.min(this.o.readAheadBytes, Math.floor(this.o.pageCacheBytes / 4));
    if (max <= 0) return;
    const end = offset + len;
    // The kernel keeps several READs of one reader in flight: they may arrive a little out of order.
    const sequential = Math.abs(offset - h.nextOffset) <= SEQUENTIAL_SLACK;
    h.nextOffset = sequential ? Math.max(h.nextOffset, end) : end;
    if (!sequential) {
      h.window = 0;
      h.ahead = 0;
      return;
    }
    h.window = Math.min(max, Math.max(h.window * 2, 4 * this.o.blockSize));
    const from = Math.max(h.ahead, end);
    const to = end + h.window;
    if (to - from < h.window / 2) return;
    this.pages.prefetch(v, from, to - from);
    h.ahead = to;
  }

  /** The stored object changed under a reader: learn its new version. */
  private async refreshBase(n: FileNode): Promise<void> {
    await n.lock.run(async () => {
      const base = n.base;
      if (!base) return;
      const h = await this.store.head(base.key);
      n.base = h ? { key: base.key, etag: h.etag, size: h.size, lastModified: h.lastModified.getTime() } : null;
      if (n.buf) n.buf.baseLimit = Math.min(n.buf.baseLimit, h?.size ?? 0);
      if (!n.unlinked) this.changed(n.path, undefined);
    });
  }

  nodeAttrOf(n: FileNode): FileAttr {
    return this.nodeAttr(n);
  }

  // =======================================================================================
  // Errors

  /** @internal Runs `fn`, turning whatever it throws into an errno a file system returns. */
  async guarded<T>(op: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      throw this.fsError(op, err);
    }
  }

  private fsError(op: string, err: unknown): ErrnoError {
    if (err instanceof StoreError) {
      if (STORE_ERRNOS_KEPT.has(err.code)) return err;
      this.log.warn('store error', { op, err });
      return errno('EIO', `${op}: ${err.message}`);
    }
    if (err instanceof ErrnoError) return err;
    const code = (err as { code?: unknown } | null)?.code;
    if (typeof code === 'string' && LOCAL_ERRNOS_KEPT.has(code)) return errno(code as ErrnoName, `${op}: ${String((err as Error).message)}`);
    this.log.warn('unexpected error', { op, err });
    return errno('EIO', `${op}: ${err instanceof Error ? err.message : String(err)}`);
  }
}

/** How long the HEADs entryNow found nothing with stand for the asynchronous lookup after it. */
const HEADS_MISSED_MAX_AGE_MS = 50;

/** One open(2)/create(2) of a file. */
class Handle implements OpenFile {
  /** Read-ahead state: where a sequential reader reads next, and how far ahead we fetch. */
  nextOffset = 0;
  window = 0;
  /** Read-ahead has been started up to here. */
  ahead = 0;
  /** The stored version held open for in-place reads (BucketVfs.readerOf), closed at release. */
  reader: ObjectReader | null = null;
  private released = false;

  constructor(
    private readonly vfs: BucketVfs,
    private readonly node: FileNode,
    private readonly flags: OpenFlags,
  ) {}

  private check(): void {
    if (this.released) throw errno('EBADF');
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    this.check();
    return this.vfs.guarded('read', () => this.vfs.readNode(this.node, offset, length, this));
  }

  readInto(offset: number, length: number, targets: readonly Uint8Array[]): number | null {
    if (this.released) return null; // read() reports EBADF
    return this.vfs.readNodeInto(this.node, offset, length, targets, this);
  }

  readNow(offset: number, length: number): Uint8Array | null {
    if (this.released) return null;
    return this.vfs.readNodeNow(this.node, offset, length, this);
  }

  readIntoAsync(offset: number, length: number, targets: readonly Segment[], done: (result: number) => void): boolean {
    if (this.released) return false;
    return this.vfs.readNodeAsync(this.node, offset, length, targets, this, done);
  }

  async write(offset: number, data: Uint8Array): Promise<number> {
    this.check();
    if (!this.flags.write) throw errno('EBADF');
    return this.vfs.guarded('write', () => this.vfs.writeNode(this.node, offset, data));
  }

  async attr(): Promise<FileAttr> {
    this.check();
    return this.vfs.nodeAttrOf(this.node);
  }

  async flush(): Promise<void> {
    this.check();
    // A file created here, never stored and still empty, behind this handle alone: a FLUSH
    // has no written byte to keep, and storing would PUT an empty object only to replace
    // it — `echo x > f` closes a dup of its descriptor before it writes. RELEASE, an fsync,
    // a sync or the next FLUSH after a write stores it.
    if (this.vfs.isUnstoredEmpty(this.node)) return;
    await this.vfs.storeNode(this.node);
  }

  async fsync(_datasync: boolean): Promise<void> {
    this.check();
    await this.vfs.storeNode(this.node);
    await this.vfs.durable();
  }

  async allocate(offset: number, length: number): Promise<void> {
    this.check();
    if (!this.flags.write) throw errno('EBADF');
    return this.vfs.guarded('allocate', () => this.vfs.allocateNode(this.node, offset, length));
  }

  async setattr(changes: AttrChanges): Promise<FileAttr> {
    this.check();
    return this.vfs.guarded('setattr', () => this.vfs.setattrNode(this.node, changes));
  }

  async backingFile(maxBytes: number): Promise<{ fd: number; bytes: number } | null> {
    if (this.released || this.flags.write) return null;
    return this.vfs.backingFileOf(this.node, maxBytes);
  }

  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    // Closed once the reads still in flight on it completed (FileObjectReader).
    this.reader?.close();
    this.reader = null;
    await this.vfs.releaseNode(this.node);
  }
}

/** Whether `store` can hold `key`: S3's 1024 bytes, and what the store itself adds (a file store's segment limit). */
function keyFits(store: ObjectStore, key: string): boolean {
  // At most 3 UTF-8 bytes per UTF-16 unit: a short key needs no byte count (asked on every create).
  return (key.length * 3 <= MAX_KEY_BYTES || Buffer.byteLength(key, 'utf8') <= MAX_KEY_BYTES) && (store.keyFits?.(key) ?? true);
}

/** `ranges` (sorted, disjoint [start, end) pairs) less the ranges of `cut` (start → length). */
function subtractRanges(ranges: ReadonlyArray<readonly [number, number]>, cut: ReadonlyMap<number, number>): Array<[number, number]> {
  if (cut.size === 0) return ranges.map(([s, e]) => [s, e]);
  const holes = [...cut].map(([s, len]) => [s, s + len] as const).sort((a, b) => a[0] - b[0]);
  const out: Array<[number, number]> = [];
  for (const [s0, e] of ranges) {
    let s = s0;
    for (const [hs, he] of holes) {
      if (he <= s || hs >= e) continue;
      if (hs > s) out.push([s, hs]);
      s = Math.max(s, he);
    }
    if (s < e) out.push([s, e]);
  }
  return out;
}

function checkXattrName(name: string): void {
  if (!name.startsWith(USER_XATTR_PREFIX)) throw errno('EOPNOTSUPP', `only ${USER_XATTR_PREFIX}* extended attributes are supported`);
  if (name.length === USER_XATTR_PREFIX.length || name.includes('\0')) throw errno('EINVAL');
  if (Buffer.byteLength(name, 'utf8') > NAME_MAX) throw errno('ERANGE');
}

function checkMetadataSize(attrs: StoredAttrs, xattrs: ReadonlyMap<string, Uint8Array>, other: Metadata): void {
  if (metadataBytes(writeMetadata(attrs, xattrs, other)) > MAX_METADATA_BYTES) throw errno('ENOSPC', `metadata would exceed the store's ${MAX_METADATA_BYTES}-byte limit`);
}

/** Applies SETATTR changes (not the size itself) to `attrs`; ctime becomes now unless given. */
function applyChanges(attrs: MutableAttrs, c: AttrChanges, sizeChanged: boolean): void {
  const t = nowNs();
  if (c.mode !== undefined) attrs.mode = (attrs.mode & S_IFMT) | (c.mode & PERM_MASK);
  if (c.uid !== undefined) attrs.uid = c.uid;
  if (c.gid !== undefined) attrs.gid = c.gid;
  if (c.atime !== undefined) attrs.atime = c.atime === 'now' ? t : c.atime;
  if (c.mtime !== undefined) attrs.mtime = c.mtime === 'now' ? t : c.mtime;
  else if (sizeChanged) attrs.mtime = t;
  attrs.ctime = c.ctime ?? t;
}
