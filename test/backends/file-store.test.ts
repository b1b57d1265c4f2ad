// The conformance suite against the file store, plus its own guarantees: key encoding
// (property: any key round-trips and stays under the root), listing order against a
// reference model, and atomicity (a crashed write leaves no partial object).
import { expect } from 'chai';
import fc from 'fast-check';
import { spawn, execFileSync } from 'node:child_process';
import { existsSync, openSync, writeSync, closeSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve, sep } from 'node:path';
import { ASYNC_READ_MIN_BYTES, FileStore, HEADER_SIZE } from '../../src/backends/file-store.js';
import { native } from '../../src/native/index.js';
import type { Segment } from '../../src/virtio/memory.js';
import { MemoryStore } from '../../src/backends/memory-store.js';
import { decodeSegment, encodeSegment, keyPathFits, keyToPath, pathToKey, NAME_MAX, TEMP_TAG } from '../../src/backends/file-keys.js';
import { compareKeys, listAll, listKeys, StoreError, validateKey, type ObjectStore } from '../../src/backends/object-store.js';
import { TmpDir, patternBytes } from '../support/tmp.js';
import { expectErrno, objectStoreConformance } from './conformance.js';

const dirs: TmpDir[] = [];
function tmp(): TmpDir {
  const d = new TmpDir('vhost-s3-filestore-');
  dirs.push(d);
  return d;
}

