// POSIX attributes in S3 user metadata, compatible with buckets written by s3fs and rclone.
//
// Keys (as S3 returns them: lower case, without the `x-amz-meta-` prefix):
//   mode             full st_mode in decimal ("33188" = S_IFREG|0644), as s3fs writes it;
//                    read also as octal when it has a leading 0 ("0100644")
//   uid, gid         decimal
//   mtime, ctime,    seconds since the epoch, optionally with a fraction: s3fs writes
//   atime            "sec" or "sec.nnnnnnnnn" (nanoseconds, 9 digits), rclone writes mtime
//                    as float seconds ("1700000000.123456789"); both read as a decimal
//                    fraction (digits past the 9th are dropped). We write s3fs's form.
//                    Times before 1970 are written as a decimal number ("-1.500000000" is
//                    1.5 s before the epoch), which rclone reads the same way.
//   xattr-<hex>      one extended attribute `user.<name>`: <hex> is the UTF-8 bytes of
//                    <name> (without "user.") in lower-case hex, the value is the
//                    attribute's bytes in base64 ("=" for an empty value, since some
//                    servers drop empty metadata values). Hex keeps any name inside S3's
//                    key alphabet ([a-z0-9._-], case-insensitive); base64 keeps any value
//                    printable ASCII. Everything shares S3's 2 KiB metadata limit.
// Every other key (another tool's, s3fs's `xattr`) is kept as it is when we rewrite an
// object.
//
// Values that do not parse are ignored (the defaults apply), never an error: a bucket
// written by anything must stay readable.
import type { FileAttr, FileKind, TimeNs } from '../../fuse/vfs.js';
import type { Metadata } from '../object-store.js';

export const S_IFMT = 0o170000;
export const S_IFREG = 0o100000;
export const S_IFDIR = 0o040000;
export const S_IFLNK = 0o120000;
/** Permission bits plus setuid, setgid and sticky. */
export const PERM_MASK = 0o7777;

export const MODE_KEY = 'mode';
export const UID_KEY = 'uid';
export const GID_KEY = 'gid';
export const MTIME_KEY = 'mtime';
export const CTIME_KEY = 'ctime';
export const ATIME_KEY = 'atime';
export const XATTR_KEY_PREFIX = 'xattr-';
export const USER_XATTR_PREFIX = 'user.';

const OWN_KEYS = new Set([MODE_KEY, UID_KEY, GID_KEY, MTIME_KEY, CTIME_KEY, ATIME_KEY]);

const NS_PER_SEC = 1_000_000_000n;
/** Times must fit a signed 64-bit count of nanoseconds. */
const MAX_ABS_NS = (1n << 63n) - 1n;

// ---------------------------------------------------------------------------------------
// Single values

/** st_mode from decimal, or octal with a leading 0; null when malformed or over 16 bits. */
export function parseMode(v: string | undefined): number | null {
  if (v === undefined) return null;
  const s = v.trim();
  let n: number;
  if (/^0[0-7]+$/.test(s)) n = parseInt(s, 8);
  else if (/^(0|[1-9][0-9]{0,5})$/.test(s)) n = parseInt(s, 10);
  else return null;
  return n <= 0xffff ? n : null;
}

export function formatMode(mode: number): string {
  return String(mode);
}

/** A uid or gid (decimal, 0..2^32-1); null when malformed. */
export function parseId(v: string | undefined): number | null {
  if (v === undefined) return null;
  const s = v.trim();
  if (!/^[0-9]{1,10}$/.test(s)) return null;
  const n = parseInt(s, 10);
  return n <= 0xffffffff ? n : null;
}

export function formatId(id: number): string {
  return String(id);
}

/** Nanoseconds since the epoch from "sec", "sec.fraction" (s3fs, rclone), with an optional sign; null when malformed. */
export function parseTime(v: string | undefined): TimeNs | null {
  if (v === undefined) return null;
  const m = /^([+-])?([0-9]*)(?:\.([0-9]*))?$/.exec(v.trim());
  if (!m) return null;
  const int = m[2] ?? '';
  const frac = m[3] ?? '';
  if (int === '' && frac === '') return null;
  if (int.length > 12) return null;
  const sec = BigInt(int === '' ? '0' : int);
  const nsec = BigInt((frac + '000000000').slice(0, 9));
  let ns = sec * NS_PER_SEC + nsec;
  if (m[1] === '-') ns = -ns;
  if (ns > MAX_ABS_NS || -ns > MAX_ABS_NS) return null;
  return ns;
}

