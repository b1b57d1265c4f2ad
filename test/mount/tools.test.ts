// Layer 4: `vhost-s3 mount` (a child process) over s3rver and over a file: store, driven
// by ordinary tools — coreutils, findutils, tar, dd, attr — in child processes; then the
// objects are checked in the store directly (s3fs-style metadata, `dir/` markers), and a
// fresh mount of the same bucket must show the same tree.
//
// Each test works in its own directory of the one mount. The mount is started with
// --uid 4321 --gid 8765 so that objects without uid/gid metadata (seeded into the store
// before mounting) are told apart from files created by root through the mount.
import { expect } from 'chai';
import { createHash } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { S_IFDIR, S_IFLNK, S_IFREG } from '../../src/backends/posix/metadata.js';
import { forEachLimit } from '../../src/backends/posix/locks.js';
import { TmpDir } from '../support/tmp.js';
import { keysUnder, mountPrereqProblem, sh, shOk, startBackend, startMount, type Backend, type BackendKind, type Mount } from '../support/mount.js';

const MiB = 1024 * 1024;
/** 1100 names of 6..45 bytes: f0001-, f0002-x, ... */
const BIG_NAMES = Array.from({ length: 1100 }, (_, i) => `f${String(i + 1).padStart(4, '0')}-${'x'.repeat((i + 1) % 40)}`);
const enc = (s: string): Uint8Array => new TextEncoder().encode(s);

/** `find` listing of a tree: path type mode uid gid size(files, symlinks) mtime(ns) target — what must survive a copy. */
const FIND_SNAPSHOT = String.raw`find . -mindepth 1 \( -type d -printf '%P %y %m %U %G - %T@ -\n' \) -o \( -type l -printf '%P %y %m %U %G %s %T@ %l\n' \) -o -printf '%P %y %m %U %G %s %T@ -\n' | sort`;

