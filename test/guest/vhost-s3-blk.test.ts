// Layer 3 for vhost-s3's own blk backend: a real Linux guest (QEMU TCG) drives `vhost-s3 blk`
// — started as a child process through the real command line — with its own virtio_blk
// driver. Two QEMU runs against the same running vhost-s3, each boot combining several
// checks to keep the time down:
//
//   QEMU #1 (2 CPUs, num-queues=2, bootindex=1, guest reboots are resets):
//     phase A: the shared blk check plan (patterns at several offsets incl. the last
//              sector, sizes, FLUSH), the serial, 2 hardware queues with parallel I/O
//              pinned to each CPU; then `reboot -f` — QEMU resets the device on the same
//              vhost-user connection (SeaBIOS, then Linux, renegotiate);
//     phase B: after the reboot, everything phase A wrote reads back.
//   QEMU #2 (a new process, so a new connection to the same vhost-s3) with a second,
//     --readonly vhost-s3 disk: the data of QEMU #1 is there; DISCARD punches holes;
//     the read-only disk shows ro=1 and refuses writes.
//
// SeaBIOS: with -kernel, SeaBIOS still probes every virtio-blk disk at POST (with or
// without a bootindex) and reads it with direct descriptors and without EVENT_IDX, then
// stops the ring; Linux then renegotiates on the same connection and uses indirect
// descriptors. (bootindex=0 cannot be used with -kernel: QEMU's linuxboot ROM has it.)
// The backend's debug log shows both and is checked below.
import { expect } from 'chai';
import { createHash } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';

import {
  blkGuestFiles,
  blkGuestScript,
  bootGuest,
  checkBlkGuestResults,
  GUEST_PRELUDE,
  makeBlkCheckPlan,
  patternBytes,
  preloadBlkBacking,
  rawFileBacking,
  verifyBlkBacking,
  vhostUserBlkArgs,
  type BlkCheckPlan,
  type BootResult,
  useGuestImage,
} from '../support/guest/index.js';
import { CliProcess, startBlkServer } from '../support/cli.js';
import { TmpDir, makeRawFile, writeAt } from '../support/tmp.js';

const MiB = 1 << 20;
const SIZE = 64 * MiB;
const SERIAL = 'VHS3-GUEST-DISK1';
const RO_SERIAL = 'VHS3-GUEST-RO';
/** Written by phase A; its presence tells the script that it runs after the reboot. */
const MARKER = 'VHS3-PHASE-B';
const MARKER_OFFSET = 60 * MiB;
/** Parallel writers, one per CPU (and so one per hardware queue). */
const PAR = [
  { name: 'par0', offset: 8 * MiB, length: 4 * MiB },
  { name: 'par1', offset: 12 * MiB, length: 4 * MiB },
];
/** Preloaded by the host, discarded by the guest in QEMU #2. */
const DISCARD = { offset: 40 * MiB, length: 16 * MiB };
/** A region of the read-only disk. */
const RO_REGION = { offset: MiB, length: 64 * 1024 };

const VIRTIO_RING_F_INDIRECT_DESC = 1n << 28n;
const VIRTIO_RING_F_EVENT_IDX = 1n << 29n;
const VIRTIO_BLK_F_MQ = 1n << 12n;

function sha256(path: string): string {
  return createHash('sha256').update(readFileSync(path)).digest('hex');
}

/** `dd` reading [offset, offset+length) of `dev` with O_DIRECT into `out`, in the largest block size that fits (512 B to 1 MiB). */
function ddRead(dev: string, offset: number, length: number, out: string): string {
  let bs = MiB;
  while (bs > 512 && (offset % bs !== 0 || length % bs !== 0)) bs /= 2;
  return `dd if=${dev} of=${out} bs=${bs} skip=${offset / bs} count=${length / bs} iflag=direct status=none`;
}

/** Checks, in the guest, that `dev` holds the file `want` at `offset`; result KEY ok|FAIL. */
function guestCompare(key: string, dev: string, offset: number, length: number, want: string): string {
  return `${ddRead(dev, offset, length, '/tmp/cmp.bin')} && cmp -s /tmp/cmp.bin ${want} && result ${key} ok || { result ${key} FAIL; fails=$((fails + 1)); }; rm -f /tmp/cmp.bin`;
}

