// Object key ↔ path inside a file store's root directory.
//
// The key is split at '/'; every segment becomes one path component with a one-letter
// type prefix: 'd' for a directory holding the keys that continue with `segment/`, 'o' for
// the object whose key ends with `segment`. Inside a segment only '%' and NUL are escaped
// ('%25', '%00'); everything else (spaces, unicode, '.', '\', control characters) is kept
// as is, since Linux file names may hold any byte but '/' and NUL.
//
// Why this is safe: a component is never empty, '.', or '..' (it starts with 'd' or 'o'),
// never contains '/' or NUL, so `join(root, ...components)` cannot leave the root whatever
// the key ('..', '/abs', 'a//b', 'x/../../y' all map to ordinary names).
//
// Why 'o' and 'd' can coexist: S3 allows both the key `a` and the key `a/b`; here they are
// `oa` and `da/ob`. Empty segments (`a//b`, a trailing `/` as in directory markers
// `dir/`) are the names 'd' and 'o'.
//
// Order: inside one directory, sorting the entries by segment (objects) and segment + '/'
// (directories) in UTF-8 byte order, and descending into directories in place, yields the
// keys in global UTF-8 byte order (every key under `da` starts with `a/`).
//
// Every other name ('t…' temporary files, 'u…' multipart uploads) is ignored by listings.
import { StoreError } from './object-store.js';

/** Linux NAME_MAX. */
export const NAME_MAX = 255;

export const DIR_TAG = 'd';
export const OBJECT_TAG = 'o';
export const TEMP_TAG = 't';
export const UPLOAD_TAG = 'u';

export function encodeSegment(segment: string): string {
  // Mostly there is nothing to escape: no regular expression run (four key paths per create).
  if (segment.indexOf('%') === -1 && segment.indexOf('\0') === -1) return segment;
  return segment.replace(/[%\0]/g, (c) => (c === '%' ? '%25' : '%00'));
}

/** Whether `name` fits in a file name: at most 3 UTF-8 bytes per UTF-16 unit, so a short one needs no byte count. */
export function nameFits(name: string): boolean {
  return name.length * 3 <= NAME_MAX || Buffer.byteLength(name, 'utf8') <= NAME_MAX;
}

/** Null when `encoded` is not something encodeSegment produces. */
export function decodeSegment(encoded: string): string | null {
  let bad = false;
  const out = encoded.replace(/%(..)?/gs, (_m, hex: string | undefined) => {
    if (hex === '25') return '%';
    if (hex === '00') return '\0';
    bad = true;
    return '';
  });
  return bad || encoded.includes('\0') || encoded.includes('/') ? null : out;
}

export interface KeyPath {
  /** Directory components ('d…'), outermost first. */
  readonly dirs: readonly string[];
  /** The object's file name ('o…'). */
  readonly file: string;
}

/** Path components for `key` (already validated as a key). Throws ENAMETOOLONG for a segment that does not fit in a file name. */
export function keyToPath(key: string): KeyPath {
  const segments = key.split('/');
  const last = segments.pop()!;
  const dirs = segments.map((s) => component(DIR_TAG, s, key));
  return { dirs, file: component(OBJECT_TAG, last, key) };
}

/** Whether every segment of `key` fits in a file name once encoded (what keyToPath would accept). */
export function keyPathFits(key: string): boolean {
  return key.split('/').every((s) => Buffer.byteLength(encodeSegment(s), 'utf8') < NAME_MAX);
}

function component(tag: string, segment: string, key: string): string {
  const name = tag + encodeSegment(segment);
  if (!nameFits(name))
    throw new StoreError('ENAMETOOLONG', `file store: a segment of key ${JSON.stringify(key.slice(0, 80))}… is over ${NAME_MAX - 1} bytes once encoded`, { key });
  return name;
}

/** What a directory entry is, or null for names that are not part of the key space. */
export function classifyName(name: string): { readonly isDir: boolean; readonly segment: string } | null {
  const tag = name[0];
  if (tag !== DIR_TAG && tag !== OBJECT_TAG) return null;
  const segment = decodeSegment(name.slice(1));
  if (segment === null) return null;
  return { isDir: tag === DIR_TAG, segment };
}

/** The key for path components (inverse of keyToPath); null if they are not a key's. */
export function pathToKey(dirs: readonly string[], file: string): string | null {
  const parts: string[] = [];
  for (const d of dirs) {
    const c = classifyName(d);
    if (c === null || !c.isDir) return null;
    parts.push(c.segment);
  }
  const f = classifyName(file);
  if (f === null || f.isDir) return null;
  parts.push(f.segment);
  return parts.join('/');
}
