// The storage layer's one interface: a flat namespace of immutable-per-write objects, as
// S3 has it. Implementations: s3-store.ts (any S3-compatible server), file-store.ts (a
// local directory, the embedded default), memory-store.ts (unit tests).
//
// Semantics every implementation keeps (the conformance suite in test/backends checks them):
// - Keys are non-empty, well-formed UTF-8 strings of at most 1024 bytes without NUL.
//   Listings are ordered by the keys' UTF-8 bytes (as S3 orders them).
// - `delete` of a missing key succeeds (S3 semantics); `get`/`getInto`/`copy` of a missing
//   key throw ENOENT; `head` of a missing key returns null.
// - Durability: a completed write (put, copy, delete, completeMultipart) is seen by every
//   later read and survives the gateway process dying. It survives a crash of the machine
//   once a `sync()` that started after it completed: that is what FUSE FSYNC/SYNCFS and a
//   virtio-blk FLUSH call. S3 stores are durable at completion (sync does nothing); the
//   file store defers its fsyncs to sync().
// - Ranged reads are clipped at the end of the object: reading at or past the end returns
//   0 bytes (S3's 416 is absorbed), never an error.
// - ETags are opaque strings (S3 returns them quoted; the local stores do the same) to be
//   passed back in `ifMatch`.
// - User metadata keys are lower-cased (S3 does so); keys are [a-z0-9._-], values printable
//   ASCII, at most 2 KiB in all (S3's limit) — checked here for every store alike.
//
// Errors are StoreError (an ErrnoError), errno chosen so that the FUSE and blk layers can
// pass them on:
//   ENOENT        no such key, no such multipart upload, and a missing bucket / store
//                 directory (then `missingContainer` is true and the message says which)
//   EEXIST        a put/complete with ifNoneMatch '*' found an existing object
//   ESTALE        a put/complete with ifMatch found a different (or no) ETag — the caller's
//                 view of the object is stale; also a GET whose object changed mid-read
//   EACCES        access denied, unknown access key, bad signature
//   ECONNREFUSED  endpoint refused the connection (after the bounded retries)
//   EHOSTUNREACH  endpoint unreachable / name does not resolve
//   ETIMEDOUT     connection or request timeout
//   ENOTSUP       the store cannot do what was asked (conditional writes where the
//                 capability is false, a server's 501)
//   EINVAL        bad key/metadata/part list/continuation token
//   ENAMETOOLONG  key over 1024 bytes (file store: a path segment over 254 bytes)
//   EFBIG         object or part over the store's size limit
//   EIO           everything else (5xx after retries, malformed replies, corrupt files)
import { randomBytes } from 'node:crypto';
import { ErrnoError, type ErrnoName } from '../util/errors.js';
import type { Segment } from '../virtio/memory.js';

export type Metadata = Record<string, string>;

/** What a listing returns for each object. */
export interface ObjectInfo {
  readonly key: string;
  readonly size: number;
  readonly etag: string;
  readonly lastModified: Date;
  /**
   * The user metadata, when the store had it at hand while listing (the file store reads
   * each object's header anyway; S3 listings never carry it): a caller that needs it can
   * skip the HEAD.
   */
  readonly metadata?: Metadata;
  readonly contentType?: string;
}

/** `head`: the listing info plus user metadata and content type. */
export interface ObjectHead extends ObjectInfo {
  readonly metadata: Metadata;
}

export interface GetResult extends ObjectHead {
  /** The object's bytes, or the requested range of them (shorter at the end of the object). */
  readonly body: Uint8Array;
}

export interface ReadIntoResult extends ObjectHead {
  /** Bytes written to the start of `target`; less than its length only at the end of the object. */
  readonly bytesRead: number;
}

export interface ByteRange {
  readonly offset: number;
  readonly length: number;
}

/** A body in memory, or a local file read by the store (multipart above `multipartThreshold`). */
export type PutBody = Uint8Array | { readonly path: string };

export interface PutOptions {
  readonly metadata?: Metadata;
  readonly contentType?: string;
  /** Create only: fail with EEXIST if the key exists. Needs `capabilities.conditionalWrites`. */
  readonly ifNoneMatch?: '*';
  /** Replace only this version: fail with ESTALE if the ETag differs (ENOENT if missing). Needs `capabilities.conditionalWrites`. */
  readonly ifMatch?: string;
}

