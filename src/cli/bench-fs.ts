// vhost-s3 bench fs: drive any vhost-user-fs backend (vhost-s3 fs, virtiofsd) with FUSE
// workloads from this process and report rates and latency percentiles.
import { loadConfig } from '../config.js';
import { ConfigError } from '../util/errors.js';
import { createLogger } from '../util/log.js';
import { FuseClient } from '../frontend/fuse-client.js';
import { runFsLoad } from '../frontend/fs-load.js';

export async function runBenchFs(argv: string[]): Promise<void> {
  const cfg = loadConfig('bench fs', argv);
  if (cfg.socket === '') throw new ConfigError('no socket given (--socket /run/vm1-fs.sock)');
  if (cfg.dir === '' || cfg.dir.includes('/')) throw new ConfigError('--dir must be one directory name');
  const log = createLogger(cfg.logLevel);
  let client: FuseClient;
  try {
    client = await FuseClient.connect(cfg.socket, { requestQueues: cfg.queues, maxInFlight: Math.max(64, cfg.iodepth * 2), log });
    await client.init();
  } catch (err) {
    throw new ConfigError(`cannot drive ${cfg.socket}: ${(err as Error).message}`);
  }
  try {
    const r = await runFsLoad(client, {
      workload: cfg.workload, files: cfg.files, fileSize: cfg.fileSize, bigFileSize: cfg.bigFileSize,
      bs: cfg.bs, iodepth: cfg.iodepth, runtime: cfg.runtime, dir: cfg.dir,
    });
    if (cfg.json) {
      process.stdout.write(JSON.stringify({ workload: r.workload, ops_per_s: r.ops_per_s, bw_bytes_per_s: r.bw_bytes_per_s, lat_us: r.lat_us, errors: r.errors, ops: r.ios, seconds: r.seconds }) + '\n');
    } else {
      process.stdout.write(
        `${r.workload}: ${r.ops_per_s.toFixed(0)} ops/s, ${(r.bw_bytes_per_s / 2 ** 20).toFixed(1)} MiB/s\n` +
        `  latency (us): mean ${r.lat_us.mean.toFixed(1)}, p50 ${r.lat_us.p50.toFixed(1)}, p99 ${r.lat_us.p99.toFixed(1)}\n` +
        `  ${r.ios} operations in ${r.seconds.toFixed(2)} s, ${r.errors} errors\n`,
      );
    }
    if (r.errors > 0) process.exitCode = 1;
  } finally {
    await client.close();
  }
}
