// The backend session driven by our frontend session over a real Unix socket.
import { expect } from 'chai';
import { native } from '../../src/native/index.js';
import { FrontendSession } from '../../src/vhost/frontend-session.js';
import { ProtocolError, decodeU64, encodeMemTable, encodeMessage, encodeU64, encodeVringFile, encodeMemRegionMsg, requestFlags } from '../../src/vhost/codec.js';
import { FrontendReq, ProtocolFeature, VHOST_USER_F_PROTOCOL_FEATURES } from '../../src/vhost/protocol.js';
import { VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC } from '../../src/virtio/features.js';
import { EchoDevice, FrontendMemory, TestRing, fdCount, settledWithin, sleep, waitFor } from './helpers.js';
import { EchoServer, useEchoSession } from '../support/echo-session.js';

const GUEST_BASE = 0x40000000;
const MEM_SIZE = 1 << 20;
const RING0 = 0;
const RING1 = 0x20000;
const DATA = 0x80000;

async function rejectsWith(p: Promise<unknown>, code?: string): Promise<ProtocolError> {
  try {
    await p;
  } catch (err) {
    expect(err).to.be.instanceOf(ProtocolError);
    if (code !== undefined) expect((err as ProtocolError).code).to.equal(code);
    return err as ProtocolError;
  }
  expect.fail('expected a rejection');
}

function pattern(n: number, seed: number): Uint8Array {
  return Uint8Array.from({ length: n }, (_, i) => (i * 31 + seed) & 0xff);
}

