// `vhost-s3 mount --passthrough` on a real kernel (FUSE passthrough, Linux 6.9+) over
// s3rver: once the page cache holds a whole file, a read-only open is handed a memfd copy
// and the kernel reads it itself — the same bytes, O_DIRECT included, and no READ request
// reaches the gateway (its request metrics say so). Meanwhile opening the file for writing
// or truncating it fails with ETXTBSY; after the last close both work, and the new bytes
// reach the bucket. The engine's policy is tested without a kernel in
// test/fuse/passthrough.test.ts.
import { expect } from 'chai';
import { createHash, randomBytes } from 'node:crypto';
import { release } from 'node:os';
import { open, readFile, truncate } from 'node:fs/promises';
import { freePort, scrape } from '../support/metrics.js';
import { mountPrereqProblem, shOk, startBackend, startMount, waitUntil, type Backend, type Mount } from '../support/mount.js';

/** FUSE passthrough came with Linux 6.9. */
function kernelHasPassthrough(): boolean {
  const m = /^(\d+)\.(\d+)/.exec(release());
  return m !== null && (Number(m[1]) > 6 || (Number(m[1]) === 6 && Number(m[2]) >= 9));
}

describe('vhost-s3 mount --passthrough: the kernel reads wholly cached files itself', function () {
  this.timeout(120_000);
  const data = randomBytes(3 * 1024 * 1024 + 1234);
  let be: Backend | undefined;
  let m: Mount | undefined;
  let port = 0;

  before(async function () {
    if (mountPrereqProblem() || !kernelHasPassthrough()) this.skip();
    be = await startBackend('s3', 'pt');
    await be.store.put(`${be.prefix}data.bin`, data);
    port = await freePort();
    m = await startMount({ bucket: be.locator, env: be.env, logLevel: 'warn', args: ['--passthrough', '--metrics', `127.0.0.1:${port}`] });
    // A 6.9+ kernel built without CONFIG_FUSE_PASSTHROUGH does not offer it at INIT (logged).
    if (m.proc.stderr.includes('kernel does not offer it')) this.skip();
  });
  after(async function () {
    this.timeout(30_000);
    await m?.stop();
    await be?.close();
  });

  const dev = (): Record<string, string> => ({ export: m!.path, device: 'fuse' });
  const count = async (op: string): Promise<number> => (await scrape(port)).sum('vhost_s3_requests_total', { ...dev(), op });
  /** Reads the file through an ordinary handle (the page cache then holds it) and waits for its RELEASE. */
  async function cacheWhole(): Promise<void> {
    const releases = await count('RELEASE');
    expect(Buffer.compare(await readFile(m!.p('data.bin')), data)).to.equal(0);
    await waitUntil('the RELEASE of the reading handle', async () => (await count('RELEASE')) > releases);
  }

  it('serves the same bytes, O_DIRECT included, without a READ request', async () => {
    await cacheWhole();
    const reads = await count('READ');
    const fh = await open(m!.p('data.bin'), 'r');
    try {
      for (const [offset, length] of [[0, 4096], [12345, 100_000], [data.length - 777, 777], [1 << 20, 1 << 20]] as const) {
        const buf = Buffer.alloc(length);
        const { bytesRead } = await fh.read(buf, 0, length, offset);
        expect(bytesRead).to.equal(length);
        expect(Buffer.compare(buf, data.subarray(offset, offset + length)), `bytes at ${offset}`).to.equal(0);
      }
      const held = (await scrape(port)).sum('vhost_s3_cache_bytes', { export: m!.path, cache: 'passthrough' });
      expect(held).to.equal(data.length);
      // A second, O_DIRECT reader shares the backing file.
      const sum = (await shOk(`dd if="$F" iflag=direct bs=64k status=none | sha256sum`, { env: { ...process.env, F: m!.p('data.bin') } })).split(' ')[0];
      expect(sum).to.equal(createHash('sha256').update(data).digest('hex'));
    } finally {
      await fh.close();
    }
    expect(await count('READ')).to.equal(reads);
    await waitUntil('the copy dropped after the last close', async () =>
      (await scrape(port)).sum('vhost_s3_cache_bytes', { export: m!.path, cache: 'passthrough' }) === 0);
  });

  it('refuses to open for writing or truncate while a passthrough handle is open, and allows both after the last close', async () => {
    await cacheWhole();
    const reads = await count('READ');
    const fh = await open(m!.p('data.bin'), 'r');
    try {
      const buf = Buffer.alloc(4096);
      await fh.read(buf, 0, 4096, 0);
      expect(await count('READ')).to.equal(reads); // this handle is a passthrough one
      await open(m!.p('data.bin'), 'r+').then(
        async (w) => {
          await w.close();
          expect.fail('opened for writing beside a passthrough handle');
        },
        (err: NodeJS.ErrnoException) => expect(err.code).to.equal('ETXTBSY'),
      );
      await truncate(m!.p('data.bin'), 10).then(
        () => expect.fail('truncated beside a passthrough handle'),
        (err: NodeJS.ErrnoException) => expect(err.code).to.equal('ETXTBSY'),
      );
    } finally {
      await fh.close();
    }
    // RELEASE comes after close() returns: the writer gets in once it has been handled.
    let w: Awaited<ReturnType<typeof open>> | null = null;
    await waitUntil('an open for writing after the last close', async () => {
      w = await open(m!.p('data.bin'), 'r+').catch(() => null);
      return w !== null;
    });
    try {
      await w!.write(Buffer.from('hello'), 0, 5, 0);
    } finally {
      await w!.close();
    }
    const want = Buffer.concat([Buffer.from('hello'), data.subarray(5)]);
    expect(Buffer.compare(await readFile(m!.p('data.bin')), want)).to.equal(0);
    const stored = await be!.store.get(`${be!.prefix}data.bin`);
    expect(Buffer.compare(Buffer.from(stored.body), want)).to.equal(0);
  });
});
