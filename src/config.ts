// Configuration: every option has a flag, a VHOST_S3_* environment variable, a default
// and a doc line, declared once per command in a convict schema. Flags win over the
// environment, which wins over defaults. Anything invalid is a ConfigError (one line,
// exit 2) — including flags that no schema declares, which convict would ignore.
import convict from 'convict';
import { ConfigError } from './util/errors.js';
import { LOG_LEVELS } from './util/log.js';

const SIZE_UNITS: Record<string, number> = { '': 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40 };

/** Parses "20G", "512M", "4k", "1048576" (binary units, optional trailing B/iB). */
export function parseSize(text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(?:i?[bB])?\s*$/.exec(text);
  if (!m) throw new ConfigError(`invalid size "${text}" (expected e.g. 512M, 20G or a byte count)`);
  const bytes = Number(m[1]) * SIZE_UNITS[m[2]!.toUpperCase()]!;
  if (!Number.isSafeInteger(Math.round(bytes))) throw new ConfigError(`size "${text}" is too large`);
  return Math.round(bytes);
}

convict.addFormat({
  name: 'size',
  validate(value: unknown) {
    if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) throw new Error('must be a size such as 512M or 20G');
  },
  coerce: (value: unknown) => (typeof value === 'number' ? value : parseSize(String(value))),
});

convict.addFormat({
  name: 'positive-int',
  validate(value: unknown) {
    if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 1) throw new Error('must be a positive integer');
  },
  coerce: (value: unknown) => Number(value),
});

/** virtio-blk's num_queues is 16 bits, and QEMU accepts at most VIRTIO_QUEUE_MAX (1024) queues. */
export const MAX_QUEUES = 1024;

convict.addFormat({
  name: 'queue-count',
  validate(value: unknown) {
    if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 1 || value > MAX_QUEUES) throw new Error(`must be an integer from 1 to ${MAX_QUEUES}`);
  },
  coerce: (value: unknown) => Number(value),
});

/** virtio-fs: queue 0 is hiprio, so at most MAX_QUEUES - 1 request queues. */
export const MAX_FS_REQUEST_QUEUES = MAX_QUEUES - 1;

convict.addFormat({
  name: 'fs-queue-count',
  validate(value: unknown) {
    if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 1 || value > MAX_FS_REQUEST_QUEUES) throw new Error(`must be an integer from 1 to ${MAX_FS_REQUEST_QUEUES}`);
  },
  coerce: (value: unknown) => Number(value),
});

/** A flag's or variable's text as a number; an empty one is NaN (Number('') would be 0), which validate() refuses. */
function toNumber(value: unknown): number {
  return typeof value === 'number' ? value : String(value).trim() === '' ? NaN : Number(value);
}

/** Durations, counts, percentages: finite and not negative (a NaN TTL would cache forever). */
convict.addFormat({
  name: 'non-negative',
  validate(value: unknown) {
    if (typeof value !== 'number' || !Number.isFinite(value) || value < 0) throw new Error('must be a number, 0 or more');
  },
  coerce: toNumber,
});

/** A uid or gid (32 bits, (uid_t)-1 excluded), or -1 for "this process's". */
convict.addFormat({
  name: 'id-or-default',
  validate(value: unknown) {
    if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < -1 || value > 0xfffffffe) throw new Error('must be a numeric id from 0 to 4294967294');
  },
  coerce: toNumber,
});

/** A whole number of microseconds up to one second. */
convict.addFormat({
  name: 'microseconds',
  validate(value: unknown) {
    if (typeof value !== 'number' || !Number.isInteger(value) || value < 0 || value > 1_000_000) throw new Error('must be a whole number of microseconds from 0 to 1000000');
  },
  coerce: toNumber,
});

export interface OptionSpec {
  readonly doc: string;
  readonly format: unknown;
  readonly default: unknown;
  readonly env: string;
  readonly arg: string;
  readonly nullable?: boolean;
}

export type Schema = Record<string, OptionSpec>;

const common = {
  logLevel: { doc: 'log level (debug, info, warn, error, silent); logs are JSON lines on stderr', format: LOG_LEVELS, default: 'info', env: 'VHOST_S3_LOG_LEVEL', arg: 'log-level' },
  debug: { doc: 'print stack traces of errors', format: Boolean, default: false, env: 'VHOST_S3_DEBUG', arg: 'debug' },
} satisfies Schema;

