// A hostile driver against the blk device over a real socket: malformed descriptor chains
// and requests are failed one by one, and the same connection, the other queues and the
// next connection keep working.
import { expect } from 'chai';
import { BlkExport } from '../../src/blk/export.js';
import { RawImage } from '../../src/blk/raw-image.js';
import { BlkClient } from '../../src/frontend/blk-client.js';
import { BlkStatus, BlkType } from '../../src/blk/protocol.js';
import { VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from '../../src/virtio/layout.js';
import { silentLogger } from '../../src/util/log.js';
import { TmpDir, makeRawFile, patternBytes } from '../support/tmp.js';
import { MALFORMED_DESCRIPTORS, MALFORMED_SHAPES, sendRawChain, writeMalformedChain } from '../support/hostile-chains.js';

const MiB = 1 << 20;
const NEXT = VIRTQ_DESC_F_NEXT;
const WRITE = VIRTQ_DESC_F_WRITE;

describe('virtio-blk device against a hostile driver', function () {
  this.timeout(30000);
  let dir: TmpDir;
  let exp: BlkExport;
  let c: BlkClient;

  beforeEach(async () => {
    dir = new TmpDir();
    const raw = makeRawFile(dir.file('disk.raw'), 4 * MiB);
    exp = await BlkExport.start({
      socket: dir.file('blk.sock'), image: RawImage.open(raw, { readOnly: false, ioEngine: 'uring' }), locator: raw,
      queues: 2, serial: 'H', log: silentLogger,
    });
    c = await BlkClient.connect(dir.file('blk.sock'), { queues: 2 });
  });
  afterEach(async () => {
    await c.close();
    await exp.close();
    dir.remove();
  });

  /** Normal I/O on `queue` still works. */
  async function stillServes(queue: number): Promise<void> {
    const w = c.allocBuffer(4096);
    w.bytes.set(patternBytes(queue + 77, 4096));
    expect(await c.writeAsync(queue, 8192, w)).to.equal(BlkStatus.Ok);
    const r = c.allocBuffer(4096);
    expect(await c.readAsync(queue, 8192, r)).to.equal(BlkStatus.Ok);
    expect(Buffer.from(r.bytes).equals(Buffer.from(w.bytes))).to.equal(true);
  }

  /** Publishes a hand-written chain on queue 0 and waits for the device to give it back. */
  const sendRaw = (write: (ring: ReturnType<BlkClient['virtio']['rawRing']>, d: number[]) => void, descs = 3): Promise<number> =>
    sendRawChain(c.virtio, 0, write, { descs, intervalMs: 5 });

  function header(type: number, sector: number): { gpa: number } {
    const h = c.allocBuffer(16);
    const v = new DataView(h.bytes.buffer, h.bytes.byteOffset, 16);
    v.setUint32(0, type, true);
    v.setBigUint64(8, BigInt(sector), true);
    return h;
  }

  it('fails every malformed chain (test/support/hostile-chains.ts) with length 0, and keeps serving', async () => {
    const hdr = header(BlkType.In, 0);
    const status = c.allocBuffer(1);
    const mem = c.virtio.memory;
    for (const shape of MALFORMED_SHAPES) {
      const len = await sendRaw((ring, d) => writeMalformedChain(ring, d, shape, {
        request: { addr: hdr.gpa, len: 16 }, reply: { addr: status.gpa, len: 1 }, end: mem.guestBase + mem.size,
      }), MALFORMED_DESCRIPTORS);
      expect(len, shape).to.equal(0);
      await stillServes(0);
    }
    expect(exp.device.counters.badChains).to.equal(MALFORMED_SHAPES.length);
  });

  it('answers requests without room for a status byte, or with a short header, without crashing', async () => {
    const hdr = header(BlkType.In, 0);
    const data = c.allocBuffer(512);
    // no writable byte at all: nothing to report, buffers handed back
    expect(await sendRaw((ring, d) => ring.writeRawDescriptor(d[0]!, hdr.gpa, 16, 0, 0), 1)).to.equal(0);
    // an 8-byte header: IOERR in the status byte
    const status = c.allocBuffer(1);
    status.bytes[0] = 0xff;
    expect(await sendRaw((ring, d) => {
      ring.writeRawDescriptor(d[0]!, hdr.gpa, 8, NEXT, d[1]!);
      ring.writeRawDescriptor(d[1]!, status.gpa, 1, WRITE, 0);
    }, 2)).to.equal(1);
    expect(status.bytes[0]).to.equal(BlkStatus.IoErr);
    // a write whose data is device-writable (wrong direction): only the status is written
    status.bytes[0] = 0xff;
    const out = header(BlkType.Out, 0);
    expect(await sendRaw((ring, d) => {
      ring.writeRawDescriptor(d[0]!, out.gpa, 16, NEXT, d[1]!);
      ring.writeRawDescriptor(d[1]!, data.gpa, 512, WRITE | NEXT, d[2]!);
      ring.writeRawDescriptor(d[2]!, status.gpa, 1, WRITE, 0);
    })).to.equal(1);
    expect(status.bytes[0]).to.equal(BlkStatus.IoErr);
    await stillServes(0);
  });

  it('a head index beyond the ring breaks only that queue; the other queue and the next connection work', async () => {
    const ring = c.virtio.rawRing(0);
    ring.publishRawHead(ring.size + 5);
    ring.kick();
    await new Promise((r) => setTimeout(r, 100));
    await stillServes(1);
    await c.close();
    c = await BlkClient.connect(dir.file('blk.sock'), { queues: 2 });
    await stillServes(0);
    await stillServes(1);
  });
});
