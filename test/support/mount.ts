// `vhost-s3 mount` as a child process, for the /dev/fuse tests (layer 4) and the s3fs
// interoperability test:
//
//   const be = await startBackend('s3', 'tools');        // s3rver (or a file: store) + a direct ObjectStore
//   const m = await startMount({ bucket: be.locator, env: be.env });
//   await sh(`cp big "${m.path}/x"`);                      // ordinary tools, in child processes
//   await m.stop();                                        // SIGTERM; abort + umount -l as fallbacks
//   await be.close();
//
// The FUSE server is always a child process (never this process): the test may then use
// fs/promises on the mount freely, and a stuck server cannot wedge the test's own event
// loop. Every wait is bounded. If the server does not answer (or does not exit), the
// mount's own FUSE connection is aborted through fusectl (only that one: other mounts on
// the machine, e.g. other test processes, are left alone), so nothing stays in D state;
// then the mount is detached with umount -l. When the test process exits, mounts still up
// are detached synchronously.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { createObjectStore } from '../../src/backends/locator.js';
import { ROOT_MARKER } from '../../src/backends/store-config.js';
import { listKeys, type ObjectStore } from '../../src/backends/object-store.js';
import { CliProcess } from './cli.js';
import { onCleanup, tail, trackChild } from './guest/exec.js';
import { startS3rver, type S3rver } from './s3rver.js';

/** Why mount tests cannot run here, or null. */
export function mountPrereqProblem(): string | null {
  if (process.getuid?.() !== 0) return 'vhost-s3 mount needs root';
  if (!existsSync('/dev/fuse')) return '/dev/fuse is missing';
  return null;
}

// ---------------------------------------------------------------------------------------
// /proc/self/mountinfo and fusectl

export interface MountEntry {
  readonly mountpoint: string;
  readonly fstype: string;
  readonly source: string;
  /** st_dev as "major:minor". */
  readonly dev: string;
  readonly options: string;
}

function unescapeMountinfo(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

export function mountEntries(): MountEntry[] {
  const out: MountEntry[] = [];
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    if (line === '') continue;
    const f = line.split(' ');
    const sep = f.indexOf('-');
    if (sep < 0) continue;
    out.push({ dev: f[2]!, mountpoint: unescapeMountinfo(f[4]!), options: f[5]!, fstype: f[sep + 1]!, source: unescapeMountinfo(f[sep + 2]!) });
  }
  return out;
}

/** The topmost mount on `path`, or null. */
export function mountAt(path: string): MountEntry | null {
  const all = mountEntries().filter((e) => e.mountpoint === path);
  return all.length > 0 ? all[all.length - 1]! : null;
}

const FUSECTL = '/sys/fs/fuse/connections';

/** The fusectl directory of a FUSE mount: its connection is named after the kernel's dev_t (major << 20 | minor). */
export function fuseConnectionDir(entry: MountEntry): string {
  const [maj, min] = entry.dev.split(':').map(Number) as [number, number];
  return join(FUSECTL, String(maj * 2 ** 20 + min));
}

/**
 * Aborts the FUSE connection of the mount on `path` (every request waiting on it fails
 * with ENOTCONN at once). Only that connection, never the others on the machine.
 * Returns whether a connection was aborted.
 */
export function abortFuseConnection(path: string): boolean {
  const e = mountAt(path);
  if (!e || !e.fstype.startsWith('fuse')) return false;
  if (mountAt(FUSECTL) === null) spawnSync('mount', ['-t', 'fusectl', 'none', FUSECTL], { timeout: 5000, stdio: 'ignore' });
  const dir = fuseConnectionDir(e);
  try {
    writeFileSync(join(dir, 'abort'), '1');
    return true;
  } catch {
    return false;
  }
}

/** umount -l (bounded); true when nothing is mounted on `path` afterwards. */
export function lazyUnmount(path: string): boolean {
  if (mountAt(path)) spawnSync('umount', ['-l', path], { timeout: 10_000, stdio: 'ignore' });
  return mountAt(path) === null;
}

// ---------------------------------------------------------------------------------------
// Shell commands (child processes, bounded)

export interface ShResult {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
  readonly timedOut: boolean;
}

export interface ShOptions {
  /** Directory to `cd` into first. In the script (never spawn's `cwd`), so that a hung mount fails the command, not the spawn. */
  readonly dir?: string;
  /** Default 30 s; then the whole process group is SIGKILLed. */
  readonly timeoutMs?: number;
  readonly env?: NodeJS.ProcessEnv;
  readonly input?: string;
}

