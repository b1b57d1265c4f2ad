// Shared helpers for the addon tests.
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { NativeError, native, type Mapping } from '../../src/native/index.js';

/** Number of open fds of this process. */
export function fdCount(): number {
  return readdirSync('/proc/self/fd').length;
}

/** Runs fn and returns the NativeError it throws (fails if it does not throw one). */
export function nativeError(fn: () => unknown): NativeError {
  try {
    fn();
  } catch (err) {
    if (err instanceof NativeError) return err;
    throw new Error(`expected a NativeError, got ${String(err)}`);
  }
  throw new Error('expected a NativeError, nothing was thrown');
}

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

/** Runs full GCs and lets the finalizers that Node defers to setImmediate run. */
export async function collectGarbage(): Promise<void> {
  for (let i = 0; i < 4; i++) {
    gc();
    await new Promise((resolve) => setImmediate(resolve));
  }
}

/** What useFileAndMemory gives each test. */
export class FileAndMemory {
  /** A fresh temporary directory for the test's files. */
  dir!: string;
  /** 1 MiB of "guest memory": a memfd mapped shared, read and written by the file I/O under test. */
  memfd!: number;
  mem!: Mapping;
}

/** Registers beforeEach/afterEach: each test gets a new directory (named prefix…) and memory; both go after it. */
export function useFileAndMemory(prefix: string): FileAndMemory {
  const fx = new FileAndMemory();
  beforeEach(() => {
    fx.dir = mkdtempSync(join(tmpdir(), prefix));
    fx.memfd = native.memfdCreate('guest', 1 << 20);
    fx.mem = native.mmap(fx.memfd, 0, 1 << 20, true);
  });
  afterEach(() => {
    fx.mem.unmap();
    native.close(fx.memfd);
    rmSync(fx.dir, { recursive: true, force: true });
  });
  return fx;
}
