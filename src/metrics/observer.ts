// What devices, stores and caches report to, without knowing about Prometheus. Each is
// optional where it is used: with metrics off the hot paths test one field and go on.

/** The requests of one device (blk or fs): every started request is done exactly once. */
export interface RequestObserver {
  /** A request was taken from the ring (or /dev/fuse); returns its start time for done(). */
  start(): number;
  /**
   * The request completed. `op`: "in", "out", "flush", … (blk) or the FUSE opcode name;
   * `status`: "ok", a blk status ("ioerr", "unsupp") or an errno name ("ENOENT").
   * `bytesRead`/`bytesWritten`: data moved to / from the guest (0 unless ok).
   */
  done(start: number, op: string, status: string, bytesRead: number, bytesWritten: number): void;
}

/** One attempt of an S3 request (retries are attempts after the first). */
export interface S3Observer {
  /** `operation` as the API names it ("GetObject"); `status` the HTTP status, 0 when none came back. */
  attempt(operation: string, status: number, bytesSent: number, bytesReceived: number): void;
  /** A request ended after `attempts` attempts (attempts - 1 retries). */
  finished(operation: string, attempts: number): void;
}

/** Operations of a store that is not S3 (the local directory store): by name and result. */
export interface StoreObserver {
  /** `result`: "ok" or the error's code ("ENOENT", "ESTALE", …). */
  operation(name: string, result: string): void;
}