describe('vhost-user backend session (driven by the frontend session)', function () {
  this.timeout(20000);
  const echo = useEchoSession(() => new EchoDevice(2), { memSize: MEM_SIZE, guestBase: GUEST_BASE });

  /** Negotiation + features + memory, as QEMU does before starting rings. */
  async function bringUp(fe: FrontendSession, features = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | VIRTIO_RING_F_INDIRECT_DESC) {
    const neg = await fe.negotiate();
    await fe.setFeatures(neg.features & features);
    await fe.addMemRegion(echo.mem.region);
    return neg;
  }

  function ring(index: number, offset: number, size = 16, opts: { eventIdx?: boolean; indirect?: boolean } = {}): TestRing {
    const r = new TestRing(echo.mem, index, offset, size, { eventIdx: true, ...opts });
    echo.toClose.push(r);
    return r;
  }

  it('negotiates like QEMU 7.2 and answers GET_CONFIG', async () => {
    const fe = await echo.connect();
    const neg = await fe.negotiate();
    expect(neg.features & VHOST_USER_F_PROTOCOL_FEATURES).to.equal(VHOST_USER_F_PROTOCOL_FEATURES);
    expect(neg.features & VIRTIO_F_VERSION_1).to.equal(VIRTIO_F_VERSION_1);
    for (const f of [ProtocolFeature.MQ, ProtocolFeature.REPLY_ACK, ProtocolFeature.CONFIG, ProtocolFeature.CONFIGURE_MEM_SLOTS]) {
      expect(neg.protocolFeatures & f).to.equal(f);
    }
    expect(neg.queueNum).to.equal(2);
    expect(neg.maxMemSlots).to.equal(32);
    expect(Array.from(await fe.getConfig(0, 24))).to.deep.equal(Array.from(echo.device.config));
    expect(Array.from(await fe.getConfig(4, 8))).to.deep.equal(Array.from(echo.device.config.subarray(4, 12)));
    // Past the device's config: zero-filled.
    expect(Array.from(await fe.getConfig(20, 8))).to.deep.equal([0xb4, 0xb5, 0xb6, 0xb7, 0, 0, 0, 0]);
    await fe.setConfig(0, Uint8Array.of(1, 2));
    expect(echo.device.config[1]).to.equal(2);
    await rejectsWith(fe.setConfig(23, Uint8Array.of(1, 2)), 'EIO');
    await fe.setFeatures(VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX);
    expect(echo.device.acked).to.equal(VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX);
    expect(echo.sessions[0]!.ackedFeatures & VHOST_USER_F_PROTOCOL_FEATURES).to.equal(VHOST_USER_F_PROTOCOL_FEATURES);
    await rejectsWith(fe.setFeatures(1n << 40n), 'EIO');
  });

  it('serves requests through the rings once enabled (direct and indirect descriptors)', async () => {
    const fe = await echo.connect();
    await bringUp(fe);
    const r0 = ring(0, RING0, 16, { indirect: true });
    await r0.setup(fe);
    expect(echo.sessions[0]!.startedQueues).to.deep.equal([]); // protocol features: disabled until enabled
    await fe.enableVring(0, true);
    expect(echo.sessions[0]!.startedQueues).to.deep.equal([0]);
    expect(echo.device.events).to.include('start 0');

    const data = pattern(1000, 7);
    expect(Array.from(await r0.echo(data, DATA, DATA + 0x10000))).to.deep.equal(Array.from(data));
    expect(native.eventfdRead(r0.callFd)).to.be.greaterThan(0);

    r0.submit(pattern(300, 9), DATA, DATA + 0x10000, 2, true);
    const done = await r0.waitCompletions(1);
    expect(done[0]).to.include({ token: 2, len: 300 });
    expect(Array.from(echo.mem.bytes.subarray(DATA + 0x10000, DATA + 0x10000 + 300))).to.deep.equal(Array.from(pattern(300, 9)));

    // A burst: everything available is served.
    for (let i = 0; i < 10; i++) r0.submit(pattern(64, i), DATA + i * 128, DATA + 0x10000 + i * 128, 10 + i);
    const burst = await r0.waitCompletions(10);
    expect(burst.map((c) => c.token).sort((a, b) => a! - b!)).to.deep.equal([10, 11, 12, 13, 14, 15, 16, 17, 18, 19]);

    // Second queue, independently.
    const r1 = ring(1, RING1, 8);
    await r1.setup(fe);
    await fe.enableVring(1, true);
    expect(Array.from(await r1.echo(pattern(16, 1), DATA, DATA + 0x100))).to.deep.equal(Array.from(pattern(16, 1)));
    expect(echo.sessions[0]!.startedQueues).to.deep.equal([0, 1]);
  });

  it('GET_VRING_BASE waits for in-flight requests, returns the next avail index, and the ring restarts', async () => {
    const fe = await echo.connect();
    await bringUp(fe);
    const r0 = ring(0, RING0);
    await r0.setup(fe);
    await fe.enableVring(0, true);
    await r0.echo(pattern(10, 1), DATA, DATA + 0x1000);

    echo.device.hold = true;
    r0.submit(pattern(20, 2), DATA, DATA + 0x1000, 5);
    r0.submit(pattern(20, 3), DATA + 0x100, DATA + 0x1100, 6);
    await waitFor(() => echo.device.held.length === 2, 2000, 'held requests');
    await fe.enableVring(0, false);
    const base = fe.getVringBase(0);
    expect(await settledWithin(base, 100)).to.equal('pending');
    expect(echo.device.events).to.include('stop 0');
    echo.device.hold = false;
    echo.device.release();
    expect(await base).to.equal(3);
    expect(echo.sessions[0]!.startedQueues).to.deep.equal([]);
    const done = await r0.waitCompletions(2);
    expect(done.map((c) => c.token)).to.deep.equal([5, 6]);

    // Restart from the returned base (SeaBIOS → Linux does this on the same connection).
    // (The backend closed its copy of the kick fd; ours is sent again.)
    await r0.setup(fe, 3);
    await fe.enableVring(0, true);
    expect(Array.from(await r0.echo(pattern(33, 4), DATA, DATA + 0x1000, 9))).to.deep.equal(Array.from(pattern(33, 4)));
    expect(await fe.getVringBase(0)).to.equal(4);
  });

  it('without F_PROTOCOL_FEATURES acked, a ring starts as soon as it has a kick fd', async () => {
    const fe = await echo.connect();
    const neg = await fe.negotiate();
    // SET_FEATURES without bit 30 (setFeatures() would add it, as QEMU does).
    await fe.request(FrontendReq.SET_FEATURES, encodeU64(neg.features & VIRTIO_F_VERSION_1), [], 'ack');
    await fe.addMemRegion(echo.mem.region);
    const r0 = ring(0, RING0, 16, { eventIdx: false });
    await r0.setup(fe);
    expect(echo.sessions[0]!.startedQueues).to.deep.equal([0]);
    expect(Array.from(await r0.echo(pattern(40, 5), DATA, DATA + 0x1000))).to.deep.equal(Array.from(pattern(40, 5)));
  });

  it('works with SET_MEM_TABLE when CONFIGURE_MEM_SLOTS is not negotiated, and with REM_MEM_REG', async () => {
    const fe = await echo.connect();
    const neg = await fe.negotiate({ protocolFeatures: ProtocolFeature.REPLY_ACK | ProtocolFeature.MQ | ProtocolFeature.CONFIG });
    expect(neg.protocolFeatures & ProtocolFeature.CONFIGURE_MEM_SLOTS).to.equal(0n);
    await fe.setFeatures(VIRTIO_F_VERSION_1);
    await fe.addMemRegion(echo.mem.region); // → SET_MEM_TABLE
    expect(echo.sessions[0]!.guestMemory.regionCount).to.equal(1);
    const r0 = ring(0, RING0, 16, { eventIdx: false });
    await r0.setup(fe);
    await fe.enableVring(0, true);
    expect(Array.from(await r0.echo(pattern(50, 6), DATA, DATA + 0x1000))).to.deep.equal(Array.from(pattern(50, 6)));
    // An unchanged table (same layout, same file) keeps the mappings of the running ring.
    const gm = echo.sessions[0]!.guestMemory;
    await fe.setMemTable([echo.mem.region]);
    expect(echo.sessions[0]!.guestMemory).to.equal(gm);
    expect(Array.from(await r0.echo(pattern(51, 6), DATA, DATA + 0x1000))).to.deep.equal(Array.from(pattern(51, 6)));
    // Same layout over another file: remapped, and the running ring follows.
    const other = new FrontendMemory(MEM_SIZE, GUEST_BASE);
    echo.toClose.push(other);
    await fe.setMemTable([{ ...other.region, userAddr: echo.mem.userAddr }]);
    expect(echo.sessions[0]!.guestMemory).to.not.equal(gm);
    expect(echo.sessions[0]!.startedQueues).to.deep.equal([0]);
    await fe.setMemTable([echo.mem.region]);
    expect(Array.from(await r0.echo(pattern(52, 6), DATA, DATA + 0x1000))).to.deep.equal(Array.from(pattern(52, 6)));
    await fe.enableVring(0, false);
    await fe.getVringBase(0);
    await fe.removeMemRegion(echo.mem.region); // → SET_MEM_TABLE with no regions
    expect(echo.sessions[0]!.guestMemory.regionCount).to.equal(0);

    const fe2Mem = new FrontendMemory(1 << 16, 0x100000000);
    echo.toClose.push(fe2Mem);
    await fe.setMemTable([echo.mem.region, fe2Mem.region]);
    expect(echo.sessions[0]!.guestMemory.regionCount).to.equal(2);
  });

  it('answers bad messages with errors and keeps working', async () => {
    const fe = await echo.connect();
    await bringUp(fe);
    const before = echo.device.events.length;
    // Queue index out of range, on every per-queue request.
    await rejectsWith(fe.setVringNum(2, 16), 'EIO');
    await rejectsWith(fe.setVringBase(200, 0), 'EIO');
    await rejectsWith(fe.setVringAddr(5, { desc: 0, avail: 0, used: 0 }), 'EIO');
    await rejectsWith(fe.enableVring(9, true), 'EIO');
    await rejectsWith(fe.getVringBase(7), 'EIO'); // natural reply: answered empty
    // Sizes that are not a power of two or too big.
    await rejectsWith(fe.setVringNum(0, 3), 'EIO');
    await rejectsWith(fe.setVringNum(0, 0), 'EIO');
    await rejectsWith(fe.setVringNum(0, 65536), 'EIO');
    // Ring addresses outside guest memory.
    await fe.setVringNum(0, 16);
    await rejectsWith(fe.setVringAddr(0, { desc: 0x1000, avail: 0x2000, used: 0x3000 }), 'EIO');
    // Missing fds.
    const kick = await fe.request(FrontendReq.SET_VRING_KICK, encodeVringFile({ index: 0, noFd: false }), [], 'ack');
    expect(decodeU64(kick!.payload)).to.not.equal(0n);
    const add = await fe.request(FrontendReq.ADD_MEM_REG, encodeMemRegionMsg({ guestAddr: 0, size: 4096, userAddr: 0, mmapOffset: 0 }), [], 'ack');
    expect(decodeU64(add!.payload)).to.not.equal(0n);
    const table = await fe.request(FrontendReq.SET_MEM_TABLE, encodeMemTable([{ guestAddr: 0, size: 4096, userAddr: 0, mmapOffset: 0 }]), [], 'ack');
    expect(decodeU64(table!.payload)).to.not.equal(0n);
    // An fd that cannot be mapped (an eventfd), and an overlapping region.
    const efd = native.eventfd(0);
    try {
      const bad = await fe.request(FrontendReq.ADD_MEM_REG, encodeMemRegionMsg({ guestAddr: 0, size: 4096, userAddr: 0x1000, mmapOffset: 0 }), [efd], 'ack');
      expect(decodeU64(bad!.payload)).to.not.equal(0n);
    } finally {
      native.close(efd);
    }
    await rejectsWith(fe.addMemRegion({ ...echo.mem.region, userAddr: echo.mem.userAddr + 0x1000 }), 'EIO');
    await rejectsWith(fe.addMemRegion({ ...echo.mem.region, mmapOffset: 100 }), 'EIO');
    await rejectsWith(fe.removeMemRegion({ guestAddr: 1, size: 2, userAddr: 3, mmapOffset: 0 }), 'ENOENT');
    // Payloads of the wrong size.
    const short = await fe.request(FrontendReq.SET_VRING_NUM, new Uint8Array(4), [], 'ack');
    expect(decodeU64(short!.payload)).to.not.equal(0n);
    const long = await fe.request(FrontendReq.SET_OWNER, new Uint8Array(8), [], 'ack');
    expect(decodeU64(long!.payload)).to.not.equal(0n);
    // Unknown and unsupported requests with NEED_REPLY.
    const unknown = await fe.request(99, encodeU64(1n), [], 'ack');
    expect(unknown!.request).to.equal(99);
    expect(decodeU64(unknown!.payload)).to.not.equal(0n);
    const log = await fe.request(FrontendReq.SET_LOG_FD, undefined, [], 'ack');
    expect(decodeU64(log!.payload)).to.not.equal(0n);
    const status = await fe.request(FrontendReq.GET_STATUS);
    expect(status!.payload.byteLength).to.equal(0);
    // Unknown without NEED_REPLY: logged and ignored.
    await fe.request(98, undefined, [], 'none');
    expect(echo.device.events.length).to.equal(before);

    // Still fully usable.
    const r0 = ring(0, RING0);
    await r0.setup(fe);
    await fe.enableVring(0, true);
    expect(Array.from(await r0.echo(pattern(77, 8), DATA, DATA + 0x1000))).to.deep.equal(Array.from(pattern(77, 8)));
    expect(echo.server.session).to.equal(echo.sessions[0]);
  });

  it('closes received fds of failed messages (no fd leak)', async () => {
    const fe = await echo.connect();
    await bringUp(fe);
    const efd = native.eventfd(0);
    const baseline = fdCount();
    for (let i = 0; i < 20; i++) {
      await fe.request(FrontendReq.SET_VRING_CALL, encodeVringFile({ index: 9, noFd: false }), [efd], 'ack');
      await fe.request(FrontendReq.SET_OWNER, undefined, [efd, efd], 'ack');
      await fe.request(99, undefined, [efd], 'ack');
    }
    expect(fdCount()).to.equal(baseline);
    native.close(efd);
  });

  it('tears down on disconnect and serves the next frontend from a clean state', async () => {
    const baseline = fdCount();
    const fe = await echo.connect();
    await bringUp(fe);
    const r0 = ring(0, RING0);
    await r0.setup(fe);
    await fe.enableVring(0, true);
    await r0.echo(pattern(10, 1), DATA, DATA + 0x1000);
    echo.device.hold = true;
    r0.submit(pattern(10, 2), DATA, DATA + 0x1000, 2);
    await waitFor(() => echo.device.held.length === 1);
    const first = echo.sessions[0]!;
    fe.close();
    await sleep(50);
    expect(echo.server.session).to.equal(first); // still stopping: the request is in flight
    echo.device.release();
    await first.closed;
    expect(echo.device.resets).to.equal(1);
    expect(first.guestMemory.regionCount).to.equal(0);
    echo.device.hold = false;

    const fe2 = await echo.connect();
    await waitFor(() => echo.sessions.length === 2, 2000, 'second session');
    const s2 = echo.sessions[1]!;
    expect(s2.ackedFeatures).to.equal(0n);
    expect(s2.guestMemory.regionCount).to.equal(0);
    await bringUp(fe2);
    const r2 = ring(0, RING1);
    await r2.setup(fe2);
    await fe2.enableVring(0, true);
    expect(Array.from(await r2.echo(pattern(12, 3), DATA, DATA + 0x1000))).to.deep.equal(Array.from(pattern(12, 3)));
    fe2.close();
    await s2.closed;
    for (const c of echo.toClose.splice(0)) c.close();
    expect(fdCount()).to.equal(baseline);
  });

  it('refuses a second frontend while one is connected', async () => {
    const fe = await echo.connect();
    await fe.getFeatures();
    const fe2 = await echo.connect();
    await rejectsWith(fe2.getFeatures(), 'ECONNRESET');
    expect(await fe.getQueueNum()).to.equal(2);
    expect(echo.sessions).to.have.length(1);
  });

  it('server.close() completes in-flight requests, closes the session and removes the socket', async () => {
    const { existsSync } = await import('node:fs');
    const fe = await echo.connect();
    await bringUp(fe);
    const r0 = ring(0, RING0);
    await r0.setup(fe);
    await fe.enableVring(0, true);
    echo.device.hold = true;
    r0.submit(pattern(10, 2), DATA, DATA + 0x1000, 2);
    await waitFor(() => echo.device.held.length === 1);
    const closing = echo.server.close();
    expect(await settledWithin(closing, 50)).to.equal('pending');
    expect(existsSync(echo.path)).to.equal(false);
    echo.device.release();
    await closing;
    expect(echo.device.resets).to.equal(1);
    expect((await r0.waitCompletions(1))[0]!.token).to.equal(2);
    await fe.closed;
  });

  it('a frontend sending garbage is disconnected; the server serves the next one', async () => {
    const fd = native.unixConnect(echo.path);
    native.sendMsg(fd, Uint8Array.of(1, 0, 0, 0, 0x99, 0, 0, 0, 0, 0, 0, 0), 0, 12, []); // version 0x99 & 3 = 1 → ok header
    native.sendMsg(fd, Uint8Array.of(1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0), 0, 12, []); // version 2: fatal
    await waitFor(() => echo.sessions.length === 1 && echo.sessions[0]!.isClosing, 2000, 'session to close');
    await echo.sessions[0]!.closed;
    native.close(fd);
    const fe = await echo.connect();
    expect(await fe.getQueueNum()).to.equal(2);
  });

  it('handles a payload size above the limit by disconnecting', async () => {
    const fd = native.unixConnect(echo.path);
    native.sendMsg(fd, Uint8Array.of(5, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0), 0, 12, []);
    await waitFor(() => echo.sessions.length === 1, 2000);
    await echo.sessions[0]!.closed;
    native.close(fd);
  });

  it('does not start a ring whose state is incomplete and replaces kick/call fds', async () => {
    const fe = await echo.connect();
    await bringUp(fe);
    const r0 = ring(0, RING0);
    await fe.setVringNum(0, 16);
    await fe.enableVring(0, true);
    expect(echo.sessions[0]!.startedQueues).to.deep.equal([]);
    await r0.setup(fe);
    expect(echo.sessions[0]!.startedQueues).to.deep.equal([0]);
    // New call fd while running: completions signal the new one.
    const call2 = native.eventfd(0);
    try {
      await fe.setVringCall(0, call2);
      native.eventfdRead(r0.callFd);
      await r0.echo(pattern(8, 1), DATA, DATA + 0x1000);
      expect(native.eventfdRead(call2)).to.be.greaterThan(0);
      expect(native.eventfdRead(r0.callFd)).to.equal(0);
    } finally {
      await fe.setVringCall(0, r0.callFd);
      native.close(call2);
    }
    // New kick fd while running.
    const kick2 = native.eventfd(0);
    try {
      await fe.setVringKick(0, kick2);
      r0.dq.kickFd = kick2;
      await r0.echo(pattern(8, 2), DATA, DATA + 0x1000);
    } finally {
      r0.dq.kickFd = r0.kickFd;
      await fe.enableVring(0, false);
      await fe.getVringBase(0);
      native.close(kick2);
    }
  });
});

