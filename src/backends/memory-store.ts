// An ObjectStore in process memory, for unit tests of the layers above. Same semantics as
// the other stores (conformance suite), including multipart limits and conditional writes.
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { listPage, isAfter, type ListPosition } from './listing.js';
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
  type PartCopySource,
  readPartCopySource,
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

interface Stored {
  readonly data: Uint8Array;
  readonly etag: string;
  readonly lastModified: Date;
  readonly metadata: Metadata;
  readonly contentType?: string;
}

interface Upload {
  readonly key: string;
  readonly metadata: Metadata;
  readonly contentType?: string;
  readonly parts: Map<number, { etag: string; data: Uint8Array }>;
}

export interface MemoryStoreOptions {
  /** Default 5 MiB as S3; tests of the layers above may lower it. */
  readonly minPartSize?: number;
}

export class MemoryStore implements ObjectStore {
  readonly kind = 'memory' as const;
  readonly description = 'memory:';
  readonly capabilities: StoreCapabilities;
  private readonly objects = new Map<string, Stored>();
  private readonly uploads = new Map<string, Upload>();
  private sorted: string[] | null = null;

  constructor(opts: MemoryStoreOptions = {}) {
    this.capabilities = { conditionalWrites: true, minPartSize: opts.minPartSize ?? MIN_PART_SIZE, maxPartSize: MAX_PART_SIZE, maxParts: MAX_PARTS };
  }

  /** Number of stored objects (tests). */
  get size(): number {
    return this.objects.size;
  }

  async get(key: string, opts: { readonly range?: ByteRange } = {}): Promise<GetResult> {
    const o = this.find(key, 'get');
    let body: Uint8Array;
    if (opts.range) {
      validateRange(opts.range.offset, opts.range.length);
      body = o.data.slice(Math.min(opts.range.offset, o.data.length), Math.min(opts.range.offset + opts.range.length, o.data.length));
    } else body = o.data.slice();
    return { ...headOf(key, o), body };
  }

  async getInto(key: string, offset: number, target: Uint8Array): Promise<ReadIntoResult> {
    validateRange(offset, target.length);
    const o = this.find(key, 'get');
    const chunk = o.data.subarray(Math.min(offset, o.data.length), Math.min(offset + target.length, o.data.length));
    target.set(chunk);
    return { ...headOf(key, o), bytesRead: chunk.length };
  }

  async head(key: string): Promise<ObjectHead | null> {
    validateKey(key, 'head');
    const o = this.objects.get(key);
    return o ? headOf(key, o) : null;
  }

  async put(key: string, body: PutBody, opts: PutOptions = {}): Promise<PutResult> {
    validateKey(key, 'put');
    const metadata = normalizeMetadata(opts.metadata);
    requireConditional(this, 'put', key, opts);
    const bytes = body instanceof Uint8Array ? body.slice() : new Uint8Array(await readFile(body.path));
    if (bytes.length > this.capabilities.maxPartSize) throw new StoreError('EFBIG', `put: ${key}: body over the single-put limit`, { op: 'put', key });
    this.checkCondition('put', key, opts);
    return this.store(key, { data: bytes, etag: newEtag(), lastModified: new Date(), metadata, contentType: opts.contentType });
  }

  async delete(key: string): Promise<void> {
    validateKey(key, 'delete');
    if (this.objects.delete(key)) this.sorted = null;
  }

  async deleteMany(keys: readonly string[]): Promise<void> {
    for (const k of keys) validateKey(k, 'deleteMany');
    for (let i = 0; i < keys.length; i += DELETE_BATCH) for (const k of keys.slice(i, i + DELETE_BATCH)) await this.delete(k);
  }

  async list(opts: ListOptions = {}): Promise<ListPage> {
    return listPage({ seek: async (pos, prefix) => this.seek(pos, prefix) }, opts);
  }

  async copy(src: string, dst: string, opts: CopyOptions = {}): Promise<PutResult> {
    validateKey(dst, 'copy');
    const o = this.find(src, 'copy');
    const replace = opts.metadata !== undefined;
    const metadata = replace ? normalizeMetadata(opts.metadata, 'copy') : { ...o.metadata };
    const contentType = replace && opts.contentType !== undefined ? opts.contentType : o.contentType;
    return this.store(dst, { data: o.data, etag: newEtag(), lastModified: new Date(), metadata, contentType });
  }

  async createMultipart(key: string, opts: MultipartOptions = {}): Promise<string> {
    validateKey(key, 'createMultipart');
    const id = randomBytes(16).toString('hex');
    this.uploads.set(id, { key, metadata: normalizeMetadata(opts.metadata, 'createMultipart'), contentType: opts.contentType, parts: new Map() });
    return id;
  }

  async uploadPart(key: string, uploadId: string, partNumber: number, body: Uint8Array): Promise<string> {
    validatePartNumber(partNumber);
    const u = this.upload(key, uploadId, 'uploadPart');
    if (body.length > this.capabilities.maxPartSize) throw new StoreError('EFBIG', 'uploadPart: part too large', { op: 'uploadPart', key });
    const etag = newEtag();
    u.parts.set(partNumber, { etag, data: body.slice() });
    return etag;
  }