/** Where objects live: S3 connection settings (credentials come from the AWS_* variables and the SDK's chain). */
const storage = {
  endpoint: { doc: 'S3 endpoint URL for s3:// locators (e.g. http://127.0.0.1:9000); empty: AWS', format: String, default: '', env: 'VHOST_S3_ENDPOINT', arg: 'endpoint' },
  region: { doc: 'S3 region (AWS_REGION is honoured when this is empty)', format: String, default: '', env: 'VHOST_S3_REGION', arg: 'region' },
  pathStyle: { doc: 'path-style S3 URLs: auto (on when --endpoint is given), on, off', format: ['auto', 'on', 'off'] as const, default: 'auto', env: 'VHOST_S3_PATH_STYLE', arg: 'path-style' },
  checksums: { doc: 'S3 request checksums: when-required (safe for S3-compatible servers) or when-supported (AWS SDK default)', format: ['when-required', 'when-supported'] as const, default: 'when-required', env: 'VHOST_S3_CHECKSUMS', arg: 'checksums' },
  s3Concurrency: { doc: 'S3 requests in flight at most', format: 'positive-int', default: 32, env: 'VHOST_S3_CONCURRENCY', arg: 's3-concurrency' },
  s3MaxAttempts: { doc: 'attempts per S3 request, the first included, for throttling, 5xx, timeouts and resets (backoff with jitter, 50 ms doubling up to 2 s; 500 ms after SlowDown)', format: 'positive-int', default: 10, env: 'VHOST_S3_MAX_ATTEMPTS', arg: 's3-max-attempts' },
} satisfies Schema;

/** Object-backed images: cache and write-back settings. */
const imageCache = {
  cacheSize: { doc: 'object images: bytes of clean chunks cached in memory', format: 'size', default: 256 * 2 ** 20, env: 'VHOST_S3_CACHE_SIZE', arg: 'cache-size' },
  dirtySize: { doc: 'object images: bytes of written, not yet stored chunks before writes wait', format: 'size', default: 128 * 2 ** 20, env: 'VHOST_S3_DIRTY_SIZE', arg: 'dirty-size' },
  writethrough: { doc: 'object images: store every write before completing it (default: write-back, stored by FLUSH)', format: Boolean, default: false, env: 'VHOST_S3_WRITETHROUGH', arg: 'writethrough' },
  writebackDelay: { doc: 'object images: milliseconds after its last write a dirty chunk is stored without a FLUSH', format: 'non-negative', default: 2000, env: 'VHOST_S3_WRITEBACK_DELAY', arg: 'writeback-delay' },
  uploads: { doc: 'object images: chunk uploads in flight at most', format: 'positive-int', default: 8, env: 'VHOST_S3_UPLOADS', arg: 'uploads' },
  readahead: { doc: 'object images: chunks fetched ahead of a sequential reader', format: 'non-negative', default: 4, env: 'VHOST_S3_READAHEAD', arg: 'readahead' },
  force: { doc: 'object images: take over the lease of a writer whose heartbeat is stale (it crashed)', format: Boolean, default: false, env: 'VHOST_S3_FORCE', arg: 'force' },
} satisfies Schema;

const blkDevice = {
  socket: { doc: 'vhost-user socket path to listen on', format: String, default: '', env: 'VHOST_S3_SOCKET', arg: 'socket' },
  image: { doc: 'disk image: s3://bucket/path (object image), file:/dir (object image in a local store) or file:/path/disk.raw (raw file)', format: String, default: '', env: 'VHOST_S3_IMAGE', arg: 'image' },
  readonly: { doc: 'present the disk read-only (VIRTIO_BLK_F_RO)', format: Boolean, default: false, env: 'VHOST_S3_READONLY', arg: 'readonly' },
  queues: { doc: 'number of request queues offered (virtio-blk MQ)', format: 'queue-count', default: 1, env: 'VHOST_S3_QUEUES', arg: 'queues' },
  serial: { doc: 'disk serial returned by GET_ID (at most 20 bytes)', format: String, default: '', env: 'VHOST_S3_SERIAL', arg: 'serial' },
  ioEngine: { doc: 'file I/O engine: uring (io_uring, falls back to sync when unavailable) or sync', format: ['uring', 'sync'] as const, default: 'uring', env: 'VHOST_S3_IO_ENGINE', arg: 'io-engine' },
} satisfies Schema;

