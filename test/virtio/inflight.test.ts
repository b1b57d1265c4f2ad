// Inflight tracking (INFLIGHT_SHMFD) on a real DriverQueue/DeviceQueue pair: a device
// queue "crashes" (is abandoned) at each point of a request's life, a new one takes over
// the same ring with the same region, and every request completes exactly once.
import { expect } from 'chai';
import fc from 'fast-check';
import { DeviceQueue } from '../../src/virtio/queue.js';
import { InflightQueue, InflightRegion, inflightQueueBytes, inflightRegionBytes } from '../../src/virtio/inflight.js';
import { jsRingOps, type RingOps } from '../../src/virtio/ring-ops.js';
import type { DriverQueue } from '../../src/virtio/driver-queue.js';
import { DATA_BASE, makeRingPair, type RingPair } from './helpers.js';

const SIZE = 16;

/** Adds `tokens` as requests (one readable, one writable descriptor each) and kicks. */
function addRequests(driver: DriverQueue<number>, tokens: readonly number[]): Map<number, number> {
  const heads = new Map<number, number>();
  for (const t of tokens) {
    const h = driver.add([{ addr: DATA_BASE + t * 64, len: 16 }], [{ addr: DATA_BASE + 0x10000 + t * 64, len: 1 }], t);
    expect(h).to.be.at.least(0);
    heads.set(t, h);
  }
  driver.kick();
  return heads;
}

/** Pops `n` chains and returns their heads in pop order. */
function popHeads(device: DeviceQueue, n: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const r = device.pop();
    if (r.kind !== 'chain') throw new Error(`expected a chain, got ${r.kind}`);
    out.push(r.chain.head);
  }
  return out;
}

/** What a restarted backend does: a new DeviceQueue on the same ring, base = used.idx as QEMU sends it. */
function restart(pair: RingPair, region: InflightQueue, ops: RingOps = jsRingOps): { device: DeviceQueue; recovery: ReturnType<DeviceQueue['trackInflight']> } {
  const device = new DeviceQueue(0, ops);
  device.size = SIZE;
  device.lastAvailIdx = pair.driver.lastUsedIdx; // after the frontend drained what was published
  if (!device.setAddresses(pair.memory, pair.driver.ringAddresses)) throw new Error('setAddresses failed');
  const recovery = device.trackInflight(region);
  return { device, recovery };
}

function tokensOf(driver: DriverQueue<number>): number[] {
  return driver.poll().map((c) => c.token!);
}

