// FUSE requests: the server's decoder (bytes from the guest → a checked, typed request
// or the errno to answer with) and the client's encoders (typed arguments → bytes).
//
// Every number and string in a request comes from an untrusted peer. The decoder never
// throws and never reads outside the given bytes:
// - header.len must cover the header and lie inside the bytes received; extensions
//   (total_extlen) must fit inside it; the argument area is what lies between;
// - each opcode's fixed argument struct must be there exactly (a short one is
//   truncated, a longer one oversized: EINVAL either way); variable parts (names, write
//   data, xattr values) must account for every remaining byte;
// - names must be NUL-terminated where the ABI says so and are checked as file names:
//   empty, containing '/', not UTF-8, '.' or '..' → EINVAL; longer than 255 bytes →
//   ENAMETOOLONG (what Linux returns). LOOKUP of '.' or '..' is answered ENOENT: the
//   kernel resolves those itself and only asks for them when the file system exports
//   itself over NFS (EXPORT_SUPPORT, not offered), so "no such entry" is what a
//   confused peer should see.
import {
  ACCESS_IN_SIZE, BATCH_FORGET_IN_SIZE, CREATE_IN_SIZE, E, FALLOCATE_IN_SIZE, FLUSH_IN_SIZE, FORGET_IN_SIZE,
  FORGET_ONE_SIZE, FSYNC_IN_SIZE, GETATTR_IN_SIZE, GETXATTR_IN_SIZE, IN_HEADER_SIZE, INIT_IN_COMPAT_SIZE,
  INIT_IN_SIZE, INTERRUPT_IN_SIZE, LINK_IN_SIZE, LK_IN_SIZE, LSEEK_IN_SIZE, MKDIR_IN_SIZE, MKNOD_IN_SIZE,
  NAME_MAX, OPEN_IN_SIZE, Opcode, READ_IN_SIZE, RELEASE_IN_SIZE, RENAME2_IN_SIZE, RENAME_IN_SIZE,
  SETATTR_IN_SIZE, SETXATTR_IN_COMPAT_SIZE, SETXATTR_IN_SIZE, SYMLINK_MAX, SYNCFS_IN_SIZE, WRITE_IN_SIZE,
  XATTR_NAME_MAX, XATTR_SIZE_MAX, decodeInHeader, encodeInHeader, getI64, getU64, setU64, viewOf,
  type InHeader,
} from './abi.js';

/** Largest INIT argument accepted (the 7.38 struct is 64 bytes; later ones fill unused words). */
const INIT_IN_MAX = 4096;

export interface ForgetOne {
  readonly nodeid: number;
  readonly nlookup: number;
}

/** Times in SETATTR: nanoseconds since the epoch. */
export interface SetattrIn {
  readonly valid: number;
  readonly fh: number;
  readonly size: number;
  readonly lockOwner: bigint;
  readonly atimeNs: bigint;
  readonly mtimeNs: bigint;
  readonly ctimeNs: bigint;
  readonly mode: number;
  readonly uid: number;
  readonly gid: number;
}

export interface FileLock {
  readonly start: bigint;
  readonly end: bigint;
  readonly type: number;
  readonly pid: number;
}

interface R<O extends Opcode> {
  readonly op: O;
  readonly h: InHeader;
}

/** READ, READDIR, READDIRPLUS (struct fuse_read_in). */
export type ReadLikeRequest = R<Opcode.READ | Opcode.READDIR | Opcode.READDIRPLUS> & {
  readonly fh: number; readonly offset: number; readonly size: number; readonly readFlags: number; readonly flags: number;
};

