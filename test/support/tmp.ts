// Temporary directories and raw files for tests, removed after each test.
import { mkdtempSync, rmSync, openSync, closeSync, fsyncSync, ftruncateSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export class TmpDir {
  readonly path: string;
  constructor(prefix = 'vhost-s3-test-') {
    this.path = mkdtempSync(join(tmpdir(), prefix));
  }
  file(name: string): string {
    return join(this.path, name);
  }
  remove(): void {
    rmSync(this.path, { recursive: true, force: true });
  }
}

/** A sparse raw file of `size` bytes, optionally with `data` written at `offset`. */
export function makeRawFile(path: string, size: number, data?: { offset: number; bytes: Uint8Array }): string {
  const fd = openSync(path, 'w');
  try {
    ftruncateSync(fd, size);
    if (data) writeSync(fd, data.bytes, 0, data.bytes.byteLength, data.offset);
  } finally {
    closeSync(fd);
  }
  return path;
}

/** Writes `data` at `offset` of an existing file and fsyncs it (a host-side change to a disk image). */
export function writeAt(path: string, offset: number, data: Uint8Array): void {
  const fd = openSync(path, 'r+');
  try {
    writeSync(fd, data, 0, data.byteLength, offset);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** Deterministic bytes for checks: the same (seed, length) always gives the same bytes. */
export function patternBytes(seed: number, length: number): Uint8Array {
  const out = new Uint8Array(length);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}