  /** Reads the range and stores it as the part (a local store has nothing to gain from a server-side copy). */
  async uploadPartCopy(key: string, uploadId: string, partNumber: number, source: PartCopySource): Promise<string> {
    return this.uploadPart(key, uploadId, partNumber, await readPartCopySource(this, source));
  }

  async completeMultipart(key: string, uploadId: string, parts: readonly CompletedPart[], opts: CompleteOptions = {}): Promise<PutResult> {
    const u = this.upload(key, uploadId, 'completeMultipart');
    validatePartList(parts);
    requireConditional(this, 'completeMultipart', key, opts);
    const chunks = parts.map((p, i) => {
      const stored = u.parts.get(p.partNumber);
      if (!stored || stored.etag !== p.etag)
        throw new StoreError('EINVAL', `completeMultipart: part ${p.partNumber} not uploaded or ETag mismatch`, { op: 'completeMultipart', key, storeCode: 'InvalidPart' });
      if (i < parts.length - 1 && stored.data.length < this.capabilities.minPartSize)
        throw new StoreError('EINVAL', `completeMultipart: part ${p.partNumber} smaller than ${this.capabilities.minPartSize} bytes`, { op: 'completeMultipart', key, storeCode: 'EntityTooSmall' });
      return stored.data;
    });
    this.checkCondition('completeMultipart', key, opts);
    const data = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
    let pos = 0;
    for (const c of chunks) {
      data.set(c, pos);
      pos += c.length;
    }
    this.uploads.delete(uploadId);
    return this.store(key, { data, etag: newEtag(), lastModified: new Date(), metadata: u.metadata, contentType: u.contentType });
  }

  async abortMultipart(key: string, uploadId: string): Promise<void> {
    this.upload(key, uploadId, 'abortMultipart');
    this.uploads.delete(uploadId);
  }

  /** Nothing to do: memory is as durable as it gets. */
  async sync(): Promise<void> {}

  async close(): Promise<void> {}

  // ---- internals

  private find(key: string, op: string): Stored {
    validateKey(key, op);
    const o = this.objects.get(key);
    if (!o) throw new StoreError('ENOENT', `${op}: no such key: ${key}`, { op, key, storeCode: 'NoSuchKey' });
    return o;
  }

  private upload(key: string, uploadId: string, op: string): Upload {
    const u = this.uploads.get(uploadId);
    if (!u || u.key !== key) throw new StoreError('ENOENT', `${op}: no such upload ${uploadId} for ${key}`, { op, key, storeCode: 'NoSuchUpload' });
    return u;
  }

  private checkCondition(op: string, key: string, cond: { ifNoneMatch?: string; ifMatch?: string }): void {
    const cur = this.objects.get(key);
    if (cond.ifNoneMatch === '*' && cur) throw new StoreError('EEXIST', `${op}: ${key} exists`, { op, key, storeCode: 'PreconditionFailed', httpStatus: 412 });
    if (cond.ifMatch !== undefined) {
      if (!cur) throw new StoreError('ENOENT', `${op}: no such key: ${key}`, { op, key, storeCode: 'NoSuchKey' });
      if (cur.etag !== cond.ifMatch) throw new StoreError('ESTALE', `${op}: ${key} changed (ETag ${cur.etag})`, { op, key, storeCode: 'PreconditionFailed', httpStatus: 412 });
    }
  }

  private store(key: string, o: Stored): PutResult {
    if (!this.objects.has(key)) this.sorted = null;
    this.objects.set(key, o);
    return { etag: o.etag };
  }

  private seek(pos: ListPosition, prefix: string): ObjectInfo | null {
    const keys = (this.sorted ??= [...this.objects.keys()].sort(compareKeys));
    // First index whose key is >= max(prefix, after).
    const from = pos.after !== null && compareKeys(pos.after, prefix) > 0 ? pos.after : prefix;
    let lo = 0;
    let hi = keys.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (compareKeys(keys[mid]!, from) < 0) lo = mid + 1;
      else hi = mid;
    }
    for (let i = lo; i < keys.length; i++) {
      const k = keys[i]!;
      if (!k.startsWith(prefix)) return null;
      if (isAfter(k, pos)) return infoOf(k, this.objects.get(k)!);
      if (pos.skipUnder && pos.after !== null && k.startsWith(pos.after)) {
        // Jump over the whole run of keys under the common prefix (they are contiguous).
        const under = pos.after;
        let a = i;
        let b = keys.length;
        while (a < b) {
          const mid = (a + b) >>> 1;
          if (keys[mid]!.startsWith(under)) a = mid + 1;
          else b = mid;
        }
        i = a - 1;
      }
    }
    return null;
  }
}

function infoOf(key: string, o: Stored): ObjectInfo {
  return { key, size: o.data.length, etag: o.etag, lastModified: o.lastModified };
}

function headOf(key: string, o: Stored): ObjectHead {
  return { ...infoOf(key, o), metadata: { ...o.metadata }, ...(o.contentType !== undefined ? { contentType: o.contentType } : {}) };
}
