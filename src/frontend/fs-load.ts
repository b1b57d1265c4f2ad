// The fs load generator behind `vhost-s3 bench fs`: FUSE workloads driven straight over
// vhost-user by our FUSE client, so any virtio-fs backend (vhost-s3, virtiofsd) is
// measured without a guest kernel. Every workload works in its own directory under the
// share's root and records one latency per operation.
import { performance } from 'node:perf_hooks';
import { O_CREAT, O_EXCL, O_RDONLY, O_RDWR } from '../fuse/abi.js';
import { ErrnoError } from '../util/errors.js';
import { ReadBuffers, type FuseClient } from './fuse-client.js';
import type { DecodedEntry } from '../fuse/replies.js';
import { LatencyRecorder, type LoadResult } from './stats.js';
import { xorshift32 } from '../util/xorshift.js';

export const FS_WORKLOADS = ['create', 'stat', 'readdir', 'seqwrite', 'seqread', 'randread'] as const;
export type FsWorkload = (typeof FS_WORKLOADS)[number];

export interface FsLoadOptions {
  readonly workload: FsWorkload;
  /** Files for create/stat/readdir. */
  readonly files: number;
  /** Bytes of each small file (create). */
  readonly fileSize: number;
  /** Bytes of the large file (seqwrite/seqread/randread). */
  readonly bigFileSize: number;
  /** Request size for the large-file workloads. */
  readonly bs: number;
  /** Operations in flight. */
  readonly iodepth: number;
  /** Seconds for the repeatable workloads (stat, readdir, seqread, randread). */
  readonly runtime: number;
  /** Directory name under the root. */
  readonly dir: string;
  readonly seed?: number;
}

export interface FsLoadResult extends LoadResult {
  readonly workload: FsWorkload;
  readonly ops_per_s: number;
}

const ROOT = 1;

/** LOOKUP, with both forms of "no such entry" (ENOENT, or a cacheable negative entry with node id 0) as null. */
async function find(c: FuseClient, parent: number, name: string): Promise<DecodedEntry | null> {
  try {
    const e = await c.lookup(parent, name);
    return e.nodeid === 0 ? null : e;
  } catch (err) {
    if (err instanceof ErrnoError && err.code === 'ENOENT') return null;
    throw err;
  }
}

async function ensureDir(c: FuseClient, name: string): Promise<number> {
  return ((await find(c, ROOT, name)) ?? (await c.mkdir(ROOT, name, 0o755))).nodeid;
}

/** Runs `op` with `depth` in flight until `more()` says stop; records each latency. */
async function pump(depth: number, stats: LatencyRecorder, more: () => boolean, op: (i: number) => Promise<number>): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (more()) {
      const i = next++;
      const t0 = performance.now();
      try {
        const bytes = await op(i);
        stats.record((performance.now() - t0) * 1e6, bytes);
      } catch {
        stats.errors++;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, depth) }, worker));
}

/** Creates `count` files of `size` bytes named f0..f<count-1> in `dir` (no latency kept). */
async function populate(c: FuseClient, dir: number, count: number, size: number, depth: number, stats?: LatencyRecorder): Promise<void> {
  const data = new Uint8Array(size).fill(0x61);
  let started = 0;
  await pump(depth, stats ?? new LatencyRecorder(), () => started++ < count, async (i) => {
    const { entry, fh } = await c.create(dir, `f${i}`, O_CREAT | O_EXCL | O_RDWR, 0o644);
    if (size > 0) await c.write(entry.nodeid, fh, 0, data);
    await c.release(entry.nodeid, fh);
    return size;
  });
}

export async function runFsLoad(c: FuseClient, o: FsLoadOptions): Promise<FsLoadResult> {
  const stats = new LatencyRecorder();
  const dir = await ensureDir(c, o.dir);
  const rand = xorshift32(o.seed ?? 4242);
  let start = performance.now();
  const timeLeft = (): boolean => performance.now() - start < o.runtime * 1000;
  switch (o.workload) {
    case 'create':
      await populate(c, dir, o.files, o.fileSize, o.iodepth, stats);
      break;
    case 'stat':
    case 'readdir': {
      if ((await c.listdir(dir)).length < o.files) await populate(c, dir, o.files, o.fileSize, o.iodepth);
      start = performance.now();
      if (o.workload === 'stat') {
        await pump(o.iodepth, stats, timeLeft, async (i) => {
          const e = await c.lookup(dir, `f${i % o.files}`);
          await c.getattr(e.nodeid);
          return 0;
        });
      } else {
        await pump(1, stats, timeLeft, async () => (await c.listdir(dir, true, 64 * 1024)).length);
      }
      break;
    }
    case 'seqwrite': {
      const { entry, fh } = await c.create(dir, 'big', O_CREAT | O_RDWR, 0o644);
      const data = new Uint8Array(o.bs).fill(0x62);
      const blocks = Math.ceil(o.bigFileSize / o.bs);
      let n = 0;
      await pump(o.iodepth, stats, () => n < blocks, async () => c.write(entry.nodeid, fh, o.bs * n++, data));
      await c.fsync(entry.nodeid, fh);
      await c.release(entry.nodeid, fh);
      break;
    }
    case 'seqread':
    case 'randread': {
      const e = await find(c, dir, 'big');
      if (!e || e.attr.size < o.bs) throw new ErrnoError('ENOENT', `run the seqwrite workload first: ${o.dir}/big is missing or too small`);
      const size = e.attr.size;
      const { fh } = await c.open(e.nodeid, O_RDONLY);
      const blocks = Math.floor(size / o.bs);
      let n = 0;
      start = performance.now();
      const offset = o.workload === 'seqread' ? () => (n++ % blocks) * o.bs : () => (rand() % blocks) * o.bs;
      const buffers = new ReadBuffers(o.iodepth, o.bs);
      await pump(o.iodepth, stats, timeLeft, () => buffers.read(c, e.nodeid, fh, offset()));
      await c.release(e.nodeid, fh);
      break;
    }
  }
  const r = stats.result((performance.now() - start) / 1000);
  return { ...r, workload: o.workload, ops_per_s: r.iops };
}
