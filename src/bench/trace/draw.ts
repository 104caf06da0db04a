/** Drawing from the trace's percentile tables, and placing a minute's invocations in it. */
import type { Random } from "./prng.ts";

/**
 * The value at quantile `u` (0..1) of a distribution given as [percentile, value] pairs sorted
 * by percentile: linear between the two given percentiles around it, the first value below the
 * first percentile and the last above the last. Values out of order (the dataset has a few) are
 * taken as the running maximum, so the result never decreases with `u`.
 */
export function inverseCdf(points: readonly (readonly [number, number])[], u: number): number {
  if (points.length === 0) throw new RangeError("an empty percentile table");
  const q = Math.min(100, Math.max(0, u * 100));
  let prevP = points[0]?.[0] ?? 0;
  let prevV = points[0]?.[1] ?? 0;
  if (q <= prevP) return prevV;
  for (let i = 1; i < points.length; i++) {
    const p = points[i]?.[0] ?? prevP;
    const v = Math.max(prevV, points[i]?.[1] ?? prevV);
    if (q <= p) return p === prevP ? v : prevV + ((q - prevP) / (p - prevP)) * (v - prevV);
    prevP = p;
    prevV = v;
  }
  return prevV;
}

/**
 * Offsets (ms from the minute's start, ascending, each in [0, minuteMs)) of `count`
 * invocations spread over one minute: evenly spaced, each moved at random within its slot, so
 * a busy function is steady and a rare one lands anywhere in its minute.
 */
export function spreadMinute(count: number, minuteMs: number, rnd: Random): number[] {
  const out: number[] = [];
  const slot = minuteMs / Math.max(1, count);
  const last = minuteMs - 1e-6;
  for (let i = 0; i < count; i++) out.push(Math.min(last, (i + rnd()) * slot));
  return out;
}
