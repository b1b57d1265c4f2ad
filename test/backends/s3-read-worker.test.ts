// Large ranged reads on worker threads (src/backends/s3-read-worker.ts) through S3Store
// against s3rver, with and without the fault proxy: same bytes, same errors, resumption
// of broken bodies inside the worker, metrics from the worker, reads on the event loop
// until a worker is ready.
import { expect } from 'chai';
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { S3ReadWorkers } from '../../src/backends/s3-read-worker.js';
import { S3Store } from '../../src/backends/s3-store.js';
import { workInFlight } from '../../src/native/index.js';
import type { S3Observer } from '../../src/metrics/observer.js';
import { FaultProxy } from '../support/fault-proxy.js';
import { startS3rver, type S3rver } from '../support/s3rver.js';
import { patternBytes } from '../support/tmp.js';
import { expectErrno } from './conformance.js';

const MiB = 1024 * 1024;
/** A target in shared memory (as the page cache allocates them for a store with read workers). */
const shared = (n: number): Uint8Array => new Uint8Array(new SharedArrayBuffer(n));

describe('S3Store read workers (s3rver)', function () {
  this.timeout(60_000);
  let s3: S3rver;
  let proxy: FaultProxy;
  const data = patternBytes(21, 5 * MiB + 123);
  before(async () => {
    s3 = await startS3rver({ buckets: ['rw'] });
    proxy = await FaultProxy.start(s3.port);
    proxy.record = true;
    const s = new S3Store({ bucket: 'rw', endpoint: s3.endpoint, credentials: s3.credentials, readWorkers: 0 });
    await s.put('big', data);
    await s.close();
  });
  after(async () => {
    await proxy?.close();
    await s3?.stop();
  });
  beforeEach(() => proxy.reset());

  const same = (t: Uint8Array, offset: number): boolean => Buffer.from(t).equals(Buffer.from(data.subarray(offset, offset + t.length)));

  it('reads on the event loop until the worker is ready, then on the worker: the same bytes and head either way', async () => {
    const events: string[] = [];
    const observer: S3Observer = { attempt: (op, status) => events.push(`${op} ${status}`), finished: (op, n) => events.push(`${op} done ${n}`) };
    const store = new S3Store({ bucket: 'rw', endpoint: s3.endpoint, credentials: s3.credentials, readWorkers: 1, observer });
    try {
      const first = shared(2 * MiB);
      const r0 = await store.getInto('big', 7, first); // the worker is only starting: the event loop reads
      expect(same(first, 7)).to.equal(true);
      expect(store.readsOnWorkers).to.equal(0);
      await store.startReadWorkers();
      events.length = 0;
      const base = workInFlight[0]!;
      const pending = Array.from({ length: 6 }, async (_, i) => {
        const t = shared(MiB + i * 1000);
        const r = await store.getInto('big', i * 700_000, t);
        return { ok: same(t, i * 700_000) && r.bytesRead === t.length, r };
      });
      // Counted as work in flight while on the worker: the event loop does not busy-poll meanwhile.
      expect(workInFlight[0]).to.equal(base + 6);
      const reads = await Promise.all(pending);
      expect(workInFlight[0]).to.equal(base);
      expect(reads.every((x) => x.ok)).to.equal(true);
      expect(store.readsOnWorkers).to.equal(6);
      expect(reads[0]!.r.etag).to.equal(r0.etag);
      expect(reads[0]!.r.size).to.equal(data.length);
      expect(reads[0]!.r.lastModified).to.be.instanceOf(Date);
      // Metrics of the worker's requests reach the main thread's observer.
      await new Promise((r) => setTimeout(r, 50));
      expect(events.filter((e) => e === 'GetObject 206').length).to.equal(6);
      expect(events.filter((e) => e === 'GetObject done 1').length).to.equal(6);
      // The end of the object: a short read, as on the event loop.
      const tail = shared(2 * MiB);
      expect((await store.getInto('big', data.length - 100, tail)).bytesRead).to.equal(100);
      expect(Buffer.from(tail.subarray(0, 100)).equals(Buffer.from(data.subarray(data.length - 100)))).to.equal(true);
      // A view in the middle of a shared buffer is filled where it lies.
      const mid = new Uint8Array(new SharedArrayBuffer(3 * MiB), MiB, MiB);
      await store.getInto('big', 12345, mid);
      expect(same(mid, 12345)).to.equal(true);
      expect(Buffer.from(new Uint8Array(mid.buffer, 0, MiB)).every((b) => b === 0)).to.equal(true);
      // A target in private memory is read on the event loop.
      const priv = new Uint8Array(2 * MiB);
      await store.getInto('big', 99, priv);
      expect(same(priv, 99)).to.equal(true);
      expect(store.readsOnWorkers).to.equal(8);
      // Errors cross the thread as StoreErrors with their details.
      const e = await expectErrno(store.getInto('missing', 0, shared(MiB)), 'ENOENT');
      expect(e.op).to.equal('get');
      expect(e.key).to.equal('missing');
      expect(store.readsOnWorkers).to.equal(9);
    } finally {
      await store.close();
    }
  });

  it('a body cut in the middle is resumed inside the worker (If-Match), and retries run there too', async () => {
    const store = new S3Store({ bucket: 'rw', endpoint: proxy.endpoint, credentials: s3.credentials, readWorkers: 1, maxAttempts: 5 });
    try {
      await store.startReadWorkers();
      proxy.seen = [];
      proxy.cutNextGets(2, 300_000);
      const t = shared(2 * MiB);
      const r = await store.getInto('big', 1000, t);
      expect(r.bytesRead).to.equal(t.length);
      expect(same(t, 1000)).to.equal(true);
      const gets = proxy.seen.filter((s) => s.method === 'GET');
      expect(gets.map((s) => s.headers.range)).to.deep.equal([`bytes=1000-${1000 + t.length - 1}`, `bytes=301000-${1000 + t.length - 1}`, `bytes=601000-${1000 + t.length - 1}`]);
      expect(gets[1]!.headers['if-match']).to.equal(r.etag);
      proxy.seen = [];
      proxy.failNext(2, 503);
      const t2 = shared(MiB);
      await store.getInto('big', 0, t2);
      expect(same(t2, 0)).to.equal(true);
      expect(store.readsOnWorkers).to.equal(2);
      expect(proxy.seen.filter((s) => s.method === 'GET').length).to.equal(3);
    } finally {
      await store.close();
    }
  });

  it('reads smaller than readWorkerMinBytes, and every read with readWorkers 0, stay on the event loop', async () => {
    for (const o of [{ readWorkers: 0 }, { readWorkers: 1, readWorkerMinBytes: 4 * MiB }]) {
      const store = new S3Store({ bucket: 'rw', endpoint: s3.endpoint, credentials: s3.credentials, ...o });
      try {
        await store.startReadWorkers();
        const t = shared(2 * MiB);
        await store.getInto('big', 5, t);
        expect(same(t, 5)).to.equal(true);
        expect(store.readsOnWorkers).to.equal(0);
      } finally {
        await store.close();
      }
    }
  });
  it('a process whose only work left is a read on the worker waits for it (the worker is referenced while busy); flags a thread refuses do not stop it', async () => {
    const storeUrl = new URL('../../src/backends/s3-store.js', import.meta.url).href;
    const script = `
      const { S3Store } = await import(${JSON.stringify(storeUrl)});
      const store = new S3Store({ bucket: 'rw', endpoint: process.env.EP, credentials: { accessKeyId: process.env.AK, secretAccessKey: process.env.SK }, readWorkers: 1 });
      await store.startReadWorkers();
      const t = new Uint8Array(new SharedArrayBuffer(2 * 1024 * 1024));
      const r = await store.getInto('big', 0, t);
      console.log('read', r.bytesRead, store.readsOnWorkers);
      process.exit(0);
    `;
    const run = (flags: string[]): Promise<string> => new Promise<string>((resolve, reject) => {
      execFile(process.execPath, [...flags, '--input-type=module', '-e', script], {
        cwd: fileURLToPath(new URL('.', import.meta.url)),
        env: { ...process.env, EP: s3.endpoint, AK: s3.credentials.accessKeyId, SK: s3.credentials.secretAccessKey },
        timeout: 30_000,
      }, (err, stdout, stderr) => (err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve(stdout)));
    });
    expect((await run([])).trim()).to.equal(`read ${2 * MiB} 1`);
    // --max-old-space-size is refused in a worker's execArgv: the worker runs without flags.
    expect((await run(['--max-old-space-size=512'])).trim()).to.equal(`read ${2 * MiB} 1`);
  });
  it('workers that die before they are ready are given up after three: reads stay on the caller\'s thread', async () => {
    const pool = new S3ReadWorkers({ bucket: '' }, 1); // the worker's store refuses to start
    try {
      for (let i = 0; i < 3; i++) {
        const err = await pool.whenReady().then(() => null, (e: unknown) => e as Error);
        expect(err?.message).to.match(/exited .* before it was ready/);
      }
      await pool.whenReady(); // no worker is made any more
      expect(pool.tryGetInto('big', 0, shared(MiB))).to.equal(null);
    } finally {
      await pool.close();
    }
  });
});
