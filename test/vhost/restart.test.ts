// Backend restart without the frontend noticing (INFLIGHT_SHMFD): our frontend keeps a
// verified read/write load on a `vhost-s3 blk` child, the child is killed with SIGKILL
// while requests are in flight (stopped, woken, killed a few ms later; restarted until a
// kill found requests to resubmit) and a new one is started on the same socket; the frontend
// reconnects, replays the inflight region and the ring state (base = used.idx, as QEMU),
// and every request completes exactly once with the right data.
import { expect } from 'chai';
import { readFileSync } from 'node:fs';
import { BlkClient, STATUS_DISCONNECTED } from '../../src/frontend/blk-client.js';
import { BlkStatus } from '../../src/blk/protocol.js';
import type { SharedBuffer } from '../../src/frontend/memory.js';
import { CliProcess, startBlkServer } from '../support/cli.js';
import { TmpDir, makeRawFile, patternBytes } from '../support/tmp.js';
import { sleep, waitFor } from '../support/wait.js';

const BLOCK = 4096;
const BLOCKS = 2048; // 8 MiB disk
const DEPTH = 48; // requests kept in flight (over 2 queues)
/** Restarts at least this many times, and on until a restart had requests to resubmit (at most MAX_RESTARTS). */
const RESTARTS = 3;
const MAX_RESTARTS = 8;

interface Op {
  readonly id: number;
  readonly kind: 'read' | 'write';
  readonly block: number;
  readonly seed: number;
}

