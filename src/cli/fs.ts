// vhost-s3 fs: serve a bucket (or a local store) as a virtio-fs device over a vhost-user
// socket; vhost-s3 mount: the same engine mounted on the host through /dev/fuse.
import { accessSync, constants as fsConstants, statSync } from 'node:fs';
import { loadCommand, loadConfig, type ConfigOf } from '../config.js';
import { ConfigError } from '../util/errors.js';
import { createLogger, type Logger } from '../util/log.js';
import { openStore, type StorageConfig } from '../backends/store-config.js';
import { BucketVfs, type BucketVfsOptions } from '../backends/posix/bucket-vfs.js';
import { FuseServer, type FuseServerOptions } from '../fuse/server.js';
import { DevFuseMount } from '../fuse/dev-fuse.js';
import { native, workInFlight } from '../native/index.js';
import { ReadOnlyVfs } from '../fuse/read-only-vfs.js';
import type { Vfs } from '../fuse/vfs.js';
import { holdSignals, stopOnSignals } from './lifecycle.js';
import { checkExport, QEMU_MEMORY_ARGS, qemuDeviceArgs } from './exports.js';
import { runGateway } from './gateway.js';
import { startMetrics, watchBucket } from './export-metrics.js';

type FsConfig = Omit<ConfigOf<'mount'>, 'passthrough'> & Pick<StorageConfig, 's3Observer' | 'storeObserver'>;

function octal(text: string, what: string): number {
  if (!/^0?[0-7]{1,4}$/.test(text)) throw new ConfigError(`${what} must be octal permissions such as 0644, got "${text}"`);
  return parseInt(text, 8);
}

function checkWritableDir(dir: string, what: string): void {
  try {
    if (!statSync(dir).isDirectory()) throw new ConfigError(`${what} ${dir} is not a directory`);
    accessSync(dir, fsConstants.W_OK);
  } catch (err) {
    if (err instanceof ConfigError) throw err;
    throw new ConfigError(`${what} ${dir}: ${(err as NodeJS.ErrnoException).code ?? 'not usable'}`);
  }
}

const GiB = 2 ** 30;

/** A size option within bounds (ConfigError naming the flag otherwise). */
function sizeWithin(value: number, flag: string, min: number, max: number, what: string): number {
  if (value < min || value > max) throw new ConfigError(`${flag} must be ${what}, got ${value} bytes`);
  return value;
}

/**
 * The BucketVfs settings of a command's configuration (all but the store, the prefix and
 * the logger), checked: ConfigError for values the file system cannot work with.
 */
export function bucketVfsOptions(cfg: FsConfig): Omit<BucketVfsOptions, 'store' | 'prefix' | 'logger'> {
  if (cfg.tempDir !== '') checkWritableDir(cfg.tempDir, '--temp-dir');
  const block = cfg.cacheBlockSize;
  if (block < 4096 || block > 64 * 2 ** 20 || (block & (block - 1)) !== 0) throw new ConfigError(`--cache-block-size must be a power of two from 4K to 64M, got ${block} bytes`);
  return {
    defaultFileMode: octal(cfg.fileMode, '--file-mode'), defaultDirMode: octal(cfg.dirMode, '--dir-mode'),
    ...(cfg.uid >= 0 ? { uid: cfg.uid } : {}), ...(cfg.gid >= 0 ? { gid: cfg.gid } : {}),
    attrTtlMs: cfg.attrTimeout * 1000, negativeTtlMs: cfg.negativeTimeout * 1000, listTtlMs: cfg.listTimeout * 1000,
    attrCacheEntries: cfg.attrCacheEntries, listCacheEntries: cfg.listCacheEntries,
    pageCacheBytes: cfg.cacheSize, blockSize: block, readAheadBytes: cfg.readAhead, fetchConcurrency: cfg.fetchConcurrency,
    memoryBudget: cfg.writeBuffer, spillThreshold: cfg.spillThreshold, ...(cfg.tempDir !== '' ? { tempDir: cfg.tempDir } : {}),
    // S3: one PUT holds at most 5 GiB, and so does one part.
    multipartThreshold: sizeWithin(cfg.multipartThreshold, '--multipart-threshold', 0, 5 * GiB, 'at most 5G'),
    partSize: sizeWithin(cfg.partSize, '--part-size', 1, 5 * GiB, 'from 1 byte (raised to the store\'s minimum) to 5G'),
    uploadConcurrency: cfg.uploadConcurrency, metaConcurrency: cfg.metaConcurrency,
    uploadMemory: sizeWithin(cfg.uploadMemory, '--upload-memory', 1, Number.MAX_SAFE_INTEGER, 'more than 0'),
  };
}

