// --metrics HOST:PORT parsing: the accepted forms, and a ConfigError (exit 2) for the rest.
import { expect } from 'chai';
import { parseListenAddress } from '../../src/metrics/address.js';
import { ConfigError } from '../../src/util/errors.js';

describe('metrics: --metrics HOST:PORT', () => {
  it('accepts IPv4, bracketed IPv6, host names and an empty host (every interface); "" is off', () => {
    expect(parseListenAddress('127.0.0.1:9464')).to.deep.equal({ host: '127.0.0.1', port: 9464 });
    expect(parseListenAddress('[::1]:9464')).to.deep.equal({ host: '::1', port: 9464 });
    expect(parseListenAddress('localhost:1')).to.deep.equal({ host: 'localhost', port: 1 });
    expect(parseListenAddress(':65535')).to.deep.equal({ host: '0.0.0.0', port: 65535 });
    expect(parseListenAddress('')).to.equal(null);
  });

  for (const bad of ['9464', '127.0.0.1', '127.0.0.1:0', '127.0.0.1:65536', '127.0.0.1:http', '::1:9464', '[::1]', '[nothex]:1', 'a b:1', 'http://127.0.0.1:9464', ' 127.0.0.1:9464']) {
    it(`refuses ${JSON.stringify(bad)} in one line`, () => {
      let caught: unknown = null;
      try {
        parseListenAddress(bad);
      } catch (err) {
        caught = err;
      }
      expect(caught).to.be.instanceOf(ConfigError);
      expect((caught as Error).message).to.match(/^--metrics/);
      expect((caught as Error).message.split('\n')).to.have.length(1);
    });
  }
});