/** Runs a bash script (with `set -o pipefail`); never throws for a non-zero exit. */
export function sh(script: string, o: ShOptions = {}): Promise<ShResult> {
  const full = `set -o pipefail\n${o.dir !== undefined ? `cd -- "$VHOST_S3_SH_DIR" || exit 97\n` : ''}${script}`;
  const env = { ...(o.env ?? process.env), ...(o.dir !== undefined ? { VHOST_S3_SH_DIR: o.dir } : {}), LC_ALL: 'C', TZ: 'UTC' };
  return new Promise((resolve, reject) => {
    const child = spawn('bash', ['-c', full], { env, stdio: [o.input !== undefined ? 'pipe' : 'ignore', 'pipe', 'pipe'], detached: true });
    const untrack = trackChild(child);
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let timedOut = false;
    child.stdout!.on('data', (b: Buffer) => out.push(b));
    child.stderr!.on('data', (b: Buffer) => err.push(b));
    if (o.input !== undefined) child.stdin!.end(o.input);
    const timer = setTimeout(() => {
      timedOut = true;
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        child.kill('SIGKILL');
      }
    }, o.timeoutMs ?? 30_000);
    child.on('error', (e) => {
      clearTimeout(timer);
      untrack();
      reject(e);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      untrack();
      resolve({ code, signal, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8'), timedOut });
    });
  });
}

/** Runs a bash script with `set -e`; throws (with the script and its output) unless it exits 0. Returns stdout. */
export async function shOk(script: string, o: ShOptions = {}): Promise<string> {
  const r = await sh(`set -e\n${script}`, o);
  if (r.code !== 0) {
    throw new Error(
      `shell script failed (${r.timedOut ? `timed out after ${o.timeoutMs ?? 30_000} ms` : (r.code ?? r.signal)})${o.dir !== undefined ? ` in ${o.dir}` : ''}:\n${script}\n--- stdout ---\n${tail(r.stdout, 30)}\n--- stderr ---\n${tail(r.stderr, 30)}`,
    );
  }
  return r.stdout;
}

/** Polls `pred` every 50 ms until it holds; throws after `timeoutMs`. */
export async function waitUntil(what: string, pred: () => boolean | Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await pred()) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(50);
  }
}

// ---------------------------------------------------------------------------------------
// Backends: s3rver or a local file: store, with direct access to the objects

export type BackendKind = 's3' | 'file';

export interface Backend {
  readonly kind: BackendKind;
  /** For --bucket: s3://bkt/<prefix> or file:<dir>/<prefix>. */
  readonly locator: string;
  /** Environment for vhost-s3 (s3rver's endpoint and credentials; empty for file:). */
  readonly env: Record<string, string>;
  /** The store itself, to look at the objects; every key of the file system is `prefix + path`. */
  readonly store: ObjectStore;
  readonly prefix: string;
  /** s3rver, for the s3 kind. */
  readonly s3?: S3rver;
  close(): Promise<void>;
}

/**
 * A fresh store: s3rver with bucket `bkt`, or a temporary directory; the file system lives
 * under `prefix` (non-empty, no slashes at either end).
 */
export async function startBackend(kind: BackendKind, prefix: string): Promise<Backend> {
  if (kind === 's3') {
    const s3 = await startS3rver({ buckets: ['bkt'] });
    try {
      const opened = await createObjectStore(`s3://bkt/${prefix}`, {
        s3: { endpoint: s3.endpoint, credentials: s3.credentials, region: 'us-east-1', requestChecksumCalculation: 'WHEN_REQUIRED', responseChecksumValidation: 'WHEN_REQUIRED' },
        detectCapabilities: false,
      });
      return {
        kind, locator: `s3://bkt/${prefix}`, env: { ...s3.env }, store: opened.store, prefix: opened.prefix, s3,
        close: async () => {
          await opened.store.close();
          await s3.stop();
        },
      };
    } catch (err) {
      await s3.stop();
      throw err;
    }
  }
  const root = mkdtempSync(join(tmpdir(), 'vhost-s3-fstore-'));
  const unclean = onCleanup(() => rmSync(root, { recursive: true, force: true }));
  // The marker makes `file:<root>/<prefix>` the prefix of the store at <root> (without it,
  // `vhost-s3 mount` takes the whole path as the store's root).
  writeFileSync(join(root, ROOT_MARKER), 'vhost-s3 local object store\n');
  const opened = await createObjectStore(`file:${root}`, { file: { noSync: true } });
  return {
    kind, locator: `file:${root}/${prefix}`, env: {}, store: opened.store, prefix: `${prefix}/`,
    close: async () => {
      await opened.store.close();
      unclean();
      rmSync(root, { recursive: true, force: true });
    },
  };
}

