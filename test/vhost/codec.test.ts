import { expect } from 'chai';
import fc from 'fast-check';
import {
  ProtocolError,
  REPLY_FLAGS,
  decodeConfig,
  decodeEmpty,
  decodeHeader,
  decodeInflight,
  decodeLog,
  decodeMemRegionMsg,
  decodeMemTable,
  decodeU64,
  decodeVringAddr,
  decodeVringFile,
  decodeVringState,
  encodeConfig,
  encodeHeader,
  encodeInflight,
  encodeLog,
  encodeMemRegionMsg,
  encodeMemTable,
  encodeMessage,
  encodeU64,
  encodeVringAddr,
  encodeVringFile,
  encodeVringState,
  isReply,
  needsReply,
  requestFlags,
  type MemRegion,
} from '../../src/vhost/codec.js';
import { FrontendReq, HEADER_SIZE, requestName } from '../../src/vhost/protocol.js';
import { MessageReader, MessageWriter } from '../../src/vhost/stream.js';
import type { RecvResult } from '../../src/native/index.js';

const u32 = fc.integer({ min: 0, max: 0xffffffff });
const addr = fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER });
const u64 = fc.bigInt({ min: 0n, max: (1n << 64n) - 1n });
const region: fc.Arbitrary<MemRegion> = fc.record({ guestAddr: addr, size: addr, userAddr: addr, mmapOffset: addr });

function hex(s: string): Uint8Array {
  return Uint8Array.from(Buffer.from(s.replace(/\s+/g, ''), 'hex'));
}

function expectProtocolError(fn: () => unknown, code?: string): void {
  try {
    fn();
  } catch (err) {
    expect(err).to.be.instanceOf(ProtocolError);
    if (code !== undefined) expect((err as ProtocolError).code).to.equal(code);
    expect((err as ProtocolError).errno).to.be.greaterThan(0);
    return;
  }
  expect.fail('expected a ProtocolError');
}

