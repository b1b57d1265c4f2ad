// FUSE passthrough in the engine (src/fuse/passthrough.ts), without a kernel: a recording
// backing device stands in for the /dev/fuse ioctls. What is checked: INIT accepts
// FUSE_PASSTHROUGH only when the transport offers it and the kernel asks; a read-only open
// of a file the page cache holds whole gets FOPEN_PASSTHROUGH and a memfd with exactly
// its bytes; later read-only opens share that backing; opens for writing and truncates
// fail with ETXTBSY while it is in use; the last release closes it; and what keeps the
// ordinary path (a file not all cached, other handles open, the budget, a refused ioctl).
// The kernel's side is tested on a real mount in test/mount/passthrough.test.ts.
import { expect } from 'chai';
import { fstatSync, readSync } from 'node:fs';
import { MemoryStore } from '../../src/backends/memory-store.js';
import { BucketVfs } from '../../src/backends/posix/bucket-vfs.js';
import { FuseServer } from '../../src/fuse/server.js';
import {
  E, FATTR_SIZE, FOPEN_PASSTHROUGH, FUSE2_PASSTHROUGH, FUSE_INIT_EXT, O_RDONLY, O_RDWR, O_WRONLY, Opcode,
} from '../../src/fuse/abi.js';
import { cstr, encode, encodeRequest } from '../../src/fuse/requests.js';
import { decodeEntryOut, decodeInitOut, decodeOpenOut, type FuseReply } from '../../src/fuse/replies.js';
import type { BackingDevice } from '../../src/fuse/passthrough.js';
import { silentLogger } from '../../src/util/log.js';
import { patternBytes } from '../support/tmp.js';

let unique = 1000n;
function msg(opcode: number, args: Uint8Array[], nodeid = 1): Uint8Array {
  return encodeRequest({ opcode, unique: unique++, nodeid, uid: 0, gid: 0, pid: 1 }, args);
}
function body(r: FuseReply): Uint8Array {
  return Buffer.concat(r.parts.map((p) => Buffer.from(p)));
}

/** Records registrations: the bytes behind each fd (read while it is still open) and which ids are live. */
class RecordingDevice implements BackingDevice {
  readonly contents = new Map<number, Buffer>();
  readonly live = new Set<number>();
  refuse = false;
  private next = 1;
  open(fd: number): number {
    if (this.refuse) throw Object.assign(new Error('EPERM'), { code: 'EPERM' });
    const size = fstatSync(fd).size;
    const buf = Buffer.alloc(size);
    let done = 0;
    while (done < size) done += readSync(fd, buf, done, size - done, done);
    const id = this.next++;
    this.contents.set(id, buf);
    this.live.add(id);
    return id;
  }
  close(id: number): void {
    expect(this.live.delete(id), `backing ${id} closed twice`).to.equal(true);
  }
}

