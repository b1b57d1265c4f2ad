// The file-system trait the FUSE engine drives (as virtiofsd's FileSystem trait or
// fuse-backend-rs's). It is path-based: the engine owns inode numbers, lookup counts and
// handles (src/fuse/), and turns every request into calls on paths; implementations (the
// S3 mapping in src/backends/, an in-memory one for tests) never see a nodeid.
//
// Paths: '' is the root; otherwise segments joined by '/', each a valid POSIX name (the
// engine has already rejected '', '.', '..', '/', NUL and names over 255 bytes).
//
// Identity: the Vfs has no inode numbers or generations; the engine owns them
// (src/fuse/inodes.ts). A node id stands for (path, kind) while the kernel holds it: it
// follows renames made through the engine, is detached by unlink or by a rename over it
// (then only its open handles reach the file), and a lookup that finds another kind at the
// path gets a new node id. An object replaced at its path by another of the same kind
// behind the engine's back (another writer) keeps the node id: the kernel sees new
// attributes and, once its caches time out, the new content. Generations are the
// engine's session counter (bumped at every INIT), so nodeid:generation never repeats;
// EXPORT_SUPPORT is not offered, so the kernel never asks for a node by number alone.
//
// Life cycle: the owner creates the Vfs and hands it to a transport; close() is called once,
// by the transport's shutdown (FuseServer.close), after the last request.
//
// Errors: implementations throw ErrnoError (src/util/errors.ts) with the errno Linux file
// systems return for the same case (ENOENT, EEXIST, ENOTDIR, EISDIR, ENOTEMPTY, EXDEV,
// EINVAL, EIO, ENODATA for a missing xattr, ERANGE, EROFS, ENOSPC, EFBIG ...); anything
// else reaching the engine is answered with EIO.

import type { Segment } from '../virtio/memory.js';

/** Nanoseconds since the epoch. */
export type TimeNs = bigint;

export type FileKind = 'file' | 'dir' | 'symlink';

export interface FileAttr {
  readonly kind: FileKind;
  /** Full st_mode: S_IFREG/S_IFDIR/S_IFLNK plus permission bits (and setuid/setgid/sticky). */
  readonly mode: number;
  readonly uid: number;
  readonly gid: number;
  /** Bytes (for a symlink: the target's length). Includes writes not yet stored. */
  readonly size: number;
  readonly atime: TimeNs;
  readonly mtime: TimeNs;
  readonly ctime: TimeNs;
  /** st_nlink; absent: 1 (link counts are unknown in an object store). 0 for an open file that was unlinked. */
  readonly nlink?: number;
}

export interface DirEntry {
  readonly name: string;
  readonly attr: FileAttr;
}

/** What SETATTR changes; absent fields stay as they are. 'now' is the server's clock. */
export interface AttrChanges {
  /** Permission bits only (07777, setuid/setgid/sticky included): the file type never changes. */
  readonly mode?: number;
  readonly uid?: number;
  readonly gid?: number;
  /** Truncate or extend (zeros). */
  readonly size?: number;
  readonly atime?: TimeNs | 'now';
  readonly mtime?: TimeNs | 'now';
  readonly ctime?: TimeNs;
}

/** Who asks (from the FUSE header): used for the owner of new files. */
export interface Caller {
  readonly uid: number;
  readonly gid: number;
  readonly pid: number;
}

/** open(2) flags as the engine decoded them (O_ACCMODE, O_TRUNC, O_APPEND). */
export interface OpenFlags {
  readonly read: boolean;
  readonly write: boolean;
  /** O_TRUNC of a writable open (with ATOMIC_O_TRUNC the engine passes it here rather than as a SETATTR). */
  readonly truncate: boolean;
  /** O_APPEND: the engine sends every write at the end of file. */
  readonly append: boolean;
}

/** open(2) flags of a CREATE: O_EXCL too. */
export interface CreateFlags extends OpenFlags {
  /** O_EXCL: EEXIST when something is at the path. */
  readonly exclusive: boolean;
}

/**
 * An open file. Writes are buffered by the implementation and made durable by flush()/
 * fsync()/release(); fsync() resolves only once the data is in the store. An upload
 * failure is reported by the flush/fsync/release that would have stored it.
 */
