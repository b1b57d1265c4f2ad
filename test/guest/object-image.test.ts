// Layer 3 on an object-backed image: a real Linux guest (QEMU TCG) uses a disk whose bytes
// live as 64 KiB chunk objects in s3rver, served by `vhost-s3 blk` (the real command line).
//
//   boot 1 (gateway #1): the shared blk check plan — preloaded regions read, patterns
//           written at several offsets (across chunk boundaries, the last sector, O_DIRECT
//           and buffered), sync + FLUSH, read back; then the host reads the chunk objects
//           straight from the store (FLUSH made them durable while the gateway still runs);
//   gateway #1 stops; gateway #2 is a new process with an empty cache;
//   boot 2 (gateway #2): every region reads back as boot 1 left it; the guest discards a
//           range (whole and partial chunks) and reads zeros there;
//   host:   `vhost-s3 image export` of the image equals the expected disk byte for byte,
//           and the discarded whole chunks have no objects any more.
import { expect } from 'chai';
import { readFileSync } from 'node:fs';

import { ImageKeys } from '../../src/blk/image-format.js';
import { listKeys, type ObjectStore } from '../../src/backends/object-store.js';
import {
  assertGuestSuccess,
  blkGuestFiles,
  bootGuest,
  makeBlkCheckPlan,
  patternBytes,
  preloadBlkBacking,
  runBlkGuestChecks,
  vhostUserBlkArgs,
  useGuestBucket,
  type BlkBacking,
  type BlkCheckPlan,
} from '../support/guest/index.js';
import { runCli, startBlkServer, type CliProcess, type CliResult } from '../support/cli.js';

process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

const KiB = 1024;
const MiB = 1024 * KiB;
const SIZE = 64 * MiB;
const CS = 64 * KiB;
const LOCATOR = 's3://bkt/images/guest1';
/** Discarded by the guest in boot 2: the end of chunk 127, chunks 128..143 whole, the start of chunk 144. */
const DISCARD = { offset: 128 * CS - 8 * KiB, length: 16 * CS + 16 * KiB };
/** Data the host stores before boot 1 around and over the discarded range. */
const EXTRA = { offset: DISCARD.offset - 8 * KiB, length: DISCARD.length + 16 * KiB };

/** The image's bytes as chunk objects: reads assemble them (missing = zeros), writes read-modify-write them. */
function objectBacking(store: ObjectStore, keys: ImageKeys): BlkBacking {
  const chunk = async (i: number): Promise<Buffer> => {
    try {
      const body = (await store.get(keys.chunk(i))).body;
      const out = Buffer.alloc(CS);
      out.set(body.subarray(0, CS));
      return out;
    } catch (err) {
      if ((err as { code?: string }).code === 'ENOENT') return Buffer.alloc(CS);
      throw err;
    }
  };
  return {
    async read(offset, length) {
      const out = Buffer.alloc(length);
      for (let pos = 0; pos < length;) {
        const i = Math.floor((offset + pos) / CS);
        const at = (offset + pos) % CS;
        const n = Math.min(CS - at, length - pos);
        (await chunk(i)).copy(out, pos, at, at + n);
        pos += n;
      }
      return out;
    },
    async write(offset, data) {
      for (let pos = 0; pos < data.length;) {
        const i = Math.floor((offset + pos) / CS);
        const at = (offset + pos) % CS;
        const n = Math.min(CS - at, data.length - pos);
        const c = await chunk(i);
        data.copy(c, at, pos, pos + n);
        await store.put(keys.chunk(i), c);
        pos += n;
      }
    },
  };
}

/** Boot 2: every region of the plan reads back; then DISCARD reads as zeros. */
function readBackScript(plan: BlkCheckPlan): string {
  const L: string[] = ['fails=0', 'DEV=/dev/vda', 'wait_for $DEV 20 || { result vda FAIL; exit 1; }'];
  L.push('check() { if cmp -s "$2" "$3"; then result "$1" ok; else result "$1" FAIL; fails=$((fails + 1)); cmp "$2" "$3" | head -n 1; fi; }');
  for (const r of plan.regions) {
    let bs = 64 * KiB;
    while (r.offset % bs !== 0 || r.length % bs !== 0) bs /= 2;
    const want = r.kind === 'zero' ? `/tmp/zero.${r.name}` : `/blkcheck/${r.name}.bin`;
    if (r.kind === 'zero') L.push(`dd if=/dev/zero of=${want} bs=${r.length} count=1 status=none`);
    L.push(`dd if=$DEV of=/tmp/rb bs=${bs} skip=${r.offset / bs} count=${r.length / bs} iflag=direct status=none`);
    L.push(`check again.${r.name} /tmp/rb ${want}`);
  }
  L.push(`dd if=$DEV of=/tmp/rb bs=8192 skip=${EXTRA.offset / 8192} count=${EXTRA.length / 8192} iflag=direct status=none`);
  L.push('check again.extra /tmp/rb /blkcheck/extra.bin');
  L.push(`blkdiscard -o ${DISCARD.offset} -l ${DISCARD.length} $DEV && result discard ok || { result discard FAIL; fails=$((fails + 1)); }`);
  L.push('sync; blockdev --flushbufs $DEV; echo 3 > /proc/sys/vm/drop_caches');
  L.push(`dd if=/dev/zero of=/tmp/z bs=${DISCARD.length} count=1 status=none`);
  L.push(`dd if=$DEV of=/tmp/d bs=8192 skip=${DISCARD.offset / 8192} count=${DISCARD.length / 8192} iflag=direct status=none`);
  L.push('check discarded /tmp/d /tmp/z');
  L.push('result failures "$fails"', '[ "$fails" = 0 ]');
  return L.join('\n') + '\n';
}

