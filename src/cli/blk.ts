// vhost-s3 blk: serve one disk image over a vhost-user-blk socket.
import { loadConfig, type ConfigOf } from '../config.js';
import { ConfigError } from '../util/errors.js';
import { createLogger, type Logger } from '../util/log.js';
import { BlkExport } from '../blk/export.js';
import { openImage } from '../blk/open-image.js';
import type { BlockImage } from '../blk/image.js';
import { serveUntilSignal } from './lifecycle.js';

type ImageConfig = Pick<ConfigOf<'blk'>, 'cacheSize' | 'dirtySize' | 'writethrough' | 'writebackDelay' | 'uploads' | 'readahead' | 'force'
  | 'endpoint' | 'region' | 'pathStyle' | 'checksums' | 's3Concurrency'> & { readonly ioEngine?: ConfigOf<'blk'>['ioEngine'] };

/** Opens an image with the cache and storage settings of a command's configuration. */
export function openConfiguredImage(locator: string, readOnly: boolean, cfg: ImageConfig, log: Logger): Promise<BlockImage> {
  return openImage(locator, {
    readOnly, ioEngine: cfg.ioEngine ?? 'uring', log,
    object: {
      force: cfg.force, cacheBytes: cfg.cacheSize, maxDirtyBytes: cfg.dirtySize, writethrough: cfg.writethrough,
      uploadConcurrency: cfg.uploads, fetchConcurrency: cfg.uploads, readAheadChunks: cfg.readahead, writebackDelayMs: cfg.writebackDelay,
    },
    storage: cfg,
  });
}

export async function runBlk(argv: string[]): Promise<void> {
  const cfg = loadConfig('blk', argv);
  if (cfg.socket === '') throw new ConfigError('no socket given (--socket /run/vm1-disk.sock)');
  const serialBytes = Buffer.byteLength(cfg.serial);
  if (serialBytes > 20) throw new ConfigError(`--serial is ${serialBytes} bytes long; a virtio-blk serial has at most 20`);
  const log = createLogger(cfg.logLevel);
  const image = await openConfiguredImage(cfg.image, cfg.readonly, cfg, log);
  await serveUntilSignal(
    log,
    () => BlkExport.start({ socket: cfg.socket, image, locator: cfg.image, queues: cfg.queues, serial: cfg.serial, log }),
    (exp) => exp.close(),
  );
}
