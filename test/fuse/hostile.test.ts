// A hostile driver against the virtio-fs device over a real socket: malformed descriptor
// chains on hiprio and request queues, and random messages with random reply room. Each
// is failed on its own; the queues, the session and the engine keep working.
import { expect } from 'chai';
import fc from 'fast-check';
import { FsExport } from '../../src/fuse/export.js';
import { FuseClient } from '../../src/frontend/fuse-client.js';
import { OUT_HEADER_SIZE, Opcode, O_CREAT, O_RDWR, decodeOutHeader, encodeInHeader } from '../../src/fuse/abi.js';
import { encode, encodeRequest } from '../../src/fuse/requests.js';
import { VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from '../../src/virtio/layout.js';
import { MALFORMED_DESCRIPTORS, MALFORMED_SHAPES, sendRawChain, writeMalformedChain } from '../support/hostile-chains.js';
import { silentLogger } from '../../src/util/log.js';
import { TmpDir } from '../support/tmp.js';
import { MemoryVfs } from './memory-vfs.js';

const NEXT = VIRTQ_DESC_F_NEXT;
const WRITE = VIRTQ_DESC_F_WRITE;
const td = new TextDecoder();

describe('virtio-fs device against a hostile driver', function () {
  this.timeout(60000);
  let dir: TmpDir;
  let vfs: MemoryVfs;
  let exp: FsExport;
  let c: FuseClient;

  beforeEach(async () => {
    dir = new TmpDir();
    vfs = new MemoryVfs();
    vfs.put('f', 'file contents');
    exp = await FsExport.start({ socket: dir.file('fs.sock'), vfs, requestQueues: 2, log: silentLogger });
    c = await FuseClient.connect(dir.file('fs.sock'), { requestQueues: 2, maxIo: 64 * 1024 });
    await c.init();
  });
  afterEach(async () => {
    await c.close();
    await exp.close();
    dir.remove();
  });

  async function stillServes(queue: number): Promise<void> {
    const e = await c.lookup(1, 'f');
    const { fh } = await c.open(e.nodeid, 0);
    expect(td.decode(await c.read(e.nodeid, fh, 0, 100, queue))).to.equal('file contents');
    await c.release(e.nodeid, fh);
    await c.forget(e.nodeid, 1);
  }

  type Ring = ReturnType<FuseClient['virtio']['rawRing']>;

  const sendRaw = (queue: number, write: (ring: Ring, d: number[]) => void, descs = 3): Promise<number> =>
    sendRawChain(c.virtio, queue, write, { descs });

  it('fails malformed chains on hiprio and request queues with length 0 and keeps serving', async () => {
    const req = c.allocBuffer(64);
    req.bytes.set(encodeRequest({ opcode: Opcode.GETATTR, unique: 2n, nodeid: 1 }, [encode.getattr(0, 0)]));
    const out = c.allocBuffer(256);
    const mem = c.virtio.memory;
    for (const queue of [0, 1, 2]) {
      for (const shape of MALFORMED_SHAPES) {
        const len = await sendRaw(queue, (ring, d) => writeMalformedChain(ring, d, shape, {
          request: { addr: req.gpa, len: 56 }, reply: { addr: out.gpa, len: 256 }, end: mem.guestBase + mem.size,
        }), MALFORMED_DESCRIPTORS);
        expect(len, `${shape} on queue ${queue}`).to.equal(0);
        await stillServes(1 + (queue % 2));
      }
    }
    expect(exp.device.counters.badChains).to.equal(3 * MALFORMED_SHAPES.length);
    // a well-formed hand-written chain still gets its reply (header split over two descriptors)
    const len = await sendRaw(1, (ring, d) => {
      ring.writeRawDescriptor(d[0]!, req.gpa, 20, NEXT, d[1]!);
      ring.writeRawDescriptor(d[1]!, req.gpa + 20, 36, NEXT, d[2]!);
      ring.writeRawDescriptor(d[2]!, out.gpa, 256, WRITE, 0);
    });
    expect(len).to.equal(OUT_HEADER_SIZE + 104);
    expect(decodeOutHeader(out.bytes)).to.deep.equal({ len: 120, error: 0, unique: 2n });
    expect(c.broken).to.equal(false);
  });

  it('answers random messages with a well-formed reply or length 0, on every queue (property-based)', async () => {
    const { entry, fh } = await c.create(1, 'target', O_CREAT | O_RDWR);
    const known = [0, 1, entry.nodeid, fh, 2 ** 53];
    await fc.assert(fc.asyncProperty(
      fc.integer({ min: 0, max: 52 }),
      fc.constantFrom(...known),
      fc.uint8Array({ maxLength: 160 }),
      fc.integer({ min: -8, max: 8 }),
      fc.constantFrom(0, 8, 16, 17, 64, 300, 4096),
      fc.integer({ min: 0, max: 2 }),
      async (opcode, nodeid, args, lenSkew, room, queue) => {
        if (opcode === Opcode.INIT || opcode === Opcode.DESTROY) opcode = Opcode.GETATTR;
        const m = new Uint8Array(40 + args.length);
        encodeInHeader({ len: Math.max(0, m.length + lenSkew), opcode, unique: 77n, nodeid }, m);
        m.set(args, 40);
        const r = await c.raw(m, room, queue);
        if (r.len === 0) return;
        expect(queue).to.not.equal(0);
        expect(r.len).to.be.at.least(OUT_HEADER_SIZE);
        expect(r.len).to.be.at.most(room);
        const h = decodeOutHeader(r.bytes)!;
        expect(h.len).to.equal(r.len);
        expect(h.error).to.be.within(-4095, 0);
      },
    ), { numRuns: 600 });
    await exp.server.idle();
    await stillServes(1);
    await stillServes(2);
    await c.release(entry.nodeid, fh).catch(() => undefined); // a random RELEASE may have taken it
    expect(c.broken).to.equal(false);
  });
});
