// FUSE replies: the server's encoders (typed results → the bytes after fuse_out_header)
// and the client's decoders (those bytes → typed results, checking every length).
import {
  ATTR_OUT_SIZE, DIRENTPLUS_SIZE, DIRENT_SIZE, ENTRY_OUT_SIZE, GETXATTR_OUT_SIZE, INIT_OUT_SIZE, LK_OUT_SIZE,
  LSEEK_OUT_SIZE, OPEN_OUT_SIZE, STATFS_OUT_SIZE, WRITE_OUT_SIZE, decodeAttr, direntAlign, encodeAttr, getU64,
  setU64, splitTimeout, viewOf, type WireAttr,
} from './abi.js';

/**
 * A reply as the server produced it: 0 or a negative errno, and the payload that follows
 * the out header as a list of byte arrays (written one after another by the transport,
 * never concatenated: a READ's data goes straight from the Vfs's buffer to the peer).
 */
export interface FuseReply {
  readonly unique: bigint;
  readonly error: number;
  readonly parts: readonly Uint8Array[];
  /** Sum of the parts' lengths. */
  readonly length: number;
  /**
   * The payload (`length` bytes, no parts) is already in the transport's reply buffer:
   * a READ read straight into it (see PayloadTarget in server.ts).
   */
  readonly inPlace?: true;
}

export function errorReply(unique: bigint, errno: number): FuseReply {
  return { unique, error: -Math.abs(errno), parts: [], length: 0 };
}

export function okReply(unique: bigint, parts: readonly Uint8Array[]): FuseReply {
  let length = 0;
  for (const p of parts) length += p.length;
  return { unique, error: 0, parts, length };
}

// ---- encoders -----------------------------------------------------------------------------

/**
 * Reply structs are carved from shared 64 KiB slabs instead of each getting its own
 * Uint8Array and DataView: a typed array over 64 bytes gets a backing store of its own
 * (calloc, an ArrayBuffer, GC bookkeeping), which cost more than encoding the reply.
 * Slab bytes are handed out once and never reused, so they are zero like a fresh array's
 * (padding and unset fields stay zero); a slab lives as long as any reply carved from it.
 */
const SLAB_SIZE = 64 * 1024;
/** Larger buffers get their own allocation. */
const SLAB_MAX = 16 * 1024;
let slab = new Uint8Array(0);
let slabView: DataView = new DataView(slab.buffer);
let slabPos = 0;

/** Where the buffer carve() returned last is written: a view holding it, and its offset there. */
let carvedView: DataView = slabView;
let carvedAt = 0;

/** `size` zero bytes (8-aligned in a slab); write them through carvedView at carvedAt. */
function carve(size: number): Uint8Array {
  if (size > SLAB_MAX) {
    const own = new Uint8Array(size);
    carvedView = viewOf(own);
    carvedAt = 0;
    return own;
  }
  if (slabPos + size > slab.length) {
    slab = new Uint8Array(SLAB_SIZE);
    slabView = new DataView(slab.buffer);
    slabPos = 0;
  }
  carvedView = slabView;
  carvedAt = slabPos;
  slabPos += (size + 7) & ~7;
  return slab.subarray(carvedAt, carvedAt + size);
}

export interface EntryOut {
  readonly nodeid: number;
  readonly generation: number;
  readonly entryValidMs: number;
  readonly attrValidMs: number;
  readonly attr: WireAttr;
}

export function encodeEntryOut(e: EntryOut, out?: Uint8Array, at = 0): Uint8Array {
  if (out !== undefined) {
    putEntryOut(viewOf(out), at, e);
    return out;
  }
  const b = carve(ENTRY_OUT_SIZE);
  putEntryOut(carvedView, carvedAt, e);
  return b;
}

/** fuse_entry_out at `at` of the view (ENTRY_OUT_SIZE bytes must be there). */
function putEntryOut(v: DataView, at: number, e: EntryOut): void {
  const ev = splitTimeout(e.entryValidMs);
  const av = splitTimeout(e.attrValidMs);
  setU64(v, at, e.nodeid);
  setU64(v, at + 8, e.generation);
  setU64(v, at + 16, ev.sec);
  setU64(v, at + 24, av.sec);
  v.setUint32(at + 32, ev.nsec, true);
  v.setUint32(at + 36, av.nsec, true);
  encodeAttr(v, at + 40, e.attr);
}

