// The single-writer lease of object-backed images, on a store with conditional writes
// (file: local store; memory for the race) and on one without (s3rver ignores
// If-None-Match/If-Match, so the lease is written and read back after a pause).
// Writers are the real gateway (`vhost-s3 blk` as a child process) except where a
// writer must be cut off from the store, which needs an in-process gateway.
import { expect } from 'chai';
import { hostname } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';

import { BlkExport } from '../../src/blk/export.js';
import { createImage } from '../../src/blk/image-admin.js';
import { ImageKeys } from '../../src/blk/image-format.js';
import { ImageLease, type LeaseRecord } from '../../src/blk/image-lease.js';
import { ObjectImage } from '../../src/blk/object-image.js';
import { BlkStatus } from '../../src/blk/protocol.js';
import { FileStore } from '../../src/backends/file-store.js';
import { MemoryStore } from '../../src/backends/memory-store.js';
import { StoreError, type ObjectStore } from '../../src/backends/object-store.js';
import { BlkClient } from '../../src/frontend/blk-client.js';
import { errnoOf } from '../../src/util/errors.js';
import { silentLogger } from '../../src/util/log.js';
import { explain, runCli, startBlkServer, type CliProcess, type CliResult } from '../support/cli.js';
import { startImageBackend, type ImageBackend } from '../support/image-backend.js';
import { TmpDir } from '../support/tmp.js';

process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

const KiB = 1024;
const MiB = 1024 * KiB;
const CS = 64 * KiB;
const SIZE = 16 * MiB;

/** The error line of a failed command: exactly one line on stderr that is not a JSON log line. */
function errorLine(r: CliResult): string {
  const lines = r.stderr.split('\n').filter((l) => l !== '' && !l.startsWith('{'));
  expect(lines, `one error line on stderr\n${explain(r)}`).to.have.length(1);
  expect(lines[0]).to.match(/^vhost-s3: \S/);
  expect(r.stderr, 'no stack trace').not.to.match(/\n\s+at .*\.js:\d+/);
  return lines[0]!;
}

async function readLease(store: ObjectStore, keys: ImageKeys): Promise<LeaseRecord | null> {
  try {
    return JSON.parse(new TextDecoder().decode((await store.get(keys.lease)).body)) as LeaseRecord;
  } catch (err) {
    if (errnoOf(err) === 2) return null;
    throw err;
  }
}

function staleRecord(): Uint8Array {
  const r: LeaseRecord = { holder: 'crashed-writer', host: 'old-host', pid: 4242, heartbeat: new Date(Date.now() - 3600_000).toISOString(), ttlMs: 30_000 };
  return new TextEncoder().encode(JSON.stringify(r) + '\n');
}

function bytes(seed: number, n: number): Uint8Array {
  return Uint8Array.from({ length: n }, (_, i) => ((i * 131 + seed * 29) % 251) + 1);
}

/** A store whose lease key can be cut off (as if the writer lost its network), everything else passing through. */
function partitionable(inner: ObjectStore, leaseKey: string): { store: ObjectStore; cut: (on: boolean) => void } {
  let cut = false;
  const store = new Proxy(inner, {
    get(target, prop, receiver) {
      // The image closes its store; this one is shared with the test.
      if (prop === 'close') return () => Promise.resolve();
      const v = Reflect.get(target, prop, receiver) as unknown;
      if (typeof v !== 'function') return v;
      return (...args: unknown[]) => {
        if (cut && args[0] === leaseKey) return Promise.reject(new StoreError('ETIMEDOUT', `test: ${String(prop)} ${leaseKey}: cut off`));
        return (v as (...a: unknown[]) => unknown).apply(target, args);
      };
    },
  });
  return { store, cut: (on) => void (cut = on) };
}

