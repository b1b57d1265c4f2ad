// Shared pieces of the storage suites (bench/image.ts, bench/fs.ts): s3rver as a child
// process owned by the benchmark (stopped by procs.ts's cleanup like every other child),
// random files, CPU sampling of several processes around a measurement, quiet-machine
// waiting, a tiny argument parser for running a suite on its own, and the common result
// file writer.
import { closeSync, fdatasyncSync, mkdirSync, mkdtempSync, openSync, writeFileSync, writeSync } from 'node:fs';
import { randomFillSync } from 'node:crypto';
import { createRequire } from 'node:module';
import { cpus, release, totalmem, tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { readdirSync, readFileSync } from 'node:fs';
import { machineBusy, machineCpu, procCores, procCpu, round3, type ProcCpu } from './cpu.js';
import { removeAtExit, startChild, tail, type Child } from './procs.js';
import { writeCountingPreload } from './s3-counts.js';
import { writeDurableWritesPreload } from '../../test/support/s3rver.js';

export const S3RVER_KEYS = { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' } as const;

export interface S3rverChild {
  readonly child: Child;
  readonly endpoint: string;
  readonly port: number;
  readonly directory: string;
  /** AWS_* and VHOST_S3_ENDPOINT for child processes. */
  readonly env: Record<string, string>;
}

/**
 * s3rver (the npm fake S3 the tests use) on 127.0.0.1 with a kernel-chosen port, started
 * the way test/support/s3rver.ts starts it (node --openssl-legacy-provider, -s, its
 * durable-writes preload), but as a
 * bench child so that every exit path stops it and removes its data directory.
 */
export async function startS3rver(buckets: readonly string[], baseDir: string | null, timeoutMs = 15000): Promise<S3rverChild> {
  const require = createRequire(import.meta.url);
  const bin = join(require.resolve('s3rver/package.json'), '..', 'bin', 's3rver.js');
  const directory = mkdtempSync(join(baseDir ?? tmpdir(), 'vhost-s3-bench-s3rver-'));
  removeAtExit(directory);
  // Requests are counted by kind (bench/lib/s3-counts.ts); the preload lives beside the data directory.
  const preloadDir = mkdtempSync(join(baseDir ?? tmpdir(), 'vhost-s3-bench-s3rver-preload-'));
  removeAtExit(preloadDir);
  // And it answers writes only once their bytes are stored, as the tests' s3rver does.
  const durable = writeDurableWritesPreload(join(preloadDir, 'durable-writes.cjs'));
  const args = ['--openssl-legacy-provider', '-r', writeCountingPreload(preloadDir), '-r', durable, bin, '-d', directory, '-a', '127.0.0.1', '-p', '0', '-s'];
  for (const b of buckets) args.push('--configure-bucket', b);
  const env = { ...process.env };
  delete env.NODE_OPTIONS;
  const child = startChild('s3rver', process.execPath, args, { env });
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const m = /S3rver listening on [^\s:]+:(\d+)/.exec(child.output());
    if (m) {
      const port = Number(m[1]);
      const endpoint = `http://127.0.0.1:${port}`;
      return {
        child, endpoint, port, directory,
        env: {
          AWS_ACCESS_KEY_ID: S3RVER_KEYS.accessKeyId, AWS_SECRET_ACCESS_KEY: S3RVER_KEYS.secretAccessKey,
          AWS_REGION: 'us-east-1', VHOST_S3_ENDPOINT: endpoint,
        },
      };
    }
    if (child.hasExited()) throw new Error(`s3rver exited before listening:\n${tail(child.output(), 20)}`);
    if (Date.now() > deadline) {
      await child.stop();
      throw new Error(`s3rver did not start within ${timeoutMs} ms:\n${tail(child.output(), 20)}`);
    }
    await sleep(20);
  }
}

/** Environment for a child: ours without NODE_OPTIONS, plus `extra`. */
export function childEnv(extra: Readonly<Record<string, string>> = {}): NodeJS.ProcessEnv {
  const env = { ...process.env, ...extra };
  delete env.NODE_OPTIONS;
  return env;
}

/** A file of pseudo-random bytes, fdatasync'ed; `progress` is told the percentage done every 256 MiB. */
export function randomFile(path: string, size: number, progress?: (percent: number) => void): void {
  const CH = 8 << 20;
  const buf = Buffer.allocUnsafe(CH);
  const fd = openSync(path, 'w');
  try {
    for (let off = 0; off < size; off += CH) {
      const n = Math.min(CH, size - off);
      randomFillSync(buf, 0, n);
      writeSync(fd, buf, 0, n, off);
      if (progress && (off / CH) % 32 === 0) progress(Math.floor((100 * off) / size));
    }
    fdatasyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** The pid and every descendant of it (virtiofsd and s3fs work in child processes). */
function processTree(pid: number): number[] {
  const parent = new Map<number, number[]>();
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const st = readFileSync(`/proc/${d}/stat`, 'utf8');
      const ppid = Number(st.slice(st.lastIndexOf(')') + 2).split(' ')[1]);
      const list = parent.get(ppid) ?? [];
      list.push(Number(d));
      parent.set(ppid, list);
    } catch {
      /* gone */
    }
  }
  const out: number[] = [];
  const walk = (p: number): void => {
    out.push(p);
    for (const c of parent.get(p) ?? []) walk(c);
  };
  walk(pid);
  return out;
}

/** CPU of a process and its descendants (those alive at both samples count fully). */
function treeCpu(pid: number): Map<number, ProcCpu> {
  return new Map(processTree(pid).map((p) => [p, procCpu(p)]));
}

function treeCores(a: Map<number, ProcCpu>, b: Map<number, ProcCpu>, wall: number): number {
  let s = 0;
  for (const [p, x] of b) s += procCores(a.get(p) ?? { total: 0, threads: {} }, x, wall).cores;
  return round3(s);
}

/** CPU of named processes with their descendants (and of this process) across a measurement. */
export class CpuProbe {
  private readonly t0 = performance.now();
  private readonly m0 = machineCpu();
  private readonly self0 = process.cpuUsage();
  private readonly p0: Map<string, Map<number, ProcCpu>>;

  constructor(private readonly procs: Readonly<Record<string, number>>) {
    this.p0 = new Map(Object.entries(procs).map(([k, pid]) => [k, treeCpu(pid)]));
  }

  /** Cores used by this process (`bench`), each named process, and others (noise). */
  end(): { wall_s: number; cores: Record<string, number>; other_cores: number } {
    const wall = (performance.now() - this.t0) / 1000;
    const self = process.cpuUsage(this.self0);
    const cores: Record<string, number> = { bench: round3((self.user + self.system) / 1e6 / wall) };
    for (const [k, pid] of Object.entries(this.procs)) cores[k] = treeCores(this.p0.get(k)!, treeCpu(pid), wall);
    const busy = machineBusy(this.m0, machineCpu()) * cpus().length;
    const ours = Object.values(cores).reduce((s, x) => s + x, 0);
    return { wall_s: round3(wall), cores, other_cores: round3(Math.max(0, busy - ours)) };
  }
}

/** Waits (at most `maxWait` s) until other processes use less than `cores` CPUs. */
export async function waitForQuiet(cores: number, maxWait: number, log: (m: string) => void): Promise<void> {
  if (maxWait <= 0) return;
  const deadline = performance.now() + maxWait * 1000;
  let waited = false;
  for (;;) {
    const a = machineCpu();
    await sleep(500);
    const busy = machineBusy(a, machineCpu()) * cpus().length;
    if (busy <= cores || performance.now() >= deadline) {
      if (waited) log(`  machine ${busy <= cores ? 'quiet' : 'still busy'} (${busy.toFixed(2)} cores in use)`);
      return;
    }
    if (!waited) log(`  waiting for a quiet machine: ${busy.toFixed(2)} cores in use`);
    waited = true;
  }
}

/** Runs `fn` with a bounded number of workers over the items 0..n-1. */
export async function pool(n: number, workers: number, fn: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: Math.min(workers, n) }, async () => {
    while (next < n) await fn(next++);
  }));
}