describe('vhost-user codec', () => {
  describe('header', () => {
    it('is u32 request, u32 flags, u32 size, little endian', () => {
      const b = encodeHeader({ request: FrontendReq.SET_VRING_ADDR, flags: requestFlags(true), size: 40 });
      expect(Buffer.from(b).toString('hex')).to.equal('09000000' + '09000000' + '28000000');
      expect(decodeHeader(b)).to.deep.equal({ request: 9, flags: 9, size: 40 });
    });

    it('encodes a message as header followed by payload', () => {
      const m = encodeMessage(FrontendReq.SET_FEATURES, requestFlags(false), encodeU64(0x140000000n));
      expect(m.byteLength).to.equal(HEADER_SIZE + 8);
      expect(Buffer.from(m).toString('hex')).to.equal('02000000010000000800000000000040' + '01000000');
    });

    it('knows request and reply flags', () => {
      expect(REPLY_FLAGS).to.equal(0x5);
      expect(requestFlags(false)).to.equal(0x1);
      expect(requestFlags(true)).to.equal(0x9);
      expect(isReply(REPLY_FLAGS)).to.equal(true);
      expect(needsReply(requestFlags(true))).to.equal(true);
      expect(needsReply(requestFlags(false))).to.equal(false);
    });

    it('rejects versions other than 1 and short headers', () => {
      expectProtocolError(() => decodeHeader(encodeHeader({ request: 1, flags: 0, size: 0 })), 'EPROTO');
      expectProtocolError(() => decodeHeader(encodeHeader({ request: 1, flags: 2, size: 0 })), 'EPROTO');
      expectProtocolError(() => decodeHeader(new Uint8Array(11)), 'EBADMSG');
    });

    it('round-trips any header with version 1', () => {
      fc.assert(
        fc.property(u32, u32, u32, (request, flags, size) => {
          const f = ((flags & ~3) | 1) >>> 0;
          expect(decodeHeader(encodeHeader({ request, flags: f, size }))).to.deep.equal({ request, flags: f, size });
        }),
      );
    });

    it('names requests', () => {
      expect(requestName(FrontendReq.GET_VRING_BASE)).to.equal('GET_VRING_BASE');
      expect(requestName(999)).to.equal('UNKNOWN(999)');
    });
  });

  describe('payloads', () => {
    it('u64 round trip', () => {
      fc.assert(
        fc.property(u64, (v) => {
          expect(decodeU64(encodeU64(v))).to.equal(v);
        }),
      );
    });

    it('vring state round trip', () => {
      fc.assert(
        fc.property(u32, u32, (index, num) => {
          expect(decodeVringState(encodeVringState({ index, num }))).to.deep.equal({ index, num });
        }),
      );
    });

    it('vring address: index, flags, desc, used, avail, log on the wire', () => {
      const b = encodeVringAddr({ index: 1, flags: 0, desc: 0x1000, used: 0x3000, avail: 0x2000, log: 0n });
      expect(b.byteLength).to.equal(40);
      expect(Buffer.from(b).toString('hex')).to.equal(
        '01000000' + '00000000' + '0010000000000000' + '0030000000000000' + '0020000000000000' + '0000000000000000',
      );
      fc.assert(
        fc.property(u32, u32, addr, addr, addr, u64, (index, flags, desc, used, avail, log) => {
          const a = { index, flags, desc, used, avail, log };
          expect(decodeVringAddr(encodeVringAddr(a))).to.deep.equal(a);
        }),
      );
    });

    it('rejects ring addresses that do not fit in a JS number', () => {
      const b = encodeVringAddr({ index: 0, flags: 0, desc: 0, used: 0, avail: 0, log: 0n });
      new DataView(b.buffer).setBigUint64(8, 1n << 60n, true);
      expectProtocolError(() => decodeVringAddr(b), 'ERANGE');
    });

    it('memory table: nregions, padding, regions {guest, size, user, mmap_offset}', () => {
      const r = { guestAddr: 0, size: 0x100000, userAddr: 0x7f0000000000, mmapOffset: 0 };
      const b = encodeMemTable([r]);
      expect(Buffer.from(b).toString('hex')).to.equal(
        '01000000' + '00000000' + '0000000000000000' + '0000100000000000' + '00000000007f0000' + '0000000000000000',
      );
      fc.assert(
        fc.property(fc.array(region, { maxLength: 8 }), (rs) => {
          expect(decodeMemTable(encodeMemTable(rs))).to.deep.equal(rs);
        }),
      );
    });

    it('memory table: accepts the fixed 8-region struct, rejects other sizes and > 8 regions', () => {
      const r = { guestAddr: 0x1000, size: 0x2000, userAddr: 0x3000, mmapOffset: 0 };
      const full = new Uint8Array(8 + 8 * 32);
      full.set(encodeMemTable([r]));
      expect(decodeMemTable(full)).to.deep.equal([r]);
      const short = encodeMemTable([r, r]).subarray(0, 8 + 32 + 16);
      expectProtocolError(() => decodeMemTable(short), 'EBADMSG');
      const long = new Uint8Array(8 + 32 + 8);
      long.set(encodeMemTable([r]));
      expectProtocolError(() => decodeMemTable(long), 'EBADMSG');
      const nine = new Uint8Array(8 + 9 * 32);
      new DataView(nine.buffer).setUint32(0, 9, true);
      expectProtocolError(() => decodeMemTable(nine), 'EBADMSG');
      expectProtocolError(() => decodeMemTable(new Uint8Array(4)), 'EBADMSG');
    });

    it('single memory region: u64 padding then the region', () => {
      const r = { guestAddr: 0x100000000, size: 0x1000, userAddr: 0x7f0000001000, mmapOffset: 0x2000 };
      const b = encodeMemRegionMsg(r);
      expect(b.byteLength).to.equal(40);
      expect(Buffer.from(b.subarray(0, 8)).toString('hex')).to.equal('0000000000000000');
      expect(decodeMemRegionMsg(b)).to.deep.equal(r);
      fc.assert(
        fc.property(region, (x) => {
          expect(decodeMemRegionMsg(encodeMemRegionMsg(x))).to.deep.equal(x);
        }),
      );
    });

    it('config: offset, size, flags, bytes', () => {
      const b = encodeConfig({ offset: 4, flags: 1, data: hex('aabbcc') });
      expect(Buffer.from(b).toString('hex')).to.equal('04000000' + '03000000' + '01000000' + 'aabbcc');
      fc.assert(
        fc.property(u32, u32, fc.uint8Array({ maxLength: 256 }), (offset, flags, data) => {
          const c = decodeConfig(encodeConfig({ offset, flags, data }));
          expect(c.offset).to.equal(offset);
          expect(c.flags).to.equal(flags);
          expect(c.size).to.equal(data.byteLength);
          expect(Array.from(c.data)).to.deep.equal(Array.from(data));
        }),
      );
      expectProtocolError(() => encodeConfig({ offset: 0, flags: 0, data: new Uint8Array(257) }), 'EINVAL');
    });

    it('config: size must match the payload and be at most 256', () => {
      const b = encodeConfig({ offset: 0, flags: 0, data: new Uint8Array(8) });
      expectProtocolError(() => decodeConfig(b.subarray(0, b.byteLength - 1)), 'EBADMSG');
      const big = new Uint8Array(12 + 300);
      new DataView(big.buffer).setUint32(4, 300, true);
      expectProtocolError(() => decodeConfig(big), 'EBADMSG');
    });

    it('inflight and log round trips', () => {
      fc.assert(
        fc.property(u64, u64, fc.integer({ min: 0, max: 0xffff }), fc.integer({ min: 0, max: 0xffff }), (a, b, n, q) => {
          const p = { mmapSize: a, mmapOffset: b, numQueues: n, queueSize: q };
          const e = encodeInflight(p);
          expect(e.byteLength).to.equal(24);
          expect(decodeInflight(e)).to.deep.equal(p);
          expect(decodeLog(encodeLog({ mmapSize: a, mmapOffset: b }))).to.deep.equal({ mmapSize: a, mmapOffset: b });
        }),
      );
    });

    it('vring file: index in bits 0-7, NOFD in bit 8', () => {
      expect(decodeU64(encodeVringFile({ index: 3, noFd: true }))).to.equal(0x103n);
      expect(decodeVringFile(encodeU64(0x1ffn))).to.deep.equal({ index: 0xff, noFd: true });
      expect(decodeVringFile(encodeU64(0x2n))).to.deep.equal({ index: 2, noFd: false });
    });

    it('empty payloads must be empty', () => {
      decodeEmpty(new Uint8Array(0));
      expectProtocolError(() => decodeEmpty(new Uint8Array(8)), 'EBADMSG');
    });
  });

  describe('malformed input', () => {
    const decoders: Array<[string, (b: Uint8Array) => unknown]> = [
      ['header', decodeHeader],
      ['u64', decodeU64],
      ['vring state', decodeVringState],
      ['vring addr', decodeVringAddr],
      ['mem table', decodeMemTable],
      ['mem region', decodeMemRegionMsg],
      ['config', decodeConfig],
      ['inflight', decodeInflight],
      ['log', decodeLog],
      ['vring file', decodeVringFile],
      ['empty', decodeEmpty],
    ];
    for (const [name, decode] of decoders) {
      it(`${name}: random bytes decode or throw a ProtocolError, nothing else`, () => {
        fc.assert(
          fc.property(fc.uint8Array({ maxLength: 600 }), fc.nat({ max: 7 }), (bytes, shift) => {
            // Also at an unaligned offset inside a larger buffer.
            const buf = new Uint8Array(bytes.byteLength + shift);
            buf.set(bytes, shift);
            for (const b of [bytes, buf.subarray(shift)]) {
              try {
                decode(b);
              } catch (err) {
                if (!(err instanceof ProtocolError)) throw err;
              }
            }
          }),
          { numRuns: 300 },
        );
      });
    }

    it('wrong-sized fixed payloads are rejected', () => {
      fc.assert(
        fc.property(fc.nat({ max: 100 }), (n) => {
          const b = new Uint8Array(n);
          if (n !== 8) expectProtocolError(() => decodeU64(b), 'EBADMSG');
          if (n !== 8) expectProtocolError(() => decodeVringState(b), 'EBADMSG');
          if (n !== 40) expectProtocolError(() => decodeVringAddr(b), 'EBADMSG');
          if (n !== 40) expectProtocolError(() => decodeMemRegionMsg(b), 'EBADMSG');
          if (n !== 24) expectProtocolError(() => decodeInflight(b), 'EBADMSG');
        }),
      );
    });
  });
});

