// From the storage options of a command to an opened object store. Store errors that an
// operator causes (missing bucket, wrong credentials, unreachable endpoint, missing image)
// become one-line ConfigErrors: the command line reports them and exits 2.
import { existsSync, writeFileSync } from 'node:fs';
import { basename, dirname, join, relative, sep } from 'node:path';
import { createObjectStore, parseLocator, type OpenedStore } from './locator.js';
import type { S3StoreOptions } from './s3-store.js';
import { StoreError } from './object-store.js';
import { ConfigError } from '../util/errors.js';
import type { Logger } from '../util/log.js';
import type { S3Observer, StoreObserver } from '../metrics/observer.js';
import { ObservedStore } from './observed-store.js';
import { FileStore } from './file-store.js';

export interface StorageConfig {
  readonly endpoint: string;
  readonly region: string;
  readonly pathStyle: 'auto' | 'on' | 'off';
  readonly checksums: 'when-required' | 'when-supported';
  readonly s3Concurrency: number;
  /** Attempts per S3 request (--s3-max-attempts); absent: the store's default. */
  readonly s3MaxAttempts?: number;
  /** Reports the S3 client's requests (metrics). */
  readonly s3Observer?: S3Observer;
  /** Reports the operations of a local directory store (metrics). */
  readonly storeObserver?: StoreObserver;
  /** Seconds (--stale-temp-age): a file: store opened by a writer removes older temporary files of killed writers. */
  readonly staleTempAge?: number;
}

export function s3Options(cfg: StorageConfig, log: Logger): Omit<S3StoreOptions, 'bucket'> {
  const checksum = cfg.checksums === 'when-required' ? 'WHEN_REQUIRED' : 'WHEN_SUPPORTED';
  return {
    ...(cfg.endpoint !== '' ? { endpoint: cfg.endpoint } : {}),
    ...(cfg.region !== '' ? { region: cfg.region } : {}),
    ...(cfg.pathStyle !== 'auto' ? { forcePathStyle: cfg.pathStyle === 'on' } : {}),
    requestChecksumCalculation: checksum,
    responseChecksumValidation: checksum,
    concurrency: cfg.s3Concurrency,
    ...(cfg.s3MaxAttempts !== undefined ? { maxAttempts: cfg.s3MaxAttempts } : {}),
    logger: log,
    ...(cfg.s3Observer ? { observer: cfg.s3Observer } : {}),
  };
}

/**
 * Opens the store of a locator and returns the key prefix it names. A `file:` locator
 * names a path inside a local store, whose root is the nearest directory up the path
 * holding the marker file ROOT_MARKER (written when a store is created): so
 * `file:/srv/store/images/vm1` is the prefix `images/vm1/` of the store `/srv/store`, as
 * `s3://bucket/images/vm1` is of a bucket. Without a marker, the last path component is
 * the prefix (a trailing `/` makes the whole path the root) and, with `create`, the store
 * is created there.
 */
export async function openStore(locator: string, cfg: StorageConfig, log: Logger, create = false, writer = false): Promise<OpenedStore> {
  try {
    if (locator.startsWith('file:')) {
      const { root, prefix } = fileStoreRoot(parseLocator(locator) as { path: string }, locator.endsWith('/'));
      const opened = await createObjectStore(`file:${root}`, { file: { create } });
      if (create) writeFileSync(join(root, ROOT_MARKER), 'vhost-s3 local object store\n');
      if (writer && cfg.staleTempAge !== undefined && opened.store instanceof FileStore) sweepStaleTemps(opened.store, cfg.staleTempAge, log);
      return { ...opened, prefix, ...(cfg.storeObserver ? { store: new ObservedStore(opened.store, cfg.storeObserver) } : {}) };
    }
    return await createObjectStore(locator, { s3: s3Options(cfg, log) });
  } catch (err) {
    throw asConfigError(err, locator);
  }
}

/**
 * Removes, in the background (startup does not wait for a walk of the whole store), the
 * temporary files that writers killed mid-write left (up to a part's size each). Only
 * files unmodified for `ageS` seconds: a live writer, in this process or another one on
 * the same store, keeps writing to its temporary file and renames it within seconds.
 */
function sweepStaleTemps(store: FileStore, ageS: number, log: Logger): void {
  store.removeStaleTemps(ageS * 1000).then(
    (removed) => {
      if (removed > 0) log.info('removed temporary files left by killed writers', { store: store.description, removed, olderThanS: ageS });
    },
    (err: unknown) => log.warn('could not remove stale temporary files', { store: store.description, error: (err as Error).message }),
  );
}

export const ROOT_MARKER = '.vhost-s3-store';

function fileStoreRoot(loc: { path: string }, isPrefix: boolean): { root: string; prefix: string } {
  for (let dir = loc.path; ; dir = dirname(dir)) {
    if (existsSync(join(dir, ROOT_MARKER))) {
      const rel = relative(dir, loc.path);
      return { root: dir, prefix: rel === '' ? '' : rel.split(sep).join('/') + '/' };
    }
    if (dir === dirname(dir)) break;
  }
  if (isPrefix) return { root: loc.path, prefix: '' };
  return { root: dirname(loc.path), prefix: basename(loc.path) + '/' };
}

/** Store errors an operator can fix are configuration errors. */
export function asConfigError(err: unknown, what: string): unknown {
  if (err instanceof StoreError && ['ENOENT', 'ENOTDIR', 'EACCES', 'ECONNREFUSED', 'EHOSTUNREACH', 'ETIMEDOUT', 'EINVAL'].includes(err.code)) {
    // A refused HEAD has no error body ("HTTP 403 Unknown"): say what it means.
    const hint = err.code === 'EACCES' && !/credential/i.test(err.message)
      ? ' (access denied: check the credentials, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE, and the bucket policy)'
      : '';
    return new ConfigError(`${what}: ${err.message}${hint}`);
  }
  return err;
}