export function encodeAttrOut(attrValidMs: number, attr: WireAttr): Uint8Array {
  const out = carve(ATTR_OUT_SIZE);
  const v = carvedView;
  const at = carvedAt;
  const av = splitTimeout(attrValidMs);
  setU64(v, at, av.sec);
  v.setUint32(at + 8, av.nsec, true);
  encodeAttr(v, at + 16, attr);
  return out;
}

/** fuse_open_out; `backingId` (7.40) names the passthrough backing file of a FOPEN_PASSTHROUGH open. */
export function encodeOpenOut(fh: number, openFlags: number, backingId = 0): Uint8Array {
  const out = carve(OPEN_OUT_SIZE);
  const v = carvedView;
  const at = carvedAt;
  setU64(v, at, fh);
  v.setUint32(at + 8, openFlags >>> 0, true);
  v.setInt32(at + 12, backingId, true);
  return out;
}

/** fuse_write_out, fuse_getxattr_out (both: u32 size + padding). */
export function encodeSizeOut(size: number): Uint8Array {
  const out = new Uint8Array(WRITE_OUT_SIZE);
  viewOf(out).setUint32(0, size >>> 0, true);
  return out;
}

export function encodeLseekOut(offset: number): Uint8Array {
  const out = new Uint8Array(LSEEK_OUT_SIZE);
  setU64(viewOf(out), 0, offset);
  return out;
}

export interface KStatfs {
  readonly blocks: number;
  readonly bfree: number;
  readonly bavail: number;
  readonly files: number;
  readonly ffree: number;
  readonly bsize: number;
  readonly namelen: number;
  readonly frsize: number;
}

export function encodeStatfsOut(s: KStatfs): Uint8Array {
  const out = new Uint8Array(STATFS_OUT_SIZE);
  const v = viewOf(out);
  setU64(v, 0, s.blocks);
  setU64(v, 8, s.bfree);
  setU64(v, 16, s.bavail);
  setU64(v, 24, s.files);
  setU64(v, 32, s.ffree);
  v.setUint32(40, s.bsize >>> 0, true);
  v.setUint32(44, s.namelen >>> 0, true);
  v.setUint32(48, s.frsize >>> 0, true);
  return out;
}

export interface InitOut {
  readonly major: number;
  readonly minor: number;
  readonly maxReadahead: number;
  /** Bits 0..31 of the flags. */
  readonly flags: number;
  readonly maxBackground: number;
  readonly congestionThreshold: number;
  readonly maxWrite: number;
  readonly timeGran: number;
  readonly maxPages: number;
  readonly mapAlignment: number;
  /** Bits 32..63 of the flags (only meaningful with FUSE_INIT_EXT). */
  readonly flags2: number;
  /** With FUSE_PASSTHROUGH (7.40): how deep the backing files' file systems may stack (1: not a stacked one). */
  readonly maxStackDepth: number;
}

export function encodeInitOut(o: InitOut): Uint8Array {
  const out = new Uint8Array(INIT_OUT_SIZE);
  const v = viewOf(out);
  v.setUint32(0, o.major, true);
  v.setUint32(4, o.minor, true);
  v.setUint32(8, o.maxReadahead >>> 0, true);
  v.setUint32(12, o.flags >>> 0, true);
  v.setUint16(16, o.maxBackground, true);
  v.setUint16(18, o.congestionThreshold, true);
  v.setUint32(20, o.maxWrite >>> 0, true);
  v.setUint32(24, o.timeGran >>> 0, true);
  v.setUint16(28, o.maxPages, true);
  v.setUint16(30, o.mapAlignment, true);
  v.setUint32(32, o.flags2 >>> 0, true);
  v.setUint32(36, o.maxStackDepth >>> 0, true);
  return out;
}

