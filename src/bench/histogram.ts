/**
 * A latency histogram with HDR-style log-linear buckets: values below 2^bits are counted
 * exactly, and every power of two above is split into 2^bits equal buckets, so a bucket is
 * never wider than 1/2^bits of its value (0.4 % at the default 8 bits) whatever the range.
 * Memory is fixed (a few thousand counters) however many samples are recorded, and two
 * histograms of the same shape merge by adding counters.
 *
 * Values are whole microseconds; fractions are rounded. Percentiles report the middle of
 * the bucket holding the rank, clamped to the exact min and max seen.
 */

export interface HistogramOptions {
  /** Sub-bucket bits: 2^bits buckets per power of two. Default 8 (relative error <= 0.2 %). */
  bits?: number;
  /** Largest value kept apart, in microseconds; larger ones share the last bucket. Default 2^36 (~19 h). */
  highest?: number;
}

/** One point of a cumulative distribution: `fraction` of the samples are <= `us`. */
export interface CdfPoint {
  us: number;
  fraction: number;
}

/** What `toJSON()` gives: the shape, the totals and the non-empty buckets as [index, count]. */
export interface HistogramData {
  bits: number;
  highest: number;
  count: number;
  sum: number;
  min: number;
  max: number;
  buckets: [number, number][];
}

export class Histogram {
  readonly bits: number;
  readonly highest: number;
  private readonly sub: number;
  private readonly counts: Float64Array;
  private total = 0;
  private sum = 0;
  private lo = Number.POSITIVE_INFINITY;
  private hi = 0;

  constructor(options: HistogramOptions = {}) {
    this.bits = options.bits ?? 8;
    this.highest = options.highest ?? 2 ** 36;
    if (!Number.isInteger(this.bits) || this.bits < 1 || this.bits > 16) throw new RangeError(`histogram bits must be 1..16, got ${this.bits}`);
    if (!(this.highest >= 2 ** (this.bits + 1))) throw new RangeError(`histogram highest must be at least ${2 ** (this.bits + 1)}`);
    this.sub = 2 ** this.bits;
    this.counts = new Float64Array(this.indexOf(Math.floor(this.highest)) + 1);
  }

  /** Records one value (microseconds), `times` times. Negative and non-finite values are refused. */
  record(us: number, times = 1): void {
    if (!Number.isFinite(us) || us < 0) throw new RangeError(`cannot record ${us} in a latency histogram`);
    const v = Math.round(us);
    const i = Math.min(this.indexOf(Math.min(v, this.highest)), this.counts.length - 1);
    this.counts[i] = (this.counts[i] ?? 0) + times;
    this.total += times;
    this.sum += us * times;
    if (us < this.lo) this.lo = us;
    if (us > this.hi) this.hi = us;
  }

  get count(): number {
    return this.total;
  }
  get min(): number {
    return this.total === 0 ? 0 : this.lo;
  }
  get max(): number {
    return this.hi;
  }
  get mean(): number {
    return this.total === 0 ? 0 : this.sum / this.total;
  }

  /**
   * The value at percentile `p` (0..100): the smallest bucket holding at least p % of the
   * samples, reported as its middle. 0 with no samples.
   */
  percentile(p: number): number {
    if (!(p >= 0 && p <= 100)) throw new RangeError(`percentile must be within 0..100, got ${p}`);
    if (this.total === 0) return 0;
    if (p === 0) return this.min;
    if (p === 100) return this.max;
    const rank = Math.max(1, Math.ceil((p / 100) * this.total));
    let seen = 0;
    for (let i = 0; i < this.counts.length; i++) {
      seen += this.counts[i] ?? 0;
      if (seen >= rank) return this.clamp(this.middleOf(i));
    }
    return this.max;
  }

