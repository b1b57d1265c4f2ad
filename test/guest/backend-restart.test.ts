// Layer 3, backend restart: a Linux guest (QEMU TCG) runs a verified write/read loop on a
// vhost-user-blk disk while the test kills the `vhost-s3 blk` gateway with SIGKILL and
// starts a new one on the same socket, three times (up to eight, until a kill found
// requests to resubmit). QEMU reconnects (`-chardev
// socket,reconnect=1`), hands the new gateway the inflight region (INFLIGHT_SHMFD) and the
// rings; requests the killed gateway had taken are served again. The guest must see no
// I/O error (its loop and its kernel log) and every slot must read back the pattern last
// written to it, in the guest and on the host.
//
// The loop: 4 writers in parallel, each on its own 1 MiB slots, write a pattern with
// O_DIRECT and fsync (FLUSH), read it back with O_DIRECT and compare. At the end the guest
// drops its caches and compares every slot again.
import { expect } from 'chai';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

import { assertGuestSuccess, bootGuest, patternBytes, useGuestImage, type BootResult } from '../support/guest/index.js';
import { CliProcess, runCli, startBlkServer } from '../support/cli.js';
import { makeStoreRoot } from '../support/image-backend.js';
import { TmpDir, makeRawFile } from '../support/tmp.js';

const MiB = 1 << 20;
const SIZE = 64 * MiB;
const WRITERS = 4;
const SLOTS_PER_WRITER = 8;
const PATTERNS = 4;
/** Guest seconds the loop runs at least; the two restarts happen in the first part of it. */
const LOOP_SECONDS = 50;
/** Iterations (all writers together) between two kills. */
const ITERS_BETWEEN_KILLS = 12;
/**
 * How each kill lands: the gateway is stopped (SIGSTOP) while the guest queues requests,
 * woken (SIGCONT), and killed this many ms later — while it is serving what piled up, so
 * that requests are in flight at the kill rather than by luck. On a quiet machine the
 * pile-up is served within a few ms, so most delays are below that (sub-ms ones spin).
 */
const KILL_DELAYS_MS = [2, 0.5, 5, 1, 0.3, 3, 1.5, 0.8];
/** Kills at least this many; more (up to KILL_DELAYS_MS.length) until one had requests to resubmit. */
const MIN_KILLS = 3;

function resubmittedBy(g: CliProcess): number {
  let n = 0;
  for (const l of g.logLines()) if (l.msg === 'ring recovered from the inflight region') n += l.resubmit as number;
  return n;
}

function pattern(p: number): Buffer {
  return patternBytes(1000 + p, 'restart', 0, MiB);
}

/** The guest side: writers in the background, progress on the console, results at the end. */
function loopScript(): string {
  return `
wait_for /dev/vda 20 || { result vda FAIL; exit 1; }
echo 0 > /tmp/fails
writer() {
  w=$1; i=0; end=$(( $(date +%s) + ${LOOP_SECONDS} ))
  while [ $(date +%s) -lt $end ]; do
    slot=$(( w * ${SLOTS_PER_WRITER} + i % ${SLOTS_PER_WRITER} )); p=$(( (i + w) % ${PATTERNS} ))
    if ! dd if=/pat/$p.bin of=/dev/vda bs=256k seek=$(( slot * 4 )) oflag=direct conv=fsync,notrunc status=none; then
      echo "writer $w: write $i to slot $slot failed"; echo 1 >> /tmp/fails
    fi
    echo $p > /tmp/slot.$slot
    if ! dd if=/dev/vda of=/tmp/r.$w bs=256k skip=$(( slot * 4 )) count=4 iflag=direct status=none; then
      echo "writer $w: read $i of slot $slot failed"; echo 1 >> /tmp/fails
    elif ! cmp -s /tmp/r.$w /pat/$p.bin; then
      echo "writer $w: slot $slot does not hold pattern $p after write $i"; echo 1 >> /tmp/fails
    fi
    echo "@@ITER w$w.$i@@"
    i=$((i + 1))
  done
  echo $i > /tmp/iters.$w
}
result loop started
for w in $(seq 0 ${WRITERS - 1}); do writer $w & done
wait
sync; echo 3 > /proc/sys/vm/drop_caches
final=0
for s in $(seq 0 ${WRITERS * SLOTS_PER_WRITER - 1}); do
  [ -e /tmp/slot.$s ] || continue
  p=$(cat /tmp/slot.$s)
  dd if=/dev/vda of=/tmp/f bs=256k skip=$(( s * 4 )) count=4 iflag=direct status=none && cmp -s /tmp/f /pat/$p.bin || { echo "slot $s: not pattern $p at the end"; final=$((final + 1)); }
  echo "$s $p" >> /tmp/slots
done
result slots "$(cat /tmp/slots | tr '\\n' ',')"
result final_mismatches $final
result loop_failures $(( $(wc -l < /tmp/fails) - 1 ))
result iterations $(cat /tmp/iters.* | tr '\\n' '+')0
result io_errors $(dmesg | grep -ci -e 'I/O error' -e 'blk_update_request' -e 'critical medium' -e 'virtio_blk.*error' || true)
dmesg | grep -i -e 'I/O error' -e 'blk_update_request' | head -n 5
[ $final = 0 ] && [ "$(wc -l < /tmp/fails)" = 1 ]
`;
}