describe('FUSE passthrough in the engine (recording backing device)', function () {
  this.timeout(30_000);
  const size = 3 * 65536 + 123;
  const data = patternBytes(7, size);
  let store: MemoryStore;
  let dev: RecordingDevice;

  beforeEach(async () => {
    store = new MemoryStore();
    await store.put('f.bin', data);
    await store.put('g.bin', data.subarray(0, 1000));
    dev = new RecordingDevice();
  });

  async function start(o: { offer?: boolean; kernelAsks?: boolean; maxBytes?: number } = {}): Promise<{ s: FuseServer; init: ReturnType<typeof decodeInitOut> }> {
    const vfs = new BucketVfs({ store, logger: silentLogger, blockSize: 65536 });
    const s = new FuseServer(vfs, { log: silentLogger });
    if (o.offer ?? true) s.offerPassthrough({ device: dev, maxBytes: o.maxBytes ?? 1 << 30, log: silentLogger });
    const r = await s.handle(msg(Opcode.INIT, [encode.init(7, 45, 0, FUSE_INIT_EXT, (o.kernelAsks ?? true) ? FUSE2_PASSTHROUGH : 0)], 0));
    expect(r!.error).to.equal(0);
    return { s, init: decodeInitOut(body(r!)) };
  }
  async function lookup(s: FuseServer, name: string): Promise<number> {
    const r = await s.handle(msg(Opcode.LOOKUP, [cstr(name)]));
    expect(r!.error).to.equal(0);
    return decodeEntryOut(body(r!)).nodeid;
  }
  async function open(s: FuseServer, ino: number, flags: number): Promise<FuseReply> {
    return (await s.handle(msg(Opcode.OPEN, [encode.open(flags)], ino)))!;
  }
  async function release(s: FuseServer, ino: number, fh: number): Promise<void> {
    expect((await s.handle(msg(Opcode.RELEASE, [encode.release(fh)], ino)))!.error).to.equal(0);
  }
  /** Reads the whole file through an ordinary handle: the page cache then holds all of it. */
  async function readAll(s: FuseServer, ino: number, bytes: number): Promise<void> {
    const o = decodeOpenOut(body(await open(s, ino, O_RDONLY)));
    expect(o.openFlags & FOPEN_PASSTHROUGH).to.equal(0);
    for (let off = 0; off < bytes; off += 65536) {
      const r = await s.handle(msg(Opcode.READ, [encode.read(o.fh, off, 65536)], ino));
      expect(r!.error).to.equal(0);
    }
    await release(s, ino, o.fh);
  }

  it('negotiates FUSE_PASSTHROUGH only when offered and asked for', async () => {
    expect((await start()).init).to.deep.include({ flags2: FUSE2_PASSTHROUGH, maxStackDepth: 1 });
    expect((await start({ offer: false })).init).to.deep.include({ flags2: 0, maxStackDepth: 0 });
    expect((await start({ kernelAsks: false })).init).to.deep.include({ flags2: 0, maxStackDepth: 0 });
  });

  it('hands a wholly cached file to the kernel, shares it, refuses changes meanwhile, and closes it after the last release', async () => {
    const { s } = await start();
    const ino = await lookup(s, 'f.bin');
    // Not cached yet: the ordinary path.
    const cold = decodeOpenOut(body(await open(s, ino, O_RDONLY)));
    expect(cold.openFlags & FOPEN_PASSTHROUGH).to.equal(0);
    await release(s, ino, cold.fh);
    await readAll(s, ino, size);

    const a = decodeOpenOut(body(await open(s, ino, O_RDONLY)));
    expect(a.openFlags & FOPEN_PASSTHROUGH).to.equal(FOPEN_PASSTHROUGH);
    expect(dev.contents.get(a.backingId)!.equals(Buffer.from(data))).to.equal(true);
    const b = decodeOpenOut(body(await open(s, ino, O_RDONLY)));
    expect(b).to.deep.include({ openFlags: FOPEN_PASSTHROUGH, backingId: a.backingId });
    expect(dev.contents.size).to.equal(1);

    expect((await open(s, ino, O_WRONLY)).error).to.equal(-E.ETXTBSY);
    expect((await open(s, ino, O_RDWR)).error).to.equal(-E.ETXTBSY);
    const trunc = await s.handle(msg(Opcode.SETATTR, [encode.setattr({ valid: FATTR_SIZE, size: 0 })], ino));
    expect(trunc!.error).to.equal(-E.ETXTBSY);
    const create = await s.handle(msg(Opcode.CREATE, [encode.create(O_WRONLY, 0o644, 0), cstr('f.bin')]));
    expect(create!.error).to.equal(-E.ETXTBSY);
    expect(s.passthroughState!.stats).to.deep.equal({ backings: 1, refused: 4 });

    await release(s, ino, a.fh);
    expect(dev.live.has(a.backingId)).to.equal(true);
    await release(s, ino, b.fh);
    expect(dev.live.size).to.equal(0);
    expect(s.passthroughState!.heldBytes).to.equal(0);

    // Free again: written through an ordinary handle.
    const w = decodeOpenOut(body(await open(s, ino, O_RDWR)));
    expect(w.openFlags & FOPEN_PASSTHROUGH).to.equal(0);
    expect((await s.handle(msg(Opcode.WRITE, [encode.write(w.fh, 0, 5), Buffer.from('hello')], ino)))!.error).to.equal(0);
    await release(s, ino, w.fh);
    expect(Buffer.from((await store.get('f.bin')).body.subarray(0, 5)).toString()).to.equal('hello');
  });

  it('never answers a passthrough open and an open for writing of one file both with success, however they interleave', async () => {
    const { s } = await start();
    const ino = await lookup(s, 'f.bin');
    await readAll(s, ino, size);
    // Two read-only opens and a writer at once: the readers share one backing, or none of
    // the three is passthrough and the writer got in (it came while the copy was made).
    const [r1, w, r2] = await Promise.all([open(s, ino, O_RDONLY), open(s, ino, O_RDWR), open(s, ino, O_RDONLY)]);
    const o1 = decodeOpenOut(body(r1));
    const o2 = decodeOpenOut(body(r2));
    const pt = [o1, o2].filter((o) => (o.openFlags & FOPEN_PASSTHROUGH) !== 0);
    if (w.error === 0) {
      expect(pt).to.have.length(0);
      expect(dev.live.size).to.equal(0);
      await release(s, ino, decodeOpenOut(body(w)).fh);
    } else {
      expect(w.error).to.equal(-E.ETXTBSY);
      expect(pt).to.have.length(2);
      expect(o1.backingId).to.equal(o2.backingId);
      expect(dev.contents.size).to.equal(1);
    }
    await release(s, ino, o1.fh);
    await release(s, ino, o2.fh);
    expect(dev.live.size).to.equal(0);
    // Two readers alone share one copy, made once.
    const [a, b] = (await Promise.all([open(s, ino, O_RDONLY), open(s, ino, O_RDONLY)])).map((r) => decodeOpenOut(body(r)));
    expect(a!.openFlags & b!.openFlags & FOPEN_PASSTHROUGH).to.equal(FOPEN_PASSTHROUGH);
    expect(a!.backingId).to.equal(b!.backingId);
    await release(s, ino, a!.fh);
    await release(s, ino, b!.fh);
    expect(dev.live.size).to.equal(0);
  });

  it('keeps the ordinary path while another handle is open, past the budget, and once the kernel refused a backing', async () => {
    const { s } = await start({ maxBytes: size });
    const f = await lookup(s, 'f.bin');
    const g = await lookup(s, 'g.bin');
    await readAll(s, f, size);
    await readAll(s, g, 1000);

    const plain = decodeOpenOut(body(await open(s, f, O_RDWR)));
    expect(plain.openFlags & FOPEN_PASSTHROUGH).to.equal(0);
    const other = decodeOpenOut(body(await open(s, f, O_RDONLY)));
    expect(other.openFlags & FOPEN_PASSTHROUGH).to.equal(0); // `plain` is open in the kernel's caching mode
    await release(s, f, plain.fh);
    await release(s, f, other.fh);

    const pf = decodeOpenOut(body(await open(s, f, O_RDONLY)));
    expect(pf.openFlags & FOPEN_PASSTHROUGH).to.equal(FOPEN_PASSTHROUGH);
    const pg = decodeOpenOut(body(await open(s, g, O_RDONLY)));
    expect(pg.openFlags & FOPEN_PASSTHROUGH).to.equal(0); // f's copy used the whole budget
    await release(s, g, pg.fh);
    await release(s, f, pf.fh);

    dev.refuse = true;
    const refused = await open(s, g, O_RDONLY);
    expect(refused.error).to.equal(0);
    expect(decodeOpenOut(body(refused)).openFlags & FOPEN_PASSTHROUGH).to.equal(0);
    dev.refuse = false;
    const after = decodeOpenOut(body(await open(s, g, O_RDONLY)));
    expect(after.openFlags & FOPEN_PASSTHROUGH).to.equal(0); // not asked again on this connection
  });
});
