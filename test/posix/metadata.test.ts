// The metadata parsers and writers (s3fs / rclone compatibility), with property-based
// checks: what we write reads back exactly, passes the stores' metadata rules, and no
// input — however malformed — makes a parser throw.
import { expect } from 'chai';
import fc from 'fast-check';
import { normalizeMetadata } from '../../src/backends/object-store.js';
import {
  S_IFDIR,
  S_IFLNK,
  S_IFREG,
  attrFromMetadata,
  decodeXattrValue,
  encodeXattrValue,
  formatId,
  formatMode,
  formatTime,
  parseId,
  parseMode,
  parseTime,
  readMetadata,
  writeMetadata,
  xattrKey,
  xattrName,
  type StoredAttrs,
} from '../../src/backends/posix/metadata.js';
import { checkPath, isValidName } from '../../src/backends/posix/names.js';

const NS = 1_000_000_000n;
const MAX_NS = (1n << 63n) - 1n;
const defaults = { fileMode: 0o644, dirMode: 0o755, uid: 1, gid: 2 };

const anyString = fc.oneof(fc.string(), fc.string({ unit: 'binary' }), fc.stringMatching(/^[-+ 0-9.eE]{0,24}$/));

describe('posix metadata', () => {
  describe('mode', () => {
    it('reads s3fs decimal modes and octal with a leading 0', () => {
      expect(parseMode('33188')).to.equal(S_IFREG | 0o644);
      expect(parseMode('0100644')).to.equal(S_IFREG | 0o644);
      expect(parseMode('16877')).to.equal(S_IFDIR | 0o755);
      expect(parseMode('0755')).to.equal(0o755);
      expect(parseMode(' 420 ')).to.equal(0o644);
      expect(parseMode('0')).to.equal(0);
      for (const bad of ['', 'rwx', '0x1ed', '-1', '1e3', '65536', '0200000', '089', '12.5', undefined]) expect(parseMode(bad), String(bad)).to.equal(null);
    });

    it('round-trips every 16-bit mode, decimal and octal', () => {
      fc.assert(
        fc.property(fc.integer({ min: 0, max: 0xffff }), (m) => {
          expect(parseMode(formatMode(m))).to.equal(m);
          expect(parseMode('0' + m.toString(8))).to.equal(m);
        }),
      );
    });

    it('never throws and stays within 16 bits', () => {
      fc.assert(
        fc.property(anyString, (s) => {
          const m = parseMode(s);
          expect(m === null || (Number.isInteger(m) && m >= 0 && m <= 0xffff)).to.equal(true);
        }),
      );
    });
  });

  describe('ids', () => {
    it('round-trips 32-bit ids and refuses the rest', () => {
      fc.assert(
        fc.property(fc.integer({ min: 0, max: 0xffffffff }), (id) => {
          expect(parseId(formatId(id))).to.equal(id);
        }),
      );
      for (const bad of ['-1', '4294967296', 'root', '', '1.0']) expect(parseId(bad), bad).to.equal(null);
      fc.assert(
        fc.property(anyString, (s) => {
          const id = parseId(s);
          expect(id === null || (Number.isInteger(id) && id >= 0 && id <= 0xffffffff)).to.equal(true);
        }),
      );
    });
  });

  describe('times', () => {
    it('reads s3fs seconds, s3fs seconds.nanoseconds and rclone float seconds', () => {
      expect(parseTime('1700000000')).to.equal(1_700_000_000n * NS);
      expect(parseTime('1700000000.000000005')).to.equal(1_700_000_000n * NS + 5n);
      expect(parseTime('1700000000.123456789')).to.equal(1_700_000_000_123_456_789n);
      expect(parseTime('1700000000.25')).to.equal(1_700_000_000_250_000_000n);
      expect(parseTime('1700000000.1234567891234')).to.equal(1_700_000_000_123_456_789n);
      expect(parseTime('-1.5')).to.equal(-1_500_000_000n);
      expect(parseTime('.5')).to.equal(500_000_000n);
      expect(parseTime('7.')).to.equal(7n * NS);
      for (const bad of ['', '.', 'now', '1e9', '1,5', '--1', '12345678901234', undefined]) expect(parseTime(bad), String(bad)).to.equal(null);
    });

    it('writes s3fs form and reads back every signed 64-bit nanosecond time', () => {
      fc.assert(
        fc.property(fc.bigInt({ min: -MAX_NS, max: MAX_NS }), (t) => {
          const s = formatTime(t);
          expect(s).to.match(/^-?\d+(\.\d{9})?$/);
          expect(parseTime(s)).to.equal(t);
        }),
      );
      expect(formatTime(1_700_000_000n * NS)).to.equal('1700000000');
      expect(formatTime(1_700_000_000n * NS + 5n)).to.equal('1700000000.000000005');
    });

    it('reads rclone floats (any number of fraction digits)', () => {
      fc.assert(
        fc.property(fc.integer({ min: 0, max: 4_000_000_000 }), fc.stringMatching(/^[0-9]{1,9}$/), (sec, frac) => {
          const want = BigInt(sec) * NS + BigInt(frac.padEnd(9, '0'));
          expect(parseTime(`${sec}.${frac}`)).to.equal(want);
        }),
      );
    });

    it('never throws and stays within 64 bits', () => {
      fc.assert(
        fc.property(anyString, (s) => {
          const t = parseTime(s);
          expect(t === null || (t <= MAX_NS && t >= -MAX_NS)).to.equal(true);
        }),
      );
    });
  });

  describe('xattrs', () => {
    const name = fc.string({ unit: 'grapheme', minLength: 1, maxLength: 40 }).filter((s) => !s.includes('\0'));

    it('encodes any user.* name as a metadata key S3 keeps, and decodes it back', () => {
      fc.assert(
        fc.property(name, (n) => {
          const key = xattrKey(`user.${n}`);
          expect(key).to.match(/^[a-z0-9][a-z0-9._-]*$/);
          expect(xattrName(key)).to.equal(`user.${n}`);
          expect(xattrName(key.toUpperCase().toLowerCase())).to.equal(`user.${n}`);
        }),
      );
      for (const bad of ['xattr-', 'xattr-0', 'xattr-zz', 'xattr-00', 'mode', 'xattrs-6161', 'xattr-c3']) expect(xattrName(bad), bad).to.equal(null);
    });

    it('encodes any value as printable ASCII (never empty) and decodes it back', () => {
      fc.assert(
        fc.property(fc.uint8Array({ maxLength: 300 }), (v) => {
          const s = encodeXattrValue(v);
          expect(s).to.match(/^[\x21-\x7e]+$/);
          expect(Array.from(decodeXattrValue(s)!)).to.deep.equal(Array.from(v));
        }),
      );
      for (const bad of ['a', 'abc', '****', 'ab=c']) expect(decodeXattrValue(bad), bad).to.equal(null);
    });
  });

  describe('whole objects', () => {
    // Times often equal to each other too (a new file's three; mtime = ctime after a write): writeMetadata formats those once.
    const time = fc.oneof(fc.bigInt({ min: -MAX_NS, max: MAX_NS }), fc.constantFrom(-1n, 0n, 1_700_000_000_123_456_789n));
    const attrs = fc.record({
      mode: fc.integer({ min: 0, max: 0xffff }),
      uid: fc.integer({ min: 0, max: 0xffffffff }),
      gid: fc.integer({ min: 0, max: 0xffffffff }),
      mtime: time,
      ctime: time,
      atime: time,
    });
    const xattrs = fc
      .array(fc.tuple(fc.string({ minLength: 1, maxLength: 8 }).filter((s) => !s.includes('\0')), fc.uint8Array({ maxLength: 16 })), { maxLength: 4 })
      .map((l) => new Map(l.map(([n, v]) => [`user.${n}`, v] as const)));
    const other = fc.dictionary(fc.stringMatching(/^[a-z][a-z0-9-]{0,8}$/), fc.stringMatching(/^[ -~]{0,12}$/), { maxKeys: 3 });

    it('writes metadata the stores accept and reads back attributes, xattrs and foreign keys', () => {
      fc.assert(
        fc.property(attrs, xattrs, other, (a: StoredAttrs, x, o) => {
          const m = writeMetadata(a, x, o);
          expect(() => normalizeMetadata(m)).to.not.throw();
          const r = readMetadata(m);
          expect([r.mode, r.uid, r.gid, r.mtime, r.ctime, r.atime]).to.deep.equal([a.mode, a.uid, a.gid, a.mtime, a.ctime, a.atime]);
          expect([...r.xattrs.keys()].sort()).to.deep.equal([...x.keys()].sort());
          for (const [k, v] of x) expect(Array.from(r.xattrs.get(k)!)).to.deep.equal(Array.from(v));
          for (const [k, v] of Object.entries(o)) {
            if (['mode', 'uid', 'gid', 'mtime', 'ctime', 'atime'].includes(k)) continue;
            expect(r.other[k], k).to.equal(v);
          }
        }),
      );
    });

    it('never throws on arbitrary metadata', () => {
      fc.assert(
        fc.property(fc.dictionary(fc.oneof(fc.constantFrom('mode', 'uid', 'gid', 'mtime', 'ctime', 'atime', 'xattr-61', 'MODE'), fc.string()), anyString), (m) => {
          const r = readMetadata(m);
          const a = attrFromMetadata('object', r, 0n, 10, defaults);
          expect(['file', 'symlink']).to.include(a.kind);
          expect(attrFromMetadata('dir', r, 0n, 10, defaults).kind).to.equal('dir');
        }),
      );
    });

    it('derives kind and type bits from the object and its mode', () => {
      const meta = (m: Record<string, string>) => readMetadata(m);
      expect(attrFromMetadata('object', meta({}), 5n, 3, defaults)).to.deep.include({ kind: 'file', mode: S_IFREG | 0o644, uid: 1, gid: 2, mtime: 5n, ctime: 5n, atime: 5n, size: 3 });
      expect(attrFromMetadata('dir', meta({}), 5n, 0, defaults)).to.deep.include({ kind: 'dir', mode: S_IFDIR | 0o755 });
      expect(attrFromMetadata('object', meta({ mode: String(S_IFLNK | 0o777) }), 0n, 3, defaults).kind).to.equal('symlink');
      // A directory mode on a plain object, and a mode without type bits: regular files.
      expect(attrFromMetadata('object', meta({ mode: String(S_IFDIR | 0o700) }), 0n, 3, defaults).mode).to.equal(S_IFREG | 0o700);
      expect(attrFromMetadata('object', meta({ mode: '0600' }), 0n, 3, defaults).mode).to.equal(S_IFREG | 0o600);
      // A marker is a directory whatever its mode says.
      expect(attrFromMetadata('dir', meta({ mode: String(S_IFREG | 0o600) }), 0n, 0, defaults).mode).to.equal(S_IFDIR | 0o600);
      // Times: ctime and atime fall back to mtime.
      expect(attrFromMetadata('object', meta({ mtime: '10' }), 5n, 0, defaults)).to.deep.include({ mtime: 10n * NS, ctime: 10n * NS, atime: 10n * NS });
    });
  });

  describe('names', () => {
    it('accepts POSIX names only', () => {
      for (const ok of ['a', 'a b', 'é', '...', 'x'.repeat(255), 'é'.repeat(127)]) expect(isValidName(ok), ok).to.equal(true);
      for (const bad of ['', '.', '..', 'a/b', 'a\0', 'x'.repeat(256), 'é'.repeat(128), 'lone\uD800']) expect(isValidName(bad), bad).to.equal(false);
    });

    it('counts NAME_MAX in UTF-8 bytes around the limit (short names are not counted), and checkPath agrees', () => {
      const unit = fc.constantFrom('x', 'é', '€', '\u{1F600}');
      fc.assert(
        fc.property(fc.array(unit, { minLength: 60, maxLength: 260 }), (units) => {
          const name = units.join('');
          const fits = Buffer.byteLength(name, 'utf8') <= 255;
          expect(isValidName(name)).to.equal(fits);
          if (fits) checkPath(`a/${name}`);
          else expect(() => checkPath(`a/${name}`)).to.throw().with.property('code', 'ENAMETOOLONG');
        }),
        { numRuns: 500 },
      );
    });
  });
});
