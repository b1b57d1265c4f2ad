// The fs benchmark's local part (bench/fs.ts) on small inputs, against vhost-s3 and
// virtiofsd: every workload runs and counts what it did. The read-1m loop once summed its
// READs' byte counts with `pass += await …`, which reads `pass` before the wait: with 8
// READs in flight it counted a fraction of each pass and threw.
import { expect } from 'chai';
import { existsSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { runFsSuite } from '../../bench/fs.js';
import { TmpDir } from '../support/tmp.js';

const VIRTIOFSD = '/usr/lib/qemu/virtiofsd';
const BIG = 8 << 20;

describe('bench fs, local part (small inputs)', function () {
  this.timeout(120_000);
  let dir: TmpDir;
  before(() => {
    dir = new TmpDir('bench-fs-');
  });
  after(() => dir.remove());

  it('runs create, stat, readdir and read-1m against vhost-s3 and virtiofsd, counting whole read passes', async function () {
    const targets = existsSync(VIRTIOFSD) ? ['vhost-s3', 'virtiofsd'] : ['vhost-s3'];
    const r = await runFsSuite({
      runtime: 0.3, rounds: 1, dir: dir.path, repoRoot: resolve(dirname(fileURLToPath(import.meta.url)), '../../..'),
      vhostNodeArgs: [], vhostArgs: [], quietCores: 2, quietWait: 0, log: () => {}, tty: false,
      targets, workloads: ['create', 'stat', 'readdir', 'read-1m'], bigBytes: BIG, dirEntries: 200, createFiles: 50,
    });
    const ms = r.measurements as { workload: string; target: string; count: number; error?: string }[];
    for (const t of targets) {
      for (const w of ['create', 'stat', 'readdir', 'read-1m']) {
        const m = ms.find((x) => x.target === t && x.workload === w);
        expect(m, `${t} ${w}`).to.not.equal(undefined);
        expect(m!.error, `${t} ${w}`).to.equal(undefined);
        expect(m!.count, `${t} ${w}`).to.be.greaterThan(0);
      }
      const read = ms.find((x) => x.target === t && x.workload === 'read-1m')!;
      expect(read.count % BIG, `${t}: read-1m counts whole passes`).to.equal(0);
    }
  });
});
