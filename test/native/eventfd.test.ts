import { expect } from 'chai';
import { native } from '../../src/native/index.js';
import { nativeError } from './helpers.js';

describe('native: eventfd', () => {
  it('adds writes up and resets on read', () => {
    const efd = native.eventfd(5);
    expect(native.eventfdRead(efd)).to.equal(5);
    expect(native.eventfdRead(efd)).to.equal(0);
    native.eventfdWrite(efd, 1);
    native.eventfdWrite(efd, 2);
    native.eventfdWrite(efd, 2 ** 40);
    expect(native.eventfdRead(efd)).to.equal(3 + 2 ** 40);
    expect(native.eventfdRead(efd)).to.equal(0);
    native.close(efd);
  });

  it('rejects bad values', () => {
    const efd = native.eventfd(0);
    expect(() => native.eventfdWrite(efd, -1)).to.throw(RangeError);
    expect(() => native.eventfdWrite(efd, 1.5)).to.throw(RangeError);
    native.close(efd);
    expect(nativeError(() => native.eventfdRead(efd)).code).to.equal('EBADF');
  });
});
