// The set-up the guest suites share, registered as mocha hooks in the calling describe():
// the guest prerequisites and image, and for suites whose gateways serve a bucket, s3rver
// with that bucket, an S3Store on it (the host's view), a temporary directory for sockets
// and the gateway processes to kill at the end.
import { S3Store, type S3StoreOptions } from '../../../src/backends/s3-store.js';
import type { CliProcess } from '../cli.js';
import { startS3rver, type S3rver } from '../s3rver.js';
import { TmpDir } from '../tmp.js';
import { ensureGuestImage } from './image.js';
import { assertGuestPrereqs } from './qemu.js';

/**
 * A before() that fails the suite when a guest prerequisite (checkGuestPrereqs) is missing,
 * and builds the guest image on the first run (minutes, hence its own 10-minute timeout).
 */
export function useGuestImage(): void {
  before(async function () {
    this.timeout(600_000);
    assertGuestPrereqs();
    await ensureGuestImage();
  });
}

/** What useGuestBucket sets up; the fields are there from its before() on. */
export class GuestBucket {
  s3!: S3rver;
  /** The bucket seen from the host, to seed it and to check what the guest wrote. */
  store!: S3Store;
  dir!: TmpDir;
  /** Gateways the suite started: killed in after(), before the store goes away. */
  readonly procs: CliProcess[] = [];
}

export interface GuestBucketOptions {
  bucket: string;
  /** Prefix of the temporary directory's name. */
  tmpPrefix: string;
  /** More options for the S3Store (bucket, endpoint, credentials and region are set). */
  store?: Partial<S3StoreOptions>;
}

/**
 * useGuestImage, then a before() that starts s3rver with the bucket, an S3Store on it
 * (region us-east-1) and a TmpDir; after(): the procs killed, the store closed, s3rver
 * stopped and the directory removed, whatever of them was started.
 */
export function useGuestBucket(o: GuestBucketOptions): GuestBucket {
  const fx = new GuestBucket();
  useGuestImage();
  before(async () => {
    fx.s3 = await startS3rver({ buckets: [o.bucket] });
    fx.store = new S3Store({ bucket: o.bucket, endpoint: fx.s3.endpoint, credentials: fx.s3.credentials, region: 'us-east-1', ...o.store });
    fx.dir = new TmpDir(o.tmpPrefix);
  });
  after(async () => {
    for (const p of fx.procs) await p.kill();
    await fx.store?.close();
    await fx.s3?.stop();
    fx.dir?.remove();
  });
  return fx;
}