/** A decoded request; numbers >= 2^53 stay >= 2^53 (see getU64) and are rejected by the server. */
export type FuseRequest =
  | (R<Opcode.INIT> & { readonly major: number; readonly minor: number; readonly maxReadahead: number; readonly flags: number; readonly flags2: number })
  | (R<Opcode.LOOKUP> & { readonly name: string })
  | (R<Opcode.FORGET> & { readonly nlookup: number })
  | (R<Opcode.BATCH_FORGET> & { readonly items: readonly ForgetOne[] })
  | (R<Opcode.GETATTR> & { readonly flags: number; readonly fh: number })
  | (R<Opcode.SETATTR> & { readonly attr: SetattrIn })
  | R<Opcode.READLINK>
  | (R<Opcode.SYMLINK> & { readonly name: string; readonly target: string })
  | (R<Opcode.MKNOD> & { readonly name: string; readonly mode: number; readonly rdev: number; readonly umask: number })
  | (R<Opcode.MKDIR> & { readonly name: string; readonly mode: number; readonly umask: number })
  | (R<Opcode.UNLINK | Opcode.RMDIR> & { readonly name: string })
  | (R<Opcode.RENAME | Opcode.RENAME2> & { readonly name: string; readonly newdir: number; readonly newname: string; readonly flags: number })
  | (R<Opcode.LINK> & { readonly oldnodeid: number; readonly name: string })
  | (R<Opcode.OPEN | Opcode.OPENDIR> & { readonly flags: number; readonly openFlags: number })
  | ReadLikeRequest
  | (R<Opcode.WRITE> & {
    readonly fh: number; readonly offset: number; readonly writeFlags: number; readonly flags: number; readonly data: Uint8Array;
  })
  | R<Opcode.STATFS>
  | (R<Opcode.RELEASE | Opcode.RELEASEDIR> & { readonly fh: number; readonly flags: number; readonly releaseFlags: number })
  | (R<Opcode.FSYNC | Opcode.FSYNCDIR> & { readonly fh: number; readonly fsyncFlags: number })
  | (R<Opcode.SETXATTR> & { readonly name: string; readonly value: Uint8Array; readonly flags: number })
  | (R<Opcode.GETXATTR> & { readonly name: string; readonly size: number })
  | (R<Opcode.LISTXATTR> & { readonly size: number })
  | (R<Opcode.REMOVEXATTR> & { readonly name: string })
  | (R<Opcode.FLUSH> & { readonly fh: number })
  | (R<Opcode.GETLK | Opcode.SETLK | Opcode.SETLKW> & { readonly fh: number; readonly owner: bigint; readonly lk: FileLock; readonly lkFlags: number })
  | (R<Opcode.ACCESS> & { readonly mask: number })
  | (R<Opcode.CREATE> & { readonly name: string; readonly flags: number; readonly mode: number; readonly umask: number; readonly openFlags: number })
  | (R<Opcode.INTERRUPT> & { readonly target: bigint })
  | R<Opcode.DESTROY>
  | (R<Opcode.FALLOCATE> & { readonly fh: number; readonly offset: number; readonly length: number; readonly mode: number })
  | (R<Opcode.LSEEK> & { readonly fh: number; readonly offset: number; readonly whence: number })
  | R<Opcode.SYNCFS>
  /** Anything else: answered ENOSYS (or, for NOTIFY_REPLY, not at all). */
  | { readonly op: 'other'; readonly h: InHeader };

export type DecodeResult =
  | { readonly ok: true; readonly req: FuseRequest }
  /** Answer `unique` with -errno (unless the opcode takes no reply). */
  | { readonly ok: false; readonly h: InHeader; readonly errno: number; readonly why: string };

export interface DecodeOptions {
  /** FUSE_SETXATTR_EXT was negotiated: fuse_setxattr_in is 16 bytes instead of 8. */
  readonly setxattrExt?: boolean;
}

class Bad {
  constructor(readonly errno: number, readonly why: string) {}
}

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

function decodeUtf8(b: Uint8Array): string | null {
  try {
    return utf8.decode(b);
  } catch {
    return null;
  }
}

/** Checks a file name component; returns the errno to answer, or 0. */
export function checkName(bytes: Uint8Array): number {
  if (bytes.length === 0) return E.EINVAL;
  if (bytes.length > NAME_MAX) return E.ENAMETOOLONG;
  if (bytes.indexOf(0x2f) >= 0 || bytes.indexOf(0) >= 0) return E.EINVAL;
  if (bytes[0] === 0x2e && (bytes.length === 1 || (bytes.length === 2 && bytes[1] === 0x2e))) return E.EINVAL;
  return 0;
}

