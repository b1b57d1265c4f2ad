// One writer per image: a writable open takes a lease object naming its holder and renews
// it (the heartbeat). A second writable open is refused while the heartbeat is fresh; a
// stale lease (its holder crashed) is taken over only when the operator says --force.
//
// Where the store supports conditional writes (If-None-Match/If-Match), taking, renewing
// and taking over are atomic: of two racing openers exactly one wins. Where it does not
// (s3rver, some S3-compatible servers), the lease is written and read back after a pause:
// two openers racing inside that window can both succeed, so operators must not start two
// writers at the same moment there (docs/images.md says so).
//
// A writer killed on this host (kill -9, OOM) leaves a fresh lease behind. When the record
// names this host, this boot and this pid namespace, and that pid no longer exists, the
// holder is known to be dead and its lease is taken over without --force: this is what
// lets a gateway restarted after a crash serve the same image at once (docs/reliability.md).
import { readFileSync, readlinkSync } from 'node:fs';
import { hostname } from 'node:os';
import { randomUUID } from 'node:crypto';
import type { ObjectStore } from '../backends/object-store.js';
import { ErrnoError, errnoOf } from '../util/errors.js';
import type { Logger } from '../util/log.js';

export interface LeaseRecord {
  readonly holder: string;
  readonly host: string;
  readonly pid: number;
  /** ISO time of the last renewal. */
  readonly heartbeat: string;
  /** The holder promises to renew within this many milliseconds. */
  readonly ttlMs: number;
  /** Kernel boot id and pid namespace of the holder: with host and pid, they tell whether the holder is gone. */
  readonly boot?: string;
  readonly pidns?: string;
}

function readOr(fn: () => string): string {
  try {
    return fn().trim();
  } catch {
    return '';
  }
}
const BOOT_ID = readOr(() => readFileSync('/proc/sys/kernel/random/boot_id', 'utf8'));
const PID_NS = readOr(() => readlinkSync('/proc/self/ns/pid'));

/**
 * True only when the holder is provably gone: it ran on this host, in this boot and pid
 * namespace, and its pid does not exist. (A reused pid keeps the lease: the safe side.)
 */
export function holderIsDead(r: LeaseRecord | null): boolean {
  if (r === null || r.host !== hostname() || BOOT_ID === '' || PID_NS === '' || r.boot !== BOOT_ID || r.pidns !== PID_NS) return false;
  if (!Number.isInteger(r.pid) || r.pid <= 0 || r.pid === process.pid) return false;
  try {
    process.kill(r.pid, 0);
    return false;
  } catch (err) {
    return (err as { code?: string }).code === 'ESRCH';
  }
}

export interface LeaseOptions {
  readonly force: boolean;
  readonly ttlMs?: number;
  /** Pause before re-reading the lease on stores without conditional writes. */
  readonly settleMs?: number;
  readonly log: Logger;
  /** Called once if the lease is lost (someone took it over): the writer must stop. */
  readonly onLost?: (by: LeaseRecord | null) => void;
}

export const DEFAULT_LEASE_TTL_MS = 30_000;

export function describeHolder(r: LeaseRecord, now = Date.now()): string {
  const age = Math.round((now - Date.parse(r.heartbeat)) / 1000);
  return `${r.host} pid ${r.pid} (holder ${r.holder}, renewed ${age} s ago)`;
}

function parseLease(body: Uint8Array): LeaseRecord | null {
  try {
    const r = JSON.parse(new TextDecoder().decode(body)) as Partial<LeaseRecord>;
    if (typeof r.holder === 'string' && typeof r.host === 'string' && typeof r.pid === 'number' && typeof r.heartbeat === 'string' && typeof r.ttlMs === 'number') {
      return r as LeaseRecord;
    }
  } catch {
    // fall through: an unreadable lease is treated as stale
  }
  return null;
}

export function isStale(r: LeaseRecord | null, now = Date.now()): boolean {
  return r === null || !(now - Date.parse(r.heartbeat) <= r.ttlMs);
}

export class ImageLease {
  readonly holder = randomUUID();
  private etag = '';
  private timer: NodeJS.Timeout | null = null;
  private lostFlag = false;
  private renewing: Promise<void> | null = null;
  /** Heartbeat time of the last record we stored and know to be ours. */
  private renewedAt = 0;

  private constructor(
    private readonly store: ObjectStore,
    private readonly key: string,
    private readonly ttlMs: number,
    private readonly settleMs: number,
    private readonly log: Logger,
    private readonly onLost: ((by: LeaseRecord | null) => void) | undefined,
  ) {}

  /** Takes the lease or throws EBUSY naming the holder. */
  static async acquire(store: ObjectStore, key: string, opts: LeaseOptions): Promise<ImageLease> {
    const lease = new ImageLease(store, key, opts.ttlMs ?? DEFAULT_LEASE_TTL_MS, opts.settleMs ?? 1000, opts.log, opts.onLost);
    await lease.take(opts.force);
    lease.timer = setInterval(() => void lease.renew(), Math.max(50, lease.ttlMs / 3));
    lease.timer.unref();
    return lease;
  }

  get lost(): boolean {
    return this.lostFlag;
  }

