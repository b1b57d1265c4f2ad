import { expect } from 'chai';
import { loadConfig, parseSize, describeSchema } from '../../src/config.js';
import { ConfigError } from '../../src/util/errors.js';

describe('config', () => {
  it('parses sizes with binary units', () => {
    expect(parseSize('512')).to.equal(512);
    expect(parseSize('4k')).to.equal(4096);
    expect(parseSize('512M')).to.equal(512 * 2 ** 20);
    expect(parseSize('20G')).to.equal(20 * 2 ** 30);
    expect(parseSize('1.5G')).to.equal(1.5 * 2 ** 30);
    expect(parseSize('2GiB')).to.equal(2 * 2 ** 30);
    expect(() => parseSize('12X')).to.throw(ConfigError);
    expect(() => parseSize('')).to.throw(ConfigError);
    expect(() => parseSize('-1G')).to.throw(ConfigError);
  });

  it('takes flags over environment over defaults', () => {
    const env = { VHOST_S3_QUEUES: '3', VHOST_S3_SOCKET: '/env.sock' };
    const c = loadConfig('blk', ['--socket', '/flag.sock', '--serial', '0123', '--readonly'], env);
    expect(c.socket).to.equal('/flag.sock');
    expect(c.queues).to.equal(3);
    expect(c.serial).to.equal('0123');
    expect(c.readonly).to.equal(true);
    expect(c.ioEngine).to.equal('uring');
    expect(loadConfig('blk', ['--no-readonly'], { VHOST_S3_READONLY: 'true' }).readonly).to.equal(false);
    expect(loadConfig('blk', ['--socket=/x.sock'], {}).socket).to.equal('/x.sock');
  });

  it('coerces sizes given as flags and environment variables', () => {
    expect(loadConfig('serve', ['--disk-size', '64M'], {}).diskSize).to.equal(64 << 20);
    expect(loadConfig('serve', [], { VHOST_S3_DISK_SIZE: '2G' }).diskSize).to.equal(2 ** 31);
    expect(loadConfig('bench blk', ['--bs', '1M'], {}).bs).to.equal(1 << 20);
  });

  it('rejects unknown flags, missing values and invalid values with one-line ConfigErrors', () => {
    const bad: string[][] = [
      ['--nope', '1'],
      ['--socket'],
      ['stray'],
      ['--queues', '0'],
      ['--queues', 'many'],
      ['--io-engine', 'aio'],
      ['--readonly=maybe'],
      ['--log-level', 'loud'],
    ];
    for (const argv of bad) {
      let err: unknown;
      try {
        loadConfig('blk', argv, {});
      } catch (e) {
        err = e;
      }
      expect(err, argv.join(' ')).to.be.instanceOf(ConfigError);
      expect((err as Error).message, argv.join(' ')).not.to.include('\n');
    }
    expect(() => loadConfig('serve', ['--disk-size', 'big'], {})).to.throw(ConfigError);
  });

  it('documents every option with its flag and environment variable', () => {
    const text = describeSchema('blk');
    for (const s of ['--socket', 'VHOST_S3_SOCKET', '--image', 'VHOST_S3_IMAGE', '--queues', '--serial', '--readonly']) {
      expect(text).to.include(s);
    }
  });
});
