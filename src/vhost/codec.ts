// vhost-user wire codec, shared by the backend and the frontend session.
//
// A message is a 12-byte header {u32 request, u32 flags, u32 size} followed by `size`
// payload bytes; file descriptors ride as SCM_RIGHTS on the header's bytes. Everything
// is native endian, which is little endian on every host we run on.
//
// Decoders take the payload of a received message and either return a typed value or
// throw a ProtocolError (EBADMSG for a payload too short or too long for its type,
// ERANGE for a 64-bit address that cannot be a JS number). Nothing else escapes them,
// whatever the bytes are.
import {
  HEADER_SIZE,
  MAX_CONFIG_SIZE,
  MEM_TABLE_MAX_REGIONS,
  VHOST_USER_NEED_REPLY_MASK,
  VHOST_USER_REPLY_MASK,
  VHOST_USER_VERSION,
  VHOST_USER_VERSION_MASK,
  VHOST_USER_VRING_IDX_MASK,
  VHOST_USER_VRING_NOFD_MASK,
  requestName,
} from './protocol.js';

export type ProtocolErrorCode =
  | 'EIO'
  | 'EBADF'
  | 'EBUSY'
  | 'EINVAL'
  | 'ENOENT'
  | 'ENOSPC'
  | 'ERANGE'
  | 'EPROTO'
  | 'EBADMSG'
  | 'EMSGSIZE'
  | 'ENOTSUP'
  | 'ECONNRESET'
  | 'ETIMEDOUT';
const ERRNO: Record<ProtocolErrorCode, number> = {
  ENOENT: 2,
  EIO: 5,
  EBADF: 9,
  EBUSY: 16,
  EINVAL: 22,
  ENOSPC: 28,
  ERANGE: 34,
  EPROTO: 71,
  EBADMSG: 74,
  EMSGSIZE: 90,
  ENOTSUP: 95,
  ECONNRESET: 104,
  ETIMEDOUT: 110,
};

/** A vhost-user protocol violation (malformed message, bad state, unsupported request). */
export class ProtocolError extends Error {
  readonly code: ProtocolErrorCode;
  readonly errno: number;
  constructor(code: ProtocolErrorCode, message: string) {
    super(message);
    this.name = 'ProtocolError';
    this.code = code;
    this.errno = ERRNO[code];
  }
}

/** A received (or to-be-sent) message. `payload` is exactly `size` bytes. */
export interface VhostUserMessage {
  readonly request: number;
  readonly flags: number;
  readonly payload: Uint8Array;
  /** File descriptors that came with the message; the receiver owns (must close) them. */
  readonly fds: number[];
}

export interface MessageHeader {
  readonly request: number;
  readonly flags: number;
  readonly size: number;
}

export interface VringState {
  readonly index: number;
  readonly num: number;
}

/** SET_VRING_ADDR payload; desc/used/avail are frontend virtual addresses. */
export interface VringAddr {
  readonly index: number;
  readonly flags: number;
  readonly desc: number;
  readonly used: number;
  readonly avail: number;
  /** Guest-physical address for used-ring logging; meaningless unless flags has LOG. */
  readonly log: bigint;
}

export interface MemRegion {
  readonly guestAddr: number;
  readonly size: number;
  readonly userAddr: number;
  readonly mmapOffset: number;
}

export interface ConfigPayload {
  readonly offset: number;
  readonly size: number;
  readonly flags: number;
  /** `size` bytes (zeros in a GET_CONFIG request). */
  readonly data: Uint8Array;
}

/** GET/SET_INFLIGHT_FD payload (VhostUserInflight, 24 bytes with padding). */
export interface InflightPayload {
  readonly mmapSize: bigint;
  readonly mmapOffset: bigint;
  readonly numQueues: number;
  readonly queueSize: number;
}

/** SET_LOG_BASE payload. */
export interface LogPayload {
  readonly mmapSize: bigint;
  readonly mmapOffset: bigint;
}

/** SET_VRING_KICK/CALL/ERR payload: the ring index and whether no fd is attached. */
export interface VringFile {
  readonly index: number;
  readonly noFd: boolean;
}

