// LOOKUP and GETATTR answered synchronously from BucketVfs.statNow (file store): a cached
// entry is answered before dispatch() returns, with the bytes the asynchronous path gave
// and no store call; a miss takes the asynchronous path; errors, negative entries, open
// files and a reply that does not fit behave as on the asynchronous path. READDIR(PLUS)
// pages come synchronously from the handle's snapshot; only a rewind relists.
import { expect } from 'chai';
import { FileStore } from '../../src/backends/file-store.js';
import { MemoryStore } from '../../src/backends/memory-store.js';
import type { ObjectStore } from '../../src/backends/object-store.js';
import { BucketVfs } from '../../src/backends/posix/bucket-vfs.js';
import { FuseServer } from '../../src/fuse/server.js';
import { E, ENTRY_OUT_SIZE, O_RDWR, Opcode } from '../../src/fuse/abi.js';
import { cstr, encode, encodeRequest } from '../../src/fuse/requests.js';
import { decodeAttrOut, decodeDirents, decodeDirentsPlus, decodeEntryOut, decodeOpenOut, type FuseReply } from '../../src/fuse/replies.js';
import { silentLogger } from '../../src/util/log.js';
import { TmpDir, patternBytes } from '../support/tmp.js';

let unique = 100n;
function msg(opcode: number, args: Uint8Array[], nodeid = 1): Uint8Array {
  return encodeRequest({ opcode, unique: unique++, nodeid, uid: 0, gid: 0, pid: 1 }, args);
}

function concat(r: FuseReply): Uint8Array {
  return Buffer.concat(r.parts.map((p) => Buffer.from(p)));
}

