/** A seeded PRNG (mulberry32): the same seed gives the same trace, the same schedule. */
export type Random = () => number;

/** Uniform [0, 1) numbers from a 32-bit seed. */
export function seeded(seed: number): Random {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A whole number in [lo, hi]. */
export function intIn(rnd: Random, lo: number, hi: number): number {
  return lo + Math.floor(rnd() * (hi - lo + 1));
}

/** Log-uniform in [lo, hi]: as many values per decade. */
export function logUniform(rnd: Random, lo: number, hi: number): number {
  return Math.exp(Math.log(lo) + rnd() * (Math.log(hi) - Math.log(lo)));
}

/** A Poisson draw of mean `mean` (Knuth's method below 30, a rounded normal above). */
export function poisson(rnd: Random, mean: number): number {
  if (mean <= 0) return 0;
  if (mean > 30) {
    const z = Math.sqrt(-2 * Math.log(1 - rnd())) * Math.cos(2 * Math.PI * rnd());
    return Math.max(0, Math.round(mean + z * Math.sqrt(mean)));
  }
  const l = Math.exp(-mean);
  let k = 0;
  let p = 1;
  for (;;) {
    p *= rnd();
    if (p <= l) return k;
    k++;
  }
}

/** A hex string of `n` characters, like the dataset's anonymized hashes (theirs are 64). */
export function hexHash(rnd: Random, n = 64): string {
  let s = "";
  for (let i = 0; i < n; i++) s += Math.floor(rnd() * 16).toString(16);
  return s;
}