/** The S3 file system (virtio-fs and /dev/fuse): mapping defaults, TTLs and caches. */
const fileSystem = {
  bucket: { doc: 'what to serve: s3://bucket[/prefix] or file:/path (a local store)', format: String, default: '', env: 'VHOST_S3_BUCKET', arg: 'bucket' },
  readonly: { doc: 'refuse every change (EROFS)', format: Boolean, default: false, env: 'VHOST_S3_READONLY', arg: 'readonly' },
  uid: { doc: 'owner of objects without uid metadata (default: this process)', format: 'id-or-default', default: -1, env: 'VHOST_S3_UID', arg: 'uid' },
  gid: { doc: 'group of objects without gid metadata (default: this process)', format: 'id-or-default', default: -1, env: 'VHOST_S3_GID', arg: 'gid' },
  fileMode: { doc: 'permissions of files without mode metadata (octal)', format: String, default: '0644', env: 'VHOST_S3_FILE_MODE', arg: 'file-mode' },
  dirMode: { doc: 'permissions of directories without mode metadata (octal)', format: String, default: '0755', env: 'VHOST_S3_DIR_MODE', arg: 'dir-mode' },
  attrTimeout: { doc: 'seconds the guest kernel and the gateway may cache attributes', format: 'non-negative', default: 1, env: 'VHOST_S3_ATTR_TIMEOUT', arg: 'attr-timeout' },
  entryTimeout: { doc: 'seconds the guest kernel may cache names', format: 'non-negative', default: 1, env: 'VHOST_S3_ENTRY_TIMEOUT', arg: 'entry-timeout' },
  negativeTimeout: { doc: 'seconds a missing name is cached', format: 'non-negative', default: 1, env: 'VHOST_S3_NEGATIVE_TIMEOUT', arg: 'negative-timeout' },
  listTimeout: { doc: 'seconds a directory listing is cached', format: 'non-negative', default: 2, env: 'VHOST_S3_LIST_TIMEOUT', arg: 'list-timeout' },
  cacheSize: { doc: 'bytes of file data cached in memory (page cache)', format: 'size', default: 256 * 2 ** 20, env: 'VHOST_S3_CACHE_SIZE', arg: 'cache-size' },
  writeBuffer: { doc: 'bytes of write buffers kept in memory for all open files (beyond: temporary files)', format: 'size', default: 128 * 2 ** 20, env: 'VHOST_S3_WRITE_BUFFER', arg: 'write-buffer' },
  tempDir: { doc: 'directory for write buffers that do not fit in memory (default: the system temp dir)', format: String, default: '', env: 'VHOST_S3_TEMP_DIR', arg: 'temp-dir' },
  spillThreshold: { doc: 'bytes of one file\'s write buffer kept in memory before it moves to a temporary file', format: 'size', default: 8 * 2 ** 20, env: 'VHOST_S3_SPILL_THRESHOLD', arg: 'spill-threshold' },
  cacheBlockSize: { doc: 'block of the file data cache and the ranged GET of a read that misses; read-ahead GETs runs of blocks up to 8M (a power of two from 4K to 64M)', format: 'size', default: 2 ** 20, env: 'VHOST_S3_CACHE_BLOCK_SIZE', arg: 'cache-block-size' },
  readAhead: { doc: 'largest read-ahead window of a sequential reader, in bytes (0: no read-ahead)', format: 'size', default: 64 * 2 ** 20, env: 'VHOST_S3_READ_AHEAD', arg: 'read-ahead' },
  fetchConcurrency: { doc: 'ranged GETs in flight (reads, read-ahead, fetches before an upload)', format: 'positive-int', default: 16, env: 'VHOST_S3_FETCH_CONCURRENCY', arg: 'fetch-concurrency' },
  multipartThreshold: { doc: 'files larger than this are stored by multipart upload (at most 5G)', format: 'size', default: 32 * 2 ** 20, env: 'VHOST_S3_MULTIPART_THRESHOLD', arg: 'multipart-threshold' },
  partSize: { doc: 'part size of multipart uploads (raised to the store\'s minimum, 5M on S3, and where a file needs more than 10000 parts; at most 5G)', format: 'size', default: 16 * 2 ** 20, env: 'VHOST_S3_PART_SIZE', arg: 'part-size' },
  uploadConcurrency: { doc: 'parts of one multipart upload in flight', format: 'positive-int', default: 4, env: 'VHOST_S3_UPLOAD_CONCURRENCY', arg: 'upload-concurrency' },
  uploadMemory: { doc: 'bytes that uploads in flight may hold in part buffers, all files together (one larger upload runs alone)', format: 'size', default: 256 * 2 ** 20, env: 'VHOST_S3_UPLOAD_MEMORY', arg: 'upload-memory' },
  metaConcurrency: { doc: 'HEADs in flight while a directory is listed, copies while one is renamed', format: 'positive-int', default: 16, env: 'VHOST_S3_META_CONCURRENCY', arg: 'meta-concurrency' },
  attrCacheEntries: { doc: 'names whose attributes (or absence) the gateway caches', format: 'positive-int', default: 100_000, env: 'VHOST_S3_ATTR_CACHE_ENTRIES', arg: 'attr-cache-entries' },
  listCacheEntries: { doc: 'directories whose listing the gateway caches', format: 'positive-int', default: 1000, env: 'VHOST_S3_LIST_CACHE_ENTRIES', arg: 'list-cache-entries' },
} satisfies Schema;

