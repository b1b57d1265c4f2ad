// Random well-framed message sequences thrown at a live backend session: every message
// gets its reply, nothing escapes the event loop, no fd leaks, and afterwards a normal
// frontend can still bring a ring up and get a request served.
import { expect } from 'chai';
import fc from 'fast-check';
import { native } from '../../src/native/index.js';
import { FrontendSession } from '../../src/vhost/frontend-session.js';
import {
  encodeConfig,
  encodeMemRegionMsg,
  encodeMemTable,
  encodeU64,
  encodeVringAddr,
  encodeVringFile,
  encodeVringState,
} from '../../src/vhost/codec.js';
import { FrontendReq, REQUESTS_WITH_REPLY } from '../../src/vhost/protocol.js';

const isNatural = (r: number): boolean => REQUESTS_WITH_REPLY.has(r);
import { VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX } from '../../src/virtio/features.js';
import { EchoDevice, FrontendMemory, TestRing, fdCount } from './helpers.js';
import { EchoServer } from '../support/echo-session.js';

const GUEST = 0x40000000;
const MEM = 1 << 20;

describe('vhost-user backend session under random messages', function () {
  this.timeout(120000);
  let echo: EchoServer<EchoDevice>;
  let mem: FrontendMemory;
  const uncaught: unknown[] = [];
  const onUncaught = (e: unknown): void => {
    uncaught.push(e);
  };

  before(() => {
    echo = new EchoServer(new EchoDevice(2), 'fuzz.sock');
    mem = new FrontendMemory(MEM, GUEST);
    process.on('uncaughtException', onUncaught);
  });

  after(async () => {
    process.off('uncaughtException', onUncaught);
    await echo.close();
    mem.close();
  });

  it('answers every message and stays usable', async () => {
    const idx = fc.oneof(fc.constantFrom(0, 1), fc.integer({ min: 0, max: 300 }));
    const addrIn = fc.oneof(fc.integer({ min: 0, max: MEM - 1 }).map((o) => mem.userAddr + o), fc.nat());
    const state = fc.record({ index: idx, num: fc.oneof(fc.constantFrom(0, 1, 16, 3, 256), fc.nat()) }).map(encodeVringState);
    const u64 = fc.oneof(fc.constantFrom(0n, 0xffn, 0x1_4000_0000n, 0x1_6000_0000n), fc.bigInt({ min: 0n, max: (1n << 64n) - 1n })).map(encodeU64);
    const file = fc.record({ index: idx, noFd: fc.boolean() }).map(encodeVringFile);
    const addr = fc
      .record({ index: idx, flags: fc.nat(1), desc: addrIn, used: addrIn, avail: addrIn })
      .map((a) => encodeVringAddr({ ...a, log: 0n }));
    const region = fc.record({
      guestAddr: fc.oneof(fc.constant(GUEST), fc.nat()),
      size: fc.oneof(fc.constantFrom(MEM, 4096, 0), fc.nat()),
      userAddr: fc.oneof(fc.constant(mem.userAddr), fc.nat()),
      mmapOffset: fc.oneof(fc.constant(0), fc.nat()),
    });
    const table = fc.array(region, { maxLength: 3 }).map(encodeMemTable);
    const config = fc.record({ offset: fc.nat(300), flags: fc.nat(2), data: fc.uint8Array({ maxLength: 64 }) }).map(encodeConfig);
    const empty = fc.constant(new Uint8Array(0));
    const R = FrontendReq;
    const matched: Array<[number[], fc.Arbitrary<Uint8Array>]> = [
      [[R.SET_VRING_NUM, R.SET_VRING_BASE, R.SET_VRING_ENABLE, R.GET_VRING_BASE], state],
      [[R.SET_VRING_KICK, R.SET_VRING_CALL, R.SET_VRING_ERR], file],
      [[R.SET_VRING_ADDR], addr],
      [[R.SET_MEM_TABLE], table],
      [[R.ADD_MEM_REG, R.REM_MEM_REG], region.map(encodeMemRegionMsg)],
      [[R.GET_CONFIG, R.SET_CONFIG], config],
      [[R.SET_FEATURES, R.SET_PROTOCOL_FEATURES], u64],
      [[R.GET_FEATURES, R.GET_PROTOCOL_FEATURES, R.SET_OWNER, R.RESET_OWNER, R.RESET_DEVICE, R.GET_QUEUE_NUM, R.GET_MAX_MEM_SLOTS], empty],
    ];
    const anyPayload = fc.oneof(fc.uint8Array({ maxLength: 300 }), state, u64, file, addr, table, config, empty);
    const request = fc.oneof(fc.constantFrom(...Object.values(FrontendReq).filter((r) => r !== FrontendReq.NONE)), fc.integer({ min: 0, max: 64 }));
    const message = fc.oneof(
      { weight: 3, arbitrary: fc.oneof(...matched.map(([reqs, p]) => fc.record({ request: fc.constantFrom(...reqs), payload: p }))) },
      { weight: 1, arbitrary: fc.record({ request, payload: anyPayload }) },
    ).chain((m) => fc.record({ request: fc.constant(m.request), payload: fc.constant(m.payload), nfds: fc.nat(2), memfd: fc.boolean() }));
    // A complete, valid setup of ring 1 over random ring contents (a hostile driver).
    const RING1 = 0x20000;
    const ringSetup = fc.record({ size: fc.constantFrom(1, 2, 8, 64), base: fc.nat(0xffff), junk: fc.uint8Array({ minLength: 2048, maxLength: 2048 }) }).map((r) => {
      const u = mem.userAddr + RING1;
      const m = (request: number, payload: Uint8Array, nfds = 0) => ({ request, payload, nfds, memfd: false, junk: undefined as Uint8Array | undefined });
      return [
        m(R.SET_VRING_NUM, encodeVringState({ index: 1, num: r.size })),
        m(R.SET_VRING_BASE, encodeVringState({ index: 1, num: r.base })),
        { ...m(R.SET_VRING_ADDR, encodeVringAddr({ index: 1, flags: 0, desc: u, avail: u + 1024, used: u + 1536, log: 0n })), junk: r.junk },
        m(R.SET_VRING_KICK, encodeVringFile({ index: 1, noFd: false }), 1),
        m(R.SET_VRING_ENABLE, encodeVringState({ index: 1, num: 1 })),
      ];
    });
    const sequence = fc
      .array(fc.oneof({ weight: 8, arbitrary: message.map((x) => [{ ...x, junk: undefined as Uint8Array | undefined }]) }, { weight: 1, arbitrary: ringSetup }), { maxLength: 12 })
      .map((xs) => xs.flat());

    const stats = { ok: 0, failed: 0, natural: 0, ringStartsDuringFuzz: 0 };
    await fc.assert(
      fc.asyncProperty(sequence, async (msgs) => {
        const baseline = fdCount();
        const fe = await FrontendSession.connect(echo.server.socketPath, { timeoutMs: 5000 });
        let ring: TestRing | null = null;
        try {
          const neg = await fe.negotiate();
          await fe.setFeatures(neg.features & (VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX));
          await fe.addMemRegion(mem.region);
          echo.device.events.splice(0);
          for (const m of msgs) {
            if (m.junk !== undefined) mem.bytes.set(m.junk, RING1);
            const fds: number[] = [];
            for (let i = 0; i < m.nfds; i++) fds.push(m.memfd && i === 0 ? native.dup(mem.fd) : native.eventfd(0));
            try {
              const reply = await fe.request(m.request, m.payload, fds, 'ack');
              expect(reply).to.not.equal(null);
              expect(reply!.request).to.equal(m.request);
              const p = reply!.payload;
              if (p.byteLength === 8 && !isNatural(m.request)) {
                if (new DataView(p.buffer, p.byteOffset).getBigUint64(0, true) === 0n) stats.ok++;
                else stats.failed++;
              } else {
                stats.natural++;
              }
            } finally {
              for (const fd of fds) native.close(fd);
            }
          }
          expect(uncaught).to.deep.equal([]);
          stats.ringStartsDuringFuzz += echo.device.events.splice(0).filter((e) => e.startsWith('start')).length;
          const session = echo.sessions[echo.sessions.length - 1]!;
          expect(session.isClosing).to.equal(false);

          // A normal bring-up over whatever state the messages left.
          await fe.getVringBase(0);
          await fe.getVringBase(1);
          ring = new TestRing(mem, 0, 0, 16, { eventIdx: true }); // zeroes its ring area
          await fe.setFeatures(VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX);
          await fe.setMemTable([mem.region]);
          await ring.setup(fe);
          await fe.enableVring(0, true);
          const data = Uint8Array.from({ length: 100 }, (_, i) => i);
          expect(Array.from(await ring.echo(data, 0x80000, 0x90000))).to.deep.equal(Array.from(data));
        } finally {
          fe.close();
          ring?.close();
        }
        await echo.sessions[echo.sessions.length - 1]!.closed;
        expect(fdCount()).to.equal(baseline);
      }),
      { numRuns: 60 },
    );
    if (process.env.VHOST_FUZZ_STATS) console.log(stats);
    // The generator must reach the interesting paths, not only error replies.
    expect(stats.ok).to.be.greaterThan(20);
    expect(stats.failed).to.be.greaterThan(20);
    expect(stats.natural).to.be.greaterThan(5);
    expect(stats.ringStartsDuringFuzz).to.be.greaterThan(0);
  });
});
