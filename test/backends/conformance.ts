// One conformance suite for every ObjectStore (memory, file, s3 against s3rver): the
// semantics the layers above rely on. Each test works under its own key prefix, so the
// suite shares one store.
import { expect } from 'chai';
import { writeFileSync } from 'node:fs';
import { constants } from 'node:os';
import { errnoOf } from '../../src/util/errors.js';
import {
  StoreError,
  compareKeys,
  listAll,
  listKeys,
  putLarge,
  bytesSource,
  type ObjectStore,
  type ListPage,
} from '../../src/backends/object-store.js';
import { expectErrno as expectAnyErrno } from '../support/errno.js';
import { TmpDir, patternBytes } from '../support/tmp.js';

const MiB = 1024 * 1024;

export interface ConformanceQuirks {
  /** MaxKeys counts common prefixes too (S3; s3rver counts only objects). Default true. */
  readonly maxKeysCountsPrefixes?: boolean;
  /** Keys with `..`, `.`, empty segments and a leading '/' are stored faithfully (not s3rver: keys are file paths). Default true. */
  readonly pathLikeKeys?: boolean;
  /** completeMultipart checks part ETags and sizes; an aborted upload is gone. Default true (s3rver does neither). */
  readonly strictMultipart?: boolean;
  /** Copy works for keys with # $ & + , : ; = ? @ (s3rver decodes the copy source with decodeURI). Default true. */
  readonly copyReservedChars?: boolean;
  /** Listings are in UTF-8 byte order even for keys that are prefixes of others ('x' < 'x-y'); s3rver walks its directories instead. Default true. */
  readonly exactListOrder?: boolean;
  /** A forged continuation token is a client error (S3: 400; s3rver: 500, retried, then EIO). Default true. */
  readonly rejectsBadTokens?: boolean;
  /** AbortMultipartUpload exists (s3rver: 405, reported as ENOTSUP). Default true. */
  readonly abortMultipart?: boolean;
  /** UploadPartCopy exists (s3rver: 501, reported as ENOTSUP). Default true. */
  readonly partCopy?: boolean;
}

export interface OpenedForTest {
  readonly store: ObjectStore;
  close(): Promise<void>;
}

export interface ConformanceTarget {
  readonly name: string;
  /** A store for the whole suite (empty at start). */
  open(): Promise<OpenedForTest>;
  /** The same kind of store whose bucket / directory does not exist. */
  openMissingContainer?(): Promise<OpenedForTest>;
  /** A store whose endpoint refuses connections (s3). */
  openUnreachable?(): Promise<OpenedForTest>;
  readonly quirks?: ConformanceQuirks;
}

/** Asserts that `p` rejects with a StoreError of errno `code`; returns the error. */
export async function expectErrno(p: Promise<unknown>, code: keyof typeof constants.errno): Promise<StoreError> {
  const err = await expectAnyErrno(p, code);
  expect(err, String(err)).to.be.instanceOf(StoreError);
  return err as StoreError;
}

const text = (s: string): Uint8Array => new TextEncoder().encode(s);
const str = (b: Uint8Array): string => new TextDecoder().decode(b);

async function collectPages(store: ObjectStore, opts: { prefix: string; delimiter?: string; maxKeys: number }): Promise<ListPage[]> {
  const pages: ListPage[] = [];
  let token: string | undefined;
  do {
    const page = await store.list({ ...opts, continuationToken: token });
    pages.push(page);
    token = page.nextToken;
    if (pages.length > 1000) throw new Error('listing does not terminate');
  } while (token !== undefined);
  return pages;
}

async function putMany(store: ObjectStore, keys: readonly string[], body: (k: string) => Uint8Array = () => new Uint8Array(0)): Promise<void> {
  for (let i = 0; i < keys.length; i += 64) await Promise.all(keys.slice(i, i + 64).map((k) => store.put(k, body(k))));
}

