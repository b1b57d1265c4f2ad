// SIGHUP resizes caches live: `vhost-s3 run` re-reads its exports file and applies a share's
// cache-size (page cache), attr-cache-entries and list-cache-entries, and a disk's
// cache-size (chunk cache), on the connection that is up. Shrinking evicts down to the new
// bound at once (the metrics and the logged cache sizes show it), growing lets the cache
// fill further; the session never drops.
import { expect } from 'chai';
import { mkdirSync, writeFileSync } from 'node:fs';

import { FileStore } from '../../src/backends/file-store.js';
import { S3Store } from '../../src/backends/s3-store.js';
import { ROOT_MARKER } from '../../src/backends/store-config.js';
import { createImage } from '../../src/blk/image-admin.js';
import { ImageKeys } from '../../src/blk/image-format.js';
import { BlkStatus } from '../../src/blk/protocol.js';
import { BlkClient } from '../../src/frontend/blk-client.js';
import { FuseClient } from '../../src/frontend/fuse-client.js';
import { CliProcess, startRunServer } from '../support/cli.js';
import { freePort, scrape } from '../support/metrics.js';
import { startS3rver, type S3rver } from '../support/s3rver.js';
import { TmpDir, patternBytes } from '../support/tmp.js';

process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

const KiB = 1024;
const MiB = 1024 * KiB;

