// vhost-s3 run --config exports.json: one gateway serving every export the file lists
// (blk disks and fs shares, each on its own socket), as qemu-storage-daemon serves its
// --export options. SIGHUP re-reads the file and applies the settings that can change live.
import { loadConfig } from '../config.js';
import { createLogger } from '../util/log.js';
import { QEMU_MEMORY_ARGS, qemuDeviceArgs, readExportsFile, readRunFile } from './exports.js';
import { runGateway, type Gateway } from './gateway.js';

export async function runRun(argv: string[]): Promise<void> {
  const cfg = loadConfig('run', argv);
  const file = readRunFile(cfg.config);
  const log = createLogger(cfg.logLevel);
  await runGateway(file.exports, {
    log,
    shutdownTimeoutMs: cfg.shutdownTimeout * 1000,
    // The flag (or VHOST_S3_METRICS) wins over the file's "metrics".
    metrics: cfg.metrics !== '' ? cfg.metrics : file.metrics,
    pollUs: cfg.pollUs,
    banner,
    reread: () => readExportsFile(cfg.config),
  });
}

/** One line per export, then the QEMU arguments that attach them all. */
function banner(g: Gateway): string {
  const lines = g.exports.map((r) => r.type === 'blk'
    ? `blk ${r.spec.config.socket}: disk image ${r.spec.config.image} (${r.exp.image.size} bytes${r.exp.image.readOnly ? ', read-only' : ''})`
    : `fs ${r.spec.config.socket}: ${r.spec.config.bucket} as virtio-fs, tag ${r.spec.config.tag}`);
  let d = 0;
  let f = 0;
  const devices = g.exports.map((r) => qemuDeviceArgs(r.spec, r.type === 'blk' ? `d${d++}` : `f${f++}`).join(' '));
  return `vhost-s3 is serving ${g.exports.length} export${g.exports.length === 1 ? '' : 's'}:\n` +
    lines.map((l) => `  ${l}\n`).join('') +
    `QEMU:\n  ${[QEMU_MEMORY_ARGS.join(' '), ...devices].join(' \\\n  ')}\n`;
}
