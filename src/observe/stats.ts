/** Invocation statistics of a function over a window: percentiles, error and cold-start rates. */
import type { InvocationRecord } from "../store/index.ts";

export interface WindowStats {
  windowMinutes: number;
  count: number;
  p50Ms: number | null;
  p95Ms: number | null;
  p99Ms: number | null;
  /** Share of 5xx responses (and forge's own 4xx of saturation: 429). */
  errorRate: number;
  /** Share of requests that waited for a cell or a cold start. */
  coldStartRate: number;
}

export function windowStats(records: InvocationRecord[], windowMinutes: number, now = Date.now()): WindowStats {
  const since = now - windowMinutes * 60_000;
  const inWindow = records.filter((r) => r.createdAt >= since && r.kind !== "async");
  const durations = inWindow.map((r) => r.durationMs).filter((d): d is number => d !== null).sort((a, b) => a - b);
  const errors = inWindow.filter((r) => r.status === null || r.status >= 500 || r.status === 429).length;
  const cold = inWindow.filter((r) => r.start === "cell" || r.start === "cold").length;
  const n = inWindow.length;
  return {
    windowMinutes,
    count: n,
    p50Ms: percentile(durations, 0.5),
    p95Ms: percentile(durations, 0.95),
    p99Ms: percentile(durations, 0.99),
    errorRate: n ? errors / n : 0,
    coldStartRate: n ? cold / n : 0,
  };
}

/** Nearest-rank percentile of sorted values. */
export function percentile(sorted: number[], p: number): number | null {
  if (sorted.length === 0) return null;
  const rank = Math.max(1, Math.ceil(p * sorted.length));
  const v = sorted[Math.min(sorted.length, rank) - 1];
  return v === undefined ? null : Math.round(v * 1000) / 1000;
}
