// The small concurrency primitives of the POSIX layer.
import { expect } from 'chai';
import { ByteSemaphore, KeyedMutex, Mutex, forEachLimit } from '../../src/backends/posix/locks.js';
import { sleep } from './helpers.js';

describe('posix locks', () => {
  it('Mutex runs sections one at a time, in order', async () => {
    const m = new Mutex();
    const log: string[] = [];
    await Promise.all(
      [3, 1, 2].map((ms, i) =>
        m.run(async () => {
          log.push(`in ${i}`);
          await sleep(ms);
          log.push(`out ${i}`);
        }),
      ),
    );
    expect(log).to.deep.equal(['in 0', 'out 0', 'in 1', 'out 1', 'in 2', 'out 2']);
    expect(m.busy).to.equal(false);
  });

  it('KeyedMutex serializes per key only', async () => {
    const k = new KeyedMutex();
    let inA = 0;
    let maxA = 0;
    let both = 0;
    const section = (key: string) =>
      k.run(key, async () => {
        if (key === 'a') maxA = Math.max(maxA, ++inA);
        both++;
        await sleep(2);
        if (key === 'a') inA--;
      });
    await Promise.all([section('a'), section('a'), section('b'), section('b')]);
    expect(maxA).to.equal(1);
    expect(both).to.equal(4);
  });

  it('forEachLimit bounds concurrency and stops after a failure', async () => {
    let running = 0;
    let peak = 0;
    const seen: number[] = [];
    await forEachLimit([1, 2, 3, 4, 5, 6, 7, 8], 3, async (n) => {
      peak = Math.max(peak, ++running);
      await sleep(1);
      seen.push(n);
      running--;
    });
    expect(peak).to.equal(3);
    expect(seen.sort()).to.deep.equal([1, 2, 3, 4, 5, 6, 7, 8]);
    const started: number[] = [];
    let err: unknown;
    try {
      await forEachLimit([1, 2, 3, 4, 5, 6], 1, async (n) => {
        started.push(n);
        if (n === 2) throw new Error('boom');
      });
    } catch (e) {
      err = e;
    }
    expect((err as Error).message).to.equal('boom');
    expect(started).to.deep.equal([1, 2]);
  });

  it('ByteSemaphore keeps the bytes in use within the limit, serves waiters in order, and lets one oversize request run alone', async () => {
    const s = new ByteSemaphore(100);
    let peak = 0;
    const order: string[] = [];
    const job = async (name: string, n: number, ms: number): Promise<void> => {
      const release = await s.acquire(n);
      order.push(name);
      peak = Math.max(peak, s.inUse);
      await sleep(ms);
      release();
    };
    await Promise.all([job('a', 60, 5), job('b', 60, 1), job('c', 30, 1), job('big', 500, 1), job('d', 10, 1)]);
    expect(order).to.deep.equal(['a', 'b', 'c', 'big', 'd']);
    expect(s.inUse).to.equal(0);
    expect(peak).to.be.at.most(500);
    // Without the oversize request, the limit holds.
    peak = 0;
    await Promise.all([job('x', 60, 2), job('y', 60, 2), job('z', 40, 2)]);
    expect(peak).to.be.at.most(100);
  });
});