export interface PutResult {
  readonly etag: string;
}

export interface ListOptions {
  readonly prefix?: string;
  readonly delimiter?: string;
  /** `nextToken` of the previous page (opaque, store-specific). */
  readonly continuationToken?: string;
  /** 1..1000, default 1000. Counts objects and common prefixes together (S3; s3rver counts only objects). */
  readonly maxKeys?: number;
}

export interface ListPage {
  readonly objects: ObjectInfo[];
  readonly commonPrefixes: string[];
  /** Present when there is more to list. */
  readonly nextToken?: string;
}

export interface CopyOptions {
  /** Given: replace the destination's metadata with this (S3 MetadataDirective REPLACE). Absent: copy the source's. */
  readonly metadata?: Metadata;
  /** With `metadata`: the new content type (default: the source's). */
  readonly contentType?: string;
}

export interface CompletedPart {
  readonly partNumber: number;
  readonly etag: string;
}

export interface MultipartOptions {
  readonly metadata?: Metadata;
  readonly contentType?: string;
}

export interface CompleteOptions {
  readonly ifNoneMatch?: '*';
  readonly ifMatch?: string;
}

export interface StoreCapabilities {
  /** If-None-Match: * and If-Match on put/complete are honoured atomically. Feature-detected for s3; true for file and memory. */
  readonly conditionalWrites: boolean;
  /** Smallest part (but the last) a multipart upload accepts. */
  readonly minPartSize: number;
  /** Largest single put / part. */
  readonly maxPartSize: number;
  readonly maxParts: number;
}

export interface ObjectStore {
  readonly kind: 's3' | 'file' | 'memory';
  /** For logs and error messages, e.g. `s3://bucket (http://127.0.0.1:9000)`. */
  readonly description: string;
  readonly capabilities: StoreCapabilities;
  /**
   * Whether the store can hold `key`, a valid key (at most 1024 bytes): a file store cannot
   * hold a path segment over 254 bytes once encoded. Absent: every valid key fits. Lets the
   * file system refuse a name (ENAMETOOLONG) before it buffers data it could never store.
   */
  keyFits?(key: string): boolean;

  /** The object, or `range` of it (clipped at the end; empty at or past the end). One allocation. */
  get(key: string, opts?: { readonly range?: ByteRange }): Promise<GetResult>;
  /** Reads up to `target.length` bytes at `offset` straight into `target` (no intermediate buffer). */
  getInto(key: string, offset: number, target: Uint8Array): Promise<ReadIntoResult>;
  /** Null when the key does not exist (a missing bucket still throws ENOENT). */
  head(key: string): Promise<ObjectHead | null>;
  put(key: string, body: PutBody, opts?: PutOptions): Promise<PutResult>;
  /** Succeeds when the key does not exist. */
  delete(key: string): Promise<void>;
  /** Deletes in batches of 1000; missing keys are not errors. Throws the first failure with `failedKeys`. */
  deleteMany(keys: readonly string[]): Promise<void>;
  list(opts?: ListOptions): Promise<ListPage>;
  /** Server-side copy within the store; `src === dst` with `metadata` rewrites metadata in place. */
  copy(src: string, dst: string, opts?: CopyOptions): Promise<PutResult>;

  createMultipart(key: string, opts?: MultipartOptions): Promise<string>;
  /** partNumber 1..10000; returns the part's ETag. */
  uploadPart(key: string, uploadId: string, partNumber: number, body: Uint8Array): Promise<string>;
  /**
   * UploadPartCopy: the part is a byte range of a stored object (the key being replaced
   * included), copied inside the store instead of sent. ENOENT without the source, EINVAL
   * for a range outside it, ESTALE when `source.ifMatch` is not its ETag, ENOTSUP where the
   * server does not implement it (s3rver answers 501): callers upload the bytes instead.
   */
  uploadPartCopy(key: string, uploadId: string, partNumber: number, source: PartCopySource): Promise<string>;
  completeMultipart(key: string, uploadId: string, parts: readonly CompletedPart[], opts?: CompleteOptions): Promise<PutResult>;
  abortMultipart(key: string, uploadId: string): Promise<void>;