interface RestartRun {
  boot: BootResult;
  gateways: CliProcess[];
  /** Requests the restarted gateways served again (from their logs). */
  resubmitted: number;
}

describe('guest: the vhost-s3 blk gateway is killed and restarted under a running guest', function () {
  this.timeout(600_000);
  let dir: TmpDir;
  const gateways: CliProcess[] = [];

  useGuestImage();
  beforeEach(() => {
    dir = new TmpDir('vhost-s3-guest-restart-');
  });
  afterEach(async function () {
    const failed = this.currentTest?.state === 'failed';
    for (const g of gateways.splice(0)) {
      if (failed) console.log(g.describe());
      await g.kill();
    }
    dir.remove();
  });

  /** Boots the guest loop on `image`; kills and restarts the gateway while it runs. */
  async function run(image: string, extra: string[], env: Record<string, string> = {}): Promise<RestartRun> {
    const sock = dir.file('blk.sock');
    const mine: CliProcess[] = [];
    const start = async (): Promise<CliProcess> => {
      const g = await startBlkServer({ socket: sock, image, env, extra, queues: 2 });
      gateways.push(g);
      mine.push(g);
      return g;
    };
    await start();
    let iters = 0;
    let restarts: Promise<void> | null = null;
    let restartError: unknown = null;
    let guestDone = false;
    const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
    const restartAll = async (): Promise<void> => {
      let resubmitted = 0;
      for (const [k, delay] of KILL_DELAYS_MS.entries()) {
        if (k >= MIN_KILLS && resubmitted > 0) break;
        const at = iters;
        while (iters < at + ITERS_BETWEEN_KILLS && !guestDone) await sleep(50);
        if (guestDone) break; // the loop ended first: the checks below say whether enough kills landed
        const old = mine[mine.length - 1]!;
        old.proc.kill('SIGSTOP');
        await sleep(300);
        old.proc.kill('SIGCONT');
        if (delay >= 2) await sleep(delay);
        else for (const until = performance.now() + delay; performance.now() < until; ); // timers are too coarse
        old.proc.kill('SIGKILL');
        await old.exited;
        const fresh = await start();
        // QEMU reconnects within its 1 s retry; both rings recover before the next kill.
        await fresh.waitFor('QEMU to restart both rings', () =>
          new Set(fresh.logLines().filter((l) => l.msg === 'ring recovered from the inflight region').map((l) => l.queue)).size === 2, 60_000);
        resubmitted += resubmittedBy(fresh);
      }
    };
    const files: Record<string, Buffer> = {};
    for (let p = 0; p < PATTERNS; p++) files[`/pat/${p}.bin`] = pattern(p);
    const boot = await bootGuest({
      script: loopScript(),
      files,
      timeoutMs: 300_000,
      qemuArgs: ['-chardev', `socket,id=blk0,path=${sock},reconnect=1`, '-device', 'vhost-user-blk-pci,chardev=blk0,num-queues=2'],
      cpus: 2,
      onOutput: (text) => {
        iters += (text.match(/@@ITER /g) ?? []).length;
        if (restarts === null && iters > 0) restarts = restartAll().catch((err) => void (restartError = err));
      },
    });
    guestDone = true;
    await restarts;
    if (restartError !== null) throw restartError;
    const resubmitted = mine.reduce((n, g) => n + resubmittedBy(g), 0);
    return { boot, gateways: mine, resubmitted };
  }

  function checkGuest(r: RestartRun): Array<[number, number]> {
    const b = r.boot;
    if (b.exitCode !== 0) console.log(b.output.split('\n').filter((l) => /writer|slot|error/i.test(l)).slice(0, 20).join('\n'));
    assertGuestSuccess(b);
    expect(r.gateways.length, 'the restarts happened while the guest ran').to.be.at.least(MIN_KILLS + 1);
    expect(b.results.loop_failures, 'write/read/compare failures in the loop').to.equal('0');
    expect(b.results.final_mismatches).to.equal('0');
    expect(b.results.io_errors, 'I/O errors in the guest kernel log').to.equal('0');
    const total = (b.results.iterations ?? '').split('+').reduce((sum, n) => sum + Number(n || 0), 0); // "a+b+c+0" from the guest
    expect(total).to.be.greaterThan(3 * ITERS_BETWEEN_KILLS);
    // Every gateway got the inflight region from QEMU (GET_INFLIGHT_FD once, then SET_INFLIGHT_FD on each
    // connection), and every restarted one recovered both rings from it.
    for (const g of r.gateways) {
      expect(g.logLines().some((l) => l.msg === 'inflight region set'), `gateway ${g.pid} was handed the inflight region`).to.equal(true);
    }
    for (const g of r.gateways.slice(1)) {
      const rings = new Set(g.logLines().filter((l) => l.msg === 'ring recovered from the inflight region').map((l) => l.queue));
      expect([...rings].sort(), `gateway ${g.pid} recovered both rings`).to.deep.equal([0, 1]);
    }
    console.log(`      ${total} iterations, ${r.resubmitted} requests resubmitted after the kills, ${(b.totalMs / 1000).toFixed(1)} s`);
    expect(r.resubmitted, 'requests in flight at the kills were served again by the next gateway').to.be.greaterThan(0);
    return (b.results.slots ?? '').split(',').filter((s) => s !== '').map((s) => s.split(' ').map(Number) as [number, number]);
  }

  it('on a raw file: the guest loop ends without an I/O error and the file holds the last patterns', async () => {
    const raw = makeRawFile(dir.file('disk.raw'), SIZE);
    const r = await run(`file:${raw}`, []);
    const slots = checkGuest(r);
    expect(slots.length).to.be.greaterThan(0);
    const disk = readFileSync(raw);
    for (const [s, p] of slots) {
      expect(disk.subarray(s * MiB, (s + 1) * MiB).equals(pattern(p)), `slot ${s} holds pattern ${p} in the file`).to.equal(true);
    }
  });

  it('on an object image in a file: store (--writethrough): the lease is recovered and the export holds the last patterns', async () => {
    const root = makeStoreRoot(join(dir.path, 'store'));
    const locator = `file:${root}/images/vm`;
    const created = await runCli(['image', 'create', locator, '--size', '64M', '--chunk-size', '256K']);
    expect(created.code, created.stderr).to.equal(0);
    const r = await run(locator, ['--writethrough']);
    const slots = checkGuest(r);
    for (const g of r.gateways.slice(1)) {
      expect(g.stderr, 'the new gateway took over the killed one\'s lease').to.match(/taking over the image lease of a writer that died on this host/);
    }
    const last = r.gateways[r.gateways.length - 1]!;
    const st = await last.stop('SIGTERM');
    expect(st.code, last.describe()).to.equal(0);
    const out = dir.file('export.raw');
    const ex = await runCli(['image', 'export', locator, out]);
    expect(ex.code, ex.stderr).to.equal(0);
    const disk = readFileSync(out);
    for (const [s, p] of slots) {
      expect(disk.subarray(s * MiB, (s + 1) * MiB).equals(pattern(p)), `slot ${s} holds pattern ${p} in the image`).to.equal(true);
    }
  });
});
