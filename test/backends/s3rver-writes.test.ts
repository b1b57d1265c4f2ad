// The tests' s3rver answers writes only once their bytes are stored, and a PutObject
// replaces the object whole or not at all (the preload of test/support/s3rver.ts).
// Unpatched, its store answered a 64 MiB PutObject with 6 MiB in the file, and a GET or
// copy right after read a short object under the full ETag; it wrote bodies into the
// object's file in place, so a GET during a PutObject, or after one cut off, read the
// bytes received so far as the whole object.
import { expect } from 'chai';
import { mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { request, type RequestOptions } from 'node:http';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { buffer } from 'node:stream/consumers';
import { setTimeout as sleep } from 'node:timers/promises';
import { S3Store } from '../../src/backends/s3-store.js';
import { startS3rver, writeDurableWritesPreload } from '../support/s3rver.js';

const require = createRequire(import.meta.url);
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

interface FsStore {
  putBucket(name: string): Promise<unknown>;
  putObject(o: unknown): Promise<{ size: number; md5: string }>;
  getObject(bucket: string, key: string): Promise<{ content: Readable; metadata: Record<string, string> } | null>;
  putPart(bucket: string, uploadId: string, part: number, content: Readable): Promise<{ size: number; md5: string }>;
  getResourcePath(bucket: string, key: string | undefined, kind: string): string;
  listObjects(bucket: string, o: Record<string, never>): Promise<{ objects: { key: string }[] }>;
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

  /** The object `k` as a GET reads it: its length (from the file) and bytes. */
  async function read(key: string): Promise<{ length: number; body: Buffer }> {
    const o = (await store.getObject('b', key))!;
    return { length: Number(o.metadata['content-length']), body: await buffer(o.content) };
  }

  it('a GET while a PutObject body is still arriving reads the previous object whole', async () => {
    const old = Buffer.alloc(64 << 10, 1);
    await store.putObject(new S3Object('b', 'during', old, {}));
    const body = new PassThrough();
    const put = store.putObject(new S3Object('b', 'during', body, {}));
    body.write(Buffer.alloc(40_000, 2));
    await sleep(50);
    const seen = await read('during');
    expect(seen.length, 'length of the object mid-put').to.equal(old.length);
    expect(seen.body.equals(old), 'bytes of the object mid-put').to.equal(true);
    // The body being written is no object: not listed.
    expect(readdirSync(join(dir, 'data', 'b')).some((n) => n.startsWith('.vhost-s3-writing')), 'a file being written').to.equal(true);
    expect((await store.listObjects('b', {})).objects.map((o) => o.key).sort()).to.deep.equal(['during', 'k']);
    body.end(Buffer.alloc((64 << 10) - 40_000, 2));
    await put;
    expect((await read('during')).body.equals(Buffer.alloc(64 << 10, 2))).to.equal(true);
  });

  it('a PutObject whose body is cut off leaves the previous object, and no file of its own', async () => {
    const old = Buffer.alloc(64 << 10, 3);
    await store.putObject(new S3Object('b', 'cut', old, {}));
    const body = new PassThrough();
    const put = store.putObject(new S3Object('b', 'cut', body, {}));
    body.write(Buffer.alloc(40_000, 4));
    await sleep(50);
    body.destroy(new Error('connection reset'));
    await put.then(() => expect.fail('the cut-off put succeeded'), () => undefined);
    expect((await read('cut')).body.equals(old)).to.equal(true);
    expect(readdirSync(join(dir, 'data', 'b')).filter((n) => n.startsWith('.vhost-s3-writing'))).to.deep.equal([]);
  });

  it('through S3Store against s3rver as tests start it: a chunk read during its PutObject is the previous one, whole', async () => {
    // What test/reliability/store-faults did: read a chunk straight from s3rver while the
    // gateway stored it. It got the 44,544 bytes received so far as the whole object.
    const s3 = await startS3rver({ buckets: ['b'] });
    const s = new S3Store({ bucket: 'b', endpoint: s3.endpoint, credentials: s3.credentials, readWorkers: 0 });
    try {
      const old = Buffer.alloc(64 << 10, 5);
      await s.put('chunk', old);
      // A PutObject sent by hand, its body held halfway (s3rver does not check the payload hash).
      const signed = await signedPut(s3.endpoint, s3.credentials, '/b/chunk', 64 << 10);
      const req = request(signed);
      const answered = new Promise<number>((resolve, reject) => {
        req.on('response', (r) => {
          r.resume();
          r.on('end', () => resolve(r.statusCode ?? 0));
        });
        req.on('error', reject);
      });
      req.write(Buffer.alloc(44_544, 6));
      await sleep(100);
      const buf = new Uint8Array(64 << 10);
      const r = await s.getInto('chunk', 0, buf);
      expect({ size: r.size, bytesRead: r.bytesRead }).to.deep.equal({ size: old.length, bytesRead: old.length });
      expect(Buffer.from(buf).equals(old)).to.equal(true);
      req.end(Buffer.alloc((64 << 10) - 44_544, 6));
      expect(await answered).to.equal(200);
      await s.getInto('chunk', 0, buf);
      expect(Buffer.from(buf).equals(Buffer.alloc(64 << 10, 6))).to.equal(true);
    } finally {
      await s.close();
      await s3.stop();
    }
  });
});

/** http.request options of a SigV4-signed PutObject of `length` bytes (UNSIGNED-PAYLOAD) to `path` at `endpoint`. */
async function signedPut(endpoint: string, credentials: { accessKeyId: string; secretAccessKey: string }, path: string, length: number): Promise<RequestOptions> {
  const { SignatureV4 } = await import('@smithy/signature-v4');
  const { Hash } = await import('@smithy/core/serde');
  const u = new URL(endpoint);
  const signer = new SignatureV4({ credentials, region: 'us-east-1', service: 's3', sha256: Hash.bind(null, 'sha256'), uriEscapePath: false });
  const headers = { host: u.host, 'content-length': String(length), 'x-amz-content-sha256': 'UNSIGNED-PAYLOAD' };
  const signed = await signer.sign({ method: 'PUT', protocol: u.protocol, hostname: u.hostname, port: Number(u.port), path, query: {}, headers });
  return { host: u.hostname, port: u.port, method: 'PUT', path, headers: signed.headers };
}