/** Sums the per-CPU counts of the /proc/interrupts lines the guest reported, by virtio queue name. */
function irqCounts(report: string | undefined): Record<string, number> {
  const out: Record<string, number> = {};
  for (const line of (report ?? '').split(';')) {
    const f = line.trim().split(/\s+/);
    const name = f[f.length - 1];
    if (!name || !/req\.\d+$/.test(name)) continue;
    let n = 0;
    for (const x of f.slice(1)) {
      if (!/^\d+$/.test(x)) break;
      n += Number(x);
    }
    out[name.replace(/^virtio\d+-/, '')] = n;
  }
  return out;
}

function fileFor(r: { name: string }): string {
  return `/blkcheck/${r.name}.bin`;
}

function phaseScripts(plan: BlkCheckPlan): string {
  const dev = '/dev/vda';
  const writes = plan.regions.filter((r) => r.kind !== 'zero');
  const L: string[] = [];
  L.push('fails=0');
  L.push(`wait_for ${dev} 20 || { result vda FAIL; exit 1; }`);
  L.push(`marker=$(dd if=${dev} bs=512 skip=${MARKER_OFFSET / 512} count=1 iflag=direct status=none | head -c ${MARKER.length})`);
  L.push(`if [ "$marker" != "${MARKER}" ]; then`);
  // ---- phase A ----
  L.push('  result a.started 1');
  L.push('  sh /blkcheck.sh; result a.blkcheck_rc $?');
  L.push('  result a.serial "$(cat /sys/block/vda/serial)"');
  L.push('  result a.nproc "$(nproc)"');
  L.push('  result a.mq "$(ls /sys/block/vda/mq | tr \'\\n\' \' \')"');
  L.push(`  result a.irq_before "$(grep -E 'virtio[0-9]+-req' /proc/interrupts | tr -s ' ' | tr '\\n' ';')"`);
  // One writer per CPU, then each region read back from the other CPU.
  PAR.forEach((p, cpu) => {
    L.push(`  ( taskset -c ${cpu} dd if=${fileFor(p)} of=${dev} bs=64k seek=${p.offset / 65536} count=${p.length / 65536} oflag=direct conv=notrunc status=none && result a.${p.name}.write ok || result a.${p.name}.write FAIL ) &`);
  });
  L.push('  wait');
  PAR.forEach((p, cpu) => {
    const other = 1 - cpu;
    L.push(`  ( taskset -c ${other} dd if=${dev} of=/tmp/${p.name}.rb bs=64k skip=${p.offset / 65536} count=${p.length / 65536} iflag=direct status=none ) &`);
  });
  L.push('  wait');
  for (const p of PAR) L.push(`  cmp -s /tmp/${p.name}.rb ${fileFor(p)} && result a.${p.name}.read ok || result a.${p.name}.read FAIL; rm -f /tmp/${p.name}.rb`);
  L.push(`  result a.irq_after "$(grep -E 'virtio[0-9]+-req' /proc/interrupts | tr -s ' ' | tr '\\n' ';')"`);
  L.push(`  printf '${MARKER}' | dd of=${dev} bs=512 seek=${MARKER_OFFSET / 512} conv=sync,notrunc oflag=direct status=none && result a.marker ok || result a.marker FAIL`);
  L.push('  sync; blockdev --flushbufs ' + dev);
  L.push('  echo "phase A done: rebooting"');
  L.push('  reboot -f');
  L.push('  sleep 60; exit 99');
  L.push('fi');
  // ---- phase B: after an in-guest reboot (device reset on the same connection) ----
  L.push('result b.started 1');
  L.push('result b.serial "$(cat /sys/block/vda/serial)"');
  L.push('result b.mq "$(ls /sys/block/vda/mq | wc -l)"');
  for (const r of writes) L.push(guestCompare(`b.${r.name}`, dev, r.offset, r.length, fileFor(r)));
  for (const p of PAR) L.push(guestCompare(`b.${p.name}`, dev, p.offset, p.length, fileFor(p)));
  L.push('result b.failures "$fails"');
  L.push('[ "$fails" = 0 ]');
  return L.join('\n') + '\n';
}

