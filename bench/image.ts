// The image suite: object-backed blk images in S3 (s3rver), served by the real CLI
// (`node bin/vhost-s3.js blk --image s3://bkt/images/x`) as a child process and driven by
// the in-process QEMU-free frontend (BlkClient + runBlkLoad, the code behind `vhost-s3
// bench blk`), against its peers on the same data in the same run:
//
//   seqread-1m        fresh gateway, empty cache, image imported from a random file:
//                     vs GETting the same chunk objects straight from the same server with
//                     S3Store.getInto (same client settings: 32 sockets; same concurrency:
//                     --uploads 8 chunks in flight, each as 1 MiB ranged GETs like the gateway)
//   randread-4k-qd32  fully cached image (read once first, --cache-size > image) vs the
//                     raw-file driver (--image file:<the same bytes>)
//   write-1m-flush    sequential 1 MiB writes QD8 over a new image, then FLUSH, vs
//                     S3Store.put of chunk-sized objects with 8 in flight (--uploads)
//
// Run on its own: node dist/bench/image.js [--runtime 5] [--rounds 3] [--vhost-node-args "--cpu-prof ..."]
import { mkdtempSync } from 'node:fs';
import { randomFillSync } from 'node:crypto';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';
import { BlkClient } from '../src/frontend/blk-client.js';
import { runBlkLoad, type LoadOptions } from '../src/frontend/blk-load.js';
import { S3Store } from '../src/backends/s3-store.js';
import { round3 } from './lib/cpu.js';
import { cleanupNow, removeAtExit, removeNow, startChild, waitForSocket } from './lib/procs.js';
import { fmtBytesRate, fmtNum, median, table } from './lib/report.js';
import { withFilledBuffers } from './blk.js';
import {
  CpuProbe, S3RVER_KEYS, check, childEnv, runWithEnv, parseStandaloneArgs, pool, randomFile, reportSuite, runInfo, startS3rver,
  waitForQuiet, type S3rverChild, type StorageSuiteOptions, type StorageSuiteResult,
} from './lib/storage.js';

export interface ImageSuiteOptions extends StorageSuiteOptions {
  /** Image size (default 256 MiB). */
  readonly imageBytes?: number;
  /** Chunk size of the images (default 4 MiB, the CLI default). */
  readonly chunkBytes?: number;
}

export const IMAGE_WORKLOADS = ['seqread-1m', 'randread-4k-qd32', 'write-1m-flush'] as const;
type WorkloadId = (typeof IMAGE_WORKLOADS)[number];

/** Peer of vhost-s3 per workload. */
const PEER: Record<WorkloadId, string> = { 'seqread-1m': 's3-direct', 'randread-4k-qd32': 'raw-file', 'write-1m-flush': 's3-direct' };
const TARGET_RATIO: Record<WorkloadId, number> = { 'seqread-1m': 0.8, 'randread-4k-qd32': 0.9, 'write-1m-flush': 0.8 };

/** The gateway's defaults the direct peers copy. */
const UPLOADS = 8;
const S3_CONCURRENCY = 32;
const FETCH_PART = 1 << 20;
const SEQ_BS = 1 << 20;
const SEQ_QD = 8;

interface ImageMeasurement {
  round: number;
  workload: WorkloadId;
  target: string;
  /** Bytes/s for the sequential workloads, IOPS for randread. */
  value: number;
  bytes: number;
  seconds: number;
  lat_us?: { mean: number; p50: number; p99: number };
  /** write-1m-flush: seconds of the writes, then of the FLUSH. */
  write_s?: number;
  flush_s?: number;
  errors: number;
  cpu: { wall_s: number; cores: Record<string, number>; other_cores: number };
}

function sizeArg(n: number): string {
  return n % (1 << 20) === 0 ? `${n >> 20}M` : String(n);
}


