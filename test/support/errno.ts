// What a FUSE client call (or any call that fails with an ErrnoError) came to, as one
// comparable string, so a test can expect(await errnoCode(c.mkdir(...))).to.equal('EEXIST').
import { ErrnoError } from '../../src/util/errors.js';

/** The errno name the promise rejected with ('ENOENT', ...), or 'OK' if it resolved; any other error is rethrown. */
export async function errnoCode(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (err) {
    if (err instanceof ErrnoError) return err.code;
    throw err;
  }
  return 'OK';
}