/** s3fs's form: "sec", or "sec.nnnnnnnnn" when there are nanoseconds. */
export function formatTime(ns: TimeNs): string {
  const neg = ns < 0n;
  const abs = neg ? -ns : ns;
  const sec = abs / NS_PER_SEC;
  const nsec = abs % NS_PER_SEC;
  const body = nsec === 0n ? `${sec}` : `${sec}.${nsec.toString().padStart(9, '0')}`;
  return neg ? `-${body}` : body;
}

export function timeOfDate(d: Date): TimeNs {
  const ms = d.getTime();
  return Number.isFinite(ms) ? BigInt(Math.trunc(ms)) * 1_000_000n : 0n;
}

/** The metadata key of extended attribute `name` (a `user.` name with a non-empty rest). */
export function xattrKey(name: string): string {
  return XATTR_KEY_PREFIX + Buffer.from(name.slice(USER_XATTR_PREFIX.length), 'utf8').toString('hex');
}

/** The attribute name of a metadata key, or null when the key is not one of ours. */
export function xattrName(key: string): string | null {
  if (!key.startsWith(XATTR_KEY_PREFIX)) return null;
  const hex = key.slice(XATTR_KEY_PREFIX.length);
  if (hex.length === 0 || hex.length % 2 !== 0 || !/^[0-9a-f]+$/.test(hex)) return null;
  const bytes = Buffer.from(hex, 'hex');
  const name = bytes.toString('utf8');
  // Only names that round-trip (well-formed UTF-8 without NUL).
  if (name.includes('\0') || !Buffer.from(name, 'utf8').equals(bytes)) return null;
  return USER_XATTR_PREFIX + name;
}

export function encodeXattrValue(value: Uint8Array): string {
  return value.length === 0 ? '=' : Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString('base64');
}

export function decodeXattrValue(v: string): Uint8Array | null {
  if (v === '=') return new Uint8Array(0);
  if (v.length % 4 !== 0 || !/^[A-Za-z0-9+/]*={0,2}$/.test(v)) return null;
  return new Uint8Array(Buffer.from(v, 'base64'));
}

/** Bytes S3 counts against its 2 KiB user-metadata limit (keys plus values). */
export function metadataBytes(m: Metadata): number {
  let n = 0;
  for (const [k, v] of Object.entries(m)) n += k.length + v.length;
  return n;
}

// ---------------------------------------------------------------------------------------
// Whole objects

/** What the metadata of one object says (null: absent or malformed). */
export interface PosixMeta {
  readonly mode: number | null;
  readonly uid: number | null;
  readonly gid: number | null;
  readonly mtime: TimeNs | null;
  readonly ctime: TimeNs | null;
  readonly atime: TimeNs | null;
  /** `user.*` name → value. */
  readonly xattrs: ReadonlyMap<string, Uint8Array>;
  /** Every key that is not ours, kept on rewrite. */
  readonly other: Metadata;
}

export function readMetadata(m: Metadata): PosixMeta {
  const xattrs = new Map<string, Uint8Array>();
  const other: Metadata = {};
  const lower: Metadata = {};
  for (const [rawKey, value] of Object.entries(m)) {
    const key = rawKey.toLowerCase();
    lower[key] = value;
    if (OWN_KEYS.has(key)) continue;
    const name = xattrName(key);
    const decoded = name !== null ? decodeXattrValue(value) : null;
    if (name !== null && decoded !== null) xattrs.set(name, decoded);
    else other[key] = value;
  }
  const get = (k: string): string | undefined => lower[k];
  return {
    mode: parseMode(get(MODE_KEY)),
    uid: parseId(get(UID_KEY)),
    gid: parseId(get(GID_KEY)),
    mtime: parseTime(get(MTIME_KEY)),
    ctime: parseTime(get(CTIME_KEY)),
    atime: parseTime(get(ATIME_KEY)),
    xattrs,
    other,
  };
}

