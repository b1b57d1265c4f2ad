import { expect } from 'chai';
import { native, Poller, POLL_READABLE, POLL_WRITABLE } from '../../src/native/index.js';
import { collectGarbage, nativeError } from './helpers.js';

const tick = (ms = 20) => new Promise((resolve) => setTimeout(resolve, ms));

describe('native: Poller', () => {
  it('fires on an eventfd write and stops firing after stop()', async () => {
    const efd = native.eventfd(0);
    const seen: Array<[number, number, number]> = [];
    const poller = native.createPoller(efd, (status, events) => {
      seen.push([status, events, native.eventfdRead(efd)]);
    });
    poller.start(POLL_READABLE);
    await tick();
    expect(seen).to.have.length(0);
    native.eventfdWrite(efd, 3);
    await tick();
    expect(seen).to.deep.equal([[0, POLL_READABLE, 3]]);
    poller.stop();
    native.eventfdWrite(efd, 1);
    await tick();
    expect(seen).to.have.length(1);
    poller.start(POLL_READABLE);
    await tick();
    expect(seen).to.have.length(2);
    poller.close();
    poller.close();
    expect(() => poller.start(POLL_READABLE)).to.throw();
    native.close(efd);
  });

  it('can be closed from inside its own callback', async () => {
    const efd = native.eventfd(1);
    let calls = 0;
    const poller = native.createPoller(efd, () => {
      calls++;
      poller.close();
    });
    poller.start(POLL_READABLE);
    await tick();
    await tick();
    expect(calls).to.equal(1);
    native.close(efd);
  });

  it('reports writability', async () => {
    const [a, b] = native.socketPair();
    let events = 0;
    const poller = native.createPoller(a, (_status, ev) => {
      events = ev;
      poller.stop();
    });
    poller.start(POLL_WRITABLE);
    await tick();
    expect(events & POLL_WRITABLE).to.equal(POLL_WRITABLE);
    poller.close();
    native.close(a);
    native.close(b);
  });

  it('unstarted or stopped pollers are reclaimed by GC, releasing their fds', async () => {
    const fds: number[] = [];
    (() => {
      for (let i = 0; i < 20; i++) {
        const [a, b] = native.socketPair();
        fds.push(a, b);
        native.createPoller(a, () => undefined);
        // a callback that closes over its own poller must not keep it alive
        const p: Poller = native.createPoller(b, () => p.close());
        p.start(POLL_READABLE);
        p.stop();
      }
    })();
    await collectGarbage();
    for (const fd of fds) native.close(fd);
  });

  it('a started poller stays alive without JS references', async () => {
    const efd = native.eventfd(0);
    let fired = 0;
    (() => native.createPoller(efd, () => {
      native.eventfdRead(efd);
      fired++;
    }).start(POLL_READABLE))();
    await collectGarbage();
    native.eventfdWrite(efd, 1);
    await tick();
    expect(fired).to.equal(1);
    expect(nativeError(() => native.close(efd)).code).to.equal('EBUSY');
  });

  it('with readEventfd, resets the counter before each callback', async () => {
    const efd = native.eventfd(0);
    const seen: Array<[number, number, number]> = [];
    const poller = native.createPoller(efd, (status, events) => {
      seen.push([status, events, native.eventfdRead(efd)]);
    }, true);
    poller.start(POLL_READABLE);
    native.eventfdWrite(efd, 5);
    await tick();
    // Read once by the poller (counter 0 afterwards), so level-triggered polling stops.
    expect(seen).to.deep.equal([[0, POLL_READABLE, 0]]);
    native.eventfdWrite(efd, 1);
    await tick();
    expect(seen).to.deep.equal([[0, POLL_READABLE, 0], [0, POLL_READABLE, 0]]);
    poller.close();
    native.close(efd);
  });

  it('refuses a readEventfd flag that is not a boolean', () => {
    const efd = native.eventfd(0);
    expect(() => native.createPoller(efd, () => undefined, 1 as unknown as boolean)).to.throw(TypeError);
    native.close(efd);
  });

  it('runs the nextTicks and promise jobs a callback queues before the next callback of the same loop turn', async () => {
    const efds = [native.eventfd(0), native.eventfd(0), native.eventfd(0)];
    const order: string[] = [];
    const pollers = efds.map((efd, i) => native.createPoller(efd, () => {
      order.push(`cb${i}`);
      process.nextTick(() => order.push(`tick${i}`));
      void Promise.resolve().then(() => order.push(`job${i}`));
    }, true));
    for (const p of pollers) p.start(POLL_READABLE);
    // Written in one JS turn: all three are ready in the same epoll wait.
    for (const efd of efds) native.eventfdWrite(efd, 1);
    await tick();
    expect(order).to.have.length(9);
    for (let k = 0; k < 9; k += 3) {
      const i = order[k]!.slice(2);
      expect(order.slice(k, k + 3)).to.deep.equal([`cb${i}`, `tick${i}`, `job${i}`]);
    }
    for (const p of pollers) p.close();
    for (const efd of efds) native.close(efd);
  });

  it('a callback closing its own unreferenced poller leaves nothing to fire or leak', async () => {
    const efd = native.eventfd(0);
    let calls = 0;
    (() => {
      const p = native.createPoller(efd, () => {
        calls++;
        p.close();
        // The wrapper may now be collected: the callback still runs to its end.
        void Promise.resolve().then(() => calls++);
      }, true);
      p.start(POLL_READABLE);
    })();
    await collectGarbage();
    native.eventfdWrite(efd, 1);
    await tick();
    await collectGarbage();
    native.eventfdWrite(efd, 1);
    await tick();
    expect(calls).to.equal(2);
    // Closed: the fd is no longer watched.
    native.close(efd);
  });

  it('refuses to close an fd that an open poller watches', () => {
    const efd = native.eventfd(0);
    const poller = native.createPoller(efd, () => undefined);
    expect(nativeError(() => native.close(efd)).code).to.equal('EBUSY');
    poller.close();
    native.close(efd);
  });
});
