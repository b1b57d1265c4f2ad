// A reusable virtio-blk data check, run by a real Linux guest against any
// vhost-user-blk backend, and verified on the host against the backing store.
//
//   1. the host preloads some regions into the backing store (guest must read them);
//   2. the guest checks the disk size, reads the preloaded and never-written regions,
//      writes patterns (O_DIRECT and buffered+fsync) at several offsets including the
//      first and last sector and across a chunk boundary, flushes, drops its caches,
//      reads everything back (several reads in flight) and compares;
//   3. the host reads the backing store and compares every region.
//
// Every 512-byte sector of a pattern starts with "VHS3 <region> @<offset>", so a
// misplaced write names where it was meant to go.

import { open } from 'node:fs/promises';
import { basename } from 'node:path';

import { bootGuest, GuestError, type BootOptions, type BootResult } from './qemu.js';

const KiB = 1024;
const MiB = 1024 * KiB;

export type BlkRegionKind = 'write' | 'preload' | 'zero';

export interface BlkRegion {
  /** Short unique name (used in file names and result keys). */
  name: string;
  kind: BlkRegionKind;
  /** Byte offset on the disk. */
  offset: number;
  /** Length in bytes. */
  length: number;
  /** Guest writes with O_DIRECT (true) or through the page cache + fsync (false). */
  direct: boolean;
  /** Expected content (zeros for kind 'zero'). */
  data: Buffer;
}

export interface BlkCheckOptions {
  /** Disk size in bytes; at least 16 MiB, a multiple of logicalBlockSize. */
  sizeBytes: number;
  /** Guest block device. Default /dev/vda. */
  device?: string;
  /** Logical block size the backend advertises. Default 512. */
  logicalBlockSize?: number;
  /** Backend chunk size, to place a write across a chunk boundary. Default 4 MiB. */
  chunkSize?: number;
  /** Seed for the patterns. Default 1. */
  seed?: number;
  /** Include regions the host writes before boot. Default true (needs BlkBacking.write). */
  preload?: boolean;
  /** Include regions that must read as zeros (the disk must start all-zero). Default true. */
  expectZeros?: boolean;
  /**
   * If the device starts in write-through mode but offers CONFIG_WCE, switch it
   * to write-back (/sys/block/<dev>/cache_type) so that the guest sends FLUSH
   * requests. Default true. (qemu-storage-daemon starts with wce=0.)
   */
  writeBack?: boolean;
}

export interface BlkCheckPlan {
  sizeBytes: number;
  device: string;
  logicalBlockSize: number;
  writeBack: boolean;
  regions: BlkRegion[];
}

/** Host-side access to the bytes behind the disk (a raw file, an object-store image, ...). */
export interface BlkBacking {
  read(offset: number, length: number): Promise<Buffer>;
  /** Needed for preloaded regions. */
  write?(offset: number, data: Buffer): Promise<void>;
}

// ---- patterns ----

function seedFrom(seed: number, name: string): [number, number, number, number] {
  let h = 0x811c9dc5 ^ seed;
  const out: number[] = [];
  for (let k = 0; k < 4; k++) {
    for (const ch of `${name}#${k}`) h = Math.imul(h ^ ch.charCodeAt(0), 0x01000193) >>> 0;
    out.push(h || 1);
  }
  return out as [number, number, number, number];
}

/** Deterministic pattern: each 512-byte sector = "VHS3 <name> @<abs offset>\n" + pseudo-random bytes. */
export function patternBytes(seed: number, name: string, offset: number, length: number): Buffer {
  const buf = Buffer.alloc(length);
  let [a, b, c, d] = seedFrom(seed, name);
  for (let i = 0; i + 4 <= length; i += 4) {
    // xoshiro128**
    const r = Math.imul(((Math.imul(b, 5) << 7) | (Math.imul(b, 5) >>> 25)) >>> 0, 9) >>> 0;
    const t = b << 9;
    c ^= a; d ^= b; b ^= c; a ^= d; c ^= t;
    d = ((d << 11) | (d >>> 21)) >>> 0;
    buf.writeUInt32LE(r, i);
  }
  for (let s = 0; s < length; s += 512) {
    const tag = Buffer.from(`VHS3 ${name} @${offset + s}\n`, 'ascii');
    tag.copy(buf, s, 0, Math.min(tag.length, length - s));
  }
  return buf;
}

// ---- plan ----