for (const kind of ['s3', 'file'] as BackendKind[]) {
  describe(`vhost-s3 mount over ${kind === 's3' ? 's3rver' : 'a file: store'}: ordinary tools`, function () {
    // Generous: on a loaded 2-core machine s3rver gets slow (a test that takes 10 s alone took 45 s with the rest of the suite running).
    this.timeout(120_000);
    let be: Backend | undefined;
    let m: Mount | undefined;
    let local: TmpDir | undefined;

    /** Runs a bash script (set -e) in `dir` of the mount; $M is the mount, $L a local temp dir. */
    const run = async (script: string, dir = '', timeoutMs = 100_000): Promise<string> => {
      await shOk(`mkdir -p "$M/${dir}"`, { env: envFor() });
      return shOk(script, { dir: m!.p(dir), env: envFor(), timeoutMs });
    };
    /** The same, but returns stdout+stderr and the exit code, for scripts expected to fail. */
    const runAny = async (script: string, dir = ''): Promise<{ code: number | null; out: string }> => {
      await shOk(`mkdir -p "$M/${dir}"`, { env: envFor() });
      const r = await sh(script, { dir: m!.p(dir), env: envFor() });
      return { code: r.code, out: r.stdout + r.stderr };
    };
    const envFor = (): NodeJS.ProcessEnv => ({ ...process.env, M: m!.path, L: local!.path });
    const key = (path: string): string => be!.prefix + path;

    before(async function () {
      const problem = mountPrereqProblem();
      if (problem) this.skip();
      this.timeout(60_000);
      local = new TmpDir('vhost-s3-tools-');
      be = await startBackend(kind, 'tools');
      // Objects another tool wrote, before the mount starts (nothing is cached yet).
      await be.store.put(key('seeded/plain.txt'), enc('plain\n'));
      await be.store.put(key('seeded/octal.txt'), enc('octal\n'), { metadata: { mode: '0100600', uid: '1001', gid: '1002', mtime: '1000000000.5' } });
      await be.store.put(key('seeded/rclone.txt'), enc('rclone\n'), { metadata: { mtime: '1600000000.25' } });
      // A mode without the file type (as s3fs writes for directories): permission bits of a regular file.
      await be.store.put(key('seeded/permonly.txt'), enc('p\n'), { metadata: { mode: String(0o640), mtime: '1234567890' } });
      // (s3rver reports a common prefix only where it has objects right below it: `implicit/f0`.)
      await be.store.put(key('seeded/implicit/f0'), enc('f0\n'));
      await be.store.put(key('seeded/implicit/deeper/f'), enc('deep\n'));
      await forEachLimit(BIG_NAMES, 16, (n) => be!.store.put(key(`big/many/${n}`), enc(`${parseInt(n.slice(1), 10)}\n`)).then(() => undefined));
      m = await startMount({ bucket: be.locator, env: be.env, args: ['--uid', '4321', '--gid', '8765'] });
    });

    after(async function () {
      this.timeout(30_000);
      if (m) {
        const st = await m.stop();
        // A mount that had to be aborted or detached means the server hung or died.
        if (!st.clean) console.error(`mount over ${kind} did not stop cleanly:\n${m.describe()}`);
      }
      await be?.close();
      local?.remove();
    });

    it('reads objects written by others: defaults for missing metadata, octal modes, rclone mtimes, implicit directories', async () => {
      const out = await run(`stat -c '%n|%F|%a|%u|%g|%s|%.9Y' plain.txt octal.txt rclone.txt implicit implicit/deeper permonly.txt; cat implicit/deeper/f`, 'seeded');
      const lines = out.trim().split('\n');
      const byName = new Map(lines.slice(0, 6).map((l) => [l.split('|')[0]!, l.split('|').slice(1)]));
      expect(byName.get('permonly.txt')).to.deep.equal(['regular file', '640', '4321', '8765', '2', '1234567890.000000000']);
      expect(byName.get('plain.txt')!.slice(0, 5)).to.deep.equal(['regular file', '644', '4321', '8765', '6']);
      // No mtime metadata: LastModified (seconds ago).
      expect(Math.abs(Number(byName.get('plain.txt')![5]) - Date.now() / 1000)).to.be.below(120);
      expect(byName.get('octal.txt')).to.deep.equal(['regular file', '600', '1001', '1002', '6', '1000000000.500000000']);
      expect(byName.get('rclone.txt')).to.deep.equal(['regular file', '644', '4321', '8765', '7', '1600000000.250000000']);
      expect(byName.get('implicit')!.slice(0, 4)).to.deep.equal(['directory', '755', '4321', '8765']);
      expect(byName.get('implicit/deeper')!.slice(0, 4)).to.deep.equal(['directory', '755', '4321', '8765']);
      expect(lines[6]).to.equal('deep');
      expect(await run('find . | sort', 'seeded')).to.equal('.\n./implicit\n./implicit/deeper\n./implicit/deeper/f\n./implicit/f0\n./octal.txt\n./permonly.txt\n./plain.txt\n./rclone.txt\n');
    });

    it('cp copies empty, small and multi-MiB files (and a multipart-sized one) byte for byte, there and back; cp -p keeps mode and mtime', async function () {
      this.timeout(150_000);
      const out = await run(String.raw`
        : > "$L/empty"; head -c 1000 /dev/urandom > "$L/small"; head -c $((5*1024*1024+123)) /dev/urandom > "$L/big"
        head -c $((33*1024*1024+7)) /dev/urandom > "$L/huge"
        cp "$L/empty" "$L/small" "$L/big" "$L/huge" .
        chmod 751 "$L/small"; touch -d '2010-05-06 07:08:09.5' "$L/small"; cp -p "$L/small" small-p
        for f in empty small big huge; do
          a=$(md5sum < "$L/$f"); b=$(md5sum < "$f"); [ "$a" = "$b" ] || { echo "md5 differs: $f"; exit 1; }
          cp "$f" "$L/$f.back"; cmp "$L/$f" "$L/$f.back"
        done
        stat -c '%n %s %a %.9Y' empty small big huge small-p`, 'cp');
      const rows = out.trim().split('\n').map((l) => l.split(' '));
      expect(rows.map((r) => r.slice(0, 3).join(' '))).to.deep.equal(['empty 0 644', 'small 1000 644', `big ${5 * MiB + 123} 644`, `huge ${33 * MiB + 7} 644`, 'small-p 1000 751']);
      for (const r of rows.slice(0, 4)) expect(Math.abs(Number(r[3]) - Date.now() / 1000), r.join(' ')).to.be.below(120);
      expect(rows[4]![3]).to.equal('1273129689.500000000');
      // And the object in the store is the same bytes.
      const huge = await be!.store.get(key('cp/huge'));
      const localHuge = await readFile(local!.file('huge'));
      expect(huge.body.length).to.equal(localHuge.length);
      expect(createHash('md5').update(huge.body).digest('hex')).to.equal(createHash('md5').update(localHuge).digest('hex'));
    });

    it('mv renames files, replaces a target, and moves directories with their contents', async () => {
      const out = await run(String.raw`
        mkdir -p src/sub/deep dst
        echo a > src/a; echo b > src/sub/b; head -c 300000 /dev/urandom > src/sub/deep/r; ln -s ../a src/sub/l; mkdir src/empty
        sum=$(md5sum < src/sub/deep/r)
        mv src/a src/a2                      # same directory
        mv src/a2 dst/a3                     # across directories
        echo x > over; echo y > victim; mv over victim   # replaces
        mv src moved                         # a directory tree
        [ ! -e src ] && [ ! -e over ]
        [ "$(md5sum < moved/sub/deep/r)" = "$sum" ]
        mv moved dst/                        # into another directory
        find . | sort
        echo ---; cat dst/a3 victim dst/moved/sub/b; readlink dst/moved/sub/l`, 'mv');
      expect(out.split('\n---\n')[0]!.trim().split('\n')).to.deep.equal([
        '.', './dst', './dst/a3', './dst/moved', './dst/moved/empty', './dst/moved/sub', './dst/moved/sub/b', './dst/moved/sub/deep',
        './dst/moved/sub/deep/r', './dst/moved/sub/l', './victim',
      ]);
      expect(out.split('\n---\n')[1]).to.equal('a\nx\nb\n../a\n');
      // Nothing is left of the old names in the store.
      const keys = await keysUnder(be!, 'mv/');
      expect(keys.filter((k) => k.startsWith('mv/src') || k === 'mv/over' || k.startsWith('mv/moved'))).to.deep.equal([]);
      expect(keys).to.include.members(['mv/dst/moved/sub/deep/r', 'mv/dst/a3', 'mv/victim', 'mv/dst/moved/empty/']);
    });

    it('ls -l shows modes, owners, sizes and symlink targets', async () => {
      const out = await run(String.raw`
        printf 12345 > f644; : > e600; chmod 600 e600; mkdir d700; chmod 700 d700
        printf '#!/bin/sh\n' > x755; chmod 755 x755; chown 1234:5678 f644; ln -s f644 l
        ls -ln --time-style=+%s`, 'ls');
      const rows = out.trim().split('\n').slice(1).map((l) => l.split(/\s+/));
      const by = new Map(rows.map((r) => [r[6]!, r]));
      expect([...by.keys()].sort()).to.deep.equal(['d700', 'e600', 'f644', 'l', 'x755']);
      const pick = (n: string): string[] => [by.get(n)![0]!, by.get(n)![2]!, by.get(n)![3]!, by.get(n)![4]!];
      expect(pick('f644')).to.deep.equal(['-rw-r--r--', '1234', '5678', '5']);
      expect(pick('e600')).to.deep.equal(['-rw-------', '0', '0', '0']);
      expect(pick('x755')).to.deep.equal(['-rwxr-xr-x', '0', '0', '10']);
      expect(pick('l')).to.deep.equal(['lrwxrwxrwx', '0', '0', '4']);
      expect(by.get('l')!.slice(7)).to.deep.equal(['->', 'f644']);
      expect(by.get('d700')![0]).to.equal('drwx------');
      expect(by.get('d700')!.slice(2, 4)).to.deep.equal(['0', '0']);
      // Every mtime is recent.
      for (const r of rows) expect(Math.abs(Number(r[5]) - Date.now() / 1000), r.join(' ')).to.be.below(120);
    });

    it('stat reports types, sizes, modes, owners, link counts and the file system', async () => {
      const out = await run(String.raw`
        head -c 12345 /dev/zero > f; mkdir d; ln -s f l
        stat -c '%n|%F|%s|%a|%u|%g|%h' f d l
        stat -L -c '%n|%F|%s' l
        stat -f -c '%T|%l|%S' .`, 'stat');
      const lines = out.trim().split('\n');
      expect(lines.slice(0, 4)).to.deep.equal([
        'f|regular file|12345|644|0|0|1',
        // Directory link counts are 1 (not 2 + subdirectories): documented in src/fuse/server.ts.
        'd|directory|4096|755|0|0|1',
        'l|symbolic link|1|777|0|0|1',
        'l|regular file|12345',
      ]);
      expect(lines[4]).to.match(/^fuseblk\|255\|[1-9][0-9]*$/);
    });

    it('find selects by name, type, size, mtime, permissions and emptiness', async () => {
      const out = await run(String.raw`
        mkdir -p a/b/c e; echo one > a/one.txt; head -c 5000 /dev/zero > a/b/big.bin; : > a/b/c/empty.txt
        ln -s one.txt a/link; chmod 600 a/b/big.bin
        touch -d '2000-01-01' a/one.txt; touch -d '2020-01-01' ref; touch -d '2021-01-01' a/b/c/empty.txt
        echo "all:"; find . -mindepth 1 | sort
        echo "names:"; find . -name '*.txt' | sort
        echo "dirs:"; find . -type d | sort
        echo "links:"; find . -type l
        echo "big:"; find . -type f -size +4k
        echo "newer:"; find a -type f -newer ref | sort
        echo "perm:"; find . -perm 600
        echo "empty:"; find . -empty | sort`, 'find');
      expect(out).to.equal([
        'all:', './a', './a/b', './a/b/big.bin', './a/b/c', './a/b/c/empty.txt', './a/link', './a/one.txt', './e', './ref',
        'names:', './a/b/c/empty.txt', './a/one.txt',
        'dirs:', '.', './a', './a/b', './a/b/c', './e',
        'links:', './a/link',
        'big:', './a/b/big.bin',
        'newer:', 'a/b/big.bin', 'a/b/c/empty.txt',
        'perm:', './a/b/big.bin',
        'empty:', './a/b/c/empty.txt', './e', './ref',
      ].join('\n') + '\n');
    });

    it('truncate shrinks and extends with zeros (same bytes as on a local file)', async () => {
      const out = await run(String.raw`
        head -c 10000 /dev/urandom > "$L/t"; cp "$L/t" t
        for s in 4000 3145728 +100 0 777; do
          truncate -s "$s" t; truncate -s "$s" "$L/t"
          cmp t "$L/t"; stat -c %s t
        done
        truncate -s 3000 t; head -c 10 t | od -An -tx1 | tr -d ' \n'; echo
        printf 'a long first version\n' > r; printf 'short\n' > r; cat r    # O_TRUNC
        printf 'more\n' >> r; printf 'end\n' >> r; cat r; stat -c %s r      # O_APPEND`, 'truncate');
      expect(out).to.equal('4000\n3145728\n3145828\n0\n777\n00000000000000000000\nshort\nshort\nmore\nend\n15\n');
    });

    it('ln -s and readlink: relative, absolute, dangling, long targets; ln -sf replaces; hard links are refused', async () => {
      const long = 'x/'.repeat(500) + 'end';
      const out = await run(String.raw`
        echo target > t; ln -s t rel; ln -s /etc/hostname abs; ln -s no/such dangling; ln -s "${long}" long
        readlink rel abs dangling; readlink long | wc -c; cat rel
        [ -L dangling ] && [ ! -e dangling ] && echo dangling-ok
        echo other > t2; ln -sf t2 rel; readlink rel; cat rel
        readlink -f rel | sed "s|^$M/||"
        ln t hard 2>&1 || echo "ln: $?"`, 'ln');
      expect(out).to.equal(`t\n/etc/hostname\nno/such\n${long.length + 1}\ntarget\ndangling-ok\nt2\nother\nln/t2\nln: failed to create hard link 'hard' => 't': Operation not permitted\nln: 1\n`);
    });

    it('touch -d sets mtime and atime to the nanosecond; they are what the store keeps', async () => {
      const out = await run(String.raw`
        echo x > f; touch -m -d '2001-02-03 04:05:06.123456789' f; touch -a -d '1999-12-31 23:59:59.5' f
        mkdir d; touch -d '2002-02-02 02:02:02' d
        ln -s f l; touch -h -d '2003-03-03 03:03:03.25' l
        touch -d '1965-01-01 00:00:00.75' old
        stat -c '%n %.9Y %.9X' f d l old`, 'touch');
      expect(out.trim().split('\n')).to.deep.equal([
        'f 981173106.123456789 946684799.500000000',
        `d 1012615322.000000000 ${out.trim().split('\n')[1]!.split(' ')[2]}`,
        `l 1046660583.250000000 ${out.trim().split('\n')[2]!.split(' ')[2]}`,
        `old -157766399.250000000 -157766399.250000000`,
      ]);
      const f = await be!.store.head(key('touch/f'));
      expect(f!.metadata).to.include({ mtime: '981173106.123456789', atime: '946684799.500000000' });
      const d = await be!.store.head(key('touch/d/'));
      expect(d!.metadata.mtime).to.equal('1012615322');
      const l = await be!.store.head(key('touch/l'));
      expect(l!.metadata.mtime).to.equal('1046660583.250000000');
    });

    it('chmod sets permission bits, setuid/setgid and sticky; the file type is kept', async () => {
      const out = await run(String.raw`
        echo x > f; mkdir d; ln -s f l
        chmod 600 f; stat -c %a f; chmod u+x,g+r f; stat -c %a f; chmod 4755 f; stat -c %a f; chmod 2711 f; stat -c '%a %F' f
        chmod 1777 d; stat -c '%a %F' d; chmod 0 d; stat -c '%a %F' d; chmod 755 d
        stat -c '%a %F' l`, 'chmod');
      expect(out).to.equal('600\n740\n4755\n2711 regular file\n1777 directory\n0 directory\n777 symbolic link\n');
      expect((await be!.store.head(key('chmod/f')))!.metadata.mode).to.equal(String(S_IFREG | 0o2711));
      expect((await be!.store.head(key('chmod/d/')))!.metadata.mode).to.equal(String(S_IFDIR | 0o755));
    });

    it('dd with seeks: overwrite in the middle (conv=notrunc), write past EOF leaving a hole, truncating writes, skip reads', async () => {
      const out = await run(String.raw`
        head -c $((9*1024*1024)) /dev/urandom > "$L/dd"; cp "$L/dd" dd
        for f in dd "$L/dd"; do
          printf MIDDLE | dd of="$f" bs=1 seek=5000000 conv=notrunc status=none
          head -c 12288 /dev/zero | tr '\0' 'Z' | dd of="$f" bs=4096 seek=3000 conv=notrunc,fsync status=none
        done
        cmp dd "$L/dd"; stat -c %s dd
        dd if=dd bs=1 skip=5000000 count=6 status=none; echo
        dd if=dd bs=4096 skip=2400 count=500 status=none | tr -d '\0' | wc -c
        dd if=dd bs=4096 skip=3000 count=3 status=none | tr -d Z | wc -c
        printf abc | dd of=dd bs=1 seek=10 status=none; stat -c %s dd
        head -c 10 "$L/dd" | cmp - <(head -c 10 dd) && echo head-ok`, 'dd');
      expect(out).to.equal(`${3000 * 4096 + 12288}\nMIDDLE\n0\n0\n13\nhead-ok\n`);
    });

    it('tar round trip: a tree copied in with cp -a, archived from the mount, extracted elsewhere, is identical; and tar x onto the mount', async function () {
      this.timeout(150_000);
      const out = await run(String.raw`
        T="$L/tree"; mkdir -p "$T/a/b/c" "$T/empty" "$T/x y"
        echo one > "$T/a/one"; head -c 2000000 /dev/urandom > "$T/a/b/two"; : > "$T/a/b/c/zero"; echo sp > "$T/x y/s p"
        printf '#!/bin/sh\n' > "$T/run"; chmod 755 "$T/run"; chmod 600 "$T/a/one"; chmod 700 "$T/a/b/c"; chmod 1777 "$T/empty"
        ln -s b/two "$T/a/rel"; ln -s /nowhere "$T/dangling"; chown 1234:5678 "$T/a/b/two"
        touch -d '2011-11-11 11:11:11.111111111' "$T/a/one" "$T/x y/s p"; touch -h -d '2012-12-12 12:12:12' "$T/a/rel"
        for d in "$T/a/b/c" "$T/a/b" "$T/a" "$T/empty" "$T/x y" "$T"; do touch -d '2013-01-01 00:00:00.5' "$d"; done
        cp -a "$T" tree
        tar --format=posix -C tree -cf "$L/t.tar" .   # pax: times to the nanosecond
        mkdir "$L/out"; tar -C "$L/out" -xpf "$L/t.tar"
        diff -r --no-dereference "$T" "$L/out"
        (cd "$T" && ${FIND_SNAPSHOT}) > "$L/want"
        (cd "$L/out" && ${FIND_SNAPSHOT}) > "$L/got-tar"
        (cd tree && ${FIND_SNAPSHOT}) > "$L/got-mount"
        diff "$L/want" "$L/got-mount"; diff "$L/want" "$L/got-tar"
        # The other way: extract onto the mount.
        mkdir untar; tar -C untar -xpf "$L/t.tar"
        (cd untar && ${FIND_SNAPSHOT}) > "$L/got-untar"
        diff "$L/want" "$L/got-untar"
        diff -r --no-dereference "$T" untar
        wc -l < "$L/want"`, 'tar');
      expect(Number(out.trim())).to.equal(12);
    });

    it('mkdir -p, rmdir, rmdir -p and rm -rf; nothing is left in the store', async () => {
      const out = await run(String.raw`
        mkdir -p a/b/c/d; [ -d a/b/c/d ]; rmdir a/b/c/d; [ ! -e a/b/c/d ]; rmdir -p a/b/c; [ ! -e a ]
        mkdir -p big; for i in 1 2 3 4 5; do mkdir -p big/$i/x; for j in 1 2 3 4; do echo $i$j > big/$i/f$j; done; ln -s f1 big/$i/l; done
        find big | wc -l
        rm -rf big; [ ! -e big ]; ls -A | wc -l`, 'rmtree');
      expect(out).to.equal('36\n0\n');
      const keys = await keysUnder(be!, 'rmtree/');
      // Only the marker of the test's own directory may remain.
      expect(keys.filter((k) => k !== 'rmtree/')).to.deep.equal([]);
    });

    it('user.* extended attributes with setfattr/getfattr, kept across writes and renames', async function () {
      if ((await sh('command -v setfattr && command -v getfattr')).code !== 0) this.skip(); // package `attr`
      const out = await run(String.raw`
        echo x > f; mkdir d
        setfattr -n user.color -v blue f; setfattr -n user.empty f; setfattr -n user.bin -v 0x00ff10 f; setfattr -n user.dir -v yes d
        getfattr -n user.color --only-values f; echo
        getfattr -d -m - f | grep -v '^#' | sort
        getfattr -e hex -n user.bin f | grep =
        echo more >> f; mv f g
        getfattr -n user.color --only-values g; echo
        getfattr -n user.dir --only-values d; echo
        setfattr -x user.color g; getfattr -n user.color g 2>&1 || true
        setfattr -n trusted.no -v 1 g 2>&1 || true
        getfattr -d g | grep -c user.`, 'xattr');
      expect(out).to.equal([
        'blue',
        '', 'user.bin=0sAP8Q', 'user.color="blue"', 'user.empty=""',
        'user.bin=0x00ff10',
        'blue',
        'yes',
        'g: user.color: No such attribute',
        'setfattr: g: Operation not supported',
        '2',
      ].join('\n') + '\n');
      const meta = (await be!.store.head(key('xattr/g')))!.metadata;
      expect(Object.keys(meta).filter((k) => k.startsWith('xattr-')).sort()).to.deep.equal(['xattr-62696e', 'xattr-656d707479']);
    });

    it('a directory of 1100 entries lists completely (store pages of 1000, several readdir buffers), renames and removes', async function () {
      this.timeout(150_000);
      // The 1100 objects were put into the store before mounting (creating them through the
      // mount costs a prefix LIST per negative lookup, which s3rver answers by reading the
      // whole directory: ~40 s).
      await writeFile(local!.file('names'), [...BIG_NAMES].sort().join('\n') + '\n');
      const out = await run(String.raw`
        cd many
        ls -A | wc -l; ls -A | cmp - "$L/names" && echo names-ok
        find . -type f | wc -l; cat f0777-*
        cd ..; mv many moved; ls -A moved | wc -l; cat moved/f0777-*; [ ! -e many ]
        rm -rf moved; [ ! -e moved ] && ls -A | wc -l`, 'big', 110_000);
      expect(out).to.equal('1100\nnames-ok\n1100\n777\n1100\n777\n0\n');
      // big/ was implicit (no marker): emptied through the mount, it gets one so that it stays.
      expect(await keysUnder(be!, 'big/')).to.deep.equal(['big/']);
    });

    it('names with spaces, %, +, #, ?, backslash, newline and UTF-8 are stored, listed, read and renamed; over-long names and keys are ENAMETOOLONG', async () => {
      // s3rver decodes a copy source with decodeURI, so a name with # $ & + , : ; = ? @ cannot
      // be renamed (copied) there: those are renamed on the file store only.
      // Long names: 254 bytes is the file store's limit for a key segment; s3rver keeps an
      // object as files named <segment>._S3rver_metadata.json etc., so it stops near 230.
      const names = ['sp ace', 'pct%20x', 'back\\slash', 'nl\nx', 'uni-üñï-日本', 'm'.repeat(kind === 'file' ? 254 : 200), 'plus+x', 'hash#x', 'q?x', 'at@x'];
      const renamable = kind === 'file' ? names : names.slice(0, 6);
      // With node's fs: every byte of a name exactly.
      const { mkdir, readdir, readFile, rename, writeFile } = await import('node:fs/promises');
      const d = m!.p('names2');
      await mkdir(d);
      for (const n of names) await writeFile(`${d}/${n}`, n);
      expect((await readdir(d)).sort()).to.deep.equal([...names].sort());
      for (const n of names) expect(await readFile(`${d}/${n}`, 'utf8'), JSON.stringify(n)).to.equal(n);
      await mkdir(`${d}/moved`);
      for (const n of renamable) await rename(`${d}/${n}`, `${d}/moved/${n}`);
      expect((await readdir(`${d}/moved`)).sort()).to.deep.equal([...renamable].sort());
      for (const n of renamable) expect(await readFile(`${d}/moved/${n}`, 'utf8'), JSON.stringify(n)).to.equal(n);
      // In the store, under the names as they are (UTF-8 keys).
      const keys = await keysUnder(be!, 'names2/moved/');
      expect(keys.length).to.equal(renamable.length + 1);
      expect(keys).to.include('names2/moved/uni-üñï-日本');
      // 256 bytes is over NAME_MAX (the kernel refuses it); a key over 1024 bytes is refused by the mount.
      const r = await runAny(String.raw`touch "$(head -c 256 /dev/zero | tr '\0' n)" 2>&1; d=$(head -c ${kind === 'file' ? 250 : 200} /dev/zero | tr '\0' d); mkdir -p "$d/$d/$d/$d/$d/$d" 2>&1; ls -A | wc -l`, 'names3');
      expect(r.out).to.match(/touch: cannot touch 'n+': File name too long/);
      expect(r.out).to.match(/mkdir: cannot create directory '[d/]+': File name too long/);
      // mkdir -p got as far as the keys fit (1024 bytes with the prefix), nothing odd left over.
      expect(r.out.trim().split('\n').pop()).to.equal('1');
    });

    it('real programs: git (init, commit, fsck), sqlite3 (rollback journal and WAL), sed -i, flock, mmap writes, fallocate; mkfifo is refused', async function () {
      this.timeout(150_000);
      const has = async (tool: string): Promise<boolean> => (await sh(`command -v ${tool}`)).code === 0;
      const out: string[] = [];
      if (await has('git')) {
        out.push(await run(String.raw`
          export HOME="$L" GIT_CONFIG_NOSYSTEM=1
          git init -q repo && cd repo && git config user.email t@example.com && git config user.name t
          for i in 1 2 3; do echo $i > f$i; done; mkdir sub; head -c 100000 /dev/urandom > sub/bin
          git add -A && git commit -qm one && echo more >> f1 && git mv f2 g2 && git commit -qam two
          git fsck --full --strict 2>&1; git log --format=%s | tr '\n' ' '; git status --porcelain | wc -l`, 'programs'));
      } else console.log('      (git not installed: skipped)');
      if (await has('sqlite3')) {
        out.push(await run(String.raw`
          sqlite3 db "create table t(a integer primary key, b text); begin; $(for i in $(seq 1 300); do printf "insert into t(b) values('%0200d');" $i; done) commit;
            update t set b = 'y' where a % 7 = 0; delete from t where a % 11 = 0; pragma integrity_check; select count(*), sum(length(b)) from t;"
          sqlite3 db "pragma journal_mode=wal; insert into t(b) values('w'); pragma wal_checkpoint(truncate);" >/dev/null
          sqlite3 db "pragma integrity_check; select count(*) from t;"`, 'programs'));
      } else console.log('      (sqlite3 not installed: skipped)');
      out.push(await run(String.raw`
        printf 'alpha\nbeta\n' > s; sed -i 's/alpha/ALPHA/' s; cat s
        flock s -c 'echo locked'
        fallocate -l 1M fa; stat -c %s fa; fallocate -p -o 0 -l 4096 fa 2>&1 || true
        mkfifo ff 2>&1 || true
        head -c 8192 /dev/zero > mm
        if command -v python3 >/dev/null; then
          python3 -c "import mmap; f = open('mm', 'r+b'); m = mmap.mmap(f.fileno(), 8192); m[100:105] = b'HELLO'; m.flush(); m.close(); f.close()"
        else printf HELLO | dd of=mm bs=1 seek=100 conv=notrunc status=none; fi
        dd if=mm bs=1 skip=100 count=5 status=none; echo`, 'programs'));
      const text = out.join('');
      if (await has('git')) expect(text).to.include('two one 0\n');
      if (await has('sqlite3')) expect(text).to.include('ok\n273|46839\nok\n274\n'); // 300 rows, 27 deleted; 39 of them 'y', the rest 200 bytes
      expect(text).to.include([
        'ALPHA', 'beta', 'locked', '1048576',
        'fallocate: fallocate failed: keep size mode is unsupported',
        "mkfifo: cannot create fifo 'ff': Operation not permitted",
        'HELLO',
      ].join('\n') + '\n');
      // What git and sqlite3 stored reads back through a fresh view of the store.
      if (await has('git')) expect(await keysUnder(be!, 'programs/repo/.git/objects/')).to.have.length.above(8);
    });

    it('errors read as on Linux: ENOTEMPTY, ENOENT, EEXIST, EISDIR, ENOTDIR, ENAMETOOLONG, EACCES', async () => {
      await run('mkdir -p d; touch d/x f; chmod 644 f', 'errors');
      const cases: [string, RegExp][] = [
        ['rmdir d', /rmdir: failed to remove 'd': Directory not empty/],
        ['cat missing', /cat: missing: No such file or directory/],
        ['mkdir d', /mkdir: cannot create directory 'd': File exists/],
        ['rm d', /rm: cannot remove 'd': Is a directory/],
        ['mkdir f/x', /mkdir: cannot create directory 'f\/x': Not a directory/],
        ['rmdir f', /rmdir: failed to remove 'f': Not a directory/],
        [`touch ${'n'.repeat(256)}`, /File name too long/],
        ['setpriv --reuid=65534 --regid=65534 --clear-groups sh -c "echo no >> f"', /Permission denied/],
        ['setpriv --reuid=65534 --regid=65534 --clear-groups mkdir d/sub', /Permission denied/],
      ];
      for (const [cmd, re] of cases) {
        const r = await runAny(cmd, 'errors');
        expect(r.code, cmd).to.not.equal(0);
        expect(r.out, cmd).to.match(re);
      }
      // Nothing changed.
      expect(await run('find . | sort; cat f | wc -c', 'errors')).to.equal('.\n./d\n./d/x\n./f\n0\n');
    });

    it('the store holds s3fs-style objects: decimal st_mode, uid, gid, mtime; dir/ markers for mkdir; symlink bodies', async () => {
      await run(String.raw`
        mkdir -p d/e; chmod 750 d; echo hello > f; chmod 640 f; chown 1234:5678 f; touch -d '2001-02-03 04:05:06.5' f; ln -s f l
        mkdir -p p/q/r`, 'meta');
      const keys = await keysUnder(be!, 'meta/');
      expect(keys).to.deep.equal(['meta/', 'meta/d/', 'meta/d/e/', 'meta/f', 'meta/l', 'meta/p/', 'meta/p/q/', 'meta/p/q/r/']);
      const f = (await be!.store.get(key('meta/f')));
      expect(new TextDecoder().decode(f.body)).to.equal('hello\n');
      expect(f.metadata).to.include({ mode: String(S_IFREG | 0o640), uid: '1234', gid: '5678', mtime: '981173106.500000000' });
      const d = (await be!.store.head(key('meta/d/')))!;
      expect(d.size).to.equal(0);
      expect(d.metadata).to.include({ mode: String(S_IFDIR | 0o750), uid: '0', gid: '0' });
      expect(d.metadata.mtime).to.match(/^[0-9]+(\.[0-9]{9})?$/);
      for (const dir of ['meta/d/e/', 'meta/p/', 'meta/p/q/', 'meta/p/q/r/']) {
        expect((await be!.store.head(key(dir)))!.metadata.mode, dir).to.equal(String(S_IFDIR | 0o755));
      }
      const l = await be!.store.get(key('meta/l'));
      expect(new TextDecoder().decode(l.body)).to.equal('f');
      expect(l.metadata).to.include({ mode: String(S_IFLNK | 0o777), uid: '0', gid: '0' });
      // Every object written through the mount carries the four keys.
      for (const k of keys) {
        const h = (await be!.store.head(key(k)))!;
        expect(Object.keys(h.metadata), k).to.include.members(['mode', 'uid', 'gid', 'mtime']);
        expect(h.metadata.mode, k).to.match(/^[1-9][0-9]*$/);
      }
    });

    it('a --readonly mount of the same bucket reads everything and refuses every change with EROFS', async () => {
      await run('echo ro > f; mkdir -p d', 'ro');
      const ro = await startMount({ bucket: be!.locator, env: be!.env, args: ['--readonly'] });
      try {
        expect(await shOk('cat ro/f; ls ro', { dir: ro.path })).to.equal('ro\nd\nf\n');
        for (const cmd of ['echo x > ro/f', 'touch ro/new', 'mkdir ro/e', 'rm ro/f', 'rmdir ro/d', 'mv ro/f ro/g', 'chmod 600 ro/f', 'ln -s f ro/l', 'truncate -s 0 ro/f']) {
          const r = await sh(cmd, { dir: ro.path });
          expect(r.code, cmd).to.not.equal(0);
          expect(r.stderr, cmd).to.match(/Read-only file system/);
        }
        expect(await shOk('cat ro/f; ls ro', { dir: ro.path })).to.equal('ro\nd\nf\n');
      } finally {
        const st = await ro.stop();
        expect(st.clean, ro.describe()).to.equal(true);
        expect(st.code, ro.describe()).to.equal(0);
      }
    });

    it('the server logged no errors and no warnings (JSON lines on stderr)', () => {
      const lines = m!.proc.logLines();
      const bad = lines.filter((l) => l.level === 'error' || l.level === 'warn');
      expect(bad.map((l) => JSON.stringify(l).slice(0, 400)), m!.describe()).to.deep.equal([]);
      expect(lines.some((l) => l.msg === 'mounted')).to.equal(true);
    });

    it('a fresh mount of the same bucket shows the same tree (names, types, modes, owners, sizes, mtimes, targets, contents)', async function () {
      this.timeout(150_000);
      const snapshot = String.raw`${FIND_SNAPSHOT}; find . -type f -print0 | sort -z | xargs -0 md5sum`;
      // Directories without a marker (seeded/, seeded/implicit/...) show the mount's start time as their mtime.
      const implicitMtime = (text: string): string => text.replace(/^(seeded(?:\/implicit(?:\/deeper)?)? d \S+ \S+ \S+ - )\S+/gm, '$1<mount time>');
      const before = implicitMtime(await shOk(snapshot, { dir: m!.path, timeoutMs: 100_000 }));
      const st = await m!.stop();
      expect(st.clean, m!.describe()).to.equal(true);
      expect(st.code, m!.describe()).to.equal(0);
      expect(m!.mounted).to.equal(false);
      m = await startMount({ bucket: be!.locator, env: be!.env, args: ['--uid', '4321', '--gid', '8765'] });
      const after = implicitMtime(await shOk(snapshot, { dir: m.path, timeoutMs: 100_000 }));
      expect(after.match(/<mount time>/g)).to.have.length(3);
      expect(after).to.equal(before);
      expect(before.split('\n').length).to.be.above(80);
    });
  });
}
