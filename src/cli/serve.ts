// `npm start`: the gateway on the embedded default — an object-backed disk image in a
// local directory store under the data directory, created on first start and served over
// vhost-user-blk.
import { mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { loadConfig } from '../config.js';
import { ConfigError } from '../util/errors.js';
import { createLogger } from '../util/log.js';
import { BlkExport } from '../blk/export.js';
import { createImage } from '../blk/image-admin.js';
import { DEFAULT_CHUNK_SIZE, ImageKeys } from '../blk/image-format.js';
import { openStore, type StorageConfig } from '../backends/store-config.js';
import type { Logger } from '../util/log.js';
import { openConfiguredImage } from './blk.js';
import { stopOnSignals } from './lifecycle.js';

export async function runServe(argv: string[]): Promise<void> {
  const cfg = loadConfig('serve', argv);
  // Checked before anything is created, so that a typo leaves no empty store behind.
  if (cfg.diskSize <= 0 || cfg.diskSize % 512 !== 0) throw new ConfigError(`--disk-size must be a positive multiple of 512 bytes, got ${cfg.diskSize}`);
  const log = createLogger(cfg.logLevel);
  const dir = resolve(cfg.dataDir);
  try {
    mkdirSync(dir, { recursive: true });
  } catch (err) {
    throw new ConfigError(`cannot create data directory ${dir}: ${(err as NodeJS.ErrnoException).code}`);
  }
  const storage = { endpoint: '', region: '', pathStyle: 'auto', checksums: 'when-required', s3Concurrency: 8 } as const;
  const storeDir = join(dir, 'store');
  await createDefaultImage(storeDir, 'images/disk0/', cfg.diskSize, storage, log);
  const locator = `file:${storeDir}/images/disk0`;
  const socket = join(dir, 'disk0.sock');
  const image = await openConfiguredImage(locator, false, { ...cfg, ...storage }, log);
  const exp = await BlkExport.start({ socket, image, locator, queues: cfg.queues, serial: 'vhost-s3-disk0', log });
  process.stdout.write(
    `vhost-s3 is serving the disk image ${locator} (${exp.image.size} bytes) on ${socket}\n` +
    `Attach it to QEMU with:\n` +
    `  -object memory-backend-memfd,id=mem,size=1G,share=on -numa node,memdev=mem -m 1G \\\n` +
    `  -chardev socket,id=d0,path=${socket} -device vhost-user-blk-pci,chardev=d0\n` +
    `Press Ctrl-C to stop.\n`,
  );
  await stopOnSignals(log, () => exp.close());
}

/** Creates the image on first start; later starts reuse it (whatever its size). */
async function createDefaultImage(storeDir: string, prefix: string, size: number, storage: StorageConfig, log: Logger): Promise<void> {
  const fail = (err: unknown): ConfigError => new ConfigError(`cannot create the default disk image in ${storeDir}: ${(err as Error).message}`);
  const { store } = await openStore(`file:${storeDir}/`, storage, log, true).catch((err: unknown) => {
    throw fail(err);
  });
  try {
    const keys = new ImageKeys(prefix);
    if (await store.head(keys.manifest)) return;
    await createImage(store, keys, size, DEFAULT_CHUNK_SIZE);
  } catch (err) {
    throw fail(err);
  } finally {
    await store.close();
  }
}
