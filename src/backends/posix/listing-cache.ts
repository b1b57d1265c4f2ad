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
  /** When it was stored: freshness is judged against the TTL of the moment (see ttlMs). */
  readonly at: number;
}

/**
 * A key no path can be (paths hold no NUL), kept in the LRU: lru-cache empties its whole
 * backing arrays (O(max entries), ~0.3 ms at 100,000) when its last entry is deleted, which
 * a create did every time (the negative entry of the new name was the only one).
 */
const KEEP = '\0';

export class TtlCache<V extends object> {
  private lru: LRUCache<string, Slot<V> | Slot<null>>;

  /**
   * Changing it (a configuration reload) applies at once to every entry, those stored
   * before included: a shorter TTL makes old entries stale now rather than at their old expiry.
   */
  ttlMs: number;

  constructor(
    ttlMs: number,
    maxEntries: number,
    private readonly now: () => number = () => performance.now(),
  ) {
    this.ttlMs = ttlMs;
    this.lru = new LRUCache<string, Slot<V> | Slot<null>>({ max: Math.max(1, maxEntries) + 1 });
    this.keep();
  }

  get size(): number {
    return this.lru.size - (this.lru.has(KEEP) ? 1 : 0);
  }

  /** Entries kept at most. */
  get maxEntries(): number {
    return this.lru.max - 1;
  }

  /**
   * Changes the bound (a configuration reload). lru-cache's bound is fixed when it is made,
   * so the cache is made again with the most recently used entries that fit.
   */
  resize(maxEntries: number): void {
    const max = Math.max(1, maxEntries) + 1;
    if (max === this.lru.max) return;
    const next = new LRUCache<string, Slot<V> | Slot<null>>({ max });
    for (const [k, v] of this.lru.rentries() as Iterable<[string, Slot<V> | Slot<null>]>) if (k !== KEEP) next.set(k, v);
    this.lru = next;
    // Last, so that it takes the slot of the oldest entry rather than being evicted itself.
    this.keep();
  }

  private keep(): void {
    if (!this.lru.has(KEEP)) this.lru.set(KEEP, { value: null, at: 0 });
  }

  private fresh(s: Slot<V>): boolean {
    return s.at + this.ttlMs > this.now();
  }

  private slot(path: string, s: Slot<V> | Slot<null> | undefined): Slot<V> | undefined {
    return path === KEEP || s === undefined || s.value === null ? undefined : (s as Slot<V>);
  }

  /** The entry while it is fresh. */
  get(path: string): V | undefined {
    const s = this.slot(path, this.lru.get(path));
    if (!s) return undefined;
    if (!this.fresh(s)) return undefined;
    return s.value;
  }

  /** The entry, fresh or expired (without touching the LRU order). */
  peek(path: string): { value: V; fresh: boolean } | undefined {
    const s = this.slot(path, this.lru.peek(path));
    return s ? { value: s.value, fresh: this.fresh(s) } : undefined;
  }

  set(path: string, value: V): void {
    if (this.ttlMs <= 0 || path === KEEP) return;
    this.lru.set(path, { value, at: this.now() });
  }

  delete(path: string): void {
    if (path === KEEP) return;
    if (this.lru.size <= 2) this.keep(); // evicted once the cache was full
    this.lru.delete(path);
  }

  /** Drops `path` and every entry below it. */
  deleteTree(path: string): void {
    this.delete(path);
    for (const k of [...this.lru.keys()]) if (k !== KEEP && isBelow(k, path)) this.delete(k);
  }

  clear(): void {
    this.lru.clear();
    this.keep();
  }
}