for (const kind of ['file', 's3'] as const) {
  describe(`image lease over ${kind === 's3' ? 's3:// (s3rver: no conditional writes)' : 'file: (conditional writes)'}`, function () {
    this.timeout(60_000);
    let be: ImageBackend;
    let dir: TmpDir;
    let n = 0;
    const gateways: CliProcess[] = [];
    const cleanups: (() => Promise<void>)[] = [];

    before(async () => {
      be = await startImageBackend(kind, 'vhost-s3-lease-');
    });
    after(async () => {
      await be?.stop();
    });
    beforeEach(() => {
      dir = new TmpDir('vhost-s3-lease-sock-');
    });
    afterEach(async function () {
      const failed = this.currentTest?.state === 'failed';
      for (const c of cleanups.splice(0).reverse()) await c().catch(() => undefined);
      for (const g of gateways.splice(0)) {
        if (failed) console.log(g.describe());
        await g.kill();
      }
      dir.remove();
    });

    async function newImage(): Promise<{ keys: ImageKeys; locator: string }> {
      const name = `lease${++n}`;
      await createImage(be.store, be.keys(name), SIZE, CS);
      return { keys: be.keys(name), locator: be.locator(name) };
    }

    async function gateway(locator: string, extra: string[] = []): Promise<CliProcess> {
      const g = await startBlkServer({ socket: dir.file(`g${gateways.length}.sock`), image: locator, env: be.env, extra });
      gateways.push(g);
      return g;
    }

    function blk(locator: string, extra: string[] = []): Promise<CliResult> {
      return runCli(['blk', '--socket', dir.file('refused.sock'), '--image', locator, ...extra], { env: be.env, timeoutMs: 30_000 });
    }

    it('a second writable open is refused, naming the holder (host and pid), exit 2 with one line; --force does not take a fresh lease', async () => {
      const img = await newImage();
      const a = await gateway(img.locator);
      const lease = await readLease(be.store, img.keys);
      expect(lease, 'the writer holds a lease').to.not.equal(null);
      expect(lease!.pid).to.equal(a.pid);
      expect(lease!.host).to.equal(hostname());
      for (const extra of [[], ['--force']]) {
        const r = await blk(img.locator, extra);
        expect(r.code, explain(r)).to.equal(2);
        const line = errorLine(r);
        expect(line).to.include(`in use by ${hostname()} pid ${a.pid}`);
        expect(line).to.match(/only one writer/);
        expect(r.stdout).to.equal('');
      }
      expect(a.running, 'the first writer keeps running').to.equal(true);
      expect((await readLease(be.store, img.keys))!.holder).to.equal(lease!.holder);
    });

    it('a read-only open is allowed while a writer holds the lease', async () => {
      const img = await newImage();
      const a = await gateway(img.locator);
      const ro = await gateway(img.locator, ['--readonly']);
      const client = await BlkClient.connect(dir.file('g1.sock'));
      cleanups.push(() => client.close());
      expect(client.readOnly).to.equal(true);
      expect(await client.readAsync(0, 0, client.allocBuffer(4096))).to.equal(BlkStatus.Ok);
      expect(await client.writeAsync(0, 0, client.allocBuffer(4096))).to.equal(BlkStatus.IoErr);
      expect((await readLease(be.store, img.keys))!.pid, 'the lease still names the writer').to.equal(a.pid);
      expect(ro.running).to.equal(true);
    });

    it('a stale lease is refused without --force and taken over with it', async () => {
      const img = await newImage();
      await be.store.put(img.keys.lease, staleRecord());
      const r = await blk(img.locator);
      expect(r.code, explain(r)).to.equal(2);
      const line = errorLine(r);
      expect(line).to.match(/stale lease from old-host pid 4242/);
      expect(line).to.match(/--force/);
      expect((await readLease(be.store, img.keys))!.holder, 'the refused open left the lease alone').to.equal('crashed-writer');

      const g = await gateway(img.locator, ['--force']);
      const now = await readLease(be.store, img.keys);
      expect(now!.pid).to.equal(g.pid);
      expect(now!.host).to.equal(hostname());
      expect(Date.now() - Date.parse(now!.heartbeat)).to.be.below(now!.ttlMs);
      const client = await BlkClient.connect(dir.file('g0.sock'));
      cleanups.push(() => client.close());
      const buf = client.allocBuffer(4096);
      buf.bytes.set(bytes(1, 4096));
      expect(await client.writeAsync(0, 0, buf)).to.equal(BlkStatus.Ok);
      expect(await client.flushAsync()).to.equal(BlkStatus.Ok);
      expect(g.stderr).to.match(/taking over a stale image lease/);
    });

    it('a clean shutdown releases the lease; kill -9 leaves it, and the next writer on this host takes it over (the holder is gone)', async () => {
      const img = await newImage();
      const a = await gateway(img.locator);
      expect(await readLease(be.store, img.keys)).to.not.equal(null);
      const st = await a.stop('SIGTERM');
      expect(st.code, a.describe()).to.equal(0);
      expect(await readLease(be.store, img.keys), 'lease released on SIGTERM').to.equal(null);

      const b = await gateway(img.locator);
      await b.kill();
      const left = (await readLease(be.store, img.keys))!;
      expect(left.pid, 'a killed writer leaves its lease').to.equal(b.pid);
      expect(Date.now() - Date.parse(left.heartbeat), 'and it is fresh').to.be.below(left.ttlMs);
      const c = await gateway(img.locator);
      const now = (await readLease(be.store, img.keys))!;
      expect(now.pid).to.equal(c.pid);
      expect(c.stderr).to.match(/taking over the image lease of a writer that died on this host/);
    });

    it('a fresh lease naming a live process on this host, or a dead pid on another host or boot, is refused', async () => {
      const img = await newImage();
      const dead = await gateway(img.locator);
      const mine = (await readLease(be.store, img.keys))!;
      expect(mine.boot, 'the record names the boot').to.match(/^[0-9a-f-]{36}$/);
      expect(mine.pidns, 'and the pid namespace').to.match(/^pid:\[\d+\]$/);
      await dead.stop('SIGTERM'); // its pid is gone now
      const fresh = (over: Partial<LeaseRecord>): Uint8Array =>
        new TextEncoder().encode(JSON.stringify({ ...mine, holder: 'other', heartbeat: new Date().toISOString(), ...over }) + '\n');
      for (const [what, rec] of [
        ['a live process on this host (this test)', fresh({ pid: process.pid })],
        ['a dead pid on another host', fresh({ pid: dead.pid, host: 'elsewhere' })],
        ['a dead pid in another boot', fresh({ pid: dead.pid, boot: '00000000-0000-0000-0000-000000000000' })],
        ['a dead pid in another pid namespace', fresh({ pid: dead.pid, pidns: 'pid:[1]' })],
        ['a dead pid, record without boot and namespace', fresh({ pid: dead.pid, boot: undefined, pidns: undefined })],
      ] as const) {
        await be.store.put(img.keys.lease, rec);
        const r = await blk(img.locator);
        expect(r.code, `${what}: ${explain(r)}`).to.equal(2);
        expect(errorLine(r), what).to.match(/in use by/);
      }
    });

    it('a writer whose lease is taken over refuses writes with IOERR and stores nothing more', async () => {
      const img = await newImage();
      const ttl = 1500;
      const part = partitionable(be.store, img.keys.lease);
      const image = await ObjectImage.open(part.store, img.keys, {
        readOnly: false, force: false, cacheBytes: 4 * MiB, maxDirtyBytes: 4 * MiB, writethrough: false,
        uploadConcurrency: 4, fetchConcurrency: 4, readAheadChunks: 0, writebackDelayMs: 0, log: silentLogger, leaseTtlMs: ttl,
      });
      const exp = await BlkExport.start({ socket: dir.file('old.sock'), image, locator: img.locator, queues: 1, serial: '', log: silentLogger });
      cleanups.push(async () => {
        await exp.close().catch(() => undefined);
        await image.close().catch(() => undefined);
      });
      const old = await BlkClient.connect(dir.file('old.sock'));
      cleanups.push(() => old.close());
      const buf = old.allocBuffer(4096);
      const oldWrite = async (off: number, seed: number): Promise<number> => {
        buf.bytes.set(bytes(seed, 4096));
        return old.writeAsync(0, off, buf);
      };
      expect(await oldWrite(1 * CS, 1)).to.equal(BlkStatus.Ok);
      expect(await old.flushAsync()).to.equal(BlkStatus.Ok);
      expect(await oldWrite(2 * CS, 2)).to.equal(BlkStatus.Ok); // dirty, not stored yet
      const oldHolder = (await readLease(be.store, img.keys))!.holder;

      // The old writer is cut off from its lease until its heartbeat is stale...
      part.cut(true);
      await sleep(ttl + 300);
      // ... and an operator takes the image over.
      const b = await gateway(img.locator, ['--force', '--writeback-delay', '0']);
      expect((await readLease(be.store, img.keys))!.pid).to.equal(b.pid);
      const nw = await BlkClient.connect(dir.file(`g0.sock`));
      cleanups.push(() => nw.close());
      const nbuf = nw.allocBuffer(4096);
      nbuf.bytes.set(bytes(3, 4096));
      expect(await nw.writeAsync(0, 2 * CS, nbuf)).to.equal(BlkStatus.Ok);
      expect(await nw.flushAsync()).to.equal(BlkStatus.Ok);

      // The old writer is reachable again: it must notice and stop.
      part.cut(false);
      const deadline = Date.now() + 10_000;
      let st: number;
      while ((st = await oldWrite(9 * CS, 4)) === BlkStatus.Ok && Date.now() < deadline) await sleep(100);
      expect(st, 'writes after the takeover').to.equal(BlkStatus.IoErr);
      expect(await old.discardAsync(0, [{ offset: 4 * CS, length: CS }])).to.equal(BlkStatus.IoErr);
      expect(await old.writeZeroesAsync(0, [{ offset: 4 * CS, length: 4096 }])).to.equal(BlkStatus.IoErr);
      // Its FLUSH cannot make its dirty chunk durable without overwriting the new writer's data.
      expect(await old.flushAsync(), 'FLUSH of a writer that lost its lease').to.equal(BlkStatus.IoErr);
      const chunk2 = (await be.store.get(img.keys.chunk(2))).body;
      expect(Buffer.from(chunk2.subarray(0, 4096)).equals(Buffer.from(bytes(3, 4096))), 'the new writer\'s data is intact').to.equal(true);
      // Shutting the old writer down does not touch the new writer's lease.
      await old.close();
      await exp.close().catch(() => undefined);
      await image.close().catch(() => undefined);
      const lease = await readLease(be.store, img.keys);
      expect(lease!.pid).to.equal(b.pid);
      expect(lease!.holder).to.not.equal(oldHolder);
      expect(b.running).to.equal(true);
    });
  });
}

