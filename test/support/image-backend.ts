// A store holding blk images for the image tests (blk/object-image, blk/lease, cli/image):
// s3rver with bucket `bkt`, or a local `file:` store in a temporary directory; the images
// live under images/ in both.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ImageKeys } from '../../src/blk/image-format.js';
import { FileStore } from '../../src/backends/file-store.js';
import type { ObjectStore } from '../../src/backends/object-store.js';
import { S3Store } from '../../src/backends/s3-store.js';
import { ROOT_MARKER } from '../../src/backends/store-config.js';
import { startS3rver, type S3rver } from './s3rver.js';
import { TmpDir } from './tmp.js';

/**
 * Makes `root` (created if missing) the root of a local object store: with the marker,
 * `file:<root>/images/x` names key images/x of the store at <root>, not a store of its own.
 */
export function makeStoreRoot(root: string): string {
  mkdirSync(root, { recursive: true });
  writeFileSync(join(root, ROOT_MARKER), 'vhost-s3 local object store\n');
  return root;
}

/** A store holding images, the way the tests reach it (API for checks, locators for the CLI). */
export interface ImageBackend {
  readonly kind: 's3' | 'file';
  /** For checks and for creating images (never used while a gateway writes the same keys). */
  readonly store: ObjectStore;
  /** Environment for child processes (s3rver's endpoint and credentials; empty for file:). */
  readonly env: Record<string, string>;
  /** s3rver, for the s3 kind. */
  readonly s3?: S3rver;
  /** Locator of the folder holding the images (no trailing slash). */
  readonly folder: string;
  /** Locator of image `name`: `${folder}/${name}`. */
  locator(name: string): string;
  keys(name: string): ImageKeys;
  stop(): Promise<void>;
}

/** s3rver (the store as the gateway detects it there: no conditional writes) or a file: store under a TmpDir named tmpPrefix…. */
export async function startImageBackend(kind: 's3' | 'file', tmpPrefix: string): Promise<ImageBackend> {
  const keys = (name: string): ImageKeys => new ImageKeys(`images/${name}/`);
  if (kind === 's3') {
    const s3 = await startS3rver({ buckets: ['bkt'] });
    const store = new S3Store({ bucket: 'bkt', endpoint: s3.endpoint, credentials: s3.credentials, conditionalWrites: false });
    const folder = 's3://bkt/images';
    return {
      kind, store, s3, env: { ...s3.env }, folder, keys,
      locator: (name) => `${folder}/${name}`,
      stop: async () => {
        await store.close();
        await s3.stop();
      },
    };
  }
  const dir = new TmpDir(tmpPrefix);
  const root = makeStoreRoot(join(dir.path, 'store'));
  const store = await FileStore.open(root);
  const folder = `file:${root}/images`;
  return {
    kind, store, env: {}, folder, keys,
    locator: (name) => `${folder}/${name}`,
    stop: async () => {
      await store.close();
      dir.remove();
    },
  };
}
