// Image locators: `s3://bucket/path` is an object-backed image in S3; `file:/path` (or a
// bare path) is a raw file when it names a regular file and an object-backed image in a
// local directory store when it names a directory.
import { statSync } from 'node:fs';
import { resolve } from 'node:path';
import { ConfigError, errnoOf } from '../util/errors.js';
import type { Logger } from '../util/log.js';
import type { BlockImage } from './image.js';
import { RawImage } from './raw-image.js';
import type { IoEngineName } from './file-io.js';
import { ObjectImage, type ObjectImageOptions } from './object-image.js';
import { ImageKeys } from './image-format.js';
import { openStore, asConfigError, type StorageConfig } from '../backends/store-config.js';

export interface OpenImageOptions {
  readonly readOnly: boolean;
  readonly ioEngine: IoEngineName;
  /** Settings for object-backed images. */
  readonly object: Omit<ObjectImageOptions, 'readOnly' | 'log'>;
  readonly storage: StorageConfig;
  readonly log: Logger;
}

export async function openImage(locator: string, opts: OpenImageOptions): Promise<BlockImage> {
  if (locator === '') throw new ConfigError('no image given (--image s3://bucket/images/vm1, file:/dir/vm1 or file:/path/disk.raw)');
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(locator) && !locator.startsWith('file://') && !locator.startsWith('s3://')) {
    throw new ConfigError(`unsupported image locator "${locator}" (use s3://, file: or a path)`);
  }
  if (!locator.startsWith('s3://')) {
    // A file that exists is a raw image; anything else names an image in a local store.
    const path = filePath(locator);
    const st = statSync(path, { throwIfNoEntry: false });
    if (st && !st.isDirectory()) return RawImage.open(path, { readOnly: opts.readOnly, ioEngine: opts.ioEngine });
    locator = `file:${path}`;
  }
  const { store, prefix } = await openStore(locator, opts.storage, opts.log, false, !opts.readOnly);
  try {
    return await ObjectImage.open(store, new ImageKeys(prefix), { ...opts.object, readOnly: opts.readOnly, log: opts.log });
  } catch (err) {
    await store.close();
    const e = errnoOf(err);
    if (e === 2 || e === 16 || e === 22) throw new ConfigError(`${locator}: ${(err as Error).message}`);
    throw asConfigError(err, locator);
  }
}

/** file:/abs, file://abs, file:rel and bare paths → an absolute path. */
export function filePath(locator: string): string {
  const path = locator.startsWith('file://') ? locator.slice(7) : locator.startsWith('file:') ? locator.slice(5) : locator;
  if (path === '') throw new ConfigError(`image locator "${locator}" has no path`);
  return resolve(path);
}
