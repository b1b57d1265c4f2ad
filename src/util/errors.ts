// Errors that cross layers carry something a machine can act on: an errno (FUSE, file
// I/O), a virtio status (blk), or an exit code (configuration). Never a bare string.
import { constants } from 'node:os';

export type ErrnoName = keyof typeof constants.errno;

/** An operation failed with a POSIX errno (positive number). */
export class ErrnoError extends Error {
  readonly errno: number;
  readonly code: ErrnoName;
  constructor(code: ErrnoName, message?: string) {
    super(message ?? code);
    this.code = code;
    this.errno = constants.errno[code];
  }
}

/** Bad configuration or command line: the CLI prints the message on one line and exits 2. */
export class ConfigError extends Error {
  readonly exitCode = 2;
}

/** Reads the errno of anything thrown by Node's fs, the addon or our own code. */
export function errnoOf(err: unknown): number {
  if (err instanceof ErrnoError) return err.errno;
  if (typeof err === 'object' && err !== null) {
    const e = err as { errno?: unknown; code?: unknown };
    if (typeof e.errno === 'number') return Math.abs(e.errno);
    if (typeof e.code === 'string' && e.code in constants.errno) return constants.errno[e.code as ErrnoName];
  }
  return constants.errno.EIO;
}
