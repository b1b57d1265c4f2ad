// FUSE kernel ABI (linux/fuse.h), the parts this engine speaks: protocol 7.31 and later.
// Constants, structure sizes, and the fixed-layout codecs shared by both directions
// (the server decodes requests and encodes replies; the test client does the reverse —
// see requests.ts and replies.ts). Everything is little-endian: virtio-fs is defined
// as little-endian, and /dev/fuse is native-endian on x86-64 and aarch64 hosts.
import { constants } from 'node:os';

export const FUSE_KERNEL_VERSION = 7;
/** The newest minor this codec knows (Debian 12's linux/fuse.h). */
export const FUSE_KERNEL_MINOR_VERSION = 38;
/** The oldest minor the server accepts (map_alignment, the 7.31 init_out layout). */
export const FUSE_MIN_MINOR_VERSION = 31;
export const FUSE_ROOT_ID = 1;

export enum Opcode {
  LOOKUP = 1,
  FORGET = 2,
  GETATTR = 3,
  SETATTR = 4,
  READLINK = 5,
  SYMLINK = 6,
  MKNOD = 8,
  MKDIR = 9,
  UNLINK = 10,
  RMDIR = 11,
  RENAME = 12,
  LINK = 13,
  OPEN = 14,
  READ = 15,
  WRITE = 16,
  STATFS = 17,
  RELEASE = 18,
  FSYNC = 20,
  SETXATTR = 21,
  GETXATTR = 22,
  LISTXATTR = 23,
  REMOVEXATTR = 24,
  FLUSH = 25,
  INIT = 26,
  OPENDIR = 27,
  READDIR = 28,
  RELEASEDIR = 29,
  FSYNCDIR = 30,
  GETLK = 31,
  SETLK = 32,
  SETLKW = 33,
  ACCESS = 34,
  CREATE = 35,
  INTERRUPT = 36,
  BMAP = 37,
  DESTROY = 38,
  IOCTL = 39,
  POLL = 40,
  NOTIFY_REPLY = 41,
  BATCH_FORGET = 42,
  FALLOCATE = 43,
  READDIRPLUS = 44,
  RENAME2 = 45,
  LSEEK = 46,
  COPY_FILE_RANGE = 47,
  SETUPMAPPING = 48,
  REMOVEMAPPING = 49,
  SYNCFS = 50,
  TMPFILE = 51,
}

/** "LOOKUP", or "OPCODE_<n>" for numbers this codec does not know (for logs). */
export function opcodeName(op: number): string {
  const name = (Opcode as unknown as Record<number, string | undefined>)[op];
  return name ?? `OPCODE_${op}`;
}

/** Opcodes the kernel sends without waiting for (or accepting) a reply. */
export function isNoReply(op: number): boolean {
  return op === Opcode.FORGET || op === Opcode.BATCH_FORGET || op === Opcode.INTERRUPT || op === Opcode.NOTIFY_REPLY;
}