/** Gateways that write to a store (blk, fs, mount). */
const localStore = {
  staleTempAge: { doc: 'file: stores opened for writing: temporary files left by killed writers are removed in the background once unmodified this many seconds (a live writer modifies its temporary file continuously and renames it within seconds)', format: 'non-negative', default: 3600, env: 'VHOST_S3_STALE_TEMP_AGE', arg: 'stale-temp-age' },
} satisfies Schema;

/** Commands that serve devices until a signal (blk, fs, serve, run). */
const lifecycle = {
  shutdownTimeout: { doc: 'seconds SIGINT/SIGTERM waits for in-flight requests, flushes and closes before exiting 1 anyway', format: 'non-negative', default: 30, env: 'VHOST_S3_SHUTDOWN_TIMEOUT', arg: 'shutdown-timeout' },
} satisfies Schema;

/** Commands that serve (blk, fs, mount, serve, run): the Prometheus endpoint. */
const observability = {
  metrics: { doc: 'serve Prometheus metrics at http://HOST:PORT/metrics (e.g. 127.0.0.1:9464; docs/metrics.md); empty: off', format: String, default: '', env: 'VHOST_S3_METRICS', arg: 'metrics' },
} satisfies Schema;

/** Commands whose event loop serves requests (blk, fs, mount, serve, run). */
const eventLoop = {
  pollUs: { doc: 'microseconds the event loop may busy-poll for the next request before it sleeps; adaptive, as QEMU\'s poll-max-ns: grows while requests come back quickly, halves after each longer wait (0: never poll)', format: 'microseconds', default: 100, env: 'VHOST_S3_POLL_US', arg: 'poll-us' },
} satisfies Schema;