/** Opens the store and the file system over it, as a command's configuration says. */
export async function openBucketVfs(cfg: FsConfig, log: Logger): Promise<{ vfs: Vfs; bucket: BucketVfs; close: () => Promise<void> }> {
  if (cfg.bucket === '') throw new ConfigError('no bucket given (--bucket s3://bucket[/prefix] or file:/path)');
  const options = bucketVfsOptions(cfg);
  const { store, prefix } = await openStore(cfg.bucket.endsWith('/') || cfg.bucket.startsWith('s3://') ? cfg.bucket : `${cfg.bucket}/`, cfg, log, false, !cfg.readonly);
  const bucket = new BucketVfs({ store, prefix, logger: log, ...options });
  const vfs = cfg.readonly ? new ReadOnlyVfs(bucket) : bucket;
  return { vfs, bucket, close: () => bucket.close().finally(() => store.close()) };
}

export function fuseOptions(cfg: FsConfig): Required<Pick<FuseServerOptions, 'entryTimeoutMs' | 'attrTimeoutMs' | 'negativeTimeoutMs'>> {
  return { entryTimeoutMs: cfg.entryTimeout * 1000, attrTimeoutMs: cfg.attrTimeout * 1000, negativeTimeoutMs: cfg.negativeTimeout * 1000 };
}

export async function runFs(argv: string[]): Promise<void> {
  const cfg = loadConfig('fs', argv);
  checkExport({ type: 'fs', config: cfg });
  const log = createLogger(cfg.logLevel);
  await runGateway([{ type: 'fs', config: cfg }], {
    log,
    shutdownTimeoutMs: cfg.shutdownTimeout * 1000,
    metrics: cfg.metrics,
    pollUs: cfg.pollUs,
    banner: () =>
      `vhost-s3 is serving ${cfg.bucket} as virtio-fs on ${cfg.socket}\n` +
      `QEMU: ${QEMU_MEMORY_ARGS.join(' ')} \\\n      ${qemuDeviceArgs({ type: 'fs', config: cfg }, 'f0').join(' ')}\n` +
      `guest: mount -t virtiofs ${cfg.tag} /mnt\n`,
  });
}

export async function runMount(argv: string[]): Promise<void> {
  const { config: cfg, args } = loadCommand('mount', argv, ['MOUNTPOINT']);
  const log = createLogger(cfg.logLevel);
  const service = await startMetrics(cfg.metrics, log);
  native.setLoopPoll(cfg.pollUs * 1000, workInFlight);
  const id = args[0]!;
  let opened: Awaited<ReturnType<typeof openBucketVfs>>;
  try {
    opened = await openBucketVfs(service ? { ...cfg, ...service.metrics.storage(id) } : cfg, log);
  } catch (err) {
    await service?.endpoint.close();
    throw err;
  }
  const { vfs, bucket } = opened;
  const close = (): Promise<void> => opened.close().finally(() => service?.endpoint.close());
  if (service) watchBucket(service.metrics, id, bucket);
  const held = holdSignals();
  let mount: DevFuseMount;
  try {
    const observer = service?.metrics.device(id, 'fuse');
    const server = new FuseServer(vfs, { ...fuseOptions(cfg), log, ...(observer ? { observer } : {}) });
    mount = DevFuseMount.mount(server, {
      mountpoint: args[0]!, readOnly: cfg.readonly, fsName: cfg.bucket, log, ...(cfg.passthrough ? { passthroughBytes: cfg.cacheSize } : {}),
    });
    if (service && cfg.passthrough) service.metrics.cache(id, 'passthrough', () => ({ bytes: server.passthroughState?.heldBytes ?? 0, dirtyBytes: 0 }));
  } catch (err) {
    held.release(false);
    await close();
    const code = (err as { code?: string }).code;
    if (code === 'ENOENT' || code === 'EPERM' || code === 'ENOTDIR' || code === 'EACCES') {
      throw new ConfigError(`cannot mount on ${args[0]}: ${(err as Error).message}`);
    }
    throw err;
  }
  // Once: a signal's unmount ends the session, which would otherwise start a second one.
  let unmounting: Promise<void> | null = null;
  const unmount = (): Promise<void> => (unmounting ??= mount.unmount().finally(close));
  // Stop on a signal (one caught while mounting included), or when someone else unmounts it.
  const stopped = stopOnSignals(log, unmount);
  held.release(true);
  await Promise.race([stopped, mount.ended.then(unmount)]);
}
