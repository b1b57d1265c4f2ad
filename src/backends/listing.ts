// S3 listing semantics for the local stores (memory, file): prefix, delimiter, MaxKeys
// counting objects and common prefixes together, and continuation tokens. A store only
// provides `seek`: the first key after a position, in UTF-8 byte order.
import { StoreError, compareKeys, validateListOptions, type ListOptions, type ListPage, type ObjectInfo } from './object-store.js';

/** A position in the key space: after `after`, and if `skipUnder`, after every key that starts with it. */
export interface ListPosition {
  readonly after: string | null;
  readonly skipUnder: boolean;
}

export interface SeekSource {
  /**
   * The first object whose key starts with `prefix` and lies after `pos` (in UTF-8 byte
   * order), or null.
   */
  seek(pos: ListPosition, prefix: string): Promise<ObjectInfo | null>;
}

/** True when `key` lies after `pos`. */
export function isAfter(key: string, pos: ListPosition): boolean {
  if (pos.after === null) return true;
  if (compareKeys(key, pos.after) <= 0) return false;
  return !(pos.skipUnder && key.startsWith(pos.after));
}

const TOKEN_PREFIX = 'v1.';

export function encodeToken(pos: ListPosition): string {
  return TOKEN_PREFIX + Buffer.from(JSON.stringify({ a: pos.after, u: pos.skipUnder }), 'utf8').toString('base64url');
}

export function decodeToken(token: string): ListPosition {
  const bad = (): StoreError => new StoreError('EINVAL', 'list: bad continuation token', { op: 'list' });
  if (!token.startsWith(TOKEN_PREFIX)) throw bad();
  let v: unknown;
  try {
    v = JSON.parse(Buffer.from(token.slice(TOKEN_PREFIX.length), 'base64url').toString('utf8'));
  } catch {
    throw bad();
  }
  if (typeof v !== 'object' || v === null) throw bad();
  const { a, u } = v as { a?: unknown; u?: unknown };
  if (typeof a !== 'string' || typeof u !== 'boolean') throw bad();
  return { after: a, skipUnder: u };
}

/** One page of a listing, S3 style. */
export async function listPage(source: SeekSource, opts: ListOptions): Promise<ListPage> {
  const { prefix, delimiter, maxKeys } = validateListOptions(opts);
  let pos: ListPosition = opts.continuationToken !== undefined ? decodeToken(opts.continuationToken) : { after: null, skipUnder: false };
  const objects: ObjectInfo[] = [];
  const commonPrefixes: string[] = [];
  for (;;) {
    const next = await source.seek(pos, prefix);
    if (next === null) return { objects, commonPrefixes };
    if (objects.length + commonPrefixes.length === maxKeys) return { objects, commonPrefixes, nextToken: encodeToken(pos) };
    const idx = delimiter ? next.key.indexOf(delimiter, prefix.length) : -1;
    if (idx >= 0) {
      const cp = next.key.slice(0, idx + delimiter.length);
      commonPrefixes.push(cp);
      pos = { after: cp, skipUnder: true };
    } else {
      objects.push(next);
      pos = { after: next.key, skipUnder: false };
    }
  }
}
