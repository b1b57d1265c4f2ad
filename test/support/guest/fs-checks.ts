// A reusable virtio-fs check, run by a real Linux guest against any vhost-user-fs backend
// (vhost-s3 fs, QEMU's virtiofsd), and verified on the host against what the backend
// stores.
//
//   1. the host seeds a few files the backend's own way (`FS_SEED`: objects without
//      metadata in a bucket, plain files in a directory) — among them two directories that
//      exist only because of what is in them;
//   2. the guest (`fsOpsScript`) mounts the share and creates, appends (>> and
//      O_APPEND), overwrites in the middle (dd conv=notrunc), shrinks and extends
//      (truncate), writes past the end (a hole), writes through open descriptors while it
//      stats, reads, unlinks and renames the file, renames files (within and across
//      directories, over an existing file) and directories (one holding 30 files),
//      makes symlinks (relative, absolute, dangling), chmods, chowns, sets an mtime, runs a
//      script from the share, removes files and trees, checks errnos; then `sync`, lists
//      the whole tree (`fs_tree w`), unmounts, mounts again (a cold kernel cache) and lists
//      it again (`fs_tree r`);
//   3. the host compares `results` with `plan.expectResults` and both listings with
//      `plan.expectTree` (checkFsOpsResults), and then checks the backend's storage
//      itself (the caller's job: objects and metadata, or files).
//
// The listing is one result per path: `KEY:path = "f PERM UID GID SIZE MD5"`,
// `"d PERM UID GID"` or `"l PERM UID GID TARGET"` (PERM in octal as `stat -c %a`).
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, statSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';

import { patternBytes } from '../tmp.js';
import { tail, trackChild } from './exec.js';
import { GuestError, type BootResult } from './qemu.js';

/** QEMU arguments of a vhost-user-fs device on `socket` (guest memory must be shared; bootGuest does that). */
export function vhostUserFsArgs(socket: string, o: { id?: string; tag?: string; requestQueues?: number; extra?: string } = {}): string[] {
  const id = o.id ?? 'fs0';
  let dev = `vhost-user-fs-pci,chardev=${id},tag=${o.tag ?? 'data'}`;
  if (o.requestQueues !== undefined) dev += `,num-request-queues=${o.requestQueues}`;
  if (o.extra) dev += `,${o.extra}`;
  return ['-chardev', `socket,id=${id},path=${socket}`, '-device', dev];
}

/**
 * Shell function `fs_tree LABEL DIR`: one `result LABEL:path "..."` per entry below DIR
 * (sorted), as described above, then `result LABEL.count N`.
 */
export const FS_TREE_SHELL = `fs_tree() {
  __l=$1; __d=$2; __n=0
  ( cd "$__d" && find . -mindepth 1 | sort ) > /tmp/fs_tree.list
  while read -r __p; do
    __r=\${__p#./}; __f="$__d/$__r"; __n=$((__n + 1))
    if [ -L "$__f" ]; then result "$__l:$__r" "l $(stat -c '%a %u %g' "$__f") $(readlink "$__f")"
    elif [ -d "$__f" ]; then result "$__l:$__r" "d $(stat -c '%a %u %g' "$__f")"
    else result "$__l:$__r" "f $(stat -c '%a %u %g %s' "$__f") $(md5sum < "$__f" | cut -d' ' -f1)"; fi
  done < /tmp/fs_tree.list
  result "$__l.count" "$__n"
}
`;

/** The entries of `fs_tree LABEL` from a boot's results: path → description. */
export function parseFsTree(results: Record<string, string>, label: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(results)) if (k.startsWith(`${label}:`)) out[k.slice(label.length + 1)] = v;
  return out;
}

export function md5(data: Uint8Array | string): string {
  return createHash('md5').update(data).digest('hex');
}

