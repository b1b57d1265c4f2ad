// Caches of what the store said, by path, each entry fresh for a TTL and the whole bounded
// by an entry count (LRU). Used for attributes (positive and negative lookups) and for
// directory listings. Our own changes update or drop entries at once; changes made by
// others are seen when the entry has expired.
//
// An expired entry is not served but is kept until evicted, so that a listing can tell
// that an object is unchanged (same ETag, size and LastModified) and refresh the entry
// without asking the store again (`peek`).
import { LRUCache } from 'lru-cache';
import { isBelow } from './names.js';

interface Slot<V> {
  readonly value: V;
  readonly expires: number;
}

export class TtlCache<V extends object> {
  private readonly lru: LRUCache<string, Slot<V>>;

  constructor(
    readonly ttlMs: number,
    maxEntries: number,
    private readonly now: () => number = () => performance.now(),
  ) {
    this.lru = new LRUCache<string, Slot<V>>({ max: Math.max(1, maxEntries) });
  }

  get size(): number {
    return this.lru.size;
  }

  /** The entry while it is fresh. */
  get(path: string): V | undefined {
    const s = this.lru.get(path);
    if (!s) return undefined;
    if (s.expires <= this.now()) return undefined;
    return s.value;
  }

  /** The entry, fresh or expired (without touching the LRU order). */
  peek(path: string): { value: V; fresh: boolean } | undefined {
    const s = this.lru.peek(path);
    return s ? { value: s.value, fresh: s.expires > this.now() } : undefined;
  }

  set(path: string, value: V): void {
    if (this.ttlMs <= 0) return;
    this.lru.set(path, { value, expires: this.now() + this.ttlMs });
  }

  delete(path: string): void {
    this.lru.delete(path);
  }

  /** Drops `path` and every entry below it. */
  deleteTree(path: string): void {
    this.lru.delete(path);
    for (const k of [...this.lru.keys()]) if (isBelow(k, path)) this.lru.delete(k);
  }

  clear(): void {
    this.lru.clear();
  }
}
