// The vhost-s3 command line as a child process, the way a user (or QEMU's operator)
// runs it: `node bin/vhost-s3.js <command> ...`. One-shot commands with runCli(); long
// running ones (blk, serve) with spawnCli()/startBlkServer(), which wait for the socket,
// collect output, and are killed when the test process ends (trackChild).
import { spawn, type ChildProcess } from 'node:child_process';
import { statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';

import type { BlkClient } from '../../src/frontend/blk-client.js';
import { tail, trackChild } from './guest/exec.js';
import { TmpDir } from './tmp.js';

/** The repository root (this file runs from dist/test/support/). */
export const REPO_ROOT = fileURLToPath(new URL('../../../', import.meta.url));
/** The installed launcher, as `npm start` and users run it. */
export const CLI_BIN = fileURLToPath(new URL('../../../bin/vhost-s3.js', import.meta.url));

export interface CliOptions {
  /** Extra environment (VHOST_S3_* variables of the caller are removed first). */
  env?: Record<string, string>;
  cwd?: string;
  /** uid/gid to run as (the caller must be root). */
  uid?: number;
  gid?: number;
}

export interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  ms: number;
}

/** The environment for a child: ours without VHOST_S3_* (tests must not inherit a developer's settings). */
export function cliEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('VHOST_S3_')) env[k] = v;
  return { ...env, ...extra };
}

function spawnRaw(args: readonly string[], o: CliOptions): ChildProcess {
  const child = spawn(process.execPath, [CLI_BIN, ...args], {
    cwd: o.cwd ?? REPO_ROOT,
    env: cliEnv(o.env),
    stdio: ['ignore', 'pipe', 'pipe'],
    uid: o.uid,
    gid: o.gid,
  });
  trackChild(child);
  return child;
}

/** Runs a command to completion (SIGKILL after timeoutMs). Never throws for a non-zero exit. */
export function runCli(args: readonly string[], o: CliOptions & { timeoutMs?: number } = {}): Promise<CliResult> {
  const t0 = performance.now();
  const child = spawnRaw(args, o);
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (b: Buffer) => (stdout += b.toString()));
  child.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
  const timer = setTimeout(() => {
    stderr += `\n[test: killed after ${o.timeoutMs ?? 60_000} ms]\n`;
    child.kill('SIGKILL');
  }, o.timeoutMs ?? 60_000);
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, ms: performance.now() - t0 });
    });
  });
}

export interface ExitStatus {
  code: number | null;
  signal: NodeJS.Signals | null;
  /** Time from the signal (stop()) or from the start until the process was gone. */
  ms: number;
}

/** A long-running vhost-s3 process. */
export class CliProcess {
  readonly proc: ChildProcess;
  readonly args: readonly string[];
  private out = '';
  private err = '';
  private status: ExitStatus | null = null;
  readonly exited: Promise<ExitStatus>;
  private readonly t0 = performance.now();

  constructor(args: readonly string[], o: CliOptions = {}) {
    this.args = args;
    this.proc = spawnRaw(args, o);
    this.proc.stdout!.on('data', (b: Buffer) => (this.out += b.toString()));
    this.proc.stderr!.on('data', (b: Buffer) => (this.err += b.toString()));
    this.exited = new Promise((resolve) => {
      this.proc.on('error', (e) => {
        this.err += `spawn error: ${e.message}\n`;
      });
      this.proc.on('close', (code, signal) => {
        this.status = { code, signal, ms: performance.now() - this.t0 };
        resolve(this.status);
      });
    });
  }

  get pid(): number {
    return this.proc.pid!;
  }
  get stdout(): string {
    return this.out;
  }
  get stderr(): string {
    return this.err;
  }
  get running(): boolean {
    return this.status === null;
  }

  /** Every stderr line parsed as JSON (throws, naming the line, if one is not). */
  logLines(): Record<string, unknown>[] {
    return parseJsonLines(this.err);
  }

  /** For error messages: the command and what it printed. */
  describe(): string {
    return `vhost-s3 ${this.args.join(' ')}\n--- stdout ---\n${tail(this.out, 20)}\n--- stderr ---\n${tail(this.err, 30)}`;
  }

