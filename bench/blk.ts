// The blk suite: vhost-s3 blk and qemu-storage-daemon's vhost-user-blk export serve the
// same raw file (page-cache resident, cache.direct=off for both), driven by the same
// QEMU-free frontend running in this process; fio with io_uring on the same file is the
// host limit. Rounds rotate the order of the three targets; the summary takes medians.
import { closeSync, fdatasyncSync, mkdtempSync, openSync, readSync } from 'node:fs';
import { randomFillSync } from 'node:crypto';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { BlkClient } from '../src/frontend/blk-client.js';
import { runBlkLoad, type BlkIo, type RwPattern } from '../src/frontend/blk-load.js';
import type { SharedBuffer } from '../src/frontend/memory.js';
import { machineBusy, machineCpu, procCores, procCpu, round3 } from './lib/cpu.js';
import { removeAtExit, removeNow, runToEnd, startChild, waitForSocket, type Child } from './lib/procs.js';
import { randomFile, waitForQuiet } from './lib/storage.js';
import { fmtBytesRate, fmtNum, median, table } from './lib/report.js';

export interface BlkSuiteOptions {
  readonly runtime: number;
  readonly rounds: number;
  readonly sizeBytes: number;
  readonly queues: number;
  readonly dir: string | null;
  readonly repoRoot: string;
  readonly workloads: readonly string[] | null;
  readonly targets: readonly string[] | null;
  /** Extra node flags for the vhost-s3 child (e.g. --cpu-prof). */
  readonly vhostNodeArgs: readonly string[];
  readonly vhostArgs: readonly string[];
  readonly log: (msg: string) => void;
  readonly tty: boolean;
  /** Before each measurement, wait (up to quietWait seconds) until other load is below quietCores. */
  readonly quietCores: number;
  readonly quietWait: number;
}

interface Workload {
  readonly id: string;
  readonly rw: Extract<RwPattern, 'randread' | 'randwrite' | 'read'>;
  readonly bs: number;
  readonly iodepth: number;
  /** What the ratios compare. */
  readonly metric: 'iops' | 'bw';
}

export const WORKLOADS: readonly Workload[] = [
  { id: 'randread-4k-qd1', rw: 'randread', bs: 4096, iodepth: 1, metric: 'iops' },
  { id: 'randread-4k-qd32', rw: 'randread', bs: 4096, iodepth: 32, metric: 'iops' },
  { id: 'read-1m-qd8', rw: 'read', bs: 1 << 20, iodepth: 8, metric: 'bw' },
  // Writes last in each round: the file is fdatasync'ed after them so that writeback
  // does not run under the next measurement.
  { id: 'randwrite-4k-qd32', rw: 'randwrite', bs: 4096, iodepth: 32, metric: 'iops' },
];

export const TARGETS = ['vhost-s3', 'qsd', 'host'] as const;
type Target = (typeof TARGETS)[number];

export interface Measurement {
  round: number;
  target: Target;
  workload: string;
  iops: number;
  bw_bytes_per_s: number;
  lat_us: { mean: number; p50: number; p99: number };
  errors: number;
  ios: number;
  seconds: number;
  cpu: {
    /** Cores used by the load generator (this process); null for fio. */
    frontend_cores: number | null;
    /** Cores used by the backend process (all threads) or by fio. */
    backend_cores: number;
    backend_threads: Record<string, number>;
    /** Fraction of all CPUs busy machine-wide. */
    machine_busy: number;
    /** Cores busy with anything else (other processes, kernel writeback): noise. */
    other_cores: number;
  };
}

interface Summary {
  workload: string;
  metric: 'iops' | 'bw';
  value: Partial<Record<Target, number>>;
  p50_us: Partial<Record<Target, number>>;
  frontend_cores: Partial<Record<Target, number>>;
  backend_cores: Partial<Record<Target, number>>;
  /** Median cores used by other processes during this workload's measurements (noise). */
  other_cores: number;
  ratio_vs_qsd: number | null;
  ratio_vs_host: number | null;
  p50_ratio_vs_qsd: number | null;
}

export interface BlkSuiteResult {
  config: Record<string, unknown>;
  commands: Record<string, string>;
  image: Record<string, unknown>;
  measurements: Measurement[];
  summary: Summary[];
  targets_check: { target: string; met: boolean | null; detail: string }[];
  table: string;
}