/**
 * Packs fuse_dirent / fuse_direntplus records into a buffer of at most `capacity` bytes,
 * each padded to 8 bytes (FUSE_DIRENT_ALIGN). add*() returns false, writing nothing, when
 * the record does not fit: the kernel asks again from the last offset it received.
 */
export class DirentWriter {
  private readonly buf: Uint8Array;
  /** A view holding buf, which starts at `base` in it (buf is carved from a slab). */
  private readonly v: DataView;
  private readonly base: number;
  private pos = 0;

  constructor(readonly capacity: number) {
    this.buf = carve(Math.max(0, capacity));
    this.v = carvedView;
    this.base = carvedAt;
  }

  get length(): number {
    return this.pos;
  }

  /** The records written so far (a view, no copy). */
  bytes(): Uint8Array {
    return this.buf.subarray(0, this.pos);
  }

  fits(name: Uint8Array, plus: boolean): boolean {
    return this.pos + direntAlign((plus ? DIRENTPLUS_SIZE : DIRENT_SIZE) + name.length) <= this.capacity;
  }

  add(ino: number, off: number, type: number, name: Uint8Array): boolean {
    if (!this.fits(name, false)) return false;
    this.dirent(this.pos, ino, off, type, name);
    this.pos += direntAlign(DIRENT_SIZE + name.length);
    return true;
  }

  addPlus(entry: EntryOut, off: number, type: number, name: Uint8Array): boolean {
    if (!this.fits(name, true)) return false;
    putEntryOut(this.v, this.base + this.pos, entry);
    this.dirent(this.pos + ENTRY_OUT_SIZE, entry.attr.ino, off, type, name);
    this.pos += direntAlign(DIRENTPLUS_SIZE + name.length);
    return true;
  }

  private dirent(at: number, ino: number, off: number, type: number, name: Uint8Array): void {
    const v = this.v;
    const vat = this.base + at;
    setU64(v, vat, ino);
    setU64(v, vat + 8, off);
    v.setUint32(vat + 16, name.length, true);
    v.setUint32(vat + 20, type, true);
    this.buf.set(name, at + DIRENT_SIZE);
    // padding stays zero: the buffer is fresh
  }
}

// ---- decoders (client) ------------------------------------------------------------------

/** A reply payload was shorter (or otherwise other) than its structure: the peer is broken. */
export class ReplyFormatError extends Error {}

function need(b: Uint8Array, size: number, what: string): DataView {
  if (b.length < size) throw new ReplyFormatError(`${what}: ${b.length} bytes, expected ${size}`);
  return viewOf(b);
}

export interface DecodedEntry {
  readonly nodeid: number;
  readonly generation: number;
  readonly entryValidMs: number;
  readonly attrValidMs: number;
  readonly attr: WireAttr;
}

function ms(sec: number, nsec: number): number {
  return sec * 1000 + nsec / 1e6;
}

export function decodeEntryOut(b: Uint8Array, at = 0): DecodedEntry {
  const v = need(b, at + ENTRY_OUT_SIZE, 'fuse_entry_out');
  return {
    nodeid: getU64(v, at),
    generation: getU64(v, at + 8),
    entryValidMs: ms(getU64(v, at + 16), v.getUint32(at + 32, true)),
    attrValidMs: ms(getU64(v, at + 24), v.getUint32(at + 36, true)),
    attr: decodeAttr(v, at + 40),
  };
}

export function decodeAttrOut(b: Uint8Array): { attrValidMs: number; attr: WireAttr } {
  const v = need(b, ATTR_OUT_SIZE, 'fuse_attr_out');
  return { attrValidMs: ms(getU64(v, 0), v.getUint32(8, true)), attr: decodeAttr(v, 16) };
}

export function decodeOpenOut(b: Uint8Array, at = 0): { fh: number; openFlags: number; backingId: number } {
  const v = need(b, at + OPEN_OUT_SIZE, 'fuse_open_out');
  return { fh: getU64(v, at), openFlags: v.getUint32(at + 8, true), backingId: v.getInt32(at + 12, true) };
}

export function decodeSizeOut(b: Uint8Array): number {
  return need(b, GETXATTR_OUT_SIZE, 'size reply').getUint32(0, true);
}

