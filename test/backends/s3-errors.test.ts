// S3Store.mapError on its own: the errors the SDK throws (shaped as @smithy/node-http-handler
// and the SDK's deserializers make them) → StoreError codes and messages. No server needed:
// mapping does not talk to the store.
import { expect } from 'chai';
import { S3Store } from '../../src/backends/s3-store.js';

/** A socket error as node-http-handler rejects it: Node's error, renamed TimeoutError for resets, broken pipes and timeouts. */
function socketError(code: string): Error {
  const err = Object.assign(new Error(code === 'ECONNRESET' ? 'read ECONNRESET' : `write ${code}`), { code });
  if (['ECONNRESET', 'EPIPE', 'ETIMEDOUT'].includes(code)) err.name = 'TimeoutError';
  return err;
}

describe('S3Store.mapError', () => {
  const store = new S3Store({ bucket: 'b', endpoint: 'http://127.0.0.1:9', credentials: { accessKeyId: 'a', secretAccessKey: 's' } });
  after(() => store.close());

  it('a connection reset is EIO "connection reset", not a timeout', () => {
    const e = store.mapError(socketError('ECONNRESET'), 'get', 'k');
    expect(e.code).to.equal('EIO');
    expect(e.message).to.match(/^get k on s3:\/\/b .*: connection reset \(read ECONNRESET\)$/);
    expect(e.message).to.not.match(/timed out/);
    // Also when it is the cause of another error.
    expect(store.mapError(Object.assign(new Error('socket hang up'), { cause: socketError('ECONNRESET') }), 'put', 'k').code).to.equal('EIO');
    expect(store.mapError(socketError('EPIPE'), 'put', 'k').message).to.include('connection closed by the endpoint');
  });

  it('timeouts stay ETIMEDOUT, refusals ECONNREFUSED, HTTP errors by their status', () => {
    expect(store.mapError(socketError('ETIMEDOUT'), 'head', 'k')).to.include({ code: 'ETIMEDOUT' });
    expect(store.mapError(Object.assign(new Error('x'), { name: 'TimeoutError' }), 'head', 'k').message).to.include('timed out');
    expect(store.mapError(Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' }), 'head', 'k').code).to.equal('ECONNREFUSED');
    // An HTTP answer is never a network failure, whatever its error says.
    const http = Object.assign(new Error('We encountered an internal error'), { name: 'InternalError', code: 'ECONNRESET', $metadata: { httpStatusCode: 500 } });
    expect(store.mapError(http, 'get', 'k').message).to.not.include('connection reset');
  });
});
