// vhost-s3 blk: serve one disk image over a vhost-user-blk socket.
import { loadConfig, type ConfigOf } from '../config.js';
import { createLogger, type Logger } from '../util/log.js';
import { openImage } from '../blk/open-image.js';
import type { StorageConfig } from '../backends/store-config.js';
import type { BlockImage } from '../blk/image.js';
import { checkExport } from './exports.js';
import { runGateway } from './gateway.js';

type ImageConfig = Pick<ConfigOf<'blk'>, 'cacheSize' | 'dirtySize' | 'writethrough' | 'writebackDelay' | 'uploads' | 'readahead' | 'force'
  | 'endpoint' | 'region' | 'pathStyle' | 'checksums' | 's3Concurrency'> & { readonly staleTempAge?: number; readonly s3MaxAttempts?: number } & { readonly ioEngine?: ConfigOf<'blk'>['ioEngine'] }
  & Pick<StorageConfig, 's3Observer' | 'storeObserver'>;

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
  checkExport({ type: 'blk', config: cfg });
  const log = createLogger(cfg.logLevel);
  await runGateway([{ type: 'blk', config: cfg }], { log, shutdownTimeoutMs: cfg.shutdownTimeout * 1000, metrics: cfg.metrics, pollUs: cfg.pollUs, banner: () => '' });
}