const FILL_CHUNK = 8 << 20;

/** Pseudo-random (non-zero) bytes, fdatasync'ed so no writeback runs later, then read once. */
function createImage(path: string, size: number, log: (m: string) => void): { fill_seconds: number; warm_seconds: number } {
  const t0 = performance.now();
  randomFile(path, size, (pct) => log(`  filling image: ${pct}%`));
  const t1 = performance.now();
  warm(path, size);
  return { fill_seconds: round3((t1 - t0) / 1000), warm_seconds: round3((performance.now() - t1) / 1000) };
}

/** Reads the whole file so that every page is in the page cache. */
function warm(path: string, size: number): void {
  const buf = Buffer.allocUnsafe(FILL_CHUNK);
  const fd = openSync(path, 'r');
  try {
    for (let off = 0; off < size; off += FILL_CHUNK) readSync(fd, buf, 0, Math.min(FILL_CHUNK, size - off), off);
  } finally {
    closeSync(fd);
  }
}

function syncFile(path: string): void {
  const fd = openSync(path, 'r+');
  try {
    fdatasyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** Page-cache residency of the file as fincore reports it (bytes), or null without fincore. */
async function residentBytes(path: string): Promise<number | null> {
  try {
    const out = await runToEnd('fincore', 'fincore', ['--bytes', '--noheadings', '--output', 'RES', path]);
    const n = Number(out.trim());
    return Number.isFinite(n) ? n : null;
  } catch {
    return null;
  }
}

/** The frontend buffers carry non-zero bytes so that writes keep the file non-zero. */
export function withFilledBuffers(io: BlkIo): BlkIo {
  return {
    get capacity() {
      return io.capacity;
    },
    get numQueues() {
      return io.numQueues;
    },
    allocBuffer(length: number): SharedBuffer {
      const b = io.allocBuffer(length);
      randomFillSync(b.bytes);
      return b;
    },
    read: (q, off, buf, done) => io.read(q, off, buf, done),
    write: (q, off, buf, done) => io.write(q, off, buf, done),
    flush: (q, done) => io.flush(q, done),
  };
}

async function driveBackend(
  socket: string, backend: Child, w: Workload, runtime: number, queues: number,
  progress: ((s: string) => void) | null,
): Promise<Omit<Measurement, 'round' | 'target' | 'workload'>> {
  // Same sizing as `vhost-s3 bench blk`.
  const slots = Math.max(w.iodepth, 1);
  const client = await BlkClient.connect(socket, {
    queues,
    queueSize: Math.min(1024, Math.max(128, 2 ** Math.ceil(Math.log2(slots * 2)))),
    memorySize: Math.ceil((queues * slots * w.bs + (16 << 20)) / 4096) * 4096,
  });
  try {
    const m0 = machineCpu();
    const f0 = process.cpuUsage();
    const b0 = procCpu(backend.pid);
    const t0 = performance.now();
    const r = await runBlkLoad(withFilledBuffers(client), {
      rw: w.rw, bs: w.bs, iodepth: w.iodepth, queues: Math.min(queues, client.numQueues),
      runtime, totalBytes: 0, rwmixread: 50, verify: false,
      onProgress: progress ? (bytes, s) => progress(`${fmtBytesRate(bytes / s)} ${s.toFixed(0)}/${runtime} s`) : undefined,
    });
    const wall = (performance.now() - t0) / 1000;
    const b1 = procCpu(backend.pid);
    const f1 = process.cpuUsage(f0);
    const m1 = machineCpu();
    const be = procCores(b0, b1, wall);
    return {
      iops: r.iops, bw_bytes_per_s: r.bw_bytes_per_s, lat_us: r.lat_us, errors: r.errors, ios: r.ios, seconds: r.seconds,
      cpu: {
        frontend_cores: round3((f1.user + f1.system) / 1e6 / wall),
        backend_cores: be.cores,
        backend_threads: be.threads,
        machine_busy: machineBusy(m0, m1),
        other_cores: otherCores(machineBusy(m0, m1), (f1.user + f1.system) / 1e6 / wall + be.cores),
      },
    };
  } finally {
    await client.close();
  }
}

interface FioJob {
  read: FioSide;
  write: FioSide;
  usr_cpu: number;
  sys_cpu: number;
  error: number;
}
interface FioSide {
  iops: number;
  bw_bytes: number;
  total_ios: number;
  runtime: number;
  lat_ns: { mean: number; percentile?: Record<string, number> };
}

function otherCores(machineBusyFraction: number, ours: number): number {
  return round3(Math.max(0, machineBusyFraction * cpus().length - ours));
}

function fioArgs(path: string, w: Workload, runtime: number): string[] {
  return [
    '--name=host', `--filename=${path}`, '--ioengine=io_uring', `--rw=${w.rw}`, `--bs=${w.bs}`, `--iodepth=${w.iodepth}`,
    `--runtime=${runtime}`, '--time_based', '--direct=0',
    // Keep the page cache (fio drops the file's cache before a job by default).
    '--invalidate=0',
    // Shared memory buffers, like the frontend's memfd guest RAM (fio's default malloc
    // buffers are not page-aligned, which makes 1 MiB copies ~4x slower here).
    '--iomem=mmapshared',
    '--norandommap', '--randrepeat=0', '--lat_percentiles=1', '--percentile_list=50:99', '--output-format=json',
  ];
}

async function runFio(path: string, w: Workload, runtime: number): Promise<Omit<Measurement, 'round' | 'target' | 'workload'>> {
  const m0 = machineCpu();
  const out = await runToEnd('fio', 'fio', fioArgs(path, w, runtime));
  const m1 = machineCpu();
  const json = JSON.parse(out.slice(out.indexOf('{'))) as { jobs: FioJob[] };
  const job = json.jobs[0]!;
  const side = w.rw === 'randwrite' ? job.write : job.read;
  const p = side.lat_ns.percentile ?? {};
  return {
    iops: side.iops,
    bw_bytes_per_s: side.bw_bytes,
    lat_us: { mean: side.lat_ns.mean / 1000, p50: (p['50.000000'] ?? 0) / 1000, p99: (p['99.000000'] ?? 0) / 1000 },
    errors: job.error,
    ios: side.total_ios,
    seconds: side.runtime / 1000,
    cpu: {
      frontend_cores: null,
      backend_cores: round3((job.usr_cpu + job.sys_cpu) / 100),
      backend_threads: { usr: round3(job.usr_cpu / 100), sys: round3(job.sys_cpu / 100) },
      machine_busy: machineBusy(m0, m1),
      other_cores: otherCores(machineBusy(m0, m1), (job.usr_cpu + job.sys_cpu) / 100),
    },
  };
}

function qsdArgs(image: string, socket: string, queues: number): string[] {
  return [
    '--blockdev', `driver=file,node-name=file0,filename=${image},cache.direct=off`,
    '--export', `type=vhost-user-blk,id=exp0,node-name=file0,addr.type=unix,addr.path=${socket},writable=on,num-queues=${queues}`,
  ];
}

function vhostArgs(o: BlkSuiteOptions, image: string, socket: string): string[] {
  return [
    ...o.vhostNodeArgs, join(o.repoRoot, 'bin/vhost-s3.js'), 'blk', '--socket', socket, '--image', `file:${image}`,
    '--queues', String(o.queues), '--log-level', 'warn', ...o.vhostArgs,
  ];
}

export async function runBlkSuite(o: BlkSuiteOptions): Promise<BlkSuiteResult> {
  const workloads = WORKLOADS.filter((w) => o.workloads === null || o.workloads.includes(w.id));
  const targets = TARGETS.filter((t) => o.targets === null || o.targets.includes(t));
  if (workloads.length === 0) throw new Error(`no workload selected (known: ${WORKLOADS.map((w) => w.id).join(', ')})`);
  if (targets.length === 0) throw new Error(`no target selected (known: ${TARGETS.join(', ')})`);

  const dir = mkdtempSync(join(o.dir ?? tmpdir(), 'vhost-s3-bench-'));
  removeAtExit(dir);
  const image = join(dir, 'disk.raw');
  const log = o.log;
  try {
    log(`blk: creating ${o.sizeBytes} byte image ${image} (random data)`);
    const times = createImage(image, o.sizeBytes, log);
    const resident0 = await residentBytes(image);
    log(`blk: image written in ${times.fill_seconds} s, warmed in ${times.warm_seconds} s; page-cache resident: ${resident0 ?? '?'} bytes`);

    const measurements: Measurement[] = [];
    const total = o.rounds * targets.length * workloads.length;
    let n = 0;
    for (let round = 0; round < o.rounds; round++) {
      // Rotate the order of the targets from round to round.
      const order = targets.map((_, i) => targets[(i + round) % targets.length]!);
      for (const target of order) {
        const socket = join(dir, `${target}.sock`);
        let backend: Child | null = null;
        try {
          if (target === 'vhost-s3') backend = startChild('vhost-s3 blk', process.execPath, vhostArgs(o, image, socket));
          else if (target === 'qsd') backend = startChild('qemu-storage-daemon', 'qemu-storage-daemon', qsdArgs(image, socket, o.queues));
          if (backend) {
            await waitForSocket(backend, socket);
            // Untimed warm-up so that JIT and first-touch costs stay out of the numbers.
            await driveBackend(socket, backend, workloads[0]!, 0.5, o.queues, null);
          }
          for (const w of workloads) {
            n++;
            const label = `[${n}/${total}] round ${round + 1} ${target.padEnd(8)} ${w.id.padEnd(18)}`;
            const progress = o.tty ? (s: string): void => void process.stderr.write(`\r${label} ${s}   `) : null;
            if (o.quietWait > 0) await waitForQuiet(o.quietCores, o.quietWait, log);
            if (o.tty) process.stderr.write(`${label} ...`);
            const r = backend
              ? await driveBackend(socket, backend, w, o.runtime, o.queues, progress)
              : await runFio(image, w, o.runtime);
            if (w.rw !== 'read' && w.rw !== 'randread') syncFile(image);
            measurements.push({ round, target, workload: w.id, ...r });
            const val = w.metric === 'bw' ? fmtBytesRate(r.bw_bytes_per_s) : `${fmtNum(r.iops)} IOPS`;
            const cpu = `cores: frontend ${r.cpu.frontend_cores ?? '-'} backend ${r.cpu.backend_cores} other ${r.cpu.other_cores}`;
            const line = `${label} ${val}, p50 ${r.lat_us.p50.toFixed(1)} us, ${cpu}${r.errors ? `, ${r.errors} ERRORS` : ''}`;
            if (o.tty) process.stderr.write(`\r${line}\x1b[K\n`);
            else log(line);
            await sleep(200);
          }
        } finally {
          if (backend) {
            await backend.stop();
            if (backend.proc.exitCode !== 0 && backend.proc.exitCode !== null) {
              log(`warning: ${backend.name} exited with ${backend.proc.exitCode}: ${backend.output().slice(-400)}`);
            }
          }
        }
      }
    }
    const resident1 = await residentBytes(image);
    const summary = summarize(workloads, targets, measurements);
    return {
      config: {
        runtime_s: o.runtime, rounds: o.rounds, size_bytes: o.sizeBytes, queues: o.queues,
        workloads: workloads.map((w) => ({ ...w })), targets, vhost_extra_args: o.vhostArgs,
        quiet_cores: o.quietCores, quiet_wait_s: o.quietWait,
      },
      commands: {
        'vhost-s3': `node ${vhostArgs(o, image, join(dir, 'vhost-s3.sock')).join(' ')}`,
        qsd: `qemu-storage-daemon ${qsdArgs(image, join(dir, 'qsd.sock'), o.queues).join(' ')}`,
        host: `fio ${fioArgs(image, workloads[0]!, o.runtime).join(' ')}`,
        frontend: 'in-process BlkClient + runBlkLoad (the code behind `vhost-s3 bench blk`), one connection per measurement',
      },
      image: { path: image, data: 'pseudo-random bytes (crypto.randomFillSync), fdatasynced, then read once', ...times, resident_before: resident0, resident_after: resident1 },
      measurements,
      summary,
      targets_check: checkTargets(summary),
      table: renderTable(summary),
    };
  } finally {
    removeNow(dir);
  }
}

function summarize(workloads: readonly Workload[], targets: readonly Target[], ms: readonly Measurement[]): Summary[] {
  return workloads.map((w) => {
    const s: Summary = {
      workload: w.id, metric: w.metric, value: {}, p50_us: {}, frontend_cores: {}, backend_cores: {},
      other_cores: round3(median(ms.filter((m) => m.workload === w.id).map((m) => m.cpu.other_cores))),
      ratio_vs_qsd: null, ratio_vs_host: null, p50_ratio_vs_qsd: null,
    };
    for (const t of targets) {
      const mine = ms.filter((m) => m.workload === w.id && m.target === t);
      if (mine.length === 0) continue;
      s.value[t] = median(mine.map((m) => (w.metric === 'bw' ? m.bw_bytes_per_s : m.iops)));
      s.p50_us[t] = median(mine.map((m) => m.lat_us.p50));
      s.backend_cores[t] = median(mine.map((m) => m.cpu.backend_cores));
      if (t !== 'host') s.frontend_cores[t] = median(mine.map((m) => m.cpu.frontend_cores ?? 0));
    }
    const v = s.value;
    if (v['vhost-s3'] !== undefined && v.qsd) s.ratio_vs_qsd = round3(v['vhost-s3'] / v.qsd);
    if (v['vhost-s3'] !== undefined && v.host) s.ratio_vs_host = round3(v['vhost-s3'] / v.host);
    const p = s.p50_us;
    if (p['vhost-s3'] !== undefined && p.qsd) s.p50_ratio_vs_qsd = round3(p['vhost-s3'] / p.qsd);
    return s;
  });
}

function checkTargets(summary: readonly Summary[]): BlkSuiteResult['targets_check'] {
  const by = (id: string): Summary | undefined => summary.find((s) => s.workload === id);
  const out: BlkSuiteResult['targets_check'] = [];
  const ge = (id: string, what: string, r: number | null | undefined, limit: number, cmp: 'ge' | 'le'): void => {
    if (r === null || r === undefined) out.push({ target: what, met: null, detail: 'not measured' });
    else out.push({ target: what, met: cmp === 'ge' ? r >= limit : r <= limit, detail: `${id}: ${r.toFixed(3)}` });
  };
  ge('randread-4k-qd32', 'randread 4k QD32: vhost-s3/qsd IOPS >= 1.0', by('randread-4k-qd32')?.ratio_vs_qsd, 1.0, 'ge');
  ge('read-1m-qd8', 'read 1M QD8: vhost-s3/qsd bandwidth >= 1.0', by('read-1m-qd8')?.ratio_vs_qsd, 1.0, 'ge');
  ge('randread-4k-qd1', 'randread 4k QD1: p50 vhost-s3/qsd <= 1.1', by('randread-4k-qd1')?.p50_ratio_vs_qsd, 1.1, 'le');
  ge('read-1m-qd8', 'read 1M QD8: vhost-s3/host bandwidth >= 0.9', by('read-1m-qd8')?.ratio_vs_host, 0.9, 'ge');
  return out;
}

function renderTable(summary: readonly Summary[]): string {
  const fmt = (s: Summary, t: Target): string => {
    const v = s.value[t];
    if (v === undefined) return '-';
    return s.metric === 'bw' ? fmtBytesRate(v) : fmtNum(v);
  };
  const ratio = (r: number | null): string => (r === null ? '-' : r.toFixed(2));
  const p50 = (s: Summary): string =>
    (['vhost-s3', 'qsd', 'host'] as const).map((t) => (s.p50_us[t] === undefined ? '-' : s.p50_us[t]!.toFixed(1))).join(' / ');
  const cores = (s: Summary, t: Target): string => {
    const fe = s.frontend_cores[t];
    const be = s.backend_cores[t];
    if (be === undefined) return '-';
    return fe === undefined ? be.toFixed(2) : `${fe.toFixed(2)}+${be.toFixed(2)}`;
  };
  const rows = summary.map((s) => [
    `${s.workload} (${s.metric === 'bw' ? 'B/s' : 'IOPS'})`, fmt(s, 'vhost-s3'), fmt(s, 'qsd'), fmt(s, 'host'),
    ratio(s.ratio_vs_qsd), ratio(s.ratio_vs_host), p50(s),
    cores(s, 'vhost-s3'), cores(s, 'qsd'), cores(s, 'host'), s.other_cores.toFixed(2),
  ]);
  return table(
    ['workload', 'vhost-s3', 'qsd', 'host', 's3/qsd', 's3/host', 'p50 us s3/qsd/host', 'cores s3 fe+be', 'cores qsd fe+be', 'cores fio', 'other'],
    rows,
  );
}