/**
 * Argument-area reader over the whole message: positions are indexes into `b`, the area
 * is [base, limit) (extensions after it are not read); `v` views b's whole ArrayBuffer,
 * b[i] being at v offset vo + i. Bounds-checked; throws Bad (caught in decodeRequest) on
 * any violation.
 */
class Args {
  pos: number;
  private readonly vb: number;
  constructor(readonly b: Uint8Array, readonly v: DataView, vo: number, readonly base: number, readonly limit: number) {
    this.pos = base;
    this.vb = vo + base;
  }
  get left(): number {
    return this.limit - this.pos;
  }
  /** The bytes [from, to) of the area, as offsets relative to its start. */
  bytes(from: number, to: number): Uint8Array {
    return this.b.subarray(this.base + from, this.base + to);
  }
  /** Takes the fixed struct at the start: `size` bytes must be there. */
  struct(size: number): number {
    if (this.left < size) throw new Bad(E.EINVAL, `truncated argument (${this.left} < ${size} bytes)`);
    const at = this.pos;
    this.pos += size;
    return at;
  }
  /** Nothing may follow. */
  end(): void {
    if (this.left !== 0) throw new Bad(E.EINVAL, `${this.left} unexpected bytes after the arguments`);
  }
  /** Index of the NUL ending the string at pos (inside the area). */
  private nul(): number {
    const b = this.b;
    for (let i = this.pos; i < this.limit; i++) if (b[i] === 0) return i;
    throw new Bad(E.EINVAL, 'string without NUL terminator');
  }
  /** A NUL-terminated string; `last` requires the NUL to be the last byte of the area. */
  cstring(last: boolean): Uint8Array {
    const nul = this.nul();
    const s = this.b.subarray(this.pos, nul);
    this.pos = nul + 1;
    if (last) this.end();
    return s;
  }
  /**
   * A file name component, checked as checkName does (same errnos, same order). Short
   * ASCII names (nearly all of them) become strings without the UTF-8 decoder.
   */
  name(last: boolean, dotErrno = E.EINVAL): string {
    const b = this.b;
    const start = this.pos;
    const nul = this.nul();
    this.pos = nul + 1;
    if (last) this.end();
    const len = nul - start;
    if (len === 0) throw new Bad(E.EINVAL, 'bad file name');
    if (len > NAME_MAX) throw new Bad(E.ENAMETOOLONG, 'bad file name');
    let ascii = true;
    let dots = true;
    for (let i = start; i < nul; i++) {
      const c = b[i]!;
      if (c === 0x2f) throw new Bad(E.EINVAL, 'bad file name');
      if (c !== 0x2e) dots = false;
      if (c >= 0x80) ascii = false;
    }
    if (dots && len <= 2) throw new Bad(dotErrno, 'bad file name');
    if (ascii && len <= SHORT_NAME) {
      let s = '';
      for (let i = start; i < nul; i++) s += String.fromCharCode(b[i]!);
      return s;
    }
    const s = decodeUtf8(b.subarray(start, nul));
    if (s === null) throw new Bad(E.EINVAL, 'file name is not UTF-8');
    return s;
  }
  xattrName(last: boolean): string {
    const bytes = this.cstring(last);
    if (bytes.length === 0 || bytes.length > XATTR_NAME_MAX) throw new Bad(E.ERANGE, 'bad xattr name length');
    const s = decodeUtf8(bytes);
    if (s === null) throw new Bad(E.EINVAL, 'xattr name is not UTF-8');
    return s;
  }
  u32(off: number): number {
    return this.v.getUint32(this.vb + off, true);
  }
  u64(off: number): number {
    return getU64(this.v, this.vb + off);
  }
  i64(off: number): number {
    return getI64(this.v, this.vb + off);
  }
  big(off: number): bigint {
    return this.v.getBigUint64(this.vb + off, true);
  }
  ns(secOff: number, nsecOff: number): bigint {
    return this.v.getBigInt64(this.vb + secOff, true) * 1_000_000_000n + BigInt(this.u32(nsecOff) % 1_000_000_000);
  }
}