export function objectStoreConformance(target: ConformanceTarget): void {
  const q = {
    maxKeysCountsPrefixes: target.quirks?.maxKeysCountsPrefixes ?? true,
    pathLikeKeys: target.quirks?.pathLikeKeys ?? true,
    strictMultipart: target.quirks?.strictMultipart ?? true,
    copyReservedChars: target.quirks?.copyReservedChars ?? true,
    exactListOrder: target.quirks?.exactListOrder ?? true,
    rejectsBadTokens: target.quirks?.rejectsBadTokens ?? true,
    abortMultipart: target.quirks?.abortMultipart ?? true,
    partCopy: target.quirks?.partCopy ?? true,
  };

  describe(`ObjectStore conformance: ${target.name}`, function () {
    this.timeout(120_000);
    let opened: OpenedForTest;
    let store: ObjectStore;

    before(async () => {
      opened = await target.open();
      store = opened.store;
    });
    after(async () => {
      await opened?.close();
    });

    describe('objects', () => {
      it('put, get, head, delete round trip with a consistent ETag', async () => {
        const body = patternBytes(1, 10_000);
        const { etag } = await store.put('basic/one', body);
        expect(etag).to.be.a('string').and.not.empty;
        const got = await store.get('basic/one');
        expect(Buffer.from(got.body).equals(Buffer.from(body))).to.equal(true);
        expect(got.size).to.equal(10_000);
        expect(got.etag).to.equal(etag);
        expect(got.lastModified).to.be.instanceOf(Date);
        expect(Math.abs(got.lastModified.getTime() - Date.now())).to.be.below(120_000);
        const head = await store.head('basic/one');
        expect(head).to.not.equal(null);
        expect(head!.size).to.equal(10_000);
        expect(head!.etag).to.equal(etag);
        await store.delete('basic/one');
        expect(await store.head('basic/one')).to.equal(null);
        await expectErrno(store.get('basic/one'), 'ENOENT');
      });

      it('overwrites body and metadata; the ETag changes', async () => {
        const a = await store.put('basic/over', text('first version'), { metadata: { v: '1' } });
        const b = await store.put('basic/over', text('second'), { metadata: { w: '2' } });
        expect(b.etag).to.not.equal(a.etag);
        const got = await store.get('basic/over');
        expect(str(got.body)).to.equal('second');
        expect(got.metadata).to.deep.equal({ w: '2' });
        expect(got.etag).to.equal(b.etag);
      });

      it('sync() resolves after writes, and what was written stays readable', async () => {
        await store.put('sync/a', text('kept'));
        await store.copy('sync/a', 'sync/b');
        await store.delete('sync/a');
        await store.sync();
        await store.sync();
        expect(str((await store.get('sync/b')).body)).to.equal('kept');
        expect(await store.head('sync/a')).to.equal(null);
      });

      it('a listing sees writes and deletes made just before it', async () => {
        const keys = async (): Promise<string[]> => (await store.list({ prefix: 'fresh/' })).objects.map((o) => o.key);
        await store.put('fresh/d/a', text('a'));
        expect(await keys()).to.deep.equal(['fresh/d/a']);
        await store.put('fresh/d/b', text('b'));
        await store.put('fresh/e/c', text('c'));
        expect(await keys()).to.deep.equal(['fresh/d/a', 'fresh/d/b', 'fresh/e/c']);
        await store.copy('fresh/d/a', 'fresh/d/0');
        await store.delete('fresh/d/b');
        await store.delete('fresh/e/c');
        expect(await keys()).to.deep.equal(['fresh/d/0', 'fresh/d/a']);
        await store.deleteMany(['fresh/d/0', 'fresh/d/a']);
        expect(await keys()).to.deep.equal([]);
      });

      it('listings carry the metadata only when the store had it at hand, and then the right one', async () => {
        await store.put('listmeta/x', text('x'), { metadata: { mode: '33188' }, contentType: 'text/plain' });
        const page = await store.list({ prefix: 'listmeta/' });
        expect(page.objects.map((o) => o.key)).to.deep.equal(['listmeta/x']);
        const o = page.objects[0]!;
        if (o.metadata !== undefined) {
          expect(o.metadata).to.deep.equal({ mode: '33188' });
          expect(o.contentType).to.equal('text/plain');
        }
        await store.delete('listmeta/x');
      });

      it('reports missing keys as ENOENT (and head as null); deleting a missing key succeeds', async () => {
        const e = await expectErrno(store.get('missing/key'), 'ENOENT');
        expect(e.missingContainer).to.equal(false);
        await expectErrno(store.getInto('missing/key', 0, new Uint8Array(8)), 'ENOENT');
        await expectErrno(store.get('missing/key', { range: { offset: 0, length: 4 } }), 'ENOENT');
        expect(await store.head('missing/key')).to.equal(null);
        await store.delete('missing/key');
        await expectErrno(store.copy('missing/key', 'missing/dst'), 'ENOENT');
      });

      it('stores empty objects', async () => {
        await store.put('empty/obj', new Uint8Array(0));
        const got = await store.get('empty/obj');
        expect(got.body.length).to.equal(0);
        expect(got.size).to.equal(0);
        expect((await store.head('empty/obj'))!.size).to.equal(0);
        const target = new Uint8Array(16).fill(0xee);
        const r = await store.getInto('empty/obj', 0, target);
        expect(r.bytesRead).to.equal(0);
        expect(r.size).to.equal(0);
        expect(target.every((b) => b === 0xee)).to.equal(true);
        expect((await store.get('empty/obj', { range: { offset: 0, length: 10 } })).body.length).to.equal(0);
        const page = await store.list({ prefix: 'empty/' });
        expect(page.objects.map((o) => [o.key, o.size])).to.deep.equal([['empty/obj', 0]]);
      });

      it('rejects bad keys before touching the store', async () => {
        await expectErrno(store.put('', text('x')), 'EINVAL');
        await expectErrno(store.put('nul\0key', text('x')), 'EINVAL');
        await expectErrno(store.put('lone\uD800surrogate', text('x')), 'EINVAL');
        await expectErrno(store.put('k'.repeat(1025), text('x')), 'ENAMETOOLONG');
        await expectErrno(store.get(''), 'EINVAL');
      });
    });

    describe('ranged reads', () => {
      const body = patternBytes(7, 1000);
      before(async () => {
        await store.put('range/obj', body);
        await store.put('range/one', text('Z'));
      });

      const cases: [number, number][] = [
        [0, 1], // never sent as bytes=0-0 (s3rver returns the whole object for it)
        [0, 2],
        [1, 1],
        [0, 1000],
        [999, 1],
        [10, 100],
        [500, 600], // clipped at the end
        [1000, 10], // at the end: empty
        [5000, 10], // past the end: empty
        [0, 0],
        [0, 5000],
      ];
      for (const [offset, length] of cases) {
        it(`get range ${offset}+${length}`, async () => {
          const got = await store.get('range/obj', { range: { offset, length } });
          const want = body.subarray(Math.min(offset, 1000), Math.min(offset + length, 1000));
          expect(got.body.length).to.equal(want.length);
          expect(Buffer.from(got.body).equals(Buffer.from(want))).to.equal(true);
          expect(got.size).to.equal(1000);
        });
      }

      it('getInto writes only the bytes it reports, at the start of the target', async () => {
        for (const [offset, length] of cases) {
          const target = new Uint8Array(length + 8).fill(0xaa);
          const r = await store.getInto('range/obj', offset, target.subarray(0, length));
          const want = body.subarray(Math.min(offset, 1000), Math.min(offset + length, 1000));
          expect(r.bytesRead, `${offset}+${length}`).to.equal(want.length);
          expect(Buffer.from(target.subarray(0, r.bytesRead)).equals(Buffer.from(want))).to.equal(true);
          expect(target.subarray(r.bytesRead).every((b) => b === 0xaa), `${offset}+${length} wrote past bytesRead`).to.equal(true);
          expect(r.size).to.equal(1000);
        }
      });

      it('reads a 1-byte object with 1-byte and larger ranges', async () => {
        expect(str((await store.get('range/one', { range: { offset: 0, length: 1 } })).body)).to.equal('Z');
        expect(str((await store.get('range/one', { range: { offset: 0, length: 8 } })).body)).to.equal('Z');
        const t = new Uint8Array(1);
        expect((await store.getInto('range/one', 0, t)).bytesRead).to.equal(1);
        expect(str(t)).to.equal('Z');
        expect((await store.getInto('range/one', 1, t)).bytesRead).to.equal(0);
      });

      it('rejects negative or fractional ranges with EINVAL', async () => {
        await expectErrno(store.get('range/obj', { range: { offset: -1, length: 2 } }), 'EINVAL');
        await expectErrno(store.get('range/obj', { range: { offset: 0.5, length: 2 } }), 'EINVAL');
      });
    });

    describe('metadata', () => {
      it('round-trips user metadata (keys lower-cased) and the content type', async () => {
        await store.put('meta/file', text('hello'), {
          metadata: { mode: '33188', uid: '1000', gid: '1000', mtime: '1700000000.123456789', 'Mixed-Case': 'Value With Spaces' },
          contentType: 'text/plain',
        });
        const h = (await store.head('meta/file'))!;
        expect(h.metadata).to.deep.equal({ mode: '33188', uid: '1000', gid: '1000', mtime: '1700000000.123456789', 'mixed-case': 'Value With Spaces' });
        expect(h.contentType).to.equal('text/plain');
        const g = await store.get('meta/file');
        expect(g.metadata).to.deep.equal(h.metadata);
        expect(g.contentType).to.equal('text/plain');
        const r = await store.getInto('meta/file', 1, new Uint8Array(2));
        expect(r.metadata).to.deep.equal(h.metadata);
      });

      it('rejects metadata S3 would refuse (non-ASCII values, bad names, over 2 KiB)', async () => {
        await expectErrno(store.put('meta/bad', text('x'), { metadata: { k: 'é' } }), 'EINVAL');
        await expectErrno(store.put('meta/bad', text('x'), { metadata: { 'bad key': 'v' } }), 'EINVAL');
        await expectErrno(store.put('meta/bad', text('x'), { metadata: { k: 'v'.repeat(2100) } }), 'EINVAL');
        expect(await store.head('meta/bad')).to.equal(null);
      });
    });

    describe('listing', () => {
      const tree = ['tree/a/1', 'tree/a/2', 'tree/a/deep/x', 'tree/b/1', 'tree/f1', 'tree/f2', 'tree/g/', 'treeless', 'tree-sibling'];
      before(async () => {
        await putMany(store, tree);
      });

      it('lists everything under a prefix in key order', async () => {
        const page = await store.list({ prefix: 'tree/' });
        expect(page.objects.map((o) => o.key)).to.deep.equal(['tree/a/1', 'tree/a/2', 'tree/a/deep/x', 'tree/b/1', 'tree/f1', 'tree/f2', 'tree/g/']);
        expect(page.commonPrefixes).to.deep.equal([]);
        expect(page.nextToken).to.equal(undefined);
        for (const o of page.objects) {
          expect(o.size).to.equal(0);
          expect(o.etag).to.be.a('string').and.not.empty;
          expect(o.lastModified).to.be.instanceOf(Date);
        }
      });

      it('groups by delimiter into common prefixes', async () => {
        const page = await store.list({ prefix: 'tree/', delimiter: '/' });
        expect(page.objects.map((o) => o.key)).to.deep.equal(['tree/f1', 'tree/f2']);
        expect(page.commonPrefixes).to.deep.equal(['tree/a/', 'tree/b/', 'tree/g/']);
        const sub = await store.list({ prefix: 'tree/a/', delimiter: '/' });
        expect(sub.objects.map((o) => o.key)).to.deep.equal(['tree/a/1', 'tree/a/2']);
        expect(sub.commonPrefixes).to.deep.equal(['tree/a/deep/']);
        const marker = await store.list({ prefix: 'tree/g/', delimiter: '/' });
        expect(marker.objects.map((o) => o.key)).to.deep.equal(['tree/g/']);
      });

      it('matches a prefix that is not a directory', async () => {
        const page = await store.list({ prefix: 'tree' , delimiter: '/' });
        expect(page.objects.map((o) => o.key)).to.deep.equal(['tree-sibling', 'treeless']);
        expect(page.commonPrefixes).to.deep.equal(['tree/']);
        const f = await store.list({ prefix: 'tree/f' });
        expect(f.objects.map((o) => o.key)).to.deep.equal(['tree/f1', 'tree/f2']);
        const none = await store.list({ prefix: 'tree/zzz' });
        expect(none.objects).to.deep.equal([]);
        expect(none.commonPrefixes).to.deep.equal([]);
      });

      it('pages 2500 keys 1000 at a time, then deleteMany removes them in batches', async function () {
        this.timeout(300_000);
        const keys = Array.from({ length: 2500 }, (_, i) => `many/k${String(i).padStart(5, '0')}`);
        await putMany(store, keys);
        const pages = await collectPages(store, { prefix: 'many/', maxKeys: 1000 });
        expect(pages.map((p) => p.objects.length)).to.deep.equal([1000, 1000, 500]);
        expect(pages.flatMap((p) => p.objects.map((o) => o.key))).to.deep.equal(keys);
        const viaHelper: string[] = [];
        for await (const k of listKeys(store, 'many/')) viaHelper.push(k);
        expect(viaHelper).to.deep.equal(keys);
        await store.deleteMany([...keys, 'many/not-there']);
        expect((await store.list({ prefix: 'many/' })).objects).to.deep.equal([]);
      });

      it('pages a delimited listing without losing or repeating entries', async () => {
        const keys: string[] = [];
        for (let d = 0; d < 12; d++) for (let f = 0; f < 3; f++) keys.push(`pd/d${String(d).padStart(2, '0')}/f${f}`);
        for (let f = 0; f < 10; f++) keys.push(`pd/f${String(f).padStart(2, '0')}`);
        await putMany(store, keys);
        const pages = await collectPages(store, { prefix: 'pd/', delimiter: '/', maxKeys: 5 });
        if (q.maxKeysCountsPrefixes) for (const p of pages) expect(p.objects.length + p.commonPrefixes.length).to.be.at.most(5);
        const entries: string[] = [];
        for await (const e of listAll(store, { prefix: 'pd/', delimiter: '/', maxKeys: 5 })) entries.push(e.type === 'object' ? e.key : e.prefix);
        const wantPrefixes = Array.from({ length: 12 }, (_, d) => `pd/d${String(d).padStart(2, '0')}/`);
        const wantObjects = Array.from({ length: 10 }, (_, f) => `pd/f${String(f).padStart(2, '0')}`);
        expect([...entries].sort(compareKeys)).to.deep.equal([...wantPrefixes, ...wantObjects].sort(compareKeys));
      });

      if (q.rejectsBadTokens) {
        it('rejects a forged continuation token with EINVAL', async () => {
          await expectErrno(store.list({ prefix: 'tree/', continuationToken: 'not-a-token' }), 'EINVAL');
        });
      }
    });

    describe('awkward keys', () => {
      const keys = [
        'odd/sp ace/ünïcödé/日本語 файл 🎉.bin',
        'odd/trailing space ',
        'odd/tab\there',
        'odd/quote"s\'',
        'odd/back\\slash',
        'odd/percent%20literal',
        'odd/percent%',
        'odd/a+b&c=d?e#f',
        'odd/~tilde',
        'odd/\uFF5Ewide tilde',
        'odd/\u{1F600}astral',
        'odd/dir marker/',
        'odd/x',
        'odd/x-y',
        'odd/x.z',
      ];
      const pathLike = ['odd/../escape', 'odd/./dot', 'odd/a//b', '/leading', 'odd/..', 'odd/.', '..', '.'];

      it('round-trips keys with spaces, unicode, quotes, % and reserved characters', async () => {
        for (const k of keys) await store.put(k, text(`body of ${k}`), { metadata: { n: String(k.length) } });
        for (const k of keys) {
          const g = await store.get(k);
          expect(str(g.body), k).to.equal(`body of ${k}`);
          expect((await store.head(k))!.metadata.n).to.equal(String(k.length));
        }
      });

      it('lists them exactly, in UTF-8 byte order', async () => {
        const page = await store.list({ prefix: 'odd/' });
        const listed = page.objects.map((o) => o.key);
        expect(q.exactListOrder ? listed : listed.sort(compareKeys)).to.deep.equal([...keys].sort(compareKeys));
      });

      it('deletes them', async () => {
        await store.deleteMany(keys);
        expect((await store.list({ prefix: 'odd/' })).objects).to.deep.equal([]);
      });

      if (q.pathLikeKeys) {
        it('keeps path-like keys (.., ., empty segments, leading /) as plain keys', async () => {
          for (const k of pathLike) await store.put(k, text(k));
          for (const k of pathLike) expect(str((await store.get(k)).body), k).to.equal(k);
          const all: string[] = [];
          for await (const k of listKeys(store)) if (pathLike.includes(k)) all.push(k);
          expect(all).to.deep.equal([...pathLike].sort(compareKeys));
          await store.deleteMany(pathLike);
          for (const k of pathLike) expect(await store.head(k), k).to.equal(null);
        });
      }
    });

    describe('copy', () => {
      it('copies body, metadata and content type', async () => {
        await store.put('copy/src ü', text('payload'), { metadata: { mode: '33188' }, contentType: 'text/x-test' });
        const { etag } = await store.copy('copy/src ü', 'copy/dst ü');
        expect(etag).to.be.a('string').and.not.empty;
        const g = await store.get('copy/dst ü');
        expect(str(g.body)).to.equal('payload');
        expect(g.metadata).to.deep.equal({ mode: '33188' });
        expect(g.contentType).to.equal('text/x-test');
      });

      it('replaces metadata when given, keeping the content type', async () => {
        await store.copy('copy/src ü', 'copy/replaced', { metadata: { mode: '33261', uid: '7' } });
        const h = (await store.head('copy/replaced'))!;
        expect(h.metadata).to.deep.equal({ mode: '33261', uid: '7' });
        expect(h.contentType).to.equal('text/x-test');
        expect(str((await store.get('copy/replaced')).body)).to.equal('payload');
        // the source is untouched
        expect((await store.head('copy/src ü'))!.metadata).to.deep.equal({ mode: '33188' });
      });

      it('rewrites metadata in place (copy onto itself)', async () => {
        await store.put('copy/self', text('same bytes'), { metadata: { mode: '1' } });
        await store.copy('copy/self', 'copy/self', { metadata: { mode: '2' } });
        const g = await store.get('copy/self');
        expect(str(g.body)).to.equal('same bytes');
        expect(g.metadata).to.deep.equal({ mode: '2' });
      });

      if (q.copyReservedChars) {
        it('copies keys with reserved URL characters', async () => {
          await store.put('copy/a+b&c=d?e#f@g', text('r'));
          await store.copy('copy/a+b&c=d?e#f@g', 'copy/r2 + &');
          expect(str((await store.get('copy/r2 + &')).body)).to.equal('r');
        });
      }
    });

    describe('multipart', () => {
      it('uploads parts over 5 MiB and completes them into one object', async function () {
        this.timeout(120_000);
        const p1 = patternBytes(11, 5 * MiB + 123);
        const p2 = patternBytes(12, 5 * MiB + 7);
        const p3 = patternBytes(13, 100_000);
        const id = await store.createMultipart('mp/big', { metadata: { mode: '33188' }, contentType: 'application/x-disk' });
        expect(id).to.be.a('string').and.not.empty;
        const [e1, e2, e3] = await Promise.all([store.uploadPart('mp/big', id, 1, p1), store.uploadPart('mp/big', id, 2, p2), store.uploadPart('mp/big', id, 3, p3)]);
        await store.completeMultipart('mp/big', id, [
          { partNumber: 1, etag: e1 },
          { partNumber: 2, etag: e2 },
          { partNumber: 3, etag: e3 },
        ]);
        const total = p1.length + p2.length + p3.length;
        const h = (await store.head('mp/big'))!;
        expect(h.size).to.equal(total);
        expect(h.metadata).to.deep.equal({ mode: '33188' });
        expect(h.contentType).to.equal('application/x-disk');
        const g = await store.get('mp/big');
        expect(Buffer.from(g.body.subarray(0, p1.length)).equals(Buffer.from(p1))).to.equal(true);
        expect(Buffer.from(g.body.subarray(p1.length, p1.length + p2.length)).equals(Buffer.from(p2))).to.equal(true);
        expect(Buffer.from(g.body.subarray(p1.length + p2.length)).equals(Buffer.from(p3))).to.equal(true);
        // a ranged read across the part boundary
        const t = new Uint8Array(200);
        const r = await store.getInto('mp/big', p1.length - 100, t);
        expect(r.bytesRead).to.equal(200);
        expect(Buffer.from(t.subarray(0, 100)).equals(Buffer.from(p1.subarray(p1.length - 100)))).to.equal(true);
        expect(Buffer.from(t.subarray(100)).equals(Buffer.from(p2.subarray(0, 100)))).to.equal(true);
      });

      it('aborts an upload without creating the object', async () => {
        const id = await store.createMultipart('mp/aborted');
        await store.uploadPart('mp/aborted', id, 1, patternBytes(3, 1000));
        if (!q.abortMultipart) {
          await expectErrno(store.abortMultipart('mp/aborted', id), 'ENOTSUP');
          return;
        }
        await store.abortMultipart('mp/aborted', id);
        expect(await store.head('mp/aborted')).to.equal(null);
        if (q.strictMultipart) await expectErrno(store.uploadPart('mp/aborted', id, 2, new Uint8Array(10)), 'ENOENT');
      });

      if (q.strictMultipart) {
        it('refuses a completion with a wrong ETag or a small middle part', async () => {
          const id = await store.createMultipart('mp/strict');
          const e1 = await store.uploadPart('mp/strict', id, 1, patternBytes(1, 1000));
          const e2 = await store.uploadPart('mp/strict', id, 2, patternBytes(2, 1000));
          await expectErrno(store.completeMultipart('mp/strict', id, [{ partNumber: 1, etag: '"nope"' }]), 'EINVAL');
          await expectErrno(store.completeMultipart('mp/strict', id, [{ partNumber: 1, etag: e1 }, { partNumber: 2, etag: e2 }]), 'EINVAL');
          await store.abortMultipart('mp/strict', id);
        });
      }

      it('uploadPartCopy makes a part of a byte range of a stored object (the key being replaced too), or says ENOTSUP', async function () {
        this.timeout(120_000);
        const old = patternBytes(31, 6 * MiB + 11);
        const { etag } = await store.put('mp/pc', old);
        const id = await store.createMultipart('mp/pc');
        try {
          if (!q.partCopy) {
            await expectErrno(store.uploadPartCopy('mp/pc', id, 1, { key: 'mp/pc', offset: 0, length: 5 * MiB, ifMatch: etag }), 'ENOTSUP');
            return;
          }
          const e1 = await store.uploadPartCopy('mp/pc', id, 1, { key: 'mp/pc', offset: 0, length: 5 * MiB, ifMatch: etag });
          const tail = text('a new end');
          const e2 = await store.uploadPart('mp/pc', id, 2, tail);
          // Errors: a changed source, a range past its end, a missing source.
          await expectErrno(store.uploadPartCopy('mp/pc', id, 3, { key: 'mp/pc', offset: 0, length: 5 * MiB, ifMatch: '"0123456789abcdef0123456789abcdef"' }), 'ESTALE');
          await expectErrno(store.uploadPartCopy('mp/pc', id, 3, { key: 'mp/pc', offset: 6 * MiB, length: MiB }), 'EINVAL');
          await expectErrno(store.uploadPartCopy('mp/pc', id, 3, { key: 'mp/none', offset: 0, length: 10 }), 'ENOENT');
          await store.completeMultipart('mp/pc', id, [{ partNumber: 1, etag: e1 }, { partNumber: 2, etag: e2 }]);
          const g = await store.get('mp/pc');
          expect(g.size).to.equal(5 * MiB + tail.length);
          expect(Buffer.from(g.body.subarray(0, 5 * MiB)).equals(Buffer.from(old.subarray(0, 5 * MiB)))).to.equal(true);
          expect(str(g.body.subarray(5 * MiB))).to.equal('a new end');
        } finally {
          await store.abortMultipart('mp/pc', id).catch(() => undefined);
        }
      });

      it('putLarge copies the parts its source says are unchanged, and sends them where the store cannot copy', async function () {
        this.timeout(120_000);
        const old = patternBytes(32, 10 * MiB + 3);
        const { etag } = await store.put('mp/append', old);
        const next = new Uint8Array(12 * MiB);
        next.set(old);
        next.set(patternBytes(33, next.length - old.length), old.length);
        const copied: number[] = [];
        const refused: string[] = [];
        const source = {
          ...bytesSource(next),
          copySource: (offset: number, length: number) => (offset + length <= 10 * MiB ? { key: 'mp/append', offset, length, ifMatch: etag } : null),
          copyRefused: (err: StoreError) => refused.push(err.code),
        };
        const read = source.read;
        source.read = (offset: number, target: Uint8Array) => {
          copied.push(offset);
          return read(offset, target);
        };
        await putLarge(store, 'mp/append', source, { partSize: 5 * MiB, concurrency: 1 });
        expect(Buffer.from((await store.get('mp/append')).body).equals(Buffer.from(next))).to.equal(true);
        // Parts 1 and 2 lie in the old object: copied (not read) where the store copies.
        expect(copied).to.deep.equal(q.partCopy ? [10 * MiB] : [0, 5 * MiB, 10 * MiB]);
        expect(refused).to.deep.equal(q.partCopy ? [] : ['ENOTSUP']);
      });

      it('putLarge splits a body into parts and reassembles it', async () => {
        const body = patternBytes(21, 11 * MiB + 5);
        await putLarge(store, 'mp/large', bytesSource(body), { partSize: 5 * MiB, metadata: { k: 'v' } });
        const g = await store.get('mp/large');
        expect(g.size).to.equal(body.length);
        expect(Buffer.from(g.body).equals(Buffer.from(body))).to.equal(true);
        expect(g.metadata).to.deep.equal({ k: 'v' });
      });

      it('put({path}) stores a local file', async () => {
        const dir = new TmpDir();
        try {
          const body = patternBytes(22, 12 * MiB + 3);
          writeFileSync(dir.file('src.bin'), body);
          await store.put('mp/from-file', { path: dir.file('src.bin') }, { metadata: { from: 'file' } });
          const g = await store.get('mp/from-file');
          expect(Buffer.from(g.body).equals(Buffer.from(body))).to.equal(true);
          expect(g.metadata).to.deep.equal({ from: 'file' });
        } finally {
          dir.remove();
        }
      });
    });

    describe('conditional writes', () => {
      it('honours If-None-Match and If-Match when the capability says so, else refuses with ENOTSUP', async () => {
        if (!store.capabilities.conditionalWrites) {
          await expectErrno(store.put('cond/k', text('x'), { ifNoneMatch: '*' }), 'ENOTSUP');
          await expectErrno(store.put('cond/k', text('x'), { ifMatch: '"x"' }), 'ENOTSUP');
          expect(await store.head('cond/k')).to.equal(null);
          return;
        }
        const a = await store.put('cond/k', text('one'), { ifNoneMatch: '*' });
        await expectErrno(store.put('cond/k', text('two'), { ifNoneMatch: '*' }), 'EEXIST');
        expect(str((await store.get('cond/k')).body)).to.equal('one');
        const b = await store.put('cond/k', text('three'), { ifMatch: a.etag });
        await expectErrno(store.put('cond/k', text('four'), { ifMatch: a.etag }), 'ESTALE');
        expect(str((await store.get('cond/k')).body)).to.equal('three');
        expect((await store.head('cond/k'))!.etag).to.equal(b.etag);
        await expectErrno(store.put('cond/missing', text('x'), { ifMatch: a.etag }), 'ENOENT');
      });

      it('lets exactly one of many concurrent creators win', async () => {
        if (!store.capabilities.conditionalWrites) return;
        const results = await Promise.allSettled(Array.from({ length: 8 }, (_, i) => store.put('cond/race', text(`writer ${i}`), { ifNoneMatch: '*' })));
        const won = results.filter((r) => r.status === 'fulfilled');
        expect(won.length).to.equal(1);
        for (const r of results) if (r.status === 'rejected') expect(errnoOf(r.reason)).to.equal(constants.errno.EEXIST);
      });
    });

    if (target.openMissingContainer) {
      describe('missing bucket / store directory', () => {
        let missing: OpenedForTest;
        before(async () => {
          missing = await target.openMissingContainer!();
        });
        after(async () => {
          await missing?.close();
        });
        it('reports ENOENT with missingContainer and a message that says so', async () => {
          const ops: [string, () => Promise<unknown>][] = [
            ['get', () => missing.store.get('k')],
            ['head', () => missing.store.head('k')],
            ['put', () => missing.store.put('k', text('x'))],
            ['list', () => missing.store.list({ prefix: '' })],
            ['delete', () => missing.store.delete('k')],
          ];
          for (const [name, op] of ops) {
            const e = await expectErrno(op(), 'ENOENT');
            expect(e.missingContainer, name).to.equal(true);
            expect(e.message, name).to.match(/does not exist/);
          }
        });
      });
    }

    if (target.openUnreachable) {
      describe('unreachable endpoint', () => {
        it('fails with ECONNREFUSED after bounded retries, quickly', async () => {
          const u = await target.openUnreachable!();
          try {
            const t0 = Date.now();
            const e = await expectErrno(u.store.get('k'), 'ECONNREFUSED');
            expect(Date.now() - t0).to.be.below(10_000);
            expect(e.message).to.match(/unreachable/);
            await expectErrno(u.store.put('k', text('x')), 'ECONNREFUSED');
          } finally {
            await u.close();
          }
        });
      });
    }
  });
}
