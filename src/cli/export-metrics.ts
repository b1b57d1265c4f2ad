// Metrics of a serving command: the endpoint (--metrics HOST:PORT) and what each export
// reports to it, under the label export="<socket>" (the mount point for `mount`).
import type { Logger } from '../util/log.js';
import { parseListenAddress } from '../metrics/address.js';
import { MetricsEndpoint } from '../metrics/endpoint.js';
import { Metrics } from '../metrics/registry.js';
import type { BlockImage } from '../blk/image.js';
import { ObjectImage } from '../blk/object-image.js';
import type { BucketVfs } from '../backends/posix/bucket-vfs.js';

export interface MetricsService {
  readonly metrics: Metrics;
  readonly endpoint: MetricsEndpoint;
}

/** Starts the endpoint `address` names ("" → null: metrics off). Bad address or port in use: ConfigError. */
export async function startMetrics(address: string, log: Logger): Promise<MetricsService | null> {
  const at = parseListenAddress(address);
  if (at === null) return null;
  const metrics = new Metrics();
  return { metrics, endpoint: await MetricsEndpoint.start(metrics, at, log) };
}

/** The chunk cache of an object image (a raw file has none). */
export function watchImage(metrics: Metrics, id: string, image: BlockImage): void {
  if (!(image instanceof ObjectImage)) return;
  const cache = image.chunkCache;
  metrics.cache(id, 'chunk', () => ({
    hits: cache.stats.hits, misses: cache.stats.misses, bytes: cache.cachedBytes + cache.dirtyChunkBytes, dirtyBytes: cache.dirtyChunkBytes,
    evictions: cache.stats.evictions,
  }));
}

/** The page cache and the write buffers of a bucket file system. */
export function watchBucket(metrics: Metrics, id: string, bucket: BucketVfs): void {
  metrics.cache(id, 'page', () => {
    const s = bucket.stats;
    return { hits: s.pageHits, misses: s.pageMisses, bytes: s.pageCacheBytes, dirtyBytes: 0, evictions: s.pageEvictions };
  });
  metrics.cache(id, 'write_buffer', () => {
    const s = bucket.stats;
    return { bytes: s.bufferMemory, dirtyBytes: s.bufferMemory };
  });
}
