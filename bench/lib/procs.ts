// Child processes and temporary paths the benchmark owns: every one is stopped or removed
// when the run ends, fails, or is interrupted (SIGINT/SIGTERM/SIGHUP).
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { rmSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';

export interface Child {
  readonly proc: ChildProcess;
  readonly name: string;
  readonly pid: number;
  /** stdout + stderr so far (bounded). */
  output(): string;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  hasExited(): boolean;
  /** SIGTERM, SIGKILL after `graceMs`; resolves once it has exited. */
  stop(graceMs?: number): Promise<void>;
}

const children = new Set<Child>();
const paths = new Set<string>();
let hooked = false;

/** Kills every live child (SIGKILL) and removes every registered path, synchronously. */
export function cleanupNow(): void {
  for (const c of children) {
    if (!c.hasExited()) {
      try {
        c.proc.kill('SIGKILL');
      } catch {
        /* already gone */
      }
    }
  }
  children.clear();
  for (const p of paths) {
    try {
      rmSync(p, { recursive: true, force: true });
    } catch {
      /* best effort */
    }
  }
  paths.clear();
}

function hook(): void {
  if (hooked) return;
  hooked = true;
  process.on('exit', cleanupNow);
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.on(sig, () => {
      process.stderr.write(`\nbench: ${sig}, stopping children and removing temporary files\n`);
      cleanupNow();
      process.exit(128 + (sig === 'SIGINT' ? 2 : sig === 'SIGTERM' ? 15 : 1));
    });
  }
}

/** Registers a file or directory to remove at exit (and on signals). */
export function removeAtExit(path: string): void {
  hook();
  paths.add(path);
}

/** Removes a registered path now. */
export function removeNow(path: string): void {
  rmSync(path, { recursive: true, force: true });
  paths.delete(path);
}

const MAX_OUTPUT = 64 * 1024;

export function startChild(name: string, cmd: string, args: readonly string[], opts: SpawnOptions = {}): Child {
  hook();
  const proc = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], ...opts });
  let out = '';
  const append = (b: Buffer): void => {
    out += b.toString();
    if (out.length > MAX_OUTPUT) out = out.slice(-MAX_OUTPUT / 2);
  };
  proc.stdout?.on('data', append);
  proc.stderr?.on('data', append);
  let done = false;
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    proc.on('error', (e) => {
      out += `spawn error: ${e.message}\n`;
      done = true;
      resolve({ code: null, signal: null });
    });
    proc.on('close', (code, signal) => {
      done = true;
      resolve({ code, signal });
    });
  });
  const child: Child = {
    proc,
    name,
    pid: proc.pid ?? -1,
    output: () => out,
    exited,
    hasExited: () => done,
    async stop(graceMs = 5000) {
      if (!done) {
        proc.kill('SIGTERM');
        const t = setTimeout(() => {
          if (!done) proc.kill('SIGKILL');
        }, graceMs);
        await exited;
        clearTimeout(t);
      }
      children.delete(child);
    },
  };
  void exited.then(() => children.delete(child));
  children.add(child);
  return child;
}

/** Runs a command to completion; throws with its output unless it exits 0. */
export async function runToEnd(name: string, cmd: string, args: readonly string[]): Promise<string> {
  const c = startChild(name, cmd, args);
  let stdout = '';
  c.proc.stdout?.on('data', (b: Buffer) => (stdout += b.toString()));
  const { code, signal } = await c.exited;
  if (code !== 0) throw new Error(`${name} failed (${code ?? signal}):\n${tail(c.output(), 30)}`);
  return stdout;
}

/** Waits until `socket` exists as a socket, failing early if the child exits. */
export async function waitForSocket(child: Child, socket: string, timeoutMs = 15000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (child.hasExited()) throw new Error(`${child.name} exited before listening on ${socket}:\n${tail(child.output(), 20)}`);
    try {
      if ((await stat(socket)).isSocket()) return;
    } catch {
      /* not yet */
    }
    if (Date.now() > deadline) throw new Error(`${child.name} did not create ${socket} within ${timeoutMs} ms:\n${tail(child.output(), 20)}`);
    await sleep(20);
  }
}

export function tail(text: string, lines: number): string {
  const all = text.replace(/\r/g, '').trimEnd().split('\n');
  return (all.length > lines ? ['[...]', ...all.slice(-lines)] : all).join('\n');
}