/** `fs_tree`'s description of a regular file. */
export function fileEntry(perm: number, uid: number, gid: number, data: Uint8Array | string): string {
  const bytes = typeof data === 'string' ? Buffer.from(data) : data;
  return `f ${perm.toString(8)} ${uid} ${gid} ${bytes.length} ${md5(bytes)}`;
}
export function dirEntry(perm: number, uid: number, gid: number): string {
  return `d ${perm.toString(8)} ${uid} ${gid}`;
}
export function linkEntry(uid: number, gid: number, target: string): string {
  return `l 777 ${uid} ${gid} ${target}`;
}

// ---------------------------------------------------------------------------------------
// The operations check

/** Owner the backend must show for the seeded files (vhost-s3: --uid/--gid; virtiofsd: chown). */
export const FS_SEED_UID = 1234;
export const FS_SEED_GID = 2345;
/** mtime of seed/other.txt (vhost-s3: rclone's x-amz-meta-mtime; virtiofsd: utimes). */
export const FS_SEED_MTIME = 1600000000;
/** The mtime the guest sets on old.txt (touch -d '2020-01-02 03:04:05', guest in UTC). */
export const FS_TOUCH_MTIME = 1577934245;

/**
 * Files the host puts in place before boot (paths relative to the share root). Their
 * directories (`preexisting`, `preexisting/sub`) are not created explicitly: on a bucket
 * they are implied by the keys; a directory backend creates them 0755 owned by
 * FS_SEED_UID/FS_SEED_GID.
 */
export const FS_SEED: readonly { path: string; data: Uint8Array; mtime?: number }[] = [
  { path: 'preexisting/plain.txt', data: Buffer.from('seeded by the host, no metadata\n') },
  { path: 'preexisting/other.txt', data: Buffer.from('seeded with an rclone mtime\n'), mtime: FS_SEED_MTIME },
  { path: 'preexisting/sub/only.txt', data: Buffer.from('the only entry of an implied directory\n') },
];

export interface FsOpsPlan {
  /** Guest mount point (symlink targets depend on it). */
  readonly mountpoint: string;
  readonly tag: string;
  /** For bootGuest. */
  readonly script: string;
  readonly files: Record<string, Buffer>;
  /** Result key → exact value. */
  readonly expectResults: Readonly<Record<string, string>>;
  /** path → fs_tree description, after the operations (both `w` and `r`). */
  readonly expectTree: Readonly<Record<string, string>>;
  /** Bytes of every regular file in expectTree. */
  readonly contents: ReadonlyMap<string, Uint8Array>;
  /** Paths that must not exist afterwards. */
  readonly gone: readonly string[];
}

const PATTERN_SIZE = 300_000;
const PATCH_OFFSET = 100_000;
const PATCH_SIZE = 5000;