describe('image lease: racing writers', function () {
  this.timeout(30_000);
  for (const kind of ['memory', 'file'] as const) {
    it(`of two writers opening at the same moment exactly one wins on a store with conditional writes (${kind})`, async () => {
      const dir = new TmpDir('vhost-s3-lease-race-');
      const store: ObjectStore = kind === 'memory' ? new MemoryStore() : await FileStore.open(dir.path);
      try {
        for (let round = 0; round < 10; round++) {
          const key = `images/race${round}/lease`;
          const results = await Promise.allSettled([1, 2, 3].map(() => ImageLease.acquire(store, key, { force: false, log: silentLogger })));
          const won = results.filter((r): r is PromiseFulfilledResult<ImageLease> => r.status === 'fulfilled');
          expect(won, `round ${round}: winners`).to.have.length(1);
          for (const r of results) {
            if (r.status === 'rejected') {
              expect(errnoOf(r.reason), String(r.reason)).to.equal(16); // EBUSY
              expect((r.reason as Error).message).to.match(/in use by|taken by/);
            }
          }
          const stored = JSON.parse(new TextDecoder().decode((await store.get(key)).body)) as LeaseRecord;
          expect(stored.holder).to.equal(won[0]!.value.holder);
          await won[0]!.value.release();
          expect(await store.head(key)).to.equal(null);
        }
      } finally {
        await store.close();
        dir.remove();
      }
    });
  }

  it('racing stale-lease takeovers (--force) on a store with conditional writes: exactly one wins', async () => {
    const store = new MemoryStore();
    for (let round = 0; round < 10; round++) {
      const key = `images/t${round}/lease`;
      await store.put(key, staleRecord());
      const results = await Promise.allSettled([1, 2, 3].map(() => ImageLease.acquire(store, key, { force: true, log: silentLogger })));
      const won = results.filter((r): r is PromiseFulfilledResult<ImageLease> => r.status === 'fulfilled');
      expect(won, `round ${round}: winners`).to.have.length(1);
      await won[0]!.value.release();
    }
  });
});
