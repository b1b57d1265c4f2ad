// --metrics on the two other serving commands: `vhost-s3 mount` (the FUSE server behind
// /dev/fuse, device="fuse", labelled by its mount point) and `vhost-s3 serve` (its disk and
// share, each labelled by its socket). The workloads are ordinary tools in child
// processes (mount) and the QEMU-free frontend (serve).
import { expect } from 'chai';
import { join } from 'node:path';

import { BlkClient } from '../../src/frontend/blk-client.js';
import { BlkStatus } from '../../src/blk/protocol.js';
import { CliProcess } from '../support/cli.js';
import { freePort, scrape } from '../support/metrics.js';
import { mountPrereqProblem, shOk, startBackend, startMount, type Backend, type Mount } from '../support/mount.js';
import { TmpDir } from '../support/tmp.js';

const KiB = 1024;

describe('metrics: vhost-s3 mount --metrics', function () {
  this.timeout(90_000);
  let be: Backend | undefined;
  let m: Mount | undefined;

  before(async function () {
    if (mountPrereqProblem()) this.skip();
    be = await startBackend('file', 'metrics');
  });
  after(async () => {
    await m?.stop();
    await be?.close();
  });

  it('counts the FUSE requests of a file written and read through the mount', async () => {
    const port = await freePort();
    m = await startMount({ bucket: be!.locator, env: be!.env, logLevel: 'warn', args: ['--metrics', `127.0.0.1:${port}`] });
    const dev = { export: m.path, device: 'fuse' };
    const size = 300_000;
    const before = await scrape(port);
    // Written by one process, read back by another (a new open: the kernel reads it again).
    await shOk(`head -c ${size} /dev/urandom > "$M/f.bin" && cat "$M/f.bin" | wc -c`, { env: { ...process.env, M: m.path } });
    const after = await scrape(port);
    const d = (name: string, labels: Record<string, string>): number => after.sum(name, labels) - before.sum(name, labels);
    expect(d('vhost_s3_requests_total', { ...dev, op: 'CREATE', status: 'ok' })).to.equal(1);
    expect(d('vhost_s3_requests_total', { ...dev, op: 'WRITE', status: 'ok' })).to.be.at.least(1);
    expect(d('vhost_s3_written_bytes_total', dev)).to.equal(size);
    expect(d('vhost_s3_read_bytes_total', dev)).to.be.at.least(size);
    expect(d('vhost_s3_store_operations_total', { export: m.path, operation: 'put', result: 'ok' })).to.be.at.least(1);
    expect(after.sum('vhost_s3_inflight_requests', dev)).to.be.within(0, 1);
    expect(after.has('vhost_s3_cache_bytes', { export: m.path, cache: 'page' })).to.equal(true);
  });
});

describe('metrics: vhost-s3 serve --metrics', function () {
  this.timeout(90_000);
  let dir: TmpDir;
  let server: CliProcess | null = null;
  let client: BlkClient | null = null;

  before(() => {
    dir = new TmpDir('vhost-s3-metrics-serve-');
  });
  after(async () => {
    await client?.close().catch(() => undefined);
    await server?.kill();
    dir?.remove();
  });

  it('reports the disk and the share under their sockets, the disk\'s chunk cache and local store', async () => {
    const port = await freePort();
    server = new CliProcess(['serve', '--data-dir', dir.path, '--disk-size', '16M', '--metrics', `127.0.0.1:${port}`, '--log-level', 'warn']);
    await server.waitFor('the banner', (out) => out.includes('Press Ctrl-C'), 30_000);
    const disk = join(dir.path, 'disk0.sock');
    const share = join(dir.path, 'fs.sock');
    client = await BlkClient.connect(disk);
    const buf = client.allocBuffer(4 * KiB);
    for (let i = 0; i < 5; i++) expect(await client.readAsync(0, i * 4 * KiB, buf)).to.equal(BlkStatus.Ok);
    const s = await scrape(port);
    expect(s.sum('vhost_s3_requests_total', { export: disk, device: 'blk', op: 'in', status: 'ok' })).to.equal(5);
    expect(s.sum('vhost_s3_read_bytes_total', { export: disk, device: 'blk' })).to.equal(5 * 4 * KiB);
    expect(s.has('vhost_s3_inflight_requests', { export: share, device: 'fs' })).to.equal(true);
    expect(s.sum('vhost_s3_cache_hits_total', { export: disk, cache: 'chunk' }) + s.sum('vhost_s3_cache_misses_total', { export: disk, cache: 'chunk' })).to.equal(5);
    expect(s.sum('vhost_s3_store_operations_total', { export: disk })).to.be.at.least(1);
  });
});