export interface TargetCheck {
  target: string;
  met: boolean | null;
  detail: string;
}

export function check(what: string, ratio: number | null | undefined, limit: number, detail = ''): TargetCheck {
  if (ratio === null || ratio === undefined || !Number.isFinite(ratio)) return { target: what, met: null, detail: detail || 'not measured' };
  return { target: what, met: ratio >= limit, detail: `ratio ${ratio.toFixed(3)}${detail ? `; ${detail}` : ''}` };
}

/** Options every storage suite takes (a subset of run.ts's arguments). */
export interface StorageSuiteOptions {
  readonly runtime: number;
  readonly rounds: number;
  readonly dir: string | null;
  readonly repoRoot: string;
  /** Extra node flags for the vhost-s3 child (e.g. --cpu-prof --cpu-prof-dir=/tmp/prof). */
  readonly vhostNodeArgs: readonly string[];
  /** Extra flags for the vhost-s3 command. */
  readonly vhostArgs: readonly string[];
  readonly quietCores: number;
  readonly quietWait: number;
  readonly log: (msg: string) => void;
  readonly tty: boolean;
  /** Workload ids to run (null: all). */
  readonly workloads?: readonly string[] | null;
  /** Targets to run (null: all). */
  readonly targets?: readonly string[] | null;
}