describe('guest: virtio-blk on an object-backed image in s3rver (vhost-s3 blk)', function () {
  this.timeout(240_000);
  const fx = useGuestBucket({ bucket: 'bkt', tmpPrefix: 'vhost-s3-guest-objimg-', store: { conditionalWrites: false } });
  afterEach(function () {
    if (this.currentTest?.state === 'failed') for (const g of fx.procs) console.log(g.describe());
  });

  const cli = (args: string[]): Promise<CliResult> => runCli(args, { env: { ...fx.s3.env }, timeoutMs: 60_000 });
  const gateway = async (n: number): Promise<CliProcess> => {
    const g = await startBlkServer({
      socket: fx.dir.file(`blk${n}.sock`), image: LOCATOR, env: { ...fx.s3.env }, serial: `VHS3-OBJ-${n}`,
      // A cache smaller than what the guest touches: chunks are evicted and fetched again.
      extra: ['--cache-size', '2M', '--dirty-size', '4M'],
    });
    fx.procs.push(g);
    return g;
  };

  it('a guest writes, a second guest on a new gateway reads it back, and the export holds the same bytes', async () => {
    const keys = new ImageKeys('images/guest1/');
    const created = await cli(['image', 'create', LOCATOR, '--size', '64M', '--chunk-size', '64K']);
    expect(created.code, created.stderr).to.equal(0);
    const backing = objectBacking(fx.store, keys);
    const plan = makeBlkCheckPlan({ sizeBytes: SIZE, chunkSize: CS, seed: 7 });
    expect(plan.regions.some((r) => r.name === 'last'), 'the plan writes the last sector').to.equal(true);
    expect(plan.regions.some((r) => Math.floor(r.offset / CS) !== Math.floor((r.offset + r.length - 1) / CS)), 'writes cross chunk boundaries').to.equal(true);
    for (const r of plan.regions) expect(r.offset + r.length <= DISCARD.offset || r.offset >= DISCARD.offset + DISCARD.length, `${r.name} is outside the discarded range`).to.equal(true);
    // Preloaded regions go into the store before any gateway has the image open.
    await preloadBlkBacking(plan, backing);
    const extra = patternBytes(7, 'extra', EXTRA.offset, EXTRA.length);
    await backing.write!(EXTRA.offset, extra);

    // Boot 1.
    const g1 = await gateway(1);
    const { boot: b1 } = await runBlkGuestChecks({ plan, backing, doPreload: false, qemuArgs: vhostUserBlkArgs(fx.dir.file('blk1.sock')) });
    expect(b1.results['blk.write_cache']).to.equal('write back');
    expect(b1.results['blk.sectors']).to.equal(String(SIZE / 512));
    const st = await g1.stop('SIGTERM');
    expect(st.code, g1.describe()).to.equal(0);

    // Boot 2, on a new gateway process with an empty cache.
    await gateway(2);
    const g2 = fx.procs[fx.procs.length - 1]!;
    const b2 = await bootGuest({
      script: readBackScript(plan), files: { ...blkGuestFiles(plan), '/blkcheck/extra.bin': extra }, qemuArgs: vhostUserBlkArgs(fx.dir.file('blk2.sock')),
    });
    assertGuestSuccess(b2);
    expect(b2.results['again.extra']).to.equal('ok');
    for (const r of plan.regions) expect(b2.results[`again.${r.name}`], `boot 2 reads ${r.name}`).to.equal('ok');
    expect(b2.results.discard).to.equal('ok');
    expect(b2.results.discarded).to.equal('ok');
    console.log(`      boots ${(b1.totalMs / 1000).toFixed(1)} s + ${(b2.totalMs / 1000).toFixed(1)} s`);

    // The export is the disk the guests left, byte for byte.
    const expected = Buffer.alloc(SIZE);
    for (const r of plan.regions) r.data.copy(expected, r.offset);
    extra.copy(expected, EXTRA.offset);
    expected.fill(0, DISCARD.offset, DISCARD.offset + DISCARD.length);
    const out = fx.dir.file('export.raw');
    const ex = await cli(['image', 'export', LOCATOR, out]);
    expect(ex.code, ex.stderr).to.equal(0);
    const got = readFileSync(out);
    expect(got.length).to.equal(SIZE);
    if (!got.equals(expected)) {
      let i = 0;
      while (got[i] === expected[i]) i++;
      expect.fail(`export differs from what the guests wrote, first at byte ${i} (chunk ${Math.floor(i / CS)}): "${got.subarray(i - (i % 512), i - (i % 512) + 32).toString('latin1').replace(/[^\x20-\x7e]/g, '.')}"`);
    }
    // Whole chunks the guest discarded have no objects (after the gateway's FLUSH they are deleted).
    const stored = new Set<number>();
    for await (const k of listKeys(fx.store, keys.chunksPrefix)) stored.add(keys.chunkIndex(k));
    for (let i = 128; i < 144; i++) expect(stored.has(i), `discarded chunk ${i} has no object`).to.equal(false);
    expect(stored.has(127) && stored.has(144), 'partly discarded chunks keep their objects').to.equal(true);
    const st2 = await g2.stop('SIGTERM');
    expect(st2.code, g2.describe()).to.equal(0);
  });
});
