// "The store fails": the gateway as a child process talks to s3rver through the fault
// proxy (test/support/fault-proxy.ts), which injects one class of fault at a time — 500,
// 503 SlowDown, latency, connections reset mid-body, truncated bodies, the store down
// (connections refused) — while a verifying workload runs:
// - blk: an object image on s3:// served by `vhost-s3 blk`, driven by our frontend;
// - fs: `vhost-s3 fs`, driven by our FUSE client.
// The gateway must retry within its budget and stay up; every request is answered OK or
// with an error (IOERR / EIO), never a wrong success: what a completed FLUSH/fsync
// acknowledged is checked in s3rver directly (not through the proxy) right away, reads
// are compared with the model, and at the end a fresh gateway reads everything back.
// Figures per class (faults injected, requests answered OK/with an error, bytes
// verified) are printed; VHOST_S3_RELIABILITY_SCALE=<n> runs n times as many rounds.
import { expect } from 'chai';
import { createHash } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';

import { listKeys } from '../../src/backends/object-store.js';
import { S3Store } from '../../src/backends/s3-store.js';
import { createImage } from '../../src/blk/image-admin.js';
import { ImageKeys } from '../../src/blk/image-format.js';
import { BlkClient } from '../../src/frontend/blk-client.js';
import { FuseClient } from '../../src/frontend/fuse-client.js';
import { CliProcess, startBlkServer } from '../support/cli.js';
import { FAULT_CLASSES, FaultProxy, type FaultClass } from '../support/fault-proxy.js';
import { mountPrereqProblem, sh, startMount, type Mount } from '../support/mount.js';
import { startS3rver, type S3rver } from '../support/s3rver.js';
import { TmpDir, patternBytes } from '../support/tmp.js';
import { allocBlkBuffers, blkRound, DiskModel, newBlkTally, readWholeDisk, Rng, verifyStoredChunks } from './blk-workload.js';
import { FS_MAX_IO, FsModel, fsRound, newFsTally, readBack, settleAndVerify, type FsWorkload } from './fs-workload.js';
import { report, scaled, seedOffset, type Row } from './report.js';

process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

const KiB = 1024;
const MiB = 1024 * KiB;
const BUCKET = 'bkt';

/** How each class is injected: a fraction of requests (the SDK's retry token bucket drains under much more). */
export const FAULT_PLANS: Record<Exclude<FaultClass, 'down'>, { rate: number; latencyMs?: number }> = {
  error500: { rate: 0.2 },
  slowdown503: { rate: 0.08 },
  latency: { rate: 0.3, latencyMs: 30 },
  reset: { rate: 0.15 },
  truncate: { rate: 0.2 },
};
/** How long the store is down in the 'down' class: longer than the SDK's retries take, so requests fail. */
export const OUTAGE_MS = 2000;

