// `npm start`: the gateway on the embedded default — a sparse raw disk under the data
// directory, created on first start, served over vhost-user-blk.
import { mkdirSync, openSync, closeSync, ftruncateSync, existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { loadConfig } from '../config.js';
import { ConfigError } from '../util/errors.js';
import { createLogger } from '../util/log.js';
import { BlkExport } from '../blk/export.js';
import { stopOnSignals } from './lifecycle.js';

export async function runServe(argv: string[]): Promise<void> {
  const cfg = loadConfig('serve', argv);
  const log = createLogger(cfg.logLevel);
  const dir = resolve(cfg.dataDir);
  try {
    mkdirSync(dir, { recursive: true });
  } catch (err) {
    throw new ConfigError(`cannot create data directory ${dir}: ${(err as NodeJS.ErrnoException).code}`);
  }
  const disk = join(dir, 'disk0.raw');
  if (!existsSync(disk)) createSparseFile(disk, cfg.diskSize);
  const socket = join(dir, 'disk0.sock');
  const exp = await BlkExport.start({ socket, image: `file:${disk}`, readOnly: false, queues: cfg.queues, serial: 'vhost-s3-disk0', ioEngine: cfg.ioEngine, log });
  process.stdout.write(
    `vhost-s3 is serving ${disk} (${exp.image.size} bytes) on ${socket}\n` +
    `Attach it to QEMU with:\n` +
    `  -object memory-backend-memfd,id=mem,size=1G,share=on -numa node,memdev=mem \\\n` +
    `  -chardev socket,id=d0,path=${socket} -device vhost-user-blk-pci,chardev=d0\n` +
    `Press Ctrl-C to stop.\n`,
  );
  await stopOnSignals(log, () => exp.close());
}

function createSparseFile(path: string, size: number): void {
  if (size <= 0 || size % 512 !== 0) throw new ConfigError(`disk size must be a positive multiple of 512 bytes, got ${size}`);
  const fd = openSync(path, 'wx');
  try {
    ftruncateSync(fd, size);
  } finally {
    closeSync(fd);
  }
}