/** Picks the regions to test on a disk of the given size. */
export function makeBlkCheckPlan(opts: BlkCheckOptions): BlkCheckPlan {
  const S = opts.sizeBytes;
  const lbs = opts.logicalBlockSize ?? 512;
  const C = opts.chunkSize ?? 4 * MiB;
  const seed = opts.seed ?? 1;
  if (!Number.isSafeInteger(S) || S < 16 * MiB || S % lbs !== 0) {
    throw new RangeError(`makeBlkCheckPlan: size must be >= 16 MiB and a multiple of ${lbs}, got ${S}`);
  }
  const half = Math.floor(S / 2 / MiB) * MiB;
  const boundary = Math.ceil((4 * MiB) / C) * C;
  type Cand = [string, BlkRegionKind, number, number, boolean?];
  // Listed by priority: a candidate overlapping an earlier one is dropped.
  const cands: Cand[] = [
    ['last', 'write', S - lbs, lbs],
    ['head', 'write', 0, 64 * KiB],
    ['sector', 'write', MiB + lbs, lbs],
    ['chunkcross', 'write', boundary - 12 * KiB, 24 * KiB],
    ['buffered', 'write', 3 * MiB, 128 * KiB, false],
    ['big', 'write', half + 4 * KiB, MiB + 8 * KiB],
    ['tail', 'write', S - MiB, 64 * KiB],
    ['bigbuffered', 'write', half - 2 * MiB, MiB, false],
  ];
  if (opts.preload ?? true) {
    cands.push(['early', 'preload', 2 * MiB, 64 * KiB], ['nearend', 'preload', S - 2 * MiB - 4 * KiB, 12 * KiB]);
  }
  if (opts.expectZeros ?? true) {
    cands.push(['gap', 'zero', 5 * MiB, 64 * KiB], ['gap2', 'zero', S - 3 * MiB, 128 * KiB]);
  }
  const regions: BlkRegion[] = [];
  for (const [name, kind, offset, length, direct] of cands) {
    if (offset < 0 || offset + length > S || offset % lbs || length % lbs) continue;
    if (regions.some((r) => offset < r.offset + r.length && r.offset < offset + length)) continue;
    const data = kind === 'zero' ? Buffer.alloc(length) : patternBytes(seed, name, offset, length);
    regions.push({ name, kind, offset, length, direct: direct ?? true, data });
  }
  return { sizeBytes: S, device: opts.device ?? '/dev/vda', logicalBlockSize: lbs, writeBack: opts.writeBack ?? true, regions };
}

// ---- guest side ----

/** Files the guest script needs (pass as BootOptions.files). */
export function blkGuestFiles(plan: BlkCheckPlan): Record<string, Buffer> {
  const files: Record<string, Buffer> = {};
  for (const r of plan.regions) if (r.kind !== 'zero') files[`/blkcheck/${r.name}.bin`] = r.data;
  return files;
}

/** Largest power of two <= 64 KiB dividing both offset and length (dd block size). */
function ddBlock(r: BlkRegion): number {
  let bs = 64 * KiB;
  while (bs > 1 && (r.offset % bs !== 0 || r.length % bs !== 0)) bs /= 2;
  return bs;
}

/**
 * The guest script. It prints `@@RESULT blk.<step>.<region>=ok|FAIL@@` lines,
 * `blk.sectors`, `blk.size64`, `blk.lbs`, `blk.features` (virtio feature bits
 * as the guest sees them, bit 0 first), `blk.write_cache` ("write back" means
 * writes are followed by FLUSH requests), `blk.failures`,
 * and exits non-zero if any check failed.
 */
