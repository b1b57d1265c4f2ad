/** `views` without their first `n` bytes (after a short writev), sharing their memory. */
export function pastBytes(views: readonly Uint8Array[], n: number): Uint8Array[] {
  const rest: Uint8Array[] = [];
  for (const v of views) {
    if (n >= v.length) n -= v.length;
    else {
      rest.push(n > 0 ? v.subarray(n) : v);
      n = 0;
    }
  }
  return rest;
}
