// `npm run bench`: runs vhost-s3 side by side with its reference peers on the same data
// with the same load generator, prints ratios, and writes bench/results/<suite>.json.
//
//   node dist/bench/run.js [--only blk] [--runtime 5] [--rounds 3] [--size 1G] [--queues 1]
//                          [--workloads randread-4k-qd1,...] [--targets vhost-s3,qsd,host]
//                          [--dir /tmp] [--out bench/results]
//                          [--vhost-node-args "--cpu-prof --cpu-prof-dir=/tmp/prof"] [--vhost-args "--io-engine sync"]
//
// Progress goes to stderr, the tables to stdout. Every child process and temporary file
// it creates is removed at the end, on errors and on SIGINT/SIGTERM.
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus, release, totalmem } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { runBlkSuite, TARGETS, WORKLOADS } from './blk.js';
import { runImageBench } from './image.js';
import { runFsBench } from './fs.js';
import { cleanupNow } from './lib/procs.js';

// dist/bench/run.js → repository root
const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

const SUITES = ['blk', 'image', 'fs'] as const;
type Suite = (typeof SUITES)[number];

interface Args {
  only: Suite[];
  runtime: number;
  rounds: number;
  size: number;
  queues: number;
  dir: string | null;
  out: string;
  workloads: string[] | null;
  targets: string[] | null;
  vhostNodeArgs: string[];
  vhostArgs: string[];
  quietCores: number;
  quietWait: number;
}

const USAGE = `usage: npm run bench -- [options]
  --only SUITES        comma-separated suites to run (${SUITES.join(', ')}; default all)
  --runtime SECONDS    per measurement (default 5)
  --rounds N           repetitions, target order rotated each round; medians reported (default 3)
  --size BYTES         image size, K/M/G suffixes (default 1G)
  --queues N           virtqueues for both backends and the frontend (default 1)
  --workloads IDS      blk: subset of ${WORKLOADS.map((w) => w.id).join(', ')}
  --targets IDS        blk: subset of ${TARGETS.join(', ')}
  --dir DIR            where the temporary image goes (default the OS temp dir)
  --out DIR            results directory (default bench/results)
  --vhost-node-args S  extra node flags for the vhost-s3 child (space-separated)
  --vhost-args S       extra vhost-s3 blk flags (space-separated)
  --quiet-cores N      before each measurement wait until other processes use less than N
                       cores (default 0.3) ...
  --quiet-wait SECONDS ... for at most this long (default 30; 0 = do not wait)
`;

function parseSize(s: string): number {
  const m = /^(\d+(?:\.\d+)?)([kKmMgG]?)i?[bB]?$/.exec(s);
  if (!m) throw new Error(`bad size ${s}`);
  const mult = { '': 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30 }[m[2]!.toLowerCase() as '' | 'k' | 'm' | 'g'];
  return Math.floor(Number(m[1]) * mult);
}

function parseArgs(argv: string[]): Args {
  const a: Args = {
    only: [...SUITES], runtime: 5, rounds: 3, size: 2 ** 30, queues: 1, dir: null,
    out: join(repoRoot, 'bench/results'), workloads: null, targets: null, vhostNodeArgs: [], vhostArgs: [],
    quietCores: 0.3, quietWait: 30,
  };
  const list = (v: string): string[] => v.split(',').map((s) => s.trim()).filter((s) => s !== '');
  const words = (v: string): string[] => v.split(/\s+/).filter((s) => s !== '');
  const posInt = (k: string, v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1) throw new Error(`${k} needs a positive integer, got ${v}`);
    return n;
  };
  const nonNeg = (k: string, v: string): number => {
    const n = Number(v);
    if (!(n >= 0)) throw new Error(`${k} needs a number >= 0, got ${v}`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    let key = argv[i]!;
    let val: string | undefined;
    const eq = key.indexOf('=');
    if (key.startsWith('--') && eq > 0) {
      val = key.slice(eq + 1);
      key = key.slice(0, eq);
    }
    if (key === '--help' || key === '-h') {
      process.stdout.write(USAGE);
      process.exit(0);
    }
    const value = (): string => {
      if (val !== undefined) return val;
      const v = argv[++i];
      if (v === undefined) throw new Error(`${key} needs a value`);
      return v;
    };
    switch (key) {
      case '--only': {
        const s = list(value());
        for (const x of s) if (!(SUITES as readonly string[]).includes(x)) throw new Error(`unknown suite ${x} (known: ${SUITES.join(', ')})`);
        a.only = s as Suite[];
        break;
      }
      case '--runtime': {
        const n = Number(value());
        if (!(n > 0)) throw new Error('--runtime needs a positive number of seconds');
        a.runtime = n;
        break;
      }
      case '--rounds': a.rounds = posInt(key, value()); break;
      case '--queues': a.queues = posInt(key, value()); break;
      case '--size': a.size = parseSize(value()); break;
      case '--dir': a.dir = resolve(value()); break;
      case '--out': a.out = resolve(value()); break;
      case '--workloads': a.workloads = list(value()); break;
      case '--targets': a.targets = list(value()); break;
      case '--vhost-node-args': a.vhostNodeArgs = words(value()); break;
      case '--vhost-args': a.vhostArgs = words(value()); break;
      case '--quiet-cores': a.quietCores = nonNeg(key, value()); break;
      case '--quiet-wait': a.quietWait = nonNeg(key, value()); break;
      default:
        throw new Error(`unknown option ${key}\n${USAGE}`);
    }
  }
  if (a.size < 1 << 20 || a.size % 4096 !== 0) throw new Error('--size must be at least 1M and a multiple of 4 KiB');
  return a;
}

