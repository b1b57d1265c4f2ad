// `npm start`: the gateway on the embedded default — a local directory store under the
// data directory, created on first start, serving two devices from it:
//   - an object-backed disk image (`images/disk0/`) over vhost-user-blk (disk0.sock);
//   - a directory of the store (`share/`) as a virtio-fs share over vhost-user-fs
//     (fs.sock, tag `share`), with the same file system as `vhost-s3 fs`.
import { mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { loadConfig, type ConfigOf } from '../config.js';
import { ConfigError } from '../util/errors.js';
import { createLogger } from '../util/log.js';
import { createImage } from '../blk/image-admin.js';
import { DEFAULT_CHUNK_SIZE, ImageKeys } from '../blk/image-format.js';
import { openStore, type StorageConfig } from '../backends/store-config.js';
import { S_IFDIR, writeMetadata } from '../backends/posix/metadata.js';
import type { Logger } from '../util/log.js';
import { QEMU_MEMORY_ARGS, qemuDeviceArgs, type ExportSpec } from './exports.js';
import { runGateway } from './gateway.js';

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
export function qemuAttachArgs(dataDir: string, cfg: ConfigOf<'serve'> = loadConfig('serve', [], {})): { memory: string[]; devices: string[][] } {
  return { memory: [...QEMU_MEMORY_ARGS], devices: serveExports(dataDir, cfg).map((s, i) => qemuDeviceArgs(s, i === 0 ? 'd0' : 'f0')) };
}

const STORAGE = { endpoint: '', region: '', pathStyle: 'auto', checksums: 'when-required', s3Concurrency: 8 } as const;

/**
 * serve's two exports in `dataDir`: the disk with serve's image settings, and the share
 * with `vhost-s3 fs`'s defaults (not the VHOST_S3_* variables of fs).
 */
function serveExports(dataDir: string, cfg: ConfigOf<'serve'>): [ExportSpec & { type: 'blk' }, ExportSpec & { type: 'fs' }] {
  const storeDir = join(dataDir, 'store');
  return [
    {
      type: 'blk',
      config: {
        ...loadConfig('blk', [], {}), ...STORAGE, logLevel: cfg.logLevel,
        cacheSize: cfg.cacheSize, dirtySize: cfg.dirtySize, writethrough: cfg.writethrough, writebackDelay: cfg.writebackDelay,
        uploads: cfg.uploads, readahead: cfg.readahead, force: cfg.force,
        socket: join(dataDir, DISK_SOCKET), image: `file:${storeDir}/${IMAGE_PREFIX.slice(0, -1)}`, queues: cfg.queues, serial: 'vhost-s3-disk0',
      },
    },
    {
      type: 'fs',
      config: {
        ...loadConfig('fs', [], {}), ...STORAGE, logLevel: cfg.logLevel,
        socket: join(dataDir, FS_SOCKET), bucket: `file:${storeDir}/${SHARE_PREFIX.slice(0, -1)}`, tag: SHARE_TAG,
      },
    },
  ];
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
  await prepareStore(join(dir, 'store'), cfg.diskSize, STORAGE, log);
  const [disk, share] = serveExports(dir, cfg);
  // The sockets are created last, with SIGINT/SIGTERM already caught (runGateway): a
  // signal sent as soon as a socket exists must not kill the process before it removed them.
  await runGateway([disk, share], {
    log,
    shutdownTimeoutMs: cfg.shutdownTimeout * 1000,
    metrics: cfg.metrics,
    pollUs: cfg.pollUs,
    banner: (g) => {
      const qemu = qemuAttachArgs(dir, cfg);
      const size = g.exports[0]!.type === 'blk' ? g.exports[0]!.exp.image.size : 0;
      return `vhost-s3 is serving the disk image ${disk.config.image} (${size} bytes) on ${disk.config.socket}\n` +
        `and the directory ${share.config.bucket} as virtio-fs (tag ${SHARE_TAG}) on ${share.config.socket}\n` +
        `Attach them to QEMU with:\n` +
        `  ${[qemu.memory, ...qemu.devices].map((a) => a.join(' ')).join(' \\\n  ')}\n` +
        `In the guest the disk is /dev/vda; mount the share with: mount -t virtiofs ${SHARE_TAG} /mnt\n` +
        `Press Ctrl-C to stop.\n`;
    },
  });
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