async function connect(socket: string, bs: number, iodepth: number): Promise<BlkClient> {
  return BlkClient.connect(socket, {
    queues: 1,
    queueSize: Math.min(1024, Math.max(128, 2 ** Math.ceil(Math.log2(iodepth * 2)))),
    memorySize: Math.ceil((iodepth * bs + (16 << 20)) / 4096) * 4096,
  });
}

function flush(c: BlkClient): Promise<number> {
  return new Promise((res) => c.flush(0, res));
}

export async function runImageSuite(o: ImageSuiteOptions): Promise<StorageSuiteResult> {
  const size = o.imageBytes ?? 256 << 20;
  const chunk = o.chunkBytes ?? 4 << 20;
  const workloads = IMAGE_WORKLOADS.filter((w) => !o.workloads || o.workloads.includes(w));
  const wantTarget = (t: string): boolean => !o.targets || o.targets.includes(t);
  if (workloads.length === 0) throw new Error(`no workload selected (known: ${IMAGE_WORKLOADS.join(', ')})`);
  const log = o.log;
  const dir = mkdtempSync(join(o.dir ?? tmpdir(), 'vhost-s3-bench-image-'));
  removeAtExit(dir);
  const cli = join(o.repoRoot, 'bin/vhost-s3.js');
  const raw = join(dir, 'source.raw');
  let s3: S3rverChild | null = null;
  let direct: S3Store | null = null;
  const measurements: ImageMeasurement[] = [];
  const notes: string[] = [];
  const commands: Record<string, string> = {};
  try {
    log(`image: writing ${size} random bytes to ${raw}`);
    randomFile(raw, size);
    s3 = await startS3rver(['bkt'], o.dir);
    const env = childEnv({ ...s3.env });
    const cliRun = (name: string, args: string[]): Promise<string> =>
      runWithEnv(name, process.execPath, [cli, ...args, '--log-level', 'warn'], env);
    const t0 = performance.now();
    await cliRun('image import', ['image', 'import', raw, 's3://bkt/images/x', '--chunk-size', sizeArg(chunk)]);
    const importS = (performance.now() - t0) / 1000;
    log(`image: imported into s3://bkt/images/x in ${importS.toFixed(1)} s (${fmtBytesRate(size / importS)})`);
    commands.import = `node bin/vhost-s3.js image import ${raw} s3://bkt/images/x --chunk-size ${sizeArg(chunk)}`;
    direct = new S3Store({ bucket: 'bkt', endpoint: s3.endpoint, credentials: { ...S3RVER_KEYS }, concurrency: S3_CONCURRENCY, conditionalWrites: false });
    const chunks = Math.ceil(size / chunk);
    const chunkKey = (prefix: string, i: number): string => `${prefix}chunks/${i.toString(16).padStart(16, '0')}`;
    const s3pid = s3.child.pid;

    /** `vhost-s3 blk` on `image` with a frontend connected to it for `fn`; both closed after it, however it ends. */
    const onGateway = async <R>(name: string, image: string, extra: string[], fn: (c: BlkClient, gatewayPid: number) => Promise<R>): Promise<R> => {
      const socket = join(dir, `${name}.sock`);
      const args = [...o.vhostNodeArgs, cli, 'blk', '--socket', socket, '--image', image, '--log-level', 'warn', ...extra, ...o.vhostArgs];
      commands[name] = `node ${args.join(' ')}`;
      const child = startChild(`vhost-s3 blk (${name})`, process.execPath, args, { env });
      try {
        await waitForSocket(child, socket, 30000);
        const c = await connect(socket, SEQ_BS, SEQ_QD);
        try {
          return await fn(c, child.pid);
        } finally {
          await c.close();
        }
      } finally {
        await child.stop(30000);
        const code = child.proc.exitCode;
        if (code !== 0 && code !== null) log(`warning: ${child.name} exited with ${code}: ${child.output().slice(-400)}`);
      }
    };
    /** The whole image read sequentially, SEQ_QD requests of SEQ_BS in flight. */
    const seqRead: LoadOptions = { rw: 'read', bs: SEQ_BS, iodepth: SEQ_QD, queues: 1, runtime: 0, totalBytes: size, rwmixread: 100, verify: false };
    const randRead = (runtime: number): LoadOptions => ({ rw: 'randread', bs: 4096, iodepth: 32, queues: 1, runtime, totalBytes: 0, rwmixread: 100, verify: false });
    /**
     * randread-4k-qd32 on a warm device: the whole image read once (the gateway's cache
     * filled), a short untimed run so JIT warm-up stays out of the numbers (as bench/blk.ts
     * does), then the timed run, measured by the probe made just before it.
     */
    const warmRandRead = async (c: BlkClient, probe: () => CpuProbe): Promise<Omit<ImageMeasurement, 'round' | 'workload' | 'target'>> => {
      const warm = await runBlkLoad(c, seqRead);
      if (warm.errors) throw new Error(`warming read had ${warm.errors} errors`);
      await runBlkLoad(c, randRead(0.5));
      const p = probe();
      const r = await runBlkLoad(c, randRead(o.runtime));
      return { value: r.iops, bytes: r.bytes, seconds: r.seconds, lat_us: r.lat_us, errors: r.errors, cpu: p.end() };
    };

    const runners: Record<WorkloadId, Record<string, (round: number) => Promise<Omit<ImageMeasurement, 'round' | 'workload' | 'target'>>>> = {
      'seqread-1m': {
        'vhost-s3': () =>
          onGateway('vhost-s3-seqread', 's3://bkt/images/x', ['--readonly'], async (c, gw) => {
            const probe = new CpuProbe({ gateway: gw, s3rver: s3pid });
            const r = await runBlkLoad(c, seqRead);
            return { value: r.bw_bytes_per_s, bytes: r.bytes, seconds: r.seconds, lat_us: r.lat_us, errors: r.errors, cpu: probe.end() };
          }),
        's3-direct': async () => {
          // Same client settings, same concurrency as the gateway's fetches: UPLOADS chunks in
          // flight, each as parallel FETCH_PART ranged GETs straight into one buffer per worker.
          const bufs = Array.from({ length: UPLOADS }, () => new Uint8Array(chunk));
          let free = [...bufs];
          const probe = new CpuProbe({ s3rver: s3pid });
          const t = performance.now();
          let bytes = 0;
          await pool(chunks, UPLOADS, async (i) => {
            const buf = free.pop()!;
            try {
              const parts = Math.ceil(chunk / FETCH_PART);
              const got = await Promise.all(Array.from({ length: parts }, (_, p) =>
                direct!.getInto(chunkKey('images/x/', i), p * FETCH_PART, buf.subarray(p * FETCH_PART, Math.min(chunk, (p + 1) * FETCH_PART)))));
              bytes += got.reduce((s, g) => s + g.bytesRead, 0);
            } finally {
              free = [...free, buf];
            }
          });
          const seconds = (performance.now() - t) / 1000;
          if (bytes !== chunks * chunk) throw new Error(`direct read got ${bytes} bytes, expected ${chunks * chunk}`);
          return { value: Math.min(bytes, size) / seconds, bytes: Math.min(bytes, size), seconds, errors: 0, cpu: probe.end() };
        },
      },
      'randread-4k-qd32': {
        'vhost-s3': () =>
          onGateway('vhost-s3-cached', 's3://bkt/images/x', ['--readonly', '--cache-size', sizeArg(Math.ceil((size * 2) / (1 << 20)) << 20)], (c, gw) =>
            warmRandRead(c, () => new CpuProbe({ gateway: gw, s3rver: s3pid }))),
        'raw-file': () => onGateway('raw-file', `file:${raw}`, ['--readonly'], (c, gw) => warmRandRead(c, () => new CpuProbe({ gateway: gw }))),
      },
      'write-1m-flush': {
        'vhost-s3': async (round) => {
          const image = `s3://bkt/images/w${round}`;
          await cliRun('image create', ['image', 'create', image, '--size', sizeArg(size), '--chunk-size', sizeArg(chunk)]);
          try {
            return await onGateway('vhost-s3-write', image, [], async (c, gw) => {
              const probe = new CpuProbe({ gateway: gw, s3rver: s3pid });
              const t = performance.now();
              const r = await runBlkLoad(withFilledBuffers(c), { rw: 'write', bs: SEQ_BS, iodepth: SEQ_QD, queues: 1, runtime: 0, totalBytes: size, rwmixread: 0, verify: false });
              const tw = performance.now();
              const st = await flush(c);
              const seconds = (performance.now() - t) / 1000;
              return {
                value: r.bytes / seconds, bytes: r.bytes, seconds, lat_us: r.lat_us, errors: r.errors + (st === 0 ? 0 : 1),
                write_s: round3((tw - t) / 1000), flush_s: round3((performance.now() - tw) / 1000), cpu: probe.end(),
              };
            });
          } finally {
            await cliRun('image rm', ['image', 'rm', image, '--force']).catch((e: unknown) => log(`warning: image rm: ${String(e)}`));
          }
        },
        's3-direct': async (round) => {
          const bodies = Array.from({ length: UPLOADS }, () => randomFillSync(new Uint8Array(chunk)));
          const prefix = `direct/w${round}/`;
          const probe = new CpuProbe({ s3rver: s3pid });
          const t = performance.now();
          await pool(chunks, UPLOADS, async (i) => {
            await direct!.put(chunkKey(prefix, i), bodies[i % UPLOADS]!);
          });
          const seconds = (performance.now() - t) / 1000;
          const cpu = probe.end();
          await direct!.deleteMany(Array.from({ length: chunks }, (_, i) => chunkKey(prefix, i)));
          return { value: size / seconds, bytes: size, seconds, errors: 0, cpu };
        },
      },
    };

    const total = o.rounds * workloads.length * 2;
    let n = 0;
    for (let round = 0; round < o.rounds; round++) {
      for (const w of workloads) {
        const pair = ['vhost-s3', PEER[w]].filter(wantTarget);
        const order = round % 2 === 0 ? pair : [...pair].reverse();
        for (const target of order) {
          n++;
          await waitForQuiet(o.quietCores, o.quietWait, log);
          const label = `[${n}/${total}] round ${round + 1} ${w.padEnd(17)} ${target.padEnd(9)}`;
          const r = await runners[w][target]!(round);
          measurements.push({ round, workload: w, target, ...r });
          const val = w === 'randread-4k-qd32' ? `${fmtNum(r.value)} IOPS` : fmtBytesRate(r.value);
          const cores = Object.entries(r.cpu.cores).map(([k, v]) => `${k} ${v}`).join(' ');
          log(`${label} ${val} in ${r.seconds.toFixed(2)} s${r.flush_s !== undefined ? ` (writes ${r.write_s} s + flush ${r.flush_s} s)` : ''}, cores: ${cores}, other ${r.cpu.other_cores}${r.errors ? `, ${r.errors} ERRORS` : ''}`);
        }
      }
    }

    const summary = workloads.map((w) => {
      const val = (t: string): number | null => {
        const xs = measurements.filter((m) => m.workload === w && m.target === t).map((m) => m.value);
        return xs.length ? median(xs) : null;
      };
      const cores = (t: string, k: string): number | null => {
        const xs = measurements.filter((m) => m.workload === w && m.target === t).map((m) => m.cpu.cores[k] ?? 0);
        return xs.length ? round3(median(xs)) : null;
      };
      const mine = val('vhost-s3');
      const peer = val(PEER[w]);
      return {
        workload: w, metric: w === 'randread-4k-qd32' ? 'iops' : 'bw', peer: PEER[w], vhost_s3: mine, peer_value: peer,
        ratio: mine !== null && peer ? round3(mine / peer) : null, target_ratio: TARGET_RATIO[w],
        cores: {
          'vhost-s3': { bench: cores('vhost-s3', 'bench'), gateway: cores('vhost-s3', 'gateway'), s3rver: cores('vhost-s3', 's3rver') },
          peer: { bench: cores(PEER[w], 'bench'), gateway: cores(PEER[w], 'gateway'), s3rver: cores(PEER[w], 's3rver') },
        },
      };
    });
    const fmt = (w: string, v: number | null): string => (v === null ? '-' : w === 'randread-4k-qd32' ? `${fmtNum(v)} IOPS` : fmtBytesRate(v));
    const c3 = (c: { bench: number | null; gateway: number | null; s3rver: number | null }): string =>
      [c.bench, c.gateway, c.s3rver].map((x) => (x === null ? '-' : x.toFixed(2))).join('/');
    const tbl = table(
      ['workload', 'vhost-s3', 'peer', 'peer value', 'ratio', 'target', 'cores s3 fe/gw/s3rver', 'cores peer fe/gw/s3rver'],
      summary.map((s) => [s.workload, fmt(s.workload, s.vhost_s3), s.peer, fmt(s.workload, s.peer_value), s.ratio === null ? '-' : s.ratio.toFixed(2),
        `>= ${s.target_ratio}`, c3(s.cores['vhost-s3']), c3(s.cores.peer)]),
    );
    notes.push('fe = this process (frontend or direct S3 client); gw = the vhost-s3 blk child; s3rver = the S3 server child. On a 2-core machine a side near 1.0 is saturated.');
    return {
      config: {
        runtime_s: o.runtime, rounds: o.rounds, image_bytes: size, chunk_bytes: chunk, seq: { bs: SEQ_BS, iodepth: SEQ_QD },
        direct: { s3_concurrency: S3_CONCURRENCY, chunks_in_flight: UPLOADS, fetch_part: FETCH_PART }, vhost_extra_args: o.vhostArgs,
        vhost_node_args: o.vhostNodeArgs, import_seconds: round3(importS),
      },
      commands: { ...commands, frontend: 'in-process BlkClient + runBlkLoad (the code behind `vhost-s3 bench blk`)', s3rver: 'node --openssl-legacy-provider node_modules/s3rver/bin/s3rver.js -a 127.0.0.1 -p 0 -s' },
      measurements,
      summary,
      targets_check: summary.map((s) => check(`${s.workload}: vhost-s3/${s.peer} >= ${s.target_ratio}`, s.ratio, s.target_ratio)),
      notes,
      table: tbl,
    };
  } finally {
    if (direct) await direct.close().catch(() => undefined);
    if (s3) {
      await s3.child.stop();
      removeNow(s3.directory);
    }
    removeNow(dir);
  }
}

/** For run.ts: runs the suite, writes <out>/image.json, prints the table. */
export async function runImageBench(o: ImageSuiteOptions & { out: string; machine?: unknown; git?: unknown }): Promise<StorageSuiteResult> {
  const started = new Date();
  const r = await runImageSuite(o);
  const info = o.machine !== undefined ? { machine: o.machine, git: o.git } : runInfo(o.repoRoot);
  reportSuite('image', o.out, started, info, r, `object-backed images in s3rver, medians of ${o.rounds} round(s), randread ${o.runtime} s`);
  return r;
}

if (process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
  runImageBench(parseStandaloneArgs(process.argv.slice(2), repoRoot)).then(
    () => cleanupNow(),
    (err: unknown) => {
      process.stderr.write(`bench image failed: ${err instanceof Error ? err.stack ?? err.message : String(err)}\n`);
      cleanupNow();
      process.exit(1);
    },
  );
}

