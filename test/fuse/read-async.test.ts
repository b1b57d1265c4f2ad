// Large READs of a file-store object copied into the guest's descriptors by io_uring
// workers (OpenFile.readIntoAsync), over real virtqueues: the bytes of odd ranges and at
// the end of file, several at once; and what must hold while a copy is in flight — an
// INTERRUPT does not answer the READ early, stopping the rings (GET_VRING_BASE) waits for
// it, a RELEASE does not close the file under it, an object replaced meanwhile is read
// whole in its old version and the next READ sees the new one, a failed copy is an error
// reply and the daemon goes on. Completions are held back by a gate around the real
// readIntoAsync so that "in flight" lasts as long as a test needs.
import { expect } from 'chai';
import { FileStore } from '../../src/backends/file-store.js';
import { BucketVfs } from '../../src/backends/posix/bucket-vfs.js';
import { FsExport } from '../../src/fuse/export.js';
import { FuseClient } from '../../src/frontend/fuse-client.js';
import { E, O_RDONLY, Opcode } from '../../src/fuse/abi.js';
import { encode } from '../../src/fuse/requests.js';
import type { OpenFile, Vfs } from '../../src/fuse/vfs.js';
import { native } from '../../src/native/index.js';
import { silentLogger } from '../../src/util/log.js';
import { TmpDir, patternBytes } from '../support/tmp.js';

const MiB = 1 << 20;

/** Holds readIntoAsync completions while closed; counts the copies started. */
class Gate {
  started = 0;
  open = true;
  /** Replaces the next completion's result (an injected failure). */
  override: number | null = null;
  private held: (() => void)[] = [];

  wrap(file: OpenFile): OpenFile {
    const inner = file.readIntoAsync?.bind(file);
    if (inner === undefined) return file;
    const gated: OpenFile = {
      read: (o, l) => file.read(o, l),
      readInto: file.readInto?.bind(file),
      readIntoAsync: (offset, length, targets, done) => {
        const ok = inner(offset, length, targets, (result) => {
          const r = this.override ?? result;
          this.override = null;
          if (this.open) done(r);
          else this.held.push(() => done(r));
        });
        if (ok) this.started++;
        return ok;
      },
      write: (o, d) => file.write(o, d),
      attr: () => file.attr(),
      flush: () => file.flush(),
      fsync: (d) => file.fsync(d),
      allocate: (o, l) => file.allocate(o, l),
      setattr: (c) => file.setattr(c),
      release: () => file.release(),
    };
    return gated;
  }

  close(): void {
    this.open = false;
  }

  release(): void {
    this.open = true;
    for (const f of this.held.splice(0)) f();
  }

  get holding(): number {
    return this.held.length;
  }
}

