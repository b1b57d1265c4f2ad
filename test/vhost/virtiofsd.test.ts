// Our frontend session against QEMU's C virtiofsd (libvhost-user, two queues:
// hiprio + one request queue): negotiation, memory, both rings, a FUSE_INIT round trip
// on the request queue, and stopping the rings.
import { expect } from 'chai';
import { mkdirSync } from 'node:fs';
import { FrontendSession } from '../../src/vhost/frontend-session.js';
import { ProtocolFeature } from '../../src/vhost/protocol.js';
import { VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC } from '../../src/virtio/features.js';
import { FrontendMemory, TempDir, TestRing } from './helpers.js';
import { startVirtiofsd, virtiofsdUsable, type Virtiofsd } from '../support/guest/fs-checks.js';


const FUSE_INIT = 26;
const IN = 0x40000;
const OUT = 0x50000;

describe('vhost-user frontend session against virtiofsd', function () {
  this.timeout(30000);
  let dir: TempDir;
  let vfsd: Virtiofsd | null = null;

  before(function () {
    if (!virtiofsdUsable()) this.skip();
  });

  afterEach(async () => {
    await vfsd?.stop();
    vfsd = null;
    dir?.remove();
  });

  it('negotiates, starts hiprio and request queues, and answers FUSE_INIT', async () => {
    dir = new TempDir();
    const shared = dir.file('shared');
    mkdirSync(shared);
    const socket = dir.file('fs.sock');
    vfsd = await startVirtiofsd({ source: shared, socket });

    const fe = await FrontendSession.connect(socket, { timeoutMs: 5000 });
    const mem = new FrontendMemory(1 << 20, 0x100000);
    const hiprio = new TestRing(mem, 0, 0, 16);
    const req = new TestRing(mem, 1, 0x10000, 16, { eventIdx: true });
    try {
      const neg = await fe.negotiate();
      expect(neg.queueNum).to.be.greaterThanOrEqual(2);
      expect(neg.protocolFeatures & ProtocolFeature.REPLY_ACK).to.equal(ProtocolFeature.REPLY_ACK);
      await fe.setFeatures(neg.features & (VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | VIRTIO_RING_F_INDIRECT_DESC));
      await fe.addMemRegion(mem.region);
      await hiprio.setup(fe);
      await req.setup(fe);
      await fe.enableVring(0, true);
      await fe.enableVring(1, true);

      const dv = new DataView(mem.bytes.buffer, mem.bytes.byteOffset);
      // fuse_in_header (40 bytes) + fuse_init_in (7.31 layout, 16 bytes)
      dv.setUint32(IN, 56, true);
      dv.setUint32(IN + 4, FUSE_INIT, true);
      dv.setBigUint64(IN + 8, 1n, true);
      dv.setUint32(IN + 40, 7, true);
      dv.setUint32(IN + 44, 31, true);
      dv.setUint32(IN + 48, 0x20000, true);
      dv.setUint32(IN + 52, 0, true);
      mem.bytes.fill(0xee, OUT, OUT + 4096);
      req.dq.add([mem.buffer(IN, 56)], [mem.buffer(OUT, 4096)], 1);
      req.dq.kick();
      const done = await req.waitCompletions(1);
      expect(done[0]!.token).to.equal(1);
      const len = dv.getUint32(OUT, true);
      expect(done[0]!.len).to.equal(len);
      expect(dv.getInt32(OUT + 4, true)).to.equal(0); // error
      expect(dv.getBigUint64(OUT + 8, true)).to.equal(1n); // unique
      expect(dv.getUint32(OUT + 16, true)).to.equal(7); // major

      await fe.enableVring(0, false);
      await fe.enableVring(1, false);
      expect(await fe.getVringBase(0)).to.equal(0);
      expect(await fe.getVringBase(1)).to.equal(1);
    } finally {
      fe.close();
      hiprio.close();
      req.close();
      mem.close();
    }
  });
});
