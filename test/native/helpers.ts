// Shared helpers for the addon tests.
import { readdirSync } from 'node:fs';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { NativeError } from '../../src/native/index.js';

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
