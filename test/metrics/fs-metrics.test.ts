// --metrics on `vhost-s3 fs` serving an s3:// bucket in s3rver, and on `vhost-s3 run` (its
// file's "metrics" field): FUSE requests of known opcodes and sizes through the frontend
// move the per-opcode series, the S3 series and the page cache's hits and misses (a
// re-read is all hits and no GET) by exactly what the workload did.
import { expect } from 'chai';
import { mkdirSync, writeFileSync } from 'node:fs';

import { FuseClient } from '../../src/frontend/fuse-client.js';
import { E, O_CREAT, O_RDONLY, O_WRONLY, S_IFREG } from '../../src/fuse/abi.js';
import { BlkClient } from '../../src/frontend/blk-client.js';
import { BlkStatus } from '../../src/blk/protocol.js';
import { CliProcess, startRunServer } from '../support/cli.js';
import { freePort, scrape, type Scrape } from '../support/metrics.js';
import { startS3rver, type S3rver } from '../support/s3rver.js';
import { TmpDir, makeRawFile, patternBytes } from '../support/tmp.js';

const KiB = 1024;
const MiB = 1 << 20;

process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

describe('metrics: vhost-s3 fs --metrics', function () {
  this.timeout(90_000);
  let s3: S3rver;
  let dir: TmpDir;
  let server: CliProcess | null = null;
  const clients: { close(): Promise<void> }[] = [];

  before(async () => {
    s3 = await startS3rver({ buckets: ['share'] });
    dir = new TmpDir('vhost-s3-metrics-fs-');
  });
  afterEach(async () => {
    for (const c of clients.splice(0)) await c.close().catch(() => undefined);
    await server?.kill();
    server = null;
  });
  after(async () => {
    await s3?.stop();
    dir?.remove();
  });

  it('counts FUSE requests by opcode and errno, bytes, S3 requests, and page-cache hits on a re-read', async () => {
    const port = await freePort();
    const socket = dir.file('fs.sock');
    server = new CliProcess([
      'fs', '--socket', socket, '--bucket', 's3://share/data', '--endpoint', s3.endpoint, '--metrics', `127.0.0.1:${port}`,
      '--attr-timeout', '0', '--negative-timeout', '0', '--list-timeout', '0', '--read-ahead', '0', '--cache-block-size', '64K', '--log-level', 'warn',
    ], { env: s3.env });
    await server.waitForSocket(socket);
    const dev = { export: socket, device: 'fs' };
    const fuse = await FuseClient.connect(socket);
    clients.push(fuse);
    await fuse.init();
    const at0 = await scrape(port);
    expect(at0.sum('vhost_s3_requests_total', { ...dev, op: 'INIT', status: 'ok' })).to.equal(1);

    // Opcodes the guest makes up are one series, "unknown", however many numbers it tries.
    for (const opcode of [4242, 4243, 0x7fffffff]) expect((await fuse.request(opcode, 1, [])).error).to.equal(-E.ENOSYS);
    // A lookup of a missing name: ENOENT.
    await fuse.lookup(1, 'missing').then(() => expect.fail('found'), (err: { errno?: number }) => expect(err.errno).to.equal(E.ENOENT));
    // A file of 4 blocks (64 KiB each) written in 4 WRITEs, made durable, closed.
    const W = 4;
    const block = 64 * KiB;
    const made = await fuse.create(1, 'f.bin', O_CREAT | O_WRONLY, S_IFREG | 0o644);
    for (let i = 0; i < W; i++) expect(await fuse.write(made.entry.nodeid, made.fh, i * block, patternBytes(i, block))).to.equal(block);
    await fuse.fsync(made.entry.nodeid, made.fh);
    await fuse.release(made.entry.nodeid, made.fh);
    const afterWrites = await scrape(port);
    let d = deltas(at0, afterWrites);
    expect(d('vhost_s3_requests_total', { ...dev, op: 'LOOKUP', status: 'ENOENT' })).to.equal(1);
    expect(d('vhost_s3_requests_total', { ...dev, op: 'unknown', status: 'ENOSYS' })).to.equal(3);
    expect(afterWrites.samples.filter((x) => x.name === 'vhost_s3_requests_total' && /^OPCODE_|^\d/.test(x.labels.op ?? ''))).to.deep.equal([]);
    expect(d('vhost_s3_requests_total', { ...dev, op: 'CREATE', status: 'ok' })).to.equal(1);
    expect(d('vhost_s3_requests_total', { ...dev, op: 'WRITE', status: 'ok' })).to.equal(W);
    expect(d('vhost_s3_written_bytes_total', dev)).to.equal(W * block);
    expect(d('vhost_s3_request_duration_seconds_count', { ...dev, op: 'WRITE' })).to.equal(W);
    expect(d('vhost_s3_s3_requests_total', { export: socket, operation: 'PutObject', code: '200' })).to.be.at.least(1);
    expect(d('vhost_s3_s3_sent_bytes_total', { export: socket })).to.be.at.least(W * block);

    // Read the file in 16 KiB pieces, twice: the first pass misses each 64 KiB block once
    // (one ranged GET per block), the second is served from the page cache alone.
    const piece = 16 * KiB;
    const readAll = async (): Promise<void> => {
      const o = await fuse.open(made.entry.nodeid, O_RDONLY);
      for (let off = 0; off < W * block; off += piece) expect((await fuse.read(made.entry.nodeid, o.fh, off, piece)).length).to.equal(piece);
      await fuse.release(made.entry.nodeid, o.fh);
    };
    const pieces = (W * block) / piece;
    const page = { export: socket, cache: 'page' };
    await readAll();
    const firstPass = await scrape(port);
    d = deltas(afterWrites, firstPass);
    expect(d('vhost_s3_requests_total', { ...dev, op: 'READ', status: 'ok' })).to.equal(pieces);
    expect(d('vhost_s3_read_bytes_total', dev)).to.equal(W * block);
    const gets = d('vhost_s3_s3_requests_total', { export: socket, operation: 'GetObject' });
    expect(d('vhost_s3_cache_misses_total', page)).to.equal(gets);
    expect(d('vhost_s3_cache_hits_total', page) + d('vhost_s3_cache_misses_total', page)).to.equal(pieces);
    await readAll();
    const second = await scrape(port);
    d = deltas(firstPass, second);
    expect(d('vhost_s3_requests_total', { ...dev, op: 'READ', status: 'ok' })).to.equal(pieces);
    expect(d('vhost_s3_read_bytes_total', dev)).to.equal(W * block);
    expect(d('vhost_s3_cache_hits_total', page)).to.equal(pieces);
    expect(d('vhost_s3_cache_misses_total', page)).to.equal(0);
    expect(d('vhost_s3_s3_requests_total', { export: socket, operation: 'GetObject' })).to.equal(0);
    expect(second.sum('vhost_s3_cache_hit_ratio', page)).to.be.within(0.5, 1);
    expect(second.sum('vhost_s3_cache_bytes', page)).to.be.at.least(W * block);
    expect(second.sum('vhost_s3_cache_dirty_bytes', { export: socket, cache: 'write_buffer' })).to.equal(0);
    expect(second.sum('vhost_s3_inflight_requests', dev)).to.equal(0);
    expect(second.has('vhost_s3_queue_depth', dev)).to.equal(true);
  });

  it('vhost-s3 run: the file\'s "metrics" serves every export, each under its socket', async () => {
    const port = await freePort();
    const raw = makeRawFile(dir.file('run.raw'), 4 * MiB);
    const socks = { disk: dir.file('run-d.sock'), share: dir.file('run-s.sock'), local: dir.file('run-l.sock') };
    mkdirSync(dir.file('store/local'), { recursive: true });
    const file = dir.file('exports.json');
    writeFileSync(file, JSON.stringify({
      metrics: `127.0.0.1:${port}`,
      exports: [
        { type: 'blk', socket: socks.disk, image: `file:${raw}` },
        { type: 'fs', socket: socks.share, bucket: 's3://share/run', endpoint: s3.endpoint, 'cache-size': '128K', 'cache-block-size': '64K', 'read-ahead': 0 },
        { type: 'fs', socket: socks.local, bucket: `file:${dir.file('store')}/local` },
      ],
    }));
    server = await startRunServer(file, { env: s3.env });
    const disk = await BlkClient.connect(socks.disk);
    clients.push(disk);
    const share = await FuseClient.connect(socks.share);
    clients.push(share);
    await share.init();
    const buf = disk.allocBuffer(8 * KiB);
    for (let i = 0; i < 3; i++) expect(await disk.readAsync(0, i * 8 * KiB, buf)).to.equal(BlkStatus.Ok);
    await share.statfs();
    // A 256 KiB file read through a 128 KiB page cache of 64 KiB blocks: at least 2 evictions.
    const big = await share.create(1, 'big', O_CREAT | O_WRONLY, S_IFREG | 0o644);
    await share.write(big.entry.nodeid, big.fh, 0, patternBytes(4, 256 * KiB));
    await share.fsync(big.entry.nodeid, big.fh);
    await share.release(big.entry.nodeid, big.fh);
    const rd = await share.open(big.entry.nodeid, O_RDONLY);
    for (let off = 0; off < 256 * KiB; off += 64 * KiB) expect((await share.read(big.entry.nodeid, rd.fh, off, 64 * KiB)).length).to.equal(64 * KiB);
    await share.release(big.entry.nodeid, rd.fh);
    // On the local store: a file made, written and fsynced is one put of the object.
    const local = await FuseClient.connect(socks.local);
    clients.push(local);
    await local.init();
    const before = await scrape(port);
    const made = await local.create(1, 'x', O_CREAT | O_WRONLY, S_IFREG | 0o644);
    await local.write(made.entry.nodeid, made.fh, 0, patternBytes(3, 1000));
    await local.fsync(made.entry.nodeid, made.fh);
    await local.release(made.entry.nodeid, made.fh);
    const s = await scrape(port);
    expect(s.sum('vhost_s3_requests_total', { export: socks.disk, device: 'blk', op: 'in', status: 'ok' })).to.equal(3);
    expect(s.sum('vhost_s3_read_bytes_total', { export: socks.disk, device: 'blk' })).to.equal(3 * 8 * KiB);
    expect(s.sum('vhost_s3_requests_total', { export: socks.share, device: 'fs', op: 'STATFS', status: 'ok' })).to.equal(1);
    expect(s.sum('vhost_s3_cache_bytes', { export: socks.share, cache: 'page' })).to.be.at.most(128 * KiB);
    expect(s.sum('vhost_s3_cache_evictions_total', { export: socks.share, cache: 'page' })).to.be.at.least(2);
    // A raw file has no chunk cache and no S3 client; the share has both kinds of cache.
    expect(s.has('vhost_s3_cache_bytes', { export: socks.disk })).to.equal(false);
    expect(s.has('vhost_s3_cache_bytes', { export: socks.share, cache: 'page' })).to.equal(true);
    expect(s.sum('vhost_s3_s3_requests_total', { export: socks.disk })).to.equal(0);
    expect(s.sum('vhost_s3_s3_requests_total', { export: socks.local })).to.equal(0);
    expect(s.sum('vhost_s3_store_operations_total', { export: socks.local, operation: 'put', result: 'ok' }) - before.sum('vhost_s3_store_operations_total', { export: socks.local, operation: 'put', result: 'ok' })).to.be.at.least(1);
    expect(s.sum('vhost_s3_store_operations_total', { export: socks.share })).to.equal(0);
    expect(s.sum('vhost_s3_written_bytes_total', { export: socks.local, device: 'fs' })).to.equal(1000);
  });
});

function deltas(a: Scrape, b: Scrape): (name: string, labels?: Record<string, string>) => number {
  return (name, labels = {}) => b.sum(name, labels) - a.sum(name, labels);
}
