// FuseServer's READ copied off the event loop (startCopyRead): answered from the copy's
// callback in the same turn — no promise or microtask between the completion and the
// reply — also when the copy completes before readIntoAsync returns; a copy that throws
// is answered with its errno; an INTERRUPT does not answer it early; what readIntoAsync
// declines goes the ordinary way. Over FuseServer.dispatch with a MemoryVfs whose open
// files get a scripted readIntoAsync.
import { expect } from 'chai';
import { FuseServer, type AsyncPayloadTarget } from '../../src/fuse/server.js';
import { E, O_RDONLY, Opcode } from '../../src/fuse/abi.js';
import { cstr, encode, encodeRequest } from '../../src/fuse/requests.js';
import { decodeEntryOut, decodeOpenOut, type FuseReply } from '../../src/fuse/replies.js';
import type { OpenFile } from '../../src/fuse/vfs.js';
import type { Segment } from '../../src/virtio/memory.js';
import { ErrnoError } from '../../src/util/errors.js';
import { silentLogger } from '../../src/util/log.js';
import { MemoryVfs } from './memory-vfs.js';

let unique = 1000n;
function msg(opcode: number, args: Uint8Array[], nodeid = 1): Uint8Array {
  return encodeRequest({ opcode, unique: unique++, nodeid, uid: 0, gid: 0, pid: 1 }, args);
}
function concat(r: FuseReply): Uint8Array {
  return Buffer.concat(r.parts.map((p) => Buffer.from(p)));
}

type Copy = (offset: number, length: number, targets: readonly Segment[], done: (result: number) => void) => boolean;

describe('FUSE READ copied off the event loop (FuseServer.startCopyRead)', () => {
  let vfs: MemoryVfs;
  let s: FuseServer;
  /** What the open files' readIntoAsync does (set per test). */
  let copy: Copy;
  let pins: number;
  const room: AsyncPayloadTarget = (length) => {
    pins++;
    return { segments: [{ buf: new ArrayBuffer(length), offset: 0, length, hostAddr: 0 }], release: () => void pins-- };
  };

  beforeEach(async () => {
    vfs = new MemoryVfs();
    vfs.put('f', 'x'.repeat(100));
    const open = vfs.open.bind(vfs);
    vfs.open = async (path, flags): Promise<OpenFile> => {
      const file = await open(path, flags);
      return Object.assign(file, { readIntoAsync: ((o, l, t, d) => copy(o, l, t, d)) as Copy });
    };
    pins = 0;
    s = new FuseServer(vfs, { log: silentLogger });
    expect((await s.handle(msg(Opcode.INIT, [encode.init(7, 38, 0, 0)], 0)))!.error).to.equal(0);
  });

  async function openF(): Promise<{ nodeid: number; fh: number }> {
    const nodeid = decodeEntryOut(concat((await s.handle(msg(Opcode.LOOKUP, [cstr('f')])))!)).nodeid;
    const fh = decodeOpenOut(concat((await s.handle(msg(Opcode.OPEN, [encode.open(O_RDONLY)], nodeid)))!)).fh;
    return { nodeid, fh };
  }

  function read(f: { nodeid: number; fh: number }, size: number, done: (r: FuseReply | null) => void): bigint {
    const bytes = msg(Opcode.READ, [encode.read(f.fh, 0, size)], f.nodeid);
    s.dispatch(bytes, 1 << 20, done, undefined, room);
    return unique - 1n;
  }

  /** Copies that start and wait: `done` is the last one's completion, for the test to call. */
  function holdCopies(): { done: ((r: number) => void) | undefined } {
    const held: { done: ((r: number) => void) | undefined } = { done: undefined };
    copy = (_o, _l, _t, done) => {
      held.done = done;
      return true;
    };
    return held;
  }

  it('answers in the callback of the copy, in the same turn, and releases the room', async () => {
    const f = await openF();
    const held = holdCopies();
    let reply: FuseReply | null | undefined;
    read(f, 4096, (r) => (reply = r));
    const complete = held.done;
    expect(complete).to.be.a('function');
    expect(pins).to.equal(1);
    expect(reply).to.equal(undefined);
    complete!(100);
    // No await in between: the reply was given from inside the completion.
    expect(reply).to.deep.include({ error: 0, length: 100, inPlace: true });
    expect(pins).to.equal(0);
    await s.idle();
  });

  it('answers a copy completed before readIntoAsync returned once, and is idle after', async () => {
    const f = await openF();
    copy = (_o, l, _t, done) => {
      done(l);
      return true;
    };
    const replies: (FuseReply | null)[] = [];
    read(f, 512, (r) => replies.push(r));
    expect(replies).to.have.length(1);
    expect(replies[0]).to.deep.include({ error: 0, length: 512 });
    await s.idle(); // resolves: nothing counted twice or left in flight
    expect(pins).to.equal(0);
  });

  it('answers a failed copy EIO, a throwing one with its errno, and declined copies the ordinary way', async () => {
    const f = await openF();
    copy = (_o, _l, _t, done) => {
      done(-E.EIO);
      return true;
    };
    const got: (FuseReply | null)[] = [];
    read(f, 512, (r) => got.push(r));
    copy = () => {
      throw new ErrnoError('EACCES');
    };
    read(f, 512, (r) => got.push(r));
    copy = () => false; // the file reads it on the event loop instead
    const ordinary = new Promise<FuseReply | null>((resolve) => read(f, 512, resolve));
    expect(got.map((r) => r!.error)).to.deep.equal([-E.EIO, -E.EACCES]);
    const r = (await ordinary)!;
    expect(r.error).to.equal(0);
    expect(Buffer.from(concat(r)).toString()).to.equal('x'.repeat(100));
    expect(pins).to.equal(0);
    await s.idle();
  });

  it('does not answer a READ being copied on INTERRUPT; the copy answers it', async () => {
    const f = await openF();
    const held = holdCopies();
    const replies: (FuseReply | null)[] = [];
    const u = read(f, 4096, (r) => replies.push(r));
    const complete = held.done;
    expect(await s.handle(msg(Opcode.INTERRUPT, [encode.interrupt(u)]))).to.equal(null);
    expect(replies).to.have.length(0);
    expect(s.counters.interrupted).to.equal(0);
    complete!(4096);
    expect(replies).to.have.length(1);
    expect(replies[0]).to.deep.include({ error: 0, length: 4096 });
    await s.idle();
  });
});
