// A gateway: the exports one process serves, started together, stopped together on
// SIGINT/SIGTERM within a deadline, and re-configured on SIGHUP. `run`, `serve`, `blk` and
// `fs` all serve through it.
//
// Each export has its own store, caches, socket and rings, and a request only ever waits
// on its own export's store: a slow or failing store stalls the export that uses it, never
// the others (they share the event loop, which nothing blocks).
import type { Logger } from '../util/log.js';
import { ConfigError } from '../util/errors.js';
import { schemas, type ConfigOf, type OptionSpec } from '../config.js';
import { BlkExport } from '../blk/export.js';
import { FsExport } from '../fuse/export.js';
import type { BucketVfs } from '../backends/posix/bucket-vfs.js';
import type { BlockImage } from '../blk/image.js';
import { ObjectImage } from '../blk/object-image.js';
import { openConfiguredImage } from './blk.js';
import { fuseOptions, openBucketVfs } from './fs.js';
import { checkExport, exportName, type ExportSpec } from './exports.js';
import { holdSignals, stopOnSignals } from './lifecycle.js';
import type { Metrics } from '../metrics/registry.js';
import { startMetrics, watchBucket, watchImage } from './export-metrics.js';
import { native, workInFlight } from '../native/index.js';

/** Settings a running export takes on SIGHUP, by field of the file (flag name). */
export const RELOADABLE: Readonly<Record<ExportSpec['type'], readonly string[]>> = {
  blk: ['cache-size'],
  fs: ['attr-timeout', 'entry-timeout', 'negative-timeout', 'list-timeout', 'cache-size', 'attr-cache-entries', 'list-cache-entries'],
};

/** A started export. */
export type Running =
  | { readonly type: 'blk'; spec: ExportSpec & { type: 'blk' }; readonly exp: BlkExport; readonly image: BlockImage; readonly log: Logger }
  | { readonly type: 'fs'; spec: ExportSpec & { type: 'fs' }; readonly exp: FsExport; readonly bucket: BucketVfs; readonly log: Logger; readonly closeVfs: () => Promise<void> };

/** An export whose image or store is open and whose socket does not exist yet. */
interface Opened {
  /** Creates the socket; the export owns what was opened from then on (also when this fails). */
  start(): Promise<Running>;
  /** Releases what was opened, for when another export failed to open. */
  discard(): Promise<void>;
}

async function openExport(spec: ExportSpec, base: Logger, metrics: Metrics | undefined): Promise<Opened> {
  checkExport(spec);
  const log = base.child({ export: exportName(spec) });
  const id = spec.config.socket;
  const storage = metrics?.storage(id);
  if (spec.type === 'blk') {
    const c = spec.config;
    const image = await openConfiguredImage(c.image, c.readonly, storage ? { ...c, ...storage } : c, log);
    return {
      start: async () => {
        const observer = metrics?.device(id, 'blk');
        const exp = await BlkExport.start({ socket: c.socket, image, locator: c.image, queues: c.queues, serial: c.serial, log, ...(observer ? { observer } : {}) });
        if (metrics) {
          metrics.queueDepth(id, 'blk', () => exp.device.queueDepth);
          watchImage(metrics, id, image);
        }
        return { type: 'blk', spec, log, exp, image };
      },
      discard: () => image.close(),
    };
  }
  const c = spec.config;
  const { vfs, bucket, close } = await openBucketVfs(storage ? { ...c, ...storage } : c, log);
  return {
    start: async () => {
      try {
        const observer = metrics?.device(id, 'fs');
        const exp = await FsExport.start({ socket: c.socket, vfs, requestQueues: c.queues, fuse: { ...fuseOptions(c), ...(observer ? { observer } : {}) }, locator: c.bucket, log });
        if (metrics) {
          metrics.queueDepth(id, 'fs', () => exp.device.queueDepth);
          watchBucket(metrics, id, bucket);
        }
        return { type: 'fs', spec, log, exp, bucket, closeVfs: close };
      } catch (err) {
        await close();
        throw err;
      }
    },
    discard: close,
  };
}

/** Names the export in an error, keeping its class (a ConfigError still exits 2). */
function named(spec: ExportSpec, err: unknown, many: boolean): unknown {
  if (!many || !(err instanceof Error)) return err;
  if (err instanceof ConfigError) return new ConfigError(`${exportName(spec)}: ${err.message}`);
  err.message = `${exportName(spec)}: ${err.message}`;
  return err;
}

