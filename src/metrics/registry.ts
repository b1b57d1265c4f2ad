// The metric families of a gateway process (Prometheus, via prom-client) and the
// observers handed to its devices and stores. Counters the caches keep anyway are read at
// scrape time (collect), so that they cost the data path nothing more.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { RequestObserver, S3Observer } from './observer.js';

/** 10 µs to 10 s: a page-cache hit on one end, a stalled S3 request on the other. */
export const LATENCY_BUCKETS = [
  0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
];

export type DeviceType = 'blk' | 'fs' | 'fuse';

/** What a cache reports when scraped (totals since it was created). */
export interface CacheSnapshot {
  /** Absent for a cache that is not looked up (write buffers). */
  readonly hits?: number;
  readonly misses?: number;
  /** Bytes held (clean and dirty). */
  readonly bytes: number;
  /** Bytes written and not yet stored. */
  readonly dirtyBytes: number;
  readonly evictions?: number;
}

interface CacheSource {
  readonly labels: { export: string; cache: string };
  readonly read: () => CacheSnapshot;
}

interface DepthSource {
  readonly labels: { export: string; device: DeviceType };
  readonly read: () => number;
}

export class Metrics {
  readonly registry = new Registry();
  private readonly caches: CacheSource[] = [];
  private readonly depths: DepthSource[] = [];

  private readonly requests: Counter<'export' | 'device' | 'op' | 'status'>;
  private readonly latency: Histogram<'export' | 'device' | 'op'>;
  private readonly readBytes: Counter<'export' | 'device'>;
  private readonly writtenBytes: Counter<'export' | 'device'>;
  private readonly inflight: Gauge<'export' | 'device'>;
  private readonly s3Requests: Counter<'export' | 'operation' | 'code'>;
  private readonly s3Retries: Counter<'export' | 'operation'>;
  private readonly s3Sent: Counter<'export'>;
  private readonly s3Received: Counter<'export'>;

