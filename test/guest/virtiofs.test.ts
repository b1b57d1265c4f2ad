// Layer 3 for vhost-s3's virtio-fs: a real Linux guest (QEMU TCG) mounts `vhost-s3 fs`
// — started as a child process through the real command line — serving a prefix of a
// bucket in s3rver, with its own virtiofs driver. Three boots:
//
//   boot 1 (gateway A: --queues 2, QEMU num-request-queues=2, --uid/--gid for objects
//     without metadata): the shared operations check of test/support/guest/fs-checks.ts
//     (create, append, overwrite in the middle, truncate, holes, open-file unlink and
//     rename, renames of files and directories, symlinks, chmod/chown/touch, exec,
//     removals, errnos, listings before and after a remount). Gateway A is stopped with
//     SIGTERM, then the host reads the bucket: exactly the expected keys, their bytes,
//     the s3fs metadata (mode, uid, gid, mtime), directory markers, symlink bodies, the
//     seeded objects and the keys outside the prefix untouched.
//     Linux 6.1's virtiofs driver sets up every request queue but sends on the first
//     one only, so this boot checks that a 2-queue device negotiates and starts all its
//     rings (debug log), not parallel use of both.
//   boot 2 (a FRESH gateway process B on the same bucket, plus a --readonly gateway C as
//     a second device): the same tree (listing, contents, modes, owners, symlink
//     targets, mtimes), a script still runs, the read-only share refuses every kind of
//     change with EROFS and shows the same tree, then `rm -rf` empties the prefix.
//   reference (when virtiofsd is installed): the same boot-1 script on QEMU's virtiofsd
//     over a local directory seeded the same way gives the same results and tree, so
//     the expectations are those of a real file system.
//
// And `npm start` (vhost-s3 serve): a guest booted with exactly the QEMU arguments it
// prints uses both the disk and the share, reboots (QEMU resets both devices on the same
// connections) with a file of the share still open, and finds everything again; what it
// wrote to the share is in the store.
import { expect } from 'chai';
import { chownSync, existsSync, lstatSync, mkdirSync, readFileSync, readlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { createObjectStore } from '../../src/backends/locator.js';
import { listKeys, type ObjectHead } from '../../src/backends/object-store.js';
import {
  bootGuest,
  checkFsOpsResults,
  diffTrees,
  FS_SEED,
  FS_SEED_GID,
  FS_SEED_UID,
  FS_TOUCH_MTIME,
  FS_TREE_SHELL,
  GuestError,
  makeFsOpsPlan,
  md5,
  parseFsTree,
  startVirtiofsd,
  vhostUserFsArgs,
  virtiofsdUsable,
  useGuestBucket,
  useGuestImage,
  type BootResult,
} from '../support/guest/index.js';
import { CliProcess, isSocket } from '../support/cli.js';
import { TmpDir } from '../support/tmp.js';

const BUCKET = 'bkt';
const PREFIX = 'pre/';
const S_IFREG = 0o100000;
const S_IFDIR = 0o040000;
const S_IFLNK = 0o120000;
/** Keys outside the served prefix: the gateway must neither show nor touch them. */
const OUTSIDE: Record<string, string> = { 'outside.txt': 'not served\n', 'pre-sibling/x.txt': 'a key that shares the prefix string\n' };

function logLines(p: CliProcess): Record<string, unknown>[] {
  return p.logLines();
}

/** Log lines at warn or error (there should be none), for assertions. */
function complaints(p: CliProcess): string[] {
  return logLines(p).filter((l) => l.level === 'warn' || l.level === 'error').map((l) => JSON.stringify(l));
}

function guestFail(msg: string, boot: BootResult): GuestError {
  return new GuestError(msg, boot.output, '');
}

describe('guest: vhost-s3 fs (virtio-fs) serving a bucket in s3rver', function () {
  this.timeout(240_000);
  const plan = makeFsOpsPlan({ tag: 'data' });
  const fx = useGuestBucket({ bucket: BUCKET, tmpPrefix: 'vhost-s3-guest-fs-' });
  /** ETags of the seeded objects, to show the gateway left them alone. */
  const seedEtags = new Map<string, string>();
  let t0Sec = 0;

  before(async () => {
    for (const [k, v] of Object.entries(OUTSIDE)) seedEtags.set(k, (await fx.store.put(k, Buffer.from(v))).etag);
    for (const s of FS_SEED) {
      const metadata = s.mtime !== undefined ? { mtime: `${s.mtime}.5` } : undefined; // rclone's float seconds
      seedEtags.set(PREFIX + s.path, (await fx.store.put(PREFIX + s.path, s.data, { metadata })).etag);
    }
    t0Sec = Math.floor(Date.now() / 1000);
  });

  /** `vhost-s3 fs` on the bucket's prefix, resolved once its socket listens. */
  async function startFs(socket: string, tag: string, extra: string[]): Promise<CliProcess> {
    const p = new CliProcess(
      ['fs', '--socket', socket, '--bucket', `s3://${BUCKET}/${PREFIX}`, '--tag', tag, '--uid', String(FS_SEED_UID), '--gid', String(FS_SEED_GID), ...extra],
      { env: { ...fx.s3.env } },
    );
    fx.procs.push(p);
    try {
      await p.waitFor('the QEMU arguments on stdout', (out) => out.includes('guest: mount'));
      await p.waitForSocket(socket);
    } catch (err) {
      await p.kill();
      throw err;
    }
    return p;
  }

  async function allKeys(): Promise<string[]> {
    const keys: string[] = [];
    for await (const k of listKeys(fx.store, '')) keys.push(k);
    return keys;
  }

  async function headOf(key: string): Promise<ObjectHead> {
    const h = await fx.store.head(key);
    if (!h) throw new Error(`${key} is missing from the bucket`);
    return h;
  }

  /** The bucket after boot 1: exactly the expected keys, bytes and metadata. */
  async function checkBucket(): Promise<void> {
    const problems: string[] = [];
    const keys = await allKeys();
    const want = new Set<string>(Object.keys(OUTSIDE));
    for (const [path, desc] of Object.entries(plan.expectTree)) want.add(PREFIX + path + (desc.startsWith('d ') ? '/' : ''));
    // `preexisting` is implied by plain.txt: a marker is allowed, not required.
    const optional = new Set([`${PREFIX}preexisting/`]);
    for (const k of keys) if (!want.has(k) && !optional.has(k)) problems.push(`unexpected key ${k}`);
    for (const k of want) if (!optional.has(k) && !keys.includes(k)) problems.push(`missing key ${k}`);
    for (const g of plan.gone) for (const k of keys) if (k === PREFIX + g || k.startsWith(`${PREFIX}${g}/`)) problems.push(`key of a removed path: ${k}`);

    const nowSec = Math.ceil(Date.now() / 1000);
    for (const [path, desc] of Object.entries(plan.expectTree)) {
      const [kind, permText, uid, gid] = desc.split(' ') as [string, string, string, string];
      const perm = parseInt(permText, 8);
      const key = PREFIX + path + (kind === 'd' ? '/' : '');
      if (!keys.includes(key)) continue;
      const h = await headOf(key);
      const m = h.metadata;
      const expectMeta = (field: string, value: string): void => {
        if (m[field] !== value) problems.push(`${key}: x-amz-meta-${field} want ${value}, got ${m[field] ?? '(none)'}`);
      };
      if (path === 'preexisting/plain.txt') {
        // Never changed: the seeded object itself, still without metadata.
        if (h.etag !== seedEtags.get(key)) problems.push(`${key}: rewritten (ETag changed)`);
        if (Object.keys(m).length !== 0) problems.push(`${key}: metadata added: ${JSON.stringify(m)}`);
        continue;
      }
      if (kind === 'd' && path === 'preexisting') continue;
      const type = kind === 'f' ? S_IFREG : kind === 'd' ? S_IFDIR : S_IFLNK;
      expectMeta('mode', String(type | (kind === 'l' ? 0o777 : perm)));
      expectMeta('uid', uid);
      expectMeta('gid', gid);
      const mtime = Number(m.mtime);
      if (path === 'old.txt') {
        if (Math.floor(mtime) !== FS_TOUCH_MTIME) problems.push(`${key}: mtime want ${FS_TOUCH_MTIME}, got ${m.mtime}`);
      } else if (kind !== 'd' || path !== 'preexisting/sub') {
        if (!(mtime >= t0Sec - 5 && mtime <= nowSec + 5)) problems.push(`${key}: mtime ${m.mtime} is not the time of the test (${t0Sec}..${nowSec})`);
      }
      if (kind === 'd') {
        if (h.size !== 0) problems.push(`${key}: marker of ${h.size} bytes`);
      } else {
        const body = Buffer.from((await fx.store.get(key)).body);
        if (kind === 'l') {
          const target = desc.split(' ').slice(4).join(' ');
          if (body.toString() !== target) problems.push(`${key}: symlink body ${JSON.stringify(body.toString())}, want ${JSON.stringify(target)}`);
        } else if (!body.equals(Buffer.from(plan.contents.get(path)!))) {
          problems.push(`${key}: ${body.length} bytes differ from the expected ${plan.contents.get(path)!.length}`);
        }
      }
    }
    for (const k of Object.keys(OUTSIDE)) {
      const h = await fx.store.head(k);
      if (h?.etag !== seedEtags.get(k)) problems.push(`${k} outside the prefix was changed or removed`);
    }
    expect(problems, `bucket after boot 1 (keys: ${keys.join(' ')})`).to.deep.equal([]);
  }

  it('boot 1: the guest creates, writes, truncates, renames, links, chmods and removes; the bucket holds exactly that with s3fs metadata', async () => {
    const sock = fx.dir.file('fs-a.sock');
    const gw = await startFs(sock, 'data', ['--queues', '2', '--log-level', 'debug']);
    // The printed QEMU arguments name the socket, the tag and the queues.
    expect(gw.stdout).to.include(`-chardev socket,id=f0,path=${sock}`);
    expect(gw.stdout).to.include('-device vhost-user-fs-pci,chardev=f0,tag=data,num-request-queues=2');
    expect(gw.stdout).to.include('mount -t virtiofs data /mnt');

    const boot = await bootGuest({
      script: plan.script,
      files: plan.files,
      qemuArgs: vhostUserFsArgs(sock, { tag: 'data', requestQueues: 2 }),
      timeoutMs: 150_000,
    });
    checkFsOpsResults(plan, boot);
    // Hard links are not supported by the object mapping: refused, nothing stored.
    if (!/^[1-9]\d* .*Operation not permitted/.test(boot.results.hardlink ?? '')) throw guestFail(`hard link: ${boot.results.hardlink}`, boot);

    const st = await gw.stop('SIGTERM');
    expect(st.code, gw.describe()).to.equal(0);
    expect(isSocket(sock), 'socket removed').to.equal(false);
    const logs = logLines(gw);
    // All three rings (hiprio + 2 request queues) were started by the guest.
    const started = new Set(logs.filter((l) => l.msg === 'ring started').map((l) => l.queue));
    expect([...started].sort(), gw.describe()).to.include.members([0, 1, 2]);
    expect(logs.some((l) => l.msg === 'FUSE session initialized'), 'FUSE INIT').to.equal(true);
    expect(complaints(gw), 'warnings or errors in the gateway log').to.deep.equal([]);

    await checkBucket();
  });

  it('boot 2: a fresh gateway shows the same tree; a --readonly share refuses changes with EROFS; rm -rf empties the prefix', async () => {
    const sock = fx.dir.file('fs-b.sock');
    const roSock = fx.dir.file('fs-ro.sock');
    const gw = await startFs(sock, 'data', ['--attr-timeout', '0.5', '--entry-timeout', '0.5']);
    const ro = await startFs(roSock, 'ro', ['--readonly']);
    const roOps: Record<string, string> = {
      create: 'touch /ro/new.txt',
      write: 'echo more >> /ro/notes.txt',
      truncate: 'truncate -s 0 /ro/notes.txt',
      mkdir: 'mkdir /ro/newdir',
      rm: 'rm /ro/greeting.txt',
      rmdir: 'rmdir /ro/keepdir',
      rename: 'mv /ro/notes.txt /ro/notes2.txt',
      chmod: 'chmod 777 /ro/notes.txt',
      touch: "touch -d '2001-01-01 00:00:00' /ro/notes.txt",
      symlink: 'ln -s x /ro/newlink',
    };
    const L: string[] = [FS_TREE_SHELL];
    L.push('mkdir -p /mnt /ro');
    L.push('mount -t virtiofs data /mnt && result mount ok || { result mount FAIL; exit 1; }');
    L.push('fs_tree v /mnt');
    L.push('result exec "$(/mnt/script.sh)"; result via_link "$(cat /mnt/link-rel)"; result via_abs_link "$(cat /mnt/link-abs)"');
    L.push('result mtime "$(stat -c %Y /mnt/old.txt)"; result big_tail "$(dd if=/mnt/big.bin bs=50000 skip=4 status=none | md5sum | cut -d\' \' -f1)"');
    L.push('mount -t virtiofs ro /ro && result ro_mount ok || result ro_mount FAIL');
    L.push('result ro_read "$(cat /ro/greeting.txt)"');
    for (const [name, cmd] of Object.entries(roOps)) L.push(`${cmd} 2>/tmp/e; result ro_${name} "$? $(head -n 1 /tmp/e)"`);
    L.push('fs_tree o /ro');
    L.push('umount /ro; result ro_umount_rc $?');
    L.push('rm -rf /mnt/*; result rm_rf_rc $?');
    L.push('result after_rm "$(ls -A /mnt | wc -l)"');
    L.push('sync; cd /; umount /mnt; result umount_rc $?');
    const boot = await bootGuest({
      script: L.join('\n') + '\n',
      qemuArgs: [...vhostUserFsArgs(sock, { id: 'fs0', tag: 'data' }), ...vhostUserFsArgs(roSock, { id: 'fs1', tag: 'ro' })],
      timeoutMs: 150_000,
    });
    const problems: string[] = [];
    for (const d of diffTrees(plan.expectTree, parseFsTree(boot.results, 'v'))) problems.push(`tree v ${d}`);
    for (const d of diffTrees(plan.expectTree, parseFsTree(boot.results, 'o'))) problems.push(`read-only tree ${d}`);
    const want: Record<string, string> = {
      mount: 'ok', exec: 'ran', via_link: 'deep', via_abs_link: 'hello', mtime: String(FS_TOUCH_MTIME),
      big_tail: md5(Buffer.from(plan.contents.get('big.bin')!).subarray(200_000)), ro_mount: 'ok', ro_read: 'hello', ro_umount_rc: '0', rm_rf_rc: '0', after_rm: '0', umount_rc: '0',
    };
    for (const [k, v] of Object.entries(want)) if (boot.results[k] !== v) problems.push(`result ${k}: want ${JSON.stringify(v)}, got ${JSON.stringify(boot.results[k])}`);
    for (const name of Object.keys(roOps)) {
      const r = boot.results[`ro_${name}`] ?? '';
      if (!/^[1-9]\d* .*Read-only file system/.test(r)) problems.push(`read-only ${name}: want a failure with EROFS, got ${JSON.stringify(r)}`);
    }
    if (boot.exitCode !== 0) problems.push(`guest script exited ${boot.exitCode}`);
    if (problems.length > 0) throw guestFail(`boot 2:\n  ${problems.join('\n  ')}`, boot);

    for (const [p, name] of [[gw, 'gateway B'], [ro, 'read-only gateway C']] as const) {
      const st = await p.stop('SIGTERM');
      expect(st.code, p.describe()).to.equal(0);
      expect(complaints(p), `warnings or errors in the log of ${name}`).to.deep.equal([]);
    }
    // Everything under the prefix is gone (a marker for the prefix itself may stay); outside untouched.
    const keys = await allKeys();
    expect(keys.filter((k) => k.startsWith(PREFIX) && k !== PREFIX), 'keys left under the prefix').to.deep.equal([]);
    for (const k of Object.keys(OUTSIDE)) expect((await fx.store.head(k))?.etag, k).to.equal(seedEtags.get(k));
  });

  it('reference: the same guest operations on QEMU virtiofsd over a seeded local directory give the same results and tree', async function () {
    if (!virtiofsdUsable()) this.skip();
    const share = fx.dir.file('share');
    mkdirSync(share);
    for (const s of FS_SEED) {
      const path = join(share, s.path);
      mkdirSync(join(path, '..'), { recursive: true });
      writeFileSync(path, s.data, { mode: 0o644 });
      chownSync(path, FS_SEED_UID, FS_SEED_GID);
      if (s.mtime !== undefined) utimesSync(path, s.mtime, s.mtime);
    }
    for (const d of ['preexisting', 'preexisting/sub']) chownSync(join(share, d), FS_SEED_UID, FS_SEED_GID);
    const sock = fx.dir.file('virtiofsd.sock');
    const vfsd = await startVirtiofsd({ source: share, socket: sock });
    let boot: BootResult;
    try {
      boot = await bootGuest({ script: plan.script, files: plan.files, qemuArgs: vhostUserFsArgs(sock, { tag: 'data' }), timeoutMs: 150_000 });
    } finally {
      await vfsd.stop();
    }
    checkFsOpsResults(plan, boot);
    // And the directory holds it.
    const problems: string[] = [];
    for (const [path, desc] of Object.entries(plan.expectTree)) {
      const full = join(share, path);
      if (!existsSync(full) && desc[0] !== 'l') {
        problems.push(`${path} missing`);
        continue;
      }
      const st = lstatSync(full);
      if (desc[0] === 'l') {
        if (!st.isSymbolicLink() || readlinkSync(full) !== desc.split(' ').slice(4).join(' ')) problems.push(`${path}: not the symlink ${desc}`);
      } else if (desc[0] === 'f' && !readFileSync(full).equals(Buffer.from(plan.contents.get(path)!))) {
        problems.push(`${path}: content differs`);
      }
    }
    expect(problems).to.deep.equal([]);
  });
});


describe('guest: npm start (vhost-s3 serve) serves the disk and the share together', function () {
  this.timeout(240_000);
  let dir: TmpDir;
  let serve: CliProcess | null = null;

  useGuestImage();
  before(() => {
    dir = new TmpDir('vhost-s3-guest-serve-');
  });
  after(async () => {
    await serve?.kill();
    dir?.remove();
  });

  it('a guest booted with the printed QEMU arguments uses the disk and the share, across a reboot (device reset); its files are in the store', async () => {
    const data = dir.file('data');
    serve = new CliProcess(['serve', '--data-dir', data, '--disk-size', '32M']);
    await serve.waitFor('the QEMU arguments', (out) => out.includes('Press Ctrl-C'));
    // The devices exactly as printed (the harness brings its own memory backend).
    const devices = [...serve.stdout.matchAll(/-chardev (\S+) -device (\S+)/g)].flatMap((m) => ['-chardev', m[1]!, '-device', m[2]!]);
    expect(devices.filter((a) => a.startsWith('vhost-user-')).map((a) => a.split(',')[0]), serve.stdout).to.deep.equal(['vhost-user-blk-pci', 'vhost-user-fs-pci']);
    const tag = /mount -t virtiofs (\S+) /.exec(serve.stdout)?.[1];
    expect(tag).to.equal('share');
    // Phase 1 writes to both devices, keeps a file of the share open and reboots (QEMU
    // resets both devices on the same vhost-user connections); phase 2 reads it all back.
    const script = [
      'wait_for /dev/vda 20 && result disk "$(blockdev --getsize64 /dev/vda)" || result disk FAIL',
      `mkdir -p /mnt && mount -t virtiofs ${tag} /mnt && result mount ok || { result mount FAIL; exit 1; }`,
      'if [ ! -e /mnt/docs/hello.txt ]; then',
      '  printf VHS3-SERVE | dd of=/dev/vda bs=512 seek=2048 conv=sync,notrunc oflag=direct status=none',
      '  result disk_read "$(dd if=/dev/vda bs=512 skip=2048 count=1 iflag=direct status=none | head -c 10)"',
      '  result root "$(stat -c %a /mnt) $(ls -A /mnt | wc -l)"',
      '  mkdir /mnt/docs && echo "from the guest" > /mnt/docs/hello.txt && chmod 640 /mnt/docs/hello.txt; result write $?',
      '  exec 3>/mnt/docs/open.txt; echo "open across the reset" >&3',
      '  sync; result phase1 done; reboot -f; sleep 60; exit 99',
      'fi',
      'result after_reset "$(dd if=/dev/vda bs=512 skip=2048 count=1 iflag=direct status=none | head -c 10) $(cat /mnt/docs/hello.txt) $(stat -c %a /mnt/docs/hello.txt)"',
      'result open_after_reset "$(cat /mnt/docs/open.txt)"',
      'umount /mnt; result umount $?',
    ].join('\n');
    const boot = await bootGuest({ script, qemuArgs: [...devices, '-action', 'reboot=reset'], timeoutMs: 150_000 });
    const want = {
      disk: String(32 << 20), mount: 'ok', disk_read: 'VHS3-SERVE', root: '755 0', write: '0', phase1: 'done',
      after_reset: 'VHS3-SERVE from the guest 640', open_after_reset: 'open across the reset', umount: '0',
    };
    const got = Object.fromEntries(Object.keys(want).map((k) => [k, boot.results[k]]));
    if (JSON.stringify(got) !== JSON.stringify(want) || boot.exitCode !== 0) {
      throw guestFail(`serve: want ${JSON.stringify(want)}, got ${JSON.stringify(got)} (exit ${boot.exitCode})`, boot);
    }
    // One connection per device: the reboot was a reset, not a reconnect.
    expect(serve.logLines().filter((l) => l.msg === 'vhost-user frontend connected').length, serve.describe()).to.equal(2);
    const st = await serve.stop('SIGTERM');
    expect(st.code, serve.describe()).to.equal(0);
    expect(complaints(serve), 'warnings or errors in the log').to.deep.equal([]);
    expect(existsSync(join(data, 'fs.sock')) || existsSync(join(data, 'disk0.sock')), 'sockets removed').to.equal(false);
    const { store: local } = await createObjectStore(`file:${join(data, 'store')}`);
    try {
      const obj = await local.get('share/docs/hello.txt');
      expect(Buffer.from(obj.body).toString()).to.equal('from the guest\n');
      expect(obj.metadata.mode).to.equal(String(S_IFREG | 0o640));
      expect(Buffer.from((await local.get('share/docs/open.txt')).body).toString()).to.equal('open across the reset\n');
    } finally {
      await local.close();
    }
  });
});
