// A copy of an object's bytes in an anonymous memory file: the backing file a FUSE
// passthrough open reads from (src/fuse/passthrough.ts). Written on the thread pool, a
// batch of blocks per writev, so that a large copy does not hold up the event loop.
import { closeSync, writev } from 'node:fs';
import { promisify } from 'node:util';
import { native } from '../../native/index.js';
import { pastBytes } from '../../util/bytes.js';

const writevAsync = promisify(writev);
/** Blocks per writev (IOV_MAX is 1024). */
const BATCH = 256;

/** A memfd holding the concatenation of `blocks` cut at `size` bytes; the caller closes it. */
export async function copyToMemfd(blocks: readonly Uint8Array[], size: number): Promise<number> {
  // Its size sealed: nobody it is handed to can truncate it under a reader.
  const fd = native.memfdCreate('vhost-s3-passthrough', size, true);
  try {
    let at = 0;
    for (let i = 0; i < blocks.length && at < size; i += BATCH) {
      const batch: Uint8Array[] = [];
      let bytes = 0;
      for (const b of blocks.slice(i, i + BATCH)) {
        const n = Math.min(b.length, size - at - bytes);
        if (n <= 0) break;
        batch.push(n === b.length ? b : b.subarray(0, n));
        bytes += n;
      }
      let done = 0;
      while (done < bytes) {
        const rest = pastBytes(batch, done);
        const { bytesWritten: n } = await writevAsync(fd, rest, at + done);
        if (n <= 0) throw new Error('memfd write made no progress');
        done += n;
      }
      at += bytes;
    }
    if (at !== size) throw new RangeError(`memfd copy: ${at} of ${size} bytes in the blocks`);
    return fd;
  } catch (err) {
    closeSync(fd);
    throw err;
  }
}