export const schemas = {
  blk: { ...common, ...blkDevice, ...imageCache, ...storage, ...localStore, ...lifecycle, ...observability, ...eventLoop },
  serve: {
    ...common,
    dataDir: { doc: 'directory holding the embedded default disk and sockets', format: String, default: './data', env: 'VHOST_S3_DATA_DIR', arg: 'data-dir' },
    diskSize: { doc: 'size of the default disk created on first start', format: 'size', default: 1 << 30, env: 'VHOST_S3_DISK_SIZE', arg: 'disk-size' },
    queues: blkDevice.queues,
    ...imageCache,
    ...lifecycle,
    ...observability,
    ...eventLoop,
  },
  run: { ...common, ...lifecycle, ...observability, ...eventLoop,
    config: { doc: 'JSON file listing the exports (blk and fs devices) to serve; re-read on SIGHUP', format: String, default: '', env: 'VHOST_S3_CONFIG', arg: 'config' },
  },
  fs: { ...common, ...fileSystem, ...storage, ...localStore, ...lifecycle, ...observability, ...eventLoop,
    socket: { doc: 'vhost-user socket path to listen on', format: String, default: '', env: 'VHOST_S3_SOCKET', arg: 'socket' },
    tag: { doc: 'mount tag the guest uses (QEMU sets it on the device: tag=...; printed in the QEMU arguments)', format: String, default: 'vhost-s3', env: 'VHOST_S3_TAG', arg: 'tag' },
    queues: { doc: 'request queues (QEMU num-request-queues must not exceed it)', format: 'fs-queue-count', default: 1, env: 'VHOST_S3_QUEUES', arg: 'queues' },
  },
  mount: { ...common, ...fileSystem, ...storage, ...localStore, ...observability, ...eventLoop,
    passthrough: { doc: 'FUSE passthrough (Linux 6.9+): a file opened read-only while all of it is in the page cache is read by the kernel from a memory copy (at most --cache-size bytes of copies in all), without a round trip per read; while such a handle is open, opening the file for writing or truncating it fails with ETXTBSY', format: Boolean, default: false, env: 'VHOST_S3_PASSTHROUGH', arg: 'passthrough' },
  },
  'image create': { ...common, ...storage,
    size: { doc: 'disk size (e.g. 20G)', format: 'size', default: 0, env: 'VHOST_S3_IMAGE_SIZE', arg: 'size' },
    chunkSize: { doc: 'chunk size: a power of two from 64K to 64M', format: 'size', default: 4 * 2 ** 20, env: 'VHOST_S3_CHUNK_SIZE', arg: 'chunk-size' },
  },
  'image import': { ...common, ...storage,
    chunkSize: { doc: 'chunk size: a power of two from 64K to 64M', format: 'size', default: 4 * 2 ** 20, env: 'VHOST_S3_CHUNK_SIZE', arg: 'chunk-size' },
    uploads: imageCache.uploads,
  },
  'image export': { ...common, ...storage, uploads: { ...imageCache.uploads, doc: 'chunk downloads in flight at most' } },
  'image info': { ...common, ...storage, json: { doc: 'print one JSON object', format: Boolean, default: false, env: 'VHOST_S3_JSON', arg: 'json' } },
  'image ls': { ...common, ...storage },
  'image rm': { ...common, ...storage, force: { doc: 'remove even while a writer holds a fresh lease', format: Boolean, default: false, env: 'VHOST_S3_FORCE', arg: 'force' } },
  demo: { ...common,
    dataDir: { doc: 'directory for the demo store and disk, kept afterwards (default: a temporary directory, removed)', format: String, default: '', env: 'VHOST_S3_DEMO_DATA_DIR', arg: 'data-dir' },
    diskSize: { doc: 'size of the demo disk, created on first use', format: 'size', default: 64 * 2 ** 20, env: 'VHOST_S3_DEMO_DISK_SIZE', arg: 'disk-size' },
    timeout: { doc: 'seconds the guest may take before it is stopped', format: 'positive-int', default: 600, env: 'VHOST_S3_DEMO_TIMEOUT', arg: 'timeout' },
  },
  doctor: { ...common, ...storage,
    bucket: { doc: 'store to check: s3://bucket[/prefix] or file:/path (a probe key is written, read and deleted)', format: String, default: '', env: 'VHOST_S3_BUCKET', arg: 'bucket' },
    socketDir: { doc: 'directory the vhost-user sockets will be created in (checked: exists, writable, a socket can be bound)', format: String, default: '', env: 'VHOST_S3_SOCKET_DIR', arg: 'socket-dir' },
  },
  'bench fs': {
    ...common,
    socket: { doc: 'vhost-user-fs socket of the backend to drive (vhost-s3 fs, virtiofsd)', format: String, default: '', env: 'VHOST_S3_BENCH_SOCKET', arg: 'socket' },
    workload: { doc: 'create, stat, readdir, seqwrite, seqread or randread (seqread/randread read the file seqwrite wrote)', format: ['create', 'stat', 'readdir', 'seqwrite', 'seqread', 'randread'] as const, default: 'create', env: 'VHOST_S3_BENCH_WORKLOAD', arg: 'workload' },
    files: { doc: 'files for create, stat and readdir', format: 'positive-int', default: 1000, env: 'VHOST_S3_BENCH_FILES', arg: 'files' },
    fileSize: { doc: 'size of each small file', format: 'size', default: 4096, env: 'VHOST_S3_BENCH_FILE_SIZE', arg: 'file-size' },
    bigFileSize: { doc: 'size of the large file of seqwrite/seqread/randread', format: 'size', default: 256 * 2 ** 20, env: 'VHOST_S3_BENCH_BIG_FILE_SIZE', arg: 'big-file-size' },
    bs: { doc: 'request size of the large-file workloads', format: 'size', default: 2 ** 20, env: 'VHOST_S3_BENCH_BS', arg: 'bs' },
    iodepth: { doc: 'operations in flight', format: 'positive-int', default: 8, env: 'VHOST_S3_BENCH_IODEPTH', arg: 'iodepth' },
    runtime: { doc: 'seconds for stat, readdir, seqread and randread', format: 'non-negative', default: 10, env: 'VHOST_S3_BENCH_RUNTIME', arg: 'runtime' },
    dir: { doc: 'directory under the share root the workloads use', format: String, default: 'vhost-s3-bench', env: 'VHOST_S3_BENCH_DIR', arg: 'dir' },
    queues: { doc: 'request queues to use', format: 'positive-int', default: 1, env: 'VHOST_S3_BENCH_QUEUES', arg: 'queues' },
    json: { doc: 'print one JSON object with the results', format: Boolean, default: false, env: 'VHOST_S3_BENCH_JSON', arg: 'json' },
  },
  'bench blk': {
    ...common,
    socket: { doc: 'vhost-user-blk socket of the backend to drive', format: String, default: '', env: 'VHOST_S3_BENCH_SOCKET', arg: 'socket' },
    rw: { doc: 'pattern: read, write, randread, randwrite, randrw', format: ['read', 'write', 'randread', 'randwrite', 'randrw'] as const, default: 'randread', env: 'VHOST_S3_BENCH_RW', arg: 'rw' },
    bs: { doc: 'block size of each request', format: 'size', default: 4096, env: 'VHOST_S3_BENCH_BS', arg: 'bs' },
    iodepth: { doc: 'requests in flight per queue', format: 'positive-int', default: 1, env: 'VHOST_S3_BENCH_IODEPTH', arg: 'iodepth' },
    queues: { doc: 'request queues to use', format: 'positive-int', default: 1, env: 'VHOST_S3_BENCH_QUEUES', arg: 'queues' },
    runtime: { doc: 'seconds to run (0: until --size bytes are done)', format: 'non-negative', default: 10, env: 'VHOST_S3_BENCH_RUNTIME', arg: 'runtime' },
    size: { doc: 'total bytes to transfer (0: until --runtime ends)', format: 'size', default: 0, env: 'VHOST_S3_BENCH_SIZE', arg: 'size' },
    rwmixread: { doc: 'percentage of reads for randrw', format: 'non-negative', default: 50, env: 'VHOST_S3_BENCH_RWMIXREAD', arg: 'rwmixread' },
    verify: { doc: 'write a checkable pattern and verify every read against it', format: Boolean, default: false, env: 'VHOST_S3_BENCH_VERIFY', arg: 'verify' },
    json: { doc: 'print one JSON object with the results', format: Boolean, default: false, env: 'VHOST_S3_BENCH_JSON', arg: 'json' },
  },
} satisfies Record<string, Schema>;

