/**
 * xorshift32: the next 32-bit words from a non-zero state (0 is taken as 1). Cheap and
 * deterministic, which is all the workloads' verify patterns and the randomized tests need:
 * the same seed replays the same sequence.
 */
export function xorshift32(state: number): () => number {
  let x = state >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>>= 0);
  };
}