export function decodeLseekOut(b: Uint8Array): number {
  return getU64(need(b, LSEEK_OUT_SIZE, 'fuse_lseek_out'), 0);
}

export function decodeLkOut(b: Uint8Array): { start: bigint; end: bigint; type: number; pid: number } {
  const v = need(b, LK_OUT_SIZE, 'fuse_lk_out');
  return { start: v.getBigUint64(0, true), end: v.getBigUint64(8, true), type: v.getUint32(16, true), pid: v.getUint32(20, true) };
}

export function decodeStatfsOut(b: Uint8Array): KStatfs {
  const v = need(b, 48, 'fuse_statfs_out'); // FUSE_COMPAT_STATFS_SIZE: frsize may be missing
  return {
    blocks: getU64(v, 0), bfree: getU64(v, 8), bavail: getU64(v, 16), files: getU64(v, 24), ffree: getU64(v, 32),
    bsize: v.getUint32(40, true), namelen: v.getUint32(44, true), frsize: b.length >= 52 ? v.getUint32(48, true) : 0,
  };
}

/** fuse_init_out; servers for minor >= 23 send at least 24 bytes, newer fields read as 0 when absent. */
export function decodeInitOut(b: Uint8Array): InitOut {
  const v = need(b, 8, 'fuse_init_out');
  const u16 = (o: number): number => (b.length >= o + 2 ? v.getUint16(o, true) : 0);
  const u32 = (o: number): number => (b.length >= o + 4 ? v.getUint32(o, true) : 0);
  return {
    major: u32(0), minor: u32(4), maxReadahead: u32(8), flags: u32(12), maxBackground: u16(16),
    congestionThreshold: u16(18), maxWrite: u32(20), timeGran: u32(24), maxPages: u16(28), mapAlignment: u16(30),
    flags2: u32(32), maxStackDepth: u32(36),
  };
}

export interface Dirent {
  readonly ino: number;
  /** Exact (servers such as virtiofsd hand out telldir cookies beyond 2^53). */
  readonly off: bigint;
  readonly type: number;
  readonly name: string;
}

export interface DirentPlus extends Dirent {
  readonly entry: DecodedEntry;
}

const utf8 = new TextDecoder();

function readDirent(b: Uint8Array, v: DataView, at: number): { d: Dirent; next: number } {
  if (at + DIRENT_SIZE > b.length) throw new ReplyFormatError('truncated fuse_dirent');
  const namelen = v.getUint32(at + 16, true);
  if (namelen === 0 || namelen > 1024 || at + DIRENT_SIZE + namelen > b.length) throw new ReplyFormatError(`bad dirent name length ${namelen}`);
  const d: Dirent = {
    ino: getU64(v, at), off: v.getBigUint64(at + 8, true), type: v.getUint32(at + 20, true),
    name: utf8.decode(b.subarray(at + DIRENT_SIZE, at + DIRENT_SIZE + namelen)),
  };
  return { d, next: at + direntAlign(DIRENT_SIZE + namelen) };
}

export function decodeDirents(b: Uint8Array): Dirent[] {
  const v = viewOf(b);
  const out: Dirent[] = [];
  for (let at = 0; at < b.length;) {
    const { d, next } = readDirent(b, v, at);
    out.push(d);
    at = next;
  }
  return out;
}

export function decodeDirentsPlus(b: Uint8Array): DirentPlus[] {
  const v = viewOf(b);
  const out: DirentPlus[] = [];
  for (let at = 0; at < b.length;) {
    const entry = decodeEntryOut(b, at);
    const { d, next } = readDirent(b, v, at + ENTRY_OUT_SIZE);
    out.push({ ...d, entry });
    at = next;
  }
  return out;
}

/** LISTXATTR payload: NUL-terminated names. */
export function decodeXattrList(b: Uint8Array): string[] {
  const out: string[] = [];
  let start = 0;
  for (let i = 0; i < b.length; i++) {
    if (b[i] === 0) {
      out.push(utf8.decode(b.subarray(start, i)));
      start = i + 1;
    }
  }
  if (start !== b.length) throw new ReplyFormatError('xattr list without final NUL');
  return out;
}
