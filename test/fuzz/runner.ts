// The fuzz runner shared by the targets in this folder: property-based generation with
// fast-check (no coverage-guided fuzzer for JavaScript runs here: @jazzer.js/core 4.x
// ships only a prebuilt addon that needs glibc 2.38, Debian 12 has 2.36, and no sources
// to build it from), a checked-in seed corpus replayed on every run, and a time budget.
//
// Each target turns an input into "features": short strings naming the outcome it
// reached (a chain error, a blk status, an errno per opcode). The corpus holds one input
// per feature first reached by it, so replaying it walks every outcome seen so far;
// VHOST_S3_FUZZ_SAVE_CORPUS=1 adds inputs that reach new features (and counterexamples)
// to test/fuzz/corpus/<target>/.
//
//   VHOST_S3_FUZZ_SECONDS=60       time budget per target (default 5)
//   VHOST_S3_FUZZ_SEED=<n>         fast-check seed, to replay a failure it printed
//   VHOST_S3_FUZZ_SAVE_CORPUS=1    write new-feature inputs and counterexamples to the corpus
//   VHOST_S3_FUZZ_STATS=<file>     append one JSON line of figures per target run
import { createHash } from 'node:crypto';
import { appendFileSync, existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import { expect } from 'chai';
import fc from 'fast-check';
import { TmpDir } from '../support/tmp.js';

/** The corpus lives in the source tree (tests run from dist/test/fuzz). */
export const CORPUS_DIR = fileURLToPath(new URL('../../../test/fuzz/corpus/', import.meta.url));

export interface FuzzTarget<T> {
  /** Names the corpus folder. */
  readonly name: string;
  /** Names the run in the figures (default: name). */
  readonly label?: string;
  readonly arbitrary: fc.Arbitrary<T>;
  /** Runs one input against the real parser/device; throws when an invariant is violated. Returns the features reached. */
  run(input: T): Promise<Iterable<string>> | Iterable<string>;
}

export interface FuzzFigures {
  readonly target: string;
  readonly corpus: number;
  readonly iterations: number;
  readonly seconds: number;
  readonly features: number;
  readonly newCorpusEntries: number;
}

export function fuzzSeconds(): number {
  const v = Number(process.env['VHOST_S3_FUZZ_SECONDS'] ?? '5');
  return Number.isFinite(v) && v >= 0 ? v : 5;
}

/** A cheap assertion for the hot paths of the targets (chai's chains cost more than the code under test). */
export function check(cond: boolean, what: string | (() => string)): asserts cond {
  if (!cond) throw new Error(typeof what === 'string' ? what : what());
}

// ---- corpus files: JSON with tagged bigints and byte arrays -----------------------------------

function replacer(_key: string, value: unknown): unknown {
  if (typeof value === 'bigint') return { $bigint: value.toString() };
  if (value instanceof Uint8Array) return { $bytes: Buffer.from(value).toString('hex') };
  return value;
}

function reviver(_key: string, value: unknown): unknown {
  if (value !== null && typeof value === 'object') {
    const o = value as Record<string, unknown>;
    if (typeof o['$bigint'] === 'string') return BigInt(o['$bigint']);
    if (typeof o['$bytes'] === 'string') return new Uint8Array(Buffer.from(o['$bytes'], 'hex'));
  }
  return value;
}

export function encodeInput(input: unknown): string {
  return JSON.stringify(input, replacer);
}

export function decodeInput<T>(text: string): T {
  return JSON.parse(text, reviver) as T;
}

export function loadCorpus<T>(name: string): Array<{ file: string; input: T }> {
  const dir = join(CORPUS_DIR, name);
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .filter((f) => f.endsWith('.json'))
    .sort()
    .map((f) => ({ file: f, input: decodeInput<T>(readFileSync(join(dir, f), 'utf8')) }));
}

export function saveInput(name: string, input: unknown, prefix: string): string {
  const dir = join(CORPUS_DIR, name);
  mkdirSync(dir, { recursive: true });
  const text = `${encodeInput(input)}\n`;
  const file = `${prefix}-${createHash('sha1').update(text).digest('hex').slice(0, 12)}.json`;
  writeFileSync(join(dir, file), text);
  return file;
}

function saving(): boolean {
  return process.env['VHOST_S3_FUZZ_SAVE_CORPUS'] === '1';
}

// ---- running ----------------------------------------------------------------------------------

/** Replays every corpus input; returns the features they reach. */
export async function replayCorpus<T>(target: FuzzTarget<T>): Promise<{ inputs: number; features: Set<string> }> {
  const features = new Set<string>();
  const corpus = loadCorpus<T>(target.name);
  for (const { file, input } of corpus) {
    try {
      for (const f of await target.run(input)) features.add(f);
    } catch (err) {
      (err as Error).message = `corpus input ${target.name}/${file}: ${(err as Error).message}`;
      throw err;
    }
  }
  return { inputs: corpus.length, features };
}

/**
 * Generates inputs for the time budget (at least `minRuns`), fast-check shrinking any
 * failure. `known` are the features the corpus reaches already.
 */
export async function fuzzFor<T>(target: FuzzTarget<T>, known: Set<string>, opts: { minRuns?: number } = {}): Promise<FuzzFigures> {
  const budgetMs = fuzzSeconds() * 1000;
  const seen = new Set(known);
  let iterations = 0;
  let added = 0;
  const start = Date.now();
  const seedEnv = process.env['VHOST_S3_FUZZ_SEED'];
  const minRuns = opts.minRuns ?? 20;
  const property = fc.asyncProperty(target.arbitrary, async (input) => {
    iterations++;
    let fresh = false;
    for (const f of await target.run(input)) {
      if (!seen.has(f)) {
        seen.add(f);
        fresh = true;
      }
    }
    if (fresh && saving()) {
      saveInput(target.name, input, 'gen');
      added++;
    }
  });
  const details = await fc.check(property, {
    numRuns: budgetMs > 0 ? 1_000_000_000 : minRuns,
    ...(budgetMs > 0 ? { plugins: [fc.interruptAfterTimeLimit(Math.max(budgetMs, 1))] } : {}),
    ...(seedEnv !== undefined ? { seed: Number(seedEnv) } : {}),
    endOnFailure: false,
  });
  if (details.failed) {
    const example = (details.counterexample as [T] | null)?.[0];
    let saved = '';
    if (example !== undefined && saving()) saved = ` saved as corpus/${target.name}/${saveInput(target.name, example, 'crash')}`;
    const cause = details.errorInstance instanceof Error ? details.errorInstance.message : String(details.errorInstance);
    throw new Error(
      `fuzz target ${target.name} failed after ${details.numRuns} runs (seed ${details.seed}, path ${details.counterexamplePath}):\n` +
      `${cause}\ninput: ${example === undefined ? '?' : encodeInput(example)}${saved}`,
    );
  }
  const figures: FuzzFigures = {
    target: target.label ?? target.name, corpus: loadCorpus(target.name).length, iterations,
    seconds: Math.round((Date.now() - start) / 100) / 10, features: seen.size, newCorpusEntries: added,
  };
  const statsFile = process.env['VHOST_S3_FUZZ_STATS'];
  if (statsFile !== undefined && statsFile !== '') appendFileSync(statsFile, `${JSON.stringify(figures)}\n`);
  return figures;
}

/**
 * The two mocha tests every target gets: replay the corpus, then fuzz for the budget.
 * Call inside a describe() whose before() sets the target up.
 */
export function fuzzTests<T>(target: () => FuzzTarget<T>): void {
  let known = new Set<string>();
  it('replays the checked-in corpus', async function () {
    const t = target();
    const r = await replayCorpus(t);
    known = r.features;
    if (r.inputs === 0 && !saving()) throw new Error(`no corpus in ${join(CORPUS_DIR, t.name)}`);
  });
  it(`fuzzes generated inputs for ${fuzzSeconds()} s (VHOST_S3_FUZZ_SECONDS)`, async function () {
    this.timeout(fuzzSeconds() * 1000 * 3 + 120_000);
    const f = await fuzzFor(target(), known);
    // One line of figures per run: what docs/reliability.md records.
    console.log(`      fuzz ${f.target}: ${f.iterations} inputs in ${f.seconds} s, corpus ${f.corpus}, ${f.features} features${f.newCorpusEntries > 0 ? `, ${f.newCorpusEntries} new corpus entries` : ''}`);
  });
}

export interface FuzzSuiteSetUp {
  /** A temporary directory for the suite, removed after it. */
  readonly dir: TmpDir;
  /** Registers a teardown step; after() runs them in reverse order (last set up, first closed). */
  defer(close: () => unknown): void;
}

/**
 * A describe() for a target with resources: before() starts collecting exceptions that
 * escape (uncaught, unhandled rejections), makes the TmpDir and calls setUp; after() runs
 * the deferred teardowns (also when setUp failed half way), removes the directory and
 * fails if anything escaped. Then the fuzzTests.
 */
export function fuzzSuite<T>(title: string, tmpPrefix: string, setUp: (s: FuzzSuiteSetUp) => Promise<FuzzTarget<T>>): void {
  describe(title, function () {
    this.timeout(120_000);
    let dir: TmpDir | undefined;
    let target: FuzzTarget<T>;
    const closers: Array<() => unknown> = [];
    const uncaught: unknown[] = [];
    const onUncaught = (e: unknown): void => {
      uncaught.push(e);
    };
    before(async () => {
      process.on('uncaughtException', onUncaught);
      process.on('unhandledRejection', onUncaught);
      dir = new TmpDir(tmpPrefix);
      target = await setUp({ dir, defer: (close) => closers.push(close) });
    });
    after(async () => {
      process.off('uncaughtException', onUncaught);
      process.off('unhandledRejection', onUncaught);
      for (const close of closers.splice(0).reverse()) await close();
      dir?.remove();
      expect(uncaught, 'exceptions that escaped').to.deep.equal([]);
    });
    fuzzTests(() => target);
  });
}