// ---- INIT flags (fuse_init_in/out.flags; bits 32..63 travel in flags2) ------------------
export const FUSE_ASYNC_READ = 1 << 0;
export const FUSE_POSIX_LOCKS = 1 << 1;
export const FUSE_FILE_OPS = 1 << 2;
export const FUSE_ATOMIC_O_TRUNC = 1 << 3;
export const FUSE_EXPORT_SUPPORT = 1 << 4;
export const FUSE_BIG_WRITES = 1 << 5;
export const FUSE_DONT_MASK = 1 << 6;
export const FUSE_SPLICE_WRITE = 1 << 7;
export const FUSE_SPLICE_MOVE = 1 << 8;
export const FUSE_SPLICE_READ = 1 << 9;
export const FUSE_FLOCK_LOCKS = 1 << 10;
export const FUSE_HAS_IOCTL_DIR = 1 << 11;
export const FUSE_AUTO_INVAL_DATA = 1 << 12;
export const FUSE_DO_READDIRPLUS = 1 << 13;
export const FUSE_READDIRPLUS_AUTO = 1 << 14;
export const FUSE_ASYNC_DIO = 1 << 15;
export const FUSE_WRITEBACK_CACHE = 1 << 16;
export const FUSE_NO_OPEN_SUPPORT = 1 << 17;
export const FUSE_PARALLEL_DIROPS = 1 << 18;
export const FUSE_HANDLE_KILLPRIV = 1 << 19;
export const FUSE_POSIX_ACL = 1 << 20;
export const FUSE_ABORT_ERROR = 1 << 21;
export const FUSE_MAX_PAGES = 1 << 22;
export const FUSE_CACHE_SYMLINKS = 1 << 23;
export const FUSE_NO_OPENDIR_SUPPORT = 1 << 24;
export const FUSE_EXPLICIT_INVAL_DATA = 1 << 25;
export const FUSE_MAP_ALIGNMENT = 1 << 26;
export const FUSE_SUBMOUNTS = 1 << 27;
export const FUSE_HANDLE_KILLPRIV_V2 = 1 << 28;
export const FUSE_SETXATTR_EXT = 1 << 29;
export const FUSE_INIT_EXT = 1 << 30;
export const FUSE_INIT_RESERVED = 2 ** 31;
/** Bits of flags2 (flags bits 32..63). FUSE_PASSTHROUGH (bit 37, 7.40): opens may be served by a backing file. */
export const FUSE2_PASSTHROUGH = 1 << (37 - 32);

// ---- other flag words ------------------------------------------------------------------
export const FATTR_MODE = 1 << 0;
export const FATTR_UID = 1 << 1;
export const FATTR_GID = 1 << 2;
export const FATTR_SIZE = 1 << 3;
export const FATTR_ATIME = 1 << 4;
export const FATTR_MTIME = 1 << 5;
export const FATTR_FH = 1 << 6;
export const FATTR_ATIME_NOW = 1 << 7;
export const FATTR_MTIME_NOW = 1 << 8;
export const FATTR_LOCKOWNER = 1 << 9;
export const FATTR_CTIME = 1 << 10;
export const FATTR_KILL_SUIDGID = 1 << 11;

export const FOPEN_DIRECT_IO = 1 << 0;
export const FOPEN_KEEP_CACHE = 1 << 1;
export const FOPEN_NONSEEKABLE = 1 << 2;
export const FOPEN_CACHE_DIR = 1 << 3;
/** The kernel reads and writes this open file through the backing file named by backing_id (7.40). */
export const FOPEN_PASSTHROUGH = 1 << 7;

export const FUSE_GETATTR_FH = 1 << 0;
export const FUSE_FSYNC_FDATASYNC = 1 << 0;
export const FUSE_RELEASE_FLUSH = 1 << 0;
export const FUSE_WRITE_CACHE = 1 << 0;
export const FUSE_WRITE_LOCKOWNER = 1 << 1;
export const FUSE_WRITE_KILL_SUIDGID = 1 << 2;

/** rename2 flags (linux/fs.h). */
export const RENAME_NOREPLACE = 1 << 0;
export const RENAME_EXCHANGE = 1 << 1;
export const RENAME_WHITEOUT = 1 << 2;

/** setxattr flags (linux/xattr.h). */
export const XATTR_CREATE = 1;
export const XATTR_REPLACE = 2;
/** Linux limits: names over 255 bytes are ERANGE, values over 64 KiB E2BIG. */
export const XATTR_NAME_MAX = 255;
export const XATTR_SIZE_MAX = 65536;
/** Longest file name component and longest symlink target (PATH_MAX - 1). */
export const NAME_MAX = 255;
export const SYMLINK_MAX = 4095;

/** lseek whence. */
export const SEEK_SET = 0;
export const SEEK_CUR = 1;
export const SEEK_END = 2;
export const SEEK_DATA = 3;
export const SEEK_HOLE = 4;

/** open(2) flags (x86-64/aarch64 values, as the kernel sends them). */
export const O_ACCMODE = 0o3;
export const O_RDONLY = 0o0;
export const O_WRONLY = 0o1;
export const O_RDWR = 0o2;
export const O_CREAT = 0o100;
export const O_EXCL = 0o200;
export const O_TRUNC = 0o1000;
export const O_APPEND = 0o2000;