export interface StorageSuiteResult {
  config: Record<string, unknown>;
  commands: Record<string, string>;
  measurements: unknown[];
  summary: unknown[];
  targets_check: TargetCheck[];
  notes: string[];
  table: string;
}

function tryRun(cmd: string, args: string[], cwd: string): string | null {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], cwd }).trim();
  } catch {
    return null;
  }
}

/** Machine and commit, as run.ts records them (for running a suite on its own). */
export function runInfo(repoRoot: string): { machine: Record<string, unknown>; git: Record<string, unknown> } {
  const c = cpus();
  const status = tryRun('git', ['status', '--porcelain', '--', 'src', 'native', 'bench'], repoRoot);
  return {
    machine: { cpus: c.length, cpu_model: c[0]?.model ?? null, mem_bytes: totalmem(), kernel: release(), node: process.version },
    git: {
      commit: tryRun('git', ['rev-parse', 'HEAD'], repoRoot),
      describe: tryRun('git', ['log', '-1', '--format=%h %s'], repoRoot),
      dirty_paths: status === null || status === '' ? [] : status.split('\n'),
    },
  };
}

/** Writes <out>/<suite>.json and prints the table and target lines to stdout. */
export function reportSuite(
  suite: string, out: string, started: Date, info: { machine: unknown; git: unknown }, r: StorageSuiteResult, heading: string,
): string {
  mkdirSync(out, { recursive: true });
  const file = join(out, `${suite}.json`);
  writeFileSync(file, JSON.stringify({ suite, date: started.toISOString(), finished: new Date().toISOString(), ...info, ...r }, null, 2) + '\n');
  process.stdout.write(`\n${suite}: ${heading}\n${r.table}\n\n`);
  for (const n of r.notes) process.stdout.write(`note: ${n}\n`);
  for (const t of r.targets_check) process.stdout.write(`${t.met === null ? 'n/a ' : t.met ? 'MET ' : 'MISS'}  ${t.target}  (${t.detail})\n`);
  process.stdout.write(`results: ${file}\n`);
  return file;
}

/** `--runtime 5 --rounds 3 --dir D --out O --vhost-node-args "..." --vhost-args "..." --workloads a,b --targets x,y`. */
export function parseStandaloneArgs(argv: string[], repoRoot: string): StorageSuiteOptions & { out: string } {
  const o = {
    runtime: 5, rounds: 3, dir: null as string | null, repoRoot, vhostNodeArgs: [] as string[], vhostArgs: [] as string[],
    quietCores: 0.3, quietWait: 10, log: (m: string) => void process.stderr.write(`${m}\n`), tty: process.stderr.isTTY === true,
    workloads: null as string[] | null, targets: null as string[] | null, out: join(repoRoot, 'bench/results'),
  };
  const list = (v: string): string[] => v.split(',').map((s) => s.trim()).filter((s) => s !== '');
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i]!;
    const v = (): string => {
      const x = argv[++i];
      if (x === undefined) throw new Error(`${k} needs a value`);
      return x;
    };
    switch (k) {
      case '--runtime': o.runtime = Number(v()); break;
      case '--rounds': o.rounds = Number(v()); break;
      case '--dir': o.dir = v(); break;
      case '--out': o.out = v(); break;
      case '--vhost-node-args': o.vhostNodeArgs = v().split(/\s+/).filter(Boolean); break;
      case '--vhost-args': o.vhostArgs = v().split(/\s+/).filter(Boolean); break;
      case '--workloads': o.workloads = list(v()); break;
      case '--targets': o.targets = list(v()); break;
      case '--quiet-cores': o.quietCores = Number(v()); break;
      case '--quiet-wait': o.quietWait = Number(v()); break;
      default: throw new Error(`unknown option ${k}`);
    }
  }
  if (!(o.runtime > 0) || !(o.rounds >= 1)) throw new Error('--runtime and --rounds must be positive');
  return o;
}

/** Runs a command to completion with `env`; throws with its output unless it exits 0. Returns stdout. */
export async function runWithEnv(name: string, cmd: string, args: readonly string[], env: NodeJS.ProcessEnv, cwd?: string): Promise<string> {
  const c = startChild(name, cmd, args, { env, ...(cwd !== undefined ? { cwd } : {}) });
  let stdout = '';
  c.proc.stdout?.on('data', (b: Buffer) => (stdout += b.toString()));
  const { code, signal } = await c.exited;
  if (code !== 0) throw new Error(`${name} failed (${code ?? signal}):\n${tail(c.output(), 30)}`);
  return stdout;
}
