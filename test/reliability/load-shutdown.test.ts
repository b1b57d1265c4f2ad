// Graceful shutdown under load: SIGTERM while requests wait on a slow store.
// - `vhost-s3 run` serves a share and an object image (--writethrough) on s3://, through the
//   fault proxy, which holds every PUT for 1.5–3 s. FSYNCs of written files and disk writes
//   are in flight (their PUTs held) when SIGTERM arrives: each one completes OK, the gateway
//   exits 0, and s3rver (asked directly) holds every byte.
// - A store that does not answer at all: the shutdown gives up after --shutdown-timeout,
//   says which export was still stopping, and exits 1.
import { expect } from 'chai';
import { mkdirSync, writeFileSync } from 'node:fs';

import { S3Store } from '../../src/backends/s3-store.js';
import { createImage } from '../../src/blk/image-admin.js';
import { ImageKeys } from '../../src/blk/image-format.js';
import { BlkStatus } from '../../src/blk/protocol.js';
import { BlkClient } from '../../src/frontend/blk-client.js';
import { FuseClient } from '../../src/frontend/fuse-client.js';
import { O_CREAT, O_WRONLY, S_IFREG } from '../../src/fuse/abi.js';
import { CliProcess, parseJsonLines, startRunServer as startRun } from '../support/cli.js';
import { FaultProxy, type SeenRequest } from '../support/fault-proxy.js';
import { startS3rver, type S3rver } from '../support/s3rver.js';
import { TmpDir, patternBytes } from '../support/tmp.js';

process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

const KiB = 1024;
const MiB = 1024 * KiB;
const BUCKET = 'drain';
const isPut = (r: SeenRequest): boolean => r.method === 'PUT';

