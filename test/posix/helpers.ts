// Helpers for the POSIX layer tests: a store wrapper that counts calls and can be told to
// fail writes, and small conveniences over Vfs.
import { expect } from 'chai';
import {
  StoreError,
  type ByteRange,
  type CompleteOptions,
  type CompletedPart,
  type CopyOptions,
  type GetResult,
  type ListOptions,
  type ListPage,
  type MultipartOptions,
  type ObjectHead,
  type ObjectStore,
  type PartCopySource,
  type PutBody,
  type PutOptions,
  type PutResult,
  type ReadIntoResult,
} from '../../src/backends/object-store.js';
import type { Caller, OpenFile, Vfs } from '../../src/fuse/vfs.js';

export type StoreOp = 'get' | 'getInto' | 'head' | 'put' | 'delete' | 'deleteMany' | 'list' | 'copy' | 'createMultipart' | 'uploadPart' | 'uploadPartCopy' | 'completeMultipart' | 'abortMultipart' | 'sync';

/** Delegates to `inner`, counting calls per operation; `failWrites` makes puts, copies and uploads fail with EIO. */
export class CountingStore implements ObjectStore {
  readonly counts = new Map<StoreOp, number>();
  /** Bytes fetched by get/getInto. */
  bytesRead = 0;
  failWrites = false;
  /** uploadPartCopy answers ENOTSUP, as a server without it does. */
  noPartCopy = false;
  /** getInto returns only half the bytes asked for, with the object's ETag: a server whose body came short. */
  shortGets = false;

  constructor(readonly inner: ObjectStore) {}

  get kind(): ObjectStore['kind'] {
    return this.inner.kind;
  }
  get description(): string {
    return this.inner.description;
  }
  get capabilities(): ObjectStore['capabilities'] {
    return this.inner.capabilities;
  }

  count(op: StoreOp): number {
    return this.counts.get(op) ?? 0;
  }
  reset(): void {
    this.counts.clear();
    this.bytesRead = 0;
  }

  private hit(op: StoreOp): void {
    this.counts.set(op, this.count(op) + 1);
  }
  private failIfAsked(op: StoreOp, key: string): void {
    if (this.failWrites) throw new StoreError('EIO', `${op}: injected failure`, { op, key, httpStatus: 500 });
  }

  async get(key: string, opts?: { readonly range?: ByteRange }): Promise<GetResult> {
    this.hit('get');
    const r = await this.inner.get(key, opts);
    this.bytesRead += r.body.length;
    return r;
  }
  async getInto(key: string, offset: number, target: Uint8Array): Promise<ReadIntoResult> {
    this.hit('getInto');
    const r = await this.inner.getInto(key, offset, this.shortGets ? target.subarray(0, target.length >> 1) : target);
    this.bytesRead += r.bytesRead;
    return r;
  }
  async head(key: string): Promise<ObjectHead | null> {
    this.hit('head');
    return this.inner.head(key);
  }
  async put(key: string, body: PutBody, opts?: PutOptions): Promise<PutResult> {
    this.hit('put');
    this.failIfAsked('put', key);
    return this.inner.put(key, body, opts);
  }
  async sync(): Promise<void> {
    this.hit('sync');
    return this.inner.sync();
  }
  async delete(key: string): Promise<void> {
    this.hit('delete');
    return this.inner.delete(key);
  }
  async deleteMany(keys: readonly string[]): Promise<void> {
    this.hit('deleteMany');
    return this.inner.deleteMany(keys);
  }
  async list(opts?: ListOptions): Promise<ListPage> {
    this.hit('list');
    return this.inner.list(opts);
  }
  async copy(src: string, dst: string, opts?: CopyOptions): Promise<PutResult> {
    this.hit('copy');
    this.failIfAsked('copy', dst);
    return this.inner.copy(src, dst, opts);
  }
  async createMultipart(key: string, opts?: MultipartOptions): Promise<string> {
    this.hit('createMultipart');
    this.failIfAsked('createMultipart', key);
    return this.inner.createMultipart(key, opts);
  }
  async uploadPart(key: string, uploadId: string, partNumber: number, body: Uint8Array): Promise<string> {
    this.hit('uploadPart');
    this.failIfAsked('uploadPart', key);
    return this.inner.uploadPart(key, uploadId, partNumber, body);
  }
  async uploadPartCopy(key: string, uploadId: string, partNumber: number, source: PartCopySource): Promise<string> {
    this.hit('uploadPartCopy');
    this.failIfAsked('uploadPartCopy', key);
    if (this.noPartCopy) throw new StoreError('ENOTSUP', 'uploadPartCopy: not implemented (as s3rver)', { op: 'uploadPartCopy', key, httpStatus: 501 });
    return this.inner.uploadPartCopy(key, uploadId, partNumber, source);
  }
  async completeMultipart(key: string, uploadId: string, parts: readonly CompletedPart[], opts?: CompleteOptions): Promise<PutResult> {
    this.hit('completeMultipart');
    this.failIfAsked('completeMultipart', key);
    return this.inner.completeMultipart(key, uploadId, parts, opts);
  }
  async abortMultipart(key: string, uploadId: string): Promise<void> {
    this.hit('abortMultipart');
    return this.inner.abortMultipart(key, uploadId);
  }
  async close(): Promise<void> {
    // The inner store belongs to the suite.
  }
}

export const CALLER: Caller = { uid: 1000, gid: 1000, pid: 1 };

export const RW = { read: true, write: true, truncate: false, append: false } as const;
export const RO = { read: true, write: false, truncate: false, append: false } as const;
/** create() flags of O_CREAT|O_EXCL|O_RDWR. */
export const NEW = { read: true, write: true, truncate: false, append: false, exclusive: true } as const;

export const text = (s: string): Uint8Array => new TextEncoder().encode(s);
export const str = (b: Uint8Array): string => new TextDecoder().decode(b);

/** Asserts that `p` rejects with errno `code`. */
export { expectErrno } from '../support/errno.js';

/** Creates `path` with `data` and closes it. */
export async function writeFile(vfs: Vfs, path: string, data: Uint8Array | string, mode = 0o644): Promise<void> {
  const { file } = await vfs.create(path, mode, CALLER, NEW);
  try {
    const bytes = typeof data === 'string' ? text(data) : data;
    if (bytes.length > 0) expect(await file.write(0, bytes)).to.equal(bytes.length);
    await file.flush();
  } finally {
    await file.release();
  }
}

/** The whole content of an open file. */
export async function readAll(file: OpenFile, chunk = 128 * 1024): Promise<Uint8Array> {
  const size = (await file.attr()).size;
  const out = new Uint8Array(size);
  for (let off = 0; off < size; ) {
    const part = await file.read(off, Math.min(chunk, size - off));
    if (part.length === 0) break;
    out.set(part, off);
    off += part.length;
  }
  return out;
}

export async function readFile(vfs: Vfs, path: string): Promise<Uint8Array> {
  const f = await vfs.open(path, RO);
  try {
    return await readAll(f);
  } finally {
    await f.release();
  }
}

export async function names(vfs: Vfs, path: string): Promise<string[]> {
  return (await vfs.list(path)).map((e) => e.name).sort();
}

export function sleep(ms: number): Promise<void> {
  return new Promise((res) => setTimeout(res, ms));
}

export function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
}
