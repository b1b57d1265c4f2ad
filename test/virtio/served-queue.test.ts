// ServedQueue: what a device completes while a drain runs is published once, at the end
// of that drain (one used.idx store, at most one interrupt for the batch); what completes
// later is published in a microtask, completions settling together sharing it; stop()
// waits for requests in flight and publishes them.
import { expect } from 'chai';
import { ServedQueue } from '../../src/virtio/served-queue.js';
import { workInFlight } from '../../src/native/index.js';
import { jsRingOps, type RingOps } from '../../src/virtio/ring-ops.js';
import { DATA_BASE, makeRingPair } from './helpers.js';

/** The same-thread ring operations, counting the device's publishes (used.idx stores). */
function countingOps(): RingOps & { publishes: number } {
  const ops = {
    publishes: 0,
    publishIdx(...a: Parameters<RingOps['publishIdx']>): boolean {
      ops.publishes++;
      return jsRingOps.publishIdx(...a);
    },
    fence(): void {},
  };
  return ops;
}

function setup(): { ops: ReturnType<typeof countingOps>; pair: ReturnType<typeof makeRingPair>; st: ServedQueue; add: (n: number) => void } {
  const ops = countingOps();
  const pair = makeRingPair({ size: 16, eventIdx: true, ops });
  const st = new ServedQueue(pair.device);
  const add = (n: number): void => {
    for (let i = 0; i < n; i++) pair.driver.add([{ addr: DATA_BASE + 64 * i, len: 16 }], [{ addr: DATA_BASE + 4096 + 64 * i, len: 16 }], i);
    const before = ops.publishes;
    pair.driver.kick(); // the driver's publish goes through the same ops: not counted
    ops.publishes = before;
  };
  return { ops, pair, st, add };
}

describe('ServedQueue', () => {
  it('publishes the completions of one drain once, before drain() returns', () => {
    const { ops, pair, st, add } = setup();
    add(5);
    let seen = 0;
    st.drain((r) => {
      expect(r.kind).to.equal('chain');
      if (r.kind === 'chain') st.complete(r.chain.head, 3);
      seen++;
      expect(ops.publishes).to.equal(0); // nothing published mid-drain
    });
    expect(seen).to.equal(5);
    expect(ops.publishes).to.equal(1);
    const done = pair.driver.poll();
    expect(done.map((c) => c.token)).to.deep.equal([0, 1, 2, 3, 4]);
    expect(done.every((c) => c.len === 3)).to.equal(true);
  });

  it('publishes nothing for a drain that completed nothing', () => {
    const { ops, st, add } = setup();
    st.drain(() => undefined);
    expect(ops.publishes).to.equal(0);
    add(2);
    st.drain(() => undefined); // taken, answered later
    expect(ops.publishes).to.equal(0);
  });

  it('publishes asynchronous completions in a microtask, those settling together at once', async () => {
    const { ops, pair, st, add } = setup();
    add(4);
    const heads: number[] = [];
    const base = workInFlight[0]!;
    st.drain((r) => {
      if (r.kind === 'chain') {
        st.begin();
        heads.push(r.chain.head);
      }
    });
    expect(ops.publishes).to.equal(0);
    // The process-wide count the event loop's polling looks at (native/loop_poll.cc).
    expect(workInFlight[0]).to.equal(base + 4);
    for (const h of heads.slice(0, 3)) {
      st.complete(h, 1);
      st.end();
    }
    expect(pair.driver.poll()).to.have.length(0); // not yet published
    await Promise.resolve();
    expect(ops.publishes).to.equal(1);
    expect(pair.driver.poll().map((c) => c.token)).to.deep.equal([0, 1, 2]);
    // the last one completes during a later drain: published with that drain's batch
    add(1);
    st.drain((r) => {
      if (r.kind === 'chain') st.complete(r.chain.head, 2);
      st.complete(heads[3]!, 1);
      st.end();
    });
    expect(ops.publishes).to.equal(2);
    await Promise.resolve();
    expect(ops.publishes).to.equal(2); // the microtask found nothing left to publish
    expect(pair.driver.poll().map((c) => c.token).sort()).to.deep.equal([0, 3]);
    expect(workInFlight[0]).to.equal(base);
  });

  it('publishes what a throwing handler completed, and the queue keeps serving', () => {
    const { ops, pair, st, add } = setup();
    add(2);
    expect(() => st.drain((r) => {
      if (r.kind === 'chain') st.complete(r.chain.head, 0);
      throw new Error('device bug');
    })).to.throw('device bug');
    expect(ops.publishes).to.equal(1);
    expect(pair.driver.poll()).to.have.length(1);
    st.drain((r) => {
      if (r.kind === 'chain') st.complete(r.chain.head, 0);
    });
    expect(pair.driver.poll()).to.have.length(1);
  });

  it('stop() waits for requests in flight, publishes them and serves nothing more', async () => {
    const { pair, st, add } = setup();
    add(1);
    let head = -1;
    st.drain((r) => {
      if (r.kind === 'chain') {
        st.begin();
        head = r.chain.head;
      }
    });
    let stopped = false;
    const stopping = st.stop().then(() => {
      stopped = true;
    });
    await Promise.resolve();
    expect(stopped).to.equal(false);
    st.complete(head, 7);
    st.end();
    await stopping;
    expect(pair.driver.poll().map((c) => c.len)).to.deep.equal([7]);
    add(1);
    let called = false;
    st.drain(() => {
      called = true;
    });
    expect(called).to.equal(false);
  });
});
