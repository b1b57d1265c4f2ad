// Store locators: `s3://bucket[/prefix]`, `file:/path` (also `file:///path`, `file:rel`),
// `memory:`. createObjectStore opens the store and returns the key prefix every key of
// the caller goes under ('' or ending in '/').
import { resolve } from 'node:path';
import { FileStore, type FileStoreOptions } from './file-store.js';
import { MemoryStore } from './memory-store.js';
import { S3Store, type S3StoreOptions } from './s3-store.js';
import { StoreError, type ObjectStore } from './object-store.js';

export type StoreLocator =
  | { readonly kind: 's3'; readonly bucket: string; readonly prefix: string }
  | { readonly kind: 'file'; readonly path: string; readonly prefix: string }
  | { readonly kind: 'memory'; readonly prefix: string };

/** Parses a locator; throws EINVAL with the accepted forms. */
export function parseLocator(locator: string): StoreLocator {
  const bad = (why: string): StoreError =>
    new StoreError('EINVAL', `bad store locator ${JSON.stringify(locator)}: ${why} (expected s3://bucket[/prefix], file:/path or memory:)`);
  if (locator.startsWith('s3://')) {
    const rest = locator.slice('s3://'.length);
    const slash = rest.indexOf('/');
    const bucket = slash < 0 ? rest : rest.slice(0, slash);
    if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket)) throw bad(`${JSON.stringify(bucket)} is not a valid bucket name`);
    return { kind: 's3', bucket, prefix: normalizePrefix(slash < 0 ? '' : rest.slice(slash + 1)) };
  }
  if (locator.startsWith('file:')) {
    let path = locator.slice('file:'.length);
    if (path.startsWith('//')) {
      // file:///abs/path (empty host) or file://localhost/abs/path
      const m = /^\/\/(localhost)?(\/.*)$/.exec(path);
      if (!m) throw bad('file URLs must have no host');
      path = decodeURIComponent(m[2]!);
    }
    if (path === '') throw bad('empty path');
    return { kind: 'file', path: resolve(path), prefix: '' };
  }
  if (locator === 'memory:' || locator.startsWith('memory:')) {
    return { kind: 'memory', prefix: normalizePrefix(locator.slice('memory:'.length)) };
  }
  throw bad('unknown scheme');
}

function normalizePrefix(p: string): string {
  const trimmed = p.replace(/^\/+/, '').replace(/\/+$/, '');
  return trimmed === '' ? '' : trimmed + '/';
}

export interface CreateStoreOptions {
  /** S3 options (bucket comes from the locator). `endpoint` defaults to $VHOST_S3_ENDPOINT. */
  readonly s3?: Omit<S3StoreOptions, 'bucket'>;
  readonly file?: FileStoreOptions;
  /** S3: probe conditional-write support (writes and deletes one object under the prefix). Default true. */
  readonly detectCapabilities?: boolean;
  /** S3: check that the bucket exists before returning (HeadBucket). Default true. */
  readonly checkBucket?: boolean;
}

export interface OpenedStore {
  readonly store: ObjectStore;
  /** Every key the caller uses goes under this ('' or ending in '/'). */
  readonly prefix: string;
  readonly locator: StoreLocator;
}

export async function createObjectStore(locator: string, opts: CreateStoreOptions = {}): Promise<OpenedStore> {
  const loc = parseLocator(locator);
  switch (loc.kind) {
    case 'memory':
      return { store: new MemoryStore(), prefix: loc.prefix, locator: loc };
    case 'file':
      return { store: await FileStore.open(loc.path, opts.file), prefix: loc.prefix, locator: loc };
    case 's3': {
      const endpoint = opts.s3?.endpoint ?? (process.env.VHOST_S3_ENDPOINT || undefined);
      const store = new S3Store({ ...opts.s3, bucket: loc.bucket, ...(endpoint !== undefined ? { endpoint } : {}) });
      try {
        if (opts.checkBucket ?? true) await store.checkBucket();
        if (opts.detectCapabilities ?? true) await store.detectCapabilities(loc.prefix);
      } catch (err) {
        await store.close();
        throw err;
      }
      return { store, prefix: loc.prefix, locator: loc };
    }
  }
}
