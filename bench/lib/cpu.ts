// CPU accounting from /proc: per process (all its threads, living and exited), per
// thread name (living threads only), and for the whole machine. Used to show which side
// of a measurement is the bottleneck (a side near 1.0 cores is saturated).
import { readFileSync, readdirSync } from 'node:fs';
import { execFileSync } from 'node:child_process';

let clkTck = 100;
try {
  clkTck = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
} catch {
  /* Linux default */
}

/** utime + stime of a /proc stat line, in seconds, and the comm field. */
function parseStat(line: string): { comm: string; seconds: number } {
  const open = line.indexOf('(');
  const close = line.lastIndexOf(')');
  const comm = line.slice(open + 1, close);
  const f = line.slice(close + 2).split(' ');
  // Fields after comm start at field 3 (state); utime is field 14, stime field 15.
  return { comm, seconds: (Number(f[11]) + Number(f[12])) / clkTck };
}

/** Thread names with their per-thread suffixes folded (iou-wrk-1234 → iou-wrk). */
function threadGroup(comm: string): string {
  return comm.replace(/[-_:]?\d+$/, '').trim() || comm;
}

export interface ProcCpu {
  readonly total: number;
  readonly threads: Record<string, number>;
}

export function procCpu(pid: number): ProcCpu {
  let total = 0;
  const threads: Record<string, number> = {};
  try {
    total = parseStat(readFileSync(`/proc/${pid}/stat`, 'utf8')).seconds;
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      try {
        const t = parseStat(readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8'));
        const g = threadGroup(t.comm);
        threads[g] = (threads[g] ?? 0) + t.seconds;
      } catch {
        /* thread exited meanwhile */
      }
    }
  } catch {
    /* process gone */
  }
  return { total, threads };
}

/** CPU seconds used between two samples, divided by wall seconds: cores busy. */
export function procCores(a: ProcCpu, b: ProcCpu, wall: number): { cores: number; threads: Record<string, number> } {
  const threads: Record<string, number> = {};
  for (const [k, v] of Object.entries(b.threads)) {
    const d = v - (a.threads[k] ?? 0);
    if (d > 0) threads[k] = round3(d / wall);
  }
  return { cores: round3((b.total - a.total) / wall), threads };
}

export interface MachineCpu {
  readonly busy: number;
  readonly total: number;
}

export function machineCpu(): MachineCpu {
  const line = readFileSync('/proc/stat', 'utf8').split('\n')[0]!;
  const v = line.trim().split(/\s+/).slice(1).map(Number);
  const idle = (v[3] ?? 0) + (v[4] ?? 0); // idle + iowait
  const total = v.reduce((s, x) => s + x, 0);
  return { busy: total - idle, total };
}

/** Fraction of all CPUs busy between two samples (0..1). */
export function machineBusy(a: MachineCpu, b: MachineCpu): number {
  const t = b.total - a.total;
  return t > 0 ? round3((b.busy - a.busy) / t) : 0;
}

export function round3(x: number): number {
  return Math.round(x * 1000) / 1000;
}