describe('reliability: the store fails (fault proxy between the gateway and s3rver)', function () {
  this.timeout(180_000);
  let s3: S3rver;
  let proxy: FaultProxy;
  let direct: S3Store;
  let dir: TmpDir;

  before(async () => {
    s3 = await startS3rver({ buckets: [BUCKET] });
    proxy = await FaultProxy.start(s3.port, { seed: 42 + seedOffset() });
    direct = new S3Store({ bucket: BUCKET, endpoint: s3.endpoint, credentials: s3.credentials });
    dir = new TmpDir('vhost-s3-faults-');
  });
  after(async () => {
    await direct?.close();
    await proxy?.close();
    await s3?.stop();
    dir?.remove();
  });

  describe('blk: an object image on s3:// under every fault class', () => {
    const SIZE = 8 * MiB;
    const CS = 64 * KiB;
    const gateways: CliProcess[] = [];
    const clients: BlkClient[] = [];
    afterEach(async function () {
      proxy.inject(null);
      const failed = this.currentTest?.state === 'failed';
      for (const c of clients.splice(0)) await c.close().catch(() => undefined);
      for (const g of gateways.splice(0)) {
        if (failed) console.log(g.describe());
        await g.kill();
      }
    });

    /**
     * A fresh image served through the proxy, one fault class after the other on the same
     * gateway; at the end a clean stop and a fresh read-only gateway straight on s3rver
     * reads the whole disk back.
     */
    async function blkUnderFaults(name: string, title: string, extra: readonly string[], classes: readonly FaultClass[]): Promise<void> {
      const keys = new ImageKeys(`images/${name}/`);
      await createImage(direct, keys, SIZE, CS);
      const env = { ...s3.env, VHOST_S3_ENDPOINT: proxy.endpoint };
      const g = await startBlkServer({
        socket: dir.file(`${name}.sock`), image: `s3://${BUCKET}/images/${name}`, env, logLevel: 'warn',
        // A small cache so that reads go to the store; a short write-back delay so uploads also happen between FLUSHes.
        // 5 attempts (waits of at most 750 ms in all): the 2 s outage outlasts the retries.
        extra: ['--cache-size', '256K', '--writeback-delay', '300', '--readahead', '1', '--s3-max-attempts', '5', ...extra],
      });
      gateways.push(g);
      const client = await BlkClient.connect(dir.file(`${name}.sock`), { queues: 1, memorySize: 8 * MiB });
      clients.push(client);
      const bufs = allocBlkBuffers(client, 8, 6);
      const model = new DiskModel(SIZE);
      const rounds = scaled(2);
      const rows: Row[] = [];
      const pending = new Set<number>();
      for (const [k, cls] of classes.entries()) {
        const tally = newBlkTally();
        const before = { injected: proxy.counts[cls], requests: proxy.requests, t: Date.now() };
        const w = {
          client, model, chunkSize: CS, rng: new Rng(100 + k + seedOffset()), tally, writethrough: extra.includes('--writethrough'),
          verifyStore: (chunks: Iterable<number>) => verifyStoredChunks(direct, keys, CS, model, chunks),
        };
        if (cls === 'down') {
          // An outage (more with a scale); the first round starts inside it, so its FLUSH
          // (with --writethrough: its writes) and uncached reads must fail.
          for (let o = 0; o < scaled(1); o++) {
            const outage = proxy.down(OUTAGE_MS);
            const failed = tally.flushesFailed + tally.writesFailed;
            await blkRound(w, bufs, pending);
            expect(tally.flushesFailed + tally.writesFailed, 'requests during the outage are answered IOERR').to.be.above(failed);
            await outage;
            for (let r = 0; r < rounds - 1; r++) await blkRound(w, bufs, pending);
          }
        } else {
          proxy.inject(cls, FAULT_PLANS[cls]);
          for (let r = 0; r < rounds; r++) await blkRound(w, bufs, pending);
          proxy.inject(null);
        }
        expect(g.running, `the gateway is up after ${cls}\n${g.describe()}`).to.equal(true);
        // Without faults, a FLUSH stores everything the client was told is written (also what failed to upload before).
        expect(await client.flushAsync(0), `FLUSH after ${cls}`).to.equal(0);
        tally.bytesVerified += await verifyStoredChunks(direct, keys, CS, model);
        pending.clear();
        const injected = proxy.counts[cls] - before.injected;
        if (cls !== 'latency') expect(injected, `${cls} faults injected`).to.be.above(0);
        rows.push({ class: cls, injected, survived: injected, requests: proxy.requests - before.requests, ...tally, ms: Date.now() - before.t });
      }
      report(title, rows);

      expect((await g.stop('SIGTERM')).code, g.describe()).to.equal(0);
      const fresh = await startBlkServer({ socket: dir.file(`${name}-fresh.sock`), image: `s3://${BUCKET}/images/${name}`, env: s3.env, readonly: true, logLevel: 'warn' });
      gateways.push(fresh);
      const c2 = await BlkClient.connect(dir.file(`${name}-fresh.sock`), { queues: 1, memorySize: 4 * MiB });
      clients.push(c2);
      // (Sectors of writes answered IOERR are not known: their data may or may not be stored.)
      expect(await readWholeDisk(c2, model, c2.allocBuffer(128 * KiB))).to.equal(model.knownBytes);
    }

    it('retries within its budget, stays up, answers every request OK or IOERR, and what FLUSH acknowledged is in s3rver byte for byte', async () => {
      await blkUnderFaults('faults', 'blk (object image on s3://, 64 KiB chunks) under store faults', [], FAULT_CLASSES);
    });

    it('--writethrough: a write answered OK is in s3rver without a FLUSH; one whose upload failed is answered IOERR', async () => {
      await blkUnderFaults('writethrough', 'blk --writethrough under store faults', ['--writethrough'], ['error500', 'reset', 'down']);
    });
  });
  describe('fs: vhost-s3 fs on s3:// under every fault class', () => {
    const procs: CliProcess[] = [];
    const clients: FuseClient[] = [];
    afterEach(async function () {
      proxy.inject(null);
      const failed = this.currentTest?.state === 'failed';
      for (const c of clients.splice(0)) await c.close().catch(() => undefined);
      for (const p of procs.splice(0)) {
        if (failed) console.log(p.describe());
        await p.kill();
      }
    });

    /** `vhost-s3 fs` on s3://bkt/fs with no caching of names, attributes or listings (every lookup and listing asks the store). */
    async function startFs(sock: string, endpoint: string): Promise<{ proc: CliProcess; client: FuseClient }> {
      const proc = new CliProcess(
        ['fs', '--socket', sock, '--bucket', `s3://${BUCKET}/fs`, '--log-level', 'warn', '--attr-timeout', '0', '--entry-timeout', '0',
          '--negative-timeout', '0', '--list-timeout', '0', '--cache-size', '1M', '--s3-max-attempts', '5'],
        { env: { ...s3.env, VHOST_S3_ENDPOINT: endpoint } },
      );
      procs.push(proc);
      await proc.waitFor('the QEMU arguments on stdout', (out) => out.includes('guest: mount'));
      const client = await FuseClient.connect(sock, { requestQueues: 1, maxIo: 2 * FS_MAX_IO });
      clients.push(client);
      await client.init();
      return { proc, client };
    }

    it('a capability probe object left behind at startup (its DELETE failed) is not a file', async () => {
      // The gateway writes and deletes `fs/.vhost-s3-probe-<hex>` when it starts; a store
      // fault on the DELETE (or a kill -9 between the two) leaves it in the bucket.
      proxy.inject('error500', { rate: 1, filter: (r) => r.method === 'DELETE' && r.url.includes('vhost-s3-probe') });
      const { client } = await startFs(dir.file('probe.sock'), proxy.endpoint);
      proxy.inject(null);
      const left: string[] = [];
      for await (const k of listKeys(direct, 'fs/')) if (k.includes('.vhost-s3-probe-')) left.push(k);
      expect(left, 'the probe object is still in the bucket').to.have.length(1);
      const names = (await client.listdir(1)).map((d) => d.name);
      expect(names.filter((n) => n.startsWith('.vhost-s3-probe-')), 'listed as a file').to.deep.equal([]);
      await direct.delete(left[0]!);
    });

    it('retries within its budget, stays up, answers every request or EIO, and what fsync acknowledged is in s3rver byte for byte', async () => {
      const { proc, client } = await startFs(dir.file('fs.sock'), proxy.endpoint);
      const model = new FsModel();
      const rounds = scaled(3);
      const rows: Row[] = [];
      for (const [k, cls] of FAULT_CLASSES.entries()) {
        const tally = newFsTally();
        const before = { injected: proxy.counts[cls], requests: proxy.requests, t: Date.now() };
        const w: FsWorkload = { client, model, rng: new Rng(200 + k + seedOffset()), tally, store: direct, prefix: 'fs/' };
        if (cls === 'down') {
          for (let o = 0; o < scaled(1); o++) {
            const outage = proxy.down(OUTAGE_MS);
            const failed = tally.fsyncsFailed + tally.opsFailed;
            await fsRound(w, `${cls}${o}-0`);
            expect(tally.fsyncsFailed + tally.opsFailed, 'requests during the outage are answered EIO').to.be.above(failed);
            await outage;
            for (let r = 1; r < rounds; r++) await fsRound(w, `${cls}${o}-${r}`);
          }
        } else {
          proxy.inject(cls, FAULT_PLANS[cls]);
          // A multipart upload under resets (parts cut off on their way, answers lost: CompleteMultipartUpload repeated).
          for (let r = 0; r < rounds; r++) await fsRound(w, `${cls}-${r}`, 2, 2, r === 0 && cls === 'reset');
          proxy.inject(null);
        }
        expect(proc.running, `the gateway is up after ${cls}\n${proc.describe()}`).to.equal(true);
        await settleAndVerify(w);
        const injected = proxy.counts[cls] - before.injected;
        if (cls !== 'latency') expect(injected, `${cls} faults injected`).to.be.above(0);
        rows.push({ class: cls, injected, survived: injected, requests: proxy.requests - before.requests, ...tally, ms: Date.now() - before.t });
      }
      report('fs (vhost-s3 fs on s3://) under store faults', rows);

      // A clean stop, then a fresh gateway straight on s3rver reads every file back.
      expect((await proc.stop('SIGTERM')).code, proc.describe()).to.equal(0);
      const fresh = await startFs(dir.file('fresh.sock'), s3.endpoint);
      const check: FsWorkload = { client: fresh.client, model, rng: new Rng(1), tally: newFsTally(), store: direct, prefix: 'fs/' };
      const names = (await fresh.client.listdir(1)).map((d) => d.name).filter((n) => n !== '.' && n !== '..');
      expect(names.sort()).to.deep.equal([...model.files.keys()].sort());
      for (const name of model.known()) await readBack(check, name);
    });
  });
  describe('mount: ordinary tools on vhost-s3 mount under store faults', () => {
    let m: Mount | null = null;
    afterEach(async function () {
      proxy.inject(null);
      if (m && this.currentTest?.state === 'failed') console.log(m.describe());
      await m?.stop();
      m = null;
    });

    it('dd conv=fsync, ls and cat either succeed with the right bytes or fail with an I/O error', async function () {
      const problem = mountPrereqProblem();
      if (problem) this.skip();
      m = await startMount({ bucket: `s3://${BUCKET}/mnt`, env: { ...s3.env, VHOST_S3_ENDPOINT: proxy.endpoint }, args: ['--attr-timeout', '0', '--entry-timeout', '0', '--list-timeout', '0'], logLevel: 'warn' });
      const rows: Row[] = [];
      const synced = new Map<string, Buffer>();
      let n = 0;
      for (const cls of ['error500', 'reset', 'truncate'] as const) {
        const before = proxy.counts[cls];
        const t = { ddOk: 0, ddIoError: 0, lsOk: 0, lsIoError: 0, catOk: 0, catIoError: 0, bytesVerified: 0 };
        proxy.inject(cls, { rate: 0.3 });
        for (let i = 0; i < scaled(4); i++) {
          const name = `f${n++}`;
          const data = Buffer.from(patternBytes(7000 + n, 100 * 1024 + n * 517));
          const src = dir.file(`${name}.src`);
          writeFileSync(src, data);
          const dd = await sh(`dd if="${src}" of="${m.p(name)}" bs=64k conv=fsync status=none`);
          if (dd.code === 0) {
            t.ddOk++;
            synced.set(name, data);
            // fsync answered OK: the object is in s3rver now.
            expect(Buffer.from((await direct.get(`mnt/${name}`)).body).equals(data), `${name} in s3rver after dd conv=fsync`).to.equal(true);
            t.bytesVerified += data.length;
          } else {
            expect(dd.stderr, `dd of ${name}`).to.match(/Input\/output error/);
            t.ddIoError++;
          }
          const ls = await sh(`ls -1 "${m.path}"`);
          if (ls.code === 0) {
            t.lsOk++;
            const names = ls.stdout.split('\n').filter(Boolean);
            for (const k of synced.keys()) expect(names, 'ls lists every file fsync\'ed').to.include(k);
          } else {
            expect(ls.stderr, 'ls').to.match(/Input\/output error/);
            t.lsIoError++;
          }
          const [k, want] = [...synced.entries()][i % synced.size] ?? [];
          if (k !== undefined) {
            const cat = await sh(`cat "${m.p(k)}" | md5sum`);
            if (cat.code === 0) {
              expect(cat.stdout.split(' ')[0], `cat ${k}`).to.equal(createHash('md5').update(want!).digest('hex'));
              t.catOk++;
              t.bytesVerified += want!.length;
            } else {
              expect(cat.stderr, `cat ${k}`).to.match(/Input\/output error/);
              t.catIoError++;
            }
          }
        }
        proxy.inject(null);
        expect(m.proc.running, `the mount's gateway is up after ${cls}`).to.equal(true);
        rows.push({ class: cls, injected: proxy.counts[cls] - before, ...t });
      }
      report('mount (ordinary tools) under store faults', rows);
      // Without faults, everything dd was told is stored reads back. (Asynchronously: the
      // proxy the mount's gateway talks to runs on this event loop — a synchronous read
      // of the mount would deadlock.)
      for (const [k, want] of synced) expect((await readFile(m.p(k))).equals(want), k).to.equal(true);
    });
  });
});
