// Layer 3 (real guest) against the reference peer: qemu-storage-daemon's
// vhost-user-blk export. This proves the guest harness and is the template
// for testing vhost-s3's own blk backend: swap startQsdBlk for our backend
// and rawFileBacking for a view of its store.

import { expect } from 'chai';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import {
  makeBlkCheckPlan,
  rawFileBacking,
  runBlkGuestChecks,
  startQsdBlk,
  vhostUserBlkArgs,
  type QsdBlk,
  useGuestImage,
} from '../support/guest/index.js';

const SIZE = 64 * 1024 * 1024;

describe('guest: virtio-blk via qemu-storage-daemon (vhost-user-blk)', function () {
  this.timeout(180_000);
  let dir: string;
  let qsd: QsdBlk | undefined;

  useGuestImage();
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'vhost-s3-qsd-blk-'));
  });

  afterEach(async () => {
    await qsd?.stop();
    qsd = undefined;
  });

  after(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('reads, writes and flushes a 64 MiB disk; the raw file holds the data', async () => {
    const raw = join(dir, 'disk.raw');
    const fh = await open(raw, 'w');
    await fh.truncate(SIZE);
    await fh.close();
    const backing = rawFileBacking(raw);
    const plan = makeBlkCheckPlan({ sizeBytes: SIZE });

    qsd = await startQsdBlk({ image: raw, socket: join(dir, 'blk.sock') });
    const { boot } = await runBlkGuestChecks({ plan, backing, qemuArgs: vhostUserBlkArgs(qsd.socket) });

    expect(boot.exitCode).to.equal(0);
    expect(boot.results['blk.sectors']).to.equal(String(SIZE / 512));
    expect(boot.results['blk.write_cache']).to.equal('write back'); // so the guest sends FLUSH
    expect(boot.results['blk.readback.last']).to.equal('ok');
    console.log(`      guest boot ${(boot.bootMs! / 1000).toFixed(1)} s, whole run ${(boot.totalMs / 1000).toFixed(1)} s`);
  });
});
