// Promise-based mutual exclusion for the file system layer (one event loop, so these only
// order asynchronous sections; nothing here blocks a thread).

export class Mutex {
  private locked = false;
  /** Waiting acquirers, in order; a release hands the lock straight to the first. */
  private readonly waiters: Array<() => void> = [];

  /** True while someone holds or waits for the lock. */
  get busy(): boolean {
    return this.locked;
  }

  /** Waits for the lock; call the returned function exactly once to let the next one in. */
  async acquire(): Promise<() => void> {
    if (this.locked) await new Promise<void>((wake) => this.waiters.push(wake));
    else this.locked = true;
    let done = false;
    return () => {
      if (done) return;
      done = true;
      this.unlock();
    };
  }

  async run<T>(fn: () => Promise<T>): Promise<T> {
    // Uncontended (one request at a time on a file, the common case): no promise of our own,
    // no hop through the microtask queue before `fn` starts.
    if (this.locked) await new Promise<void>((wake) => this.waiters.push(wake));
    else this.locked = true;
    try {
      return await fn();
    } finally {
      this.unlock();
    }
  }

  private unlock(): void {
    const next = this.waiters.shift();
    if (next) next(); // still locked: now theirs
    else this.locked = false;
  }
}

/** One mutex per key, dropped when nobody uses it. */
export class KeyedMutex {
  private readonly locks = new Map<string, { mutex: Mutex; users: number }>();

  async run<T>(key: string, fn: () => Promise<T>): Promise<T> {
    let e = this.locks.get(key);
    if (!e) {
      e = { mutex: new Mutex(), users: 0 };
      this.locks.set(key, e);
    }
    e.users++;
    try {
      return await e.mutex.run(fn);
    } finally {
      if (--e.users === 0) this.locks.delete(key);
    }
  }
}

/** Runs `fn` on every item with at most `limit` at once; after a failure starts no more, and rejects with it once the running ones settled. */
export async function forEachLimit<T>(items: readonly T[], limit: number, fn: (item: T, index: number) => Promise<void>): Promise<void> {
  let next = 0;
  let failure: { err: unknown } | null = null;
  const worker = async (): Promise<void> => {
    for (;;) {
      if (failure) return;
      const i = next++;
      if (i >= items.length) return;
      try {
        await fn(items[i]!, i);
      } catch (err) {
        failure ??= { err };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(items.length, Math.max(1, limit)) }, worker));
  if (failure) throw (failure as { err: unknown }).err;
}

/**
 * A budget of bytes shared by concurrent users: `acquire(n)` waits until `n` more fit (a
 * request larger than the whole budget runs alone). Waiters are served in order.
 */
export class ByteSemaphore {
  private used = 0;
  private readonly waiters: { n: number; wake: () => void }[] = [];
  constructor(readonly limit: number) {}

  get inUse(): number {
    return this.used;
  }

  async acquire(n: number): Promise<() => void> {
    if (this.waiters.length === 0 && this.fits(n)) this.used += n;
    // drain() counts `n` in before waking us.
    else await new Promise<void>((wake) => this.waiters.push({ n, wake }));
    let done = false;
    return () => {
      if (done) return;
      done = true;
      this.used -= n;
      this.drain();
    };
  }

  private fits(n: number): boolean {
    return this.used === 0 || this.used + n <= this.limit;
  }

  private drain(): void {
    while (this.waiters.length > 0 && this.fits(this.waiters[0]!.n)) {
      const w = this.waiters.shift()!;
      this.used += w.n;
      w.wake();
    }
  }
}
