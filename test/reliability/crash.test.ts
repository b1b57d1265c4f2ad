// "The gateway crashes": kill -9 of the gateway in the middle of a write workload with
// periodic FLUSH/fsync, then a restart, several times over, on s3rver and on a `file:` store.
// - blk: every byte a completed FLUSH acknowledged before the kill is in the store
//   (checked chunk by chunk, straight from the store); the restarted gateway takes the
//   dead writer's lease over by itself (src/blk/image-lease.ts) and serves the image.
// - fs: every file fsync'ed before the kill has its content; a file being written (also a
//   multipart upload cut off by the kill) is either absent or complete, never half-written,
//   and nothing else shows up in the bucket (no temporary files of the local store, no
//   parts of unfinished uploads); the restarted gateway lists and reads it all.
// Figures (crashes survived, FLUSH/fsync acknowledged, bytes verified) are printed;
// VHOST_S3_RELIABILITY_SCALE=<n> crashes n times as often.
import { expect } from 'chai';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

import { listKeys } from '../../src/backends/object-store.js';
import { createImage } from '../../src/blk/image-admin.js';
import { ImageKeys } from '../../src/blk/image-format.js';
import type { LeaseRecord } from '../../src/blk/image-lease.js';
import { BlkStatus } from '../../src/blk/protocol.js';
import { BlkClient } from '../../src/frontend/blk-client.js';
import { FuseClient } from '../../src/frontend/fuse-client.js';
import { O_CREAT, O_RDWR } from '../../src/fuse/abi.js';
import { ErrnoError, errnoOf } from '../../src/util/errors.js';
import { CliProcess, startBlkServer } from '../support/cli.js';
import { startBackend, type Backend, type BackendKind } from '../support/mount.js';
import { TmpDir, patternBytes } from '../support/tmp.js';
import { allocBlkBuffers, DiskModel, MAX_IO, readStoredChunk, readWholeDisk, Rng } from './blk-workload.js';
import { BIG_FILE, FS_MAX_IO, FsModel, newFsTally, readBack, ROOT, writeAll, type FsWorkload } from './fs-workload.js';
import { report, scaled, seedOffset } from './report.js';

process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

const KiB = 1024;
const MiB = 1024 * KiB;
const SECTOR = 512;

async function readLease(be: Backend, keys: ImageKeys): Promise<LeaseRecord | null> {
  try {
    return JSON.parse(new TextDecoder().decode((await be.store.get(keys.lease)).body)) as LeaseRecord;
  } catch (err) {
    if (errnoOf(err) === 2) return null;
    throw err;
  }
}

/** Temporary files of a local store (names starting with 't' inside its tree) left by a killed writer. */
function tempFiles(dir: string): number {
  let n = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    if (e.isDirectory()) n += tempFiles(join(dir, e.name));
    else if (e.name.startsWith('t')) n++;
  }
  return n;
}

function fileStoreRoot(be: Backend): string {
  return be.locator.slice('file:'.length, be.locator.length - be.prefix.length);
}

