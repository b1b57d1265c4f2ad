// Counting the requests s3rver serves, by kind, so that a benchmark can report how many S3
// requests a workload cost (on a noisy machine the most reliable signal there is).
//
// s3rver runs with a preload (`node -r <file>`) that wraps http.Server's 'request' event:
// every request is counted under its kind, and GET /__vhost_s3_counts answers the counts
// so far as JSON (that request itself is not counted and never reaches s3rver).
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

export const COUNTS_PATH = '/__vhost_s3_counts';

/** Request kinds: LIST, HEAD, GET, PUT, COPY, DELETE, DELETE-MANY, MULTIPART, BUCKET (anything on the bucket itself but a listing). */
export type S3Counts = Record<string, number>;

const PRELOAD = `'use strict';
const http = require('node:http');
const counts = Object.create(null);
const emit = http.Server.prototype.emit;
function kindOf(req) {
  const q = req.url.indexOf('?');
  const path = q < 0 ? req.url : req.url.slice(0, q);
  const query = q < 0 ? '' : req.url.slice(q + 1);
  const segs = path.split('/').filter((s) => s !== '');
  const has = (k) => query.split('&').some((p) => p === k || p.startsWith(k + '='));
  if (segs.length <= 1) {
    if (req.method === 'GET' && !has('location') && !has('cors') && !has('website') && !has('policy')) return 'LIST';
    if (req.method === 'POST' && has('delete')) return 'DELETE-MANY';
    return 'BUCKET';
  }
  if (has('uploads') || has('uploadId')) return 'MULTIPART';
  if (req.method === 'PUT' && req.headers['x-amz-copy-source']) return 'COPY';
  return req.method;
}
http.Server.prototype.emit = function (event, req, res) {
  if (event === 'request') {
    if (req.url === '${COUNTS_PATH}') {
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify(counts));
      return true;
    }
    const k = kindOf(req);
    counts[k] = (counts[k] || 0) + 1;
  }
  return emit.apply(this, arguments);
};
`;

/** Writes the preload into `dir`; returns its path (for `node -r`). */
export function writeCountingPreload(dir: string): string {
  const file = join(dir, 'count-requests.cjs');
  writeFileSync(file, PRELOAD);
  return file;
}

/** The counts so far (null if the server does not answer them). */
export async function fetchS3Counts(endpoint: string): Promise<S3Counts | null> {
  try {
    const r = await fetch(`${endpoint}${COUNTS_PATH}`);
    if (!r.ok) return null;
    return (await r.json()) as S3Counts;
  } catch {
    return null;
  }
}

/** after - before, kinds with 0 left out, plus `total`. */
export function diffCounts(before: S3Counts | null, after: S3Counts | null): S3Counts | null {
  if (!before || !after) return null;
  const out: S3Counts = {};
  let total = 0;
  for (const [k, v] of Object.entries(after)) {
    const d = v - (before[k] ?? 0);
    if (d !== 0) {
      out[k] = d;
      total += d;
    }
  }
  out.total = total;
  return out;
}

export function fmtCounts(c: S3Counts | null): string {
  if (!c) return 'requests: ?';
  return `requests: ${Object.entries(c).filter(([k]) => k !== 'total').map(([k, v]) => `${k} ${v}`).join(', ') || 'none'} (total ${c.total ?? 0})`;
}
