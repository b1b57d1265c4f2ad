// The fs suite, two parts run in the same invocation.
//
// local: `vhost-s3 fs --bucket file:<store>` (the embedded local store) vs QEMU's virtiofsd
//   (`--socket-path=S -o source=<dir> -o cache=none`) on a local directory holding the same
//   files, both driven by the in-process FUSE client (src/frontend/fuse-client.ts) with the
//   same requests, one at a time as a single guest process issues them:
//     create   CREATE + WRITE 4 KiB + FLUSH + RELEASE of new files (files/s)
//     stat     LOOKUP + GETATTR of those files, repeated for --runtime (stats/s)
//     readdir  OPENDIR + READDIRPLUS (4 KiB pages, as Linux) + RELEASEDIR of a 10,000-entry
//              directory, repeated for --runtime (entries/s)
//     read-1m  OPEN + 1 MiB READs (8 in flight) of a 256 MiB file + RELEASE, whole passes repeated for --runtime (B/s)
//
// s3: the same bucket in s3rver mounted on the host by `vhost-s3 mount`, s3fs and
//   `rclone mount`, each on a fresh mount per round, the same shell commands:
//     ls-l-10k     `ls -l` of a 10,000-entry directory (first listing after mounting)
//     read-256m    `dd if=big of=/dev/null bs=1M` of a 256 MiB file (first read after mounting)
//     randread-4k  fio psync 4 KiB random reads with O_DIRECT (so that they bypass the kernel's
//                  page cache) of a 64 MiB file read once before (cached by each daemon:
//                  vhost-s3's page cache, served by the kernel from a passthrough copy with
//                  `mount --passthrough`; s3fs use_cache; rclone --vfs-cache-mode full)
//     create-1000  `for i in $(seq 1000); do echo x > f$i; done` in a new directory (rclone: also
//                  timed until every file is in the bucket, as its close() returns before uploading)
//
// Run on its own: node dist/bench/fs.js [--runtime 5] [--rounds 3] [--targets vhost-s3,virtiofsd,s3fs,rclone]
import { existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync, copyFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { FuseClient, ReadBuffers } from '../src/frontend/fuse-client.js';
import { O_CREAT, O_RDONLY, O_WRONLY } from '../src/fuse/abi.js';
import type { DirentPlus } from '../src/fuse/replies.js';
import { FileStore } from '../src/backends/file-store.js';
import { S3Store } from '../src/backends/s3-store.js';
import { listAll } from '../src/backends/object-store.js';
import { ROOT_MARKER } from '../src/backends/store-config.js';
import { round3 } from './lib/cpu.js';
import { diffCounts, fetchS3Counts, fmtCounts, type S3Counts } from './lib/s3-counts.js';
import { cleanupNow, removeAtExit, removeNow, startChild, tail, waitForSocket, type Child } from './lib/procs.js';
import { fmtBytesRate, fmtNum, median, table } from './lib/report.js';
import {
  CpuProbe, S3RVER_KEYS, check, childEnv, parseStandaloneArgs, pool, randomFile, reportSuite, runInfo, runWithEnv,
  startS3rver, waitForQuiet, type S3rverChild, type StorageSuiteOptions, type StorageSuiteResult, type TargetCheck,
} from './lib/storage.js';

export interface FsSuiteOptions extends StorageSuiteOptions {
  /** Size of the sequentially read file (default 256 MiB). */
  readonly bigBytes?: number;
  /** Entries of the large directory (default 10,000). */
  readonly dirEntries?: number;
  /** Files created by the create workloads (default 1,000). */
  readonly createFiles?: number;
  /** Rounds of the s3 mount part (default 1: filling s3rver and three mounts take minutes). */
  readonly s3Rounds?: number;
  /** Path of virtiofsd (default /usr/lib/qemu/virtiofsd). */
  readonly virtiofsd?: string;
}

export const FS_LOCAL_WORKLOADS = ['create', 'stat', 'readdir', 'read-1m'] as const;
export const FS_S3_WORKLOADS = ['ls-l-10k', 'read-256m', 'randread-4k', 'create-1000'] as const;
export const FS_TARGETS = ['vhost-s3', 'virtiofsd', 'vhost-s3-mount', 's3fs', 'rclone'] as const;
type LocalW = (typeof FS_LOCAL_WORKLOADS)[number];
type S3W = (typeof FS_S3_WORKLOADS)[number];

interface FsMeasurement {
  part: 'local' | 's3';
  round: number;
  workload: string;
  target: string;
  value: number;
  unit: string;
  count: number;
  seconds: number;
  cpu: { wall_s: number; cores: Record<string, number>; other_cores: number };
  /** S3 requests s3rver served during the measurement, by kind (s3 part). */
  s3_requests?: S3Counts | null;
  /** create-1000: seconds from the start until every file was in the bucket (rclone uploads after close). */
  stored_seconds?: number;
  error?: string;
}

const READ_QD = 8;
const SMALL = 4096;
/** Creates before the timed loops, and seconds of each looping workload before its timed run (see the warm-ups below). */
const WARM_CREATES = 2000;
const WARM_SECONDS = 1;

function fmtVal(unit: string, v: number | null): string {
  if (v === null || !Number.isFinite(v)) return '-';
  return unit === 'B/s' ? fmtBytesRate(v) : `${fmtNum(v)} ${unit}`;
}

// ---- local part: FUSE requests over vhost-user ------------------------------------------------

async function localWorkload(c: FuseClient, w: LocalW, round: number, runtime: number, big: number, files: number, tag: string): Promise<{ count: number; seconds: number }> {
  const data = new Uint8Array(SMALL).fill(0x61);
  const createDir = `c-${tag}-${round}`;
  switch (w) {
    case 'create': {
      const d = await c.mkdir(1, createDir);
      const t = performance.now();
      for (let i = 0; i < files; i++) {
        const { entry, fh } = await c.create(d.nodeid, `f${i}`, O_CREAT | O_WRONLY, 0o644);
        await c.write(entry.nodeid, fh, 0, data);
        await c.flush(entry.nodeid, fh);
        await c.release(entry.nodeid, fh, O_WRONLY);
      }
      return { count: files, seconds: (performance.now() - t) / 1000 };
    }
    case 'stat': {
      const d = await c.lookup(1, createDir);
      const t = performance.now();
      const end = t + runtime * 1000;
      let n = 0;
      const forgets = new Map<number, number>();
      while (performance.now() < end) {
        for (let i = 0; i < files && performance.now() < end; i++) {
          const e = await c.lookup(d.nodeid, `f${i}`);
          await c.getattr(e.nodeid);
          forgets.set(e.nodeid, (forgets.get(e.nodeid) ?? 0) + 1);
          n++;
        }
      }
      const seconds = (performance.now() - t) / 1000;
      await c.batchForget([...forgets].map(([nodeid, nlookup]) => ({ nodeid, nlookup })));
      return { count: n, seconds };
    }
    case 'readdir': {
      const d = await c.lookup(1, 'big');
      const t = performance.now();
      const end = t + runtime * 1000;
      let n = 0;
      let passes = 0;
      let active = 0;
      while (passes === 0 || performance.now() < end) {
        const t0 = performance.now();
        const all = (await c.listdir(d.nodeid, true, 4096)) as DirentPlus[];
        active += performance.now() - t0;
        n += all.length;
        passes++;
        const forgets = all.filter((e) => e.entry.nodeid !== 0 && e.name !== '.' && e.name !== '..').map((e) => ({ nodeid: e.entry.nodeid, nlookup: 1 }));
        for (let i = 0; i < forgets.length; i += 500) await c.batchForget(forgets.slice(i, i + 500));
      }
      return { count: n, seconds: active / 1000 };
    }
    case 'read-1m': {
      // Whole-file passes repeated for `runtime` (as the other loops): a single pass is
      // over in a few hundred milliseconds, short enough for warm-up effects to decide it.
      const e = await c.lookup(1, 'big.bin');
      const parts = Math.ceil(big / (1 << 20));
      // One buffer per READ in flight, reused: the client's cost per MiB stays the same
      // from run to run (see FuseClient.readInto).
      const buffers = new ReadBuffers(READ_QD, 1 << 20);
      let bytes = 0;
      let active = 0;
      let passes = 0;
      const end = performance.now() + runtime * 1000;
      while (passes === 0 || performance.now() < end) {
        const t = performance.now();
        const { fh } = await c.open(e.nodeid, O_RDONLY);
        let pass = 0;
        await pool(parts, READ_QD, async (i) => {
          const n = await buffers.read(c, e.nodeid, fh, i * (1 << 20));
          pass += n; // not `pass += await …`: that reads `pass` before the wait, losing the others' counts
        });
        await c.release(e.nodeid, fh);
        active += performance.now() - t;
        if (pass !== big) throw new Error(`read ${pass} of ${big} bytes`);
        bytes += pass;
        passes++;
      }
      await c.forget(e.nodeid, 1);
      return { count: bytes, seconds: active / 1000 };
    }
  }
}

// ---- s3 part: mounts and shell commands -------------------------------------------------------

function isMounted(path: string): boolean {
  return readFileSync('/proc/self/mounts', 'utf8').split('\n').some((l) => l.split(' ')[1] === path);
}

async function unmount(path: string): Promise<void> {
  for (let i = 0; i < 50 && isMounted(path); i++) {
    await runWithEnv('umount', 'umount', [path], childEnv()).catch(() => runWithEnv('umount -l', 'umount', ['-l', path], childEnv()).catch(() => undefined));
    if (isMounted(path)) await sleep(100);
  }
}

async function waitMounted(child: Child, path: string, timeoutMs = 30000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!isMounted(path)) {
    if (child.hasExited()) throw new Error(`${child.name} exited before mounting ${path}:\n${tail(child.output(), 20)}`);
    if (Date.now() > deadline) throw new Error(`${child.name} did not mount ${path} within ${timeoutMs} ms:\n${tail(child.output(), 20)}`);
    await sleep(50);
  }
}

