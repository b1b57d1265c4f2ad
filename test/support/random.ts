// Seeded randomness for the randomized tests: a failing test prints its seed, and the same
// seed must replay the same sequence (src/util/xorshift.ts underneath).
import { xorshift32 } from '../../src/util/xorshift.js';

/** Numbers in [0, 1) from xorshift32 started at `state`. */
export function uniform(state: number): () => number {
  const words = xorshift32(state);
  return () => words() / 0x100000000;
}

export interface SeededRandom {
  /** An integer in [0, n). */
  int(n: number): number;
  pick<T>(a: readonly T[]): T;
  chance(p: number): boolean;
}

/** The model tests' generator: the seed is the initial state. */
export function seededRandom(seed: number): SeededRandom {
  const next = uniform(seed);
  return { int: (n) => Math.floor(next() * n), pick: (a) => a[Math.floor(next() * a.length)]!, chance: (p) => next() < p };
}