describe('FUSE LOOKUP/GETATTR answered from the Vfs caches (BucketVfs on a file store)', function () {
  this.timeout(30_000);
  let dir: TmpDir;
  let store: FileStore;
  let storeCalls: number;

  beforeEach(async () => {
    dir = new TmpDir('vhost-s3-answer-now-');
    store = await FileStore.open(dir.file('store'), { create: true, noSync: true });
    await store.put('d/f', new Uint8Array(1234));
    storeCalls = 0;
    for (const m of ['head', 'list', 'get'] as const) {
      const orig = (store[m] as (...a: unknown[]) => unknown).bind(store);
      (store as unknown as Record<string, unknown>)[m] = (...a: unknown[]) => {
        storeCalls++;
        return orig(...a);
      };
    }
  });
  afterEach(() => dir.remove());

  async function server(opts: { negativeTimeoutMs?: number } = {}): Promise<{ s: FuseServer; vfs: BucketVfs }> {
    const vfs = new BucketVfs({ store, logger: silentLogger });
    const s = new FuseServer(vfs, { log: silentLogger, ...opts });
    expect((await s.handle(msg(Opcode.INIT, [encode.init(7, 38, 0, 0)], 0)))!.error).to.equal(0);
    return { s, vfs };
  }

  /** Dispatches; the reply if it came before dispatch() returned, else 'later' (and waits for it). */
  async function now(s: FuseServer, bytes: Uint8Array, room = 4096): Promise<{ reply: FuseReply; sync: boolean }> {
    let got: FuseReply | null | undefined;
    const later = new Promise<FuseReply>((resolve) => s.dispatch(bytes, room, (r) => {
      got = r;
      resolve(r!);
    }));
    const sync = got !== undefined;
    return { reply: await later, sync };
  }

  it('answers a cached LOOKUP and GETATTR before dispatch returns, as the store call did, without one', async () => {
    // Without the store's synchronous HEAD, so that the first answers take the asynchronous path.
    (store as { headNow?: unknown }).headNow = undefined;
    const { s } = await server();
    const first = await now(s, msg(Opcode.LOOKUP, [cstr('d')]));
    expect(first.sync).to.equal(false); // nothing cached yet
    const d = decodeEntryOut(concat(first.reply)).nodeid;
    const fileFirst = await now(s, msg(Opcode.LOOKUP, [cstr('f')], d));
    expect(fileFirst.sync).to.equal(false);
    const calls = storeCalls;

    const again = await now(s, msg(Opcode.LOOKUP, [cstr('f')], d));
    expect(again.sync).to.equal(true);
    expect(Buffer.from(concat(again.reply)).equals(Buffer.from(concat(fileFirst.reply)))).to.equal(true);
    const f = decodeEntryOut(concat(again.reply));
    expect(f.attr.size).to.equal(1234);
    expect(s.lookupCount(f.nodeid)).to.equal(2);

    const ga = await now(s, msg(Opcode.GETATTR, [encode.getattr(0, 0)], f.nodeid));
    expect(ga.sync).to.equal(true);
    expect(decodeAttrOut(concat(ga.reply)).attr).to.deep.equal(f.attr);
    expect(storeCalls).to.equal(calls);
    expect(s.inflightCount).to.equal(0);
  });

  it('answers a file or directory marker the caches do not hold (or no longer: expired) from one synchronous HEAD, fresh from the store', async () => {
    let heads = 0;
    const headNow = store.headNow.bind(store);
    store.headNow = (key) => {
      heads++;
      return headNow(key);
    };
    await store.put('d/m/', new Uint8Array(0), { metadata: { mode: String(0o40750) } });
    const vfs = new BucketVfs({ store, logger: silentLogger, attrTtlMs: 1 });
    const s = new FuseServer(vfs, { log: silentLogger });
    expect((await s.handle(msg(Opcode.INIT, [encode.init(7, 38, 0, 0)], 0)))!.error).to.equal(0);
    const d = await now(s, msg(Opcode.LOOKUP, [cstr('d')]));
    expect(d.sync).to.equal(false); // an implicit directory: only a listing can tell
    const dir = decodeEntryOut(concat(d.reply)).nodeid;
    const calls = storeCalls;
    const f = await now(s, msg(Opcode.LOOKUP, [cstr('f')], dir));
    expect(f.sync).to.equal(true);
    expect(decodeEntryOut(concat(f.reply)).attr.size).to.equal(1234);
    const m = await now(s, msg(Opcode.LOOKUP, [cstr('m')], dir));
    expect(m.sync).to.equal(true);
    expect(decodeEntryOut(concat(m.reply)).attr.mode & 0o7777).to.equal(0o750);
    // Changed in the store: once the 1 ms attribute TTL ran out, the next LOOKUP and GETATTR see it.
    await store.put('d/f', new Uint8Array(99));
    await new Promise((r) => setTimeout(r, 5));
    const again = await now(s, msg(Opcode.LOOKUP, [cstr('f')], dir));
    expect(again.sync).to.equal(true);
    const nodeid = decodeEntryOut(concat(again.reply)).nodeid;
    expect(decodeEntryOut(concat(again.reply)).attr.size).to.equal(99);
    await store.put('d/f', new Uint8Array(7));
    await new Promise((r) => setTimeout(r, 5));
    const ga = await now(s, msg(Opcode.GETATTR, [encode.getattr(0, 0)], nodeid));
    expect(ga.sync).to.equal(true);
    expect(decodeAttrOut(concat(ga.reply)).attr.size).to.equal(7);
    expect(storeCalls).to.equal(calls); // no asynchronous store call
    expect(heads).to.equal(7); // d's file key and marker (then its listing), f; m's file key and marker; f; f
  });


  it('a name with neither a file nor a marker costs its two synchronous HEADs and then only a LIST, not the HEADs again', async () => {
    const asked: string[] = [];
    const headNow = store.headNow.bind(store);
    store.headNow = (key) => {
      asked.push(`headNow ${key}`);
      return headNow(key);
    };
    for (const m of ['head', 'list'] as const) {
      const orig = (store[m] as (...a: unknown[]) => unknown).bind(store);
      (store as unknown as Record<string, unknown>)[m] = (...a: unknown[]) => {
        asked.push(m === 'head' ? `head ${String(a[0])}` : 'list');
        return orig(...a);
      };
    }
    const { s } = await server();
    const missing = await now(s, msg(Opcode.LOOKUP, [cstr('nothing')]));
    expect(missing.reply.error).to.equal(-E.ENOENT);
    expect(asked).to.deep.equal(['headNow nothing', 'headNow nothing/', 'list']);
    // A directory below it needs the LIST that finds it, the HEADs only once.
    await store.put('implicit/x', new Uint8Array(1));
    asked.length = 0;
    const implicit = await now(s, msg(Opcode.LOOKUP, [cstr('implicit')]));
    expect(implicit.reply.error).to.equal(0);
    expect(decodeEntryOut(concat(implicit.reply)).attr.mode & 0o170000).to.equal(0o040000);
    expect(asked).to.deep.equal(['headNow implicit', 'headNow implicit/', 'list']);
  });
  it('a directory replaced by rename while open answers GETATTR with its last attributes and no links, as Linux', async () => {
    const { s } = await server();
    const made = async (name: string, mode: number): Promise<number> => {
      const r = await now(s, msg(Opcode.MKDIR, [encode.mkdir(mode, 0), cstr(name)]));
      expect(r.reply.error).to.equal(0);
      return decodeEntryOut(concat(r.reply)).nodeid;
    };
    const old = await made('old', 0o750);
    expect((await now(s, msg(Opcode.OPENDIR, [encode.open(0)], old))).reply.error).to.equal(0);
    await made('new', 0o700);
    const mv = await now(s, msg(Opcode.RENAME, [encode.rename(1), cstr('new'), cstr('old')]));
    expect(mv.reply.error).to.equal(0);
    for (const [i, r] of [await now(s, msg(Opcode.GETATTR, [encode.getattr(0, 0)], old)), await now(s, msg(Opcode.GETATTR, [encode.getattr(0, 0)], old))].entries()) {
      expect(r.reply.error, `GETATTR ${i}`).to.equal(0);
      const a = decodeAttrOut(concat(r.reply)).attr;
      expect(a.mode & 0o7777).to.equal(0o750);
      expect(a.nlink).to.equal(0);
    }
    // The name now leads to the directory moved there.
    const cur = decodeEntryOut(concat((await now(s, msg(Opcode.LOOKUP, [cstr('old')]))).reply));
    expect(cur.nodeid).to.not.equal(old);
    expect(cur.attr.mode & 0o7777).to.equal(0o700);
  });

  it('answers a name missing from a cached listing ENOENT (or a negative entry) at once; unknown node ids ESTALE', async () => {
    for (const negativeTimeoutMs of [0, 5000]) {
      const { s } = await server({ negativeTimeoutMs });
      const d = decodeEntryOut(concat((await now(s, msg(Opcode.LOOKUP, [cstr('d')]))).reply)).nodeid;
      await now(s, msg(Opcode.OPENDIR, [encode.open(0)], d)); // lists d
      const calls = storeCalls;
      const miss = await now(s, msg(Opcode.LOOKUP, [cstr('nope')], d));
      expect(miss.sync).to.equal(true);
      if (negativeTimeoutMs === 0) expect(miss.reply.error).to.equal(-E.ENOENT);
      else expect(decodeEntryOut(concat(miss.reply)).nodeid).to.equal(0);
      expect(storeCalls).to.equal(calls);
      const stale = await now(s, msg(Opcode.LOOKUP, [cstr('f')], 987654));
      expect(stale.sync).to.equal(true);
      expect(stale.reply.error).to.equal(-E.ESTALE);
      expect(s.counters.errors).to.be.greaterThan(0);
    }
  });

  it('serves READDIR(PLUS) pages from the snapshot at once; a rewind after the end relists', async () => {
    for (let i = 0; i < 60; i++) await store.put(`d/many-${String(i).padStart(3, '0')}-${'x'.repeat(40)}`, new Uint8Array(0));
    const wide = `ünï-名前-${'é'.repeat(100)}`; // 213 bytes of UTF-8
    await store.put(`d/${wide}`, new Uint8Array(0));
    const { s } = await server();
    const d = decodeEntryOut(concat((await now(s, msg(Opcode.LOOKUP, [cstr('d')]))).reply)).nodeid;
    const { fh } = decodeOpenOut(concat((await now(s, msg(Opcode.OPENDIR, [encode.open(0)], d))).reply));
    const names: string[] = [];
    for (let off = 0; ;) {
      const page = await now(s, msg(Opcode.READDIRPLUS, [encode.read(fh, off, 1024)], d));
      expect(page.sync, `offset ${off}`).to.equal(true);
      const ents = decodeDirentsPlus(concat(page.reply));
      if (ents.length === 0) break;
      names.push(...ents.map((e) => e.name));
      off = Number(ents[ents.length - 1]!.off);
    }
    expect(names).to.have.length(64); // ., .., f, the 60 and the wide one
    expect(names).to.include(wide);
    expect(Buffer.byteLength(wide)).to.equal(213);
    expect(s.lookupCount(decodeEntryOut(concat((await now(s, msg(Opcode.LOOKUP, [cstr('f')], d))).reply)).nodeid)).to.equal(2);
    const rewind = await now(s, msg(Opcode.READDIR, [encode.read(fh, 0, 4096)], d));
    expect(rewind.sync).to.equal(false);
    expect(decodeDirents(concat(rewind.reply)).length).to.be.greaterThan(2);
    const bad = await now(s, msg(Opcode.READDIR, [encode.read(fh + 99, 5, 4096)], d));
    expect(bad.sync).to.equal(true);
    expect(bad.reply.error).to.equal(-E.EBADF);
  });

  it('a file with unstored writes reports its open size; a reply that does not fit is EIO and its lookup undone', async () => {
    const { s } = await server();
    const d = decodeEntryOut(concat((await now(s, msg(Opcode.LOOKUP, [cstr('d')]))).reply)).nodeid;
    const f = decodeEntryOut(concat((await now(s, msg(Opcode.LOOKUP, [cstr('f')], d))).reply)).nodeid;
    const { fh } = decodeOpenOut(concat((await now(s, msg(Opcode.OPEN, [encode.open(O_RDWR)], f))).reply));
    const w = await now(s, msg(Opcode.WRITE, [encode.write(fh, 5000, 10), new Uint8Array(10)], f));
    expect(w.reply.error).to.equal(0);
    const ga = await now(s, msg(Opcode.GETATTR, [encode.getattr(0, 0)], f));
    expect(ga.sync).to.equal(true);
    expect(decodeAttrOut(concat(ga.reply)).attr.size).to.equal(5010);

    const before = s.lookupCount(f);
    const tight = await now(s, msg(Opcode.LOOKUP, [cstr('f')], d), ENTRY_OUT_SIZE - 1);
    expect(tight.sync).to.equal(true);
    expect(tight.reply.error).to.equal(-E.EIO);
    expect(s.lookupCount(f)).to.equal(before);
    await now(s, msg(Opcode.RELEASE, [encode.release(fh, O_RDWR)], f));
  });
});

