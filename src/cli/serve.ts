// `npm start`: the gateway on the embedded default — a local directory store under the
// data directory, created on first start, serving two devices from it:
//   - an object-backed disk image (`images/disk0/`) over vhost-user-blk (disk0.sock);
//   - a directory of the store (`share/`) as a virtio-fs share over vhost-user-fs
//     (fs.sock, tag `share`), with the same file system as `vhost-s3 fs`.
import { mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { loadConfig } from '../config.js';
import { ConfigError } from '../util/errors.js';
import { createLogger } from '../util/log.js';
import { BlkExport } from '../blk/export.js';
import { createImage } from '../blk/image-admin.js';
import { DEFAULT_CHUNK_SIZE, ImageKeys } from '../blk/image-format.js';
import { openStore, type StorageConfig } from '../backends/store-config.js';
import { S_IFDIR, writeMetadata } from '../backends/posix/metadata.js';
import { FsExport } from '../fuse/export.js';
import type { Logger } from '../util/log.js';
import { openConfiguredImage } from './blk.js';
import { fuseOptions, openBucketVfs } from './fs.js';
import { holdSignals, stopOnSignals } from './lifecycle.js';

/** Key prefixes in the embedded store. */
const IMAGE_PREFIX = 'images/disk0/';
const SHARE_PREFIX = 'share/';
/** The virtio-fs mount tag of the share. */
export const SHARE_TAG = 'share';
/** Socket names in the data directory. */
const DISK_SOCKET = 'disk0.sock';
const FS_SOCKET = 'fs.sock';

/**
 * The QEMU arguments that attach serve's two devices in `dataDir` (printed by serve, used
 * by the demo): the shared guest memory vhost-user needs, and per device its chardev and
 * -device pair.
 */
export function qemuAttachArgs(dataDir: string): { memory: string[]; devices: string[][] } {
  return {
    memory: ['-object', 'memory-backend-memfd,id=mem,size=1G,share=on', '-numa', 'node,memdev=mem', '-m', '1G'],
    devices: [
      ['-chardev', `socket,id=d0,path=${join(dataDir, DISK_SOCKET)}`, '-device', 'vhost-user-blk-pci,chardev=d0'],
      ['-chardev', `socket,id=f0,path=${join(dataDir, FS_SOCKET)}`, '-device', `vhost-user-fs-pci,chardev=f0,tag=${SHARE_TAG}`],
    ],
  };
}

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
  await prepareStore(storeDir, cfg.diskSize, storage, log);

  // Everything that takes time (opening the image and the share) comes first; the
  // sockets are created last, with SIGINT/SIGTERM already caught (a signal sent as soon
  // as a socket exists must not kill the process before it removed its sockets).
  const locator = `file:${storeDir}/${IMAGE_PREFIX.slice(0, -1)}`;
  const socket = join(dir, DISK_SOCKET);
  const shareLocator = `file:${storeDir}/${SHARE_PREFIX.slice(0, -1)}`;
  const fsSocket = join(dir, FS_SOCKET);
  // The share is `vhost-s3 fs` with its defaults (not the VHOST_S3_* variables of fs).
  const fsCfg = { ...loadConfig('mount', [], {}), ...storage, bucket: shareLocator, logLevel: cfg.logLevel };
  const image = await openConfiguredImage(locator, false, { ...cfg, ...storage }, log);
  let share: Awaited<ReturnType<typeof openBucketVfs>>;
  try {
    share = await openBucketVfs(fsCfg, log);
  } catch (err) {
    await image.close();
    throw err;
  }
  const held = holdSignals();
  let exp: BlkExport;
  let fsExp: FsExport;
  try {
    try {
      exp = await BlkExport.start({ socket, image, locator, queues: cfg.queues, serial: 'vhost-s3-disk0', log });
    } catch (err) {
      await share.close();
      throw err;
    }
    try {
      fsExp = await FsExport.start({ socket: fsSocket, vfs: share.vfs, fuse: fuseOptions(fsCfg), locator: shareLocator, log });
    } catch (err) {
      await Promise.allSettled([exp.close(), share.close()]);
      throw err;
    }
  } catch (err) {
    held.release(false);
    throw err;
  }

  const qemu = qemuAttachArgs(dir);
  process.stdout.write(
    `vhost-s3 is serving the disk image ${locator} (${exp.image.size} bytes) on ${socket}\n` +
    `and the directory ${shareLocator} as virtio-fs (tag ${SHARE_TAG}) on ${fsSocket}\n` +
    `Attach them to QEMU with:\n` +
    `  ${[qemu.memory, ...qemu.devices].map((a) => a.join(' ')).join(' \\\n  ')}\n` +
    `In the guest the disk is /dev/vda; mount the share with: mount -t virtiofs ${SHARE_TAG} /mnt\n` +
    `Press Ctrl-C to stop.\n`,
  );
  const stopped = stopOnSignals(log, async () => {
    // Both stop at once; the first failure is reported after both are done.
    const results = await Promise.allSettled([
      exp.close(),
      fsExp.close().finally(() => share.close()),
    ]);
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
  });
  held.release(true);
  await stopped;
}

/**
 * Creates the store on first start: the disk image and the share's directory marker.
 * Later starts reuse both (the image whatever its size).
 */
async function prepareStore(storeDir: string, size: number, storage: StorageConfig, log: Logger): Promise<void> {
  const fail = (err: unknown): ConfigError => new ConfigError(`cannot create the default store in ${storeDir}: ${(err as Error).message}`);
  const { store } = await openStore(`file:${storeDir}/`, storage, log, true).catch((err: unknown) => {
    throw fail(err);
  });
  try {
    const keys = new ImageKeys(IMAGE_PREFIX);
    if (!(await store.head(keys.manifest))) await createImage(store, keys, size, DEFAULT_CHUNK_SIZE);
    if (!(await store.head(SHARE_PREFIX))) {
      const now = BigInt(Date.now()) * 1_000_000n;
      const attrs = { mode: S_IFDIR | 0o755, uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0, mtime: now, ctime: now, atime: now };
      await store.put(SHARE_PREFIX, new Uint8Array(0), { metadata: writeMetadata(attrs, new Map()), contentType: 'application/x-directory' });
    }
  } catch (err) {
    throw fail(err);
  } finally {
    await store.close();
  }
}