  /** Makes every write that completed before the call durable (see the top of the file). */
  sync(): Promise<void>;

  /**
   * Optional, for stores whose reads are local system calls (file): reads up to `length`
   * bytes at `offset` of version `etag` of `key` straight into `targets` (in order), on the
   * calling thread. Returns the bytes read (short at the end of the object). ESTALE when
   * the object is not that version any more, ENOENT when it is gone.
   */
  readIntoSync?(key: string, etag: string, offset: number, length: number, targets: readonly Uint8Array[]): number;

  /**
   * Optional, for the same stores: head() on the calling thread (a lookup answered before
   * the request handler returns). Throws as head() rejects.
   */
  headNow?(key: string): ObjectHead | null;

  /**
   * Optional, for the same stores: version `etag` of `key` held open for many reads (an
   * open file's READs), so that each read is one system call rather than an open, a header
   * read and a close. ESTALE when the object is not that version, ENOENT when it is gone.
   */
  openReader?(key: string, etag: string): ObjectReader;
  /**
   * With openReader: reads of at least this many bytes are worth ObjectReader.readAsync
   * (Infinity when this host has no asynchronous engine).
   */
  readonly asyncReadMinBytes?: number;

  /** Releases sockets and timers. */
  close(): Promise<void>;
}

/**
 * One version of one object, held open (ObjectStore.openReader). Reads never see another
 * version: an object replaced behind the reader's back is noticed with current().
 */
export interface ObjectReader {
  readonly key: string;
  readonly etag: string;
  readonly size: number;
  /** Whether the key still names this version (one stat): false once replaced or deleted. */
  current(): boolean;
  /** As ObjectStore.readIntoSync, on the calling thread. */
  readIntoSync(offset: number, length: number, targets: readonly Uint8Array[]): number;
  /**
   * Starts reading up to `length` bytes at `offset` into host memory (`targets`, by
   * address; lengths adding up to at least `length`) on another thread and returns true;
   * `done` gets the bytes read (short only at the end) or a negative errno, once, possibly
   * before this returns. false when the read is better done synchronously (below the size
   * where the hand-off pays, no asynchronous engine on this host).
   */
  readAsync(offset: number, length: number, targets: readonly Segment[], done: (result: number) => void): boolean;
  /** Done with it; the file is closed once reads in flight have completed. */
  close(): void;
}

// ---------------------------------------------------------------------------------------
// Errors

export interface StoreErrorDetails {
  readonly op?: string;
  readonly key?: string;
  /** The S3 error code (NoSuchKey, SlowDown, …) or the Node error code. */
  readonly storeCode?: string;
  readonly httpStatus?: number;
  /** The bucket (s3) or store directory (file) itself is missing. */
  readonly missingContainer?: boolean;
  readonly failedKeys?: readonly string[];
}

/** An errno-carrying error from a store; `errnoOf` understands it. */
export class StoreError extends ErrnoError {
  readonly op?: string;
  readonly key?: string;
  readonly storeCode?: string;
  readonly httpStatus?: number;
  readonly missingContainer: boolean;
  readonly failedKeys?: readonly string[];
  constructor(code: ErrnoName, message: string, details: StoreErrorDetails = {}) {
    super(code, message);
    this.name = 'StoreError';
    this.op = details.op;
    this.key = details.key;
    this.storeCode = details.storeCode;
    this.httpStatus = details.httpStatus;
    this.missingContainer = details.missingContainer ?? false;
    this.failedKeys = details.failedKeys;
  }
}

// ---------------------------------------------------------------------------------------
// Validation shared by all stores (so that the stores agree on what is an error)

export const MAX_KEY_BYTES = 1024;
export const MAX_METADATA_BYTES = 2048;
export const MAX_LIST_KEYS = 1000;
export const DELETE_BATCH = 1000;
export const MIN_PART_SIZE = 5 * 1024 * 1024;
export const MAX_PART_SIZE = 5 * 1024 * 1024 * 1024;
export const MAX_PARTS = 10000;

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

/**
 * Name of the object a gateway writes and deletes under its prefix when it starts, to find
 * out whether the store honours conditional writes (S3Store.detectCapabilities). A fault
 * or a kill between the two leaves it behind: file systems must not show it as a file.
 */
