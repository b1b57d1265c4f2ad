// vhost-s3 bench blk: drive any vhost-user-blk backend from this process and report
// IOPS, bandwidth and latency percentiles (one JSON object with --json).
import { loadConfig } from '../config.js';
import { ConfigError } from '../util/errors.js';
import { createLogger } from '../util/log.js';
import { BlkClient } from '../frontend/blk-client.js';
import { runBlkLoad } from '../frontend/blk-load.js';
import type { LoadResult } from '../frontend/stats.js';

export async function runBenchBlk(argv: string[]): Promise<void> {
  const cfg = loadConfig('bench blk', argv);
  if (cfg.socket === '') throw new ConfigError('no socket given (--socket /run/vm1-disk.sock)');
  if (cfg.bs % 512 !== 0 || cfg.bs === 0) throw new ConfigError(`--bs must be a positive multiple of 512, got ${cfg.bs}`);
  if (cfg.runtime <= 0 && cfg.size <= 0) throw new ConfigError('give --runtime seconds or --size bytes');
  if (cfg.rwmixread < 0 || cfg.rwmixread > 100) throw new ConfigError('--rwmixread must be 0..100');
  const log = createLogger(cfg.logLevel);
  const slotsPerQueue = Math.max(cfg.iodepth, 1);
  let client: BlkClient;
  try {
    client = await BlkClient.connect(cfg.socket, {
      queues: cfg.queues,
      queueSize: Math.min(1024, Math.max(128, 2 ** Math.ceil(Math.log2(slotsPerQueue * 2)))),
      memorySize: Math.ceil((cfg.queues * slotsPerQueue * cfg.bs + (16 << 20)) / 4096) * 4096,
      log,
    });
  } catch (err) {
    throw new ConfigError(`cannot drive ${cfg.socket}: ${(err as Error).message}`);
  }
  const tty = process.stderr.isTTY && !cfg.json;
  try {
    const result = await runBlkLoad(client, {
      rw: cfg.rw, bs: cfg.bs, iodepth: cfg.iodepth, queues: Math.min(cfg.queues, client.numQueues),
      runtime: cfg.size > 0 ? 0 : cfg.runtime, totalBytes: cfg.size, rwmixread: cfg.rwmixread, verify: cfg.verify,
      onProgress: tty ? (bytes, s) => process.stderr.write(`\r${(bytes / 2 ** 20 / s).toFixed(1)} MiB/s, ${s.toFixed(0)} s`) : undefined,
    });
    if (tty) process.stderr.write('\n');
    process.stdout.write(cfg.json ? JSON.stringify(summary(result)) + '\n' : formatResult(cfg.rw, cfg.bs, cfg.iodepth, result));
    if (result.errors > 0) process.exitCode = 1;
    if (result.disconnected) throw new Error(`the backend closed the connection during the run (after ${result.ios} I/Os, ${result.errors} errors)`);
  } finally {
    await client.close();
  }
}

function summary(r: LoadResult): Record<string, unknown> {
  return {
    iops: r.iops, bw_bytes_per_s: r.bw_bytes_per_s, lat_us: r.lat_us, errors: r.errors, ios: r.ios, seconds: r.seconds, verified_bytes: r.verified_bytes,
    ...(r.disconnected ? { disconnected: true } : {}),
  };
}

function formatResult(rw: string, bs: number, depth: number, r: LoadResult): string {
  return [
    `${rw} bs=${bs} iodepth=${depth}: ${r.iops.toFixed(0)} IOPS, ${(r.bw_bytes_per_s / 2 ** 20).toFixed(1)} MiB/s`,
    `  latency (us): mean ${r.lat_us.mean.toFixed(1)}, p50 ${r.lat_us.p50.toFixed(1)}, p99 ${r.lat_us.p99.toFixed(1)}`,
    `  ${r.ios} I/Os in ${r.seconds.toFixed(2)} s, ${r.errors} errors${r.verified_bytes > 0 ? `, ${r.verified_bytes} bytes verified` : ''}`,
    '',
  ].join('\n');
}