/** A fake socket: a byte stream with fds attached at given offsets, read in chunks. */
class FakeStream {
  private data: number[] = [];
  private fdsAt = new Map<number, number[]>();
  private pos = 0;
  eof = false;
  closed: number[] = [];
  constructor(private readonly chunk: () => number) {}
  push(bytes: Uint8Array, fds: number[] = []): void {
    if (fds.length > 0) this.fdsAt.set(this.data.length, fds);
    for (const b of bytes) this.data.push(b);
  }
  recv = (buf: Uint8Array, offset: number, length: number, _maxFds: number): RecvResult | null => {
    if (this.pos >= this.data.length) return this.eof ? { bytes: 0, fds: [] } : null;
    const n = Math.max(1, Math.min(length, this.data.length - this.pos, this.chunk()));
    const fds: number[] = [];
    for (let i = this.pos; i < this.pos + n; i++) {
      const f = this.fdsAt.get(i);
      if (f !== undefined) fds.push(...f);
    }
    for (let i = 0; i < n; i++) buf[offset + i] = this.data[this.pos + i]!;
    this.pos += n;
    return { bytes: n, fds };
  };
  close = (fd: number): void => {
    this.closed.push(fd);
  };
}

describe('vhost-user stream reader', () => {
  it('reassembles messages split at any byte, with their fds', () => {
    fc.assert(
      fc.property(
        fc.array(fc.record({ request: fc.integer({ min: 1, max: 40 }), payload: fc.uint8Array({ maxLength: 300 }), nfds: fc.nat({ max: 3 })}), {
          minLength: 1,
          maxLength: 6,
        }),
        fc.integer({ min: 1, max: 64 }),
        (msgs, chunk) => {
          const s = new FakeStream(() => chunk);
          let nextFd = 100;
          const sentFds: number[][] = [];
          for (const m of msgs) {
            const fds = Array.from({ length: m.nfds }, () => nextFd++);
            sentFds.push(fds);
            s.push(encodeMessage(m.request, requestFlags(false), m.payload), fds);
          }
          const reader = new MessageReader(s.recv, s.close);
          const got = [];
          for (let i = 0; i < 10000 && got.length < msgs.length; i++) {
            const r = reader.read(1);
            expect(r.error).to.equal(undefined);
            got.push(...r.messages);
            if (r.messages.length === 0) break;
          }
          expect(got.length).to.equal(msgs.length);
          got.forEach((m, i) => {
            expect(m.request).to.equal(msgs[i]!.request);
            expect(Array.from(m.payload)).to.deep.equal(Array.from(msgs[i]!.payload));
            expect(m.fds).to.deep.equal(sentFds[i]);
          });
          expect(reader.read().messages).to.have.length(0);
        },
      ),
    );
  });

  it('reports EOF, and EOF in the middle of a message as an error (closing its fds)', () => {
    const s = new FakeStream(() => 5);
    s.push(encodeMessage(1, 1));
    s.push(encodeMessage(2, 1, new Uint8Array(8)).subarray(0, 14), [7]);
    s.eof = true;
    const reader = new MessageReader(s.recv, s.close);
    const r = reader.read();
    expect(r.messages.map((m) => m.request)).to.deep.equal([1]);
    expect(r.eof).to.equal(true);
    expect(r.error).to.be.instanceOf(ProtocolError);
    expect(s.closed).to.deep.equal([7]);
  });

  it('rejects a payload larger than the limit and a bad version', () => {
    const s = new FakeStream(() => 100);
    s.push(encodeHeader({ request: 5, flags: 1, size: 1 << 20 }), [9]);
    const r = new MessageReader(s.recv, s.close, 4096).read();
    expect(r.error).to.be.instanceOf(ProtocolError);
    expect((r.error as ProtocolError).code).to.equal('EMSGSIZE');
    expect(s.closed).to.deep.equal([9]);

    const s2 = new FakeStream(() => 100);
    s2.push(encodeHeader({ request: 5, flags: 2, size: 0 }));
    const r2 = new MessageReader(s2.recv, s2.close).read();
    expect((r2.error as ProtocolError).code).to.equal('EPROTO');
  });

  it('never throws on random byte streams', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 2000 }), fc.integer({ min: 1, max: 50 }), fc.boolean(), (bytes, chunk, eof) => {
        const s = new FakeStream(() => chunk);
        s.push(bytes, [3]);
        s.eof = eof;
        const reader = new MessageReader(s.recv, s.close, 512);
        for (let i = 0; i < 5000; i++) {
          const r = reader.read(3);
          if (r.error !== undefined) expect(r.error).to.be.instanceOf(ProtocolError);
          if (r.eof || (r.messages.length === 0 && r.error === undefined)) break;
        }
      }),
    );
  });
});