function tryRun(cmd: string, args: string[]): string | null {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], cwd: repoRoot }).trim();
  } catch {
    return null;
  }
}

function machineInfo(): Record<string, unknown> {
  const c = cpus();
  const lscpu = tryRun('lscpu', []) ?? '';
  const field = (name: string): string | null => new RegExp(`^${name}:\\s*(.+)$`, 'm').exec(lscpu)?.[1]?.trim() ?? null;
  return {
    cpus: c.length,
    cpu_model: c[0]?.model ?? null,
    hypervisor: field('Hypervisor vendor'),
    mem_bytes: totalmem(),
    kernel: release(),
    node: process.version,
    qemu_storage_daemon: tryRun('qemu-storage-daemon', ['--version'])?.split('\n')[0] ?? null,
    fio: tryRun('fio', ['--version']),
  };
}

function gitInfo(): Record<string, unknown> {
  const status = tryRun('git', ['status', '--porcelain', '--', 'src', 'native', 'bench']);
  return {
    commit: tryRun('git', ['rev-parse', 'HEAD']),
    describe: tryRun('git', ['log', '-1', '--format=%h %s']),
    dirty_paths: status === null || status === '' ? [] : status.split('\n'),
  };
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const log = (msg: string): void => void process.stderr.write(`${msg}\n`);
  mkdirSync(args.out, { recursive: true });
  const machine = machineInfo();
  const git = gitInfo();
  log(`bench: ${machine.cpus} x ${machine.cpu_model}, ${(Number(machine.mem_bytes) / 2 ** 30).toFixed(1)} GiB, kernel ${machine.kernel}, node ${machine.node}`);
  log(`bench: commit ${String(git.describe)}${(git.dirty_paths as string[]).length > 0 ? ' (with uncommitted changes)' : ''}`);
  for (const suite of args.only) {
    const started = new Date();
    if (suite === 'blk') {
      const r = await runBlkSuite({
        runtime: args.runtime, rounds: args.rounds, sizeBytes: args.size, queues: args.queues, dir: args.dir, repoRoot,
        workloads: args.workloads, targets: args.targets, vhostNodeArgs: args.vhostNodeArgs, vhostArgs: args.vhostArgs,
        quietCores: args.quietCores, quietWait: args.quietWait, log, tty: process.stderr.isTTY === true,
      });
      const file = join(args.out, 'blk.json');
      writeFileSync(file, JSON.stringify({ suite, date: started.toISOString(), finished: new Date().toISOString(), machine, git, ...r }, null, 2) + '\n');
      process.stdout.write(`\nblk: medians of ${args.rounds} round(s) x ${args.runtime} s, ${args.queues} queue(s), ${args.size} byte page-cached raw file\n`);
      process.stdout.write(`${r.table}\n\n`);
      process.stdout.write('cores: CPU time / wall time of the frontend (this process) + the backend process (or fio);\n');
      process.stdout.write('other: median cores used by other processes meanwhile (noise; above ~0.3 the numbers are suspect)\n');
      for (const t of r.targets_check) process.stdout.write(`${t.met === null ? 'n/a ' : t.met ? 'MET ' : 'MISS'}  ${t.target}  (${t.detail})\n`);
      process.stdout.write(`results: ${file}\n`);
    } else {
      // image and fs print their own tables and write bench/results/<suite>.json.
      const run = suite === 'image' ? runImageBench : runFsBench;
      await run({
        runtime: args.runtime, rounds: args.rounds, dir: args.dir, out: args.out, repoRoot, vhostNodeArgs: args.vhostNodeArgs,
        vhostArgs: args.vhostArgs, quietCores: args.quietCores, quietWait: args.quietWait, log, tty: process.stderr.isTTY === true, machine, git,
      });
    }
  }
}

main().then(
  () => {
    cleanupNow();
  },
  (err: unknown) => {
    process.stderr.write(`bench failed: ${err instanceof Error ? err.stack ?? err.message : String(err)}\n`);
    cleanupNow();
    process.exit(1);
  },
);
