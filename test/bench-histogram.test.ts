/** The bench histogram against distributions whose percentiles are known. */
import { describe, expect, test } from "bun:test";
import { Histogram } from "../src/bench/histogram.ts";

/** Exact percentile of sorted samples, with the same rank rule as the histogram. */
function exact(sorted: number[], p: number): number {
  const rank = Math.max(1, Math.ceil((p / 100) * sorted.length));
  return sorted[rank - 1] ?? Number.NaN;
}

/** A seeded generator, so a failure can be replayed. */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const PERCENTILES = [1, 10, 25, 50, 75, 90, 99, 99.9];

function checkAgainst(samples: number[], bits = 8): void {
  const h = new Histogram({ bits });
  for (const v of samples) h.record(v);
  const sorted = samples.map((v) => Math.round(v)).sort((a, b) => a - b);
  // A bucket is at most 1/2^bits of its value wide and the middle is reported: the
  // exact value is within half a bucket of it.
  const tolerance = 1 / 2 ** (bits + 1);
  for (const p of PERCENTILES) {
    const want = exact(sorted, p);
    const got = h.percentile(p);
    expect(Math.abs(got - want)).toBeLessThanOrEqual(Math.max(1, want * tolerance));
  }
}

describe("Histogram", () => {
  test("uniform 0..1,000,000 us: percentiles are p% of the range, within the bucket precision", () => {
    const r = rng(1);
    const samples = Array.from({ length: 200_000 }, () => r() * 1_000_000);
    checkAgainst(samples);
    const h = new Histogram();
    for (const v of samples) h.record(v);
    for (const p of [10, 50, 90, 99]) expect(Math.abs(h.percentile(p) / 10_000 - p) / p).toBeLessThan(0.02);
  });

  test("exponential with a 2 ms mean: p50 = ln 2 x mean, p99 = ln 100 x mean", () => {
    const r = rng(2);
    const mean = 2000;
    const samples = Array.from({ length: 200_000 }, () => -Math.log(1 - r()) * mean);
    checkAgainst(samples);
    const h = new Histogram();
    for (const v of samples) h.record(v);
    expect(Math.abs(h.percentile(50) - Math.LN2 * mean) / (Math.LN2 * mean)).toBeLessThan(0.02);
    expect(Math.abs(h.percentile(99) - Math.log(100) * mean) / (Math.log(100) * mean)).toBeLessThan(0.03);
    expect(Math.abs(h.mean - mean) / mean).toBeLessThan(0.02);
  });

  test("values spanning 1 us to an hour keep their relative precision, at coarse and fine bits", () => {
    const r = rng(3);
    const samples = Array.from({ length: 50_000 }, () => 10 ** (r() * 9.5));
    checkAgainst(samples, 4);
    checkAgainst(samples, 8);
    checkAgainst(samples, 11);
  });

  test("small values are exact; count, min, max and mean are exact", () => {
    const h = new Histogram();
    for (const v of [3, 1, 2, 5, 4]) h.record(v);
    expect([h.count, h.min, h.max, h.mean]).toEqual([5, 1, 5, 3]);
    expect([h.percentile(0), h.percentile(20), h.percentile(50), h.percentile(100)]).toEqual([1, 1, 3, 5]);
    h.record(7, 5);
    expect(h.count).toBe(10);
    expect(h.percentile(60)).toBe(7);
  });

  test("an empty histogram answers zeros; a value past `highest` is clamped into the last bucket", () => {
    const h = new Histogram({ highest: 1_000_000 });
    expect([h.count, h.min, h.max, h.mean, h.percentile(99)]).toEqual([0, 0, 0, 0, 0]);
    expect(h.cdf()).toEqual([]);
    h.record(5e9);
    expect(h.max).toBe(5e9);
    expect(h.percentile(50)).toBe(5e9);
  });

  test("merge adds two histograms: the same percentiles as recording everything in one", () => {
    const r = rng(4);
    const all = new Histogram();
    const a = new Histogram();
    const b = new Histogram();
    for (let i = 0; i < 20_000; i++) {
      const v = r() * 50_000;
      all.record(v);
      (i % 3 === 0 ? a : b).record(v);
    }
    a.merge(b);
    for (const p of PERCENTILES) expect(a.percentile(p)).toBe(all.percentile(p));
    expect([a.count, a.min, a.max]).toEqual([all.count, all.min, all.max]);
    expect(a.mean).toBeCloseTo(all.mean, 6);
    expect(() => a.merge(new Histogram({ bits: 5 }))).toThrow(RangeError);
  });

  test("toJSON / fromJSON keep every figure; cdf is monotonic and ends at the max", () => {
    const r = rng(5);
    const h = new Histogram();
    for (let i = 0; i < 10_000; i++) h.record(100 + r() * 10_000);
    const back = Histogram.fromJSON(JSON.parse(JSON.stringify(h.toJSON())));
    for (const p of PERCENTILES) expect(back.percentile(p)).toBe(h.percentile(p));
    expect([back.count, back.min, back.max, back.mean]).toEqual([h.count, h.min, h.max, h.mean]);
    const cdf = h.cdf(50);
    expect(cdf.length).toBeLessThanOrEqual(51);
    for (let i = 1; i < cdf.length; i++) {
      expect(cdf[i]?.us ?? 0).toBeGreaterThanOrEqual(cdf[i - 1]?.us ?? 0);
      expect(cdf[i]?.fraction ?? 0).toBeGreaterThan(cdf[i - 1]?.fraction ?? 0);
    }
    expect(cdf.at(-1)).toEqual({ us: h.max, fraction: 1 });
  });

  test("bad input: negative, NaN or infinite values and percentiles out of 0..100 are refused", () => {
    const h = new Histogram();
    expect(() => h.record(-1)).toThrow(RangeError);
    expect(() => h.record(Number.NaN)).toThrow(RangeError);
    expect(() => h.record(Number.POSITIVE_INFINITY)).toThrow(RangeError);
    expect(() => h.percentile(101)).toThrow(RangeError);
    expect(() => h.percentile(-1)).toThrow(RangeError);
    expect(() => new Histogram({ bits: 0 })).toThrow(RangeError);
  });
});
