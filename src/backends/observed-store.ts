// An ObjectStore that reports each operation and its result to a StoreObserver, around
// another store (metrics of the local directory store; S3 is observed by its client).
import type { StoreObserver } from '../metrics/observer.js';
import type {
  ByteRange, CompleteOptions, CompletedPart, CopyOptions, GetResult, ListOptions, ListPage, MultipartOptions, ObjectHead,
  ObjectReader, ObjectStore, PartCopySource, PutBody, PutOptions, PutResult, ReadIntoResult, StoreCapabilities,
} from './object-store.js';

function resultOf(err: unknown): string {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' && /^E[A-Z0-9]+$/.test(code) ? code : 'error';
}

/** A synchronous store call that reports its result as `operation`. */
function observedNow<A extends unknown[], R>(obs: StoreObserver, operation: string, fn: (...args: A) => R): (...args: A) => R {
  return (...args) => {
    try {
      const r = fn(...args);
      obs.operation(operation, 'ok');
      return r;
    } catch (err) {
      obs.operation(operation, resultOf(err));
      throw err;
    }
  };
}

export class ObservedStore implements ObjectStore {
  readonly keyFits?: (key: string) => boolean;
  readonly readIntoSync?: (key: string, etag: string, offset: number, length: number, targets: readonly Uint8Array[]) => number;
  readonly openReader?: (key: string, etag: string) => ObjectReader;
  readonly headNow?: (key: string) => ObjectHead | null;

  constructor(private readonly inner: ObjectStore, private readonly obs: StoreObserver) {
    if (inner.keyFits) this.keyFits = inner.keyFits.bind(inner);
    if (inner.openReader) this.openReader = observedNow(obs, 'openReader', inner.openReader.bind(inner));
    if (inner.headNow) this.headNow = observedNow(obs, 'head', inner.headNow.bind(inner));
    if (inner.readIntoSync) this.readIntoSync = observedNow(obs, 'readIntoSync', inner.readIntoSync.bind(inner));
  }

  get kind(): ObjectStore['kind'] {
    return this.inner.kind;
  }
  get description(): string {
    return this.inner.description;
  }
  get capabilities(): StoreCapabilities {
    return this.inner.capabilities;
  }
  get asyncReadMinBytes(): number | undefined {
    return this.inner.asyncReadMinBytes;
  }

  private async count<T>(name: string, p: Promise<T>): Promise<T> {
    try {
      const v = await p;
      this.obs.operation(name, 'ok');
      return v;
    } catch (err) {
      this.obs.operation(name, resultOf(err));
      throw err;
    }
  }

  get(key: string, opts?: { readonly range?: ByteRange }): Promise<GetResult> {
    return this.count('get', this.inner.get(key, opts));
  }
  getInto(key: string, offset: number, target: Uint8Array): Promise<ReadIntoResult> {
    return this.count('getInto', this.inner.getInto(key, offset, target));
  }
  head(key: string): Promise<ObjectHead | null> {
    return this.count('head', this.inner.head(key));
  }
  put(key: string, body: PutBody, opts?: PutOptions): Promise<PutResult> {
    return this.count('put', this.inner.put(key, body, opts));
  }
  delete(key: string): Promise<void> {
    return this.count('delete', this.inner.delete(key));
  }
  deleteMany(keys: readonly string[]): Promise<void> {
    return this.count('deleteMany', this.inner.deleteMany(keys));
  }
  list(opts?: ListOptions): Promise<ListPage> {
    return this.count('list', this.inner.list(opts));
  }
  copy(src: string, dst: string, opts?: CopyOptions): Promise<PutResult> {
    return this.count('copy', this.inner.copy(src, dst, opts));
  }
  createMultipart(key: string, opts?: MultipartOptions): Promise<string> {
    return this.count('createMultipart', this.inner.createMultipart(key, opts));
  }
  uploadPart(key: string, uploadId: string, partNumber: number, body: Uint8Array): Promise<string> {
    return this.count('uploadPart', this.inner.uploadPart(key, uploadId, partNumber, body));
  }
  uploadPartCopy(key: string, uploadId: string, partNumber: number, source: PartCopySource): Promise<string> {
    return this.count('uploadPartCopy', this.inner.uploadPartCopy(key, uploadId, partNumber, source));
  }
  completeMultipart(key: string, uploadId: string, parts: readonly CompletedPart[], opts?: CompleteOptions): Promise<PutResult> {
    return this.count('completeMultipart', this.inner.completeMultipart(key, uploadId, parts, opts));
  }
  abortMultipart(key: string, uploadId: string): Promise<void> {
    return this.count('abortMultipart', this.inner.abortMultipart(key, uploadId));
  }
  sync(): Promise<void> {
    return this.count('sync', this.inner.sync());
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}
