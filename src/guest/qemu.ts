// Boots the guest (tests, `vhost-s3 demo`) under QEMU (TCG), runs a shell script inside it and
// returns what happened.
//
// The script (and any extra files) travel as a second, uncompressed cpio
// archive appended to the cached base initramfs: the kernel unpacks
// concatenated archives in order, so /test.sh simply appears in the root file
// system. The guest's /init (see image.ts) runs it, prints
// "@@VHOST-S3-EXIT <status>@@" on the serial console and powers off.

import { spawn, spawnSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import { appendFile, copyFile, mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { StringDecoder } from 'node:string_decoder';

import { buildCpio, type CpioEntry } from './cpio.js';
import { cleanupAll, onCleanup, tail, trackChild } from './exec.js';
import { ensureGuestImage, MARKER_EXIT_RE, MARKER_START, MARKER_WATCHDOG, type GuestImage } from './image.js';

export interface BootOptions {
  /** Shell script (busybox sh) run as root in the guest; its exit status becomes `exitCode`. */
  script: string;
  /** Extra QEMU arguments, e.g. ['-chardev', 'socket,id=d0,path=/x.sock', '-device', 'vhost-user-blk-pci,chardev=d0']. */
  qemuArgs?: readonly string[];
  /** Extra files to place in the guest's root file system, keyed by absolute guest path. */
  files?: Readonly<Record<string, Buffer | string>>;
  /** Kill QEMU and throw after this long. Default 120 000 ms. */
  timeoutMs?: number;
  /** Guest RAM in MiB (a shared memfd, as vhost-user needs). Default 512. */
  memoryMiB?: number;
  /**
   * QEMU arguments for the guest's RAM, replacing the default
   * `-m <memoryMiB> -object memory-backend-memfd,id=mem,size=<memoryMiB>M,share=on -numa node,memdev=mem`
   * (e.g. a documented command line's own).
   */
  memoryArgs?: readonly string[];
  /** Guest CPUs. Default 1. */
  cpus?: number;
  /** Appended to the kernel command line. */
  kernelArgs?: readonly string[];
  /** Image to boot. Default: ensureGuestImage(). */
  image?: GuestImage;
  /** Aborting kills QEMU and rejects. */
  signal?: AbortSignal;
  /** Receives console text as it arrives. $VHOST_S3_GUEST_VERBOSE=1 also copies it to stderr. */
  onOutput?: (text: string) => void;
  /** QEMU binary. Default qemu-system-x86_64. */
  qemuBinary?: string;
}

export interface BootResult {
  /** Exit status of the guest script. */
  exitCode: number;
  /** Serial console text (carriage returns removed). */
  output: string;
  /** `@@RESULT key=value@@` lines printed by the script (see `result` in the prelude). */
  results: Record<string, string>;
  /** Time from starting QEMU until the guest was ready to run the script. */
  bootMs: number | undefined;
  /** Time from starting QEMU until it exited. */
  totalMs: number;
  /** The full QEMU command line, for error messages. */
  command: string[];
}

/** Thrown when the guest did not finish normally (timeout, crash, QEMU error). Carries the console output. */
export class GuestError extends Error {
  constructor(
    message: string,
    readonly output: string,
    readonly stderr: string,
  ) {
    super(`${message}\n--- guest console (tail) ---\n${tail(output)}\n--- qemu stderr ---\n${tail(stderr, 20)}`);
    this.name = 'GuestError';
  }
}

/**
 * Shell functions available to every guest script:
 *   result KEY VALUE...   print "@@RESULT KEY=VALUE@@" (parsed into BootResult.results)
 *   wait_for PATH [SECS]  wait until PATH exists (default 10 s); non-zero on timeout
 */
export const GUEST_PRELUDE = `# --- prelude (src/guest/qemu.ts) ---
result() { __k=$1; shift; echo "@@RESULT $__k=$*@@"; }
wait_for() {
  __n=0
  while [ ! -e "$1" ]; do
    __n=$((__n + 1))
    if [ "$__n" -gt $(( \${2:-10} * 10 )) ]; then echo "wait_for: $1 did not appear"; return 1; fi
    usleep 100000
  done
}
# --- test script ---
`;

/** Removes terminal escape sequences (SeaBIOS clears the screen) from console text. */
export function cleanConsole(text: string): string {
  // eslint-disable-next-line no-control-regex
  return text.replace(/\x1b(\[[0-9;?]*[ -/]*[@-~]|[@-Z\\-_]|c)/g, '');
}

const RESULT_RE = /@@RESULT ([A-Za-z0-9_.:/-]+)=(.*?)@@/g;

/** Extracts `@@RESULT key=value@@` lines from console text (a later value wins). */
export function parseResults(output: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const m of output.matchAll(RESULT_RE)) out[m[1]!] = m[2]!;
  return out;
}

/** Kills every QEMU (and qemu-storage-daemon) started by this library in this process. */
export function killAllGuests(): void {
  cleanupAll();
}

// ---- prerequisites ----

export interface PrereqReport {
  ok: boolean;
  problems: string[];
  qemuVersion?: string;
}

/**
 * Checks what guest tests need: qemu-system-x86_64 (TCG is enough, no KVM),
 * and apt-get/dpkg to build the image (see ensureGuestImage).
 */
export function checkGuestPrereqs(qemuBinary = 'qemu-system-x86_64'): PrereqReport {
  const problems: string[] = [];
  let qemuVersion: string | undefined;
  const q = spawnSync(qemuBinary, ['--version'], { encoding: 'utf8' });
  if (q.error || q.status !== 0) {
    problems.push(`${qemuBinary} is not usable (${q.error?.message ?? q.stderr}); install Debian package qemu-system-x86`);
  } else {
    qemuVersion = q.stdout.split('\n')[0];
    const a = spawnSync(qemuBinary, ['-accel', 'help'], { encoding: 'utf8' });
    if (!/\btcg\b/.test(a.stdout ?? '')) problems.push(`${qemuBinary} lacks the TCG accelerator`);
  }
  for (const tool of ['apt-get', 'apt-cache', 'dpkg', 'dpkg-deb']) {
    const r = spawnSync(tool, ['--version'], { encoding: 'utf8' });
    if (r.error) problems.push(`${tool} not found (the guest image is built from Debian packages)`);
  }
  return { ok: problems.length === 0, problems, qemuVersion };
}

/** Throws a clear error if checkGuestPrereqs() finds a problem. */
export function assertGuestPrereqs(qemuBinary?: string): void {
  const r = checkGuestPrereqs(qemuBinary);
  if (!r.ok) throw new Error('guest tests cannot run:\n  ' + r.problems.join('\n  '));
}

// ---- boot ----

function guestPath(p: string): string {
  if (!p.startsWith('/')) throw new Error(`guest file path must be absolute: ${p}`);
  return p.slice(1);
}

/** Boots the guest, runs `opts.script`, and resolves when the guest has powered off. */
export async function bootGuest(opts: BootOptions): Promise<BootResult> {
  const image = opts.image ?? (await ensureGuestImage());
  const timeoutMs = opts.timeoutMs ?? 120_000;
  const mem = opts.memoryMiB ?? 512;
  const qemu = opts.qemuBinary ?? 'qemu-system-x86_64';
  const verbose = process.env.VHOST_S3_GUEST_VERBOSE === '1';
  opts.signal?.throwIfAborted();

  const work = await mkdtemp(join(tmpdir(), 'vhost-s3-guest-'));
  const forgetWork = onCleanup(() => rmSync(work, { recursive: true, force: true }));
  try {
    // Base initramfs + per-boot layer with the script and files.
    const entries: CpioEntry[] = [{ type: 'file', path: 'test.sh', data: GUEST_PRELUDE + opts.script + '\n', mode: 0o755 }];
    for (const [p, data] of Object.entries(opts.files ?? {})) entries.push({ type: 'file', path: guestPath(p), data, mode: 0o644 });
    const initrd = join(work, 'initrd.img');
    await copyFile(image.initrd, initrd);
    // The kernel only accepts an uncompressed archive at a 4-byte aligned
    // offset; it skips zero bytes between archives.
    const baseLen = (await stat(initrd)).size;
    await appendFile(initrd, Buffer.concat([Buffer.alloc((512 - (baseLen % 512)) % 512), buildCpio(entries)]));

    // The guest powers itself off a while after the host would have given up,
    // in case this process dies without killing QEMU.
    const watchdogS = Math.ceil(timeoutMs / 1000) + 60;
    const append = ['console=ttyS0', 'quiet', 'panic=-1', `vhost_s3_watchdog=${watchdogS}`, ...(opts.kernelArgs ?? [])].join(' ');
    const args = [
      '-accel', 'tcg',
      ...(opts.memoryArgs ?? ['-m', String(mem), '-object', `memory-backend-memfd,id=mem,size=${mem}M,share=on`, '-numa', 'node,memdev=mem']),
      '-smp', String(opts.cpus ?? 1),
      '-nographic',
      '-no-reboot',
      '-net', 'none',
      '-kernel', image.kernel,
      '-initrd', initrd,
      '-append', append,
      ...(opts.qemuArgs ?? []),
    ];
    return await runQemu(qemu, args, timeoutMs, opts, verbose);
  } finally {
    forgetWork();
    await rm(work, { recursive: true, force: true });
  }
}

function runQemu(qemu: string, args: string[], timeoutMs: number, opts: BootOptions, verbose: boolean): Promise<BootResult> {
  const command = [qemu, ...args];
  const t0 = performance.now();
  return new Promise<BootResult>((resolve, reject) => {
    const child = spawn(qemu, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    trackChild(child);
    const dec = new StringDecoder('utf8');
    let output = '';
    let stderr = '';
    let bootMs: number | undefined;
    let exitCode: number | undefined;
    let failure: string | undefined;
    let graceTimer: NodeJS.Timeout | undefined;

    const kill = (why: string): void => {
      failure ??= why;
      child.kill('SIGKILL');
    };
    const timer = setTimeout(() => kill(`guest timed out after ${timeoutMs} ms`), timeoutMs);
    const onAbort = (): void => kill('guest boot aborted');
    opts.signal?.addEventListener('abort', onAbort, { once: true });

    child.stdout!.on('data', (b: Buffer) => {
      const text = dec.write(b).replace(/\r/g, '');
      const scanFrom = Math.max(0, output.length - 64);
      output += text;
      opts.onOutput?.(text);
      if (verbose) process.stderr.write(text);
      const recent = output.slice(scanFrom);
      if (bootMs === undefined && recent.includes(MARKER_START)) bootMs = performance.now() - t0;
      if (exitCode === undefined) {
        const m = MARKER_EXIT_RE.exec(recent);
        if (m) {
          exitCode = Number(m[1]);
          // The guest powers off right after the marker; do not wait forever if it does not.
          graceTimer = setTimeout(() => child.kill('SIGKILL'), 15_000);
        }
      }
      if (recent.includes(MARKER_WATCHDOG)) failure ??= 'guest watchdog fired';
    });
    child.stderr!.on('data', (b: Buffer) => {
      stderr += b.toString('utf8');
      if (verbose) process.stderr.write(b);
    });
    child.on('error', (e) => kill(`cannot start ${qemu}: ${e.message}`));
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (graceTimer) clearTimeout(graceTimer);
      opts.signal?.removeEventListener('abort', onAbort);
      output = cleanConsole(output + dec.end().replace(/\r/g, ''));
      const totalMs = performance.now() - t0;
      if (failure === undefined && exitCode !== undefined) {
        resolve({ exitCode, output, results: parseResults(output), bootMs, totalMs, command });
        return;
      }
      const why = failure ?? `QEMU exited (${code ?? signal}) before the guest script finished`;
      reject(new GuestError(`${why}\ncommand: ${command.join(' ')}`, output, stderr));
    });
  });
}

/** Throws a GuestError (with the console output) unless the guest script exited with status 0. */
export function assertGuestSuccess(r: BootResult): void {
  if (r.exitCode !== 0) throw new GuestError(`guest script exited with status ${r.exitCode}`, r.output, '');
}
