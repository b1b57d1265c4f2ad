// The fs load generator (vhost-s3 bench fs) against vhost-s3's virtio-fs device on a
// local store and against QEMU's virtiofsd: every workload runs without errors and
// leaves what it claims in the backing directory.
import { expect } from 'chai';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, statSync } from 'node:fs';
import { FuseClient } from '../../src/frontend/fuse-client.js';
import { FS_WORKLOADS, runFsLoad, type FsWorkload } from '../../src/frontend/fs-load.js';
import { FsExport } from '../../src/fuse/export.js';
import { BucketVfs } from '../../src/backends/posix/bucket-vfs.js';
import { FileStore } from '../../src/backends/file-store.js';
import { silentLogger } from '../../src/util/log.js';
import { TmpDir } from '../support/tmp.js';

const VIRTIOFSD = '/usr/lib/qemu/virtiofsd';
const opts = (workload: FsWorkload) => ({ workload, files: 40, fileSize: 1000, bigFileSize: 2 << 20, bs: workload === 'randread' ? 4096 : 256 * 1024, iodepth: 4, runtime: 0.3, dir: 'b' });

async function runAll(socket: () => Promise<string>): Promise<Record<string, number>> {
  const rates: Record<string, number> = {};
  for (const w of FS_WORKLOADS) {
    // virtiofsd serves one connection per process: every workload gets a fresh one.
    const c = await FuseClient.connect(await socket(), { maxIo: 256 * 1024 });
    try {
      await c.init();
      const r = await runFsLoad(c, opts(w));
      expect(r.errors, w).to.equal(0);
      expect(r.ios, w).to.be.greaterThan(0);
      rates[w] = r.ops_per_s;
    } finally {
      await c.close();
    }
  }
  return rates;
}

describe('bench fs workloads', function () {
  this.timeout(60000);
  let dir: TmpDir;
  beforeEach(() => (dir = new TmpDir()));
  afterEach(() => dir.remove());

  it('run against vhost-s3 fs on a local store', async () => {
    const store = await FileStore.open(dir.file('store'), { create: true, noSync: true });
    const vfs = new BucketVfs({ store, logger: silentLogger });
    const exp = await FsExport.start({ socket: dir.file('fs.sock'), vfs, log: silentLogger });
    try {
      await runAll(async () => dir.file('fs.sock'));
    } finally {
      await exp.close();
      await vfs.close();
      await store.close();
    }
    const names = new Set<string>();
    for (let i = 0; i < 40; i++) names.add(`f${i}`);
    const store2 = await FileStore.open(dir.file('store'));
    const keys: string[] = [];
    let token: string | undefined;
    do {
      const page = await store2.list({ prefix: 'b/', continuationToken: token });
      keys.push(...page.objects.map((o) => o.key));
      token = page.nextToken;
    } while (token);
    for (const n of names) expect(keys).to.include(`b/${n}`);
    expect((await store2.head('b/big'))?.size).to.equal(2 << 20);
  });

  it('run against virtiofsd', async function () {
    if (!existsSync(VIRTIOFSD) || process.getuid?.() !== 0) this.skip();
    const shared = dir.file('shared');
    mkdirSync(shared);
    let proc: ChildProcess | null = null;
    const start = async (): Promise<string> => {
      if (proc && proc.exitCode === null) await new Promise((r) => { proc!.once('exit', r); proc!.kill('SIGTERM'); });
      const socket = dir.file(`vfsd-${Date.now()}.sock`);
      proc = spawn(VIRTIOFSD, [`--socket-path=${socket}`, '-o', `source=${shared}`, '-o', 'cache=none'], { stdio: 'ignore' });
      const end = Date.now() + 10000;
      while (!existsSync(socket)) {
        if (Date.now() > end) throw new Error('virtiofsd did not start');
        await new Promise((r) => setTimeout(r, 20));
      }
      return socket;
    };
    try {
      await runAll(start);
    } finally {
      const p = proc as ChildProcess | null;
      if (p && p.exitCode === null) p.kill('SIGKILL');
    }
    expect(readdirSync(`${shared}/b`).filter((n) => n.startsWith('f')).length).to.equal(40);
    expect(statSync(`${shared}/b/big`).size).to.equal(2 << 20);
  });
});