export function blkGuestScript(plan: BlkCheckPlan): string {
  const dev = plan.device;
  const sys = `/sys/block/${basename(dev)}`;
  const L: string[] = [];
  L.push(`DEV=${dev}`, 'fails=0');
  L.push('ok() { result "$1" ok; }');
  L.push('bad() { result "$1" FAIL; fails=$((fails + 1)); }');
  // cmp_file KEY GOT WANT: compare, and on mismatch show where and what.
  L.push(
    'cmp_file() {',
    '  if cmp -s "$2" "$3"; then ok "$1"; else',
    '    bad "$1"; echo "$1: mismatch: $(cmp "$2" "$3" 2>&1 | head -n 1)"',
    '    echo "$1: got sizes $(wc -c < "$2") want $(wc -c < "$3"); first bytes:"; head -c 64 "$2" | xxd | head -n 4',
    '  fi',
    '}',
  );
  L.push(`wait_for $DEV 20 || { result blk.device FAIL; exit 1; }`);
  L.push(`sectors=$(cat ${sys}/size); result blk.sectors "$sectors"`);
  L.push(`[ "$sectors" = ${plan.sizeBytes / 512} ] && ok blk.size || bad blk.size`);
  L.push(`size64=$(blockdev --getsize64 $DEV); result blk.size64 "$size64"`);
  L.push(`[ "$size64" = ${plan.sizeBytes} ] && ok blk.getsize64 || bad blk.getsize64`);
  L.push(`result blk.lbs "$(cat ${sys}/queue/logical_block_size)"`);
  L.push(`result blk.features "$(cat ${sys}/device/features 2>/dev/null)"`);
  L.push(`result blk.write_cache_initial "$(cat ${sys}/queue/write_cache 2>/dev/null)"`);
  if (plan.writeBack) {
    L.push(
      `if [ "$(cat ${sys}/queue/write_cache)" != "write back" ] && [ -e ${sys}/cache_type ]; then`,
      `  echo "write back" > ${sys}/cache_type || echo "cannot switch ${dev} to write back"`,
      'fi',
    );
  }
  L.push(`result blk.write_cache "$(cat ${sys}/queue/write_cache 2>/dev/null)"`);
  L.push(`result blk.ro "$(cat ${sys}/ro)"`);

  const want = (r: BlkRegion): string => (r.kind === 'zero' ? `/tmp/zero.${r.name}` : `/blkcheck/${r.name}.bin`);
  for (const r of plan.regions) {
    if (r.kind === 'zero') L.push(`dd if=/dev/zero of=${want(r)} bs=${r.length} count=1 status=none`);
  }
  const readCmd = (r: BlkRegion, out: string, direct: boolean): string => {
    const bs = ddBlock(r);
    return `dd if=$DEV of=${out} bs=${bs} skip=${r.offset / bs} count=${r.length / bs}${direct ? ' iflag=direct' : ''} status=none`;
  };

  // 1. Data that must be there before the guest writes anything.
  for (const r of plan.regions.filter((x) => x.kind !== 'write')) {
    L.push(`${readCmd(r, `/tmp/pre.${r.name}`, true)} || bad blk.preread.${r.name}.io`);
    L.push(`cmp_file blk.preread.${r.name} /tmp/pre.${r.name} ${want(r)}; rm -f /tmp/pre.${r.name}`);
  }
  // 2. Writes.
  for (const r of plan.regions.filter((x) => x.kind === 'write')) {
    const bs = ddBlock(r);
    const flags = r.direct ? 'oflag=direct conv=notrunc' : 'conv=notrunc,fsync';
    L.push(
      `dd if=${want(r)} of=$DEV bs=${bs} seek=${r.offset / bs} count=${r.length / bs} ${flags} status=none && ok blk.write.${r.name} || bad blk.write.${r.name}`,
    );
  }
  // 3. Make it durable and forget every cached page.
  L.push('sync && ok blk.sync || bad blk.sync');
  L.push('blockdev --flushbufs $DEV && ok blk.flushbufs || bad blk.flushbufs');
  L.push('echo 3 > /proc/sys/vm/drop_caches');
  // 4. Read everything back, several requests in flight, then compare.
  for (const r of plan.regions) L.push(`( ${readCmd(r, `/tmp/rb.${r.name}`, true)} || echo "blk.readback.${r.name}: read failed" ) &`);
  L.push('wait');
  for (const r of plan.regions) L.push(`cmp_file blk.readback.${r.name} /tmp/rb.${r.name} ${want(r)}; rm -f /tmp/rb.${r.name}`);
  // Buffered (readahead) read of the written regions as well.
  L.push('echo 3 > /proc/sys/vm/drop_caches');
  for (const r of plan.regions.filter((x) => x.kind === 'write' && x.length >= 64 * KiB)) {
    L.push(`${readCmd(r, `/tmp/bf.${r.name}`, false)} || bad blk.bufread.${r.name}.io`);
    L.push(`cmp_file blk.bufread.${r.name} /tmp/bf.${r.name} ${want(r)}; rm -f /tmp/bf.${r.name}`);
  }
  // 5. Reading at the end of the disk returns nothing.
  L.push(`dd if=$DEV of=/tmp/eof bs=512 skip=${plan.sizeBytes / 512} count=1 status=none; [ "$(wc -c < /tmp/eof)" = 0 ] && ok blk.eof || bad blk.eof`);
  L.push('result blk.failures "$fails"');
  L.push('[ "$fails" = 0 ]');
  return L.join('\n') + '\n';
}

/** Throws (with the guest console) unless the guest ran every check of the plan successfully. */
export function checkBlkGuestResults(plan: BlkCheckPlan, boot: BootResult): void {
  const res = boot.results;
  const failed = Object.entries(res).filter(([, v]) => v === 'FAIL').map(([k]) => k);
  const expected = ['blk.size', 'blk.getsize64', 'blk.sync', 'blk.flushbufs', 'blk.eof'];
  for (const r of plan.regions) {
    expected.push(`blk.readback.${r.name}`);
    if (r.kind === 'write') expected.push(`blk.write.${r.name}`);
    else expected.push(`blk.preread.${r.name}`);
  }
  const absent = expected.filter((k) => res[k] === undefined);
  if (boot.exitCode !== 0 || failed.length || absent.length || res['blk.failures'] !== '0') {
    const why = [
      `guest blk checks failed (exit ${boot.exitCode})`,
      failed.length ? `failed: ${failed.join(', ')}` : '',
      absent.length ? `not reported: ${absent.join(', ')}` : '',
    ].filter(Boolean).join('; ');
    throw new GuestError(why, boot.output, '');
  }
}

