// Paths of the file system ↔ object keys (DESIGN.md "S3 ↔ POSIX mapping").
//
// A path is '' for the root or segments joined by '/' (the FUSE engine has already
// rejected '', '.', '..', '/', NUL and names over 255 bytes; checkPath repeats the check so
// that a bug above cannot reach the store with a key outside the prefix).
//
//   file or symlink  `${prefix}${path}`          (the object itself)
//   directory        `${prefix}${path}/`         (marker object, optional; any key below
//                                                  also makes the directory exist)
//   root             `${prefix}`                 (marker only when prefix is not '')
//
// Keys found in a listing whose segment is not a valid POSIX name (empty as in 'a//b',
// '.', '..', over NAME_MAX bytes, not well-formed UTF-8) are skipped, never an error; so
// are the gateway's own capability probes (`.vhost-s3-probe-…`, left behind when a
// gateway died or the store failed between writing and deleting one), whose names are
// reserved (EINVAL).
import { ErrnoError } from '../../util/errors.js';
import { PROBE_NAME_PREFIX, isWellFormed } from '../object-store.js';

/** Linux NAME_MAX (bytes). */
export const NAME_MAX = 255;
/** Linux PATH_MAX (bytes, including the terminating NUL), the limit for symlink targets. */
export const PATH_MAX = 4096;

/** True when `name` may be one segment of a path: what listings keep. */
export function isValidName(name: string): boolean {
  if (name === '' || name === '.' || name === '..') return false;
  if (name.includes('/') || name.includes('\0')) return false;
  if (name.startsWith(PROBE_NAME_PREFIX)) return false;
  if (!isWellFormed(name)) return false;
  return fitsNameMax(name);
}

/** Whether `name` is at most NAME_MAX bytes in UTF-8; short names without counting (at most 3 bytes per UTF-16 unit). */
function fitsNameMax(name: string): boolean {
  return name.length * 3 <= NAME_MAX || Buffer.byteLength(name, 'utf8') <= NAME_MAX;
}

/** Throws EINVAL (bad segment) or ENAMETOOLONG (segment over NAME_MAX) for a path the engine should never send. */
export function checkPath(path: string): void {
  if (path === '') return;
  for (const seg of path.split('/')) {
    if (seg !== '' && !fitsNameMax(seg) && isWellFormed(seg) && !seg.includes('\0'))
      throw new ErrnoError('ENAMETOOLONG', `name longer than ${NAME_MAX} bytes`);
    if (!isValidName(seg)) throw new ErrnoError('EINVAL', `invalid path ${JSON.stringify(path)}`);
  }
}

/** '' for a top-level entry (and for the root itself). */
export function parentOf(path: string): string {
  const i = path.lastIndexOf('/');
  return i < 0 ? '' : path.slice(0, i);
}

export function baseName(path: string): string {
  return path.slice(path.lastIndexOf('/') + 1);
}

export function joinPath(dir: string, name: string): string {
  return dir === '' ? name : `${dir}/${name}`;
}

/** True when `path` is strictly below `dir` ('' is above everything but itself). */
export function isBelow(path: string, dir: string): boolean {
  if (dir === '') return path !== '';
  return path.length > dir.length && path.startsWith(dir) && path.charCodeAt(dir.length) === 0x2f;
}

/** `path` with its leading `from` replaced by `to` (path is `from` or below it). */
export function rebase(path: string, from: string, to: string): string {
  if (path === from) return to;
  const rest = from === '' ? path : path.slice(from.length + 1);
  return joinPath(to, rest);
}

/** Keys under one prefix ('' or ending in '/'). */
export class KeyMap {
  constructor(readonly prefix: string) {
    if (prefix !== '' && !prefix.endsWith('/')) throw new ErrnoError('EINVAL', `key prefix must be empty or end with '/': ${JSON.stringify(prefix)}`);
  }

  /** The object of a file or symlink. */
  fileKey(path: string): string {
    return this.prefix + path;
  }

  /** The directory's marker object and the prefix of everything in it. */
  dirKey(path: string): string {
    return path === '' ? this.prefix : `${this.prefix}${path}/`;
  }

  /** The path of a key below the prefix, or null when the key is outside it. */
  pathOf(key: string): string | null {
    return key.startsWith(this.prefix) ? key.slice(this.prefix.length) : null;
  }
}