  /** Resolves once `pred(stdout, stderr)` holds; rejects if the process exits first or after timeoutMs. */
  async waitFor(what: string, pred: (stdout: string, stderr: string) => boolean, timeoutMs = 15_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (pred(this.out, this.err)) return;
      if (!this.running) throw new Error(`vhost-s3 exited (${this.status!.code ?? this.status!.signal}) before ${what}\n${this.describe()}`);
      if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}\n${this.describe()}`);
      await sleep(25);
    }
  }

  /** Resolves once `path` is a listening socket. */
  waitForSocket(path: string, timeoutMs = 15_000): Promise<void> {
    return this.waitFor(`socket ${path}`, () => isSocket(path), timeoutMs);
  }

  /** Sends `signal` and waits for the exit (SIGKILL after timeoutMs); `ms` counts from the signal. */
  async stop(signal: NodeJS.Signals = 'SIGTERM', timeoutMs = 15_000): Promise<ExitStatus> {
    if (this.status) return this.status;
    const t = performance.now();
    this.proc.kill(signal);
    const timer = setTimeout(() => {
      this.err += `\n[test: SIGKILL after ${timeoutMs} ms without exiting on ${signal}]\n`;
      this.proc.kill('SIGKILL');
    }, timeoutMs);
    const st = await this.exited;
    clearTimeout(timer);
    return { ...st, ms: performance.now() - t };
  }

  /** SIGKILL, for after-hooks; never throws. */
  async kill(): Promise<void> {
    if (!this.running) return;
    this.proc.kill('SIGKILL');
    await this.exited;
  }
}

/** A one-shot run's exit and output, or a long-running process's description, for assertion messages. */
export function explain(r: CliResult | CliProcess): string {
  if (r instanceof CliProcess) return r.describe();
  return `exit ${r.code ?? r.signal}\n--- stdout ---\n${r.stdout}\n--- stderr ---\n${r.stderr}`;
}

export function isSocket(path: string): boolean {
  try {
    return statSync(path).isSocket();
  } catch {
    return false;
  }
}

/** Parses JSON lines; every non-empty line must be a JSON object. */
export function parseJsonLines(text: string): Record<string, unknown>[] {
  const out: Record<string, unknown>[] = [];
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    let v: unknown;
    try {
      v = JSON.parse(line);
    } catch {
      throw new Error(`not a JSON line: ${JSON.stringify(line)}`);
    }
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error(`not a JSON object: ${line}`);
    out.push(v as Record<string, unknown>);
  }
  return out;
}

export interface BlkServerOptions extends CliOptions {
  socket: string;
  /** Image locator, e.g. file:/tmp/disk.raw. */
  image: string;
  readonly?: boolean;
  queues?: number;
  serial?: string;
  ioEngine?: 'uring' | 'sync';
  logLevel?: 'debug' | 'info' | 'warn' | 'error' | 'silent';
  /** More flags. */
  extra?: readonly string[];
}

/** `vhost-s3 blk ...` as a child process, resolved once its socket is listening. */
export async function startBlkServer(o: BlkServerOptions): Promise<CliProcess> {
  const args = ['blk', '--socket', o.socket, '--image', o.image];
  if (o.readonly) args.push('--readonly');
  if (o.queues !== undefined) args.push('--queues', String(o.queues));
  if (o.serial !== undefined) args.push('--serial', o.serial);
  if (o.ioEngine !== undefined) args.push('--io-engine', o.ioEngine);
  if (o.logLevel !== undefined) args.push('--log-level', o.logLevel);
  args.push(...(o.extra ?? []));
  const p = new CliProcess(args, o);
  try {
    await p.waitForSocket(o.socket);
  } catch (err) {
    await p.kill();
    throw err;
  }
  return p;
}

/** `vhost-s3 run --config <file> ...` as a child process, resolved once it printed its exports. */
export async function startRunServer(file: string, o: CliOptions & { extra?: readonly string[] } = {}): Promise<CliProcess> {
  const p = new CliProcess(['run', '--config', file, ...(o.extra ?? [])], o);
  try {
    await p.waitFor('the list of exports', (out) => out.includes('QEMU:'), 20_000);
  } catch (err) {
    await p.kill();
    throw err;
  }
  return p;
}

/** What useCliServer gives each test: its directory, and the gateway and disk client it starts. */
export class CliServerFixture {
  dir!: TmpDir;
  server: CliProcess | null = null;
  client: BlkClient | null = null;
}

/**
 * Registers beforeEach/afterEach: each test gets a new TmpDir (named tmpPrefix…); after it
 * the client it left in `client` is closed, the server in `server` killed, the dir removed.
 */
export function useCliServer(tmpPrefix: string): CliServerFixture {
  const fx = new CliServerFixture();
  beforeEach(() => {
    fx.dir = new TmpDir(tmpPrefix);
  });
  afterEach(async () => {
    await fx.client?.close();
    fx.client = null;
    await fx.server?.kill();
    fx.server = null;
    fx.dir.remove();
  });
  return fx;
}