  private record(at = Date.now()): Uint8Array {
    const r: LeaseRecord = {
      holder: this.holder, host: hostname(), pid: process.pid, heartbeat: new Date(at).toISOString(), ttlMs: this.ttlMs,
      ...(BOOT_ID !== '' && PID_NS !== '' ? { boot: BOOT_ID, pidns: PID_NS } : {}),
    };
    return new TextEncoder().encode(JSON.stringify(r) + '\n');
  }

  private async current(): Promise<{ record: LeaseRecord | null; etag: string } | null> {
    try {
      const got = await this.store.get(this.key);
      return { record: parseLease(got.body), etag: got.etag };
    } catch (err) {
      if (errnoOf(err) === 2 /* ENOENT */ ) return null;
      throw err;
    }
  }

  private async take(force: boolean): Promise<void> {
    const conditional = this.store.capabilities.conditionalWrites;
    const existing = await this.current();
    if (existing) {
      const r = existing.record;
      if (holderIsDead(r)) {
        this.log.warn('taking over the image lease of a writer that died on this host', { key: this.key, previous: r });
      } else if (!isStale(r)) {
        throw new ErrnoError('EBUSY', `image is in use by ${describeHolder(r!)}; only one writer is allowed (open it read-only, or stop that writer)`);
      } else if (!force) {
        throw new ErrnoError('EBUSY', `image has a stale lease from ${r ? describeHolder(r) : 'an unknown holder'}; if that writer is gone, take it over with --force`);
      } else {
        this.log.warn('taking over a stale image lease', { key: this.key, previous: r });
      }
    }
    const at = Date.now();
    try {
      const put = await this.store.put(this.key, this.record(at), conditional ? (existing ? { ifMatch: existing.etag } : { ifNoneMatch: '*' }) : {});
      this.etag = put.etag;
      this.renewedAt = at;
    } catch (err) {
      const e = errnoOf(err);
      if (e === 17 /* EEXIST */ || e === 116 /* ESTALE */) {
        const now = await this.current();
        throw new ErrnoError('EBUSY', `image lease was taken by ${now?.record ? describeHolder(now.record) : 'another writer'} at the same moment`);
      }
      throw err;
    }
    if (!conditional) await this.confirm();
  }

  /** Without conditional writes: wait, then check that our record is still the one stored. */
  private async confirm(): Promise<void> {
    await new Promise((resolve) => setTimeout(resolve, this.settleMs));
    const now = await this.current();
    if (now?.record?.holder !== this.holder) {
      throw new ErrnoError('EBUSY', `image lease was taken by ${now?.record ? describeHolder(now.record) : 'another writer'} at the same moment`);
    }
    this.etag = now.etag;
  }

  /** The heartbeat. A renewal that finds someone else's lease means we lost it. */
  renew(): Promise<void> {
    if (this.lostFlag || this.renewing) return this.renewing ?? Promise.resolve();
    this.renewing = (async () => {
      const at = Date.now();
      try {
        if (this.store.capabilities.conditionalWrites) {
          this.etag = (await this.store.put(this.key, this.record(at), { ifMatch: this.etag })).etag;
        } else {
          const now = await this.current();
          if (now?.record?.holder !== this.holder) return this.lose(now?.record ?? null);
          this.etag = (await this.store.put(this.key, this.record(at))).etag;
        }
        this.renewedAt = at;
      } catch (err) {
        const e = errnoOf(err);
        if (e === 116 /* ESTALE */ || e === 2 /* ENOENT */) return this.lose((await this.current().catch(() => null))?.record ?? null);
        // A failed renewal is retried at the next tick; the ttl leaves room for a few.
        this.log.warn('image lease renewal failed', { key: this.key, error: err });
      }
    })().finally(() => (this.renewing = null));
    return this.renewing;
  }

  /**
   * The fence in front of every chunk upload and delete: resolves while the lease is ours,
   * throws EIO once it was lost (taken over) or could not be renewed within its ttl. A
   * heartbeat older than half the ttl is renewed first, so that a writer that was cut off
   * (and possibly taken over meanwhile) finds out before it stores anything.
   */
  async check(): Promise<void> {
    if (!this.lostFlag && Date.now() - this.renewedAt > this.ttlMs / 2) await this.renew();
    if (this.lostFlag) throw new ErrnoError('EIO', `image lease ${this.key} is lost (another writer took over): not storing`);
    if (Date.now() - this.renewedAt > this.ttlMs) throw new ErrnoError('EIO', `image lease ${this.key} could not be renewed within ${this.ttlMs} ms: not storing`);
  }

  private lose(by: LeaseRecord | null): void {
    if (this.lostFlag) return;
    this.lostFlag = true;
    if (this.timer) clearInterval(this.timer);
    this.log.error('image lease lost: another writer took over; refusing further writes', { key: this.key, by });
    this.onLost?.(by);
  }

  /** Deletes the lease if it is still ours. */
  async release(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    await this.renewing;
    if (this.lostFlag) return;
    this.lostFlag = true;
    const now = await this.current();
    if (now?.record?.holder === this.holder) await this.store.delete(this.key);
  }
}