/** st_mode file types. */
export const S_IFMT = 0o170000;
export const S_IFSOCK = 0o140000;
export const S_IFLNK = 0o120000;
export const S_IFREG = 0o100000;
export const S_IFBLK = 0o060000;
export const S_IFDIR = 0o040000;
export const S_IFCHR = 0o020000;
export const S_IFIFO = 0o010000;

/** dirent d_type. */
export const DT_UNKNOWN = 0;
export const DT_DIR = 4;
export const DT_REG = 8;
export const DT_LNK = 10;

// ---- structure sizes -------------------------------------------------------------------
export const IN_HEADER_SIZE = 40;
export const OUT_HEADER_SIZE = 16;
export const ATTR_SIZE = 88;
export const ENTRY_OUT_SIZE = 40 + ATTR_SIZE; // 128
export const ATTR_OUT_SIZE = 16 + ATTR_SIZE; // 104
export const OPEN_OUT_SIZE = 16;
export const WRITE_OUT_SIZE = 8;
export const STATFS_OUT_SIZE = 80;
export const GETXATTR_OUT_SIZE = 8;
export const LSEEK_OUT_SIZE = 8;
export const LK_OUT_SIZE = 24;
/** fuse_init_in before 7.36 (no flags2) and since (flags2 + 11 unused words). */
export const INIT_IN_COMPAT_SIZE = 16;
export const INIT_IN_SIZE = 64;
export const INIT_OUT_SIZE = 64;
export const FORGET_IN_SIZE = 8;
export const FORGET_ONE_SIZE = 16;
export const BATCH_FORGET_IN_SIZE = 8;
export const GETATTR_IN_SIZE = 16;
export const SETATTR_IN_SIZE = 88;
export const MKNOD_IN_SIZE = 16;
export const MKDIR_IN_SIZE = 8;
export const RENAME_IN_SIZE = 8;
export const RENAME2_IN_SIZE = 16;
export const LINK_IN_SIZE = 8;
export const OPEN_IN_SIZE = 8;
export const CREATE_IN_SIZE = 16;
export const RELEASE_IN_SIZE = 24;
export const FLUSH_IN_SIZE = 24;
export const READ_IN_SIZE = 40;
export const WRITE_IN_SIZE = 40;
export const FSYNC_IN_SIZE = 16;
/** fuse_setxattr_in without FUSE_SETXATTR_EXT (which this server does not negotiate) and with it. */
export const SETXATTR_IN_COMPAT_SIZE = 8;
export const SETXATTR_IN_SIZE = 16;
export const GETXATTR_IN_SIZE = 8;
export const LK_IN_SIZE = 48;
export const ACCESS_IN_SIZE = 8;
export const INTERRUPT_IN_SIZE = 8;
export const FALLOCATE_IN_SIZE = 32;
export const LSEEK_IN_SIZE = 24;
export const SYNCFS_IN_SIZE = 8;
/** fuse_dirent without its name, and fuse_direntplus (entry_out + dirent) without its name. */
export const DIRENT_SIZE = 24;
export const DIRENTPLUS_SIZE = ENTRY_OUT_SIZE + DIRENT_SIZE; // 152

/** FUSE_DIRENT_ALIGN: records are padded to 8 bytes. */
export function direntAlign(n: number): number {
  return (n + 7) & ~7;
}

// ---- errno -----------------------------------------------------------------------------
export const E = constants.errno;

const ERRNO_NAMES = new Map<number, keyof typeof constants.errno>();
for (const [name, value] of Object.entries(constants.errno) as [keyof typeof constants.errno, number][]) {
  if (!ERRNO_NAMES.has(value)) ERRNO_NAMES.set(value, name);
}
// Aliases Node lists first for the same number: prefer the names Linux prints.
ERRNO_NAMES.set(E.EAGAIN, 'EAGAIN');
ERRNO_NAMES.set(E.EOPNOTSUPP, 'EOPNOTSUPP');
ERRNO_NAMES.set(E.EDEADLK, 'EDEADLK');