for (const kind of ['s3', 'file'] as BackendKind[]) {
  describe(`reliability: kill -9 of the gateway during writes (${kind === 's3' ? 's3rver' : 'file: store'})`, function () {
    this.timeout(180_000);
    let dir: TmpDir;
    const procs: CliProcess[] = [];
    const cleanups: (() => Promise<void>)[] = [];
    beforeEach(() => {
      dir = new TmpDir('vhost-s3-crash-');
    });
    afterEach(async function () {
      const failed = this.currentTest?.state === 'failed';
      for (const c of cleanups.splice(0).reverse()) await c().catch(() => undefined);
      for (const p of procs.splice(0)) {
        if (failed) console.log(p.describe());
        await p.kill();
      }
      dir.remove();
    });

    it('blk: every byte a completed FLUSH acknowledged survives; the restarted gateway takes the dead writer\'s lease over and serves the image', async () => {
      const be = await startBackend(kind, 'images/crash');
      cleanups.push(() => be.close());
      const SIZE = 8 * MiB;
      const CS = 64 * KiB;
      const keys = new ImageKeys(be.prefix);
      await createImage(be.store, keys, SIZE, CS);
      const rng = new Rng((kind === 's3' ? 7 : 8) + seedOffset());
      /** What the client was told is written (acknowledged writes). */
      const model = new DiskModel(SIZE);
      /** The disk as of the last completed FLUSH, and the sectors written (or in flight) since. */
      let durable = model.bytes.slice();
      const since = new Uint8Array(SIZE / SECTOR);
      const crashes = scaled(2);
      const t = { flushes: 0, writes: 0, bytesVerified: 0, lostUnflushed: 0, leaseTakeovers: 0 };
      let seed = 1;
      let deadPid = 0;

      for (let i = 0; i <= crashes; i++) {
        const g = await startBlkServer({ socket: dir.file(`blk${i}.sock`), image: be.locator, env: be.env, logLevel: 'info', extra: ['--writeback-delay', '200'] });
        procs.push(g);
        if (i > 0) {
          // The killed writer's lease was still fresh: the restart took it over without --force.
          expect(g.stderr, g.describe()).to.include('taking over the image lease of a writer that died on this host');
          expect((await readLease(be, keys))!.pid, 'the lease names the new writer').to.equal(g.pid);
          t.leaseTakeovers++;
        }
        const client = await BlkClient.connect(dir.file(`blk${i}.sock`), { queues: 1, memorySize: 4 * MiB });
        cleanups.push(() => client.close());
        if (i === crashes) {
          // The last start only reads back: everything stored is what the model says.
          t.bytesVerified += await readWholeDisk(client, model, client.allocBuffer(MAX_IO));
          expect((await g.stop('SIGTERM')).code, g.describe()).to.equal(0);
          expect(await readLease(be, keys), 'a clean stop releases the lease').to.equal(null);
          break;
        }
        const bufs = allocBlkBuffers(client, 6, 0);
        const stripe = Math.floor(SIZE / bufs.writes.length / SECTOR) * SECTOR;
        /** A batch of writes (disjoint stripes) then a FLUSH; the model follows what completes OK. */
        const round = async (): Promise<void> => {
          await Promise.all(bufs.writes.map(async (b, k) => {
            const len = rng.int(1, MAX_IO / SECTOR + 1) * SECTOR;
            const off = k * stripe + rng.int(0, (stripe - len) / SECTOR + 1) * SECTOR;
            const data = patternBytes(seed++, len);
            b.bytes.set(data);
            since.fill(1, off / SECTOR, (off + len) / SECTOR);
            const st = await client.writeAsync(0, off, { ...b, bytes: b.bytes.subarray(0, len) });
            if (st === BlkStatus.Ok) {
              model.apply(off, data);
              t.writes++;
            }
          }));
          if (client.disconnected) return;
          const snapshot = model.bytes.slice();
          if ((await client.flushAsync(0)) === BlkStatus.Ok) {
            durable = snapshot;
            since.fill(0);
            t.flushes++;
          }
        };
        for (let r = rng.int(1, 4); r > 0; r--) await round();
        // The kill lands somewhere in a round: during the writes, the FLUSH or the uploads.
        const last = round();
        await sleep(rng.int(0, 60));
        g.proc.kill('SIGKILL');
        await g.exited;
        await last;
        deadPid = g.pid;
        expect((await readLease(be, keys))?.pid, 'the killed writer left its lease behind').to.equal(deadPid);

        // Straight from the store: what the last completed FLUSH covered is there; the rest may or may not be.
        const stored = new Uint8Array(SIZE);
        for (let c = 0; c < SIZE / CS; c++) await readStoredChunk(be.store, keys, c, stored.subarray(c * CS, (c + 1) * CS));
        const want = new DiskModel(SIZE);
        want.apply(0, durable);
        for (let s = 0; s < since.length; s++) if (since[s]) want.forget(s * SECTOR, SECTOR);
        t.bytesVerified += want.check(0, stored, `image after kill -9 #${i + 1}`);
        for (let s = 0; s < since.length; s++) {
          if (since[s] && !Buffer.from(stored.subarray(s * SECTOR, (s + 1) * SECTOR)).equals(Buffer.from(model.bytes.subarray(s * SECTOR, (s + 1) * SECTOR)))) t.lostUnflushed += SECTOR;
        }
        // From here on the disk is what the store holds.
        model.apply(0, stored);
        durable = stored.slice();
        since.fill(0);
      }
      report(`blk crashes (${kind})`, [{ store: kind, crashes, survived: crashes, ...t }]);
      expect(t.flushes).to.be.above(0);
    });

    it('fs: files fsync\'ed before the kill have their content; files being written are absent or complete; nothing half-written is visible', async () => {
      const be = await startBackend(kind, 'fs');
      cleanups.push(() => be.close());
      const rng = new Rng((kind === 's3' ? 17 : 18) + seedOffset());
      /** Name → content as of its last completed fsync (or as found in the store after a crash). */
      const durable = new Map<string, Uint8Array>();
      /** Name → content written since, not yet fsync'ed: after a crash the file holds this or its durable content (or is absent when it has none). */
      const pending = new Map<string, Uint8Array>();
      const crashes = scaled(2);
      const t = { fsyncs: 0, bytesVerified: 0, bigFilesCut: 0, tempFilesLeft: 0 };
      let seed = 5000;

      async function start(i: number): Promise<{ proc: CliProcess; client: FuseClient }> {
        const proc = new CliProcess(['fs', '--socket', dir.file(`fs${i}.sock`), '--bucket', be.locator, '--log-level', 'warn', '--attr-timeout', '0', '--list-timeout', '0'], { env: be.env });
        procs.push(proc);
        await proc.waitFor('the QEMU arguments on stdout', (out) => out.includes('guest: mount'));
        const client = await FuseClient.connect(dir.file(`fs${i}.sock`), { requestQueues: 1, maxIo: 2 * FS_MAX_IO });
        cleanups.push(() => client.close());
        await client.init();
        return { proc, client };
      }

      for (let i = 0; i <= crashes; i++) {
        const { proc, client } = await start(i);
        const w: FsWorkload = { client, model: new FsModel(), rng, tally: newFsTally(), store: be.store, prefix: be.prefix };
        if (i === crashes) {
          // The last start only reads back: the listing and every file are what the store kept.
          for (const [name, data] of durable) w.model.files.set(name, data);
          const names = (await client.listdir(ROOT)).map((d) => d.name).filter((n) => n !== '.' && n !== '..');
          expect(names.sort()).to.deep.equal([...durable.keys()].sort());
          for (const name of durable.keys()) await readBack(w, name);
          t.bytesVerified += w.tally.bytesVerified;
          expect((await proc.stop('SIGTERM')).code, proc.describe()).to.equal(0);
          break;
        }
        /** Writes `data` as the new content of `name` (created or truncated-and-rewritten); fsync'ed when `sync`. */
        const writeFile = async (name: string, data: Uint8Array, sync: boolean): Promise<{ nodeid: number; fh: number }> => {
          let nodeid: number;
          let fh: number;
          if (durable.has(name) || pending.has(name)) {
            nodeid = (await client.lookup(ROOT, name)).nodeid;
            fh = (await client.open(nodeid, O_RDWR)).fh;
            await client.setattr(nodeid, { size: 0, fh });
          } else {
            const c = await client.create(ROOT, name, O_RDWR | O_CREAT, 0o644);
            nodeid = c.entry.nodeid;
            fh = c.fh;
          }
          pending.set(name, data);
          await writeAll(w, nodeid, fh, 0, data);
          if (sync) {
            await client.fsync(nodeid, fh);
            durable.set(name, data);
            pending.delete(name);
            t.fsyncs++;
          }
          return { nodeid, fh };
        };
        for (let r = rng.int(2, 5); r > 0; r--) {
          const name = `c${i}-f${r}`;
          const h = await writeFile(name, patternBytes(seed++, rng.int(1, 300) * KiB + rng.int(0, KiB)), true);
          await client.release(h.nodeid, h.fh);
        }
        // An fsync'ed file rewritten without fsync (kept open), and a big file whose fsync (a multipart upload) the kill cuts off.
        const names = [...durable.keys()];
        const victim = names[rng.int(0, names.length)]!;
        await writeFile(victim, patternBytes(seed++, rng.int(1, 200) * KiB), false);
        const big = await writeFile(`c${i}-big`, patternBytes(seed++, BIG_FILE), false);
        // Requests the dead gateway never answered fail with ENOTCONN (our frontend, like Linux).
        const bigSync = client.fsync(big.nodeid, big.fh).then(() => true, (err: unknown) => {
          expect(err instanceof ErrnoError ? err.code : err, 'fsync cut off by the kill').to.equal('ENOTCONN');
          return false;
        });
        await sleep(rng.int(20, 400));
        proc.proc.kill('SIGKILL');
        await proc.exited;
        if (await bigSync) {
          durable.set(`c${i}-big`, pending.get(`c${i}-big`)!);
          pending.delete(`c${i}-big`);
        } else t.bigFilesCut++;

        // Straight from the store: exactly the expected names, fsync'ed content intact, the rest absent or complete.
        const keys: string[] = [];
        for await (const k of listKeys(be.store, be.prefix)) keys.push(k.slice(be.prefix.length));
        const expected = new Set([...durable.keys(), ...pending.keys()]);
        for (const k of keys) expect(expected.has(k), `unexpected key ${k} in the bucket after kill -9`).to.equal(true);
        for (const name of expected) {
          const got = keys.includes(name) ? (await be.store.get(be.prefix + name)).body : null;
          const candidates = [durable.get(name), pending.get(name)].filter((d): d is Uint8Array => d !== undefined);
          if (!durable.has(name) && got === null) continue; // never fsync'ed, never stored: absent is right
          expect(got, `${name} (fsync'ed before the kill) is in the store`).to.not.equal(null);
          const match = candidates.find((c) => Buffer.from(c).equals(Buffer.from(got!)));
          expect(match, `${name}: ${got!.length} bytes in the store, neither what was fsync'ed nor the complete rewrite`).to.not.equal(undefined);
          t.bytesVerified += got!.length;
          durable.set(name, got!);
        }
        pending.clear();
        for (const name of [...durable.keys()]) if (!keys.includes(name)) durable.delete(name);
        if (kind === 'file') t.tempFilesLeft += tempFiles(fileStoreRoot(be));
      }
      report(`fs crashes (${kind})`, [{ store: kind, crashes, survived: crashes, ...t }]);
    });
  });
}