export class Gateway {
  private constructor(
    readonly exports: Running[],
    private readonly log: Logger,
  ) {}

  /**
   * Opens every export (images, stores; concurrently), then creates the sockets. If one
   * export cannot be opened or started, the others are closed again and the error thrown.
   */
  static async start(specs: readonly ExportSpec[], log: Logger, metrics?: Metrics): Promise<Gateway> {
    const many = specs.length > 1;
    const opened = await Promise.allSettled(specs.map((s) => openExport(s, log, metrics)));
    const failed = opened.findIndex((r) => r.status === 'rejected');
    if (failed >= 0) {
      await Promise.allSettled(opened.map((r) => (r.status === 'fulfilled' ? r.value.discard() : undefined)));
      throw named(specs[failed]!, (opened[failed] as PromiseRejectedResult).reason, many);
    }
    const ready = opened.map((r) => (r as PromiseFulfilledResult<Opened>).value);
    const running: Running[] = [];
    for (let i = 0; i < ready.length; i++) {
      try {
        running.push(await ready[i]!.start());
      } catch (err) {
        await Promise.allSettled([...running.map(closeRunning), ...ready.slice(i + 1).map((o) => o.discard())]);
        throw named(specs[i]!, err, many);
      }
    }
    return new Gateway(running, log);
  }

  /**
   * Stops every export at once: no new requests, in-flight ones complete, written data is
   * stored, stores close. Rejects when that takes longer than `timeoutMs` (naming the
   * exports still stopping) or when one failed; the others are stopped regardless.
   */
  async stop(timeoutMs: number): Promise<void> {
    const pending = new Set(this.exports.map((r) => exportName(r.spec)));
    const all = Promise.allSettled(this.exports.map((r) => closeRunning(r).finally(() => pending.delete(exportName(r.spec)))));
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<null>((resolve) => (timer = setTimeout(() => resolve(null), timeoutMs)));
    const results = await Promise.race([all, deadline]);
    clearTimeout(timer);
    if (results === null) {
      const stuck = [...pending];
      this.log.error('shutdown timed out: exiting with requests or writes still pending', { timeoutS: timeoutMs / 1000, exports: stuck });
      throw new Error(`shutdown timed out after ${timeoutMs / 1000} s; still stopping: ${stuck.join(', ')}`);
    }
    const failures = results.flatMap((r, i) => (r.status === 'rejected' ? [{ name: exportName(this.exports[i]!.spec), reason: r.reason as Error }] : []));
    for (const f of failures) this.log.error('export failed to stop cleanly', { export: f.name, error: f.reason });
    if (failures.length > 0) throw named(this.exports.find((r) => exportName(r.spec) === failures[0]!.name)!.spec, failures[0]!.reason, this.exports.length > 1);
  }

  /**
   * Applies a re-read configuration: the reloadable settings of exports that exist (matched
   * by socket) take effect at once; anything else that changed is logged as needing a
   * restart and left as it is. Returns the number of settings applied.
   */
  reload(specs: readonly ExportSpec[]): number {
    const next = new Map(specs.map((s) => [s.config.socket, s]));
    let applied = 0;
    for (const r of this.exports) {
      const n = next.get(r.spec.config.socket);
      next.delete(r.spec.config.socket);
      if (n === undefined) {
        r.log.warn('export no longer in the configuration: still served (removing an export needs a restart)');
        continue;
      }
      applied += reloadExport(r, n);
    }
    for (const s of next.values()) this.log.warn('new export in the configuration: not served (adding an export needs a restart)', { export: exportName(s) });
    return applied;
  }
}

function closeRunning(r: Running): Promise<void> {
  return r.type === 'blk' ? r.exp.close() : r.exp.close().finally(r.closeVfs);
}

/** Config keys whose values differ. */
function changedKeys(a: Record<string, unknown>, b: Record<string, unknown>): string[] {
  return Object.keys(b).filter((k) => k !== 'logLevel' && k !== 'debug' && a[k] !== b[k]);
}