function secondQemuScript(plan: BlkCheckPlan): string {
  const writes = plan.regions.filter((r) => r.kind !== 'zero');
  const L: string[] = [];
  L.push('fails=0');
  L.push('wait_for /dev/vda 20 && wait_for /dev/vdb 20 || { result disks FAIL; exit 1; }');
  // Find the disks by their serials rather than by PCI order.
  L.push('RW=; RO=');
  L.push('for d in vda vdb; do');
  L.push(`  case "$(cat /sys/block/$d/serial)" in ${SERIAL}) RW=$d;; ${RO_SERIAL}) RO=$d;; esac`);
  L.push('done');
  L.push('result c.rw "$RW"; result c.ro_dev "$RO"');
  L.push('[ -n "$RW" ] && [ -n "$RO" ] || exit 1');
  // What QEMU #1 wrote is there.
  for (const r of writes) L.push(guestCompare(`c.${r.name}`, '/dev/$RW', r.offset, r.length, fileFor(r)));
  for (const p of PAR) L.push(guestCompare(`c.${p.name}`, '/dev/$RW', p.offset, p.length, fileFor(p)));
  L.push(`dd if=/dev/$RW bs=512 skip=${MARKER_OFFSET / 512} count=1 iflag=direct status=none | head -c ${MARKER.length} > /tmp/marker`);
  L.push(`[ "$(cat /tmp/marker)" = "${MARKER}" ] && result c.marker ok || result c.marker FAIL`);
  // The preloaded region before the discard, then DISCARD, then zeros.
  L.push(guestCompare('c.discard_before', '/dev/$RW', DISCARD.offset, DISCARD.length, '/blkcheck/discard.bin'));
  L.push('result c.discard_max "$(cat /sys/block/$RW/queue/discard_max_bytes)"');
  L.push(`blkdiscard -o ${DISCARD.offset} -l ${DISCARD.length} /dev/$RW; result c.discard_rc $?`);
  L.push(`dd if=/dev/zero of=/tmp/zeros bs=1M count=${DISCARD.length / MiB} status=none`);
  L.push(guestCompare('c.discard_zeros', '/dev/$RW', DISCARD.offset, DISCARD.length, '/tmp/zeros'));
  L.push('rm -f /tmp/zeros');
  // The read-only disk.
  L.push('result c.ro "$(cat /sys/block/$RO/ro)"');
  L.push('result c.getro "$(blockdev --getro /dev/$RO)"');
  L.push(guestCompare('c.ro_read', '/dev/$RO', RO_REGION.offset, RO_REGION.length, '/blkcheck/ro.bin'));
  L.push(`dd if=/dev/zero of=/dev/$RO bs=4096 seek=${RO_REGION.offset / 4096} count=1 oflag=direct conv=notrunc status=none 2>/tmp/ro.err; result c.ro_write_rc $?`);
  L.push('result c.ro_write_err "$(head -n 1 /tmp/ro.err)"');
  L.push('blockdev --setrw /dev/$RO 2>/dev/null; ' + `dd if=/dev/zero of=/dev/$RO bs=4096 seek=${RO_REGION.offset / 4096} count=1 oflag=direct conv=notrunc status=none 2>/dev/null; result c.ro_write_after_setrw_rc $?`);
  L.push('blkdiscard /dev/$RO 2>/dev/null; result c.ro_discard_rc $?');
  L.push('result c.failures "$fails"');
  L.push('[ "$fails" = 0 ]');
  return L.join('\n') + '\n';
}

interface LogLine {
  msg?: string;
  session?: number;
  features?: string;
  queue?: number;
  base?: number;
}