export type CommandName = keyof typeof schemas;

type ValueOf<S extends OptionSpec> = S['format'] extends BooleanConstructor
  ? boolean
  : S['format'] extends StringConstructor
    ? string
    : S['format'] extends readonly (infer U)[]
      ? U
      : number;

export type ConfigOf<C extends CommandName> = { -readonly [K in keyof (typeof schemas)[C]]: (typeof schemas)[C][K] extends OptionSpec ? ValueOf<(typeof schemas)[C][K]> : never };

/** Loads a command's configuration from argv flags and the environment (no positional arguments). */
export function loadConfig<C extends CommandName>(command: C, argv: string[], env: NodeJS.ProcessEnv = process.env): ConfigOf<C> {
  return loadCommand(command, argv, [], env).config;
}

/** Like loadConfig, for commands that take positional arguments (exactly `names`, in order). */
export function loadCommand<C extends CommandName>(
  command: C, argv: string[], names: readonly string[], env: NodeJS.ProcessEnv = process.env,
): { config: ConfigOf<C>; args: string[] } {
  const schema: Schema = schemas[command];
  const { flags, positionals } = parseFlags(schema, argv);
  if (positionals.length > names.length) throw new ConfigError(`unexpected argument "${positionals[names.length]}"`);
  if (positionals.length < names.length) throw new ConfigError(`missing ${names.slice(positionals.length).join(' and ')}`);
  return { config: loadSchema<C>(schema, flags, env), args: positionals };
}