describe('vhost: backend restart with requests in flight (INFLIGHT_SHMFD)', function () {
  this.timeout(120_000);
  let dir: TmpDir;
  const servers: CliProcess[] = [];
  let client: BlkClient | null = null;

  beforeEach(() => {
    dir = new TmpDir('vhost-s3-restart-');
  });
  afterEach(async function () {
    const failed = this.currentTest?.state === 'failed';
    await client?.close();
    client = null;
    for (const s of servers.splice(0)) {
      if (failed) console.log(s.describe());
      await s.kill();
    }
    dir.remove();
  });

  it(`kill -9 and restart of vhost-s3 blk ${RESTARTS} times under load: nothing lost, nothing completed twice, data verified`, async () => {
    const raw = makeRawFile(dir.file('disk.raw'), BLOCKS * BLOCK);
    const sock = dir.file('blk.sock');
    const start = async (): Promise<CliProcess> => {
      const s = await startBlkServer({ socket: sock, image: `file:${raw}`, queues: 2 });
      servers.push(s);
      return s;
    };
    await start();
    const c = await BlkClient.connect(sock, { queues: 2, queueSize: 64, reconnectMs: 30_000 });
    client = c;
    expect(c.virtio.inflightRegion, 'INFLIGHT_SHMFD negotiated').not.to.equal(null);

    // The model: the seed of the last write that completed per block (0 = never written).
    const written = new Int32Array(BLOCKS);
    const busy = new Uint8Array(BLOCKS);
    const completions = new Map<number, number>(); // op id -> times done() was called
    const failures: string[] = [];
    let nextId = 0;
    let nextSeed = 1;
    let issuing = true;
    let outstanding = 0;
    let done = 0;
    const free: SharedBuffer[] = Array.from({ length: DEPTH }, () => c.allocBuffer(BLOCK));

    const issue = (): void => {
      while (issuing && free.length > 0) {
        let block = Math.floor(Math.random() * BLOCKS);
        while (busy[block] === 1) block = (block + 1) % BLOCKS;
        busy[block] = 1;
        const buf = free.pop()!;
        const op: Op = { id: nextId++, kind: Math.random() < 0.6 ? 'write' : 'read', block, seed: nextSeed++ };
        completions.set(op.id, 0);
        outstanding++;
        const queue = op.id % 2;
        const finish = (status: number): void => {
          const n = completions.get(op.id)! + 1;
          completions.set(op.id, n);
          if (n > 1) failures.push(`op ${op.id} completed ${n} times`);
          if (status !== BlkStatus.Ok) failures.push(`${op.kind} of block ${block}: status ${status}`);
          else if (op.kind === 'write') written[block] = op.seed;
          else if (written[block] !== 0 && !Buffer.from(buf.bytes).equals(Buffer.from(patternBytes(written[block]!, BLOCK)))) {
            failures.push(`read of block ${block}: not the data of write seed ${written[block]}`);
          } else if (written[block] === 0 && buf.bytes.some((b) => b !== 0)) failures.push(`read of block ${block}: not zeros`);
          busy[block] = 0;
          free.push(buf);
          outstanding--;
          done++;
          queueMicrotask(issue);
        };
        if (op.kind === 'write') {
          buf.bytes.set(patternBytes(op.seed, BLOCK));
          c.write(queue, block * BLOCK, buf, finish);
        } else {
          buf.bytes.fill(0xee);
          c.read(queue, block * BLOCK, buf, finish);
        }
      }
    };
    issue();

    let resubmitted = 0;
    const state = (): string => `(${done} done, ${outstanding} outstanding, ${c.virtio.reconnects} reconnects, failures: ${failures.slice(0, 3).join('; ')})`;
    for (let r = 0; r < RESTARTS || (resubmitted === 0 && r < MAX_RESTARTS); r++) {
      const before = done;
      await waitFor(() => done >= before + 300, 30_000, `the load to make progress ${state()}`);
      const old = servers[servers.length - 1]!;
      // Stopped while the frontend fills the rings, woken, and killed while it serves what
      // piled up: requests are then in flight at the kill by design rather than by luck.
      old.proc.kill('SIGSTOP');
      await sleep(100);
      old.proc.kill('SIGCONT');
      await sleep(1 + (r % 4) * 3);
      old.proc.kill('SIGKILL');
      const st = await old.exited;
      expect(st.signal).to.equal('SIGKILL');
      const fresh = await start();
      await waitFor(() => c.virtio.reconnects === r + 1, 30_000, `the frontend to reconnect ${state()}`);
      await waitFor(() => done >= before + 600, 30_000, `the load to go on after the restart ${state()}`);
      for (const l of fresh.logLines()) {
        if (l.msg === 'ring recovered from the inflight region') resubmitted += l.resubmit as number;
      }
      expect(failures, failures.slice(0, 5).join('\n')).to.deep.equal([]);
    }
    issuing = false;
    await waitFor(() => outstanding === 0, 30_000, `outstanding requests to complete ${state()}`);
    expect(failures, failures.slice(0, 5).join('\n')).to.deep.equal([]);
    expect(c.disconnected).to.equal(false);
    expect(c.broken, 'no impossible completion (a duplicate would be one)').to.equal(false);
    expect([...completions.values()].every((n) => n === 1), 'every request completed exactly once').to.equal(true);
    expect(resubmitted, 'requests in flight at a kill were resubmitted by the next gateway').to.be.greaterThan(0);

    // The file holds exactly what the frontend was told is written.
    const image = readFileSync(raw);
    for (let b = 0; b < BLOCKS; b++) {
      const want = written[b] === 0 ? new Uint8Array(BLOCK) : patternBytes(written[b]!, BLOCK);
      if (!image.subarray(b * BLOCK, (b + 1) * BLOCK).equals(want)) expect.fail(`block ${b} of the image differs from the last completed write`);
    }
  });

  it('a frontend that does not ask for INFLIGHT_SHMFD is served as before (no region, no reconnect)', async () => {
    const raw = makeRawFile(dir.file('disk.raw'), BLOCKS * BLOCK);
    const sock = dir.file('blk.sock');
    servers.push(await startBlkServer({ socket: sock, image: `file:${raw}` }));
    const c = await BlkClient.connect(sock, { inflight: false });
    client = c;
    expect(c.virtio.inflightRegion).to.equal(null);
    const buf = c.allocBuffer(BLOCK);
    buf.bytes.set(patternBytes(7, BLOCK));
    expect(await c.writeAsync(0, 0, buf)).to.equal(BlkStatus.Ok);
    servers[0]!.proc.kill('SIGKILL');
    await waitFor(() => c.disconnected, 10_000, 'the disconnect');
    expect(await c.writeAsync(0, 0, buf)).to.equal(STATUS_DISCONNECTED);
  });
});