describe('vhost-user stream writer', () => {
  it('sends a message with one sendmsg when the socket takes it', () => {
    const calls: Array<[number, number[]]> = [];
    const w = new MessageWriter((_b, _o, l, f) => {
      calls.push([l, f]);
      return l;
    }, (fd) => fd + 1000, () => {});
    expect(w.write(encodeMessage(1, 1, new Uint8Array(8)), [5])).to.equal(true);
    expect(calls).to.deep.equal([[20, [5]]]);
    expect(w.pending).to.equal(false);
  });

  it('queues on EAGAIN and partial sends, keeping fds with the first byte', () => {
    const sent: Array<{ bytes: number[]; fds: number[] }> = [];
    let budget = 0;
    const closed: number[] = [];
    const w = new MessageWriter(
      (b, o, l, f) => {
        if (budget === 0) return -1;
        const n = Math.min(l, budget);
        budget -= n;
        sent.push({ bytes: Array.from(b.subarray(o, o + n)), fds: f.slice() });
        return n;
      },
      (fd) => fd + 1000,
      (fd) => closed.push(fd),
    );
    const m1 = encodeMessage(1, 1, new Uint8Array([1, 2, 3, 4]));
    const m2 = encodeMessage(2, 1);
    expect(w.write(m1, [5])).to.equal(false);
    expect(w.write(m2, [6, 7])).to.equal(false);
    expect(w.pending).to.equal(true);
    budget = 10;
    expect(w.flush()).to.equal(false);
    budget = 100;
    expect(w.flush()).to.equal(true);
    const all = sent.flatMap((s) => s.bytes);
    expect(all).to.deep.equal([...m1, ...m2]);
    expect(sent[0]!.fds).to.deep.equal([1005]);
    expect(sent.find((s) => s.fds.includes(1006))!.bytes[0]).to.equal(2);
    expect(closed.sort()).to.deep.equal([1005, 1006, 1007]);
  });
});