describe('FileStore', () => {
  after(() => {
    for (const d of dirs) d.remove();
  });

  objectStoreConformance({
    name: 'file',
    open: async () => {
      const store = await FileStore.open(tmp().file('store'), { create: true });
      return { store, close: () => store.close() };
    },
    openMissingContainer: async () => {
      const store = new FileStore(tmp().file('never-created'));
      return { store, close: () => store.close() };
    },
  });

  /** Keys from an alphabet rich in the characters that matter (/, ., %, NUL, unicode), plus arbitrary strings. */
  const awkwardChar = fc.constantFrom('/', '.', '%', '\0', 'a', 'b', '-', ' ', '~', '\\', 'é', '\uFF5E', '\u{1F600}', '0', '2', '5');
  const awkwardKey = fc.oneof(
    fc.array(awkwardChar, { minLength: 1, maxLength: 24 }).map((a) => a.join('')),
    fc.string({ unit: 'binary', minLength: 1, maxLength: 64 }),
    fc.string({ unit: 'grapheme', minLength: 1, maxLength: 40 }),
  );

  describe('file store key encoding', () => {
    const root = '/srv/store';

    it('decodeSegment inverts encodeSegment for any string', () => {
      fc.assert(
        // A segment never holds '/' (keys are split there).
        fc.property(fc.oneof(fc.string({ unit: 'binary' }), fc.array(awkwardChar).map((a) => a.join(''))).map((s) => s.replaceAll('/', '')), (s) => {
          expect(decodeSegment(encodeSegment(s))).to.equal(s);
          expect(encodeSegment(s)).to.not.include('\0');
        }),
        { numRuns: 2000 },
      );
    });

    it('any key maps to names that stay under the root and map back to the key (or ENAMETOOLONG)', () => {
      fc.assert(
        fc.property(awkwardKey, (key) => {
          let p;
          try {
            p = keyToPath(key);
          } catch (err) {
            expect(err).to.be.instanceOf(StoreError);
            expect((err as StoreError).code).to.equal('ENAMETOOLONG');
            return;
          }
          for (const name of [...p.dirs, p.file]) {
            expect(name).to.not.match(/[/\0]/);
            expect(name).to.not.be.oneOf(['', '.', '..']);
            expect(Buffer.byteLength(name)).to.be.at.most(NAME_MAX);
          }
          const full = resolve(join(root, ...p.dirs, p.file));
          expect(full.startsWith(root + sep)).to.equal(true);
          expect(full.split(sep).length).to.equal(root.split(sep).length + p.dirs.length + 1);
          expect(pathToKey(p.dirs, p.file)).to.equal(key);
        }),
        { numRuns: 5000 },
      );
    });

    it('keyFits (with its shortcut for short keys) agrees with encoding every segment', () => {
      const store = new FileStore(root);
      const longish = fc.array(fc.constantFrom('%', '\0', 'é', '\u{1F600}', 'a', '/'), { minLength: 70, maxLength: 140 }).map((a) => a.join(''));
      fc.assert(
        fc.property(fc.oneof(awkwardKey, longish), (key) => {
          expect(store.keyFits(key)).to.equal(keyPathFits(key));
        }),
        { numRuns: 2000 },
      );
    });

    it('maps hostile keys to ordinary names', () => {
      expect(keyToPath('../../etc/passwd')).to.deep.equal({ dirs: ['d..', 'd..', 'detc'], file: 'opasswd' });
      expect(keyToPath('/abs')).to.deep.equal({ dirs: ['d'], file: 'oabs' });
      expect(keyToPath('dir/')).to.deep.equal({ dirs: ['ddir'], file: 'o' });
      expect(keyToPath('a%2Fb')).to.deep.equal({ dirs: [], file: 'oa%252Fb' });
      expect(keyToPath('nul\0')).to.deep.equal({ dirs: [], file: 'onul%00' });
      expect(() => keyToPath('x'.repeat(255))).to.throw(/over 254 bytes/);
      expect(keyToPath('x'.repeat(254)).file.length).to.equal(255);
    });

    it('ignores names that are not objects or key directories', () => {
      expect(pathToKey([], 'tabc')).to.equal(null);
      expect(pathToKey([], 'o%zz')).to.equal(null);
      expect(pathToKey(['oa'], 'ob')).to.equal(null);
    });

    it('compareKeys orders like the UTF-8 bytes', () => {
      fc.assert(
        fc.property(fc.string({ unit: 'binary' }), fc.string({ unit: 'binary' }), (a, b) => {
          expect(Math.sign(compareKeys(a, b))).to.equal(Math.sign(Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'))));
        }),
        { numRuns: 3000 },
      );
    });
  });

  describe('file store listing against the memory store (reference model)', function () {
    this.timeout(120_000);
    it('gives the same pages for random key sets, prefixes, delimiters and page sizes', async () => {
      const listKey = fc.array(fc.constantFrom('a', 'b', '/', '-', '.', 'é', '\u{1F600}', '\uFF5E'), { minLength: 1, maxLength: 8 }).map((a) => a.join(''));
      await fc.assert(
        fc.asyncProperty(
          fc.uniqueArray(listKey, { minLength: 0, maxLength: 25 }),
          fc.constantFrom('', 'a', 'a/', 'b/', '/', 'é'),
          fc.constantFrom(undefined, '/', 'a', '-/'),
          fc.integer({ min: 1, max: 6 }),
          async (keys, prefix, delimiter, maxKeys) => {
            const d = tmp();
            const file = await FileStore.open(d.file('s'), { create: true, noSync: true });
            const mem = new MemoryStore();
            for (const k of keys) {
              await file.put(k, new Uint8Array(0));
              await mem.put(k, new Uint8Array(0));
            }
            const run = async (s: ObjectStore): Promise<string[][]> => {
              const pages: string[][] = [];
              let token: string | undefined;
              do {
                const p = await s.list({ prefix, delimiter, maxKeys, continuationToken: token });
                pages.push([...p.objects.map((o) => 'o:' + o.key), ...p.commonPrefixes.map((c) => 'p:' + c)]);
                token = p.nextToken;
              } while (token);
              return pages;
            };
            const [a, b] = [await run(file), await run(mem)];
            expect(a).to.deep.equal(b);
            // and the model itself: without a delimiter, every key under the prefix in byte order
            if (delimiter === undefined) expect(a.flat().map((x) => x.slice(2))).to.deep.equal(keys.filter((k) => k.startsWith(prefix)).sort(compareKeys));
            d.remove();
          },
        ),
        { numRuns: 60 },
      );
    });
  });

  describe('file store readers (openReader)', function () {
    this.timeout(60_000);
    const fdCount = (): number => readdirSync('/proc/self/fd').length;

    it('holds one version open: odd ranges and the end read right, a replacement or delete noticed, errors for another version', async () => {
      const store = await FileStore.open(tmp().file('s'), { create: true });
      const body = patternBytes(7, 70_001);
      const { etag } = await store.put('k', body);
      await expectErrno(Promise.resolve().then(() => store.openReader('k', '"other"')), 'ESTALE');
      await expectErrno(Promise.resolve().then(() => store.openReader('missing', etag)), 'ENOENT');
      const before = fdCount();
      const r = store.openReader('k', etag);
      expect([r.key, r.etag, r.size]).to.deep.equal(['k', etag, body.length]);
      for (const [off, len] of [[0, 1], [3, 4093], [4095, 10_000], [body.length - 5, 100], [body.length, 10]] as const) {
        const a = new Uint8Array(Math.ceil(len / 2));
        const b = new Uint8Array(len - a.length + 7);
        const n = r.readIntoSync(off, len, [a, b]);
        const want = body.subarray(off, off + len);
        expect(n, `${off}+${len}`).to.equal(want.length);
        expect(Buffer.from(Buffer.concat([a, b]).subarray(0, n)).equals(Buffer.from(want)), `${off}+${len}`).to.equal(true);
      }
      expect(r.current()).to.equal(true);
      await new FileStore(store.root).put('k', patternBytes(8, 10)); // another writer replaces it
      expect(r.current()).to.equal(false);
      const n = r.readIntoSync(0, 100, [new Uint8Array(100)]); // still the version it holds
      expect(n).to.equal(100);
      const r2 = store.openReader('k', (await store.head('k'))!.etag);
      expect(r2.current()).to.equal(true);
      await store.delete('k');
      expect(r2.current()).to.equal(false);
      r.close();
      r2.close();
      r.close(); // idempotent
      expect(fdCount()).to.equal(before);
    });

    it('copies large reads into mapped memory on io_uring workers, closing the file only after the copies', async function () {
      const store = await FileStore.open(tmp().file('s'), { create: true });
      if (store.asyncReadMinBytes === Infinity) this.skip(); // no io_uring here
      expect(store.asyncReadMinBytes).to.equal(ASYNC_READ_MIN_BYTES);
      const body = patternBytes(9, 3 * ASYNC_READ_MIN_BYTES + 4321);
      const { etag } = await store.put('k', body);
      const size = 4 << 20;
      const memfd = native.memfdCreate('reader-test', size);
      const mapping = native.mmap(memfd, 0, size, true);
      try {
        const win = mapping.windows[0]!;
        const mem = new Uint8Array(win);
        // Scattered targets: 4 KiB pieces at odd places, as a guest's descriptors.
        const segsAt = (base: number, len: number): Segment[] => {
          const out: Segment[] = [];
          for (let o = 0; o < len; o += 4096) {
            const at = base + 2 * o + 13;
            out.push({ buf: win, offset: at, length: Math.min(4096, len - o), hostAddr: mapping.address + at });
          }
          return out;
        };
        const gather = (segs: readonly Segment[], n: number): Buffer => {
          const parts = segs.map((g) => mem.subarray(g.offset, g.offset + g.length));
          return Buffer.concat(parts).subarray(0, n);
        };
        const before = fdCount();
        const r = store.openReader('k', etag);
        expect(r.readAsync(0, ASYNC_READ_MIN_BYTES - 1, segsAt(0, ASYNC_READ_MIN_BYTES), () => undefined)).to.equal(false); // small: synchronously
        const reads = [[1, ASYNC_READ_MIN_BYTES + 5], [body.length - ASYNC_READ_MIN_BYTES - 3, ASYNC_READ_MIN_BYTES + 100]] as const;
        const segs = reads.map(([, len], i) => segsAt(i * (2 * ASYNC_READ_MIN_BYTES + 8192) + 1, len));
        const results = await new Promise<number[]>((resolve) => {
          const got: number[] = [];
          reads.forEach(([off, len], i) => {
            expect(r.readAsync(off, len, segs[i]!, (res) => {
              got[i] = res;
              if (got.filter((x) => x !== undefined).length === reads.length) resolve(got);
            })).to.equal(true);
          });
          r.close(); // while both are (most likely) in flight
        });
        reads.forEach(([off, len], i) => {
          const want = body.subarray(off, off + len);
          expect(results[i], `${off}+${len}`).to.equal(want.length);
          expect(gather(segs[i]!, want.length).equals(Buffer.from(want)), `${off}+${len}`).to.equal(true);
        });
        expect(fdCount()).to.equal(before);
        expect(r.readAsync(0, ASYNC_READ_MIN_BYTES, segs[0]!, () => undefined)).to.equal(false); // closed
      } finally {
        mapping.unmap();
        closeSync(memfd);
        await store.close();
      }
    });
  });

  describe('file store on disk', function () {
    this.timeout(60_000);

    it('keeps bytes at HEADER_SIZE in a file per object and removes empty directories on delete', async () => {
      const d = tmp();
      const store = await FileStore.open(d.file('s'), { create: true });
      const body = patternBytes(5, 5000);
      await store.put('a/b/c', body);
      const path = store.pathOf('a/b/c');
      expect(path).to.equal(join(d.file('s'), 'da', 'db', 'oc'));
      expect(statSync(path).size).to.equal(HEADER_SIZE + 5000);
      await store.delete('a/b/c');
      expect(readdirSync(d.file('s'))).to.deep.equal([]);
    });

    it('writes headers zero past their JSON, whatever a longer header before left (small puts share a buffer), and ETags that differ', async () => {
      const d = tmp();
      const store = await FileStore.open(d.file('s'), { create: true });
      const etags = new Set<string>();
      const long = { 'x-long': 'v'.repeat(1500) };
      for (const [key, metadata] of [['long', long], ['short', {}], ['big', long], ['short2', { a: 'b' }]] as const) {
        const body = key === 'big' ? patternBytes(1, 300 * 1024) : patternBytes(2, 10); // 'big': the unshared path
        etags.add((await store.put(key, body, { metadata })).etag);
        const header = readFileSync(store.pathOf(key)).subarray(0, HEADER_SIZE);
        const len = header.readUInt32LE(8);
        const json = JSON.parse(header.toString('utf8', 12, 12 + len)) as { metadata: Record<string, string> };
        expect(json.metadata).to.deep.equal(metadata);
        expect(header.subarray(12 + len).every((b) => b === 0), `${key}: header tail`).to.equal(true);
      }
      // A header too large is refused (and leaves the shared buffer clean for the next put).
      await expectErrno(store.put('huge', patternBytes(3, 10), { contentType: 'x'.repeat(HEADER_SIZE) }), 'EINVAL');
      await store.put('after', patternBytes(4, 10));
      const after = readFileSync(store.pathOf('after')).subarray(0, HEADER_SIZE);
      expect(after.subarray(12 + after.readUInt32LE(8)).every((b) => b === 0)).to.equal(true);
      await store.delete('after');
      expect(etags.size).to.equal(4);
      for (const e of etags) expect(e).to.match(/^"[0-9a-f]{32}"$/);
      // Temp names come from a counter too: none left behind, none reused as an object.
      expect(readdirSync(d.file('s')).sort()).to.deep.equal(['obig', 'olong', 'oshort', 'oshort2']);
    });

    it('a store directory removed while in use is reported as missing, never made again by a write', async () => {
      const d = tmp();
      const root = d.file('s');
      const store = await FileStore.open(root, { create: true });
      await store.put('a/b', patternBytes(1, 10));
      expect(await store.head('zz')).to.equal(null); // the root was just seen
      execFileSync('rm', ['-rf', root]);
      const e = await expectErrno(store.put('a/c', patternBytes(2, 10)), 'ENOENT');
      expect(e.missingContainer).to.equal(true);
      expect(existsSync(root)).to.equal(false);
    });

    it('never serves a remembered header of an earlier version (rapid same-size rewrites, another writer)', async () => {
      const d = tmp();
      const store = await FileStore.open(d.file('s'), { create: true });
      for (let i = 0; i < 200; i++) {
        const { etag } = await store.put('k', patternBytes(i, 100), { metadata: { v: String(i % 10) } });
        const h = await store.head('k');
        expect(h!.etag).to.equal(etag);
        expect(h!.metadata).to.deep.equal({ v: String(i % 10) });
      }
      // Another store object on the same directory (what another process would do).
      const other = new FileStore(d.file('s'));
      const { etag } = await other.put('k', patternBytes(1, 100), { metadata: { v: 'other' } });
      const h = await store.head('k');
      expect(h!.etag).to.equal(etag);
      expect(h!.metadata).to.deep.equal({ v: 'other' });
      const listed = (await store.list({ prefix: 'k' })).objects[0]!;
      expect(listed.etag).to.equal(etag);
      await other.delete('k');
      expect(await store.head('k')).to.equal(null);
    });

    it('lists what another writer added or removed right after (no reused directory entries), as S3 does', async () => {
      const d = tmp();
      const store = await FileStore.open(d.file('s'), { create: true });
      const other = new FileStore(d.file('s'));
      for (const k of ['dir/a', 'dir/b', 'top']) await store.put(k, patternBytes(1, 10));
      const names = async (prefix: string): Promise<string[]> => {
        const keys: string[] = [];
        for await (const k of listKeys(store, prefix)) keys.push(k);
        return keys;
      };
      // Settle the directories, then list twice so the entries are remembered.
      await new Promise((r) => setTimeout(r, 120));
      expect(await names('dir/')).to.deep.equal(['dir/a', 'dir/b']);
      expect(await names('dir/')).to.deep.equal(['dir/a', 'dir/b']);
      expect(await names('')).to.deep.equal(['dir/a', 'dir/b', 'top']);
      for (let i = 0; i < 20; i++) {
        await other.put(`dir/n${i}`, patternBytes(i, 10));
        expect(await names('dir/'), `after another writer's put ${i}`).to.include(`dir/n${i}`);
        await other.delete(`dir/n${i}`);
        expect(await names('dir/'), `after another writer's delete ${i}`).to.not.include(`dir/n${i}`);
      }
      await other.put('top2', patternBytes(2, 10));
      expect(await names('')).to.deep.equal(['dir/a', 'dir/b', 'top', 'top2']);
      await other.close();
      await store.close();
    });

    it('reports a foreign file in the key space as EIO, not as data', async () => {
      const d = tmp();
      const store = await FileStore.open(d.file('s'), { create: true });
      writeFileSync(join(d.file('s'), 'ostray'), 'not an object file');
      await expectErrno(store.get('stray'), 'EIO');
    });
  });

  describe('file store atomicity', function () {
    this.timeout(60_000);

    it('removeStaleTemps(0) removes a temp file written within the same millisecond', async () => {
      const d = tmp();
      const store = await FileStore.open(d.file('s'), { create: true });
      for (let i = 0; i < 100; i++) {
        writeFileSync(join(d.file('s'), TEMP_TAG + 'fresh'), Buffer.alloc(1));
        expect(await store.removeStaleTemps(0), `attempt ${i}`).to.equal(1);
      }
    });

    it('ignores a leftover temp file (a write that crashed) in get, head and list', async () => {
      const d = tmp();
      const store = await FileStore.open(d.file('s'), { create: true });
      await store.put('dir/obj', new TextEncoder().encode('v1'));
      const dir = dirname(store.pathOf('dir/obj'));
      // What a writer killed mid-write leaves: a partial temp file next to the object.
      writeFileSync(join(dir, TEMP_TAG + 'deadbeef'), Buffer.alloc(100, 7));
      writeFileSync(join(d.file('s'), TEMP_TAG + 'cafe'), Buffer.alloc(10, 7));
      expect(new TextDecoder().decode((await store.get('dir/obj')).body)).to.equal('v1');
      const keys: string[] = [];
      for await (const e of listAll(store)) if (e.type === 'object') keys.push(e.key);
      expect(keys).to.deep.equal(['dir/obj']);
      expect(await store.head('dir/deadbeef')).to.equal(null);
      expect(await store.removeStaleTemps(0)).to.equal(2);
      expect(readdirSync(dir)).to.deep.equal(['oobj']);
    });

    it('a writer killed (SIGKILL) in the middle of a put leaves the old object intact', async () => {
      const d = tmp();
      const root = d.file('s');
      const store = await FileStore.open(root, { create: true });
      await store.put('victim', new TextEncoder().encode('old version'), { metadata: { v: 'old' } });
      // The new body comes from a FIFO, so the child is provably blocked mid-write when killed.
      const fifo = d.file('body.fifo');
      execFileSync('mkfifo', [fifo]);
      const moduleUrl = new URL('../../src/backends/file-store.js', import.meta.url).href;
      const script = `import(${JSON.stringify(moduleUrl)}).then(async (m) => {
        const s = new m.FileStore(${JSON.stringify(root)});
        process.stdout.write('ready\\n');
        await s.put('victim', { path: ${JSON.stringify(fifo)} }, { metadata: { v: 'new' } });
        process.stdout.write('done\\n');
      });`;
      const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
      try {
        await new Promise<void>((res) => child.stdout!.once('data', () => res()));
        const w = openSync(fifo, 'w'); // blocks until the child opened it for reading
        writeSync(w, Buffer.alloc(1024 * 1024, 0x42));
        // Wait until the partial body has reached the temp file, then kill the writer.
        const deadline = Date.now() + 10_000;
        let tempSize = 0;
        while (Date.now() < deadline) {
          const temps = readdirSync(root).filter((n) => n.startsWith(TEMP_TAG));
          tempSize = temps.length === 1 ? statSync(join(root, temps[0]!)).size : 0;
          if (tempSize >= HEADER_SIZE + 1024 * 1024) break;
          await new Promise((r) => setTimeout(r, 20));
        }
        expect(tempSize).to.equal(HEADER_SIZE + 1024 * 1024);
        child.kill('SIGKILL');
        await new Promise((res) => child.once('exit', res));
        closeSync(w);
      } finally {
        if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      }
      const g = await store.get('victim');
      expect(new TextDecoder().decode(g.body)).to.equal('old version');
      expect(g.metadata).to.deep.equal({ v: 'old' });
      const keys: string[] = [];
      for await (const e of listAll(store)) if (e.type === 'object') keys.push(e.key);
      expect(keys).to.deep.equal(['victim']);
      expect(await store.removeStaleTemps(0)).to.equal(1);
      expect(existsSync(store.pathOf('victim'))).to.equal(true);
    });

    it('validates keys the same way as the other stores', () => {
      expect(() => validateKey('ok/key')).to.not.throw();
      expect(() => validateKey('')).to.throw(StoreError);
    });
  });
});
