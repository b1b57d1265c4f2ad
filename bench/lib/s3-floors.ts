// What s3rver itself costs per request, and what our S3 client costs, measured in one
// process against a bench s3rver: CPU per HEAD, per PUT (empty and 4 KiB), per LIST page of
// 1,000 keys, and per MiB of ranged GET (8 MiB GETs, 16 in flight, as the page cache's
// read-ahead sends them) on both GET transports, on the event loop and on a read worker. s3rver is one Node thread: its CPU per
// request is a floor under what any mount of it can do (10,000 HEADs of `ls -l` cost it
// 10,000 × its CPU per HEAD whoever sends them), and the comparison of the targets in
// docs/performance-storage.md says which targets that floor decides.
//
//   node dist/bench/lib/s3-floors.js [--rounds 3] [--count 2000] [--get-mib 128] [--dir /dev/shm]
import { randomFillSync } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { S3Store } from '../../src/backends/s3-store.js';
import { procCpu } from './cpu.js';
import { cleanupNow } from './procs.js';
import { diffCounts, fetchS3Counts, fmtCounts, type S3Counts } from './s3-counts.js';
import { S3RVER_KEYS, startS3rver } from './storage.js';

export interface FloorMeasurement {
  readonly name: string;
  /** Requests (or MiB for GETs) measured. */
  readonly count: number;
  readonly unit: 'request' | 'MiB';
  readonly perSecond: number;
  /** s3rver's CPU (ms) per unit, and its cores busy. */
  readonly s3rverMs: number;
  readonly s3rverCores: number;
  /** This process's CPU (ms) per unit: the S3 client's (S3Store over the SDK). */
  readonly clientMs: number;
  readonly requests: S3Counts | null;
}

export interface FloorOptions {
  readonly rounds: number;
  readonly count: number;
  readonly getMiB: number;
  readonly dir: string | null;
  readonly log: (line: string) => void;
}

const MiB = 1024 * 1024;

async function pool(n: number, width: number, fn: (i: number) => Promise<unknown>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: width }, async () => {
    while (next < n) await fn(next++);
  }));
}

export async function measureFloors(o: FloorOptions): Promise<FloorMeasurement[]> {
  const s3 = await startS3rver(['floors'], o.dir);
  const out: FloorMeasurement[] = [];
  const store = (transport: 'undici' | 'node-http' = 'undici', readWorkers = 0): S3Store =>
    new S3Store({ bucket: 'floors', endpoint: s3.endpoint, credentials: { ...S3RVER_KEYS }, conditionalWrites: false, rangedGetTransport: transport, readWorkers });
  const measure = async (name: string, count: number, unit: FloorMeasurement['unit'], fn: () => Promise<unknown>): Promise<void> => {
    const before = await fetchS3Counts(s3.endpoint);
    const s0 = procCpu(s3.child.pid);
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    await fn();
    const seconds = (performance.now() - t0) / 1000;
    const c = process.cpuUsage(c0);
    const s1 = procCpu(s3.child.pid);
    const m: FloorMeasurement = {
      name, count, unit, perSecond: count / seconds,
      s3rverMs: ((s1.total - s0.total) / count) * 1000, s3rverCores: (s1.total - s0.total) / seconds,
      clientMs: (c.user + c.system) / 1000 / count, requests: diffCounts(before, await fetchS3Counts(s3.endpoint)),
    };
    out.push(m);
    o.log(`${name.padEnd(22)} ${m.perSecond.toFixed(0).padStart(6)}/s  s3rver ${m.s3rverMs.toFixed(3)} ms/${unit} (${m.s3rverCores.toFixed(2)} cores)  client ${m.clientMs.toFixed(3)} ms/${unit}  ${fmtCounts(m.requests)}`);
  };
  try {
    const setup = store();
    const big = new Uint8Array(o.getMiB * MiB);
    randomFillSync(big);
    await setup.put('big.bin', big);
    await setup.close();
    for (let r = 0; r < o.rounds; r++) {
      const s = store();
      await measure('PUT 0 B', o.count, 'request', () => pool(o.count, 16, (i) => s.put(`e/${r}-${i}`, new Uint8Array(0))));
      await measure('PUT 4 KiB', o.count, 'request', () => pool(o.count, 16, (i) => s.put(`k/${r}-${i}`, new Uint8Array(4096))));
      await measure('HEAD', o.count, 'request', () => pool(o.count, 16, (i) => s.head(`e/${r}-${i}`)));
      await measure('LIST page of 1000', 10, 'request', () => pool(10, 1, () => s.list({ prefix: 'e/', maxKeys: 1000 })));
      await s.close();
      // Interleaved, so that the variants see the same load: node:http and undici on the
      // event loop, undici on a read worker (client CPU: all threads).
      for (const [transport, workers] of [['node-http', 0], ['undici', 0], ['undici', 1]] as const) {
        const g = store(transport, workers);
        await g.head('big.bin');
        await g.startReadWorkers();
        await measure(`GET MiB (${transport}${workers ? ', worker' : ''})`, o.getMiB, 'MiB', () => pool(Math.ceil(o.getMiB / 8), 16, (i) => {
          const off = i * 8 * MiB;
          const n = Math.min(8 * MiB, big.length - off);
          // Shared targets on the worker, as the page cache allocates them for such a store.
          return g.getInto('big.bin', off, workers ? new Uint8Array(new SharedArrayBuffer(n)) : new Uint8Array(n));
        }));
        await g.close();
      }
    }
  } finally {
    await s3.child.stop();
  }
  return out;
}

function arg(name: string, dflt: string): string {
  const i = process.argv.indexOf(name);
  return i >= 0 && process.argv[i + 1] !== undefined ? process.argv[i + 1]! : dflt;
}

if (process.argv[1] && /s3-floors\.js$/.test(process.argv[1])) {
  measureFloors({
    rounds: Number(arg('--rounds', '3')), count: Number(arg('--count', '2000')), getMiB: Number(arg('--get-mib', '128')),
    dir: arg('--dir', '') || null, log: (l) => console.log(l),
  }).then(
    () => process.exit(0),
    (err: unknown) => {
      console.error(err);
      cleanupNow();
      process.exit(1);
    },
  );
}
