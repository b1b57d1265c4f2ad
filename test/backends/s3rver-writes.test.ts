// The tests' s3rver answers writes only once their bytes are stored (the preload of
// test/support/s3rver.ts). Unpatched, its store answered a 64 MiB PutObject with 6 MiB
// in the file, and a GET or copy right after read a short object under the full ETag.
import { expect } from 'chai';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { writeDurableWritesPreload } from '../support/s3rver.js';

const require = createRequire(import.meta.url);

interface FsStore {
  putBucket(name: string): Promise<unknown>;
  putObject(o: unknown): Promise<{ size: number; md5: string }>;
  putPart(bucket: string, uploadId: string, part: number, content: Readable): Promise<{ size: number; md5: string }>;
  getResourcePath(bucket: string, key: string | undefined, kind: string): string;
}

describe("s3rver's writes as the tests run it", function () {
  this.timeout(60_000);
  let dir: string;
  let store: FsStore;
  let S3Object: new (bucket: string, key: string, content: unknown, metadata: Record<string, string>) => unknown;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'vhost-s3-s3rver-writes-'));
    require(writeDurableWritesPreload(join(dir, 'preload.cjs')));
    const Store = require('s3rver/lib/stores/filesystem') as new (dir: string) => FsStore;
    S3Object = require('s3rver/lib/models/object');
    store = new Store(join(dir, 'data'));
    await store.putBucket('b');
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  const big = Buffer.alloc(64 << 20, 7);

  for (const [what, body] of [['a buffered', () => big], ['a streamed', () => Readable.from([Buffer.alloc(1), big])]] as const) {
    it(`answer ${what} PutObject with all its bytes in the file`, async () => {
      const r = await store.putObject(new S3Object('b', 'k', body(), {}));
      expect(statSync(store.getResourcePath('b', 'k', 'object')).size).to.equal(r.size);
      expect(r.size).to.be.at.least(big.length);
    });
  }

  it('answer an UploadPart with all its bytes in the part file', async () => {
    const r = await store.putPart('b', 'upload-1', 1, Readable.from([Buffer.alloc(1), big]));
    expect(r.size).to.equal(big.length + 1);
    expect(statSync(join(store.getResourcePath('b', undefined, 'uploads'), 'upload-1', '1')).size).to.equal(r.size);
  });
});
