// Interoperability with s3fs-fuse (Debian package `s3fs`) on one bucket in s3rver:
// - a tree written through `vhost-s3 mount` reads the same through an s3fs mount
//   (contents, types, modes incl. setuid/sticky, owners, mtimes to the nanosecond,
//   symlink targets, directories, names with spaces and non-ASCII);
// - a tree written through s3fs reads the same through `vhost-s3 mount` (also directories
//   s3fs made with plain mkdir, whose marker carries a mode without S_IFDIR — "493" — and a
//   12 MB file s3fs rewrote in the middle);
// - both mounted at once, each sees the other's creations, changes and deletions once
//   its cache timeouts ran out.
//
// s3fs options that work with s3rver: url=http://127.0.0.1:PORT, use_path_request_style
// (s3rver has no virtual-host buckets), passwd_file (S3RVER:S3RVER, mode 0600),
// nomixupload (a partial rewrite of a large file must not use UploadPartCopy, which
// s3rver answers 501), stat_cache_expire=1 (its stat cache otherwise holds for 900 s).
// s3fs 1.90 (Debian 12) writes and reads st_mode in decimal, uid/gid, and mtime as
// "sec[.nnnnnnnnn]" — the same keys as vhost-s3. Extended attributes are not compared:
// s3fs keeps them in one `x-amz-meta-xattr` key (URL-encoded JSON), vhost-s3 in
// `x-amz-meta-xattr-<hex name>` keys (see src/backends/posix/metadata.ts).
import { expect } from 'chai';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { readFile, readdir, writeFile, unlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { onCleanup, tail, trackChild } from '../support/guest/exec.js';
import {
  abortFuseConnection, lazyUnmount, mountAt, mountPrereqProblem, shOk, startBackend, startMount, waitUntil, type Backend,
} from '../support/mount.js';
import { TmpDir } from '../support/tmp.js';

/** The tree both sides write: the same shell script, run with $T as its root. */
const MAKE_TREE = String.raw`
  mkdir -p "$T/a/b/c" "$T/empty" "$T/x y" "$T/ünï"
  echo one > "$T/a/one"; head -c 3000000 /dev/urandom > "$T/a/b/big"; : > "$T/a/b/c/zero"; echo sp > "$T/x y/s p"
  printf 'ü\n' > "$T/ünï/ß.txt"; printf '#!/bin/sh\n' > "$T/run"; head -c 70000 /dev/urandom > "$T/bin"
  chmod 755 "$T/run"; chmod 600 "$T/a/one"; chmod 4755 "$T/bin"; chmod 700 "$T/a/b/c"; chmod 1777 "$T/empty"
  ln -s b/big "$T/a/rel"; ln -s /nowhere "$T/dangling"; ln -s "../ünï/ß.txt" "$T/x y/uni"
  chown 1234:5678 "$T/a/b/big" "$T/x y"; chown -h 42:43 "$T/dangling"
  touch -d '2011-11-11 11:11:11.111111111' "$T/a/one" "$T/x y/s p"; touch -d '2001-01-01 00:00:01' "$T/bin"
  touch -h -d '2012-12-12 12:12:12.5' "$T/a/rel"
  for d in "$T/a/b/c" "$T/a/b" "$T/a" "$T/empty" "$T/x y" "$T/ünï"; do touch -d '2013-01-01 00:00:00.25' "$d"; done
`;

/** path type mode uid gid size mtime(ns) target, one line per entry, then md5 sums of the files. */
const SNAPSHOT = String.raw`
  find . -mindepth 1 \( -type d -printf '%P %y %m %U %G - %T@ -\n' \) -o \( -type l -printf '%P %y %m %U %G %s %T@ %l\n' \) -o -printf '%P %y %m %U %G %s %T@ -\n' | sort
  find . -type f -print0 | sort -z | xargs -0 md5sum
`;

function s3fsProblem(): string | null {
  const r = spawnSync('s3fs', ['--version'], { encoding: 'utf8', timeout: 10_000 });
  if (r.error || r.status !== 0) return 's3fs is not installed (Debian package s3fs)';
  return null;
}

/** An s3fs mount of `bkt:/<prefix>` in the foreground (-f) as a child process. */
class S3fsMount {
  private out = '';
  readonly exited: Promise<void>;
  private stopped = false;
  private readonly unclean: () => void;

  private constructor(
    readonly path: string,
    readonly proc: ChildProcess,
  ) {
    proc.stdout!.on('data', (b: Buffer) => (this.out += b.toString()));
    proc.stderr!.on('data', (b: Buffer) => (this.out += b.toString()));
    this.exited = new Promise((resolve) => proc.once('close', () => resolve()));
    this.unclean = onCleanup(() => spawnSync('umount', ['-l', path], { timeout: 5000, stdio: 'ignore' }));
  }

  get running(): boolean {
    return this.proc.exitCode === null && this.proc.signalCode === null;
  }

  get mounted(): boolean {
    return mountAt(this.path)?.fstype === 'fuse.s3fs';
  }

  p(rel: string): string {
    return join(this.path, rel);
  }

  describe(): string {
    return `s3fs ${this.proc.spawnargs.slice(1).join(' ')}\n${tail(this.out, 30)}`;
  }

  static async start(be: Backend, passwdFile: string, extra: readonly string[] = []): Promise<S3fsMount> {
    const path = mkdtempSync(join(tmpdir(), 'vhost-s3-s3fs-'));
    const args = [
      `bkt:/${be.prefix.replace(/\/$/, '')}`, path, '-f',
      '-o', `url=${be.s3!.endpoint}`, '-o', 'use_path_request_style', '-o', `passwd_file=${passwdFile}`,
      '-o', 'nomixupload', '-o', 'stat_cache_expire=1', '-o', 'dbglevel=warn', ...extra,
    ];
    const proc = spawn('s3fs', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    trackChild(proc);
    const m = new S3fsMount(path, proc);
    try {
      await waitUntil('the s3fs mount', () => {
        if (!m.running) throw new Error(`s3fs exited before mounting:\n${m.describe()}`);
        return m.mounted;
      }, 20_000);
    } catch (err) {
      await m.stop();
      throw err;
    }
    return m;
  }

  /** umount, wait for s3fs to exit (bounded); abort + SIGKILL + umount -l as fallbacks. Returns whether it went cleanly. */
  async stop(): Promise<boolean> {
    if (this.stopped) return true;
    this.stopped = true;
    let clean = true;
    if (this.mounted) {
      const r = spawnSync('umount', [this.path], { timeout: 30_000, encoding: 'utf8' });
      if (r.status !== 0) clean = false;
    }
    if (this.running) {
      const gone = await Promise.race([this.exited.then(() => true), sleep(15_000).then(() => false)]);
      if (!gone) {
        clean = false;
        abortFuseConnection(this.path);
        this.proc.kill('SIGKILL');
        await this.exited;
      }
    }
    if (this.mounted) {
      clean = false;
      abortFuseConnection(this.path);
      lazyUnmount(this.path);
    }
    this.unclean();
    rmSync(this.path, { recursive: true, force: true });
    return clean;
  }
}

describe('interop: s3fs-fuse and vhost-s3 mount on the same bucket (s3rver)', function () {
  this.timeout(180_000);
  let be: Backend | undefined;
  let local: TmpDir | undefined;
  let passwd = '';
  let want = '';
  const env = (): NodeJS.ProcessEnv => ({ ...process.env, L: local!.path, T: local!.file('tree') });

  before(async function () {
    const problem = mountPrereqProblem() ?? s3fsProblem();
    if (problem) {
      console.log(`      skipped: ${problem}`);
      this.skip();
    }
    local = new TmpDir('vhost-s3-s3fs-interop-');
    passwd = local.file('passwd-s3fs');
    writeFileSync(passwd, 'S3RVER:S3RVER\n', { mode: 0o600 });
    be = await startBackend('s3', 'interop');
    await shOk(MAKE_TREE, { env: env() });
    want = await shOk(SNAPSHOT, { dir: local.file('tree'), env: env() });
    expect(want.split('\n').length).to.be.above(20);
  });
  after(async function () {
    this.timeout(30_000);
    await be?.close();
    local?.remove();
  });

  it('a tree written through vhost-s3 mount reads the same through s3fs', async () => {
    const vm = await startMount({ bucket: be!.locator, env: be!.env });
    try {
      await shOk(`cp -a "$T" "$M/fromvhost"`, { env: { ...env(), M: vm.path } });
      expect(await shOk(SNAPSHOT, { dir: vm.p('fromvhost') })).to.equal(want);
    } finally {
      const st = await vm.stop();
      expect(st.clean, vm.describe()).to.equal(true);
    }
    const fs3 = await S3fsMount.start(be!, passwd);
    try {
      const got = await shOk(SNAPSHOT, { dir: fs3.p('fromvhost'), timeoutMs: 100_000 });
      expect(got, fs3.describe()).to.equal(want);
      expect(await readFile(fs3.p('fromvhost/x y/uni'), 'utf8')).to.equal('ü\n');
    } finally {
      expect(await fs3.stop(), fs3.describe()).to.equal(true);
    }
  });

  it('a tree written through s3fs (plain mkdir, a large file rewritten in the middle) reads the same through vhost-s3 mount', async () => {
    const fs3 = await S3fsMount.start(be!, passwd);
    let seenByS3fs = '';
    let extraByS3fs = '';
    try {
      await shOk(String.raw`
        cp -a "$T" "$M/froms3fs"
        mkdir -p "$M/plain/dir/deeper"; echo p > "$M/plain/dir/f"
        head -c 12000000 /dev/urandom > "$L/large"; cp "$L/large" "$M/plain/large"
        printf 'MIDDLE' | dd of="$L/large" bs=1 seek=6000000 conv=notrunc status=none
        printf 'MIDDLE' | dd of="$M/plain/large" bs=1 seek=6000000 conv=notrunc status=none
      `, { env: { ...env(), M: fs3.path }, timeoutMs: 90_000 });
      // s3fs's own view right after `cp -a` still shows the modes and times files were
      // created with (0600/0700, now) until its stat cache entries expire (stat_cache_expire=1):
      // look after that.
      await sleep(2500);
      seenByS3fs = await shOk(SNAPSHOT, { dir: fs3.p('froms3fs'), timeoutMs: 100_000 });
      extraByS3fs = await shOk(SNAPSHOT, { dir: fs3.p('plain'), timeoutMs: 100_000 });
    } finally {
      expect(await fs3.stop(), fs3.describe()).to.equal(true);
    }
    expect(seenByS3fs, 's3fs reads back what it wrote').to.equal(want);
    const vm = await startMount({ bucket: be!.locator, env: be!.env });
    try {
      expect(await shOk(SNAPSHOT, { dir: vm.p('froms3fs'), timeoutMs: 100_000 })).to.equal(want);
      const extra = await shOk(SNAPSHOT, { dir: vm.p('plain'), timeoutMs: 100_000 });
      expect(extra).to.equal(extraByS3fs);
      // The large file (rewritten in the middle by s3fs) is the local copy; plain mkdir made directories 0755 (umask 022).
      const lines = extra.split('\n');
      const largeMd5 = createHash('md5').update(await readFile(local!.file('large'))).digest('hex');
      expect(lines).to.include(`${largeMd5}  ./large`);
      expect(lines.filter((l) => / d /.test(l)).map((l) => l.split(' ').slice(0, 3).join(' '))).to.deep.equal(['dir d 755', 'dir/deeper d 755']);
      expect(await readFile(vm.p('froms3fs/x y/uni'), 'utf8')).to.equal('ü\n');
    } finally {
      const st = await vm.stop();
      expect(st.clean, vm.describe()).to.equal(true);
    }
    // s3fs wrote its own s3fs-style keys, which vhost-s3 read above.
    const head = (await be!.store.head(`${be!.prefix}froms3fs/a/one`))!;
    expect(head.metadata).to.include({ mode: String(0o100600), uid: '0', gid: '0', mtime: '1321009871.111111111' });
    // s3fs 1.90's plain mkdir writes the marker's mode without S_IFDIR ("493" = 0755); vhost-s3 showed it as a directory above.
    const marker = (await be!.store.head(`${be!.prefix}plain/dir/`))!;
    expect(['493', String(0o40755)]).to.include(marker.metadata.mode);
  });

  it('mounted at once, each sees what the other creates, changes and deletes once its caches expire', async () => {
    const vm = await startMount({
      bucket: be!.locator, env: be!.env,
      args: ['--attr-timeout', '0.3', '--entry-timeout', '0.3', '--negative-timeout', '0.3', '--list-timeout', '0.5'],
    });
    const fs3 = await S3fsMount.start(be!, passwd);
    try {
      await shOk(`mkdir -p "$M/live"`, { env: { ...process.env, M: vm.path } });
      // s3fs → vhost-s3
      await writeFile(fs3.p('live/from-s3fs'), 'hello from s3fs\n');
      await waitUntil('vhost-s3 to see the s3fs file', async () => existsSync(vm.p('live/from-s3fs')), 20_000);
      expect(await readFile(vm.p('live/from-s3fs'), 'utf8')).to.equal('hello from s3fs\n');
      // vhost-s3 → s3fs
      await writeFile(vm.p('live/from-vhost'), 'hello from vhost-s3\n');
      await waitUntil('s3fs to see the vhost-s3 file', async () => (await readdir(fs3.p('live'))).includes('from-vhost'), 20_000);
      expect(await readFile(fs3.p('live/from-vhost'), 'utf8')).to.equal('hello from vhost-s3\n');
      // changes both ways
      await writeFile(vm.p('live/from-s3fs'), 'changed by vhost-s3, longer\n');
      await waitUntil('s3fs to see the change', async () => (await readFile(fs3.p('live/from-s3fs'), 'utf8')) === 'changed by vhost-s3, longer\n', 20_000);
      await writeFile(fs3.p('live/from-vhost'), 'changed by s3fs\n');
      await waitUntil('vhost-s3 to see the change', async () => (await readFile(vm.p('live/from-vhost'), 'utf8')) === 'changed by s3fs\n', 20_000);
      // deletions both ways
      await unlink(fs3.p('live/from-s3fs'));
      await unlink(vm.p('live/from-vhost'));
      await waitUntil('both to see the deletions', async () =>
        (await readdir(vm.p('live'))).length === 0 && (await readdir(fs3.p('live'))).length === 0, 20_000);
    } finally {
      const ok3 = await fs3.stop();
      const st = await vm.stop();
      expect(ok3, fs3.describe()).to.equal(true);
      expect(st.clean, vm.describe()).to.equal(true);
    }
  });
});