export const PROBE_NAME_PREFIX = '.vhost-s3-probe-';

/** True when `s` has no lone surrogate, i.e. encodes to UTF-8 and back unchanged. */
export function isWellFormed(s: string): boolean {
  return !LONE_SURROGATE.test(s);
}

export function validateKey(key: string, op = 'key'): void {
  if (typeof key !== 'string' || key.length === 0) throw new StoreError('EINVAL', `${op}: empty key`, { op });
  if (!isWellFormed(key)) throw new StoreError('EINVAL', `${op}: key is not valid UTF-8 (lone surrogate)`, { op, key });
  if (key.includes('\0')) throw new StoreError('EINVAL', `${op}: key contains NUL`, { op, key });
  if (Buffer.byteLength(key, 'utf8') > MAX_KEY_BYTES)
    throw new StoreError('ENAMETOOLONG', `${op}: key longer than ${MAX_KEY_BYTES} bytes`, { op, key });
}

/** Prefixes and delimiters may be empty but must be well-formed. */
export function validateListOptions(opts: ListOptions): { prefix: string; delimiter: string; maxKeys: number } {
  const prefix = opts.prefix ?? '';
  const delimiter = opts.delimiter ?? '';
  for (const [what, s] of [['prefix', prefix], ['delimiter', delimiter]] as const) {
    if (!isWellFormed(s) || s.includes('\0')) throw new StoreError('EINVAL', `list: bad ${what}`, { op: 'list' });
  }
  let maxKeys = opts.maxKeys ?? MAX_LIST_KEYS;
  if (!Number.isInteger(maxKeys) || maxKeys < 1) throw new StoreError('EINVAL', `list: maxKeys must be a positive integer`, { op: 'list' });
  maxKeys = Math.min(maxKeys, MAX_LIST_KEYS);
  return { prefix, delimiter, maxKeys };
}

const META_KEY = /^[a-z0-9][a-z0-9._-]*$/;

/** Lower-cases keys (as S3 does) and checks the S3 limits. Returns a fresh object. */
export function normalizeMetadata(metadata: Metadata | undefined, op = 'put'): Metadata {
  const out: Metadata = {};
  if (!metadata) return out;
  let bytes = 0;
  for (const [rawKey, value] of Object.entries(metadata)) {
    const k = rawKey.toLowerCase();
    if (!META_KEY.test(k)) throw new StoreError('EINVAL', `${op}: bad metadata key ${JSON.stringify(rawKey)}`, { op });
    if (typeof value !== 'string' || !/^[\x20-\x7e]*$/.test(value))
      throw new StoreError('EINVAL', `${op}: metadata ${k} must be printable ASCII`, { op });
    bytes += k.length + value.length;
    out[k] = value;
  }
  if (bytes > MAX_METADATA_BYTES) throw new StoreError('EINVAL', `${op}: metadata over ${MAX_METADATA_BYTES} bytes`, { op });
  return out;
}

export function validateRange(offset: number, length: number, op = 'get'): void {
  if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0)
    throw new StoreError('EINVAL', `${op}: bad range ${offset}+${length}`, { op });
}

export function validatePartNumber(partNumber: number): void {
  if (!Number.isInteger(partNumber) || partNumber < 1 || partNumber > MAX_PARTS)
    throw new StoreError('EINVAL', `uploadPart: part number ${partNumber} outside 1..${MAX_PARTS}`, { op: 'uploadPart' });
}

/** The parts of a completion: ascending, unique. */
export function validatePartList(parts: readonly CompletedPart[]): void {
  if (parts.length === 0) throw new StoreError('EINVAL', 'completeMultipart: no parts', { op: 'completeMultipart' });
  let last = 0;
  for (const p of parts) {
    validatePartNumber(p.partNumber);
    if (p.partNumber <= last) throw new StoreError('EINVAL', 'completeMultipart: parts must be in ascending order', { op: 'completeMultipart' });
    last = p.partNumber;
  }
}

/**
 * Compares strings by their UTF-8 bytes (= by code points), the order S3 lists keys in.
 * JavaScript's `<` compares UTF-16 code units, which differs for characters above U+FFFF
 * versus U+E000..U+FFFF. Allocation-free.
 */