function gatedVfs(vfs: Vfs, gate: Gate): Vfs {
  return new Proxy(vfs, {
    get(target, prop, receiver) {
      if (prop === 'open') return async (path: string, flags: Parameters<Vfs['open']>[1]) => gate.wrap(await target.open(path, flags));
      const v = Reflect.get(target, prop, receiver) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
}

async function until(cond: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 500 && !cond(); i++) await new Promise((r) => setTimeout(r, 5));
  if (!cond()) throw new Error(`timed out waiting for ${what}`);
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('FUSE READ copied off the event loop (virtio-fs, file store, io_uring)', function () {
  this.timeout(30_000);
  let dir: TmpDir;
  let store: FileStore;
  let exp: FsExport;
  let c: FuseClient;
  let gate: Gate;
  const body = patternBytes(21, 3 * MiB + 12345);

  before(function () {
    // Where io_uring is unavailable every READ stays synchronous (read-in-place.test.ts).
    const probe = native.createUring(4, () => undefined);
    if (probe === null) this.skip();
    probe.close();
  });

  beforeEach(async () => {
    dir = new TmpDir('vhost-s3-readasync-');
    store = await FileStore.open(dir.file('store'), { create: true, noSync: true });
    await store.put('f', body);
    gate = new Gate();
    const vfs = gatedVfs(new BucketVfs({ store, logger: silentLogger }), gate);
    exp = await FsExport.start({ socket: dir.file('fs.sock'), vfs, requestQueues: 1, log: silentLogger });
    // 4 KiB descriptors, as Linux's page-sized buffers: a 1 MiB reply spans 256 of them.
    c = await FuseClient.connect(dir.file('fs.sock'), { segmentSize: 4096 });
    await c.init();
  });
  afterEach(async () => {
    gate.release();
    await c.close();
    await exp.close();
    dir.remove();
  });

  async function openF(): Promise<{ nodeid: number; fh: number }> {
    const e = await c.lookup(1, 'f');
    const { fh } = await c.open(e.nodeid, O_RDONLY);
    return { nodeid: e.nodeid, fh };
  }

  function expectBytes(got: Uint8Array, want: Uint8Array, what: string): void {
    expect(got.length, `${what}: length`).to.equal(want.length);
    expect(Buffer.from(got).equals(Buffer.from(want)), what).to.equal(true);
  }

  it('reads odd ranges, short at the end of file, several at once; small ones stay synchronous', async () => {
    const { nodeid, fh } = await openF();
    const ranges: [number, number][] = [
      [0, MiB], [1, MiB - 1], [4097, 600_001], [MiB + 3, 524_288], [body.length - 700_000, MiB], // async (>= 512 KiB wanted)
      [body.length - 1000, MiB], [5, 4096], [body.length, MiB], [body.length + 99, 1], // short tail, small, past the end
    ];
    const got = await Promise.all(ranges.map(([off, len]) => c.read(nodeid, fh, off, len)));
    ranges.forEach(([off, len], i) => expectBytes(got[i]!, body.subarray(off, off + len), `${off}+${len}`));
    expect(gate.started).to.equal(5);
    // Whole passes, 8 in flight, as the benchmark reads.
    const parts: Uint8Array[] = [];
    let next = 0;
    await Promise.all(Array.from({ length: 8 }, async () => {
      while (next * MiB < body.length) {
        const i = next++;
        parts[i] = await c.read(nodeid, fh, i * MiB, MiB);
      }
    }));
    expectBytes(Buffer.concat(parts), body, 'whole file');
    await c.release(nodeid, fh);
  });

  it('finishes an interrupted READ normally once its copy completed, not early', async () => {
    const { nodeid, fh } = await openF();
    gate.close();
    const unique = c.nextUnique();
    const reading = c.request(Opcode.READ, nodeid, [encode.read(fh, 4096, MiB)], { unique, replyRoom: MiB });
    let answered = false;
    void reading.then(() => (answered = true));
    await until(() => gate.holding === 1, 'the copy to complete');
    await c.interrupt(unique);
    await sleep(50);
    expect(answered, 'answered while the copy was in flight').to.equal(false);
    // Guest memory stays mapped for the copy whatever SET_MEM_TABLE comes meanwhile.
    const memory = exp.vhostServer.session!.guestMemory;
    expect(memory.pinCount).to.equal(1);
    gate.release();
    expect(memory.pinCount).to.equal(0);
    const r = await reading;
    expect(r.error).to.equal(0);
    expectBytes(r.payload, body.subarray(4096, 4096 + MiB), 'interrupted READ');
    expect(exp.server.counters.interrupted).to.equal(0);
    await c.release(nodeid, fh);
  });

  it('makes GET_VRING_BASE (and disconnecting) wait for a copy in flight', async () => {
    const { nodeid, fh } = await openF();
    gate.close();
    const reading = c.read(nodeid, fh, 0, MiB);
    await until(() => gate.started === 1, 'the copy to start');
    let closed = false;
    const closing = c.close().then(() => (closed = true)); // GET_VRING_BASE of every ring, then disconnect
    await sleep(50);
    expect(closed, 'ring stopped with a READ in flight').to.equal(false);
    expect(exp.server.inflightCount).to.equal(1);
    gate.release();
    expectBytes(await reading, body.subarray(0, MiB), 'READ across the stop');
    await closing;
    expect(exp.server.inflightCount).to.equal(0);
  });

  it('keeps guest memory mapped for a copy in flight across a SET_MEM_TABLE that drops it', async () => {
    const { nodeid, fh } = await openF();
    gate.close();
    const reading = c.read(nodeid, fh, 0, MiB);
    reading.catch(() => undefined); // its ring breaks with the table: never answered
    await until(() => gate.started === 1, 'the copy to start');
    const session = exp.vhostServer.session!;
    const old = session.guestMemory;
    expect(old.pinCount).to.equal(1);
    await c.virtio.session.setMemTable([]); // every region gone (the rings with them)
    expect(session.guestMemory).to.not.equal(old);
    expect(old.regionCount).to.equal(0); // no longer translates ...
    expect(old.pinCount).to.equal(1); // ... but stays mapped until the copy is done
    await until(() => gate.holding === 1, 'the copy to complete'); // (submitted at the end of its turn)
    expect(old.pinCount).to.equal(1); // done, but not answered yet
    gate.release();
    expect(old.pinCount).to.equal(0);
  });

  it('keeps the file open for a READ in flight when the handle is released under it', async () => {
    const { nodeid, fh } = await openF();
    gate.close();
    const reading = c.read(nodeid, fh, 77, MiB);
    await until(() => gate.started === 1, 'the copy to start');
    await c.release(nodeid, fh); // a hostile guest need not wait for its READs
    await until(() => gate.holding === 1, 'the copy to complete');
    gate.release();
    expectBytes(await reading, body.subarray(77, 77 + MiB), 'READ across the RELEASE');
  });

  it('reads an object replaced while open whole in one version, and the new one next', async () => {
    const { nodeid, fh } = await openF();
    expectBytes(await c.read(nodeid, fh, 0, MiB), body.subarray(0, MiB), 'before');
    const other = patternBytes(22, 2 * MiB + 7);
    gate.close();
    const reading = c.read(nodeid, fh, MiB, MiB);
    await until(() => gate.started === 2, 'the copy to start');
    await new FileStore(dir.file('store')).put('f', other); // another writer, during the copy
    gate.release();
    expectBytes(await reading, body.subarray(MiB, 2 * MiB), 'in flight: the version it started on');
    expectBytes(await c.read(nodeid, fh, MiB, MiB), other.subarray(MiB, 2 * MiB), 'after: the new version');
    expectBytes(await c.read(nodeid, fh, MiB + 10, MiB), other.subarray(MiB + 10), 'after, short at the new end');
    await c.release(nodeid, fh);
  });

  it('answers a failed copy with EIO and goes on serving', async () => {
    const { nodeid, fh } = await openF();
    gate.override = -E.EIO;
    const r = await c.request(Opcode.READ, nodeid, [encode.read(fh, 0, MiB)], { replyRoom: MiB });
    expect(r.error).to.equal(-E.EIO);
    expectBytes(await c.read(nodeid, fh, 0, MiB), body.subarray(0, MiB), 'next READ');
    await c.release(nodeid, fh);
  });
});
