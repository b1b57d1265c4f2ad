import { expect } from 'chai';
import { Worker } from 'node:worker_threads';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { native, POLL_READABLE, type LoopPollStats } from '../../src/native/index.js';

const WORKER = fileURLToPath(new URL('./loop-poll-worker.js', import.meta.url));

/** Runs a scenario of loop-poll-worker.ts on its own event loop; `onMessage` sees each message until it returns a result. */
async function inWorker<T>(job: Record<string, unknown>, onMessage: (m: Record<string, unknown>) => T | undefined): Promise<T> {
  const w = new Worker(WORKER, { workerData: { ping: -1, pong: -1, rounds: 0, fifo: '', ...job } });
  // Listened for from the start: the worker may end by itself before the finally below.
  const exited = once(w, 'exit').catch(() => undefined);
  try {
    return await new Promise<T>((resolve, reject) => {
      w.on('message', (m: Record<string, unknown>) => {
        try {
          const r = onMessage(m);
          if (r !== undefined) resolve(r);
        } catch (err) {
          reject(err as Error);
        }
      });
      w.on('error', reject);
      w.on('exit', (code) => reject(new Error(`worker exited with ${code}`)));
    });
  } finally {
    // Every scenario ends by itself. terminate() is only the fallback: stopping a thread
    // inside an addon callback makes node-addon-api abort the process.
    const timer = setTimeout(() => void w.terminate(), 10_000);
    await exited;
    clearTimeout(timer);
  }
}

describe('native: event loop busy-polling (setLoopPoll)', () => {
  it('polls while requests come back quickly, and stops polling once the loop idles', async () => {
    const ping = native.eventfd(0);
    const pong = native.eventfd(0);
    const rounds = 2000;
    let sent = 0;
    const poller = native.createPoller(pong, () => {
      native.eventfdRead(pong);
      if (sent < rounds) {
        sent++;
        native.eventfdWrite(ping, 1);
      }
    });
    poller.start(POLL_READABLE);
    try {
      // A 1 ms maximum: the test runner's turnaround (tens of microseconds) fits in it.
      const r = await inWorker({ scenario: 'pingpong', maxNs: 1_000_000, ping, pong, rounds }, (m) => {
        if (m.ready === true) {
          sent++;
          native.eventfdWrite(ping, 1);
          return undefined;
        }
        return m as { busy: LoopPollStats; idle: LoopPollStats };
      });
      expect(r.busy.maxNs).to.equal(1_000_000);
      expect(r.busy.hits, 'requests caught by the spin').to.be.greaterThan(rounds / 2);
      expect(r.busy.windowNs).to.be.greaterThan(0);
      // Each wait longer than the maximum halves the window; twenty of them end polling.
      expect(r.idle.windowNs).to.equal(0);
      const spinsWhileIdle = r.idle.spins - r.busy.spins;
      expect(spinsWhileIdle).to.be.lessThan(20);
    } finally {
      poller.close();
      native.close(ping);
      native.close(pong);
    }
  });

  it('never holds a timer past its time, however long the window', async () => {
    const r = await inWorker({ scenario: 'timer', maxNs: 1e9 }, (m) => m as { window: number; lateMs: number });
    expect(r.window, 'the window grew to a second').to.be.at.least(5e8);
    expect(r.lateMs).to.be.lessThan(300);
  });

  it('ends the spin as soon as a watched fd is ready', async () => {
    const ping = native.eventfd(0);
    try {
      const r = await inWorker({ scenario: 'wake', maxNs: 1e9, ping }, (m) => {
        if (m.waiting === true) {
          setTimeout(() => native.eventfdWrite(ping, 1), 20);
          return undefined;
        }
        return m as { window: number; waitedMs: number; hits: number };
      });
      expect(r.window).to.be.at.least(5e8);
      expect(r.hits).to.equal(1);
      expect(r.waitedMs).to.be.lessThan(400);
    } finally {
      native.close(ping);
    }
  });

  it('does not spin while the process waits for its own work (a thread-pool request)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'loop-poll-'));
    try {
      const fifo = join(dir, 'fifo');
      execFileSync('mkfifo', [fifo]);
      const r = await inWorker({ scenario: 'busy', maxNs: 1e9, fifo }, (m) => m as { idle: number; threadPool: number });
      expect(r.idle, 'timer waits with nothing in flight spin').to.be.at.least(4);
      expect(r.threadPool, 'a thread-pool read in flight').to.equal(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('does not spin while the work counter it is given is not 0 (requests being served, S3 reads)', async () => {
    const r = await inWorker({ scenario: 'counted', maxNs: 1e9 }, (m) => m as { serving: number; idle: number });
    expect(r.serving, 'one piece of work in flight').to.equal(0);
    expect(r.idle, 'none in flight').to.be.at.least(4);
  });

  it('refuses a window that is not 0 to 1 s in whole nanoseconds, and a counter that is not an Int32Array', () => {
    for (const bad of [-1, 1.5, 1e9 + 1, NaN]) expect(() => native.setLoopPoll(bad), String(bad)).to.throw(/maxNs/);
    for (const bad of [new Int32Array(0), new Uint32Array(1), [0]]) {
      expect(() => native.setLoopPoll(0, bad as Int32Array)).to.throw(/workInFlight/);
    }
  });
});