export function makeFsOpsPlan(o: { tag?: string; mountpoint?: string } = {}): FsOpsPlan {
  const tag = o.tag ?? 'data';
  const mnt = o.mountpoint ?? '/mnt';
  const pattern = Buffer.from(patternBytes(7, PATTERN_SIZE));
  const patch = Buffer.from(patternBytes(8, PATCH_SIZE));

  // big.bin: the pattern, patched in the middle, shrunk to 200000, extended to 250000.
  const big = Buffer.alloc(250_000);
  const patched = Buffer.from(pattern);
  patch.copy(patched, PATCH_OFFSET);
  patched.copy(big, 0, 0, 200_000);
  const sparse = Buffer.alloc(1_000_001);
  sparse[1_000_000] = 0x58; // 'X'
  const script = '#!/bin/sh\necho ran\n';

  const contents = new Map<string, Uint8Array>();
  const tree: Record<string, string> = {};
  const file = (path: string, perm: number, data: Uint8Array | string, uid = 0, gid = 0): void => {
    const bytes = typeof data === 'string' ? Buffer.from(data) : data;
    contents.set(path, bytes);
    tree[path] = fileEntry(perm, uid, gid, bytes);
  };
  const dir = (path: string, perm = 0o755, uid = 0, gid = 0): void => {
    tree[path] = dirEntry(perm, uid, gid);
  };
  file('big.bin', 0o644, big);
  tree['dangling'] = linkEntry(0, 0, 'nowhere');
  file('greeting.txt', 0o600, 'hello\n');
  dir('keepdir');
  tree['link-abs'] = linkEntry(0, 0, `${mnt}/greeting.txt`);
  tree['link-rel'] = linkEntry(0, 0, 'renamed/sub/deep.txt');
  dir('lots');
  for (let i = 1; i <= 30; i++) file(`lots/f${i}`, 0o644, `${i}\n`);
  file('notes.txt', 0o644, 'line1\nline2\nline3\n');
  file('old.txt', 0o644, 'old\n');
  file('open.txt', 0o644, 'abcdef');
  file('owned.txt', 0o644, 'mine\n', 1000, 1000);
  dir('preexisting', 0o755, FS_SEED_UID, FS_SEED_GID);
  file('preexisting/plain.txt', 0o644, FS_SEED[0]!.data, FS_SEED_UID, FS_SEED_GID);
  dir('preexisting/sub', 0o755, FS_SEED_UID, FS_SEED_GID);
  dir('renamed');
  dir('renamed/sub', 0o750);
  file('renamed/sub/deep.txt', 0o644, 'deep\n');
  file('renamed/sub/moved.txt', 0o644, 'a\n');
  file('script.sh', 0o700, script);
  file('sparse.bin', 0o644, sparse);
  file('trunc.txt', 0o644, '0123');
  file('victim.txt', 0o644, 'new\n');
  file('wmoved.txt', 0o644, '12');

  const gone = ['hello.txt', 'dir1', 'src.txt', 'ghost.txt', 'wopen.txt', 'gone.txt', 'trash', 'empty', 'many', 'hard',
    'preexisting/other.txt', 'preexisting/sub/only.txt'];

  const patchedMd5 = md5(patched);
  const expectResults: Record<string, string> = {
    mount: 'ok', fstype: 'virtiofs',
    initial: 'preexisting,', seed_plain: `644 ${FS_SEED_UID} ${FS_SEED_GID} ${FS_SEED[0]!.data.length}`,
    seed_mtime: String(FS_SEED_MTIME), seed_dir: `755 ${FS_SEED_UID} ${FS_SEED_GID}`,
    create_rc: '0', append_rc: '0', append_dd_rc: '0', cp_rc: '0', cp_md5: md5(pattern), overwrite_rc: '0',
    big_mid: `${patchedMd5} ${PATTERN_SIZE}`, big_patch: md5(patch), shrink_rc: '0', extend_rc: '0', trunc: '0123',
    sparse_size: '1000001', sparse_hole: md5(Buffer.alloc(4096)),
    open_size: '3', open_read: 'abc', open_final: 'abcdef',
    ghost: 'absent', ghost_ls: '0', wopen: 'absent', wmoved: '12',
    mkdir_rc: '0', mv_file_rc: '0', mv_across_rc: '0', mv_dir_rc: '0', old_dir_gone: 'yes', renamed_list: 'sub,',
    mv_replace: 'new', mv_many_rc: '0', lots_count: '30', many_gone: 'yes', lots_f17: '17',
    symlink_rc: '0', readlink: 'renamed/sub/deep.txt', via_link: 'deep', via_abs_link: 'hello', dangling_cat_rc: '1',
    chmod_rc: '0', exec: 'ran', chown_rc: '0', touch_rc: '0', touch_mtime: String(FS_TOUCH_MTIME),
    rm_rc: '0', rm_r_rc: '0', rmdir_rc: '0', rm_seed_rc: '0', seed_sub_stays: 'yes', rm_seed_sub_rc: '0', seed_sub_empty: '0',
    mkdir_exists_rc: '1', rmdir_notempty_rc: '1', unlink_dir_rc: '1', rmdir_file_rc: '1', cat_missing_rc: '1',
    ls_greeting: '-rw-------', ls_script: '-rwx------', ls_count: String(Object.keys(tree).filter((p) => !p.includes('/')).length),
    df_rc: '0', sync_rc: '0', umount_rc: '0', remount: 'ok', umount2_rc: '0',
    'w.count': String(Object.keys(tree).length), 'r.count': String(Object.keys(tree).length),
  };

  const L: string[] = [FS_TREE_SHELL];
  const M = mnt;
  L.push(`mkdir -p ${M} && mount -t virtiofs ${tag} ${M} && result mount ok || { result mount FAIL; exit 1; }`);
  L.push(`result fstype "$(grep ' ${M} ' /proc/mounts | cut -d' ' -f3)"`);
  L.push(`cd ${M} || exit 1`);
  // What the host seeded.
  L.push(`result initial "$(ls -A | tr '\\n' ,)"`);
  L.push(`result seed_plain "$(stat -c '%a %u %g %s' preexisting/plain.txt)"`);
  L.push(`result seed_mtime "$(stat -c %Y preexisting/other.txt)"`);
  L.push(`result seed_dir "$(stat -c '%a %u %g' preexisting/sub)"`);
  // Create, append, overwrite in the middle, truncate, a hole.
  L.push('echo hello > hello.txt; result create_rc $?');
  L.push("printf 'line1\\n' > notes.txt");
  L.push("printf 'line2\\n' >> notes.txt; result append_rc $?");
  L.push("printf 'line3\\n' | dd of=notes.txt oflag=append conv=notrunc status=none; result append_dd_rc $?");
  L.push('cp /fsdata/pattern.bin big.bin; result cp_rc $?');
  L.push('result cp_md5 "$(md5sum < big.bin | cut -d\' \' -f1)"');
  L.push(`dd if=/fsdata/patch.bin of=big.bin bs=${PATCH_SIZE} seek=${PATCH_OFFSET / PATCH_SIZE} count=1 conv=notrunc status=none; result overwrite_rc $?`);
  L.push('result big_mid "$(md5sum < big.bin | cut -d\' \' -f1) $(stat -c %s big.bin)"');
  L.push(`result big_patch "$(dd if=big.bin bs=${PATCH_SIZE} skip=${PATCH_OFFSET / PATCH_SIZE} count=1 status=none | md5sum | cut -d' ' -f1)"`);
  L.push('truncate -s 200000 big.bin; result shrink_rc $?');
  L.push('truncate -s 250000 big.bin; result extend_rc $?');
  L.push("printf '0123456789' > trunc.txt; truncate -s 4 trunc.txt; result trunc \"$(cat trunc.txt)\"");
  L.push('printf X | dd of=sparse.bin bs=1 seek=1000000 conv=notrunc status=none');
  L.push('result sparse_size "$(stat -c %s sparse.bin)"');
  L.push('result sparse_hole "$(dd if=sparse.bin bs=4096 skip=100 count=1 status=none | md5sum | cut -d\' \' -f1)"');
  // Open descriptors: stat and read while writing; unlink and rename while open.
  L.push('exec 3>open.txt; printf abc >&3; result open_size "$(stat -c %s open.txt)"; result open_read "$(cat open.txt)"; printf def >&3; exec 3>&-');
  L.push('result open_final "$(cat open.txt)"');
  L.push('exec 4>ghost.txt; printf boo >&4; rm ghost.txt; printf more >&4; exec 4>&-');
  L.push('result ghost "$([ -e ghost.txt ] && echo present || echo absent)"; result ghost_ls "$(ls | grep -c ghost)"');
  L.push('exec 5>wopen.txt; printf 1 >&5; mv wopen.txt wmoved.txt; printf 2 >&5; exec 5>&-');
  L.push('result wopen "$([ -e wopen.txt ] && echo present || echo absent)"; result wmoved "$(cat wmoved.txt)"');
  // Directories and renames.
  L.push('mkdir -p dir1/sub; result mkdir_rc $?');
  L.push('echo deep > dir1/sub/deep.txt; echo a > dir1/a.txt');
  L.push('mv hello.txt greeting.txt; result mv_file_rc $?');
  L.push('mv dir1/a.txt dir1/sub/moved.txt; result mv_across_rc $?');
  L.push('mv dir1 renamed; result mv_dir_rc $?');
  L.push('result old_dir_gone "$([ -e dir1 ] && echo no || echo yes)"; result renamed_list "$(ls renamed | tr \'\\n\' ,)"');
  L.push('echo old > victim.txt; echo new > src.txt; mv src.txt victim.txt; result mv_replace "$(cat victim.txt)"');
  L.push('mkdir many; for i in $(seq 1 30); do echo $i > many/f$i; done');
  L.push('mv many lots; result mv_many_rc $?');
  L.push('result lots_count "$(ls lots | wc -l)"; result many_gone "$([ -e many ] && echo no || echo yes)"; result lots_f17 "$(cat lots/f17)"');
  // Symlinks, permissions, owners, times, executing from the share.
  L.push('ln -s renamed/sub/deep.txt link-rel; result symlink_rc $?');
  L.push(`ln -s ${M}/greeting.txt link-abs; ln -s nowhere dangling`);
  L.push('result readlink "$(readlink link-rel)"; result via_link "$(cat link-rel)"; result via_abs_link "$(cat link-abs)"');
  L.push('cat dangling >/dev/null 2>&1; result dangling_cat_rc $?');
  L.push('chmod 600 greeting.txt; result chmod_rc $?');
  L.push('chmod 750 renamed/sub');
  L.push(`printf '#!/bin/sh\\necho ran\\n' > script.sh; chmod 700 script.sh; result exec "$(./script.sh)"`);
  L.push('echo mine > owned.txt; chown 1000:1000 owned.txt; result chown_rc $?');
  L.push("echo old > old.txt; touch -d '2020-01-02 03:04:05' old.txt; result touch_rc $?; result touch_mtime \"$(stat -c %Y old.txt)\"");
  // Removals; the seeded implied directories stay when emptied.
  L.push('echo x > gone.txt; rm gone.txt; result rm_rc $?');
  L.push('mkdir -p trash/a/b && echo y > trash/a/b/f && echo z > trash/a/g && rm -r trash; result rm_r_rc $?');
  L.push('mkdir empty && rmdir empty; result rmdir_rc $?');
  L.push('rm preexisting/other.txt; result rm_seed_rc $?');
  L.push('rm preexisting/sub/only.txt; result rm_seed_sub_rc $?');
  L.push('result seed_sub_stays "$([ -d preexisting/sub ] && echo yes || echo no)"; result seed_sub_empty "$(ls -A preexisting/sub | wc -l)"');
  L.push('mkdir keepdir');
  // Errors.
  L.push('mkdir keepdir 2>/dev/null; result mkdir_exists_rc $?');
  L.push('rmdir renamed 2>/tmp/e; result rmdir_notempty_rc $?; result rmdir_notempty_msg "$(cat /tmp/e)"');
  L.push('rm keepdir 2>/dev/null; result unlink_dir_rc $?');
  L.push('rmdir greeting.txt 2>/dev/null; result rmdir_file_rc $?');
  L.push('cat missing.txt >/dev/null 2>&1; result cat_missing_rc $?');
  L.push('ln greeting.txt hard 2>/tmp/e; result hardlink "$? $(cat /tmp/e)"; rm -f hard');
  // Listing.
  L.push('result ls_greeting "$(ls -l greeting.txt | cut -c1-10)"; result ls_script "$(ls -l script.sh | cut -c1-10)"');
  L.push("result ls_count \"$(ls -l | grep -c '^[-dl]')\"");
  L.push(`df ${M} >/dev/null; result df_rc $?`);
  L.push('sync; result sync_rc $?');
  L.push(`fs_tree w ${M}`);
  L.push(`cd /; umount ${M}; result umount_rc $?`);
  L.push(`mount -t virtiofs ${tag} ${M} && result remount ok || result remount FAIL`);
  L.push(`fs_tree r ${M}`);
  L.push(`umount ${M}; result umount2_rc $?`);
  return {
    mountpoint: mnt, tag, script: L.join('\n') + '\n',
    files: { '/fsdata/pattern.bin': pattern, '/fsdata/patch.bin': patch },
    expectResults, expectTree: tree, contents, gone,
  };
}

