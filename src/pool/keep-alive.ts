/**
 * Keep-alive policies decide, per function, how long after a request an instance is kept
 * loaded, and whether it is unloaded at once and brought back ahead of the next request.
 *
 * - fixed: every instance is kept `ttl` after its last request (the default).
 * - histogram: the hybrid histogram policy of "Serverless in the Wild" (Shahrad et al.,
 *   USENIX ATC'20). Per function, a histogram of idle times (the time from the end of one
 *   burst of requests to the start of the next), in one-minute bins over four hours. When it
 *   is representative, the instance is unloaded after a request and one is brought back
 *   (from a stem cell) at the 5th percentile of the idle time, minus a 10% margin (the
 *   pre-warm window), and kept until the 99th percentile plus 10% (the keep-alive window).
 *   When the 5th percentile falls in the first bin, nothing is unloaded: the instance is kept
 *   until the 99th percentile. When it is not representative (too few idle times, idle times
 *   spread evenly over the range, or longer than the range), the fixed keep-alive applies.
 *
 * Times are in "policy minutes": one minute of wall time in production; `forge bench trace`
 * compresses time (FORGE_POLICY_MINUTE=1s plays a trace minute in a second), and the bins,
 * the range and the fixed TTL scale with it.
 */

/** What a function's instances get after a request. */
export interface KeepAliveWindows {
  /**
   * Idle time after which an instance is brought back, ms from the end of the last request;
   * 0: the instance is not unloaded at all, only kept until keepAliveMs.
   */
  prewarmMs: number;
  /** Idle time after which instances are unloaded (down to minWarm), ms from the end of the last request. */
  keepAliveMs: number;
  /** Where the windows come from: the function's histogram, or the fixed TTL it falls back to. */
  source: "histogram" | "fixed";
}

/** What forge info shows of a function's keep-alive. */
export interface KeepAliveInfo extends KeepAliveWindows {
  policy: string;
  /** Idle times observed (histogram policy). */
  samples?: number;
  /** Coefficient of variation of the bin counts (histogram policy; representative at >= 2). */
  cv?: number;
  /** Why the fixed TTL applies, when it does (histogram policy). */
  fallback?: string;
}

export interface KeepAlivePolicy {
  readonly name: string;
  /** The function's windows now. */
  windows(fn: string): KeepAliveWindows;
  /** An idle time of a function ended (a request came after `idleMs` without any). */
  observeIdle(fn: string, idleMs: number): void;
  /** The function was deleted: its history goes. */
  forget(fn: string): void;
  describe(fn: string): KeepAliveInfo;
}

export function fixedKeepAlive(ms: number): KeepAlivePolicy {
  const windows: KeepAliveWindows = { prewarmMs: 0, keepAliveMs: ms, source: "fixed" };
  return {
    name: "fixed",
    windows: () => windows,
    observeIdle() {},
    forget() {},
    describe: () => ({ policy: "fixed", ...windows }),
  };
}

export interface HistogramOptions {
  /** The fixed TTL used while a histogram is not representative, ms. */
  fallbackMs: number;
  /** Width of a bin, ms: one (policy) minute. Default 60 000. */
  binMs?: number;
  /** Bins: the range of the histogram. Default 240 (four hours of one-minute bins). */
  bins?: number;
  /** Idle times needed before the histogram is trusted. Default 10. */
  minSamples?: number;
  /** Coefficient of variation of the bin counts needed to trust it. Default 2 (the paper's). */
  minCv?: number;
  /** Head percentile: the pre-warm window. Default 5. */
  headPercentile?: number;
  /** Tail percentile: the end of the keep-alive window. Default 99. */
  tailPercentile?: number;
  /** Margin taken off the head and added to the tail. Default 0.1. */
  margin?: number;
}

/** One function's idle-time histogram: counts per bin, and the idle times past the range. */
class IdleHistogram {
  readonly counts: Uint32Array;
  outOfBounds = 0;
  samples = 0;

  constructor(bins: number) {
    this.counts = new Uint32Array(bins);
  }

  add(bin: number): void {
    this.samples++;
    if (bin >= this.counts.length) this.outOfBounds++;
    else this.counts[bin] = (this.counts[bin] ?? 0) + 1;
  }

  /** Coefficient of variation of the bin counts (population standard deviation over mean). */
  cv(): number {
    const n = this.counts.length;
    let sum = 0;
    for (const c of this.counts) sum += c;
    if (sum === 0) return 0;
    const mean = sum / n;
    let sq = 0;
    for (const c of this.counts) sq += (c - mean) ** 2;
    return Math.sqrt(sq / n) / mean;
  }

  /** The bin holding the p-th percentile of all idle times (out-of-bounds ones counted past the last bin). */
  percentileBin(p: number): number {
    const rank = Math.max(1, Math.ceil((p / 100) * this.samples));
    let cumulative = 0;
    for (let b = 0; b < this.counts.length; b++) {
      cumulative += this.counts[b] ?? 0;
      if (cumulative >= rank) return b;
    }
    return this.counts.length; // past the range
  }
}

export function histogramKeepAlive(options: HistogramOptions): KeepAlivePolicy {
  const binMs = options.binMs ?? 60_000;
  const bins = options.bins ?? 240;
  const minSamples = options.minSamples ?? 10;
  const minCv = options.minCv ?? 2;
  const head = options.headPercentile ?? 5;
  const tail = options.tailPercentile ?? 99;
  const marginPct = Math.round((options.margin ?? 0.1) * 100);
  const fixed: KeepAliveWindows = { prewarmMs: 0, keepAliveMs: options.fallbackMs, source: "fixed" };
  const histograms = new Map<string, IdleHistogram>();
  /** Windows are computed once per new idle time, not once per sweep. */
  const cached = new Map<string, KeepAliveInfo>();

  function compute(fn: string): KeepAliveInfo {
    const h = histograms.get(fn);
    const base = { policy: "histogram", samples: h?.samples ?? 0 };
    if (!h || h.samples < minSamples) return { ...base, ...fixed, fallback: `${h?.samples ?? 0} idle times seen, ${minSamples} needed` };
    const cv = Math.round(h.cv() * 100) / 100;
    const tailBin = h.percentileBin(tail);
    if (tailBin >= bins) return { ...base, cv, ...fixed, fallback: `idle times longer than the histogram's range (${bins} minutes)` };
    if (cv < minCv) return { ...base, cv, ...fixed, fallback: `idle times spread evenly (cv ${cv} < ${minCv})` };
    const headBin = h.percentileBin(head);
    return {
      ...base,
      cv,
      // In whole percent, so the windows are exact (no 2046000.0000000002 ms).
      prewarmMs: Math.floor((headBin * binMs * (100 - marginPct)) / 100),
      keepAliveMs: Math.ceil(((tailBin + 1) * binMs * (100 + marginPct)) / 100),
      source: "histogram",
    };
  }

  function info(fn: string): KeepAliveInfo {
    let i = cached.get(fn);
    if (!i) cached.set(fn, (i = compute(fn)));
    return i;
  }

  return {
    name: "histogram",
    windows(fn) {
      const { prewarmMs, keepAliveMs, source } = info(fn);
      return { prewarmMs, keepAliveMs, source };
    },
    observeIdle(fn, idleMs) {
      let h = histograms.get(fn);
      if (!h) histograms.set(fn, (h = new IdleHistogram(bins)));
      h.add(Math.floor(Math.max(0, idleMs) / binMs));
      cached.delete(fn);
    },
    forget(fn) {
      histograms.delete(fn);
      cached.delete(fn);
    },
    describe: info,
  };
}