export function compareKeys(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    let x = a.charCodeAt(i);
    let y = b.charCodeAt(i);
    if (x === y) continue;
    // Map code units so that surrogates (astral code points) sort above U+E000..U+FFFF.
    if (x >= 0xd800) x += x >= 0xe000 ? -0x800 : 0x2000;
    if (y >= 0xd800) y += y >= 0xe000 ? -0x800 : 0x2000;
    return x - y;
  }
  return a.length - b.length;
}

/**
 * A fresh ETag in the 32 hex digits S3 uses for a single-part upload: a random 64-bit
 * prefix drawn once per process (per worker thread: each loads its own module) and a
 * counter, so it differs from every other ETag of this process and, but for a 2^-64
 * chance, of every other process and earlier run. ETags only tell versions apart (If-Match,
 * stale reads); a random draw per write cost ~6 µs of a ~55 µs small put of the file store.
 */
const etagPrefix = randomBytes(8).toString('hex');
let etagCount = 0;
export function newEtag(): string {
  etagCount++;
  return `"${etagPrefix}${etagCount.toString(16).padStart(16, '0')}"`;
}

// ---------------------------------------------------------------------------------------
// Helpers on top of the interface

export type ListEntry = ({ readonly type: 'object' } & ObjectInfo) | { readonly type: 'prefix'; readonly prefix: string };

/**
 * Every object and common prefix under `prefix`, paging with continuation tokens. A common
 * prefix that a server repeats on a later page (s3rver does) is reported once: entries
 * arrive in ascending order, so anything not after the last prefix reported is skipped.
 */
export async function* listAll(
  store: ObjectStore,
  opts: Omit<ListOptions, 'continuationToken'> = {},
): AsyncGenerator<ListEntry, void, undefined> {
  let token: string | undefined;
  let lastPrefix: string | undefined;
  do {
    const page = await store.list({ ...opts, continuationToken: token });
    for (const o of page.objects) yield { type: 'object', ...o };
    for (const p of page.commonPrefixes) {
      if (lastPrefix !== undefined && compareKeys(p, lastPrefix) <= 0) continue;
      lastPrefix = p;
      yield { type: 'prefix', prefix: p };
    }
    token = page.nextToken;
  } while (token !== undefined);
}

/** Every key under `prefix` (no delimiter), in order. */
export async function* listKeys(store: ObjectStore, prefix = ''): AsyncGenerator<string, void, undefined> {
  for await (const e of listAll(store, { prefix })) if (e.type === 'object') yield e.key;
}

export interface PutLargeOptions extends PutOptions {
  /** Part size in bytes (default 16 MiB; raised so that the object fits in maxParts parts). */
  readonly partSize?: number;
  /** Parts uploaded at once (default 4). */
  readonly concurrency?: number;
}

/** A byte range of a stored object, the source of an UploadPartCopy. */
export interface PartCopySource {
  readonly key: string;
  readonly offset: number;
  /** At least 1 byte. */
  readonly length: number;
  /** Copy only from this version (ESTALE otherwise). */
  readonly ifMatch?: string;
}

export interface PartSource {
  readonly size: number;
  read(offset: number, target: Uint8Array): Promise<number>;
  /**
   * Where the bytes of [offset, offset + length) already are, unchanged, in the store: that
   * part is copied there (UploadPartCopy) rather than read and sent. null: send it.
   */
  copySource?(offset: number, length: number): PartCopySource | null;
  /** The store refused a copy (ENOTSUP: not implemented; ESTALE: the source changed): the part was read and sent instead. */
  copyRefused?(err: StoreError): void;
}

/** The bytes of a PartCopySource, checked as UploadPartCopy checks them (for stores that copy parts by reading them). */
export async function readPartCopySource(store: ObjectStore, source: PartCopySource): Promise<Uint8Array> {
  const { key, offset, length } = source;
  if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 1)
    throw new StoreError('EINVAL', `uploadPartCopy: bad source range ${offset}+${length}`, { op: 'uploadPartCopy', key });
  const got = await store.get(key, { range: { offset, length } });
  if (source.ifMatch !== undefined && got.etag !== source.ifMatch)
    throw new StoreError('ESTALE', `uploadPartCopy: ${key} changed (If-Match failed)`, { op: 'uploadPartCopy', key });
  if (got.body.length !== length) throw new StoreError('EINVAL', `uploadPartCopy: range ${offset}+${length} outside ${key} (${got.size} bytes)`, { op: 'uploadPartCopy', key, storeCode: 'InvalidRange' });
  return got.body;
}

