// `npm run demo` (`vhost-s3 demo`): the whole path in one command. It puts a few sample
// files into an embedded store, starts `vhost-s3 serve` on it (a disk over
// vhost-user-blk and the store's share/ over virtio-fs), boots a small Linux guest under
// QEMU with the arguments serve prints, mounts the share (mount -t virtiofs) and the disk
// (formatting it first if it holds no file system), shows `ls -l` and `df -h` from
// inside the guest, then shuts the guest and the gateway down.
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadConfig } from '../config.js';
import { ConfigError } from '../util/errors.js';
import { createLogger } from '../util/log.js';
import { openStore } from '../backends/store-config.js';
import { checkGuestPrereqs, bootGuest, type BootResult } from '../guest/qemu.js';
import { ensureGuestImage, MARKER_START, MARKER_EXIT_RE } from '../guest/image.js';
import { onCleanup, tail, trackChild } from '../guest/exec.js';
import { qemuAttachArgs, SHARE_TAG } from './serve.js';

/** Files put into the share before the guest boots (keys under share/ in the store). */
export const DEMO_FILES: Readonly<Record<string, string>> = {
  'hello.txt': 'Hello from an object store! This file is the object share/hello.txt.\n',
  'notes/readme.md': '# vhost-s3 demo\n\nDirectories are key prefixes; this is share/notes/readme.md.\n',
  'numbers.csv': Array.from({ length: 1000 }, (_, i) => `${i},${i * i}`).join('\n') + '\n',
};

/** What the guest writes to each device, and the host reads back from the store. */
export const GUEST_NOTE = 'written by the demo guest\n';

const LAUNCHER = fileURLToPath(new URL('../../../bin/vhost-s3.js', import.meta.url));

const STORAGE = { endpoint: '', region: '', pathStyle: 'auto', checksums: 'when-required', s3Concurrency: 8 } as const;

/** The guest's script: mount both devices, show them, write a file to each, unmount. */
export function demoScript(tag: string): string {
  return `
step() { echo; echo "\\$ $*"; "$@"; }
wait_for /dev/vda 20 || { echo "no /dev/vda in the guest"; exit 1; }
mkdir -p /mnt/share /mnt/disk
step mount -t virtiofs ${tag} /mnt/share || exit 1
# An ext2/3/4 superblock has the magic ef53 at byte 1080.
if [ "$(od -An -tx2 -j1080 -N2 /dev/vda | tr -d ' ')" = ef53 ]; then
  echo "/dev/vda already holds a file system (formatted by an earlier run)"
else
  echo "/dev/vda is empty: formatting it"
  echo; echo "\$ mke2fs -L demo-disk /dev/vda"
  mke2fs -q -L demo-disk /dev/vda > /dev/null || exit 1
fi
step mount -t ext2 /dev/vda /mnt/disk || exit 1
echo "${GUEST_NOTE.trim()}" > /mnt/share/from-the-guest.txt || exit 1
echo "${GUEST_NOTE.trim()}" > /mnt/disk/from-the-guest.txt || exit 1
step ls -l /mnt/share || exit 1
step ls -l /mnt/share/notes || exit 1
step ls -l /mnt/disk || exit 1
step df -h /mnt/share /mnt/disk || exit 1
sync
umount /mnt/disk && umount /mnt/share || exit 1
echo
echo "unmounted both; powering off"
`;
}