describe('virtio/inflight: tracking requests across a backend crash', () => {
  let region: InflightQueue;

  beforeEach(() => {
    region = new InflightQueue(new ArrayBuffer(inflightQueueBytes(SIZE)), 0, SIZE);
  });

  it('sizes queues as libvhost-user does (16 bytes per descriptor + 2, rounded up to 64)', () => {
    expect(inflightQueueBytes(128)).to.equal(2112);
    expect(inflightQueueBytes(256)).to.equal(4160);
    expect(inflightRegionBytes(4, 256)).to.equal(4 * 4160);
    const r = new InflightRegion(new ArrayBuffer(inflightRegionBytes(3, 64)), 0, 3, 64);
    expect(r.queues).to.have.length(3);
    expect(() => new InflightQueue(new ArrayBuffer(100), 0, 64)).to.throw(RangeError);
  });

  it('a never-used region is initialized: version 1, nothing resubmitted, avail index from used.idx', () => {
    const pair = makeRingPair({ size: SIZE, ops: jsRingOps });
    const r = pair.device.trackInflight(region);
    expect(r).to.deep.equal({ fresh: true, resubmit: [], repaired: 0, lastAvailIdx: 0 });
    expect(region.version).to.equal(1);
    addRequests(pair.driver, [1]);
    const [h] = popHeads(pair.device, 1);
    expect(region.isInflight(h!)).to.equal(true);
    pair.device.push(h!, 1);
    expect(region.isInflight(h!), 'still in flight until used.idx is published').to.equal(true);
    expect(region.lastBatchHead).to.equal(h);
    pair.device.flush();
    expect(region.isInflight(h!)).to.equal(false);
    expect(region.usedIdx).to.equal(1);
  });

  it('popped but not completed: resubmitted in pop order before new requests, each completes once', () => {
    const pair = makeRingPair({ size: SIZE, ops: jsRingOps });
    pair.device.trackInflight(region);
    const heads = addRequests(pair.driver, [0, 1, 2, 3, 4, 5]);
    popHeads(pair.device, 6);
    pair.device.push(heads.get(1)!, 1);
    pair.device.push(heads.get(3)!, 1);
    pair.device.flush();
    expect(tokensOf(pair.driver)).to.deep.equal([1, 3]);
    // crash: the old DeviceQueue is gone; the driver adds more meanwhile
    addRequests(pair.driver, [6, 7]);
    const { device, recovery } = restart(pair, region);
    expect(recovery.resubmit).to.deep.equal([0, 2, 4, 5].map((t) => heads.get(t)));
    expect(recovery.repaired).to.equal(0);
    expect(recovery.lastAvailIdx).to.equal(6);
    const order = popHeads(device, 6);
    expect(order).to.deep.equal([0, 2, 4, 5, 6, 7].map((t) => (t < 6 ? heads.get(t) : order[t - 2])));
    expect(device.pop().kind).to.equal('empty');
    for (const h of order) device.push(h, 1);
    device.flush();
    expect(tokensOf(pair.driver).sort((a, b) => a - b)).to.deep.equal([0, 2, 4, 5, 6, 7]);
    expect(pair.driver.broken, 'no duplicate or unknown completion').to.equal(false);
    expect(pair.driver.inFlight).to.equal(0);
  });

  it('completions pushed but not published are served again (the used entries were never visible)', () => {
    const pair = makeRingPair({ size: SIZE, ops: jsRingOps });
    pair.device.trackInflight(region);
    addRequests(pair.driver, [0, 1, 2]);
    const popped = popHeads(pair.device, 3);
    pair.device.push(popped[0]!, 1);
    pair.device.push(popped[1]!, 1);
    // crash before flush
    const { device, recovery } = restart(pair, region);
    expect(recovery.resubmit).to.deep.equal(popped);
    expect(recovery.repaired).to.equal(0);
    for (const h of popHeads(device, 3)) device.push(h, 1);
    device.flush();
    expect(tokensOf(pair.driver).sort()).to.deep.equal([0, 1, 2]);
    expect(pair.driver.broken).to.equal(false);
  });

  it('a crash between publishing used.idx and clearing the batch: the batch is repaired, not served twice', () => {
    let crash = false;
    const crashing: RingOps = {
      fence: jsRingOps.fence,
      publishIdx(...args) {
        const r = jsRingOps.publishIdx(...args);
        if (crash) throw new Error('killed after the used.idx store');
        return r;
      },
    };
    const pair = makeRingPair({ size: SIZE, ops: crashing });
    pair.device.trackInflight(region);
    addRequests(pair.driver, [0, 1, 2, 3]);
    const popped = popHeads(pair.device, 4);
    pair.device.push(popped[0]!, 1);
    pair.device.flush(); // an earlier, complete batch
    pair.device.push(popped[2]!, 1);
    pair.device.push(popped[1]!, 1);
    crash = true;
    expect(() => pair.device.flush()).to.throw('killed');
    expect(region.isInflight(popped[1]!) && region.isInflight(popped[2]!), 'left marked by the crash').to.equal(true);
    expect(tokensOf(pair.driver).sort()).to.deep.equal([0, 1, 2]);
    const { device, recovery } = restart(pair, region);
    expect(recovery.repaired).to.equal(2);
    expect(recovery.resubmit).to.deep.equal([popped[3]]);
    expect(recovery.lastAvailIdx).to.equal(4);
    expect(region.usedIdx).to.equal(3);
    const again = popHeads(device, 1);
    expect(device.pop().kind).to.equal('empty');
    device.push(again[0]!, 1);
    device.flush();
    expect(tokensOf(pair.driver)).to.deep.equal([3]);
    expect(pair.driver.broken).to.equal(false);
  });

  it('resubmits by counter (pop order), not by descriptor index, and keeps counting after them', () => {
    const pair = makeRingPair({ size: SIZE, ops: jsRingOps });
    pair.device.trackInflight(region);
    const first = addRequests(pair.driver, [0, 1, 2, 3]);
    popHeads(pair.device, 4);
    pair.device.push(first.get(0)!, 1);
    pair.device.push(first.get(1)!, 1);
    pair.device.flush();
    tokensOf(pair.driver);
    const second = addRequests(pair.driver, [4, 5]); // reuse the freed (lower) heads
    popHeads(pair.device, 2);
    const expected = [first.get(2)!, first.get(3)!, second.get(4)!, second.get(5)!];
    expect(Math.min(second.get(4)!, second.get(5)!), 'heads reused below the older ones').to.be.below(first.get(2)!);
    const { device, recovery } = restart(pair, region);
    expect(recovery.resubmit).to.deep.equal(expected);
    expect(popHeads(device, 4)).to.deep.equal(expected);
    // A new request after the resubmitted ones gets a later counter than all of them.
    const third = addRequests(pair.driver, [6]);
    popHeads(device, 1);
    const max = Math.max(...expected.map((h) => region.counterOf(h)));
    expect(region.counterOf(third.get(6)!)).to.be.above(max);
  });

  it('any region contents (a frontend may hand over garbage): recovery neither throws nor resubmits anything out of range', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: inflightQueueBytes(SIZE), maxLength: inflightQueueBytes(SIZE) }), fc.integer({ min: 0, max: 0xffff }), (bytes, used) => {
        const buf = new ArrayBuffer(inflightQueueBytes(SIZE));
        new Uint8Array(buf).set(bytes);
        const q = new InflightQueue(buf, 0, SIZE);
        const r = q.recover(used);
        expect(new Set(r.resubmit).size).to.equal(r.resubmit.length);
        for (const h of r.resubmit) expect(h).to.be.within(0, SIZE - 1);
        for (let i = 1; i < r.resubmit.length; i++) expect(q.counterOf(r.resubmit[i - 1]!)).to.be.at.most(q.counterOf(r.resubmit[i]!));
        expect(r.lastAvailIdx).to.equal((used + r.resubmit.length) & 0xffff);
        expect(q.usedIdx).to.equal(used);
        // Tracking goes on from there without touching anything outside the slice.
        q.popped(SIZE - 1);
        q.pushed(SIZE - 1);
        q.published((used + 1) & 0xffff);
        expect(q.isInflight(SIZE - 1)).to.equal(false);
      }),
      { numRuns: 300 },
    );
  });

  it('a region whose used_idx is from a re-created ring (more than a ring apart) walks no batch', () => {
    const pair = makeRingPair({ size: SIZE, ops: jsRingOps });
    pair.driver.startAt(1000);
    pair.device.lastAvailIdx = 1000;
    pair.device.setAddresses(pair.memory, pair.driver.ringAddresses);
    region.recover(5); // initialize with a used_idx far away
    const r = pair.device.trackInflight(region);
    expect(r).to.deep.equal({ fresh: false, resubmit: [], repaired: 0, lastAvailIdx: 1000 });
  });
});
