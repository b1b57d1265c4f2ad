// The figures of the reliability tests: one row per fault class (or crash), printed as a
// table when a test ends, and appended as JSON lines to $VHOST_S3_RELIABILITY_REPORT when
// that is set (docs/reliability.md quotes them).
import { appendFileSync } from 'node:fs';

export type Row = Record<string, string | number | boolean>;

export function report(title: string, rows: readonly Row[]): void {
  if (rows.length === 0) return;
  const cols = [...new Set(rows.flatMap((r) => Object.keys(r)))];
  const cell = (v: unknown): string => (v === undefined ? '' : String(v));
  const width = cols.map((c) => Math.max(c.length, ...rows.map((r) => cell(r[c]).length)));
  const line = (vals: string[]): string => vals.map((v, i) => v.padEnd(width[i]!)).join('  ').trimEnd();
  console.log(`\n      ${title}`);
  console.log(`      ${line(cols)}`);
  for (const r of rows) console.log(`      ${line(cols.map((c) => cell(r[c])))}`);
  const file = process.env.VHOST_S3_RELIABILITY_REPORT;
  if (file) for (const r of rows) appendFileSync(file, JSON.stringify({ test: title, at: new Date().toISOString(), ...r }) + '\n');
}

/** Iteration counts: the default, or multiplied by $VHOST_S3_RELIABILITY_SCALE (to run longer). */
export function scaled(n: number): number {
  const f = Number(process.env.VHOST_S3_RELIABILITY_SCALE ?? 1);
  return Math.max(1, Math.round(n * (Number.isFinite(f) && f > 0 ? f : 1)));
}

/** Added to every seed of the reliability tests: $VHOST_S3_RELIABILITY_SEED explores other fault and workload sequences (default 0). */
export function seedOffset(): number {
  const n = Number(process.env.VHOST_S3_RELIABILITY_SEED ?? 0);
  return Number.isSafeInteger(n) ? n : 0;
}