/** Part size for an object of `size` bytes: at least `wanted`, min part size, and ≤ maxParts parts. */
export function choosePartSize(size: number, caps: StoreCapabilities, wanted = 16 * 1024 * 1024): number {
  const MiB = 1024 * 1024;
  let part = Math.max(wanted, caps.minPartSize, 1);
  const needed = Math.ceil(size / caps.maxParts);
  if (needed > part) part = Math.ceil(needed / MiB) * MiB;
  if (part > caps.maxPartSize) throw new StoreError('EFBIG', `object of ${size} bytes is too large for this store`, { op: 'putLarge' });
  return part;
}

/**
 * A multipart upload of `source` (read part by part, so memory stays at
 * partSize × concurrency), aborted on failure. Parts the source says are unchanged
 * bytes of a stored object are copied in the store (UploadPartCopy); where the store
 * refuses that they are read and sent like the others.
 */
export async function putLarge(store: ObjectStore, key: string, source: PartSource, opts: PutLargeOptions = {}): Promise<PutResult> {
  const partSize = choosePartSize(source.size, store.capabilities, opts.partSize);
  const count = Math.max(1, Math.ceil(source.size / partSize));
  const uploadId = await store.createMultipart(key, { metadata: opts.metadata, contentType: opts.contentType });
  const parts: CompletedPart[] = new Array<CompletedPart>(count);
  try {
    let next = 0;
    let copying = source.copySource !== undefined;
    const worker = async (): Promise<void> => {
      for (;;) {
        const i = next++;
        if (i >= count) return;
        const offset = i * partSize;
        const length = Math.min(partSize, source.size - offset);
        const from = copying ? (source.copySource?.(offset, length) ?? null) : null;
        if (from !== null) {
          try {
            parts[i] = { partNumber: i + 1, etag: await store.uploadPartCopy(key, uploadId, i + 1, from) };
            continue;
          } catch (err) {
            if (!(err instanceof StoreError) || (err.code !== 'ENOTSUP' && err.code !== 'ESTALE')) throw err;
            if (err.code === 'ENOTSUP') copying = false;
            source.copyRefused?.(err);
          }
        }
        const buf = new Uint8Array(length);
        const n = await source.read(offset, buf);
        if (n !== buf.length) throw new StoreError('EIO', `putLarge: source shrank while uploading ${key}`, { op: 'putLarge', key });
        parts[i] = { partNumber: i + 1, etag: await store.uploadPart(key, uploadId, i + 1, buf) };
      }
    };
    const workers = Array.from({ length: Math.min(count, Math.max(1, opts.concurrency ?? 4)) }, worker);
    const results = await Promise.allSettled(workers);
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
    return await store.completeMultipart(key, uploadId, parts, { ifNoneMatch: opts.ifNoneMatch, ifMatch: opts.ifMatch });
  } catch (err) {
    await store.abortMultipart(key, uploadId).catch(() => undefined);
    throw err;
  }
}

/** A PartSource over a byte array (tests, in-memory bodies). */
export function bytesSource(bytes: Uint8Array): PartSource {
  return {
    size: bytes.byteLength,
    read: async (offset, target) => {
      const chunk = bytes.subarray(offset, offset + target.length);
      target.set(chunk);
      return chunk.length;
    },
  };
}

/** Checks a conditional write against a store's capability (shared wording). */
export function requireConditional(store: { readonly capabilities: StoreCapabilities; readonly description: string }, op: string, key: string, cond: { ifNoneMatch?: string; ifMatch?: string }): void {
  if (cond.ifNoneMatch === undefined && cond.ifMatch === undefined) return;
  if (cond.ifNoneMatch !== undefined && cond.ifNoneMatch !== '*')
    throw new StoreError('EINVAL', `${op}: ifNoneMatch must be '*'`, { op, key });
  if (!store.capabilities.conditionalWrites)
    throw new StoreError('ENOTSUP', `${op}: ${store.description} does not honour conditional writes`, { op, key });
}