/** The attributes we store for an object. */
export interface StoredAttrs {
  readonly mode: number;
  readonly uid: number;
  readonly gid: number;
  readonly mtime: TimeNs;
  readonly ctime: TimeNs;
  readonly atime: TimeNs;
}

export const S_ISGID = 0o2000;

/**
 * Mode and owner of an object created in directory `parent` (its st_mode and gid) by
 * `caller`, with `mode` the full st_mode asked for: as Linux file systems do (ext4's
 * inode_init_owner), a setgid directory passes its group on, and its setgid bit on to new
 * directories. (Clearing setgid on files whose creator is not in the group is done by
 * the kernel before the request, and we cannot know the caller's groups anyway.)
 */
export function newObjectOwner(parent: { readonly mode: number; readonly gid: number }, caller: { readonly uid: number; readonly gid: number }, mode: number): { mode: number; uid: number; gid: number } {
  if ((parent.mode & S_ISGID) === 0) return { mode, uid: caller.uid, gid: caller.gid };
  return { mode: (mode & S_IFMT) === S_IFDIR ? mode | S_ISGID : mode, uid: caller.uid, gid: parent.gid };
}

/** Metadata for an object: `other` (kept from the previous version), then ours. */
export function writeMetadata(attrs: StoredAttrs, xattrs: ReadonlyMap<string, Uint8Array>, other: Metadata = {}): Metadata {
  const out: Metadata = {};
  for (const [k, v] of Object.entries(other)) {
    const key = k.toLowerCase();
    if (!OWN_KEYS.has(key) && xattrName(key) === null) out[key] = v;
  }
  out[MODE_KEY] = formatMode(attrs.mode);
  out[UID_KEY] = formatId(attrs.uid);
  out[GID_KEY] = formatId(attrs.gid);
  // The three times are often the same (a new file; a write sets mtime and ctime): formatted once.
  const mtime = formatTime(attrs.mtime);
  const ctime = attrs.ctime === attrs.mtime ? mtime : formatTime(attrs.ctime);
  out[MTIME_KEY] = mtime;
  out[CTIME_KEY] = ctime;
  out[ATIME_KEY] = attrs.atime === attrs.mtime ? mtime : attrs.atime === attrs.ctime ? ctime : formatTime(attrs.atime);
  for (const [name, value] of xattrs) out[xattrKey(name)] = encodeXattrValue(value);
  return out;
}

export interface AttrDefaults {
  /** Permission bits for files without a mode (e.g. 0o644). */
  readonly fileMode: number;
  /** Permission bits for directories without a mode (e.g. 0o755). */
  readonly dirMode: number;
  readonly uid: number;
  readonly gid: number;
}

/** Where an object sits: a file-like object (file or symlink per its mode) or a directory marker / implicit directory. */
export type ObjectRole = 'object' | 'dir';

/**
 * The attributes of an object from its metadata. A directory marker is always a
 * directory; any other object is a symlink when its mode says S_IFLNK, else a regular file
 * (other types, and S_IFDIR on an object without a trailing '/', become S_IFREG).
 * Missing times fall back to `lastModified` (mtime) and then to mtime (ctime, atime).
 */
export function attrFromMetadata(role: ObjectRole, meta: PosixMeta, lastModified: TimeNs, size: number, defaults: AttrDefaults): FileAttr {
  let kind: FileKind;
  let type: number;
  if (role === 'dir') {
    kind = 'dir';
    type = S_IFDIR;
  } else if (meta.mode !== null && (meta.mode & S_IFMT) === S_IFLNK) {
    kind = 'symlink';
    type = S_IFLNK;
  } else {
    kind = 'file';
    type = S_IFREG;
  }
  const perms = meta.mode !== null ? meta.mode & PERM_MASK : kind === 'dir' ? defaults.dirMode & PERM_MASK : kind === 'symlink' ? 0o777 : defaults.fileMode & PERM_MASK;
  const mtime = meta.mtime ?? lastModified;
  return {
    kind,
    mode: type | perms,
    uid: meta.uid ?? defaults.uid,
    gid: meta.gid ?? defaults.gid,
    size,
    mtime,
    ctime: meta.ctime ?? mtime,
    atime: meta.atime ?? mtime,
  };
}