  constructor() {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry });
    this.requests = new Counter({ name: 'vhost_s3_requests_total', help: 'Device requests completed, by operation and status', labelNames: ['export', 'device', 'op', 'status'], registers });
    this.latency = new Histogram({ name: 'vhost_s3_request_duration_seconds', help: 'Device request latency, from taking the request to completing it', labelNames: ['export', 'device', 'op'], buckets: LATENCY_BUCKETS, registers });
    this.readBytes = new Counter({ name: 'vhost_s3_read_bytes_total', help: 'Bytes read by the guest (blk IN, FUSE READ)', labelNames: ['export', 'device'], registers });
    this.writtenBytes = new Counter({ name: 'vhost_s3_written_bytes_total', help: 'Bytes written by the guest (blk OUT, FUSE WRITE)', labelNames: ['export', 'device'], registers });
    this.inflight = new Gauge({ name: 'vhost_s3_inflight_requests', help: 'Device requests taken and not yet completed', labelNames: ['export', 'device'], registers });
    const depths = this.depths;
    new Gauge({
      name: 'vhost_s3_queue_depth', help: 'Requests the guest made available on the device\'s queues and not yet taken', labelNames: ['export', 'device'], registers,
      collect() {
        this.reset();
        for (const d of depths) this.set(d.labels, d.read());
      },
    });
    this.s3Requests = new Counter({ name: 'vhost_s3_s3_requests_total', help: 'S3 request attempts, by operation and HTTP status code (0: no response)', labelNames: ['export', 'operation', 'code'], registers });
    this.s3Retries = new Counter({ name: 'vhost_s3_s3_retries_total', help: 'S3 attempts after the first of a request', labelNames: ['export', 'operation'], registers });
    this.s3Sent = new Counter({ name: 'vhost_s3_s3_sent_bytes_total', help: 'Request body bytes sent to S3', labelNames: ['export'], registers });
    this.s3Received = new Counter({ name: 'vhost_s3_s3_received_bytes_total', help: 'Response body bytes received from S3 (Content-Length)', labelNames: ['export'], registers });
    this.cacheFamily('counter', 'vhost_s3_cache_hits_total', 'Cache lookups served from memory', (s) => s.hits);
    this.cacheFamily('counter', 'vhost_s3_cache_misses_total', 'Cache lookups that had to fetch from the store', (s) => s.misses);
    this.cacheFamily('gauge', 'vhost_s3_cache_hit_ratio', 'hits / (hits + misses) since start (0 before any lookup)', (s) => (s.hits === undefined || s.misses === undefined ? undefined : s.hits + s.misses === 0 ? 0 : s.hits / (s.hits + s.misses)));
    this.cacheFamily('gauge', 'vhost_s3_cache_bytes', 'Bytes held by the cache', (s) => s.bytes);
    this.cacheFamily('gauge', 'vhost_s3_cache_dirty_bytes', 'Bytes written and not yet stored', (s) => s.dirtyBytes);
    this.cacheFamily('counter', 'vhost_s3_cache_evictions_total', 'Entries dropped to make room', (s) => s.evictions);
  }

  private cacheFamily(kind: 'counter' | 'gauge', name: string, help: string, value: (s: CacheSnapshot) => number | undefined): void {
    const caches = this.caches;
    const labelNames = ['export', 'cache'] as const;
    const registers = [this.registry];
    if (kind === 'gauge') {
      new Gauge({
        name, help, labelNames, registers,
        collect() {
          this.reset();
          for (const c of caches) {
            const v = value(c.read());
            if (v !== undefined) this.set(c.labels, v);
          }
        },
      });
      return;
    }
    // The totals are the caches' own: mirrored at scrape time.
    new Counter({
      name, help, labelNames, registers,
      collect() {
        this.reset();
        for (const c of caches) {
          const v = value(c.read());
          if (v !== undefined) this.inc(c.labels, v);
        }
      },
    });
  }

  /** The observer of one device's requests. */
  device(exportId: string, device: DeviceType): RequestObserver {
    const labels = { export: exportId, device };
    const inflight = this.inflight.labels(labels);
    inflight.set(0);
    const readBytes = this.readBytes.labels(labels);
    const writtenBytes = this.writtenBytes.labels(labels);
    readBytes.inc(0);
    writtenBytes.inc(0);
    // Children bound once per (op, status): a request costs two map lookups, not label hashing.
    const counters = new Map<string, Counter.Internal>();
    const histograms = new Map<string, Histogram.Internal<'export' | 'device' | 'op'>>();
    return {
      start: () => {
        inflight.inc();
        return performance.now();
      },
      done: (start, op, status, bytesRead, bytesWritten) => {
        inflight.dec();
        const key = `${op} ${status}`;
        let c = counters.get(key);
        if (c === undefined) counters.set(key, (c = this.requests.labels({ ...labels, op, status })));
        c.inc();
        let h = histograms.get(op);
        if (h === undefined) histograms.set(op, (h = this.latency.labels({ ...labels, op })));
        h.observe((performance.now() - start) / 1000);
        if (bytesRead > 0) readBytes.inc(bytesRead);
        if (bytesWritten > 0) writtenBytes.inc(bytesWritten);
      },
    };
  }

  /** Reports a device's queue depth at each scrape. */
  queueDepth(exportId: string, device: DeviceType, read: () => number): void {
    this.depths.push({ labels: { export: exportId, device }, read });
  }

  /** Reports a cache at each scrape ("chunk", "page", "write_buffer"). */
  cache(exportId: string, cache: string, read: () => CacheSnapshot): void {
    this.caches.push({ labels: { export: exportId, cache }, read });
  }

  /** The observer of one export's S3 client. */
  s3(exportId: string): S3Observer {
    const sent = this.s3Sent.labels({ export: exportId });
    const received = this.s3Received.labels({ export: exportId });
    sent.inc(0);
    received.inc(0);
    return {
      attempt: (operation, status, bytesSent, bytesReceived) => {
        this.s3Requests.inc({ export: exportId, operation, code: String(status) });
        if (bytesSent > 0) sent.inc(bytesSent);
        if (bytesReceived > 0) received.inc(bytesReceived);
      },
      finished: (operation, attempts) => {
        if (attempts > 1) this.s3Retries.inc({ export: exportId, operation }, attempts - 1);
      },
    };
  }
}
