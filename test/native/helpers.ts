// Shared helpers for the addon tests.
import { readdirSync } from 'node:fs';
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
