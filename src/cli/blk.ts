// vhost-s3 blk: serve one disk image over a vhost-user-blk socket.
import { loadConfig } from '../config.js';
import { ConfigError } from '../util/errors.js';
import { createLogger } from '../util/log.js';
import { BlkExport } from '../blk/export.js';
import { stopOnSignals } from './lifecycle.js';

export async function runBlk(argv: string[]): Promise<void> {
  const cfg = loadConfig('blk', argv);
  if (cfg.socket === '') throw new ConfigError('no socket given (--socket /run/vm1-disk.sock)');
  const log = createLogger(cfg.logLevel);
  const exp = await BlkExport.start({
    socket: cfg.socket, image: cfg.image, readOnly: cfg.readonly, queues: cfg.queues,
    serial: cfg.serial, ioEngine: cfg.ioEngine, log,
  });
  await stopOnSignals(log, () => exp.close());
}