function reloadExport(r: Running, n: ExportSpec): number {
  if (n.type !== r.type) {
    r.log.warn('export type changed in the configuration: not applied (needs a restart)', { type: n.type });
    return 0;
  }
  const changed = changedKeys(r.spec.config as Record<string, unknown>, n.config as Record<string, unknown>);
  if (changed.length === 0) return 0;
  const schema = schemas[r.type] as Record<string, OptionSpec>;
  const field = (k: string): string => schema[k]?.arg ?? k;
  const live = changed.filter((k) => RELOADABLE[r.type].includes(field(k)));
  const later = changed.filter((k) => !live.includes(k));
  if (later.length > 0) r.log.warn('configuration changes not applied (need a restart)', { fields: later.map(field) });
  if (live.length === 0) return 0;
  const old = r.spec.config as Record<string, unknown>;
  const next = n.config as Record<string, unknown>;
  const c: Record<string, unknown> = { ...old, ...Object.fromEntries(live.map((k) => [k, next[k]])) };
  if (r.type === 'fs') {
    const fc = c as ConfigOf<'fs'>;
    r.exp.server.setTimeouts(fuseOptions(fc));
    r.bucket.setTtls({ attrTtlMs: fc.attrTimeout * 1000, negativeTtlMs: fc.negativeTimeout * 1000, listTtlMs: fc.listTimeout * 1000 });
    const caches = r.bucket.resizeCaches({ pageCacheBytes: fc.cacheSize, attrCacheEntries: fc.attrCacheEntries, listCacheEntries: fc.listCacheEntries });
    r.spec = { type: 'fs', config: fc };
    r.log.info('configuration reloaded', { changed: changesOf(live, old, c, field), caches });
  } else {
    const bc = c as ConfigOf<'blk'>;
    // A raw image has no cache: its cache-size is kept for the record only.
    const cache = r.image instanceof ObjectImage ? r.image.chunkCache : null;
    cache?.resize(bc.cacheSize);
    r.spec = { type: 'blk', config: bc };
    r.log.info('configuration reloaded', { changed: changesOf(live, old, c, field), ...(cache ? { caches: { chunkBytes: cache.cachedBytes, chunkMaxBytes: cache.cacheBytes } } : {}) });
  }
  return live.length;
}

function changesOf(keys: readonly string[], from: Record<string, unknown>, to: Record<string, unknown>, field: (k: string) => string): Record<string, { from: unknown; to: unknown }> {
  return Object.fromEntries(keys.map((k) => [field(k), { from: from[k], to: to[k] }]));
}

export interface RunOptions {
  readonly log: Logger;
  readonly shutdownTimeoutMs: number;
  /** What to print on stdout once every export listens. */
  readonly banner: (gateway: Gateway) => string;
  /** Re-reads the exports for SIGHUP; without it SIGHUP keeps its default (the process ends). */
  readonly reread?: () => ExportSpec[];
  /** --metrics HOST:PORT ("" or absent: no metrics). */
  readonly metrics?: string;
  /** --poll-us: the event loop's busy-polling window at most (0: none). */
  readonly pollUs: number;
}

/**
 * Serves `specs` until SIGINT/SIGTERM (one caught during the start included), then stops
 * them within the shutdown timeout.
 */
export async function runGateway(specs: readonly ExportSpec[], o: RunOptions): Promise<void> {
  let gateway: Gateway | null = null;
  let hupPending = false;
  const reload = (): void => {
    if (gateway === null) {
      hupPending = true; // applied once the exports are up
      return;
    }
    o.log.info('SIGHUP: re-reading the configuration');
    let next: ExportSpec[];
    try {
      next = o.reread!();
    } catch (err) {
      o.log.error('configuration reload failed; the configuration in use is kept', { error: (err as Error).message });
      return;
    }
    const applied = gateway.reload(next);
    o.log.info('configuration reload done', { applied });
  };
  // Before anything opens: a bad address or a port in use ends the command with one line.
  const service = await startMetrics(o.metrics ?? '', o.log);
  native.setLoopPoll(o.pollUs * 1000, workInFlight);
  if (o.reread) process.on('SIGHUP', reload);
  try {
    const held = holdSignals();
    try {
      gateway = await Gateway.start(specs, o.log, service?.metrics);
    } catch (err) {
      held.release(false);
      throw err;
    }
    process.stdout.write(o.banner(gateway));
    const g = gateway;
    const stopped = stopOnSignals(o.log, () => g.stop(o.shutdownTimeoutMs));
    held.release(true);
    if (hupPending) reload();
    await stopped;
  } finally {
    if (o.reread) process.off('SIGHUP', reload);
    await service?.endpoint.close();
  }
}
