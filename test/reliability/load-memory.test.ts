// Memory stays bounded under sustained load. One `vhost-s3 run` child serves a share
// (file: store), an object image (file: store) and a raw disk with 4 queues, each cache set
// small; the load (concurrently):
// - the share: 256 files open at once, written and released; a 128 MiB file written
//   sequentially in 1 MiB writes (its write buffer spills, it goes up by multipart), fsynced
//   and read back;
// - the object image: 128 MiB written sequentially in 1 MiB writes, flushed, read back;
// - the raw disk: 64 KiB random writes and reads on 4 queues, 8 in flight each.
// /proc/<pid>/status is sampled every 50 ms. The gateway's own memory (VmRSS minus RssShmem:
// the guest memory the frontends share with it is theirs, not the gateway's) must stay below
// the configured cache and buffer sizes plus GATEWAY_BASE (docs/reliability.md, "Load and
// limits"); VmRSS itself below that plus the guest memory mapped.
import { expect } from 'chai';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';

import { BlkStatus } from '../../src/blk/protocol.js';
import { BlkClient } from '../../src/frontend/blk-client.js';
import { FuseClient } from '../../src/frontend/fuse-client.js';
import { O_CREAT, O_RDONLY, O_WRONLY, S_IFREG } from '../../src/fuse/abi.js';
import { CliProcess, runCli, startRunServer } from '../support/cli.js';
import { TmpDir, makeRawFile, patternBytes } from '../support/tmp.js';

const KiB = 1024;
const MiB = 1024 * KiB;

/**
 * What the gateway holds beyond its configured caches and buffers: the idle process (Node,
 * V8 and the loaded code, AWS SDK included: ~78 MiB, of which ~40 MiB file-backed), requests
 * in flight (up to 1 MiB each), tables, and garbage V8 has not collected yet (freed buffers
 * are returned at its next GC). Measured under this load: 41–84 MiB above idle plus caches,
 * not growing with a three times longer load; the figures are in docs/reliability.md,
 * "Load and limits".
 */
export const GATEWAY_BASE = 192 * MiB;

interface Sample {
  rss: number;
  anon: number;
  file: number;
  shmem: number;
}

