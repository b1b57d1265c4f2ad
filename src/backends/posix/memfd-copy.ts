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

/** A memfd holding the concatenation of `blocks` (the page cache's, `size` bytes in all); the caller closes it. */
export async function copyToMemfd(blocks: readonly Uint8Array[], size: number): Promise<number> {
  // Its size sealed: nobody it is handed to can truncate it under a reader.
  const fd = native.memfdCreate('vhost-s3-passthrough', size, true);
  try {
    let at = 0;
    for (let i = 0; i < blocks.length; i += BATCH) {
      let rest = blocks.slice(i, i + BATCH);
      while (rest.length > 0) {
        const { bytesWritten } = await writevAsync(fd, rest, at);
        if (bytesWritten <= 0) throw new Error('memfd write made no progress');
        at += bytesWritten;
        rest = pastBytes(rest, bytesWritten);
      }
    }
    if (at !== size) throw new RangeError(`memfd copy: ${at} of ${size} bytes in the blocks`);
    return fd;
  } catch (err) {
    closeSync(fd);
    throw err;
  }
}