/** Names up to this long that are plain ASCII are built char by char (faster than TextDecoder). */
const SHORT_NAME = 64;

/**
 * Decodes one request from `bytes` (the whole message: header first). Never throws.
 * Returns the request, or the header (zero-filled where missing) and the errno to answer.
 */
export function decodeRequest(bytes: Uint8Array, opts: DecodeOptions = {}): DecodeResult {
  if (bytes.length < IN_HEADER_SIZE) return { ok: false, h: decodeInHeader(bytes), errno: E.EINVAL, why: 'truncated header' };
  const v = bufferView(bytes.buffer);
  const vo = bytes.byteOffset;
  const h = headerOf(v, vo);
  if (h.len < IN_HEADER_SIZE || h.len > bytes.length) {
    return { ok: false, h, errno: E.EINVAL, why: `header length ${h.len} does not match the ${bytes.length} bytes received` };
  }
  if (h.extLen > h.len - IN_HEADER_SIZE) return { ok: false, h, errno: E.EINVAL, why: 'extensions longer than the request' };
  const a = new Args(bytes, v, vo, IN_HEADER_SIZE, h.len - h.extLen);
  try {
    return { ok: true, req: decodeArgs(h, a, opts) };
  } catch (err) {
    if (err instanceof Bad) return { ok: false, h, errno: err.errno, why: err.why };
    return { ok: false, h, errno: E.EINVAL, why: `decoder error: ${(err as Error).message}` };
  }
}

/** fuse_in_header at offset `o` of the view (IN_HEADER_SIZE bytes there), as decodeInHeader reads it. */
function headerOf(v: DataView, o: number): InHeader {
  return {
    len: v.getUint32(o, true),
    opcode: v.getUint32(o + 4, true),
    unique: v.getBigUint64(o + 8, true),
    nodeid: getU64(v, o + 16),
    uid: v.getUint32(o + 24, true),
    gid: v.getUint32(o + 28, true),
    pid: v.getUint32(o + 32, true),
    extLen: v.getUint16(o + 36, true) * 8,
  };
}

/**
 * A view of a whole ArrayBuffer, kept for the next request in the same buffer: transports
 * copy requests into slices of a shared pool (Buffer.allocUnsafe), so one view serves the
 * many requests a pool holds instead of a DataView per request.
 */
let viewedBuffer: ArrayBufferLike | null = null;
let bufferViewCache: DataView | null = null;
function bufferView(buf: ArrayBufferLike): DataView {
  // The same buffer, not detached (the caller saw its bytes): the view is still good.
  if (buf !== viewedBuffer || bufferViewCache === null) {
    viewedBuffer = buf;
    bufferViewCache = new DataView(buf);
  }
  return bufferViewCache;
}

