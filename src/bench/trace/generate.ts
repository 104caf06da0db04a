/**
 * Synthetic traces in the dataset's format, shaped like the paper's findings (Shahrad et al.,
 * ATC'20): most functions are rare (a few invocations an hour, long idle gaps), some run on a
 * timer, some come in bursts, and a very few are popular and carry most of the load.
 *
 * The popular functions share a fixed budget of POPULAR_PER_MINUTE whatever the number of
 * functions, so a replay stays within what one machine serves: about 1-2 thousand requests for
 * 20 functions over 10 minutes, about 150 requests per trace minute for 200 functions.
 */
import { DURATION_PERCENTILES, MEMORY_PERCENTILES, type AppMemory, type FunctionDurations, type Trace, type TraceFunction } from "./format.ts";
import { hexHash, intIn, logUniform, poisson, seeded, type Random } from "./prng.ts";

export interface GenerateOptions {
  /** Functions. Default 200. */
  functions?: number;
  /** Minutes of the day. Default 60 (the dataset has 1440). */
  minutes?: number;
  /** PRNG seed: the same seed gives the same files. Default 1. */
  seed?: number;
  /** Day in the file names. Default "d01". */
  day?: string;
}

/** Invocations per trace minute shared by the popular functions. */
export const POPULAR_PER_MINUTE = 90;

export type Kind = "rare" | "timer" | "bursty" | "popular";

/** A deterministic synthetic trace. */
export function generateTrace(options: GenerateOptions = {}): Trace & { kinds: Kind[] } {
  const n = options.functions ?? 200;
  const minutes = options.minutes ?? 60;
  if (!Number.isInteger(n) || n < 1) throw new RangeError(`functions must be a whole number >= 1, got ${n}`);
  if (!Number.isInteger(minutes) || minutes < 1 || minutes > 1440) throw new RangeError(`minutes must be 1..1440, got ${minutes}`);
  const rnd = seeded(options.seed ?? 1);
  const popular = Math.max(1, Math.round(n / 100));
  const kinds: Kind[] = [];
  for (let i = 0; i < n; i++) {
    // the popular ones first, as a trace sorted by volume would have them; the rest mixed
    if (i < popular) kinds.push("popular");
    else {
      const r = rnd();
      kinds.push(r < 0.62 ? "rare" : r < 0.85 ? "timer" : "bursty");
    }
  }

  // Apps of one to three functions, owners of one to two apps.
  const functions: TraceFunction[] = [];
  const durations: FunctionDurations[] = [];
  const memory: AppMemory[] = [];
  let owner = hexHash(rnd);
  let app = "";
  let leftInApp = 0;
  for (let i = 0; i < n; i++) {
    if (leftInApp === 0) {
      if (rnd() < 0.6) owner = hexHash(rnd);
      app = hexHash(rnd);
      leftInApp = intIn(rnd, 1, 3);
      memory.push(appMemory(rnd, owner, app));
    }
    leftInApp--;
    const kind = kinds[i] ?? "rare";
    const hash = hexHash(rnd);
    const perMinute = invocations(rnd, kind, minutes, POPULAR_PER_MINUTE / popular);
    functions.push({ owner, app, hash, trigger: kind === "timer" ? "timer" : kind === "bursty" && rnd() < 0.5 ? "queue" : "http", perMinute });
    durations.push(functionDurations(rnd, owner, app, hash, perMinute.reduce((a, b) => a + b, 0)));
  }
  return { day: options.day ?? "d01", functions, durations, memory, kinds };
}

// --- internal ---

function invocations(rnd: Random, kind: Kind, minutes: number, popularRate: number): number[] {
  const out = new Array<number>(minutes).fill(0);
  switch (kind) {
    case "rare": {
      // 0.3 to 6 an hour, at random minutes: idle gaps of ten minutes to hours
      const perMinute = logUniform(rnd, 0.3, 6) / 60;
      for (let m = 0; m < minutes; m++) out[m] = poisson(rnd, perMinute);
      break;
    }
    case "timer": {
      const every = [1, 2, 5, 5, 10, 15, 30, 60][intIn(rnd, 0, 7)] ?? 5;
      const at = intIn(rnd, 0, every - 1);
      const each = rnd() < 0.8 ? 1 : intIn(rnd, 2, 4);
      for (let m = at; m < minutes; m += every) out[m] = each;
      break;
    }
    case "bursty": {
      // idle, then a burst of 1-4 minutes at 10-40 a minute, about once in 80 minutes
      const rate = logUniform(rnd, 10, 40);
      for (let m = 0; m < minutes; m++) {
        if (rnd() < 1 / 80) {
          const len = intIn(rnd, 1, 4);
          for (let k = 0; k < len && m < minutes; k++, m++) out[m] = poisson(rnd, rate);
        } else if (rnd() < 0.05) out[m] = 1;
      }
      break;
    }
    case "popular": {
      // steady with a slow swell (a diurnal pattern compressed) and noise
      const mean = popularRate * logUniform(rnd, 0.7, 1.3);
      const phase = rnd() * 2 * Math.PI;
      for (let m = 0; m < minutes; m++) out[m] = poisson(rnd, mean * (1 + 0.3 * Math.sin(phase + (2 * Math.PI * m) / 60)));
      break;
    }
  }
  return out;
}

function functionDurations(rnd: Random, owner: string, app: string, hash: string, count: number): FunctionDurations {
  // median 5-200 ms (log-uniform); the tail up to a few times the median, p99 capped near 600 ms
  const median = logUniform(rnd, 5, 200);
  const spread = logUniform(rnd, 1.5, 4);
  const p99 = Math.min(600, median * spread * 1.6);
  const at: Record<(typeof DURATION_PERCENTILES)[number], number> = {
    0: median / logUniform(rnd, 2, 5),
    1: median / logUniform(rnd, 1.5, 3),
    25: median / logUniform(rnd, 1.1, 1.5),
    50: median,
    75: median * logUniform(rnd, 1.1, 1.5),
    99: p99,
    100: p99 * logUniform(rnd, 1, 1.5),
  };
  let prev = 1;
  const percentiles = DURATION_PERCENTILES.map((p) => (prev = Math.max(prev, Math.round(at[p]))));
  const average = Math.round(((percentiles[2] ?? 0) + (percentiles[3] ?? 0) * 2 + (percentiles[4] ?? 0)) / 4 * 100) / 100;
  return { owner, app, hash, average, count, minimum: percentiles[0] ?? 1, maximum: percentiles.at(-1) ?? 1, percentiles };
}

function appMemory(rnd: Random, owner: string, app: string): AppMemory {
  const median = logUniform(rnd, 20, 150);
  const at: Record<(typeof MEMORY_PERCENTILES)[number], number> = { 1: median * 0.7, 5: median * 0.8, 25: median * 0.92, 50: median, 75: median * 1.08, 95: median * 1.2, 99: median * 1.3, 100: median * 1.4 };
  let prev = 1;
  const percentiles = MEMORY_PERCENTILES.map((p) => (prev = Math.max(prev, Math.round(at[p]))));
  return { owner, app, sampleCount: intIn(rnd, 10, 2000), average: Math.round(median * 100) / 100, percentiles };
}