describe('guest: virtio-blk via vhost-s3 blk (CLI child process)', function () {
  this.timeout(420_000);
  let dir: TmpDir;
  let rw: CliProcess | null = null;
  let ro: CliProcess | null = null;

  useGuestImage();
  before(() => {
    dir = new TmpDir('vhost-s3-guest-blk-');
  });

  after(async () => {
    await rw?.kill();
    await ro?.kill();
    dir?.remove();
  });

  afterEach(function () {
    if (this.currentTest?.state === 'failed') {
      for (const p of [rw, ro]) if (p) console.log(`--- ${p.describe()}`);
    }
  });

  it('two QEMU runs against one running vhost-s3: data checks, serial, multiqueue, reboot, reconnect, discard, read-only', async () => {
    const raw = makeRawFile(dir.file('disk.raw'), SIZE);
    const roRaw = makeRawFile(dir.file('ro.raw'), 16 * MiB);
    const backing = rawFileBacking(raw);
    const plan = makeBlkCheckPlan({ sizeBytes: SIZE });
    const par = PAR.map((p) => ({ ...p, data: patternBytes(7, p.name, p.offset, p.length) }));
    const discardData = patternBytes(7, 'discard', DISCARD.offset, DISCARD.length);
    const roData = patternBytes(7, 'ro', RO_REGION.offset, RO_REGION.length);
    // Preload while no backend runs.
    await preloadBlkBacking(plan, backing);
    writeAt(raw, DISCARD.offset, discardData);
    writeAt(roRaw, RO_REGION.offset, roData);
    const roHash = sha256(roRaw);

    rw = await startBlkServer({ socket: dir.file('rw.sock'), image: `file:${raw}`, queues: 2, serial: SERIAL, logLevel: 'debug' });
    const files: Record<string, Buffer> = {
      ...blkGuestFiles(plan),
      '/blkcheck.sh': Buffer.from(GUEST_PRELUDE + blkGuestScript(plan)),
    };
    for (const p of par) files[fileFor(p)] = p.data;

    // ---- QEMU #1 ----
    const t1 = performance.now();
    const b1: BootResult = await bootGuest({
      cpus: 2,
      timeoutMs: 240_000,
      qemuArgs: [...vhostUserBlkArgs(dir.file('rw.sock'), { numQueues: 2, extra: 'bootindex=1' }), '-action', 'reboot=reset'],
      script: phaseScripts(plan),
      files,
    });
    const r1 = b1.results;
    const ms1 = performance.now() - t1;
    // (a) the shared plan, checked exactly as for qemu-storage-daemon, and on the host.
    expect(r1['a.started'], b1.output).to.equal('1');
    checkBlkGuestResults(plan, { ...b1, exitCode: Number(r1['a.blkcheck_rc'] ?? -1) });
    expect(r1['blk.sectors']).to.equal(String(SIZE / 512));
    expect(r1['blk.write_cache'], 'FLUSH offered: the guest writes back and flushes').to.equal('write back');
    expect(r1['blk.readback.last']).to.equal('ok');
    // (d) serial.
    expect(r1['a.serial']).to.equal(SERIAL);
    // (b) multiqueue: 2 CPUs, 2 hardware queues, each used by the parallel I/O.
    expect(r1['a.nproc']).to.equal('2');
    expect(r1['a.mq']?.trim().split(/\s+/)).to.deep.equal(['0', '1']);
    for (const p of PAR) {
      expect(r1[`a.${p.name}.write`], `${p.name} written`).to.equal('ok');
      expect(r1[`a.${p.name}.read`], `${p.name} read back from the other CPU`).to.equal('ok');
    }
    const before = irqCounts(r1['a.irq_before']);
    const after = irqCounts(r1['a.irq_after']);
    for (const q of ['req.0', 'req.1']) {
      expect(after[q], `interrupts of ${q}: ${r1['a.irq_after']}`).to.be.a('number');
      expect(after[q]! - (before[q] ?? 0), `completions signalled on ${q} during the parallel I/O`).to.be.greaterThan(0);
    }
    expect(r1['a.marker']).to.equal('ok');
    // (f) after the in-guest reboot (device reset, same connection) everything reads back.
    expect(r1['b.started'], `the guest did not come back after its reboot\n${b1.output.slice(-3000)}`).to.equal('1');
    expect(r1['b.serial']).to.equal(SERIAL);
    expect(r1['b.mq']).to.equal('2');
    expect(r1['b.failures'], b1.output.slice(-3000)).to.equal('0');
    expect(b1.exitCode).to.equal(0);
    await verifyBlkBacking(plan, backing);
    for (const p of par) expect((await backing.read(p.offset, p.length)).equals(p.data), `${p.name} in the file`).to.equal(true);
    expect((await backing.read(MARKER_OFFSET, MARKER.length)).toString()).to.equal(MARKER);

    // The backend saw SeaBIOS (direct descriptors, no EVENT_IDX) before Linux, twice (power-on
    // and reboot), all on the first connection.
    const logs = rw.logLines() as LogLine[];
    const acked = logs.filter((l) => l.msg === 'features acked' && l.session === 1).map((l) => BigInt(l.features!));
    const bios = acked.filter((f) => (f & VIRTIO_RING_F_INDIRECT_DESC) === 0n);
    const linux = acked.filter((f) => (f & VIRTIO_RING_F_INDIRECT_DESC) !== 0n);
    expect(acked.length, JSON.stringify(acked.map((f) => f.toString(16)))).to.be.greaterThan(0);
    expect((acked[0]! & VIRTIO_RING_F_INDIRECT_DESC) === 0n, 'the first driver (SeaBIOS) uses direct descriptors').to.equal(true);
    expect(bios.every((f) => (f & VIRTIO_RING_F_EVENT_IDX) === 0n)).to.equal(true);
    expect(linux.length, 'Linux negotiated after SeaBIOS on each boot').to.be.at.least(2);
    expect(linux.every((f) => (f & VIRTIO_RING_F_EVENT_IDX) !== 0n && (f & VIRTIO_BLK_F_MQ) !== 0n)).to.equal(true);
    const stops = logs.filter((l) => l.msg === 'ring stopped' && l.session === 1);
    expect(stops.length, 'rings stopped by SeaBIOS, by the reboot and by the power-off').to.be.at.least(4);
    const firstStop = stops[0]!;
    expect(firstStop.queue).to.equal(0);
    expect(firstStop.base, 'SeaBIOS sent requests before stopping the ring').to.be.greaterThan(0);
    expect(logs.filter((l) => l.msg === 'vhost-user frontend connected')).to.have.length(1);

    // ---- QEMU #2: a new connection to the same vhost-s3, and a read-only disk ----
    const allocatedBefore = statSync(raw).blocks * 512;
    ro = await startBlkServer({ socket: dir.file('ro.sock'), image: `file:${roRaw}`, readonly: true, serial: RO_SERIAL });
    const files2: Record<string, Buffer> = { ...blkGuestFiles(plan), '/blkcheck/discard.bin': discardData, '/blkcheck/ro.bin': roData };
    for (const p of par) files2[fileFor(p)] = p.data;
    const t2 = performance.now();
    const b2 = await bootGuest({
      timeoutMs: 180_000,
      memoryMiB: 640,
      qemuArgs: [...vhostUserBlkArgs(dir.file('rw.sock'), { id: 'rw0', numQueues: 2 }), ...vhostUserBlkArgs(dir.file('ro.sock'), { id: 'ro0' })],
      script: secondQemuScript(plan),
      files: files2,
    });
    const ms2 = performance.now() - t2;
    const r2 = b2.results;
    const failed = Object.entries(r2).filter(([, v]) => v === 'FAIL').map(([k]) => k);
    expect(failed, b2.output.slice(-3000)).to.deep.equal([]);
    expect(r2['c.failures'], b2.output.slice(-3000)).to.equal('0');
    expect(r2['c.marker']).to.equal('ok');
    // (e) discard.
    expect(Number(r2['c.discard_max']), 'discard_max_bytes').to.be.greaterThan(0);
    expect(r2['c.discard_rc'], 'blkdiscard exit status').to.equal('0');
    expect(r2['c.discard_zeros']).to.equal('ok');
    const freed = allocatedBefore - statSync(raw).blocks * 512;
    expect(freed, 'bytes of the raw file freed by the guest DISCARD').to.be.at.least(DISCARD.length);
    expect((await backing.read(DISCARD.offset, DISCARD.length)).every((b) => b === 0)).to.equal(true);
    // (c) read-only.
    expect(r2['c.ro']).to.equal('1');
    expect(r2['c.getro']).to.equal('1');
    expect(r2['c.ro_read']).to.equal('ok');
    expect(r2['c.ro_write_rc'], `write to the read-only disk: ${r2['c.ro_write_err']}`).not.to.equal('0');
    expect(r2['c.ro_write_after_setrw_rc'], 'write after blockdev --setrw').not.to.equal('0');
    expect(r2['c.ro_discard_rc'], 'discard on the read-only disk').not.to.equal('0');
    expect(sha256(roRaw), 'read-only file unchanged').to.equal(roHash);
    expect(b2.exitCode).to.equal(0);
    // The second QEMU was a second session of the same process.
    const connects = (rw.logLines() as LogLine[]).filter((l) => l.msg === 'vhost-user frontend connected').map((l) => l.session);
    expect(connects).to.deep.equal([1, 2]);

    // Both servers still shut down cleanly.
    for (const p of [rw, ro]) {
      const st = await p.stop('SIGTERM');
      expect(st.code, p.describe()).to.equal(0);
    }
    console.log(`      QEMU #1 (boot, checks, reboot, checks) ${(ms1 / 1000).toFixed(1)} s; QEMU #2 ${(ms2 / 1000).toFixed(1)} s`);
  });
});