export async function runDemo(argv: string[]): Promise<void> {
  const cfg = loadConfig('demo', argv);
  if (cfg.diskSize < 16 << 20 || cfg.diskSize % 512 !== 0) throw new ConfigError(`--disk-size must be a multiple of 512 bytes, at least 16M, got ${cfg.diskSize}`);
  const say = (msg: string): void => {
    process.stdout.write(`demo: ${msg}\n`);
  };

  // 1. What the demo needs on this machine, before anything is created.
  const pre = checkGuestPrereqs();
  if (!pre.ok) throw new Error(`the demo cannot run: ${pre.problems.join('; ')}`);
  say(`${pre.qemuVersion} (TCG) found`);

  // 2. The guest's kernel and initramfs, built from Debian packages on first use.
  say('preparing the guest kernel + initramfs (the first run downloads the Debian kernel and busybox, ~70 MB)');
  const image = await ensureGuestImage({ log: (m) => say(`  ${m}`) });
  say(`  guest: Linux ${image.kernelRelease}, busybox, in ${image.dir}`);

  // 3. The store, with the sample files in its share.
  const keep = cfg.dataDir !== '';
  const dataDir = keep ? resolve(cfg.dataDir) : mkdtempSync(join(tmpdir(), 'vhost-s3-demo-'));
  const forget = keep ? () => undefined : onCleanup(() => rmSync(dataDir, { recursive: true, force: true }));
  try {
    mkdirSync(dataDir, { recursive: true });
    if (!statSync(dataDir).isDirectory()) throw new ConfigError(`--data-dir ${dataDir} is not a directory`);
    await seedShare(join(dataDir, 'store'));
    say(`store in ${join(dataDir, 'store')}; its share/ holds ${Object.keys(DEMO_FILES).join(', ')}`);

    // 4. The gateway, as `npm start` runs it.
    const serveArgs = ['serve', '--data-dir', dataDir, '--disk-size', String(cfg.diskSize), '--log-level', 'warn'];
    say(`starting: vhost-s3 ${serveArgs.join(' ')}`);
    const gateway = startGateway(serveArgs);
    let boot: BootResult;
    try {
      await gateway.ready;
      say('the gateway serves the disk (vhost-user-blk) and the share (virtio-fs)');

      // 5. The guest, with the devices as serve prints them.
      const qemu = qemuAttachArgs(dataDir);
      say(`booting the guest: qemu-system-x86_64 -accel tcg ${[qemu.memory, ...qemu.devices].map((a) => a.join(' ')).join(' ')} … (TCG: about a minute)`);
      boot = await bootGuest({
        script: demoScript(SHARE_TAG),
        image,
        memoryArgs: qemu.memory,
        qemuArgs: qemu.devices.flat(),
        timeoutMs: cfg.timeout * 1000,
        onOutput: consoleEcho(),
      });
    } finally {
      // 6. The gateway stops on SIGTERM: the disk is flushed, the guest's files stored.
      await gateway.stop();
    }
    if (boot.exitCode !== 0) throw new Error(`the guest's commands failed (exit ${boot.exitCode}); its console is above`);
    if (gateway.exitCode() !== 0) throw new Error(`vhost-s3 serve exited with ${gateway.exitCode()}: ${tail(gateway.output(), 5).replace(/\n/g, ' | ')}`);
    const stored = await readBack(join(dataDir, 'store'));
    say(`the gateway stopped; the guest's file is the object share/from-the-guest.txt (${stored} bytes) in the store`);
    say(keep ? `the store and the disk stay in ${dataDir}` : 'done (the temporary store is removed)');
  } finally {
    if (!keep) {
      rmSync(dataDir, { recursive: true, force: true });
      forget();
    }
  }
}

/** Writes DEMO_FILES under share/ of the store in `storeDir` (created if needed). */
async function seedShare(storeDir: string): Promise<void> {
  const { store } = await openStore(`file:${storeDir}/`, STORAGE, createLogger('silent'), true);
  try {
    for (const [path, text] of Object.entries(DEMO_FILES)) await store.put(`share/${path}`, new TextEncoder().encode(text));
  } finally {
    await store.close();
  }
}

async function readBack(storeDir: string): Promise<number> {
  const { store } = await openStore(`file:${storeDir}/`, STORAGE, createLogger('silent'), false);
  try {
    const obj = await store.get('share/from-the-guest.txt');
    if (new TextDecoder().decode(obj.body) !== GUEST_NOTE) throw new Error('share/from-the-guest.txt in the store does not hold what the guest wrote');
    return obj.body.length;
  } finally {
    await store.close();
  }
}

/** `vhost-s3 serve` as a child process: ready once both sockets exist. */
function startGateway(args: string[]): { ready: Promise<void>; stop: () => Promise<void>; exitCode: () => number | null; output: () => string } {
  const child = spawn(process.execPath, [LAUNCHER, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  trackChild(child);
  let out = '';
  let code: number | null = null;
  child.stdout.on('data', (b: Buffer) => (out += b.toString()));
  child.stderr.on('data', (b: Buffer) => (out += b.toString()));
  const exited = new Promise<void>((res) => child.on('close', (c, sig) => {
    code = c ?? (sig ? 128 : null);
    res();
  }));
  const ready = (async (): Promise<void> => {
    const deadline = Date.now() + 60_000;
    let done = false;
    void exited.then(() => (done = true));
    while (!out.includes('Press Ctrl-C')) {
      if (done) throw new Error(`vhost-s3 serve exited (${code}) before serving: ${tail(out, 5).replace(/\n/g, ' | ')}`);
      if (Date.now() > deadline) throw new Error('vhost-s3 serve did not start within 60 s');
      await new Promise((r) => setTimeout(r, 50));
    }
  })();
  return {
    ready,
    exitCode: () => code,
    output: () => out,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const t = setTimeout(() => child.kill('SIGKILL'), 20_000);
        await exited;
        clearTimeout(t);
      }
    },
  };
}

/** Copies the guest's console to stdout from the start of the script to its exit, prefixed. */
function consoleEcho(): (text: string) => void {
  let started = false;
  let done = false;
  let pending = '';
  return (text: string) => {
    if (done) return;
    pending += text;
    let nl: number;
    while ((nl = pending.indexOf('\n')) >= 0) {
      const line = pending.slice(0, nl);
      pending = pending.slice(nl + 1);
      if (!started) {
        started = line.includes(MARKER_START);
        continue;
      }
      if (MARKER_EXIT_RE.test(line)) {
        done = true;
        return;
      }
      if (line.startsWith('@@RESULT ')) continue;
      process.stdout.write(`guest | ${line}\n`);
    }
  };
}
