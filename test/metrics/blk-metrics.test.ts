// --metrics on `vhost-s3 blk` serving an s3:// image in s3rver: a workload of known counts
// and sizes through the QEMU-free frontend, scraped during and after, must move the
// device, S3 and chunk-cache series by exactly what it did.
import { expect } from 'chai';
import { createServer, type Server } from 'node:net';

import { BlkClient } from '../../src/frontend/blk-client.js';
import { BlkStatus } from '../../src/blk/protocol.js';
import { S3Store } from '../../src/backends/s3-store.js';
import { createImage } from '../../src/blk/image-admin.js';
import { ImageKeys } from '../../src/blk/image-format.js';
import { CliProcess, runCli, startBlkServer } from '../support/cli.js';
import { FaultProxy } from '../support/fault-proxy.js';
import { freePort, scrape, type Scrape } from '../support/metrics.js';
import { startS3rver, type S3rver } from '../support/s3rver.js';
import { TmpDir, makeRawFile, patternBytes } from '../support/tmp.js';

const KiB = 1024;
const MiB = 1 << 20;
const CHUNK = MiB;

process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

describe('metrics: vhost-s3 blk --metrics', function () {
  this.timeout(90_000);
  let s3: S3rver;
  let dir: TmpDir;
  let server: CliProcess | null = null;
  let client: BlkClient | null = null;

  before(async () => {
    s3 = await startS3rver({ buckets: ['img'] });
    dir = new TmpDir('vhost-s3-metrics-blk-');
    const store = new S3Store({ bucket: 'img', endpoint: s3.endpoint, credentials: s3.credentials });
    try {
      await createImage(store, new ImageKeys('images/d/'), 16 * MiB, CHUNK);
    } finally {
      await store.close();
    }
  });
  after(async () => {
    await client?.close().catch(() => undefined);
    await server?.kill();
    await s3?.stop();
    dir?.remove();
  });

  it('counts requests, bytes, latency, S3 requests and chunk-cache hits as the workload made them', async () => {
    const port = await freePort();
    const socket = dir.file('d.sock');
    server = await startBlkServer({
      socket, image: 's3://img/images/d', env: s3.env, logLevel: 'warn',
      extra: ['--endpoint', s3.endpoint, '--metrics', `127.0.0.1:${port}`, '--readahead', '0', '--writeback-delay', '0', '--cache-size', '2M'],
    });
    const dev = { export: socket, device: 'blk' };
    const at0 = await scrape(port);
    expect(at0.sum('vhost_s3_requests_total', dev)).to.equal(0);
    expect(at0.has('vhost_s3_inflight_requests', dev), at0.text).to.equal(true);
    expect(at0.sum('process_resident_memory_bytes')).to.be.greaterThan(0);
    expect(at0.has('nodejs_eventloop_lag_seconds')).to.equal(true);
    // --poll-us defaults to 100 µs: the window lies between 0 and that.
    expect(at0.has('vhost_s3_loop_polls_total', { result: 'hit' }), at0.text).to.equal(true);
    expect(at0.has('vhost_s3_loop_polls_total', { result: 'miss' })).to.equal(true);
    expect(at0.sum('vhost_s3_loop_poll_window_seconds')).to.be.within(0, 100e-6);

    client = await BlkClient.connect(socket, { memorySize: 8 * MiB });
    const c = client;
    // 8 writes of 4 KiB into chunk 0, then FLUSH: chunk 0 is fetched once (read-modify-write) and stored once.
    const W = 8;
    const wbuf = c.allocBuffer(4 * KiB);
    wbuf.bytes.set(patternBytes(1, 4 * KiB));
    for (let i = 0; i < W; i++) expect(await c.writeAsync(0, i * 4 * KiB, wbuf)).to.equal(BlkStatus.Ok);
    expect(await c.flushAsync()).to.equal(BlkStatus.Ok);
    const afterWrites = await scrape(port);
    expect(afterWrites.sum('vhost_s3_requests_total', { ...dev, op: 'out', status: 'ok' })).to.equal(W);
    expect(afterWrites.sum('vhost_s3_requests_total', { ...dev, op: 'flush', status: 'ok' })).to.equal(1);
    expect(afterWrites.sum('vhost_s3_written_bytes_total', dev)).to.equal(W * 4 * KiB);
    expect(afterWrites.sum('vhost_s3_read_bytes_total', dev)).to.equal(0);
    expect(afterWrites.sum('vhost_s3_s3_requests_total', { export: socket, operation: 'PutObject', code: '200' })).to.be.at.least(1);
    expect(afterWrites.sum('vhost_s3_s3_sent_bytes_total', { export: socket })).to.be.at.least(CHUNK);

    // N reads of 4 KiB from chunk 0 (cached: hits, no GET), with a scrape while they run,
    // then one read of chunk 5 (never written: one miss, one GET).
    const N = 64;
    const rbufs = Array.from({ length: 16 }, () => c.allocBuffer(4 * KiB));
    let done = 0;
    const reads = Promise.all(rbufs.map(async (b, k) => {
      for (let i = k; i < N; i += rbufs.length) {
        expect(await c.readAsync(0, (i % 256) * 4 * KiB, b)).to.equal(BlkStatus.Ok);
        done++;
      }
    }));
    const during = await scrape(port);
    await reads;
    expect(done).to.equal(N);
    expect(await c.readAsync(0, 5 * CHUNK, rbufs[0]!)).to.equal(BlkStatus.Ok);
    // A read past the end: IOERR, counted as such.
    expect(await c.readAsync(0, 16 * MiB, rbufs[0]!)).to.equal(BlkStatus.IoErr);
    const after = await scrape(port);

    const delta = (name: string, labels: Record<string, string> = {}): number => after.sum(name, labels) - afterWrites.sum(name, labels);
    expect(delta('vhost_s3_requests_total', { ...dev, op: 'in', status: 'ok' })).to.equal(N + 1);
    expect(delta('vhost_s3_requests_total', { ...dev, op: 'in', status: 'ioerr' })).to.equal(1);
    expect(delta('vhost_s3_read_bytes_total', dev)).to.equal((N + 1) * 4 * KiB);
    expect(delta('vhost_s3_written_bytes_total', dev)).to.equal(0);
    expect(delta('vhost_s3_request_duration_seconds_count', { ...dev, op: 'in' })).to.equal(N + 2);
    expect(after.sum('vhost_s3_request_duration_seconds_bucket', { ...dev, op: 'in', le: '+Inf' })).to.equal(N + 2);
    expect(after.sum('vhost_s3_request_duration_seconds_sum', { ...dev, op: 'in' })).to.be.greaterThan(0);
    expect(after.sum('vhost_s3_inflight_requests', dev)).to.equal(0);
    const chunk = { export: socket, cache: 'chunk' };
    expect(delta('vhost_s3_cache_hits_total', chunk)).to.equal(N);
    expect(delta('vhost_s3_cache_misses_total', chunk)).to.equal(1);
    // The one miss is the one GET (of a chunk that is not stored: 404).
    expect(delta('vhost_s3_s3_requests_total', { export: socket, operation: 'GetObject' })).to.equal(1);
    expect(after.sum('vhost_s3_cache_hit_ratio', chunk)).to.be.within(0, 1);
    expect(after.sum('vhost_s3_cache_bytes', chunk)).to.be.at.least(CHUNK);
    expect(after.sum('vhost_s3_cache_dirty_bytes', chunk)).to.equal(0);

    // The scrape taken during the reads lies between the two others, series by series.
    assertBetween(afterWrites, during, after, 'vhost_s3_requests_total', { ...dev, op: 'in', status: 'ok' });
    assertBetween(afterWrites, during, after, 'vhost_s3_read_bytes_total', dev);
    expect(during.sum('vhost_s3_inflight_requests', dev)).to.be.within(0, rbufs.length);

    // Chunks 1..3 written and stored: with chunk 0, 4 MiB of clean chunks in a 2 MiB cache.
    for (let k = 1; k <= 3; k++) expect(await c.writeAsync(0, k * CHUNK, wbuf)).to.equal(BlkStatus.Ok);
    expect(await c.flushAsync()).to.equal(BlkStatus.Ok);
    const evicted = await scrape(port);
    expect(evicted.sum('vhost_s3_cache_evictions_total', chunk) - after.sum('vhost_s3_cache_evictions_total', chunk)).to.be.at.least(2);
    expect(evicted.sum('vhost_s3_cache_bytes', chunk)).to.be.at.most(2 * CHUNK);
  });

  it('counts S3 attempts by status code and the retries, as many as the store failed', async () => {
    const proxy = await FaultProxy.start(s3.port, { seed: 3 });
    let gw: CliProcess | null = null;
    let blk: BlkClient | null = null;
    try {
      const store = new S3Store({ bucket: 'img', endpoint: s3.endpoint, credentials: s3.credentials });
      try {
        await createImage(store, new ImageKeys('images/r/'), 16 * MiB, CHUNK);
      } finally {
        await store.close();
      }
      const port = await freePort();
      const socket = dir.file('r.sock');
      gw = await startBlkServer({
        socket, image: 's3://img/images/r', env: s3.env, logLevel: 'warn',
        extra: ['--endpoint', proxy.endpoint, '--metrics', `127.0.0.1:${port}`, '--readahead', '0'],
      });
      blk = await BlkClient.connect(socket, { memorySize: 4 * MiB });
      const before = await scrape(port);
      // The next two S3 requests (the chunk's GET, or a lease heartbeat that comes first) are
      // answered 503 SlowDown: the SDK retries each time.
      proxy.failNext(2, 503, 'SlowDown');
      expect(await blk.readAsync(0, 9 * CHUNK, blk.allocBuffer(4 * KiB))).to.equal(BlkStatus.Ok);
      const after = await scrape(port);
      const d = (name: string, labels: Record<string, string>): number => after.sum(name, labels) - before.sum(name, labels);
      expect(d('vhost_s3_s3_requests_total', { export: socket, code: '503' }), after.text).to.equal(2);
      expect(d('vhost_s3_s3_retries_total', { export: socket })).to.equal(2);
      expect(d('vhost_s3_s3_requests_total', { export: socket, operation: 'GetObject' })).to.be.at.least(1);
    } finally {
      await blk?.close().catch(() => undefined);
      await gw?.kill();
      await proxy.close();
    }
  });

  it('a bad --metrics value or a port in use: one line on stderr, exit 2', async () => {
    const raw = makeRawFile(dir.file('r.raw'), MiB);
    const taken: Server = createServer();
    await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve));
    const busy = (taken.address() as { port: number }).port;
    try {
      for (const [value, why] of [['9464', /HOST:PORT/], ['127.0.0.1:99999', /port from 1 to 65535/], ['[nothex]:1', /HOST:PORT/], [`127.0.0.1:${busy}`, /address already in use/]] as const) {
        const socket = dir.file('bad.sock');
        const r = await runCli(['blk', '--socket', socket, '--image', `file:${raw}`, '--metrics', value]);
        expect(r.code, `${value}: ${r.stderr}`).to.equal(2);
        expect(r.stderr.trim().split('\n'), r.stderr).to.have.length(1);
        expect(r.stderr).to.match(why);
        const env = await runCli(['blk', '--socket', socket, '--image', `file:${raw}`], { env: { VHOST_S3_METRICS: value } });
        expect(env.code, `VHOST_S3_METRICS=${value}: ${env.stderr}`).to.equal(2);
      }
    } finally {
      taken.close();
    }
  });
});

function assertBetween(a: Scrape, mid: Scrape, b: Scrape, name: string, labels: Record<string, string>): void {
  expect(mid.sum(name, labels), name).to.be.within(a.sum(name, labels), b.sum(name, labels));
}