async function sh(script: string): Promise<number> {
  const t = performance.now();
  await runWithEnv('sh', 'bash', ['-c', script], childEnv());
  return (performance.now() - t) / 1000;
}

export async function runFsSuite(o: FsSuiteOptions): Promise<StorageSuiteResult> {
  const big = o.bigBytes ?? 256 << 20;
  const entries = o.dirEntries ?? 10_000;
  const files = o.createFiles ?? 1000;
  const virtiofsd = o.virtiofsd ?? '/usr/lib/qemu/virtiofsd';
  const want = (t: string): boolean => !o.targets || o.targets.includes(t);
  const wantW = (w: string): boolean => !o.workloads || o.workloads.includes(w);
  const log = o.log;
  const cli = join(o.repoRoot, 'bin/vhost-s3.js');
  const dir = mkdtempSync(join(o.dir ?? tmpdir(), 'vhost-s3-bench-fs-'));
  removeAtExit(dir);
  const measurements: FsMeasurement[] = [];
  const notes: string[] = [];
  const commands: Record<string, string> = {};
  const mounts: string[] = [];
  let s3: S3rverChild | null = null;
  let direct: S3Store | null = null;
  const bigSrc = join(dir, 'big.src');
  try {
    log(`fs: writing ${big} random bytes`);
    randomFile(bigSrc, big);

    // ---- local ----
    const localTargets = (['vhost-s3', 'virtiofsd'] as const).filter(want);
    const localWs = FS_LOCAL_WORKLOADS.filter(wantW);
    if (localTargets.length > 0 && localWs.length > 0) {
      const plain = join(dir, 'plain');
      const storeDir = join(dir, 'store');
      log(`fs: local directory ${plain} and local store ${storeDir} with ${entries} entries and a ${big} byte file`);
      mkdirSync(join(plain, 'big'), { recursive: true });
      for (let i = 0; i < entries; i++) writeFileSync(join(plain, 'big', `e${String(i).padStart(5, '0')}`), '');
      copyFileSync(bigSrc, join(plain, 'big.bin'));
      const fstore = await FileStore.open(storeDir, { create: true });
      writeFileSync(join(storeDir, ROOT_MARKER), 'vhost-s3 local object store\n');
      await pool(entries, 16, async (i) => {
        await fstore.put(`big/e${String(i).padStart(5, '0')}`, new Uint8Array(0));
      });
      await fstore.put('big.bin', { path: bigSrc });
      await fstore.close?.();
      if (!existsSync(virtiofsd) && localTargets.includes('virtiofsd' as never)) notes.push(`${virtiofsd} not found: virtiofsd not measured`);

      const startBackend = async (target: 'vhost-s3' | 'virtiofsd', socket: string): Promise<Child> => {
        if (target === 'vhost-s3') {
          const args = [...o.vhostNodeArgs, cli, 'fs', '--socket', socket, '--bucket', `file:${storeDir}`, '--log-level', 'warn', ...o.vhostArgs];
          commands['vhost-s3 fs'] = `node ${args.join(' ')}`;
          return startChild('vhost-s3 fs', process.execPath, args, { env: childEnv() });
        }
        const args = [`--socket-path=${socket}`, '-o', `source=${plain}`, '-o', 'cache=none'];
        commands.virtiofsd = `${virtiofsd} ${args.join(' ')}`;
        return startChild('virtiofsd', virtiofsd, args);
      };
      for (let round = 0; round < o.rounds; round++) {
        const order = round % 2 === 0 ? localTargets : [...localTargets].reverse();
        for (const target of order) {
          if (target === 'virtiofsd' && !existsSync(virtiofsd)) continue;
          const socket = join(dir, `${target}-${round}.sock`);
          const backend = await startBackend(target, socket);
          try {
            await waitForSocket(backend, socket);
            const c = await FuseClient.connect(socket, { maxInFlight: 16 });
            try {
              await c.init();
              // Untimed warm-ups, the same for every target, so that a fresh gateway's JIT has
              // settled before each timed loop (a daemon serves a VM for hours: steady states
              // are compared). 50 creates left 60-70 optimizing compiles (V8's compiler threads
              // count as the daemon's CPU) inside the timed 1,000, ~40% of a create's cost then;
              // the first 5 s of stat and read-1m cost 10-15% more than later ones.
              await localWorkload(c, 'create', -1 - round, 0, big, WARM_CREATES, 'warm');
              // stat looks up the files create made: without a timed create, make them untimed.
              if (localWs.includes('stat') && !localWs.includes('create')) await localWorkload(c, 'create', round, o.runtime, big, files, target);
              for (const w of localWs) {
                if (w !== 'create') await localWorkload(c, w, round, WARM_SECONDS, big, files, target);
                await waitForQuiet(o.quietCores, o.quietWait, log);
                const probe = new CpuProbe({ backend: backend.pid });
                const r = await localWorkload(c, w, round, o.runtime, big, files, target);
                const cpu = probe.end();
                const unit = w === 'read-1m' ? 'B/s' : w === 'readdir' ? 'entries/s' : w === 'create' ? 'files/s' : 'stats/s';
                const m: FsMeasurement = { part: 'local', round, workload: w, target, value: r.count / r.seconds, unit, count: r.count, seconds: round3(r.seconds), cpu };
                measurements.push(m);
                log(`local round ${round + 1} ${target.padEnd(9)} ${w.padEnd(8)} ${fmtVal(unit, m.value)} (${r.count} in ${r.seconds.toFixed(2)} s), cores: bench ${cpu.cores.bench} backend ${cpu.cores.backend}, other ${cpu.other_cores}`);
              }
            } finally {
              await c.close();
            }
          } finally {
            await backend.stop();
          }
        }
      }
    }

    // ---- s3 mounts ----
    const mountTargets = (['vhost-s3-mount', 's3fs', 'rclone'] as const).filter(want);
    const s3Ws = FS_S3_WORKLOADS.filter(wantW);
    if (mountTargets.length > 0 && s3Ws.length > 0) {
      s3 = await startS3rver(['fsb'], o.dir);
      direct = new S3Store({ bucket: 'fsb', endpoint: s3.endpoint, credentials: { ...S3RVER_KEYS }, conditionalWrites: false });
      log(`fs: filling s3://fsb (${s3.endpoint}): ls10k/ with ${entries} objects, big.bin (${big} bytes), rand.bin (64 MiB)`);
      const t0 = performance.now();
      await pool(entries, 32, async (i) => {
        await direct!.put(`ls10k/e${String(i).padStart(5, '0')}`, new Uint8Array(0));
      });
      await direct.put('big.bin', { path: bigSrc });
      await direct.put('rand.bin', readFileSync(bigSrc).subarray(0, 64 << 20));
      log(`fs: filled in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
      const passwd = join(dir, 's3fs.passwd');
      writeFileSync(passwd, `${S3RVER_KEYS.accessKeyId}:${S3RVER_KEYS.secretAccessKey}\n`, { mode: 0o600 });
      const rcloneEnv = childEnv({
        RCLONE_CONFIG_S3R_TYPE: 's3', RCLONE_CONFIG_S3R_PROVIDER: 'Other', RCLONE_CONFIG_S3R_ENDPOINT: s3.endpoint,
        RCLONE_CONFIG_S3R_ACCESS_KEY_ID: S3RVER_KEYS.accessKeyId, RCLONE_CONFIG_S3R_SECRET_ACCESS_KEY: S3RVER_KEYS.secretAccessKey,
        RCLONE_CONFIG_S3R_REGION: 'us-east-1',
      });
      // rclone's AWS SDK refuses AWS_CA_BUNDLE with its own HTTP transport ("LoadCustomCABundleError:
      // unable to load custom CA bundle, HTTPClient's transport unsupported type") and exits;
      // the endpoint is plain http, so the bundle is not needed.
      delete rcloneEnv.AWS_CA_BUNDLE;
      const s3env = childEnv(s3.env);
      const startMount = (target: string, mnt: string, round: number): Child => {
        const cache = join(dir, `cache-${target}-${round}`);
        mkdirSync(cache, { recursive: true });
        if (target === 'vhost-s3-mount') {
          // --passthrough, as the peers run with their caches on (`--vhost-args --no-passthrough` for without).
          const args = [...o.vhostNodeArgs, cli, 'mount', '--bucket', 's3://fsb', mnt, '--log-level', 'warn', '--passthrough', ...o.vhostArgs];
          commands['vhost-s3 mount'] = `node ${args.join(' ')}`;
          return startChild('vhost-s3 mount', process.execPath, args, { env: s3env });
        }
        if (target === 's3fs') {
          const args = ['fsb', mnt, '-f', '-o', `url=${s3!.endpoint}`, '-o', 'use_path_request_style', '-o', `passwd_file=${passwd}`,
            '-o', 'endpoint=us-east-1', '-o', `use_cache=${cache}`];
          commands.s3fs = `s3fs ${args.join(' ')}`;
          return startChild('s3fs', 's3fs', args);
        }
        const args = ['mount', 's3r:fsb', mnt, '--vfs-cache-mode', 'full', '--cache-dir', cache];
        commands.rclone = `RCLONE_CONFIG_S3R_TYPE=s3 RCLONE_CONFIG_S3R_PROVIDER=Other RCLONE_CONFIG_S3R_ENDPOINT=${s3!.endpoint} (keys) rclone ${args.join(' ')}`;
        return startChild('rclone mount', 'rclone', args, { env: rcloneEnv });
      };
      const scripts: Record<S3W, (mnt: string, target: string, round: number) => { script: string; count: number; unit: string }> = {
        'ls-l-10k': (mnt) => ({ script: `ls -l ${mnt}/ls10k | tail -n +2 | wc -l | grep -qx ${entries}`, count: entries, unit: 'entries/s' }),
        'read-256m': (mnt) => ({ script: `dd if=${mnt}/big.bin of=/dev/null bs=1M status=none`, count: big, unit: 'B/s' }),
        'randread-4k': (mnt) => ({
          script: `fio --name=r --filename=${mnt}/rand.bin --rw=randread --bs=4k --direct=1 --ioengine=psync --runtime=${o.runtime} --time_based --randrepeat=0 --norandommap --output-format=json`,
          count: 0, unit: 'IOPS',
        }),
        'create-1000': (mnt, target, round) => ({ script: `cd ${mnt}/create-${target}-${round} && for i in $(seq ${files}); do echo x > f$i; done`, count: files, unit: 'files/s' }),
      };
      const s3Rounds = Math.min(o.rounds, o.s3Rounds ?? 1);
      for (let round = 0; round < s3Rounds; round++) {
        const order = mountTargets.map((_, i) => mountTargets[(i + round) % mountTargets.length]!);
        for (const target of order) {
          const mnt = join(dir, `mnt-${target}-${round}`);
          mkdirSync(mnt, { recursive: true });
          mounts.push(mnt);
          const child = startMount(target, mnt, round);
          try {
            await waitMounted(child, mnt);
            await sleep(300);
            for (const w of s3Ws) {
              await waitForQuiet(o.quietCores, o.quietWait, log);
              if (w === 'randread-4k') await sh(`cat ${mnt}/rand.bin > /dev/null`);
              if (w === 'create-1000') await sh(`mkdir ${mnt}/create-${target}-${round}`);
              const s = scripts[w](mnt, target, round);
              const countsBefore = await fetchS3Counts(s3.endpoint);
              const probe = new CpuProbe({ daemon: child.pid, s3rver: s3.child.pid });
              let m: FsMeasurement;
              try {
                const t = performance.now();
                let out = '';
                if (w === 'randread-4k') out = await runWithEnv('fio', 'bash', ['-c', s.script], childEnv());
                else await sh(s.script);
                const seconds = (performance.now() - t) / 1000;
                // close() of rclone's files returns before they are uploaded: also time until
                // every file is in the bucket, the point where the others' loops end.
                let storedSeconds: number | undefined;
                if (w === 'create-1000') {
                  const prefix = `create-${target}-${round}/`;
                  for (let i = 0; i < 1200; i++) {
                    let n = 0;
                    for await (const e of listAll(direct, { prefix })) if (e.type === 'object' && e.key !== prefix) n++;
                    if (n >= files) {
                      storedSeconds = (performance.now() - t) / 1000;
                      break;
                    }
                    await sleep(100);
                  }
                }
                const cpu = probe.end();
                let value = s.count / seconds;
                let count = s.count;
                if (w === 'randread-4k') {
                  const j = JSON.parse(out.slice(out.indexOf('{'))) as { jobs: { read: { iops: number; total_ios: number } }[] };
                  value = j.jobs[0]!.read.iops;
                  count = j.jobs[0]!.read.total_ios;
                }
                m = { part: 's3', round, workload: w, target, value, unit: s.unit, count, seconds: round3(seconds), cpu, s3_requests: diffCounts(countsBefore, await fetchS3Counts(s3.endpoint)),
                  ...(storedSeconds !== undefined ? { stored_seconds: round3(storedSeconds) } : {}) };
              } catch (err) {
                const msg = err instanceof Error ? err.message.split('\n').slice(0, 6).join(' | ') : String(err);
                m = { part: 's3', round, workload: w, target, value: NaN, unit: s.unit, count: 0, seconds: 0, cpu: probe.end(), error: msg };
              }
              measurements.push(m);
              log(`s3 round ${round + 1} ${target.padEnd(14)} ${w.padEnd(11)} ${m.error ? `FAILED: ${m.error}` : `${fmtVal(m.unit, m.value)} (${m.seconds} s${m.stored_seconds !== undefined ? `, all in the bucket after ${m.stored_seconds} s` : ''}), cores: daemon ${m.cpu.cores.daemon} s3rver ${m.cpu.cores.s3rver}, other ${m.cpu.other_cores}, ${fmtCounts(m.s3_requests ?? null)}`}`);
            }
          } catch (err) {
            log(`s3 round ${round + 1} ${target}: FAILED: ${err instanceof Error ? err.message : String(err)}`);
            measurements.push({ part: 's3', round, workload: 'mount', target, value: NaN, unit: '', count: 0, seconds: 0, cpu: { wall_s: 0, cores: {}, other_cores: 0 }, error: String(err) });
          } finally {
            await unmount(mnt);
            await child.stop(10000);
          }
        }
      }
    }

    // ---- summary ----
    const med = (part: string, w: string, t: string): number | null => {
      const xs = measurements.filter((m) => m.part === part && m.workload === w && m.target === t && !m.error).map((m) => m.value);
      return xs.length ? median(xs) : null;
    };
    const medCores = (part: string, w: string, t: string, k: string): number | null => {
      const xs = measurements.filter((m) => m.part === part && m.workload === w && m.target === t && !m.error).map((m) => m.cpu.cores[k] ?? 0);
      return xs.length ? round3(median(xs)) : null;
    };
    const summary: Record<string, unknown>[] = [];
    const rows: string[][] = [];
    const checks: TargetCheck[] = [];
    const c = (x: number | null): string => (x === null ? '-' : x.toFixed(2));
    for (const w of FS_LOCAL_WORKLOADS.filter(wantW)) {
      const unit = measurements.find((m) => m.part === 'local' && m.workload === w)?.unit ?? '';
      const a = med('local', w, 'vhost-s3');
      const b = med('local', w, 'virtiofsd');
      const ratio = a !== null && b ? round3(a / b) : null;
      summary.push({ part: 'local', workload: w, unit, 'vhost-s3': a, virtiofsd: b, ratio, target_ratio: 1.0 });
      rows.push([`local ${w}`, fmtVal(unit, a), fmtVal(unit, b), '-', ratio === null ? '-' : ratio.toFixed(2), '>= 1.0',
        `${c(medCores('local', w, 'vhost-s3', 'backend'))} / ${c(medCores('local', w, 'virtiofsd', 'backend'))}`]);
      checks.push(check(`fs local ${w}: vhost-s3 (file: store) / virtiofsd >= 1.0`, ratio, 1.0));
    }
    for (const w of FS_S3_WORKLOADS.filter(wantW)) {
      const unit = measurements.find((m) => m.part === 's3' && m.workload === w)?.unit ?? '';
      const a = med('s3', w, 'vhost-s3-mount');
      const b = med('s3', w, 's3fs');
      const r = med('s3', w, 'rclone');
      // create: rclone's rate until its files are in the bucket (its close() returns before
      // the upload; vhost-s3's and s3fs's return after it), so that all three count the same work.
      const storedRate = (t: string): number | null => {
        const xs = measurements.filter((m) => m.part === 's3' && m.workload === w && m.target === t && !m.error && m.stored_seconds).map((m) => m.count / m.stored_seconds!);
        return xs.length ? median(xs) : null;
      };
      const rStored = w === 'create-1000' ? storedRate('rclone') : null;
      const rCompared = w === 'create-1000' ? rStored : r;
      const best = Math.max(b ?? 0, rCompared ?? 0);
      const ratio = a !== null && best > 0 ? round3(a / best) : null;
      const fails = measurements.filter((m) => m.part === 's3' && m.workload === w && m.error).map((m) => `${m.target} r${m.round + 1}: ${m.error}`);
      const reqs = (t: string): number | null => {
        const xs = measurements.filter((m) => m.part === 's3' && m.workload === w && m.target === t && m.s3_requests).map((m) => m.s3_requests!.total ?? 0);
        return xs.length ? median(xs) : null;
      };
      summary.push({ part: 's3', workload: w, unit, 'vhost-s3-mount': a, s3fs: b, rclone: r, ...(w === 'create-1000' ? { rclone_until_stored: rStored } : {}), ratio_vs_best: ratio, target_ratio: 1.5,
        s3_requests: { 'vhost-s3-mount': reqs('vhost-s3-mount'), s3fs: reqs('s3fs'), rclone: reqs('rclone') }, failures: fails });
      rows.push([`s3 ${w}`, fmtVal(unit, a), fmtVal(unit, b), w === 'create-1000' ? `${fmtVal(unit, r)} (${fmtVal(unit, rStored)} until stored)` : fmtVal(unit, r), ratio === null ? '-' : ratio.toFixed(2), '>= 1.5',
        [medCores('s3', w, 'vhost-s3-mount', 'daemon'), medCores('s3', w, 's3fs', 'daemon'), medCores('s3', w, 'rclone', 'daemon')].map(c).join(' / ')]);
      checks.push(check(`fs s3 ${w}: vhost-s3 mount / best of s3fs, rclone >= 1.5`, ratio, 1.5));
    }
    const tbl = table(['workload', 'vhost-s3', 'virtiofsd | s3fs', 'rclone', 'ratio', 'target', 'daemon cores (s3 / peers)'], rows);
    notes.push('local: peer column is virtiofsd; s3: peer columns are s3fs and rclone, ratio against the better of the two.');
    notes.push('s3 create-1000: rclone (--vfs-cache-mode full) returns from close() before uploading; its rate is compared as files / seconds until all of them were in the bucket.');
    return {
      config: {
        runtime_s: o.runtime, rounds: o.rounds, s3_rounds: Math.min(o.rounds, o.s3Rounds ?? 1), big_bytes: big, dir_entries: entries, create_files: files, small_file_bytes: SMALL,
        read_qd: READ_QD, vhost_extra_args: o.vhostArgs, vhost_node_args: o.vhostNodeArgs,
      },
      commands,
      measurements,
      summary,
      targets_check: checks,
      notes,
      table: tbl,
    };
  } finally {
    for (const m of mounts) await unmount(m);
    if (direct) await direct.close().catch(() => undefined);
    if (s3) {
      await s3.child.stop();
      removeNow(s3.directory);
    }
    removeNow(dir);
  }
}

/** For run.ts: runs the suite, writes <out>/fs.json, prints the table. */
export async function runFsBench(o: FsSuiteOptions & { out: string; machine?: unknown; git?: unknown }): Promise<StorageSuiteResult> {
  const started = new Date();
  const r = await runFsSuite(o);
  const info = o.machine !== undefined ? { machine: o.machine, git: o.git } : runInfo(o.repoRoot);
  reportSuite('fs', o.out, started, info, r, `medians of ${o.rounds} local round(s) and ${Math.min(o.rounds, o.s3Rounds ?? 1)} s3 round(s), timed loops ${o.runtime} s`);
  return r;
}

if (process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
  runFsBench(parseStandaloneArgs(process.argv.slice(2), repoRoot)).then(
    () => cleanupNow(),
    (err: unknown) => {
      process.stderr.write(`bench fs failed: ${err instanceof Error ? err.stack ?? err.message : String(err)}\n`);
      cleanupNow();
      process.exit(1);
    },
  );
}
