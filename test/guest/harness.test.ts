// Self-tests of the guest harness (test/support/guest): results, files,
// exit status, and that failures come back with what the guest printed.

import { expect } from 'chai';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import {
  bootGuest,
  GuestError,
  makeBlkCheckPlan,
  rawFileBacking,
  runBlkGuestChecks,
  startQsdBlk,
  verifyBlkBacking,
  vhostUserBlkArgs,
  type QsdBlk,
  useGuestImage,
} from '../support/guest/index.js';

async function rejection(p: Promise<unknown>): Promise<Error> {
  try {
    await p;
  } catch (e) {
    return e as Error;
  }
  throw new Error('expected a rejection');
}

describe('guest harness', function () {
  this.timeout(180_000);
  let dir: string;
  let qsd: QsdBlk | undefined;

  useGuestImage();
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'vhost-s3-harness-'));
  });
  afterEach(async () => {
    await qsd?.stop();
    qsd = undefined;
  });
  after(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('runs the script with its files and returns exit status, results and console', async () => {
    const r = await bootGuest({
      files: { '/data/hello.txt': 'hello from the host\n' },
      script: [
        'result kernel "$(uname -r)"',
        'result hello "$(cat /data/hello.txt)"',
        'result modules "$(cut -d" " -f1 /proc/modules | sort | tr "\\n" ,)"',
        'echo some text for the console',
        'exit 7',
      ].join('\n'),
    });
    expect(r.exitCode).to.equal(7);
    expect(r.results.hello).to.equal('hello from the host');
    expect(r.results.kernel).to.match(/^6\.1\./);
    expect(r.results.modules).to.include('virtio_blk').and.include('virtiofs');
    expect(r.output).to.include('some text for the console');
    expect(r.bootMs).to.be.a('number');
  });

  it('kills QEMU on timeout and reports the console tail', async () => {
    const e = await rejection(bootGuest({ script: 'echo now hanging; sleep 600', timeoutMs: 15_000 }));
    expect(e).to.be.instanceOf(GuestError);
    expect(e.message).to.include('timed out').and.include('SeaBIOS');
  });

  it('reports QEMU errors with its stderr', async () => {
    const e = await rejection(bootGuest({ script: 'true', qemuArgs: ['-device', 'no-such-device-xyz'] }));
    expect(e).to.be.instanceOf(GuestError);
    expect(e.message).to.include('no-such-device-xyz');
  });

  it('blk checks catch a disk that does not hold the expected data', async () => {
    const raw = join(dir, 'bad.raw');
    const fh = await open(raw, 'w');
    await fh.truncate(32 * 1024 * 1024);
    await fh.close();
    const backing = rawFileBacking(raw);
    const plan = makeBlkCheckPlan({ sizeBytes: 32 * 1024 * 1024 });
    qsd = await startQsdBlk({ image: raw, socket: join(dir, 'bad.sock') });
    // Skipping the preload: the guest must notice the missing data.
    const e = await rejection(runBlkGuestChecks({ plan, backing, doPreload: false, qemuArgs: vhostUserBlkArgs(qsd.socket) }));
    expect(e).to.be.instanceOf(GuestError);
    expect(e.message).to.include('blk.preread.early').and.include('@@RESULT blk.preread.early=FAIL@@');
    // And the host-side verification notices a corrupted sector, naming the region.
    const e2 = await rejection(verifyBlkBacking(plan, backing));
    expect(e2.message).to.include('early (preload');
  });
});