/** Every mismatch between two path → description maps, one line each. */
export function diffTrees(want: Readonly<Record<string, string>>, got: Readonly<Record<string, string>>): string[] {
  const out: string[] = [];
  for (const p of [...new Set([...Object.keys(want), ...Object.keys(got)])].sort()) {
    if (want[p] !== got[p]) out.push(`${p}: want ${want[p] ?? '(absent)'}, got ${got[p] ?? '(absent)'}`);
  }
  return out;
}

/** Checks a boot of plan.script: every expected result and both listings; throws a GuestError naming every difference. */
export function checkFsOpsResults(plan: FsOpsPlan, boot: BootResult, o: { ignore?: readonly string[] } = {}): void {
  const problems: string[] = [];
  for (const [k, v] of Object.entries(plan.expectResults)) {
    if (o.ignore?.includes(k)) continue;
    if (boot.results[k] !== v) problems.push(`result ${k}: want ${JSON.stringify(v)}, got ${JSON.stringify(boot.results[k])}`);
  }
  for (const label of ['w', 'r']) for (const d of diffTrees(plan.expectTree, parseFsTree(boot.results, label))) problems.push(`tree ${label} ${d}`);
  if (boot.exitCode !== 0) problems.push(`guest script exited ${boot.exitCode}`);
  if (problems.length > 0) throw new GuestError(`virtio-fs checks failed:\n  ${problems.join('\n  ')}`, boot.output, '');
}

