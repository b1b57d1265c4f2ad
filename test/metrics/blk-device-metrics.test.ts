// The blk device's reports to its RequestObserver, request by request, with the real
// BlkDevice serving a real split virtqueue (over the ring tests' fake guest memory, so the
// disk is an in-memory image that copies with JS, not a file): the op and status names, the
// bytes counted (only data moved by successful IN and OUT), one report per request — also
// for malformed ones — and the queue depth (requests available and not yet taken).
import { expect } from 'chai';

import { BlkDevice } from '../../src/blk/device.js';
import type { BlockImage } from '../../src/blk/image.js';
import type { Segment } from '../../src/virtio/memory.js';
import { BlkType } from '../../src/blk/protocol.js';
import type { RequestObserver } from '../../src/metrics/observer.js';
import { silentLogger } from '../../src/util/log.js';
import { DATA_BASE, makeRingPair, writeGuest } from '../virtio/helpers.js';

/** A disk in a Uint8Array (unit test only). */
class MemoryDisk implements BlockImage {
  readonly readOnly = false;
  readonly canDiscard = false;
  readonly canWriteZeroes = false;
  readonly logicalBlockSize = 512;
  readonly optimalIoSize = 0;
  private readonly bytes: Uint8Array;
  constructor(readonly size: number) {
    this.bytes = new Uint8Array(size);
  }
  read(offset: number, segs: readonly Segment[], done: (res: number) => void): void {
    let pos = offset;
    for (const s of segs) {
      new Uint8Array(s.buf, s.offset, s.length).set(this.bytes.subarray(pos, pos + s.length));
      pos += s.length;
    }
    setImmediate(() => done(pos - offset));
  }
  write(offset: number, segs: readonly Segment[], done: (res: number) => void): void {
    let pos = offset;
    for (const s of segs) {
      this.bytes.set(new Uint8Array(s.buf, s.offset, s.length), pos);
      pos += s.length;
    }
    setImmediate(() => done(pos - offset));
  }
  flush(done: (res: number) => void): void {
    setImmediate(() => done(0));
  }
  discard(_o: number, _l: number, done: (res: number) => void): void {
    done(-95);
  }
  writeZeroes(_o: number, _l: number, _u: boolean, done: (res: number) => void): void {
    done(-95);
  }
  unplug(): void {}
  async close(): Promise<void> {}
}

interface Report {
  op: string;
  status: string;
  read: number;
  written: number;
}

function header(type: number, sector: number): Uint8Array {
  const b = new Uint8Array(16);
  const v = new DataView(b.buffer);
  v.setUint32(0, type, true);
  v.setBigUint64(8, BigInt(sector), true);
  return b;
}

describe('metrics: blk device requests as the observer sees them', () => {
  it('reports every request once with its op, status and bytes; queue depth counts what is not taken yet', async () => {
    const image = new MemoryDisk(1 << 20);
    const reports: Report[] = [];
    let started = 0;
    const observer: RequestObserver = {
      start: () => {
        started++;
        return performance.now();
      },
      done: (_start, op, status, read, written) => void reports.push({ op, status, read, written }),
    };
    const device = new BlkDevice({ image, numQueues: 1, serial: 'SERIAL-1', log: silentLogger, observer });
    const { memory, driver, device: queue } = makeRingPair({ size: 32 });
    device.startQueue(queue);
    let at = DATA_BASE;
    const buf = (bytes: Uint8Array | number): { addr: number; len: number } => {
      const len = typeof bytes === 'number' ? bytes : bytes.length;
      if (typeof bytes !== 'number') writeGuest(memory, at, bytes);
      const b = { addr: at, len };
      at += (len + 4095) & ~4095;
      return b;
    };
    const requests: [string, Parameters<typeof driver.add>[0], Parameters<typeof driver.add>[1]][] = [
      ['in 4 KiB', [buf(header(BlkType.In, 8))], [buf(4096), buf(1)]],
      ['out 1 KiB', [buf(header(BlkType.Out, 0)), buf(new Uint8Array(1024).fill(7))], [buf(1)]],
      ['flush', [buf(header(BlkType.Flush, 0))], [buf(1)]],
      ['get_id', [buf(header(BlkType.GetId, 0))], [buf(20), buf(1)]],
      ['in past the end', [buf(header(BlkType.In, 1 << 11))], [buf(512), buf(1)]],
      ['type 99', [buf(header(99, 0))], [buf(1)]],
      ['8-byte header', [buf(new Uint8Array(8))], [buf(1)]],
      ['no status byte', [buf(header(BlkType.In, 0))], []],
    ];
    for (const [, r, w] of requests) expect(driver.add(r, w, 0)).to.be.at.least(0);
    driver.kick();
    expect(device.queueDepth).to.equal(requests.length);
    expect(started).to.equal(0);
    device.onKick(queue);
    expect(device.queueDepth).to.equal(0);
    for (let i = 0; i < 200 && reports.length < requests.length; i++) await new Promise((r) => setTimeout(r, 5));
    expect(started).to.equal(requests.length);
    const byOp = (op: string, status: string): Report[] => reports.filter((r) => r.op === op && r.status === status);
    expect(reports).to.have.length(requests.length);
    expect(byOp('in', 'ok')).to.deep.equal([{ op: 'in', status: 'ok', read: 4096, written: 0 }]);
    expect(byOp('out', 'ok')).to.deep.equal([{ op: 'out', status: 'ok', read: 0, written: 1024 }]);
    expect(byOp('flush', 'ok')).to.have.length(1);
    expect(byOp('get_id', 'ok')).to.deep.equal([{ op: 'get_id', status: 'ok', read: 0, written: 0 }]);
    // Failed requests move no bytes; the chain without room for a status is an IOERR too.
    expect(byOp('in', 'ioerr')).to.deep.equal([{ op: 'in', status: 'ioerr', read: 0, written: 0 }, { op: 'in', status: 'ioerr', read: 0, written: 0 }]);
    expect(byOp('unsupported', 'unsupp')).to.have.length(1);
    expect(byOp('malformed', 'ioerr')).to.have.length(1);
    await device.stopQueue(queue);
    await image.close();
  });
});
