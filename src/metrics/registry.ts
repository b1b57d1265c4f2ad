// The metric families of a gateway process (Prometheus, via prom-client) and the
// observers handed to its devices and stores. Counters the caches keep anyway are read at
// scrape time (collect), so that they cost the data path nothing more.
import { Counter, Gauge, Registry, collectDefaultMetrics, type Metric } from 'prom-client';
import type { RequestObserver, S3Observer, StoreObserver } from './observer.js';
import { DeviceStats, type Sample } from './device-stats.js';
import { native } from '../native/index.js';

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
  private readonly devices: DeviceStats[] = [];
  private readonly s3Requests: Counter<'export' | 'operation' | 'code'>;
  private readonly s3Retries: Counter<'export' | 'operation'>;
  private readonly s3Sent: Counter<'export'>;
  private readonly s3Received: Counter<'export'>;
  private readonly storeOps: Counter<'export' | 'operation' | 'result'>;

  constructor() {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry });
    const devices = this.devices;
    this.family('vhost_s3_requests_total', 'Device requests completed, by operation and status', 'counter', (out) => devices.forEach((d) => d.requestSamples(out)));
    this.family('vhost_s3_request_duration_seconds', 'Device request latency, from taking the request to completing it', 'histogram', (out) => devices.forEach((d) => d.latencySamples('vhost_s3_request_duration_seconds', out)));
    this.family('vhost_s3_read_bytes_total', 'Bytes read by the guest (blk IN, FUSE READ)', 'counter', (out) => devices.forEach((d) => out.push({ labels: { ...d.labels }, value: d.readBytes })));
    this.family('vhost_s3_written_bytes_total', 'Bytes written by the guest (blk OUT, FUSE WRITE)', 'counter', (out) => devices.forEach((d) => out.push({ labels: { ...d.labels }, value: d.writtenBytes })));
    this.family('vhost_s3_inflight_requests', 'Device requests taken and not yet completed', 'gauge', (out) => devices.forEach((d) => out.push({ labels: { ...d.labels }, value: d.inflight })));
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
    this.storeOps = new Counter({ name: 'vhost_s3_store_operations_total', help: 'Operations of a local directory store (file:), by operation and result (ok or errno name)', labelNames: ['export', 'operation', 'result'], registers });
    this.cacheFamily('counter', 'vhost_s3_cache_hits_total', 'Cache lookups served from memory', (s) => s.hits);
    this.cacheFamily('counter', 'vhost_s3_cache_misses_total', 'Cache lookups that had to fetch from the store', (s) => s.misses);
    this.cacheFamily('gauge', 'vhost_s3_cache_hit_ratio', 'hits / (hits + misses) since start (0 before any lookup)', (s) => (s.hits === undefined || s.misses === undefined ? undefined : s.hits + s.misses === 0 ? 0 : s.hits / (s.hits + s.misses)));
    this.cacheFamily('gauge', 'vhost_s3_cache_bytes', 'Bytes held by the cache', (s) => s.bytes);
    this.cacheFamily('gauge', 'vhost_s3_cache_dirty_bytes', 'Bytes written and not yet stored', (s) => s.dirtyBytes);
    this.cacheFamily('counter', 'vhost_s3_cache_evictions_total', 'Entries dropped to make room', (s) => s.evictions);
    this.family('vhost_s3_loop_polls_total', 'Event-loop turns that busy-polled before sleeping (--poll-us), by whether an event came within the window (hit) or not (miss)', 'counter', (out) => {
      const p = native.loopPollStats();
      out.push({ labels: { result: 'hit' }, value: p.hits }, { labels: { result: 'miss' }, value: p.misses });
    });
    this.family('vhost_s3_loop_poll_window_seconds', 'How long the event loop busy-polls before it sleeps now (adapts between 0 and --poll-us)', 'gauge', (out) => {
      out.push({ labels: {}, value: native.loopPollStats().windowNs / 1e9 });
    });
  }

  /** A family whose samples are made at scrape time from counters kept elsewhere. */
  private family(name: string, help: string, type: 'counter' | 'gauge' | 'histogram', samples: (out: Sample[]) => void): void {
    const collect = (): { name: string; help: string; type: string; aggregator: string; values: Sample[] } => {
      const values: Sample[] = [];
      samples(values);
      return { name, help, type, aggregator: 'sum', values };
    };
    // prom-client's registry takes any object with these members (its own metrics have no more).
    const metric = { name, help, type, aggregator: 'sum', get: async () => collect(), reset: () => undefined };
    this.registry.registerMetric(metric as unknown as Metric<string>);
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
    const stats = new DeviceStats({ export: exportId, device });
    this.devices.push(stats);
    return stats;
  }

  /** Reports a device's queue depth at each scrape. */
  queueDepth(exportId: string, device: DeviceType, read: () => number): void {
    this.depths.push({ labels: { export: exportId, device }, read });
  }

  /** Reports a cache at each scrape ("chunk", "page", "write_buffer"). */
  cache(exportId: string, cache: string, read: () => CacheSnapshot): void {
    this.caches.push({ labels: { export: exportId, cache }, read });
  }

  /** The observers of one export's store, whichever kind it is (StorageConfig fields). */
  storage(exportId: string): { s3Observer: S3Observer; storeObserver: StoreObserver } {
    return { s3Observer: this.s3(exportId), storeObserver: this.store(exportId) };
  }

  /** The observer of one export's local directory store. */
  store(exportId: string): StoreObserver {
    const children = new Map<string, Counter.Internal>();
    return {
      operation: (operation, result) => {
        const key = `${operation} ${result}`;
        let c = children.get(key);
        if (c === undefined) children.set(key, (c = this.storeOps.labels({ export: exportId, operation, result })));
        c.inc();
      },
    };
  }

  /** The observer of one export's S3 client. */
  s3(exportId: string): S3Observer {
    const sent = this.s3Sent.labels({ export: exportId });
    const received = this.s3Received.labels({ export: exportId });
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
