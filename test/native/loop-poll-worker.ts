// A worker thread for test/native/loop-poll.test.ts: its own event loop, so that turning
// busy-polling on here leaves the test runner's loop alone. Scenarios, by workerData:
// - pingpong: answers each write to `ping` with a write to `pong`, `rounds` times, then
//   idles on timers longer than the window; reports the stats after each phase.
// - timer: grows the window to its maximum, then reports how late a timer fires.
// - wake: grows the window, waits for a write to `ping` with no timer pending, and reports
//   how long after telling the test it was waiting the write was seen.
// - busy: grows the window, then waits on timers while a thread-pool read of the FIFO
//   `fifo` is in flight; reports the spins of the waits before and during it.
// - counted: timer waits with the count of work in flight given to setLoopPoll at 1, then at 0.
import { parentPort, workerData } from 'node:worker_threads';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { closeSync, openSync, read, writeSync, constants } from 'node:fs';
import { native, POLL_READABLE } from '../../src/native/index.js';

interface Job {
  readonly scenario: 'pingpong' | 'timer' | 'wake' | 'busy' | 'counted';
  readonly fifo: string;
  readonly maxNs: number;
  readonly ping: number;
  readonly pong: number;
  readonly rounds: number;
}

const job = workerData as Job;
const port = parentPort!;

/**
 * Loop turns that each wait a little longer than the window but less than the maximum:
 * the window doubles per turn, until it is at least half the maximum.
 */
async function grow(): Promise<void> {
  for (let i = 0; i < 40 && native.loopPollStats().windowNs < job.maxNs / 2; i++) {
    await sleep(Math.max(1, (2 * native.loopPollStats().windowNs) / 1e6));
  }
}

/** Loop turns spent polling over five timer waits of 2 ms, after the window has grown. */
async function spinsDuring(): Promise<number> {
  await grow();
  const before = native.loopPollStats().spins;
  for (let i = 0; i < 5; i++) await sleep(2);
  return native.loopPollStats().spins - before;
}

async function main(): Promise<void> {
  const work = new Int32Array(1);
  native.setLoopPoll(job.maxNs, job.scenario === 'counted' ? work : undefined);
  if (job.scenario === 'counted') {
    work[0] = 1;
    const serving = await spinsDuring();
    work[0] = 0;
    port.postMessage({ serving, idle: await spinsDuring() });
  } else if (job.scenario === 'pingpong') {
    let seen = 0;
    const done = new Promise<void>((resolve) => {
      const poller = native.createPoller(job.ping, () => {
        seen += native.eventfdRead(job.ping);
        native.eventfdWrite(job.pong, 1);
        if (seen >= job.rounds) {
          poller.close();
          resolve();
        }
      });
      poller.start(POLL_READABLE);
    });
    port.postMessage({ ready: true });
    await done;
    const busy = native.loopPollStats();
    for (let i = 0; i < 20; i++) await sleep(5);
    port.postMessage({ busy, idle: native.loopPollStats() });
  } else if (job.scenario === 'timer') {
    await grow();
    const window = native.loopPollStats().windowNs;
    const t = performance.now();
    await sleep(30);
    port.postMessage({ window, lateMs: performance.now() - t - 30 });
  } else if (job.scenario === 'busy') {
    // O_RDWR: opening a FIFO so does not wait for a writer, and reads of it block.
    const fd = openSync(job.fifo, constants.O_RDWR);
    const idle = await spinsDuring();
    const pooled = new Promise((resolve) => read(fd, Buffer.alloc(1), 0, 1, null, resolve));
    const threadPool = await spinsDuring();
    writeSync(fd, 'x');
    await pooled;
    closeSync(fd);
    port.postMessage({ idle, threadPool });
  } else {
    await grow();
    const window = native.loopPollStats().windowNs;
    const hits = native.loopPollStats().hits;
    let t = 0;
    const poller = native.createPoller(job.ping, () => {
      native.eventfdRead(job.ping);
      poller.close();
      const after = native.loopPollStats();
      port.postMessage({ window, waitedMs: performance.now() - t, hits: after.hits - hits });
    });
    poller.start(POLL_READABLE);
    // A watcher goes into epoll in the next wait; until then the loop does not spin.
    await new Promise((resolve) => setImmediate(resolve));
    t = performance.now();
    port.postMessage({ waiting: true });
  }
}

void main();