describe('reliability: graceful shutdown drains requests in flight on a slow store', function () {
  this.timeout(90_000);
  let s3: S3rver;
  let proxy: FaultProxy;
  let direct: S3Store;
  let dir: TmpDir;
  let server: CliProcess | null = null;
  const clients: { close(): Promise<void> }[] = [];

  before(async () => {
    s3 = await startS3rver({ buckets: [BUCKET] });
    proxy = await FaultProxy.start(s3.port, { seed: 11 });
    direct = new S3Store({ bucket: BUCKET, endpoint: s3.endpoint, credentials: s3.credentials });
    dir = new TmpDir('vhost-s3-drain-');
  });
  afterEach(async function () {
    proxy.inject(null);
    for (const c of clients.splice(0)) await c.close().catch(() => undefined);
    if (this.currentTest?.state === 'failed' && server) console.log(server.describe());
    await server?.kill();
    server = null;
  });
  after(async () => {
    await direct?.close();
    await proxy?.close();
    await s3?.stop();
    dir?.remove();
  });

  it('SIGTERM while FSYNCs and disk writes wait for held PUTs: all complete OK, exit 0, every byte in s3rver', async () => {
    const CS = 256 * KiB;
    const keys = new ImageKeys('images/drain/');
    await createImage(direct, keys, 8 * MiB, CS);
    const file = dir.file('drain.json');
    const socks = { fs: dir.file('fs.sock'), disk: dir.file('disk.sock') };
    writeFileSync(file, JSON.stringify({
      defaults: { endpoint: proxy.endpoint },
      exports: [
        { type: 'fs', socket: socks.fs, bucket: `s3://${BUCKET}/share` },
        { type: 'blk', socket: socks.disk, image: `s3://${BUCKET}/images/drain`, writethrough: true },
      ],
    }));
    server = await startRun(file, { env: s3.env });
    const fc = await FuseClient.connect(socks.fs);
    clients.push(fc);
    await fc.init();
    const disk = await BlkClient.connect(socks.disk, { memorySize: 16 * MiB });
    clients.push(disk);

    // Four files written (buffered in the gateway), not yet stored.
    const files: { nodeid: number; fh: number; name: string; body: Uint8Array }[] = [];
    for (let i = 0; i < 4; i++) {
      const body = patternBytes(40 + i, 100 * KiB + i);
      const made = await fc.create(1, `f${i}`, O_CREAT | O_WRONLY, S_IFREG | 0o644);
      expect(await fc.write(made.entry.nodeid, made.fh, 0, body)).to.equal(body.length);
      files.push({ nodeid: made.entry.nodeid, fh: made.fh, name: `f${i}`, body });
    }
    // From now on every PUT waits 1.5–3 s at the proxy.
    proxy.inject('latency', { rate: 1, latencyMs: 1500, filter: isPut });
    const held0 = proxy.counts.latency;
    const fsyncs = files.map((f) => fc.fsync(f.nodeid, f.fh).then(() => 'ok', (e: Error) => e.message));
    const writes = [0, 1, 2, 3].map((i) => {
      const buf = disk.allocBuffer(64 * KiB);
      buf.bytes.set(patternBytes(90 + i, 64 * KiB));
      return disk.writeAsync(0, i * CS + 4 * KiB, buf);
    });
    // SIGTERM once the store holds PUTs of both exports (4 files + 4 chunks).
    while (proxy.counts.latency - held0 < 8) await new Promise((r) => setTimeout(r, 20));
    const exit = server.stop('SIGTERM', 30_000);
    expect(await Promise.all(fsyncs), 'FSYNCs in flight at SIGTERM').to.deep.equal(['ok', 'ok', 'ok', 'ok']);
    expect(await Promise.all(writes), 'disk writes in flight at SIGTERM').to.deep.equal([BlkStatus.Ok, BlkStatus.Ok, BlkStatus.Ok, BlkStatus.Ok]);
    const st = await exit;
    expect(st.code, server.describe()).to.equal(0);
    expect(server.logLines().some((l) => l.msg === 'shutting down')).to.equal(true);

    proxy.inject(null);
    for (const f of files) {
      const obj = await direct.get(`share/${f.name}`);
      expect(Buffer.from(obj.body).equals(Buffer.from(f.body)), `${f.name} in s3rver`).to.equal(true);
    }
    for (let i = 0; i < 4; i++) {
      const chunk = (await direct.get(keys.chunk(i))).body;
      expect(Buffer.from(chunk.subarray(4 * KiB, 68 * KiB)).equals(Buffer.from(patternBytes(90 + i, 64 * KiB))), `chunk ${i} in s3rver`).to.equal(true);
    }
  });

  it('a store that never answers: the shutdown gives up after --shutdown-timeout, names the export and exits 1', async () => {
    mkdirSync(dir.file('local'), { recursive: true });
    const file = dir.file('stuck.json');
    const socks = { fs: dir.file('stuck.sock'), local: dir.file('local.sock') };
    writeFileSync(file, JSON.stringify({
      exports: [
        { type: 'fs', socket: socks.fs, bucket: `s3://${BUCKET}/stuck`, endpoint: proxy.endpoint },
        { type: 'fs', socket: socks.local, bucket: `file:${dir.file('local')}` },
      ],
    }));
    server = await startRun(file, { env: s3.env, extra: ['--shutdown-timeout', '2'] });
    const fc = await FuseClient.connect(socks.fs);
    clients.push(fc);
    await fc.init();
    const made = await fc.create(1, 'never', O_CREAT | O_WRONLY, S_IFREG | 0o644);
    await fc.write(made.entry.nodeid, made.fh, 0, new Uint8Array(1000));
    proxy.inject('latency', { rate: 1, latencyMs: 120_000, filter: isPut });
    const held0 = proxy.counts.latency;
    void fc.fsync(made.entry.nodeid, made.fh).catch(() => undefined);
    while (proxy.counts.latency === held0) await new Promise((r) => setTimeout(r, 20));
    const st = await server.stop('SIGTERM', 20_000);
    expect(st.code, server.describe()).to.equal(1);
    expect(st.ms, 'bounded by --shutdown-timeout').to.be.below(15_000);
    const lines = server.stderr.trim().split('\n');
    const last = lines.pop()!;
    expect(last).to.match(/^vhost-s3: shutdown timed out after 2 s; still stopping: fs .*stuck\.sock$/);
    const timedOut = parseJsonLines(lines.join('\n')).find((l) => l.msg === 'shutdown timed out: exiting with requests or writes still pending');
    expect(timedOut?.exports).to.deep.equal([`fs ${socks.fs}`]);
  });
});