// ---------------------------------------------------------------------------------------
// QEMU's virtiofsd, the reference vhost-user-fs backend

export const VIRTIOFSD = '/usr/lib/qemu/virtiofsd';

export interface Virtiofsd {
  readonly proc: ChildProcess;
  readonly socket: string;
  output(): string;
  /** SIGTERM, then SIGKILL after 5 s. */
  stop(): Promise<void>;
}

/** True when virtiofsd can run here (installed, and we are root as it needs). */
export function virtiofsdUsable(): boolean {
  return existsSync(VIRTIOFSD) && process.getuid?.() === 0;
}

/** Starts virtiofsd sharing `source` on `socket` and waits for the socket. */
export async function startVirtiofsd(o: { source: string; socket: string; cache?: 'none' | 'auto' | 'always'; binary?: string }): Promise<Virtiofsd> {
  const proc = spawn(o.binary ?? VIRTIOFSD, [`--socket-path=${o.socket}`, '-o', `source=${o.source}`, '-o', 'sandbox=chroot', '-o', `cache=${o.cache ?? 'none'}`], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  proc.stdout!.on('data', (b: Buffer) => (out += b.toString()));
  proc.stderr!.on('data', (b: Buffer) => (out += b.toString()));
  proc.on('error', (e) => (out += `spawn error: ${e.message}\n`));
  let exited = false;
  const exitP = new Promise<void>((res) => proc.on('close', () => { exited = true; res(); }));
  trackChild(proc);
  const d: Virtiofsd = {
    proc, socket: o.socket,
    output: () => out,
    stop: async () => {
      if (exited) return;
      proc.kill('SIGTERM');
      const t = setTimeout(() => proc.kill('SIGKILL'), 5000);
      await exitP;
      clearTimeout(t);
    },
  };
  const deadline = Date.now() + 10_000;
  for (;;) {
    let ok = false;
    try {
      ok = statSync(o.socket).isSocket();
    } catch {
      /* not yet */
    }
    if (ok) return d;
    if (exited || Date.now() > deadline) {
      await d.stop();
      throw new Error(`virtiofsd did not listen on ${o.socket}:\n${tail(out, 20)}`);
    }
    await sleep(20);
  }
}