/** A one-queue echo server on `socketName` and a raw socket connected to it (no frontend session), both closed after `fn`. */
async function withRawFrontend(socketName: string, fn: (fd: number, echo: EchoServer<EchoDevice>) => Promise<void>): Promise<void> {
  const echo = new EchoServer(new EchoDevice(1), socketName);
  const fd = native.unixConnect(echo.server.socketPath);
  try {
    await fn(fd, echo);
  } finally {
    native.close(fd);
    await echo.close();
  }
}

describe('vhost-user backend session back-pressure', function () {
  this.timeout(20000);

  it('stops reading from a frontend that does not read its replies, and loses nothing', async () => {
    await withRawFrontend('bp.sock', async (fd, { sessions }) => {
      const msg = encodeMessage(FrontendReq.GET_FEATURES, requestFlags(false));
      let sent = 0;
      let maxQueued = 0;
      let maxReplies = 0;
      // Send until our socket buffer is full and stays full (the backend stopped reading).
      for (let stalls = 0; stalls < 20; ) {
        const n = native.sendMsg(fd, msg, 0, msg.byteLength, []);
        if (n === msg.byteLength) {
          sent++;
          continue;
        }
        expect(n).to.equal(-1); // 12-byte messages are never split here
        stalls++;
        await sleep(5);
        const s = sessions[0];
        if (s !== undefined) {
          maxQueued = Math.max(maxQueued, s.queuedMessages);
          maxReplies = Math.max(maxReplies, s.queuedReplies);
        }
      }
      expect(sent).to.be.greaterThan(300);
      expect(maxQueued).to.be.at.most(128);
      expect(maxReplies).to.be.at.most(17);
      expect(maxReplies).to.be.greaterThan(0); // the writer did hit EAGAIN
      // Now read everything: one 20-byte reply per request, in order.
      const buf = new Uint8Array(65536);
      let got = 0;
      const deadline = Date.now() + 10000;
      while (got < sent * 20 && Date.now() < deadline) {
        const r = native.recvMsg(fd, buf, 0, buf.byteLength, 0);
        if (r === null) {
          await sleep(1);
          continue;
        }
        expect(r.bytes).to.be.greaterThan(0);
        got += r.bytes;
        // Let unsent requests (still queued in our loop's view) go out.
      }
      expect(got).to.equal(sent * 20);
    });
  });
});

describe('vhost-user server close with a stalled frontend', function () {
  this.timeout(20000);

  it('completes even when the frontend never reads its replies', async () => {
    await withRawFrontend('stall.sock', async (fd, { server, sessions }) => {
      const msg = encodeMessage(FrontendReq.GET_QUEUE_NUM, requestFlags(false));
      for (let stalls = 0; stalls < 10; ) {
        if (native.sendMsg(fd, msg, 0, msg.byteLength, []) !== msg.byteLength) {
          stalls++;
          await sleep(5);
        }
      }
      await waitFor(() => (sessions[0]?.queuedReplies ?? 0) > 0, 2000, 'replies to back up');
      const closing = server.close();
      expect(await settledWithin(closing, 300)).to.equal('settled');
    });
  });
});