  /** Adds another histogram of the same shape to this one. */
  merge(other: Histogram): this {
    if (other.bits !== this.bits || other.counts.length !== this.counts.length) {
      throw new RangeError("cannot merge histograms of different shapes");
    }
    for (let i = 0; i < other.counts.length; i++) this.counts[i] = (this.counts[i] ?? 0) + (other.counts[i] ?? 0);
    this.total += other.total;
    this.sum += other.sum;
    if (other.total > 0) {
      this.lo = Math.min(this.lo, other.lo);
      this.hi = Math.max(this.hi, other.hi);
    }
    return this;
  }

  /**
   * The cumulative distribution, at most `maxPoints` points (the last is always the max):
   * enough to draw a CDF without keeping samples.
   */
  cdf(maxPoints = 200): CdfPoint[] {
    if (this.total === 0) return [];
    const out: CdfPoint[] = [];
    let seen = 0;
    const step = 1 / Math.max(1, maxPoints - 1);
    let next = 0;
    for (let i = 0; i < this.counts.length; i++) {
      const c = this.counts[i] ?? 0;
      if (c === 0) continue;
      seen += c;
      const fraction = seen / this.total;
      if (fraction >= next || seen === this.total) {
        out.push({ us: this.clamp(this.upperOf(i)), fraction });
        next = fraction + step;
      }
    }
    const last = out.at(-1);
    if (last && last.us !== this.max) out.push({ us: this.max, fraction: 1 });
    return out;
  }

  /** A plain-data copy (non-empty buckets only), to send between threads or store. */
  toJSON(): HistogramData {
    const buckets: [number, number][] = [];
    for (let i = 0; i < this.counts.length; i++) {
      const c = this.counts[i] ?? 0;
      if (c > 0) buckets.push([i, c]);
    }
    return { bits: this.bits, highest: this.highest, count: this.total, sum: this.sum, min: this.min, max: this.max, buckets };
  }

  /** The histogram `toJSON()` described. */
  static fromJSON(data: HistogramData): Histogram {
    const h = new Histogram({ bits: data.bits, highest: data.highest });
    for (const [i, c] of data.buckets) {
      if (!Number.isInteger(i) || i < 0 || i >= h.counts.length) throw new RangeError(`bucket ${i} is outside this histogram`);
      h.counts[i] = c;
    }
    h.total = data.count;
    h.sum = data.sum;
    h.lo = data.count > 0 ? data.min : Number.POSITIVE_INFINITY;
    h.hi = data.max;
    return h;
  }

  /** Empties the histogram. */
  reset(): void {
    this.counts.fill(0);
    this.total = 0;
    this.sum = 0;
    this.lo = Number.POSITIVE_INFINITY;
    this.hi = 0;
  }

  // --- internal ---

  /** Bucket index of a whole value: exact below 2^bits, then 2^bits buckets per power of two. */
  private indexOf(v: number): number {
    if (v < this.sub) return v;
    const octave = Math.floor(Math.log2(v)) - this.bits;
    // log2 of values just below a power of two can round up: correct by one if needed.
    const o = v >= 2 ** (octave + this.bits + 1) ? octave + 1 : v < 2 ** (octave + this.bits) ? octave - 1 : octave;
    return o * this.sub + Math.floor(v / 2 ** o);
  }

  private lowerOf(i: number): number {
    if (i < 2 * this.sub) return i;
    const o = Math.floor(i / this.sub) - 1;
    return (i - o * this.sub) * 2 ** o;
  }

  private widthOf(i: number): number {
    return i < 2 * this.sub ? 1 : 2 ** (Math.floor(i / this.sub) - 1);
  }

  private middleOf(i: number): number {
    const w = this.widthOf(i);
    return w === 1 ? this.lowerOf(i) : this.lowerOf(i) + (w - 1) / 2;
  }

  private upperOf(i: number): number {
    return this.lowerOf(i) + this.widthOf(i) - 1;
  }

  private clamp(v: number): number {
    return Math.min(this.max, Math.max(this.min, v));
  }
}
