// SIGTERM/SIGINT while a frontend keeps requests in flight: vhost-s3 completes what it has
// started, flushes, removes its socket and exits 0; the frontend gets every completion the
// backend published, then learns that the backend is gone (STATUS_DISCONNECTED) instead of
// waiting forever; `vhost-s3 bench blk` ends with the results so far instead of hanging.
import { expect } from 'chai';
import { readFileSync } from 'node:fs';

import { BlkClient, STATUS_DISCONNECTED } from '../../src/frontend/blk-client.js';
import { BlkStatus } from '../../src/blk/protocol.js';
import { CliProcess, isSocket, startBlkServer } from '../support/cli.js';
import { TmpDir, makeRawFile, patternBytes } from '../support/tmp.js';
import { setTimeout as sleep } from 'node:timers/promises';

const MiB = 1 << 20;

describe('cli: shutdown while a frontend is busy', function () {
  this.timeout(90_000);
  let dir: TmpDir;
  let server: CliProcess | null = null;
  let bench: CliProcess | null = null;
  let client: BlkClient | null = null;

  beforeEach(() => {
    dir = new TmpDir('vhost-s3-load-');
  });
  afterEach(async () => {
    await client?.close();
    client = null;
    await bench?.kill();
    bench = null;
    await server?.kill();
    server = null;
    dir.remove();
  });

  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    it(`${signal} during a bench blk --verify load: vhost-s3 exits 0, bench reports 0 errors and the disconnect`, async () => {
      const raw = makeRawFile(dir.file('disk.raw'), 32 * MiB);
      const sock = dir.file('load.sock');
      server = await startBlkServer({ socket: sock, image: `file:${raw}`, queues: 2 });
      bench = new CliProcess(['bench', 'blk', '--socket', sock, '--rw', 'randrw', '--bs', '4k', '--iodepth', '16', '--queues', '2',
        '--runtime', '60', '--verify', '--json', '--log-level', 'warn']);
      await server.waitFor('the bench to connect', (_o, e) => e.includes('vhost-user frontend connected'));
      await sleep(1500); // let the load run
      expect(bench.running, bench.describe()).to.equal(true);

      const st = await server.stop(signal, 15_000);
      expect(st.code, server.describe()).to.equal(0);
      expect(st.ms, 'shutdown time under load').to.be.below(5000);
      expect(isSocket(sock), 'socket removed').to.equal(false);
      server.logLines(); // JSON lines only

      const b = await Promise.race([bench.exited, sleep(15_000).then(() => null)]);
      expect(b, `bench still running 15 s after the backend exited\n${bench.describe()}`).not.to.equal(null);
      expect(b!.code, bench.describe()).to.equal(1);
      const res = JSON.parse(bench.stdout) as { errors: number; ios: number; verified_bytes: number; disconnected?: boolean };
      expect(res.errors, 'errors before the disconnect').to.equal(0);
      expect(res.ios).to.be.greaterThan(100);
      expect(res.verified_bytes).to.be.greaterThan(0);
      expect(res.disconnected).to.equal(true);
      const lines = bench.stderr.trim().split('\n');
      expect(lines, bench.stderr).to.have.length(1);
      expect(lines[0]).to.match(/^vhost-s3: the backend closed the connection/);
      expect(bench.stderr).not.to.match(/verify failed/);
    });
  }

  it('every write completed before the shutdown is in the file; the rest complete with STATUS_DISCONNECTED', async () => {
    const BS = 4096;
    const BLOCKS = (32 * MiB) / BS;
    const raw = makeRawFile(dir.file('disk.raw'), 32 * MiB);
    const sock = dir.file('w.sock');
    server = await startBlkServer({ socket: sock, image: `file:${raw}`, queues: 2, logLevel: 'warn' });
    const c = await BlkClient.connect(sock, { queues: 2, queueSize: 64, memorySize: 96 * MiB });
    client = c;
    const ok: number[] = [];
    const statuses = new Map<number, number>();
    let next = 0;
    let inflight = 0;
    let signalled = false;
    let allDone!: () => void;
    const drained = new Promise<void>((resolve) => (allDone = resolve));
    const issue = (queue: number): void => {
      if (next >= BLOCKS) {
        if (inflight === 0) allDone();
        return;
      }
      const block = next++;
      const buf = c.allocBuffer(BS);
      buf.bytes.set(patternBytes(block + 1, BS));
      inflight++;
      c.write(queue, block * BS, buf, (status) => {
        inflight--;
        statuses.set(status, (statuses.get(status) ?? 0) + 1);
        if (status === BlkStatus.Ok) ok.push(block);
        if (status === STATUS_DISCONNECTED || next >= BLOCKS) {
          if (inflight === 0) allDone();
          return;
        }
        issue(queue);
      });
    };
    for (let q = 0; q < 2; q++) for (let d = 0; d < 32; d++) issue(q);
    // Signal once the load is well under way, from inside a completion burst.
    while (ok.length < 500) await sleep(5);
    signalled = true;
    const exit = server.stop('SIGTERM');
    const gone = await Promise.race([drained.then(() => true), sleep(15_000).then(() => false)]);
    expect(gone, `requests still in flight 15 s after SIGTERM: ${inflight} (statuses ${JSON.stringify([...statuses])})`).to.equal(true);
    const st = await exit;
    expect(signalled).to.equal(true);
    expect(st.code, server.describe()).to.equal(0);
    expect(next, 'the load was still running at the signal').to.be.below(BLOCKS);
    // Only two outcomes: done, or not started because the backend went away.
    expect([...statuses.keys()].sort(), JSON.stringify([...statuses])).to.deep.equal(
      statuses.has(STATUS_DISCONNECTED) ? [STATUS_DISCONNECTED, BlkStatus.Ok].sort() : [BlkStatus.Ok],
    );
    expect(statuses.get(STATUS_DISCONNECTED) ?? 0, 'requests in flight at the disconnect').to.be.at.most(64);
    expect(c.disconnected).to.equal(true);
    // A request after the disconnect fails at once rather than hanging.
    expect(await c.readAsync(0, 0, c.allocBuffer(512))).to.equal(STATUS_DISCONNECTED);
    const file = readFileSync(raw);
    for (const block of ok) {
      expect(file.subarray(block * BS, (block + 1) * BS).equals(Buffer.from(patternBytes(block + 1, BS))), `block ${block} (completed OK) is in the file`).to.equal(true);
    }
  });
});