function loadSchema<C extends CommandName>(schema: Schema, flags: Map<string, string | boolean>, env: NodeJS.ProcessEnv): ConfigOf<C> {
  try {
    // Flags are parsed here rather than by convict, which would turn "--serial 0123" into a number.
    const conf = convict(schema as convict.Schema<unknown>, { args: [], env });
    for (const [key, value] of flags) conf.set(key, value);
    conf.validate({ allowed: 'strict' });
    return conf.getProperties() as ConfigOf<C>;
  } catch (err) {
    if (err instanceof ConfigError) throw err;
    throw new ConfigError(firstLine((err as Error).message, schema));
  }
}

/** convict says "queues: must be ..."; name the option as the user gives it instead. */
function firstLine(s: string, schema: Schema): string {
  const line = s.split('\n')[0]!;
  const m = /^([a-zA-Z]+): (.*)$/.exec(line);
  if (m === null) return line;
  const spec = schema[m[1]!];
  return spec === undefined ? m[2]! : `--${spec.arg} (${spec.env}): ${m[2]}`;
}

/** `--name value`, `--name=value`, `--flag`, `--no-flag` → schema key and raw value; the rest are positionals. */
function parseFlags(schema: Schema, argv: string[]): { flags: Map<string, string | boolean>; positionals: string[] } {
  const byArg = new Map(Object.entries(schema).map(([key, o]) => [o.arg, { key, spec: o }]));
  const out = new Map<string, string | boolean>();
  const positionals: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const tok = argv[i]!;
    if (!tok.startsWith('--')) {
      positionals.push(tok);
      continue;
    }
    const eq = tok.indexOf('=');
    let name = eq < 0 ? tok.slice(2) : tok.slice(2, eq);
    const given = name;
    const negated = name.startsWith('no-') && !byArg.has(name);
    if (negated) name = name.slice(3);
    const entry = byArg.get(name);
    if (!entry) throw new ConfigError(`unknown option --${given} (see --help)`);
    if (entry.spec.format === Boolean) {
      const raw = eq < 0 ? 'true' : tok.slice(eq + 1);
      if (raw !== 'true' && raw !== 'false') throw new ConfigError(`option --${name} takes true or false`);
      out.set(entry.key, negated ? raw === 'false' : raw === 'true');
      continue;
    }
    if (negated) throw new ConfigError(`unknown option --no-${name} (see --help)`);
    if (eq >= 0) out.set(entry.key, tok.slice(eq + 1));
    else if (i + 1 < argv.length) out.set(entry.key, argv[++i]!);
    else throw new ConfigError(`option --${name} needs a value`);
  }
  return { flags: out, positionals };
}

/** Human-readable schema: one block per option (used by --help and `config --help`). */
export function describeSchema(command: CommandName): string {
  const lines: string[] = [];
  for (const spec of Object.values(schemas[command]) as OptionSpec[]) {
    const value = spec.format === Boolean ? '' : ' <value>';
    const def = spec.default === '' ? '' : `  [default: ${String(spec.default)}]`;
    lines.push(`  --${spec.arg}${value}`.padEnd(30) + `${spec.doc}${def}`);
    lines.push(`${' '.repeat(30)}env ${spec.env}`);
  }
  return lines.join('\n');
}