function decodeArgs(h: InHeader, a: Args, opts: DecodeOptions): FuseRequest {
  const op = h.opcode;
  switch (op) {
    case Opcode.INIT: {
      if (a.left < INIT_IN_COMPAT_SIZE) throw new Bad(E.EINVAL, 'truncated fuse_init_in');
      if (a.left > INIT_IN_MAX) throw new Bad(E.EINVAL, 'oversized fuse_init_in');
      const flags = a.u32(12);
      const flags2 = a.left >= 20 ? a.u32(16) : 0;
      return { op, h, major: a.u32(0), minor: a.u32(4), maxReadahead: a.u32(8), flags, flags2 };
    }
    case Opcode.LOOKUP:
      return { op, h, name: a.name(true, E.ENOENT) };
    case Opcode.FORGET: {
      a.struct(FORGET_IN_SIZE);
      a.end();
      return { op, h, nlookup: a.u64(0) };
    }
    case Opcode.BATCH_FORGET: {
      a.struct(BATCH_FORGET_IN_SIZE);
      const count = a.u32(0);
      if (a.left !== count * FORGET_ONE_SIZE) throw new Bad(E.EINVAL, `batch forget of ${count} entries in ${a.left} bytes`);
      const items: ForgetOne[] = [];
      for (let i = 0; i < count; i++) {
        const off = BATCH_FORGET_IN_SIZE + i * FORGET_ONE_SIZE;
        items.push({ nodeid: a.u64(off), nlookup: a.u64(off + 8) });
      }
      return { op, h, items };
    }
    case Opcode.GETATTR:
      a.struct(GETATTR_IN_SIZE);
      a.end();
      return { op, h, flags: a.u32(0), fh: a.u64(8) };
    case Opcode.SETATTR:
      a.struct(SETATTR_IN_SIZE);
      a.end();
      return {
        op, h,
        attr: {
          valid: a.u32(0), fh: a.u64(8), size: a.u64(16), lockOwner: a.big(24),
          atimeNs: a.ns(32, 56), mtimeNs: a.ns(40, 60), ctimeNs: a.ns(48, 64),
          mode: a.u32(68), uid: a.u32(76), gid: a.u32(80),
        },
      };
    case Opcode.READLINK:
    case Opcode.STATFS:
    case Opcode.DESTROY:
      a.end();
      return { op, h };
    case Opcode.SYMLINK: {
      const name = a.name(false);
      const t = a.cstring(true);
      if (t.length === 0) throw new Bad(E.ENOENT, 'empty symlink target');
      if (t.length > SYMLINK_MAX) throw new Bad(E.ENAMETOOLONG, 'symlink target too long');
      const target = decodeUtf8(t);
      if (target === null) throw new Bad(E.EINVAL, 'symlink target is not UTF-8');
      return { op, h, name, target };
    }
    case Opcode.MKNOD:
      a.struct(MKNOD_IN_SIZE);
      return { op, h, mode: a.u32(0), rdev: a.u32(4), umask: a.u32(8), name: a.name(true) };
    case Opcode.MKDIR:
      a.struct(MKDIR_IN_SIZE);
      return { op, h, mode: a.u32(0), umask: a.u32(4), name: a.name(true) };
    case Opcode.UNLINK:
    case Opcode.RMDIR:
      return { op, h, name: a.name(true) };
    case Opcode.RENAME:
    case Opcode.RENAME2: {
      a.struct(op === Opcode.RENAME ? RENAME_IN_SIZE : RENAME2_IN_SIZE);
      const newdir = a.u64(0);
      const flags = op === Opcode.RENAME2 ? a.u32(8) : 0;
      const name = a.name(false);
      const newname = a.name(true);
      return { op, h, newdir, flags, name, newname };
    }
    case Opcode.LINK:
      a.struct(LINK_IN_SIZE);
      return { op, h, oldnodeid: a.u64(0), name: a.name(true) };
    case Opcode.OPEN:
    case Opcode.OPENDIR:
      a.struct(OPEN_IN_SIZE);
      a.end();
      return { op, h, flags: a.u32(0), openFlags: a.u32(4) };
    case Opcode.READ:
    case Opcode.READDIR:
    case Opcode.READDIRPLUS:
      a.struct(READ_IN_SIZE);
      a.end();
      return { op, h, fh: a.u64(0), offset: a.u64(8), size: a.u32(16), readFlags: a.u32(20), flags: a.u32(32) };
    case Opcode.WRITE: {
      a.struct(WRITE_IN_SIZE);
      const size = a.u32(16);
      if (a.left !== size) throw new Bad(E.EINVAL, `write of ${size} bytes carries ${a.left}`);
      return {
        op, h, fh: a.u64(0), offset: a.u64(8), writeFlags: a.u32(20), flags: a.u32(32),
        data: a.bytes(WRITE_IN_SIZE, WRITE_IN_SIZE + size),
      };
    }
    case Opcode.RELEASE:
    case Opcode.RELEASEDIR:
      a.struct(RELEASE_IN_SIZE);
      a.end();
      return { op, h, fh: a.u64(0), flags: a.u32(8), releaseFlags: a.u32(12) };
    case Opcode.FSYNC:
    case Opcode.FSYNCDIR:
      a.struct(FSYNC_IN_SIZE);
      a.end();
      return { op, h, fh: a.u64(0), fsyncFlags: a.u32(8) };
    case Opcode.SETXATTR: {
      a.struct(opts.setxattrExt ? SETXATTR_IN_SIZE : SETXATTR_IN_COMPAT_SIZE);
      const size = a.u32(0);
      const flags = a.u32(4);
      const name = a.xattrName(false);
      if (size > XATTR_SIZE_MAX) throw new Bad(E.E2BIG, 'xattr value too large');
      if (a.left !== size) throw new Bad(E.EINVAL, `xattr value of ${size} bytes carries ${a.left}`);
      return { op, h, name, flags, value: a.b.subarray(a.pos, a.pos + size) };
    }
    case Opcode.GETXATTR:
      a.struct(GETXATTR_IN_SIZE);
      return { op, h, size: a.u32(0), name: a.xattrName(true) };
    case Opcode.LISTXATTR:
      a.struct(GETXATTR_IN_SIZE);
      a.end();
      return { op, h, size: a.u32(0) };
    case Opcode.REMOVEXATTR:
      return { op, h, name: a.xattrName(true) };
    case Opcode.FLUSH:
      a.struct(FLUSH_IN_SIZE);
      a.end();
      return { op, h, fh: a.u64(0) };
    case Opcode.GETLK:
    case Opcode.SETLK:
    case Opcode.SETLKW:
      a.struct(LK_IN_SIZE);
      a.end();
      return {
        op, h, fh: a.u64(0), owner: a.big(8),
        lk: { start: a.big(16), end: a.big(24), type: a.u32(32), pid: a.u32(36) }, lkFlags: a.u32(40),
      };
    case Opcode.ACCESS:
      a.struct(ACCESS_IN_SIZE);
      a.end();
      return { op, h, mask: a.u32(0) };
    case Opcode.CREATE:
      a.struct(CREATE_IN_SIZE);
      return { op, h, flags: a.u32(0), mode: a.u32(4), umask: a.u32(8), openFlags: a.u32(12), name: a.name(true) };
    case Opcode.INTERRUPT:
      a.struct(INTERRUPT_IN_SIZE);
      a.end();
      return { op, h, target: a.big(0) };
    case Opcode.FALLOCATE:
      a.struct(FALLOCATE_IN_SIZE);
      a.end();
      return { op, h, fh: a.u64(0), offset: a.u64(8), length: a.u64(16), mode: a.u32(24) };
    case Opcode.LSEEK:
      a.struct(LSEEK_IN_SIZE);
      a.end();
      return { op, h, fh: a.u64(0), offset: a.i64(8), whence: a.u32(16) };
    case Opcode.SYNCFS:
      a.struct(SYNCFS_IN_SIZE);
      a.end();
      return { op, h };
    default:
      return { op: 'other', h };
  }
}

