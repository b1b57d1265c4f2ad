// Errnos in tests: what a FUSE client call (or any call that fails with an ErrnoError) came
// to, as one comparable string (expect(await errnoCode(c.mkdir(...))).to.equal('EEXIST')),
// and the assertion that a call fails with a given errno, whatever error type carries it.
import { expect } from 'chai';
import { constants } from 'node:os';
import { ErrnoError, errnoOf } from '../../src/util/errors.js';

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

/** Asserts that `p` rejects with errno `code` (read by errnoOf: ErrnoError, StoreError, Node's errors); returns the error. */
export async function expectErrno(p: Promise<unknown>, code: keyof typeof constants.errno): Promise<unknown> {
  let err: unknown;
  try {
    await p;
  } catch (e) {
    err = e;
  }
  expect(err, `expected ${code}, got success`).to.exist;
  expect(errnoOf(err), `expected ${code}, got ${String(err)}`).to.equal(constants.errno[code]);
  return err;
}