function sample(pid: number): Sample | null {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/status`, 'utf8');
  } catch {
    return null;
  }
  const kb = (name: string): number => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? NaN) * KiB;
  return { rss: kb('VmRSS'), anon: kb('RssAnon'), file: kb('RssFile'), shmem: kb('RssShmem') };
}

/** Bytes of memfd mappings (the frontends' guest memory) in the process. */
function memfdMapped(pid: number): number {
  let total = 0;
  for (const line of readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n')) {
    if (!line.includes('/memfd:')) continue;
    const [a, b] = line.split(' ')[0]!.split('-').map((h) => parseInt(h, 16));
    total += b! - a!;
  }
  return total;
}

const mib = (n: number): string => `${(n / MiB).toFixed(1)} MiB`;

describe('reliability: memory stays bounded under load', function () {
  this.timeout(120_000);
  let dir: TmpDir;
  let server: CliProcess | null = null;
  const clients: { close(): Promise<void> }[] = [];

  before(() => {
    dir = new TmpDir('vhost-s3-memory-');
  });
  after(async function () {
    for (const c of clients.splice(0)) await c.close().catch(() => undefined);
    await server?.kill();
    dir?.remove();
  });

  it('RSS under many open files, large sequential writes and many queues stays below the caches plus a constant', async () => {
    // The configured bounds: each is counted in full.
    const FS = { 'cache-size': 32 * MiB, 'write-buffer': 16 * MiB, 'upload-memory': 32 * MiB };
    const IMG = { 'cache-size': 32 * MiB, 'dirty-size': 16 * MiB };
    const configured = Object.values(FS).reduce((a, b) => a + b) + Object.values(IMG).reduce((a, b) => a + b);
    mkdirSync(dir.file('share'));
    const raw = makeRawFile(dir.file('raw.img'), 64 * MiB);
    const image = `file:${dir.file('images')}/disk`;
    expect((await runCli(['image', 'create', image, '--size', '256M'])).code).to.equal(0);
    const socks = { share: dir.file('share.sock'), image: dir.file('image.sock'), raw: dir.file('raw.sock') };
    const file = dir.file('exports.json');
    writeFileSync(file, JSON.stringify({
      exports: [
        { type: 'fs', socket: socks.share, bucket: `file:${dir.file('share')}`, 'temp-dir': dir.path, ...FS },
        { type: 'blk', socket: socks.image, image, ...IMG },
        { type: 'blk', socket: socks.raw, image: `file:${raw}`, queues: 4 },
      ],
    }));
    server = await startRunServer(file, { extra: ['--log-level', 'warn'] });
    const pid = server.pid;
    const idle = sample(pid)!;

    const fc = await FuseClient.connect(socks.share, { maxInFlight: 16 });
    clients.push(fc);
    await fc.init();
    const img = await BlkClient.connect(socks.image, { memorySize: 24 * MiB });
    clients.push(img);
    const rawc = await BlkClient.connect(socks.raw, { queues: 4, memorySize: 24 * MiB });
    clients.push(rawc);
    const connected = sample(pid)!;

    const samples: Sample[] = [];
    const timer = setInterval(() => {
      const s = sample(pid);
      if (s) samples.push(s);
    }, 50);

    const manyFiles = async (): Promise<number> => {
      const open: { nodeid: number; fh: number }[] = [];
      const body = patternBytes(5, 16 * KiB);
      for (let i = 0; i < 256; i++) {
        const made = await fc.create(1, `many-${i}`, O_CREAT | O_WRONLY, S_IFREG | 0o644);
        await fc.write(made.entry.nodeid, made.fh, 0, body);
        open.push({ nodeid: made.entry.nodeid, fh: made.fh });
      }
      for (const o of open) await fc.release(o.nodeid, o.fh);
      return open.length;
    };
    const bigFile = async (): Promise<number> => {
      const made = await fc.create(1, 'big', O_CREAT | O_WRONLY, S_IFREG | 0o644);
      const chunk = patternBytes(9, MiB);
      for (let off = 0; off < 128 * MiB; off += MiB) await fc.write(made.entry.nodeid, made.fh, off, chunk);
      await fc.fsync(made.entry.nodeid, made.fh);
      await fc.release(made.entry.nodeid, made.fh);
      const o = await fc.open(made.entry.nodeid, O_RDONLY);
      let read = 0;
      for (let off = 0; off < 128 * MiB; off += MiB) {
        const got = await fc.read(made.entry.nodeid, o.fh, off, MiB);
        if (off === 64 * MiB) expect(Buffer.from(got).equals(Buffer.from(chunk))).to.equal(true);
        read += got.length;
      }
      await fc.release(made.entry.nodeid, o.fh);
      return read;
    };
    const imageSeq = async (): Promise<number> => {
      const buf = img.allocBuffer(MiB);
      buf.bytes.set(patternBytes(13, MiB));
      for (let off = 0; off < 128 * MiB; off += MiB) expect(await img.writeAsync(0, off, buf)).to.equal(BlkStatus.Ok);
      expect(await img.flushAsync()).to.equal(BlkStatus.Ok);
      let read = 0;
      for (let off = 0; off < 128 * MiB; off += MiB) {
        expect(await img.readAsync(0, off, buf)).to.equal(BlkStatus.Ok);
        read += MiB;
      }
      return read;
    };
    const rawQueues = async (): Promise<number> => {
      let ops = 0;
      const deadline = Date.now() + 8000;
      await Promise.all([0, 1, 2, 3].flatMap((q) => Array.from({ length: 8 }, async (_x, k) => {
        const buf = rawc.allocBuffer(64 * KiB);
        let seed = q * 100 + k;
        while (Date.now() < deadline) {
          seed = (seed * 1103515245 + 12345) % 2 ** 31;
          const off = (seed % 1024) * 64 * KiB;
          const st = seed % 2 === 0 ? await rawc.writeAsync(q, off, buf) : await rawc.readAsync(q, off, buf);
          expect(st).to.equal(BlkStatus.Ok);
          ops++;
        }
      })));
      return ops;
    };
    let results: number[];
    try {
      results = await Promise.all([manyFiles(), bigFile(), imageSeq(), rawQueues()]);
    } finally {
      clearInterval(timer);
    }
    const [files, bigRead, imgRead, rawOps] = results;
    expect(files).to.equal(256);
    expect(bigRead).to.equal(128 * MiB);
    expect(imgRead).to.equal(128 * MiB);
    expect(samples.length).to.be.above(20);

    const peak = (f: (s: Sample) => number): number => Math.max(...samples.map(f));
    const own = peak((s) => s.rss - s.shmem);
    const rss = peak((s) => s.rss);
    const shmem = peak((s) => s.shmem);
    const guestMemory = memfdMapped(pid);
    console.log(`      memory: idle ${mib(idle.rss)}, connected ${mib(connected.rss)}; under load (${samples.length} samples, ${rawOps} raw-disk ops): ` +
      `peak VmRSS ${mib(rss)}, peak VmRSS-RssShmem ${mib(own)}, peak RssAnon ${mib(peak((s) => s.anon))}, peak RssShmem ${mib(shmem)}; ` +
      `guest memory mapped ${mib(guestMemory)}; configured caches and buffers ${mib(configured)}, bound ${mib(configured + GATEWAY_BASE)}`);
    expect(own, `the gateway's own memory (VmRSS - RssShmem) against the caches (${mib(configured)}) + ${mib(GATEWAY_BASE)}`).to.be.below(configured + GATEWAY_BASE);
    // What VmRSS has beyond that is the frontends' guest memory (memfd mappings), nothing else.
    expect(shmem, 'RssShmem within the guest memory mapped').to.be.at.most(guestMemory);
    expect(rss).to.be.below(configured + GATEWAY_BASE + guestMemory);
    expect((await server.stop('SIGTERM')).code, server.describe()).to.equal(0);
  });
});
