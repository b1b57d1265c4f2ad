// Layer 4: a randomized reference-model test of `vhost-s3 mount`. The same random
// operations go to the mount (the server is a child process, so this process may call
// fs/promises on it) and to a local directory (the kernel's own file system is the model);
// the outcomes (ok, or the errno) must agree, and after every step the two trees must be
// the same.
//
// Operations: create/overwrite, write at a random offset (holes past EOF), append,
// truncate, mkdir, rmdir, unlink, rename of files, directories and symlinks (onto
// existing targets too), symlink, chmod, utimes; and up to four file handles kept open across
// steps (written, read, fstat'ed, ftruncated, closed later), so renames, unlinks and
// chmods happen under open files. Paths are 1..3 components from a tiny alphabet, so operations collide.
// Symlink targets are relative names without `..` (never leading out of either tree).
//
// Compared after each step: names, types, sizes of files and symlinks, permission bits,
// owners, symlink targets, file contents (md5); and mtimes by rule (timeProblems): one
// set by `utimes` must be identical until something changes it, and a file or symlink
// whose model mtime moved on must not keep the old one on the mount. Not compared: other
// times (the mount stamps them at other moments), directory mtimes once entries changed
// (the mount leaves them, as documented), link counts (the mount reports 1 for
// directories), directory sizes, inode numbers, st_blocks, atimes.
//
// VHOST_S3_MODEL_SEED=<n> replays one sequence; VHOST_S3_MODEL_STEPS=<n> changes its
// length (default 600 over s3rver, 400 over the file store). A failure prints the seed,
// the step, the tree difference and the operation log.
import { expect } from 'chai';
import { createHash } from 'node:crypto';
import { appendFile, chmod, lstat, mkdir, open, readFile, readdir, readlink, rename, rmdir, symlink, truncate, unlink, utimes, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { seededRandom, type SeededRandom } from '../support/random.js';
import { TmpDir, patternBytes } from '../support/tmp.js';
import { mountPrereqProblem, startBackend, startMount, type Backend, type BackendKind, type Mount } from '../support/mount.js';

const KiB = 1024;


const NAMES = ['a', 'b', 'c', 'd'];
const TARGETS = ['a', 'b', 'c', 'a/b', 'b/c', 'nowhere', 'c/a/b'];
// 02755 and 02775 make setgid directories, whose bit new directories in them inherit.
const MODES = [0o644, 0o600, 0o755, 0o700, 0o640, 0o444, 0o750, 0o4755, 0o1777, 0o4644, 0o2755, 0o2775];
const MAX_HANDLES = 4;

/** Operation weights (handle operations only while a handle is open). */
const OPS = {
  create: 8, pwrite: 10, append: 5, truncate: 5, mkdir: 8, rmdir: 5, unlink: 5, rename: 10, symlink: 4, chmod: 4, utimes: 4,
  open: 7, hwrite: 12, hread: 6, hstat: 3, ftruncate: 3, hmove: 5, close: 3,
} as const;
type OpName = keyof typeof OPS;
const HANDLE_OPS: readonly OpName[] = ['hwrite', 'hread', 'hstat', 'ftruncate', 'hmove', 'close'];

function pickOp(r: SeededRandom, haveHandles: boolean): OpName {
  const names = (Object.keys(OPS) as OpName[]).filter((n) => haveHandles || !HANDLE_OPS.includes(n));
  let x = r.int(names.reduce((s, n) => s + OPS[n], 0));
  for (const n of names) {
    x -= OPS[n];
    if (x < 0) return n;
  }
  return names[names.length - 1]!;
}

function randomPath(r: SeededRandom): string {
  return Array.from({ length: 1 + r.int(3) }, () => r.pick(NAMES)).join('/');
}

/** What exists in the model (from the last snapshot), to aim most operations at. */
interface Known {
  dirs: string[];
  files: string[];
  entries: string[];
}

/** Mostly an existing file, an existing entry or a new name in an existing directory, as asked; sometimes anything. */
function aimedPath(r: SeededRandom, known: Known, aim: 'file' | 'any' | 'new'): string {
  if (r.chance(0.12)) return randomPath(r);
  if (aim === 'file' && known.files.length > 0 && r.chance(0.8)) return r.pick(known.files);
  if (aim !== 'new' && known.entries.length > 0 && r.chance(0.8)) return r.pick(known.entries);
  const dir = r.chance(0.25) || known.dirs.length === 0 ? '' : r.pick(known.dirs);
  const name = r.pick(NAMES);
  return dir === '' ? name : `${dir}/${name}`;
}

function knownOf(snap: readonly string[]): Known {
  const dirs: string[] = [];
  const files: string[] = [];
  const entries: string[] = [];
  for (const line of snap) {
    const [path, type] = line.split(' ') as [string, string];
    entries.push(path);
    if (type === 'dir' && path.split('/').length < 4) dirs.push(path);
    if (type === 'file') files.push(path);
  }
  return { dirs, files, entries };
}

/** Sizes and offsets: mostly small, sometimes across the mount's 1 MiB cache blocks. */
function randomSize(r: SeededRandom): number {
  const k = r.int(20);
  if (k < 12) return r.int(4 * KiB);
  if (k < 18) return r.int(96 * KiB);
  return 1000 * KiB + r.int(200 * KiB);
}

/** 'ok[:value]' or the error code. */
async function outcome<T>(fn: () => Promise<T>, show: (v: T) => string = () => ''): Promise<string> {
  try {
    const v = await fn();
    const s = show(v);
    return s === '' ? 'ok' : `ok:${s}`;
  } catch (err) {
    const code = (err as { code?: unknown }).code;
    if (typeof code === 'string') return code;
    throw err;
  }
}

const md5 = (b: Uint8Array): string => createHash('md5').update(b).digest('hex');

interface Snapshot {
  /** One line per entry, sorted: what must agree exactly between the mount and the model. */
  readonly lines: string[];
  /** mtime (ns) of every entry, compared by the rules of timeProblems(). */
  readonly mtimes: Map<string, { readonly kind: string; readonly ns: bigint }>;
}

async function snapshot(root: string): Promise<Snapshot> {
  const lines: string[] = [];
  const mtimes = new Map<string, { kind: string; ns: bigint }>();
  const walk = async (rel: string): Promise<void> => {
    const names = (await readdir(join(root, rel))).sort();
    for (const name of names) {
      const p = rel === '' ? name : `${rel}/${name}`;
      const full = join(root, p);
      const st = await lstat(full, { bigint: true });
      const perm = (Number(st.mode) & 0o7777).toString(8);
      const owner = `${st.uid}:${st.gid}`;
      if (st.isDirectory()) {
        lines.push(`${p} dir ${perm} ${owner}`);
        mtimes.set(p, { kind: 'dir', ns: st.mtimeNs });
        await walk(p);
      } else if (st.isSymbolicLink()) {
        lines.push(`${p} symlink ${st.size} -> ${await readlink(full)}`);
        mtimes.set(p, { kind: 'symlink', ns: st.mtimeNs });
      } else if (st.isFile()) {
        const data = await readFile(full);
        lines.push(`${p} file ${perm} ${owner} ${st.size} read=${data.length} ${md5(data)}`);
        mtimes.set(p, { kind: 'file', ns: st.mtimeNs });
      } else {
        lines.push(`${p} other ${st.mode.toString(8)}`);
      }
    }
  };
  await walk('');
  return { lines, mtimes };
}

/** mtimes set by `utimes` in this test are before this (2001); everything else is recent. */
const OLD_NS = 1_300_000_000n * 1_000_000_000n;

/**
 * Times: where the model's mtime is one `utimes` set (old) and nothing changed it since,
 * the mount's must be the same to the nanosecond (a chmod, rename or read must not touch
 * it); where the model's is recent because of a write or truncate, the mount's must be
 * recent too for files and symlinks (directories are exempt: the mount does not change a
 * directory's mtime when entries come and go, as documented in bucket-vfs.ts).
 */
let exactTimeChecks = 0;

function timeProblems(mine: Snapshot, model: Snapshot): string[] {
  const out: string[] = [];
  for (const [p, want] of model.mtimes) {
    const got = mine.mtimes.get(p);
    if (!got) continue; // the lines differ already
    if (want.ns < OLD_NS) {
      exactTimeChecks++;
      if (got.ns !== want.ns) out.push(`  ${p} (${want.kind}): mtime ${got.ns} on the mount, ${want.ns} in the model (set by utimes)`);
    } else if (want.kind !== 'dir' && got.ns < OLD_NS) {
      out.push(`  ${p} (${want.kind}): mtime ${got.ns} on the mount kept an old utimes value, the model's changed to ${want.ns}`);
    }
  }
  return out;
}

function treeDiff(mine: string[], model: string[]): string {
  const a = new Set(mine);
  const b = new Set(model);
  return [...model.filter((l) => !a.has(l)).map((l) => `  model only: ${l}`), ...mine.filter((l) => !b.has(l)).map((l) => `  mount only: ${l}`)].join('\n');
}

interface Handle {
  readonly id: number;
  readonly path: string;
  readonly flags: string;
  readonly mine: FileHandle;
  readonly model: FileHandle;
}

async function runModel(mountRoot: string, modelRoot: string, seed: number, steps: number): Promise<{ ops: Record<string, number>; outcomes: Record<string, number>; maxEntries: number }> {
  const r = seededRandom(seed);
  const log: string[] = [];
  const handles: Handle[] = [];
  const ops: Record<string, number> = {};
  let nextId = 1;
  let dataSeed = seed * 7919;
  let maxEntries = 0;
  let known: Known = { dirs: [], files: [], entries: [] };
  const outcomes: Record<string, number> = {};

  const fail = (step: number, why: string): never => {
    const shown = log.length > 400 ? ['[...]', ...log.slice(-400)] : log;
    expect.fail(`model test failed: VHOST_S3_MODEL_SEED=${seed}, step ${step}: ${why}\noperation log (model outcome | mount outcome):\n${shown.join('\n')}`);
  };

  /** Applies `fn` to both sides (mount first, then model) and compares the outcomes. */
  const both = async (step: number, what: string, fn: (root: string, side: 'mine' | 'model') => Promise<string>): Promise<[string, string]> => {
    const mine = await fn(mountRoot, 'mine');
    const model = await fn(modelRoot, 'model');
    log.push(`${String(step).padStart(4)} ${what} → ${model}${mine !== model ? ` | MOUNT: ${mine}` : ''}`);
    const o = model.startsWith('ok') ? 'ok' : model;
    outcomes[o] = (outcomes[o] ?? 0) + 1;
    if (mine !== model) fail(step, `${what}: mount ${mine}, model ${model}`);
    return [mine, model];
  };

  const closeHandle = async (h: Handle, step: number, why: string): Promise<void> => {
    handles.splice(handles.indexOf(h), 1);
    const a = await outcome(() => h.mine.close());
    const b = await outcome(() => h.model.close());
    log.push(`${String(step).padStart(4)} close #${h.id} (${h.path}, ${why}) → ${b}${a !== b ? ` | MOUNT: ${a}` : ''}`);
    if (a !== b) fail(step, `close #${h.id}: mount ${a}, model ${b}`);
  };

  try {
    for (let step = 1; step <= steps; step++) {
      const name = pickOp(r, handles.length > 0);
      // Creations aim at new names in existing directories; file operations mostly at
      // existing files; the rest mostly at existing entries.
      const p = name === 'create' || name === 'mkdir' || name === 'symlink' || (name === 'open' && r.chance(0.3))
        ? aimedPath(r, known, 'new')
        : aimedPath(r, known, ['pwrite', 'append', 'truncate', 'open'].includes(name) ? 'file' : 'any');
      switch (name) {
        case 'create': {
          const data = patternBytes(++dataSeed, randomSize(r));
          await both(step, `create ${p} (${data.length} bytes, O_TRUNC)`, (root) => outcome(() => writeWhole(join(root, p), data)));
          break;
        }
        case 'pwrite': {
          const off = randomSize(r);
          const data = patternBytes(++dataSeed, 1 + r.int(r.chance(0.2) ? 300 * KiB : 8 * KiB));
          await both(step, `pwrite ${p} @${off} +${data.length}`, (root) =>
            outcome(async () => {
              const fh = await open(join(root, p), 'r+');
              try {
                await fh.write(data, 0, data.length, off);
              } finally {
                await fh.close();
              }
            }));
          break;
        }
        case 'append': {
          const data = patternBytes(++dataSeed, 1 + r.int(6 * KiB));
          await both(step, `append ${p} +${data.length}`, (root) => outcome(() => appendFile(join(root, p), data)));
          break;
        }
        case 'truncate': {
          const size = randomSize(r);
          await both(step, `truncate ${p} ${size}`, (root) => outcome(() => truncate(join(root, p), size)));
          break;
        }
        case 'mkdir': {
          const mode = r.pick([0o755, 0o700, 0o750, 0o777]);
          await both(step, `mkdir ${p} ${mode.toString(8)}`, (root) => outcome(() => mkdir(join(root, p), mode)));
          break;
        }
        case 'rmdir':
          await both(step, `rmdir ${p}`, (root) => outcome(() => rmdir(join(root, p))));
          break;
        case 'unlink':
          await both(step, `unlink ${p}`, (root) => outcome(() => unlink(join(root, p))));
          break;
        case 'rename': {
          const q = aimedPath(r, known, r.chance(0.3) ? 'any' : 'new');
          await both(step, `rename ${p} ${q}`, (root) => outcome(() => rename(join(root, p), join(root, q))));
          break;
        }
        case 'symlink': {
          const target = r.pick(TARGETS);
          await both(step, `symlink ${p} -> ${target}`, (root) => outcome(() => symlink(target, join(root, p))));
          break;
        }
        case 'utimes': {
          // Old times (before OLD_NS), to the microsecond (what a JS number carries exactly here).
          const mtime = 1_000_000_000 + r.int(200_000_000) + r.int(1_000_000) / 1_000_000;
          const atime = 900_000_000 + r.int(1000);
          await both(step, `utimes ${p} ${mtime}`, (root) => outcome(() => utimes(join(root, p), atime, mtime)));
          break;
        }
        case 'chmod': {
          const mode = r.pick(MODES);
          await both(step, `chmod ${p} ${mode.toString(8)}`, (root) => outcome(() => chmod(join(root, p), mode)));
          break;
        }
        case 'open': {
          const flags = r.pick(['r+', 'r+', 'a+', 'w+', 'wx+', 'r']);
          if (handles.length >= MAX_HANDLES) await closeHandle(handles[r.int(handles.length)]!, step, 'to make room');
          const id = nextId++;
          const got: Partial<Record<'mine' | 'model', FileHandle>> = {};
          const [res] = await both(step, `open #${id} ${p} ${flags}`, (root, side) =>
            outcome(async () => {
              got[side] = await open(join(root, p), flags, 0o640);
            }));
          if (res === 'ok') handles.push({ id, path: p, flags, mine: got.mine!, model: got.model! });
          else {
            await got.mine?.close();
            await got.model?.close();
          }
          break;
        }
        case 'hwrite': {
          const h = r.pick(handles);
          const off = randomSize(r);
          const data = patternBytes(++dataSeed, 1 + r.int(16 * KiB));
          // On an O_APPEND handle the position is ignored (both sides append).
          await both(step, `write #${h.id} (${h.path} ${h.flags}) @${off} +${data.length}`, (_root, side) =>
            outcome(async () => (await h[side].write(data, 0, data.length, off)).bytesWritten, String));
          break;
        }
        case 'hread': {
          const h = r.pick(handles);
          const off = randomSize(r);
          const len = 1 + r.int(64 * KiB);
          await both(step, `read #${h.id} (${h.path}) @${off} +${len}`, (_root, side) =>
            outcome(async () => {
              const buf = new Uint8Array(len);
              const { bytesRead } = await h[side].read(buf, 0, len, off);
              return `${bytesRead} ${md5(buf.subarray(0, bytesRead))}`;
            }, String));
          break;
        }
        case 'ftruncate': {
          const h = r.pick(handles);
          const size = randomSize(r);
          await both(step, `ftruncate #${h.id} (${h.path}) ${size}`, (_root, side) => outcome(() => h[side].truncate(size)));
          break;
        }
        case 'hstat': {
          const h = r.pick(handles);
          await both(step, `fstat #${h.id} (${h.path})`, (_root, side) =>
            outcome(async () => {
              const st = await h[side].stat();
              return `${st.isFile() ? 'file' : 'other'} ${(st.mode & 0o7777).toString(8)} ${st.size}`;
            }, String));
          break;
        }
        case 'hmove': {
          // Rename (or unlink) the path of an open file, or one of its directories, to a new name.
          const h = r.pick(handles);
          const parts = h.path.split('/');
          const from = parts.slice(0, 1 + r.int(parts.length)).join('/');
          if (r.chance(0.25)) {
            await both(step, `unlink ${from} (open #${h.id} ${h.path})`, (root) => outcome(() => unlink(join(root, from))));
          } else {
            const to = aimedPath(r, known, r.chance(0.2) ? 'any' : 'new');
            await both(step, `rename ${from} ${to} (open #${h.id} ${h.path})`, (root) => outcome(() => rename(join(root, from), join(root, to))));
          }
          break;
        }
        case 'close':
          await closeHandle(r.pick(handles), step, 'random');
          break;
      }
      ops[name] = (ops[name] ?? 0) + 1;

      const [mine, model] = await Promise.all([snapshot(mountRoot), snapshot(modelRoot)]);
      if (mine.lines.join('\n') !== model.lines.join('\n')) fail(step, `the trees differ after the step:\n${treeDiff(mine.lines, model.lines)}\nmodel tree:\n${model.lines.join('\n')}`);
      const times = timeProblems(mine, model);
      if (times.length > 0) fail(step, `mtimes differ after the step:\n${times.join('\n')}`);
      known = knownOf(model.lines);
      maxEntries = Math.max(maxEntries, model.lines.length);
    }
    // Every handle closed: the trees must still agree (nothing resurrected, nothing lost).
    for (const h of [...handles]) await closeHandle(h, steps + 1, 'at the end');
    const [mine, model] = await Promise.all([snapshot(mountRoot), snapshot(modelRoot)]);
    if (mine.lines.join('\n') !== model.lines.join('\n')) fail(steps + 1, `the trees differ after closing every handle:\n${treeDiff(mine.lines, model.lines)}`);
    const times = timeProblems(mine, model);
    if (times.length > 0) fail(steps + 1, `mtimes differ after closing every handle:\n${times.join('\n')}`);
  } finally {
    for (const h of handles) {
      await h.mine.close().catch(() => undefined);
      await h.model.close().catch(() => undefined);
    }
  }
  return { ops, outcomes, maxEntries };
}

async function writeWhole(path: string, data: Uint8Array): Promise<void> {
  const fh = await open(path, 'w');
  try {
    await fh.write(data, 0, data.length, 0);
  } finally {
    await fh.close();
  }
}

const envSeed = process.env.VHOST_S3_MODEL_SEED;
const envSteps = process.env.VHOST_S3_MODEL_STEPS;

for (const kind of ['s3', 'file'] as BackendKind[]) {
  describe(`vhost-s3 mount over ${kind === 's3' ? 's3rver' : 'a file: store'}: randomized reference model (a local directory)`, function () {
    this.timeout(240_000);
    let be: Backend | undefined;
    let m: Mount | undefined;
    let local: TmpDir | undefined;

    before(async function () {
      if (mountPrereqProblem()) this.skip();
      local = new TmpDir('vhost-s3-model-');
      be = await startBackend(kind, 'model');
      m = await startMount({ bucket: be.locator, env: be.env });
    });
    after(async function () {
      this.timeout(30_000);
      const st = await m?.stop();
      if (st && !st.clean) console.error(`model mount over ${kind} did not stop cleanly:\n${m!.describe()}`);
      await be?.close();
      local?.remove();
    });

    it('random operations give the same outcomes and trees as on a local directory, and the same tree after a remount', async function () {
      const seed = envSeed !== undefined ? Number(envSeed) : (Math.random() * 0x7fffffff) >>> 0;
      const steps = envSteps !== undefined ? Number(envSteps) : kind === 's3' ? 600 : 400;
      const modelRoot = local!.file('model');
      await mkdir(modelRoot);
      const t0 = Date.now();
      exactTimeChecks = 0;
      const { ops, outcomes, maxEntries } = await runModel(m!.path, modelRoot, seed, steps);
      // What the mount stored is what a fresh mount sees.
      const st = await m!.stop();
      expect(st.clean, m!.describe()).to.equal(true);
      m = await startMount({ bucket: be!.locator, env: be!.env });
      const [mine, model] = await Promise.all([snapshot(m.path), snapshot(modelRoot)]);
      if (mine.lines.join('\n') !== model.lines.join('\n')) expect.fail(`VHOST_S3_MODEL_SEED=${seed}: after a remount the trees differ:\n${treeDiff(mine.lines, model.lines)}`);
      const times = timeProblems(mine, model);
      if (times.length > 0) expect.fail(`VHOST_S3_MODEL_SEED=${seed}: after a remount the mtimes differ:\n${times.join('\n')}`);
      console.log(`      seed ${seed}: ${steps} steps in ${Date.now() - t0} ms; up to ${maxEntries} entries, ${model.lines.length} at the end; ${exactTimeChecks} exact mtime checks\n      operations ${JSON.stringify(ops)}\n      outcomes ${JSON.stringify(outcomes)}`);
      // The sequence must have done real work, not mostly failed.
      expect(outcomes.ok ?? 0).to.be.above(steps / 3);
    });
  });
}