// ---- client side: encoders ----------------------------------------------------------------

const utf8enc = new TextEncoder();

/** A NUL-terminated string argument. */
export function cstr(s: string | Uint8Array): Uint8Array {
  const b = typeof s === 'string' ? utf8enc.encode(s) : s;
  const out = new Uint8Array(b.length + 1);
  out.set(b);
  return out;
}

function struct(size: number, fill: (v: DataView) => void): Uint8Array {
  const b = new Uint8Array(size);
  fill(viewOf(b));
  return b;
}

export interface RequestHeader {
  readonly opcode: number;
  readonly unique: bigint;
  readonly nodeid: number | bigint;
  readonly uid?: number;
  readonly gid?: number;
  readonly pid?: number;
}

/** Header + arguments as one message (header.len = total length). */
export function encodeRequest(h: RequestHeader, args: readonly Uint8Array[]): Uint8Array {
  let len = IN_HEADER_SIZE;
  for (const a of args) len += a.length;
  const out = new Uint8Array(len);
  encodeInHeader({ ...h, len }, out);
  let pos = IN_HEADER_SIZE;
  for (const a of args) {
    out.set(a, pos);
    pos += a.length;
  }
  return out;
}

export const encode = {
  init(major: number, minor: number, maxReadahead: number, flags: number, flags2 = 0): Uint8Array {
    const size = minor >= 36 ? INIT_IN_SIZE : INIT_IN_COMPAT_SIZE;
    return struct(size, (v) => {
      v.setUint32(0, major, true);
      v.setUint32(4, minor, true);
      v.setUint32(8, maxReadahead, true);
      v.setUint32(12, flags >>> 0, true);
      if (size > 16) v.setUint32(16, flags2 >>> 0, true);
    });
  },
  forget(nlookup: number): Uint8Array {
    return struct(FORGET_IN_SIZE, (v) => setU64(v, 0, nlookup));
  },
  batchForget(items: readonly ForgetOne[]): Uint8Array {
    return struct(BATCH_FORGET_IN_SIZE + items.length * FORGET_ONE_SIZE, (v) => {
      v.setUint32(0, items.length, true);
      items.forEach((it, i) => {
        setU64(v, 8 + i * 16, it.nodeid);
        setU64(v, 16 + i * 16, it.nlookup);
      });
    });
  },
  getattr(flags: number, fh: number): Uint8Array {
    return struct(GETATTR_IN_SIZE, (v) => {
      v.setUint32(0, flags, true);
      setU64(v, 8, fh);
    });
  },
  setattr(s: Partial<SetattrIn> & { valid: number }): Uint8Array {
    return struct(SETATTR_IN_SIZE, (v) => {
      const time = (secOff: number, nsOff: number, ns: bigint | undefined): void => {
        const t = ns ?? 0n;
        let sec = t / 1_000_000_000n;
        let n = t % 1_000_000_000n;
        if (n < 0n) {
          n += 1_000_000_000n;
          sec -= 1n;
        }
        v.setBigInt64(secOff, sec, true);
        v.setUint32(nsOff, Number(n), true);
      };
      v.setUint32(0, s.valid, true);
      setU64(v, 8, s.fh ?? 0);
      setU64(v, 16, s.size ?? 0);
      v.setBigUint64(24, s.lockOwner ?? 0n, true);
      time(32, 56, s.atimeNs);
      time(40, 60, s.mtimeNs);
      time(48, 64, s.ctimeNs);
      v.setUint32(68, s.mode ?? 0, true);
      v.setUint32(76, s.uid ?? 0, true);
      v.setUint32(80, s.gid ?? 0, true);
    });
  },
  mknod(mode: number, rdev: number, umask: number): Uint8Array {
    return struct(MKNOD_IN_SIZE, (v) => {
      v.setUint32(0, mode, true);
      v.setUint32(4, rdev, true);
      v.setUint32(8, umask, true);
    });
  },
  mkdir(mode: number, umask: number): Uint8Array {
    return struct(MKDIR_IN_SIZE, (v) => {
      v.setUint32(0, mode, true);
      v.setUint32(4, umask, true);
    });
  },
  rename(newdir: number): Uint8Array {
    return struct(RENAME_IN_SIZE, (v) => setU64(v, 0, newdir));
  },
  rename2(newdir: number, flags: number): Uint8Array {
    return struct(RENAME2_IN_SIZE, (v) => {
      setU64(v, 0, newdir);
      v.setUint32(8, flags, true);
    });
  },
  link(oldnodeid: number): Uint8Array {
    return struct(LINK_IN_SIZE, (v) => setU64(v, 0, oldnodeid));
  },
  open(flags: number, openFlags = 0): Uint8Array {
    return struct(OPEN_IN_SIZE, (v) => {
      v.setUint32(0, flags, true);
      v.setUint32(4, openFlags, true);
    });
  },
  create(flags: number, mode: number, umask: number, openFlags = 0): Uint8Array {
    return struct(CREATE_IN_SIZE, (v) => {
      v.setUint32(0, flags, true);
      v.setUint32(4, mode, true);
      v.setUint32(8, umask, true);
      v.setUint32(12, openFlags, true);
    });
  },
  /** fuse_read_in (READ, READDIR, READDIRPLUS). */
  read(fh: number, offset: number | bigint, size: number, flags = 0): Uint8Array {
    return struct(READ_IN_SIZE, (v) => {
      setU64(v, 0, fh);
      setU64(v, 8, offset);
      v.setUint32(16, size >>> 0, true);
      v.setUint32(32, flags, true);
    });
  },
  /** fuse_write_in; the data follows as its own argument. */
  write(fh: number, offset: number, size: number, writeFlags = 0, flags = 0): Uint8Array {
    return struct(WRITE_IN_SIZE, (v) => {
      setU64(v, 0, fh);
      setU64(v, 8, offset);
      v.setUint32(16, size >>> 0, true);
      v.setUint32(20, writeFlags, true);
      v.setUint32(32, flags, true);
    });
  },
  release(fh: number, flags = 0, releaseFlags = 0): Uint8Array {
    return struct(RELEASE_IN_SIZE, (v) => {
      setU64(v, 0, fh);
      v.setUint32(8, flags, true);
      v.setUint32(12, releaseFlags, true);
    });
  },
  flush(fh: number): Uint8Array {
    return struct(FLUSH_IN_SIZE, (v) => setU64(v, 0, fh));
  },
  fsync(fh: number, fsyncFlags: number): Uint8Array {
    return struct(FSYNC_IN_SIZE, (v) => {
      setU64(v, 0, fh);
      v.setUint32(8, fsyncFlags, true);
    });
  },
  setxattr(size: number, flags: number, ext = false): Uint8Array {
    return struct(ext ? SETXATTR_IN_SIZE : SETXATTR_IN_COMPAT_SIZE, (v) => {
      v.setUint32(0, size >>> 0, true);
      v.setUint32(4, flags, true);
    });
  },
  /** fuse_getxattr_in (GETXATTR, LISTXATTR). */
  getxattr(size: number): Uint8Array {
    return struct(GETXATTR_IN_SIZE, (v) => v.setUint32(0, size >>> 0, true));
  },
  lk(fh: number, owner: bigint, lk: FileLock, lkFlags = 0): Uint8Array {
    return struct(LK_IN_SIZE, (v) => {
      setU64(v, 0, fh);
      v.setBigUint64(8, owner, true);
      v.setBigUint64(16, lk.start, true);
      v.setBigUint64(24, lk.end, true);
      v.setUint32(32, lk.type, true);
      v.setUint32(36, lk.pid, true);
      v.setUint32(40, lkFlags, true);
    });
  },
  access(mask: number): Uint8Array {
    return struct(ACCESS_IN_SIZE, (v) => v.setUint32(0, mask, true));
  },
  interrupt(unique: bigint): Uint8Array {
    return struct(INTERRUPT_IN_SIZE, (v) => v.setBigUint64(0, unique, true));
  },
  fallocate(fh: number, offset: number, length: number, mode: number): Uint8Array {
    return struct(FALLOCATE_IN_SIZE, (v) => {
      setU64(v, 0, fh);
      setU64(v, 8, offset);
      setU64(v, 16, length);
      v.setUint32(24, mode, true);
    });
  },
  lseek(fh: number, offset: number, whence: number): Uint8Array {
    return struct(LSEEK_IN_SIZE, (v) => {
      setU64(v, 0, fh);
      v.setBigInt64(8, BigInt(Math.trunc(offset)), true);
      v.setUint32(16, whence, true);
    });
  },
  syncfs(): Uint8Array {
    return new Uint8Array(SYNCFS_IN_SIZE);
  },
};
