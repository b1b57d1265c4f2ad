import { spawn, type ChildProcess } from 'node:child_process';

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs a command to completion, capturing its output. Never throws for a non-zero exit. */
export function runCommand(cmd: string, args: readonly string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd: opts.cwd, env: opts.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    child.on('error', reject);
    child.on('close', (code, signal) =>
      resolve({ code, signal, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8') }),
    );
  });
}

/** Runs a command and throws (with its output) unless it exits with status 0. */
export async function runChecked(cmd: string, args: readonly string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): Promise<RunResult> {
  const r = await runCommand(cmd, args, opts);
  if (r.code !== 0) {
    const tail = (r.stderr + r.stdout).trim().split('\n').slice(-30).join('\n');
    throw new Error(`${cmd} ${args.join(' ')} failed (${r.code ?? r.signal}):\n${tail}`);
  }
  return r;
}

/** Last `lines` lines of a text, for error messages. */
export function tail(text: string, lines = 60): string {
  const all = text.replace(/\r/g, '').split('\n');
  return (all.length > lines ? ['[...]', ...all.slice(-lines)] : all).join('\n');
}

// ---- cleanup of child processes and temporary files when the test process ends ----

const tracked = new Set<ChildProcess>();
const cleanups = new Set<() => void>();
let hooksInstalled = false;

/** Synchronously kills every tracked child (SIGKILL) and runs the registered cleanups. */
export function cleanupAll(): void {
  for (const c of tracked) {
    try {
      c.kill('SIGKILL');
    } catch {
      /* already gone */
    }
  }
  tracked.clear();
  for (const f of cleanups) {
    try {
      f();
    } catch {
      /* best effort */
    }
  }
  cleanups.clear();
}

function installHooks(): void {
  if (hooksInstalled) return;
  hooksInstalled = true;
  process.on('exit', cleanupAll);
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    const handler = (): void => {
      cleanupAll();
      // If nobody else handles the signal, keep its default meaning (terminate).
      process.removeListener(sig, handler);
      if (process.listenerCount(sig) === 0) process.kill(process.pid, sig);
    };
    process.on(sig, handler);
  }
}

/** Kills `child` if this process exits or is interrupted first. Returns the function that stops tracking it. */
export function trackChild(child: ChildProcess): () => void {
  installHooks();
  tracked.add(child);
  child.once('close', () => tracked.delete(child));
  return () => tracked.delete(child);
}

/** Runs `fn` (synchronously) if this process exits or is interrupted first. Returns the function that unregisters it. */
export function onCleanup(fn: () => void): () => void {
  installHooks();
  cleanups.add(fn);
  return () => cleanups.delete(fn);
}
