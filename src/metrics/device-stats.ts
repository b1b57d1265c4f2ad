// The request metrics of one device, kept in plain numbers on the request path and turned
// into Prometheus samples only when scraped: a request costs two clock reads, a map lookup
// and a few additions, not prom-client's per-observation label hashing.
import type { RequestObserver } from './observer.js';

/** 10 µs to 10 s: a page-cache hit on one end, a stalled S3 request on the other. */
export const LATENCY_BUCKETS = [
  0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
] as const;
const BOUNDS_MS = LATENCY_BUCKETS.map((s) => s * 1000);

export interface Sample {
  readonly metricName?: string;
  readonly labels: Record<string, string>;
  readonly value: number;
}

/** One operation's completions: by status, and their latency histogram. */
class OpStats {
  readonly statuses = new Map<string, number>();
  /** Per bucket (not cumulative), the last one above the largest bound (+Inf). */
  readonly buckets = new Float64Array(BOUNDS_MS.length + 1);
  sumMs = 0;
  count = 0;
}

export class DeviceStats implements RequestObserver {
  inflight = 0;
  readBytes = 0;
  writtenBytes = 0;
  private readonly ops = new Map<string, OpStats>();

  constructor(readonly labels: Readonly<Record<'export' | 'device', string>>) {}

  start(): number {
    this.inflight++;
    return performance.now();
  }

  done(start: number, op: string, status: string, bytesRead: number, bytesWritten: number): void {
    const ms = performance.now() - start;
    this.inflight--;
    let s = this.ops.get(op);
    if (s === undefined) this.ops.set(op, (s = new OpStats()));
    s.statuses.set(status, (s.statuses.get(status) ?? 0) + 1);
    let i = 0;
    while (i < BOUNDS_MS.length && ms > BOUNDS_MS[i]!) i++;
    s.buckets[i]!++;
    s.sumMs += ms;
    s.count++;
    this.readBytes += bytesRead;
    this.writtenBytes += bytesWritten;
  }

  /** vhost_s3_requests_total samples. */
  requestSamples(out: Sample[]): void {
    for (const [op, s] of this.ops) for (const [status, n] of s.statuses) out.push({ labels: { ...this.labels, op, status }, value: n });
  }

  /** vhost_s3_request_duration_seconds samples (_bucket cumulative, _sum, _count). */
  latencySamples(name: string, out: Sample[]): void {
    for (const [op, s] of this.ops) {
      let cumulative = 0;
      for (let i = 0; i <= BOUNDS_MS.length; i++) {
        cumulative += s.buckets[i]!;
        out.push({ metricName: `${name}_bucket`, labels: { ...this.labels, op, le: i < BOUNDS_MS.length ? String(LATENCY_BUCKETS[i]) : '+Inf' }, value: cumulative });
      }
      out.push({ metricName: `${name}_sum`, labels: { ...this.labels, op }, value: s.sumMs / 1000 });
      out.push({ metricName: `${name}_count`, labels: { ...this.labels, op }, value: s.count });
    }
  }
}