// Payload sizes.
export const U64_SIZE = 8;
export const VRING_STATE_SIZE = 8;
export const VRING_ADDR_SIZE = 40;
export const MEM_REGION_SIZE = 32;
export const MEM_TABLE_HEADER_SIZE = 8;
export const MEM_REG_MSG_SIZE = 8 + MEM_REGION_SIZE;
export const CONFIG_HEADER_SIZE = 12;
export const INFLIGHT_SIZE = 24;
export const LOG_SIZE = 16;

const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);

function view(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

function expectSize(payload: Uint8Array, size: number, what: string): DataView {
  if (payload.byteLength !== size) {
    throw new ProtocolError('EBADMSG', `${what}: payload of ${payload.byteLength} bytes, expected ${size}`);
  }
  return view(payload);
}

/** Reads a u64 that must fit in a JS number (addresses and sizes). */
function readNum(dv: DataView, off: number, what: string): number {
  const v = dv.getBigUint64(off, true);
  if (v > MAX_SAFE) throw new ProtocolError('ERANGE', `${what} 0x${v.toString(16)} is out of range`);
  return Number(v);
}

function writeNum(dv: DataView, off: number, v: number): void {
  dv.setBigUint64(off, BigInt(v), true);
}

// ---- header ------------------------------------------------------------------------

export function encodeHeader(h: MessageHeader, out: Uint8Array = new Uint8Array(HEADER_SIZE)): Uint8Array {
  const dv = view(out);
  dv.setUint32(0, h.request >>> 0, true);
  dv.setUint32(4, h.flags >>> 0, true);
  dv.setUint32(8, h.size >>> 0, true);
  return out;
}

/** Decodes a 12-byte header; throws EPROTO if the version bits are not 1. */
export function decodeHeader(b: Uint8Array): MessageHeader {
  if (b.byteLength < HEADER_SIZE) throw new ProtocolError('EBADMSG', `header of ${b.byteLength} bytes`);
  const dv = view(b);
  const request = dv.getUint32(0, true);
  const flags = dv.getUint32(4, true);
  const size = dv.getUint32(8, true);
  if ((flags & VHOST_USER_VERSION_MASK) !== VHOST_USER_VERSION) {
    throw new ProtocolError('EPROTO', `${requestName(request)}: unsupported version in flags 0x${flags.toString(16)}`);
  }
  return { request, flags, size };
}

/** Header + payload in one buffer, ready for one sendmsg. */
export function encodeMessage(request: number, flags: number, payload?: Uint8Array): Uint8Array {
  const size = payload?.byteLength ?? 0;
  const out = new Uint8Array(HEADER_SIZE + size);
  encodeHeader({ request, flags, size }, out);
  if (payload !== undefined) out.set(payload, HEADER_SIZE);
  return out;
}

/** Flags of a request (version 1, NEED_REPLY when asked). */
export function requestFlags(needReply: boolean): number {
  return VHOST_USER_VERSION | (needReply ? VHOST_USER_NEED_REPLY_MASK : 0);
}
/** Flags of a reply: exactly version 1 | REPLY (QEMU checks for equality). */
export const REPLY_FLAGS = VHOST_USER_VERSION | VHOST_USER_REPLY_MASK;

export function isReply(flags: number): boolean {
  return (flags & VHOST_USER_REPLY_MASK) !== 0;
}
export function needsReply(flags: number): boolean {
  return (flags & VHOST_USER_NEED_REPLY_MASK) !== 0;
}

// ---- payloads ----------------------------------------------------------------------

/** A payload that must be empty (GET_FEATURES, SET_OWNER, ...). */
export function decodeEmpty(payload: Uint8Array, what = 'message'): void {
  expectSize(payload, 0, what);
}

export function encodeU64(v: bigint): Uint8Array {
  const out = new Uint8Array(U64_SIZE);
  view(out).setBigUint64(0, BigInt.asUintN(64, v), true);
  return out;
}
export function decodeU64(payload: Uint8Array, what = 'u64'): bigint {
  return expectSize(payload, U64_SIZE, what).getBigUint64(0, true);
}

export function encodeVringState(s: VringState): Uint8Array {
  const out = new Uint8Array(VRING_STATE_SIZE);
  const dv = view(out);
  dv.setUint32(0, s.index >>> 0, true);
  dv.setUint32(4, s.num >>> 0, true);
  return out;
}
export function decodeVringState(payload: Uint8Array, what = 'vring state'): VringState {
  const dv = expectSize(payload, VRING_STATE_SIZE, what);
  return { index: dv.getUint32(0, true), num: dv.getUint32(4, true) };
}

/** Wire order: index, flags, desc, used, avail, log. */
export function encodeVringAddr(a: VringAddr): Uint8Array {
  const out = new Uint8Array(VRING_ADDR_SIZE);
  const dv = view(out);
  dv.setUint32(0, a.index >>> 0, true);
  dv.setUint32(4, a.flags >>> 0, true);
  writeNum(dv, 8, a.desc);
  writeNum(dv, 16, a.used);
  writeNum(dv, 24, a.avail);
  dv.setBigUint64(32, BigInt.asUintN(64, a.log), true);
  return out;
}
export function decodeVringAddr(payload: Uint8Array): VringAddr {
  const dv = expectSize(payload, VRING_ADDR_SIZE, 'vring address');
  return {
    index: dv.getUint32(0, true),
    flags: dv.getUint32(4, true),
    desc: readNum(dv, 8, 'desc address'),
    used: readNum(dv, 16, 'used address'),
    avail: readNum(dv, 24, 'avail address'),
    log: dv.getBigUint64(32, true),
  };
}

function writeRegion(dv: DataView, off: number, r: MemRegion): void {
  writeNum(dv, off, r.guestAddr);
  writeNum(dv, off + 8, r.size);
  writeNum(dv, off + 16, r.userAddr);
  writeNum(dv, off + 24, r.mmapOffset);
}
function readRegion(dv: DataView, off: number): MemRegion {
  return {
    guestAddr: readNum(dv, off, 'region guest address'),
    size: readNum(dv, off + 8, 'region size'),
    userAddr: readNum(dv, off + 16, 'region user address'),
    mmapOffset: readNum(dv, off + 24, 'region mmap offset'),
  };
}

/** SET_MEM_TABLE payload: u32 nregions, u32 padding, then nregions regions. */
export function encodeMemTable(regions: readonly MemRegion[]): Uint8Array {
  if (regions.length > MEM_TABLE_MAX_REGIONS) {
    throw new ProtocolError('EINVAL', `memory table of ${regions.length} regions (max ${MEM_TABLE_MAX_REGIONS})`);
  }
  const out = new Uint8Array(MEM_TABLE_HEADER_SIZE + regions.length * MEM_REGION_SIZE);
  const dv = view(out);
  dv.setUint32(0, regions.length, true);
  regions.forEach((r, i) => writeRegion(dv, MEM_TABLE_HEADER_SIZE + i * MEM_REGION_SIZE, r));
  return out;
}
/**
 * Accepts exactly 8 + n*32 bytes (what QEMU sends) or the full fixed-size struct of
 * 8 + 8*32 bytes (what a frontend sending sizeof(VhostUserMemory) sends).
 */
export function decodeMemTable(payload: Uint8Array): MemRegion[] {
  if (payload.byteLength < MEM_TABLE_HEADER_SIZE) {
    throw new ProtocolError('EBADMSG', `memory table: payload of ${payload.byteLength} bytes`);
  }
  const dv = view(payload);
  const n = dv.getUint32(0, true);
  if (n > MEM_TABLE_MAX_REGIONS) {
    throw new ProtocolError('EBADMSG', `memory table: ${n} regions (max ${MEM_TABLE_MAX_REGIONS})`);
  }
  const exact = MEM_TABLE_HEADER_SIZE + n * MEM_REGION_SIZE;
  const full = MEM_TABLE_HEADER_SIZE + MEM_TABLE_MAX_REGIONS * MEM_REGION_SIZE;
  if (payload.byteLength !== exact && payload.byteLength !== full) {
    throw new ProtocolError('EBADMSG', `memory table: ${n} regions in a payload of ${payload.byteLength} bytes`);
  }
  const regions: MemRegion[] = [];
  for (let i = 0; i < n; i++) regions.push(readRegion(dv, MEM_TABLE_HEADER_SIZE + i * MEM_REGION_SIZE));
  return regions;
}

/** ADD_MEM_REG / REM_MEM_REG payload: u64 padding, then one region. */
export function encodeMemRegionMsg(r: MemRegion): Uint8Array {
  const out = new Uint8Array(MEM_REG_MSG_SIZE);
  writeRegion(view(out), 8, r);
  return out;
}
export function decodeMemRegionMsg(payload: Uint8Array): MemRegion {
  return readRegion(expectSize(payload, MEM_REG_MSG_SIZE, 'memory region'), 8);
}

/** GET_CONFIG / SET_CONFIG payload: u32 offset, u32 size, u32 flags, size bytes. */
export function encodeConfig(c: { offset: number; flags: number; data: Uint8Array }): Uint8Array {
  if (c.data.byteLength > MAX_CONFIG_SIZE) {
    throw new ProtocolError('EINVAL', `config payload of ${c.data.byteLength} bytes (max ${MAX_CONFIG_SIZE})`);
  }
  const out = new Uint8Array(CONFIG_HEADER_SIZE + c.data.byteLength);
  const dv = view(out);
  dv.setUint32(0, c.offset >>> 0, true);
  dv.setUint32(4, c.data.byteLength, true);
  dv.setUint32(8, c.flags >>> 0, true);
  out.set(c.data, CONFIG_HEADER_SIZE);
  return out;
}
/** The size field must match the bytes that follow and be at most 256. */
export function decodeConfig(payload: Uint8Array): ConfigPayload {
  if (payload.byteLength < CONFIG_HEADER_SIZE) {
    throw new ProtocolError('EBADMSG', `config: payload of ${payload.byteLength} bytes`);
  }
  const dv = view(payload);
  const offset = dv.getUint32(0, true);
  const size = dv.getUint32(4, true);
  const flags = dv.getUint32(8, true);
  if (size > MAX_CONFIG_SIZE) throw new ProtocolError('EBADMSG', `config: size ${size} (max ${MAX_CONFIG_SIZE})`);
  if (payload.byteLength !== CONFIG_HEADER_SIZE + size) {
    throw new ProtocolError('EBADMSG', `config: size ${size} in a payload of ${payload.byteLength} bytes`);
  }
  return { offset, size, flags, data: payload.slice(CONFIG_HEADER_SIZE) };
}

export function encodeInflight(p: InflightPayload): Uint8Array {
  const out = new Uint8Array(INFLIGHT_SIZE);
  const dv = view(out);
  dv.setBigUint64(0, BigInt.asUintN(64, p.mmapSize), true);
  dv.setBigUint64(8, BigInt.asUintN(64, p.mmapOffset), true);
  dv.setUint16(16, p.numQueues & 0xffff, true);
  dv.setUint16(18, p.queueSize & 0xffff, true);
  return out;
}
export function decodeInflight(payload: Uint8Array): InflightPayload {
  const dv = expectSize(payload, INFLIGHT_SIZE, 'inflight');
  return {
    mmapSize: dv.getBigUint64(0, true),
    mmapOffset: dv.getBigUint64(8, true),
    numQueues: dv.getUint16(16, true),
    queueSize: dv.getUint16(18, true),
  };
}

export function encodeLog(p: LogPayload): Uint8Array {
  const out = new Uint8Array(LOG_SIZE);
  const dv = view(out);
  dv.setBigUint64(0, BigInt.asUintN(64, p.mmapSize), true);
  dv.setBigUint64(8, BigInt.asUintN(64, p.mmapOffset), true);
  return out;
}
export function decodeLog(payload: Uint8Array): LogPayload {
  const dv = expectSize(payload, LOG_SIZE, 'log base');
  return { mmapSize: dv.getBigUint64(0, true), mmapOffset: dv.getBigUint64(8, true) };
}

/** SET_VRING_KICK/CALL/ERR: bits 0-7 ring index, bit 8 "no fd"; other bits ignored. */
export function encodeVringFile(f: VringFile): Uint8Array {
  return encodeU64(BigInt((f.index & VHOST_USER_VRING_IDX_MASK) | (f.noFd ? VHOST_USER_VRING_NOFD_MASK : 0)));
}
export function decodeVringFile(payload: Uint8Array, what = 'vring file'): VringFile {
  const v = Number(decodeU64(payload, what) & 0xffffn);
  return { index: v & VHOST_USER_VRING_IDX_MASK, noFd: (v & VHOST_USER_VRING_NOFD_MASK) !== 0 };
}