/** "ENOENT" for 2; undefined for numbers that are not errnos. */
export function errnoName(errno: number): keyof typeof constants.errno | undefined {
  return ERRNO_NAMES.get(errno);
}

// ---- little-endian helpers over a byte array ---------------------------------------------

/** A DataView over exactly the bytes of `b`. */
export function viewOf(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

/**
 * u64 as a number: exact below 2^53, and for larger values still >= 2^53 (so a check
 * against Number.MAX_SAFE_INTEGER catches it). Never throws, never NaN.
 */
export function getU64(v: DataView, off: number): number {
  return v.getUint32(off + 4, true) * 0x100000000 + v.getUint32(off, true);
}

/** Signed 64-bit as a number (approximate beyond ±2^53, sign exact). */
export function getI64(v: DataView, off: number): number {
  return v.getInt32(off + 4, true) * 0x100000000 + v.getUint32(off, true);
}

/** Writes a non-negative integer (or a bigint) as u64. Values beyond 2^64 wrap. */
export function setU64(v: DataView, off: number, value: number | bigint): void {
  if (typeof value === 'bigint') {
    v.setBigUint64(off, BigInt.asUintN(64, value), true);
    return;
  }
  if (value >= 0 && value <= 0xffffffff) {
    v.setUint32(off, value, true);
    v.setUint32(off + 4, 0, true);
    return;
  }
  v.setBigUint64(off, BigInt.asUintN(64, BigInt(Math.trunc(value))), true);
}

// ---- headers -----------------------------------------------------------------------------

export interface InHeader {
  /** Total request length (header + arguments + extensions). */
  readonly len: number;
  readonly opcode: number;
  /** Echoed in the reply. */
  readonly unique: bigint;
  /** Not yet checked against any table: may be anything the sender wrote. */
  readonly nodeid: number;
  readonly uid: number;
  readonly gid: number;
  readonly pid: number;
  /** Length of the extensions after the arguments, in bytes (total_extlen * 8). */
  readonly extLen: number;
}

/** Reads the header from the first 40 bytes; missing bytes read as zero (never throws). */
export function decodeInHeader(b: Uint8Array): InHeader {
  let src = b;
  if (b.length < IN_HEADER_SIZE) {
    src = new Uint8Array(IN_HEADER_SIZE);
    src.set(b);
  }
  const v = viewOf(src);
  return {
    len: v.getUint32(0, true),
    opcode: v.getUint32(4, true),
    unique: v.getBigUint64(8, true),
    nodeid: getU64(v, 16),
    uid: v.getUint32(24, true),
    gid: v.getUint32(28, true),
    pid: v.getUint32(32, true),
    extLen: v.getUint16(36, true) * 8,
  };
}

export interface InHeaderFields {
  readonly len: number;
  readonly opcode: number;
  readonly unique: bigint;
  readonly nodeid: number | bigint;
  readonly uid?: number;
  readonly gid?: number;
  readonly pid?: number;
  readonly extLen?: number;
}

export function encodeInHeader(h: InHeaderFields, out: Uint8Array = new Uint8Array(IN_HEADER_SIZE)): Uint8Array {
  const v = viewOf(out);
  v.setUint32(0, h.len >>> 0, true);
  v.setUint32(4, h.opcode >>> 0, true);
  v.setBigUint64(8, BigInt.asUintN(64, h.unique), true);
  setU64(v, 16, h.nodeid);
  v.setUint32(24, (h.uid ?? 0) >>> 0, true);
  v.setUint32(28, (h.gid ?? 0) >>> 0, true);
  v.setUint32(32, (h.pid ?? 0) >>> 0, true);
  v.setUint16(36, Math.floor((h.extLen ?? 0) / 8) & 0xffff, true);
  v.setUint16(38, 0, true);
  return out;
}

export interface OutHeader {
  readonly len: number;
  /** 0 or a negative errno. */
  readonly error: number;
  readonly unique: bigint;
}

export function encodeOutHeader(h: OutHeader, out: Uint8Array = new Uint8Array(OUT_HEADER_SIZE)): Uint8Array {
  const v = viewOf(out);
  v.setUint32(0, h.len >>> 0, true);
  v.setInt32(4, h.error | 0, true);
  v.setBigUint64(8, BigInt.asUintN(64, h.unique), true);
  return out;
}

export function decodeOutHeader(b: Uint8Array): OutHeader | null {
  if (b.length < OUT_HEADER_SIZE) return null;
  const v = viewOf(b);
  return { len: v.getUint32(0, true), error: v.getInt32(4, true), unique: v.getBigUint64(8, true) };
}

// ---- struct fuse_attr --------------------------------------------------------------------

/** struct fuse_attr, with times as nanoseconds since the epoch. */
export interface WireAttr {
  readonly ino: number;
  readonly size: number;
  readonly blocks: number;
  readonly atimeNs: bigint;
  readonly mtimeNs: bigint;
  readonly ctimeNs: bigint;
  readonly mode: number;
  readonly nlink: number;
  readonly uid: number;
  readonly gid: number;
  readonly rdev: number;
  readonly blksize: number;
  readonly flags: number;
}

const NS = 1_000_000_000n;

/**
 * Writes ns since the epoch as (seconds, u64 two's complement; nanoseconds 0..999999999).
 * setBigInt64 wraps modulo 2^64 as BigInt.asUintN would: no intermediate values.
 */
function putTime(v: DataView, secOff: number, nsOff: number, ns: bigint): void {
  let s = ns / NS;
  let n = ns % NS;
  if (n < 0n) {
    n += NS;
    s -= 1n;
  }
  v.setBigInt64(secOff, s, true);
  v.setUint32(nsOff, Number(n), true);
}

export function encodeAttr(v: DataView, off: number, a: WireAttr): void {
  setU64(v, off, a.ino);
  setU64(v, off + 8, a.size);
  setU64(v, off + 16, a.blocks);
  putTime(v, off + 24, off + 48, a.atimeNs);
  putTime(v, off + 32, off + 52, a.mtimeNs);
  putTime(v, off + 40, off + 56, a.ctimeNs);
  v.setUint32(off + 60, a.mode >>> 0, true);
  v.setUint32(off + 64, a.nlink >>> 0, true);
  v.setUint32(off + 68, a.uid >>> 0, true);
  v.setUint32(off + 72, a.gid >>> 0, true);
  v.setUint32(off + 76, a.rdev >>> 0, true);
  v.setUint32(off + 80, a.blksize >>> 0, true);
  v.setUint32(off + 84, a.flags >>> 0, true);
}

export function decodeAttr(v: DataView, off: number): WireAttr {
  const t = (secOff: number, nsOff: number): bigint =>
    v.getBigInt64(off + secOff, true) * NS + BigInt(v.getUint32(off + nsOff, true));
  return {
    ino: getU64(v, off),
    size: getU64(v, off + 8),
    blocks: getU64(v, off + 16),
    atimeNs: t(24, 48),
    mtimeNs: t(32, 52),
    ctimeNs: t(40, 56),
    mode: v.getUint32(off + 60, true),
    nlink: v.getUint32(off + 64, true),
    uid: v.getUint32(off + 68, true),
    gid: v.getUint32(off + 72, true),
    rdev: v.getUint32(off + 76, true),
    blksize: v.getUint32(off + 80, true),
    flags: v.getUint32(off + 84, true),
  };
}

/** Seconds + nanoseconds from a timeout in milliseconds (fuse_entry_out/attr_out valid fields). */
export function splitTimeout(ms: number): { sec: number; nsec: number } {
  if (!(ms > 0)) return { sec: 0, nsec: 0 };
  const sec = Math.floor(ms / 1000);
  return { sec, nsec: Math.round((ms - sec * 1000) * 1_000_000) % 1_000_000_000 };
}