describe('FUSE READ answered before dispatch returns (in place, or the bytes at hand)', function () {
  this.timeout(30_000);
  const body = patternBytes(5, 300 * 1024 + 7);

  /** A READ dispatched with a PayloadTarget: its reply, whether it came before dispatch() returned, and the bytes read in place. */
  async function read(s: FuseServer, nodeid: number, fh: number, offset: number, size: number): Promise<{ reply: FuseReply; sync: boolean; data: Uint8Array }> {
    let room: Uint8Array | null = null;
    let got: FuseReply | undefined;
    const later = new Promise<FuseReply>((resolve) => s.dispatch(msg(Opcode.READ, [encode.read(fh, offset, size)], nodeid), 1 << 20, (r) => {
      got = r!;
      resolve(r!);
    }, (length) => [(room = new Uint8Array(length))]));
    const sync = got !== undefined;
    const reply = await later;
    const data = reply.inPlace ? room!.subarray(0, reply.length) : concat(reply);
    return { reply, sync, data };
  }

  async function open(store: ObjectStore): Promise<{ s: FuseServer; nodeid: number; fh: number }> {
    const s = new FuseServer(new BucketVfs({ store, logger: silentLogger, blockSize: 64 * 1024, readAheadBytes: 0 }), { log: silentLogger });
    expect((await s.handle(msg(Opcode.INIT, [encode.init(7, 38, 0, 0)], 0)))!.error).to.equal(0);
    const nodeid = decodeEntryOut(concat((await s.handle(msg(Opcode.LOOKUP, [cstr('p')])))!)).nodeid;
    const { fh } = decodeOpenOut(concat((await s.handle(msg(Opcode.OPEN, [encode.open(O_RDWR)], nodeid)))!));
    return { s, nodeid, fh };
  }

  it('a store read over the network (memory store): a READ of cached pages at once; one that needs a fetch later', async () => {
    const store = new MemoryStore();
    await store.put('p', body);
    const { s, nodeid, fh } = await open(store);
    const cold = await read(s, nodeid, fh, 70_000, 4096);
    expect(cold.sync).to.equal(false);
    expect(Buffer.from(cold.data).equals(Buffer.from(body.subarray(70_000, 74_096)))).to.equal(true);
    // 64 KiB blocks: the second is cached now; a read across the first and the second
    // waits for the first, then both are cached; the end of the file needs a fetch (no
    // read-ahead here).
    for (const [off, len, sync] of [[70_000, 4096, true], [65_000, 1000, false], [60_000, 10_000, true], [body.length - 5, 4096, false]] as const) {
      const r = await read(s, nodeid, fh, off, len);
      expect(r.sync, `${off}+${len}`).to.equal(sync);
      expect(Buffer.from(r.data).equals(Buffer.from(body.subarray(off, off + len))), `${off}+${len}`).to.equal(true);
    }
    // The end of the file was fetched by the read before; at once now.
    const tail = await read(s, nodeid, fh, body.length - 5, 4096);
    expect(tail.sync).to.equal(true);
    expect(tail.reply.inPlace).to.equal(undefined); // the cached bytes themselves (readNow)
    expect(tail.data.length).to.equal(5);
    // Past the end: empty, at once. An unknown handle: EBADF, at once.
    expect((await read(s, nodeid, fh, body.length + 10, 4096)).reply.length).to.equal(0);
    const bad = await read(s, nodeid, fh + 99, 0, 4096);
    expect([bad.sync, bad.reply.error]).to.deep.equal([true, -E.EBADF]);
    // Unstored writes: the ordinary (asynchronous) path, which sees them.
    expect((await s.handle(msg(Opcode.WRITE, [encode.write(fh, 70_001, 2), new Uint8Array([9, 9])], nodeid)))!.error).to.equal(0);
    const dirty = await read(s, nodeid, fh, 70_000, 4);
    expect(dirty.sync).to.equal(false);
    expect([...dirty.data]).to.deep.equal([body[70_000], 9, 9, body[70_003]]);
  });

  it('a file store: a READ of up to 128 KiB at once, a larger one later, both in place', async () => {
    const dir = new TmpDir('vhost-s3-answer-now-read-');
    try {
      const store = await FileStore.open(dir.file('store'), { create: true, noSync: true });
      await store.put('p', body);
      const { s, nodeid, fh } = await open(store);
      const small = await read(s, nodeid, fh, 1000, 128 * 1024);
      expect([small.sync, small.reply.inPlace]).to.deep.equal([true, true]);
      expect(Buffer.from(small.data).equals(Buffer.from(body.subarray(1000, 1000 + 128 * 1024)))).to.equal(true);
      const large = await read(s, nodeid, fh, 1000, 128 * 1024 + 1);
      expect([large.sync, large.reply.inPlace]).to.deep.equal([false, true]);
      expect(Buffer.from(large.data).equals(Buffer.from(body.subarray(1000, 1001 + 128 * 1024)))).to.equal(true);
      await store.close();
    } finally {
      dir.remove();
    }
  });
});
