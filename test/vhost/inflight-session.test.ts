// GET/SET_INFLIGHT_FD on the backend session, driven by our frontend session over a real
// socket: the region a backend hands out, what SET_INFLIGHT_FD refuses (each refusal an
// error reply, the session serving on), and a region carried from one connection to the
// next with a request the first one took and never completed.
import { expect } from 'chai';
import { fstatSync } from 'node:fs';
import { native } from '../../src/native/index.js';
import { FrontendSession, FRONTEND_PROTOCOL_FEATURES, type InflightFd } from '../../src/vhost/frontend-session.js';
import { ProtocolError, encodeInflight } from '../../src/vhost/codec.js';
import { FrontendReq, ProtocolFeature } from '../../src/vhost/protocol.js';
import { VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX } from '../../src/virtio/features.js';
import { inflightRegionBytes } from '../../src/virtio/inflight.js';
import { EchoDevice, TestRing, waitFor } from './helpers.js';
import { useEchoSession } from '../support/echo-session.js';

const GUEST_BASE = 0x40000000;
const MEM_SIZE = 1 << 20;
const DATA = 0x80000;
const QSIZE = 16;

class InflightEchoDevice extends EchoDevice {
  override readonly protocolFeatures = ProtocolFeature.CONFIG | ProtocolFeature.INFLIGHT_SHMFD;
}

