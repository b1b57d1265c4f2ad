// The tuning options of `vhost-s3 fs` and `mount` reach BucketVfs: every flag and its
// VHOST_S3_* variable set the BucketVfs setting it names (BucketVfs.options shows what is in
// effect), the command's defaults are BucketVfs's own, and values the file system cannot
// work with are configuration errors. (That each setting changes what BucketVfs does is
// test/posix/options.test.ts; the one-line error and exit 2 of the real command are in
// test/cli/fs.test.ts.)
import { expect } from 'chai';
import { BucketVfs, type BucketVfsOptions } from '../../src/backends/posix/bucket-vfs.js';
import { MemoryStore } from '../../src/backends/memory-store.js';
import { bucketVfsOptions } from '../../src/cli/fs.js';
import { loadCommand, loadConfig, schemas } from '../../src/config.js';
import { ConfigError } from '../../src/util/errors.js';

const MiB = 2 ** 20;

type Key = keyof Omit<BucketVfsOptions, 'store' | 'prefix' | 'logger'>;

/** flag, a value to give, the BucketVfs setting and the value it must get. */
const CASES: [string, string, Key, number][] = [
  ['spill-threshold', '3M', 'spillThreshold', 3 * MiB],
  ['cache-block-size', '256K', 'blockSize', 256 * 1024],
  ['read-ahead', '0', 'readAheadBytes', 0],
  ['fetch-concurrency', '3', 'fetchConcurrency', 3],
  ['multipart-threshold', '100M', 'multipartThreshold', 100 * MiB],
  ['part-size', '8M', 'partSize', 8 * MiB],
  ['upload-concurrency', '7', 'uploadConcurrency', 7],
  ['upload-memory', '1G', 'uploadMemory', 1024 * MiB],
  ['meta-concurrency', '5', 'metaConcurrency', 5],
  ['attr-cache-entries', '42', 'attrCacheEntries', 42],
  ['list-cache-entries', '9', 'listCacheEntries', 9],
  ['cache-size', '64M', 'pageCacheBytes', 64 * MiB],
  ['write-buffer', '32M', 'memoryBudget', 32 * MiB],
  ['list-timeout', '7', 'listTtlMs', 7000],
  ['negative-timeout', '0.5', 'negativeTtlMs', 500],
];

function envOf(flag: string): string {
  const spec = Object.values(schemas.fs).find((s) => s.arg === flag);
  if (spec === undefined) throw new Error(`no option --${flag}`);
  return spec.env;
}

describe('cli: the BucketVfs settings of vhost-s3 fs and mount', () => {
  for (const [flag, value, key, want] of CASES) {
    it(`--${flag} ${value} and ${envOf(flag)}=${value} set ${key} to ${want}`, () => {
      expect(bucketVfsOptions(loadConfig('fs', [`--${flag}`, value], {}))[key]).to.equal(want);
      expect(bucketVfsOptions(loadConfig('fs', [], { [envOf(flag)]: value }))[key]).to.equal(want);
      expect(bucketVfsOptions(loadCommand('mount', [`--${flag}`, value, '/mnt'], ['MOUNTPOINT'], {}).config)[key]).to.equal(want);
    });
  }

  it('reach the BucketVfs the command makes (its options show them in effect)', () => {
    const cfg = loadConfig('fs', CASES.flatMap(([flag, value]) => [`--${flag}`, value]), {});
    const vfs = new BucketVfs({ store: new MemoryStore(), ...bucketVfsOptions(cfg) });
    for (const [flag, , key, want] of CASES) expect(vfs.options[key], `--${flag}`).to.equal(want);
  });

  it("the commands' defaults are BucketVfs's own", () => {
    const fromCli = bucketVfsOptions(loadConfig('fs', [], {}));
    const own = new BucketVfs({ store: new MemoryStore() }).options;
    for (const [flag, , key] of CASES) {
      if (key === 'listTtlMs' || key === 'negativeTtlMs') continue; // the commands' TTLs are shorter on purpose (the kernel's too)
      expect(fromCli[key], `--${flag}`).to.equal(own[key]);
    }
  });

  it('refuses values the file system cannot work with (ConfigError naming the flag)', () => {
    const bad: [string, string, RegExp][] = [
      ['cache-block-size', '1000', /--cache-block-size must be a power of two/],
      ['cache-block-size', '2K', /--cache-block-size/],
      ['cache-block-size', '128M', /--cache-block-size/],
      ['part-size', '0', /--part-size must be/],
      ['part-size', '6G', /--part-size must be/],
      ['multipart-threshold', '6G', /--multipart-threshold must be at most 5G/],
      ['upload-memory', '0', /--upload-memory must be more than 0/],
    ];
    for (const [flag, value, pattern] of bad) {
      expect(() => bucketVfsOptions(loadConfig('fs', [`--${flag}`, value], {})), `--${flag} ${value}`).to.throw(ConfigError, pattern);
    }
    const badFormat: [string, string][] = [
      ['fetch-concurrency', '0'], ['upload-concurrency', '-1'], ['meta-concurrency', '1.5'], ['attr-cache-entries', 'many'],
      ['list-cache-entries', '0'], ['spill-threshold', '-1M'], ['read-ahead', 'lots'],
    ];
    for (const [flag, value] of badFormat) {
      expect(() => loadConfig('fs', [`--${flag}`, value], {}), `--${flag} ${value}`).to.throw(ConfigError, new RegExp(`--${flag}|invalid size`));
    }
  });
});
