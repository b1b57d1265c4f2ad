// Image locators on the command line: `file:/path/disk.raw` (or a bare path) is a raw
// file. Object-backed images (s3://…, file: stores) arrive with the image-format driver.
import { resolve } from 'node:path';
import { ConfigError } from '../util/errors.js';
import type { BlockImage } from './image.js';
import { RawImage } from './raw-image.js';
import type { IoEngineName } from './file-io.js';

export interface OpenImageOptions {
  readonly readOnly: boolean;
  readonly ioEngine: IoEngineName;
}

export function openImage(locator: string, opts: OpenImageOptions): BlockImage {
  if (locator === '') throw new ConfigError('no image given (--image file:/path/disk.raw)');
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(locator) && !locator.startsWith('file://')) {
    throw new ConfigError(`unsupported image locator "${locator}": only file: images are served by this version`);
  }
  return RawImage.open(filePath(locator), opts);
}

/** file:/abs, file://abs, file:rel and bare paths → an absolute path. */
export function filePath(locator: string): string {
  const path = locator.startsWith('file://') ? locator.slice(7) : locator.startsWith('file:') ? locator.slice(5) : locator;
  if (path === '') throw new ConfigError(`image locator "${locator}" has no path`);
  return resolve(path);
}
