// Latency and throughput accounting for the load generators. Every completion's latency
// is kept (8 bytes each) so percentiles are exact rather than bucketed.
export interface LoadResult {
  readonly iops: number;
  readonly bw_bytes_per_s: number;
  readonly lat_us: { readonly mean: number; readonly p50: number; readonly p99: number };
  readonly errors: number;
  readonly ios: number;
  readonly bytes: number;
  readonly seconds: number;
  readonly verified_bytes: number;
  /** The backend closed the connection before the run ended (the numbers cover the run until then). */
  readonly disconnected?: boolean;
}

export class LatencyRecorder {
  private samples = new Float64Array(1 << 16);
  private count = 0;
  bytes = 0;
  errors = 0;
  verifiedBytes = 0;

  record(latencyNs: number, bytes: number): void {
    if (this.count === this.samples.length) {
      const bigger = new Float64Array(this.samples.length * 2);
      bigger.set(this.samples);
      this.samples = bigger;
    }
    this.samples[this.count++] = latencyNs;
    this.bytes += bytes;
  }

  get ios(): number {
    return this.count;
  }

  result(seconds: number): LoadResult {
    const lat = this.samples.subarray(0, this.count).slice().sort();
    let sum = 0;
    for (const v of lat) sum += v;
    const pct = (p: number): number => (lat.length === 0 ? 0 : lat[Math.min(lat.length - 1, Math.floor((p / 100) * lat.length))]! / 1000);
    return {
      iops: this.count / seconds,
      bw_bytes_per_s: this.bytes / seconds,
      lat_us: { mean: lat.length === 0 ? 0 : sum / lat.length / 1000, p50: pct(50), p99: pct(99) },
      errors: this.errors,
      ios: this.count,
      bytes: this.bytes,
      seconds,
      verified_bytes: this.verifiedBytes,
    };
  }
}
