// vhost-s3 image create|import|export|info|ls|rm: manage object-backed disk images in
// S3 (s3://bucket/path) or in a local directory store (file:/path).
import { statSync } from 'node:fs';
import { loadCommand, type CommandName, type ConfigOf } from '../config.js';
import { ConfigError, errnoOf } from '../util/errors.js';
import { createLogger, type Logger, type LogLevel } from '../util/log.js';
import { openStore, type StorageConfig } from '../backends/store-config.js';
import type { OpenedStore } from '../backends/locator.js';
import { ImageKeys } from '../blk/image-format.js';
import { createImage, exportImage, imageInfo, importImage, listImages, removeImage } from '../blk/image-admin.js';
import { ProgressBar } from './progress.js';

type ImageCommand = Extract<CommandName, `image ${string}`>;

/** Runs `body` on an opened store; store errors an operator can fix become one-line config errors. */
async function withStore<T>(locator: string, cfg: StorageConfig, log: Logger, create: boolean, body: (s: OpenedStore) => Promise<T>): Promise<T> {
  const opened = await openStore(locator, cfg, log, create);
  try {
    return await body(opened);
  } catch (err) {
    const e = errnoOf(err);
    // ENOENT, EEXIST, EBUSY, EINVAL, EACCES: the operator's to fix.
    if ([2, 17, 16, 22, 13].includes(e)) throw new ConfigError(`${locator}: ${(err as Error).message}`);
    throw err;
  } finally {
    await opened.store.close();
  }
}

function setup<C extends ImageCommand>(command: C, argv: string[], names: string[]): { cfg: ConfigOf<C>; args: string[]; log: Logger } {
  const { config, args } = loadCommand(command, argv, names);
  return { cfg: config, args, log: createLogger((config as { logLevel: LogLevel }).logLevel) };
}

const UNITS: readonly [string, number][] = [['G', 2 ** 30], ['M', 2 ** 20], ['K', 2 ** 10]];
function human(bytes: number): string {
  for (const [unit, n] of UNITS) if (bytes >= n) return `${(bytes / n).toFixed(bytes % n === 0 ? 0 : 1)}${unit}`;
  return `${bytes}B`;
}

export async function runImageCreate(argv: string[]): Promise<void> {
  const { cfg, args, log } = setup('image create', argv, ['IMAGE']);
  if (cfg.size <= 0) throw new ConfigError('give the disk size with --size (e.g. --size 20G)');
  const m = await withStore(args[0]!, cfg, log, true, ({ store, prefix }) => createImage(store, new ImageKeys(prefix), cfg.size, cfg.chunkSize))
    .catch((err: unknown) => { throw errnoOf(err) === 22 ? new ConfigError((err as Error).message) : err; });
  process.stdout.write(`created ${args[0]}: ${human(m.size)} (${m.size} bytes), chunk size ${human(m.chunkSize)}\n`);
}

export async function runImageImport(argv: string[]): Promise<void> {
  const { cfg, args, log } = setup('image import', argv, ['FILE', 'IMAGE']);
  const [file, locator] = args as [string, string];
  // The source first: a missing file is the operator's mistake, not the image's.
  let st;
  try {
    st = statSync(file);
  } catch (err) {
    throw new ConfigError(`cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  if (!st.isFile()) throw new ConfigError(`cannot read ${file}: not a regular file`);
  const bar = new ProgressBar('import', 'bytes');
  const r = await withStore(locator, cfg, log, true, ({ store, prefix }) =>
    importImage(file, store, new ImageKeys(prefix), cfg.chunkSize, cfg.uploads, bar.update));
  bar.done();
  process.stdout.write(`imported ${file} into ${locator}: ${human(r.manifest.size)}, ${r.chunksUploaded} of ${Math.ceil(r.manifest.size / r.manifest.chunkSize)} chunks stored (the rest are zeros)\n`);
}

export async function runImageExport(argv: string[]): Promise<void> {
  const { cfg, args, log } = setup('image export', argv, ['IMAGE', 'FILE']);
  const [locator, file] = args as [string, string];
  const bar = new ProgressBar('export', 'items');
  const r = await withStore(locator, cfg, log, false, ({ store, prefix }) => exportImage(store, new ImageKeys(prefix), file, cfg.uploads, bar.update));
  bar.done();
  process.stdout.write(`exported ${locator} to ${file}: ${human(r.manifest.size)}, ${r.chunksWritten} chunks written (sparse elsewhere)\n`);
}

export async function runImageInfo(argv: string[]): Promise<void> {
  const { cfg, args, log } = setup('image info', argv, ['IMAGE']);
  const info = await withStore(args[0]!, cfg, log, false, ({ store, prefix }) => imageInfo(store, new ImageKeys(prefix)));
  if (cfg.json) {
    process.stdout.write(JSON.stringify(info) + '\n');
    return;
  }
  const m = info.manifest;
  process.stdout.write([
    `image:          ${args[0]}`,
    `size:           ${human(m.size)} (${m.size} bytes)`,
    `chunk size:     ${human(m.chunkSize)}`,
    `chunks stored:  ${info.chunksStored} of ${Math.ceil(m.size / m.chunkSize)}`,
    `bytes stored:   ${info.bytesStored}`,
    `uuid:           ${m.uuid}`,
    `created:        ${m.createdAt}`,
    `lease:          ${info.lease ? `${info.lease.description}${info.lease.stale ? ' — stale' : ''}` : 'none (not open for writing)'}`,
    '',
  ].join('\n'));
}

export async function runImageLs(argv: string[]): Promise<void> {
  const { cfg, args, log } = setup('image ls', argv, ['PREFIX']);
  const images = await withStore(args[0]!, cfg, log, false, ({ store, prefix }) => listImages(store, prefix));
  for (const i of images) process.stdout.write(`${i.name}\t${human(i.manifest.size)}\t${i.manifest.createdAt}\n`);
}

export async function runImageRm(argv: string[]): Promise<void> {
  const { cfg, args, log } = setup('image rm', argv, ['IMAGE']);
  const n = await withStore(args[0]!, cfg, log, false, ({ store, prefix }) => removeImage(store, new ImageKeys(prefix), cfg.force));
  process.stdout.write(`removed ${args[0]} (${n} chunks)\n`);
}