describe('vhost-user backend session: INFLIGHT_SHMFD', function () {
  this.timeout(20000);
  const echo = useEchoSession(() => new InflightEchoDevice(2), { memSize: MEM_SIZE, guestBase: GUEST_BASE });

  async function connect(inflight = true): Promise<FrontendSession> {
    const fe = await echo.connect();
    await fe.negotiate(inflight ? { protocolFeatures: FRONTEND_PROTOCOL_FEATURES | ProtocolFeature.INFLIGHT_SHMFD } : {});
    return fe;
  }

  function keep(r: InflightFd): InflightFd {
    echo.toClose.push({ close: () => native.close(r.fd) });
    return r;
  }

  it('GET_INFLIGHT_FD hands out a zeroed, size-sealed memfd sized as libvhost-user sizes it, offset 0', async () => {
    const fe = await connect();
    expect(fe.has(ProtocolFeature.INFLIGHT_SHMFD)).to.equal(true);
    const r = keep(await fe.getInflightFd(2, 128));
    expect(r.mmapSize).to.equal(BigInt(inflightRegionBytes(2, 128)));
    expect(r.mmapOffset).to.equal(0n);
    expect(r.numQueues).to.equal(2);
    expect(r.queueSize).to.equal(128);
    expect(fstatSync(r.fd).size).to.equal(inflightRegionBytes(2, 128));
    expect(native.memfdSeals(r.fd), 'sealed: grow, shrink, seal (as libvhost-user)').to.equal(0x7);
    const m = native.mmap(r.fd, 0, Number(r.mmapSize), false);
    expect(new Uint8Array(m.windows[0]!).every((b) => b === 0)).to.equal(true);
    m.unmap();
  });

  it('refuses malformed GET/SET_INFLIGHT_FD with an error reply and keeps serving', async () => {
    const fe = await connect();
    const good = keep(await fe.getInflightFd(2, QSIZE));
    const small = native.memfdCreate('small', 100);
    echo.toClose.push({ close: () => native.close(small) });
    const refusals: Array<[string, Promise<unknown>]> = [
      ['GET: queue size not a power of 2', fe.getInflightFd(1, 100)],
      ['GET: more queues than the device', fe.getInflightFd(3, QSIZE)],
      ['GET: no queues', fe.getInflightFd(0, QSIZE)],
      ['SET: mmap_size too small', fe.setInflightFd({ ...good, mmapSize: 64n })],
      ['SET: past the end of the file', fe.setInflightFd({ ...good, fd: small })],
      ['SET: offset not page-aligned', fe.setInflightFd({ ...good, mmapOffset: 8n })],
      ['SET: queue size not a power of 2', fe.setInflightFd({ ...good, queueSize: 12 })],
      ['SET: more queues than the device', fe.setInflightFd({ ...good, numQueues: 3 })],
      ['SET: no fd', fe.request(FrontendReq.SET_INFLIGHT_FD, encodeInflight(good), [], 'ack').then((m) => {
        if (m!.payload[0] === 0) throw new Error('acked');
        throw new ProtocolError('EIO', 'refused');
      })],
    ];
    for (const [what, p] of refusals) {
      let err: unknown = null;
      await p.catch((e) => (err = e));
      expect(err, what).to.be.instanceOf(ProtocolError);
    }
    await fe.setInflightFd(good); // the right one is accepted afterwards
    expect(echo.sessions[0]!.isClosing).to.equal(false);
  });

  it('SET_INFLIGHT_FD is refused without the feature negotiated', async () => {
    const fe = await connect(false);
    expect(fe.has(ProtocolFeature.INFLIGHT_SHMFD)).to.equal(false);
    const fd = native.memfdCreate('region', inflightRegionBytes(1, QSIZE));
    echo.toClose.push({ close: () => native.close(fd) });
    const region: InflightFd = { fd, mmapSize: BigInt(inflightRegionBytes(1, QSIZE)), mmapOffset: 0n, numQueues: 1, queueSize: QSIZE };
    let err: unknown = null;
    await fe.setInflightFd(region).catch((e) => (err = e));
    expect(err, 'without INFLIGHT_SHMFD').to.be.instanceOf(ProtocolError);
  });

  it('a region carried to the next connection: the request the first backend session took is served again, once', async () => {
    const features = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX;
    const up = async (fe: FrontendSession, region: InflightFd, ring: TestRing, base: number): Promise<void> => {
      await fe.setInflightFd(region);
      await fe.setFeatures(features);
      await fe.addMemRegion(echo.mem.region);
      await ring.setup(fe, base);
      await fe.enableVring(0, true);
    };
    const fe1 = await connect();
    const region = keep(await fe1.getInflightFd(1, QSIZE));
    const ring = new TestRing(echo.mem, 0, 0, QSIZE, { eventIdx: true });
    echo.toClose.push(ring);
    await up(fe1, region, ring, 0);
    expect(Buffer.from(await ring.echo(Uint8Array.of(1, 2, 3, 4), DATA, DATA + 0x1000, 1))).to.deep.equal(Buffer.from([1, 2, 3, 4]));
    echo.device.hold = true;
    ring.submit(Uint8Array.of(9, 8, 7, 6), DATA + 0x2000, DATA + 0x3000, 2);
    await waitFor(() => echo.device.held.length === 1, 5000, 'the device to take the request');
    // The backend side of the connection goes away without completing it (as a killed
    // backend would: the held chain is simply dropped).
    echo.device.held.length = 0;
    echo.device.hold = false;
    fe1.close();
    await waitFor(() => echo.sessions.length === 1 && echo.sessions[0]!.isClosing, 5000, 'the first session to end');
    await echo.sessions[0]!.closed;

    const fe2 = await connect();
    const base = ring.dq.lastUsedIdx; // what QEMU sends after losing a backend: used.idx
    expect(base).to.equal(1);
    await up(fe2, region, ring, base);
    const done = await ring.waitCompletions(1);
    expect(done.map((d) => d.token)).to.deep.equal([2]);
    expect(Buffer.from(echo.mem.bytes.subarray(DATA + 0x3000, DATA + 0x3004))).to.deep.equal(Buffer.from([9, 8, 7, 6]));
    // And the ring goes on after it.
    expect(Buffer.from(await ring.echo(Uint8Array.of(5, 5), DATA + 0x4000, DATA + 0x5000, 3))).to.deep.equal(Buffer.from([5, 5]));
    expect(ring.dq.broken).to.equal(false);
    let err: unknown = null;
    await fe2.setInflightFd(region).catch((e) => (err = e));
    expect(err, 'SET_INFLIGHT_FD while the ring runs').to.be.instanceOf(ProtocolError);
  });
});