describe('cli: vhost-s3 run resizes caches on SIGHUP without dropping the connection', function () {
  this.timeout(90_000);
  let dir: TmpDir;
  let server: CliProcess | null = null;
  let fc: FuseClient | null = null;
  let bc: BlkClient | null = null;
  let s3: S3rver | null = null;

  beforeEach(() => {
    dir = new TmpDir('vhost-s3-reload-caches-');
  });
  afterEach(async function () {
    await fc?.close().catch(() => undefined);
    await bc?.close().catch(() => undefined);
    fc = null;
    bc = null;
    if (this.currentTest?.state === 'failed' && server) console.log(server.describe());
    await server?.kill();
    server = null;
    await s3?.stop();
    s3 = null;
    dir.remove();
  });

  /** Sends SIGHUP and waits for the `count`-th reload to be logged. */
  const hup = async (srv: CliProcess, count: number): Promise<Record<string, unknown>> => {
    srv.proc.kill('SIGHUP');
    await srv.waitFor(`reload ${count}`, (_o, err) => err.split('configuration reload done').length - 1 >= count);
    return srv.logLines().filter((l) => l.msg === 'configuration reloaded').at(-1)!;
  };

  it('a share: page cache, attribute and listing caches shrink to their new bounds and grow again', async () => {
    // S3: a local store's files are read straight from the kernel's page cache, not through ours.
    s3 = await startS3rver({ buckets: ['share'] });
    const store = new S3Store({ bucket: 'share', endpoint: s3.endpoint, credentials: s3.credentials });
    const big = patternBytes(3, 4 * MiB);
    try {
      await store.put('big', big);
      for (let i = 0; i < 20; i++) await store.put(`d${i % 4}/f${i}`, patternBytes(i, 100));
    } finally {
      await store.close();
    }
    const sock = dir.file('fs.sock');
    const port = await freePort();
    const file = dir.file('exports.json');
    const write = (fields: Record<string, unknown>): void =>
      writeFileSync(file, JSON.stringify({ metrics: `127.0.0.1:${port}`, exports: [{ type: 'fs', socket: sock, bucket: 's3://share', endpoint: s3!.endpoint, 'read-ahead': '0', ...fields }] }));
    write({ 'cache-size': '8M', 'attr-cache-entries': 1000, 'list-cache-entries': 100 });
    server = await startRunServer(file, { env: s3.env });
    const srv = server;
    fc = await FuseClient.connect(sock);
    await fc.init();
    const c = fc;
    const readAll = async (): Promise<void> => {
      const e = await c.lookup(1, 'big');
      const { fh } = await c.open(e.nodeid, 0);
      for (let off = 0; off < big.length; off += 128 * KiB) expect(Buffer.from(await c.read(e.nodeid, fh, off, 128 * KiB)).equals(Buffer.from(big.subarray(off, off + 128 * KiB)))).to.equal(true);
      await c.release(e.nodeid, fh);
    };
    await readAll();
    for (let d = 0; d < 4; d++) {
      const dirNode = (await c.lookup(1, `d${d}`)).nodeid;
      await c.listdir(dirNode);
      for (let i = d; i < 20; i += 4) await c.lookup(dirNode, `f${i}`);
    }
    const page = { export: sock, cache: 'page' };
    const s0 = await scrape(port);
    expect(s0.sum('vhost_s3_cache_bytes', page), 'the whole file in the page cache').to.equal(4 * MiB);

    write({ 'cache-size': '1M', 'attr-cache-entries': 5, 'list-cache-entries': 2 });
    const shrunk = await hup(srv, 1);
    expect(shrunk.changed).to.deep.equal({
      'cache-size': { from: 8 * MiB, to: MiB }, 'attr-cache-entries': { from: 1000, to: 5 }, 'list-cache-entries': { from: 100, to: 2 },
    });
    const caches = shrunk.caches as Record<string, number>;
    expect(caches).to.include({ pageMaxBytes: MiB, attrMaxEntries: 5, listMaxEntries: 2 });
    expect(caches.pageBytes).to.be.at.most(MiB).and.above(0);
    expect(caches.attrEntries).to.be.at.most(5).and.above(0);
    expect(caches.listEntries).to.be.at.most(2);
    const s1 = await scrape(port);
    expect(s1.sum('vhost_s3_cache_bytes', page), 'page cache within the new bound').to.be.at.most(MiB);
    expect(s1.sum('vhost_s3_cache_evictions_total', page) - s0.sum('vhost_s3_cache_evictions_total', page)).to.be.at.least(3);
    // Still correct, and never above the new bound while reading through it.
    await readAll();
    expect((await scrape(port)).sum('vhost_s3_cache_bytes', page)).to.be.at.most(MiB);

    write({ 'cache-size': '16M', 'attr-cache-entries': 1000, 'list-cache-entries': 100 });
    const grown = await hup(srv, 2);
    expect((grown.caches as Record<string, number>).pageMaxBytes).to.equal(16 * MiB);
    await readAll();
    expect((await scrape(port)).sum('vhost_s3_cache_bytes', page), 'the grown cache holds the whole file again').to.equal(4 * MiB);

    expect(srv.logLines().filter((l) => l.msg === 'vhost-user frontend connected')).to.have.length(1);
    expect(srv.logLines().some((l) => l.msg === 'vhost-user frontend disconnected')).to.equal(false);
    await fc.close();
    fc = null;
    expect((await srv.stop('SIGTERM')).code, srv.describe()).to.equal(0);
  });

  it('a disk: the chunk cache of an object image shrinks to the new cache-size', async () => {
    const root = dir.file('store');
    mkdirSync(root);
    writeFileSync(`${root}/${ROOT_MARKER}`, 'vhost-s3 local object store\n');
    const store = await FileStore.open(root);
    await createImage(store, new ImageKeys('images/d/'), 4 * MiB, 64 * KiB);
    const sock = dir.file('blk.sock');
    const port = await freePort();
    const file = dir.file('exports.json');
    const write = (size: string): void =>
      writeFileSync(file, JSON.stringify({ metrics: `127.0.0.1:${port}`, exports: [{ type: 'blk', socket: sock, image: `file:${root}/images/d`, 'cache-size': size, 'writeback-delay': 0, readahead: 0 }] }));
    write('2M');
    server = await startRunServer(file);
    const srv = server;
    bc = await BlkClient.connect(sock, { memorySize: 4 * MiB });
    const buf = bc.allocBuffer(64 * KiB);
    // 16 whole chunks written and stored: 1 MiB of clean chunks in the cache.
    for (let i = 0; i < 16; i++) {
      buf.bytes.set(patternBytes(i, 64 * KiB));
      expect(await bc.writeAsync(0, i * 64 * KiB, buf)).to.equal(BlkStatus.Ok);
    }
    expect(await bc.flushAsync()).to.equal(BlkStatus.Ok);
    const chunk = { export: sock, cache: 'chunk' };
    expect((await scrape(port)).sum('vhost_s3_cache_bytes', chunk)).to.equal(MiB);

    write('256K');
    const r = await hup(srv, 1);
    expect(r.changed).to.deep.equal({ 'cache-size': { from: 2 * MiB, to: 256 * KiB } });
    expect(r.caches).to.deep.include({ chunkMaxBytes: 256 * KiB });
    expect((await scrape(port)).sum('vhost_s3_cache_bytes', chunk), 'chunk cache within the new bound').to.equal(256 * KiB);
    // What was evicted reads back from the store.
    for (let i = 0; i < 16; i++) {
      expect(await bc.readAsync(0, i * 64 * KiB, buf)).to.equal(BlkStatus.Ok);
      expect(Buffer.from(buf.bytes).equals(Buffer.from(patternBytes(i, 64 * KiB)))).to.equal(true);
    }
    expect((await scrape(port)).sum('vhost_s3_cache_bytes', chunk)).to.be.at.most(256 * KiB);
    expect(srv.logLines().filter((l) => l.msg === 'vhost-user frontend connected')).to.have.length(1);
    await bc.close();
    bc = null;
    expect((await srv.stop('SIGTERM')).code, srv.describe()).to.equal(0);
  });
});