/** Every key of the backend under `path` (relative to its prefix), without the prefix, in order. */
export async function keysUnder(be: Backend, path: string): Promise<string[]> {
  const out: string[] = [];
  for await (const k of listKeys(be.store, be.prefix + path)) out.push(k.slice(be.prefix.length));
  return out;
}

// ---------------------------------------------------------------------------------------
// The mount

export interface MountOptions {
  /** --bucket */
  readonly bucket: string;
  readonly env?: Record<string, string>;
  /** Default: a fresh directory under the temp dir (removed by stop()). */
  readonly mountpoint?: string;
  /** More flags (--attr-timeout 0, --readonly, --uid ...). */
  readonly args?: readonly string[];
  /** Default 'info' (the "mounted" line is what we wait for). */
  readonly logLevel?: 'debug' | 'info' | 'warn' | 'error';
  /** How long mounting may take. Default 20 s. */
  readonly timeoutMs?: number;
}

export class Mount {
  private stopped = false;
  private readonly unclean: () => void;

  constructor(
    readonly path: string,
    readonly proc: CliProcess,
    private readonly ownsDir: boolean,
  ) {
    this.unclean = onCleanup(() => {
      // The test process is exiting: the child gets SIGKILL from trackChild; detach the mount.
      spawnSync('umount', ['-l', path], { timeout: 5000, stdio: 'ignore' });
    });
  }

  get mounted(): boolean {
    const e = mountAt(this.path);
    return e !== null && e.fstype === 'fuse.vhost-s3';
  }

  /** `mountpoint/rel` */
  p(rel = ''): string {
    return rel === '' ? this.path : join(this.path, rel);
  }

  describe(): string {
    return this.proc.describe();
  }

  /**
   * SIGTERM and wait (bounded) for the exit and the mount to go; if the server does not
   * exit, its connection is aborted and it gets SIGKILL; if the mount is still there,
   * umount -l. Returns the exit status. Never throws.
   */
  async stop(timeoutMs = 15_000): Promise<{ code: number | null; signal: NodeJS.Signals | null; clean: boolean }> {
    let clean = true;
    if (!this.stopped) {
      this.stopped = true;
      if (this.proc.running) {
        this.proc.proc.kill('SIGTERM');
        const exited = await Promise.race([this.proc.exited.then(() => true), sleep(timeoutMs).then(() => false)]);
        if (!exited) {
          clean = false;
          abortFuseConnection(this.path);
          await this.proc.kill();
        }
      }
      if (this.mounted) {
        clean = false;
        abortFuseConnection(this.path);
        lazyUnmount(this.path);
      }
      this.unclean();
      if (this.ownsDir) rmSync(this.path, { recursive: true, force: true });
    }
    const st = await this.proc.exited;
    return { code: st.code, signal: st.signal, clean };
  }

  /** For after-hooks when something went wrong: abort the connection, SIGKILL, detach. */
  async kill(): Promise<void> {
    if (this.mounted) abortFuseConnection(this.path);
    await this.proc.kill();
    await this.stop(2000);
  }
}

/** Runs `vhost-s3 mount --bucket B [args] MOUNTPOINT` and resolves once the mount is up. */
export async function startMount(o: MountOptions): Promise<Mount> {
  const ownsDir = o.mountpoint === undefined;
  const path = o.mountpoint ?? mkdtempSync(join(tmpdir(), 'vhost-s3-mnt-'));
  if (!ownsDir) mkdirSync(path, { recursive: true });
  const args = ['mount', '--bucket', o.bucket, '--log-level', o.logLevel ?? 'info', ...(o.args ?? []), path];
  const proc = new CliProcess(args, { env: o.env ?? {} });
  const m = new Mount(path, proc, ownsDir);
  try {
    await proc.waitFor('the mount', () => m.mounted, o.timeoutMs ?? 20_000);
    // The mount shows in mountinfo before the server's event loop runs: one answered
    // request means it is up and serving.
    const answered = await Promise.race([stat(path).then(() => true, () => true), sleep(o.timeoutMs ?? 20_000).then(() => false)]);
    if (!answered) throw new Error(`the mount on ${path} did not answer a stat within ${o.timeoutMs ?? 20_000} ms\n${proc.describe()}`);
  } catch (err) {
    await m.kill();
    throw err;
  }
  return m;
}