export interface OpenFile {
  /** Reads up to `length` bytes at `offset` (short only at end of file). */
  read(offset: number, length: number): Promise<Uint8Array>;
  /**
   * Optional, synchronous: reads up to `length` bytes at `offset` straight into `targets`
   * (filled in order; their lengths add up to at least `length`) and returns how many
   * (short only at end of file); null when this file cannot be read that way now (the
   * engine then calls read()). Synchronous so that nothing can happen to the reply buffers
   * (an INTERRUPT answered, the chain given back) while they are written.
   */
  readInto?(offset: number, length: number, targets: readonly Uint8Array[]): number | null;
  /**
   * Optional, synchronous: the bytes read() would give when they are at hand (cached), or
   * null. Possibly a view of a cache's memory: to be sent at once, never written to or kept.
   */
  readNow?(offset: number, length: number): Uint8Array | null;
  /**
   * Optional, the asynchronous form of readInto for large reads: starts reading up to
   * `length` bytes at `offset` straight into `targets` (host memory by address, filled in
   * order; their lengths add up to at least `length`) on another thread so that several
   * run at once, and returns true; `done` is then called exactly once — possibly before
   * this returns — with the bytes read (short only at end of file) or a negative errno.
   * false when this file cannot be read that way now (a read too small to be worth the
   * hand-off, unstored writes, a version that changed, no such engine): the engine then
   * tries readInto() and read(). Until `done` the engine keeps the targets valid, which is
   * what readInto gets by being synchronous: their memory stays mapped (GuestMemory.pin),
   * the reply is not sent nor the buffers given back, an INTERRUPT of the READ is ignored
   * (it completes normally), and stopping the queue waits for it.
   */
  readIntoAsync?(offset: number, length: number, targets: readonly Segment[], done: (result: number) => void): boolean;
  /** Writes `data` at `offset` (for O_APPEND files the engine passes the end of file). Returns bytes written. */
  write(offset: number, data: Uint8Array): Promise<number>;
  /** Current attributes including buffered writes. */
  attr(): Promise<FileAttr>;
  /** FUSE FLUSH (close(2) of one descriptor): store buffered writes. */
  flush(): Promise<void>;
  /** FSYNC: store buffered writes and wait until the store has them. */
  fsync(datasync: boolean): Promise<void>;
  /** Preallocates / extends to offset+length (FALLOCATE mode 0). */
  allocate(offset: number, length: number): Promise<void>;
  /**
   * SETATTR by handle: the changes of Vfs.setattr applied to the file this handle has open,
   * wherever it is now — also once it was unlinked or replaced by a rename and has no path
   * (ftruncate, and fchmod/fchown/futimens, of such a file). Allowed whatever the open
   * mode (the kernel has checked permissions; ftruncate of a read-only fd never comes).
   */
  setattr(changes: AttrChanges): Promise<FileAttr>;
  /** Last close: store what is left and drop buffers. */
  release(): Promise<void>;
  /**
   * Optional (FUSE passthrough, /dev/fuse): a file descriptor holding exactly the bytes
   * this read-only handle reads, for the kernel to read from itself, and their count; null
   * when none is at hand (not all of them cached, unstored writes) or it would exceed
   * `maxBytes`. The caller closes the descriptor. Asked only while no other handle has the
   * file open; the engine then refuses changes to the file (ETXTBSY) until the handles
   * that share it are released.
   */
  backingFile?(maxBytes: number): Promise<{ fd: number; bytes: number } | null>;
}

export interface StatFs {
  readonly blockSize: number;
  readonly blocks: number;
  readonly blocksFree: number;
  readonly files: number;
  readonly filesFree: number;
  readonly nameMax: number;
}

export interface Vfs {
  /** Attributes of the object at `path`, or null when nothing is there. */
  stat(path: string): Promise<FileAttr | null>;
  /**
   * What stat(path) would answer, when that is known without waiting (cached or open):
   * the attributes, null when nothing is there, undefined when only stat() can tell (or
   * the path is one stat() would refuse). Lets the server answer LOOKUP and GETATTR
   * without a promise chain. Optional.
   */
  statNow?(path: string): FileAttr | null | undefined;
  /** Every entry of a directory (no '.' or '..'); ENOTDIR/ENOENT as appropriate. */
  list(path: string): Promise<DirEntry[]>;
  /** `mode` (here and in create) is permission bits only (07777), the kernel's umask already applied. */
  mkdir(path: string, mode: number, caller: Caller): Promise<FileAttr>;
  /** ENOTEMPTY when the directory has entries. */
  rmdir(path: string): Promise<void>;
  unlink(path: string): Promise<void>;
  /** Files and directories; `noReplace` = RENAME_NOREPLACE (EEXIST when `to` exists). Directory renames are not atomic on S3. */
  rename(from: string, to: string, noReplace: boolean): Promise<void>;
  symlink(path: string, target: string, caller: Caller): Promise<FileAttr>;
  readlink(path: string): Promise<string>;
  /** SETATTR by path. One that carries a handle (ftruncate), or whose file has no path left, goes to OpenFile.setattr instead. */
  setattr(path: string, changes: AttrChanges): Promise<FileAttr>;
  open(path: string, flags: OpenFlags): Promise<OpenFile>;
  /**
   * Creates a file and opens it with `flags` (a new file is empty whatever they say). When a
   * file is already there (the kernel's negative entry was stale): EEXIST if
   * `flags.exclusive`, EISDIR for a directory, else that file is opened as open() would
   * (truncated with `flags.truncate`). `attr` is the file's as opened.
   */
  create(path: string, mode: number, caller: Caller, flags: CreateFlags): Promise<{ attr: FileAttr; file: OpenFile }>;
  getxattr(path: string, name: string): Promise<Uint8Array>;
  setxattr(path: string, name: string, value: Uint8Array, flags: { create: boolean; replace: boolean }): Promise<void>;
  listxattr(path: string): Promise<string[]>;
  removexattr(path: string, name: string): Promise<void>;
  statfs(): Promise<StatFs>;
  /** Stores everything buffered in every open file (SYNCFS, DESTROY). */
  sync(): Promise<void>;
  /** Forget cached knowledge of `path` (and below): the engine's TTLs ran out or it was told. */
  invalidate?(path: string): void;
  /**
   * The end: stores everything buffered (as sync()) and frees what the Vfs holds. Called once
   * by the transport's shutdown, after the last request and the release of every open
   * file; a second call waits for the first and does nothing more. Rejects (EIO) if
   * something could not be stored.
   */
  close(): Promise<void>;
}