// ---- host side ----

/** Writes the preloaded regions into the backing store (call before the backend serves the disk). */
export async function preloadBlkBacking(plan: BlkCheckPlan, backing: BlkBacking): Promise<void> {
  const pre = plan.regions.filter((r) => r.kind === 'preload');
  if (pre.length && !backing.write) throw new Error('plan has preloaded regions but the backing cannot be written (use preload: false)');
  for (const r of pre) await backing.write!(r.offset, r.data);
}

/** Compares every region of the plan with the backing store; throws a readable report on mismatch. */
export async function verifyBlkBacking(plan: BlkCheckPlan, backing: BlkBacking): Promise<void> {
  const problems: string[] = [];
  for (const r of plan.regions) {
    const got = await backing.read(r.offset, r.length);
    if (got.length !== r.length) {
      problems.push(`${r.name} (${r.kind} @${r.offset}+${r.length}): backing returned ${got.length} bytes`);
      continue;
    }
    if (got.equals(r.data)) continue;
    let i = 0;
    while (got[i] === r.data[i]) i++;
    const sector = i - (i % 512);
    const tag = got.subarray(sector, sector + 40).toString('latin1').split('\n')[0]!.replace(/[^\x20-\x7e]/g, '.');
    problems.push(`${r.name} (${r.kind} @${r.offset}+${r.length}): first difference at disk offset ${r.offset + i}; that sector starts with "${tag}"`);
  }
  if (problems.length) throw new Error('backing store does not hold what the guest wrote:\n  ' + problems.join('\n  '));
}

/** A raw image file as a BlkBacking. */
export function rawFileBacking(path: string): BlkBacking {
  return {
    async read(offset, length) {
      const fh = await open(path, 'r');
      try {
        const buf = Buffer.alloc(length);
        const { bytesRead } = await fh.read(buf, 0, length, offset);
        return buf.subarray(0, bytesRead);
      } finally {
        await fh.close();
      }
    },
    async write(offset, data) {
      const fh = await open(path, 'r+');
      try {
        await fh.write(data, 0, data.length, offset);
        await fh.sync();
      } finally {
        await fh.close();
      }
    },
  };
}

export interface RunBlkChecksOptions {
  /** A plan, or the options to make one. */
  plan: BlkCheckPlan | BlkCheckOptions;
  /** QEMU arguments that attach the disk, e.g. vhostUserBlkArgs(socket). */
  qemuArgs: readonly string[];
  /** Host view of the disk's bytes, for preloading and verification. */
  backing: BlkBacking;
  /** Preload before booting (default true). Set false if you called preloadBlkBacking yourself. */
  doPreload?: boolean;
  /** Extra boot options (timeout, memory, onOutput, ...). */
  boot?: Partial<Omit<BootOptions, 'script' | 'files' | 'qemuArgs'>>;
}

/**
 * The whole check: preload, boot, run the guest script, check its results,
 * verify the backing store. Throws with the guest console on any failure.
 * The backend must already be listening on the socket named in qemuArgs.
 */
export async function runBlkGuestChecks(o: RunBlkChecksOptions): Promise<{ plan: BlkCheckPlan; boot: BootResult }> {
  const plan = 'regions' in o.plan ? o.plan : makeBlkCheckPlan(o.plan);
  if (o.doPreload ?? true) await preloadBlkBacking(plan, o.backing);
  const boot = await bootGuest({ ...o.boot, script: blkGuestScript(plan), files: blkGuestFiles(plan), qemuArgs: o.qemuArgs });
  checkBlkGuestResults(plan, boot);
  await verifyBlkBacking(plan, o.backing);
  return { plan, boot };
}

/** QEMU arguments attaching a vhost-user-blk device on a Unix socket. */
export function vhostUserBlkArgs(socketPath: string, opts: { id?: string; numQueues?: number; extra?: string } = {}): string[] {
  const id = opts.id ?? 'blk0';
  const dev = [`vhost-user-blk-pci`, `chardev=${id}`];
  if (opts.numQueues !== undefined) dev.push(`num-queues=${opts.numQueues}`);
  if (opts.extra) dev.push(opts.extra);
  return ['-chardev', `socket,id=${id},path=${socketPath}`, '-device', dev.join(',')];
}
