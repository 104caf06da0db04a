/**
 * The suite's report: one versioned JSON schema for machines, a text table of medians and
 * ratios for people, and the comparison of two runs. Latencies are milliseconds.
 */
import { cpus, platform, release, arch, totalmem } from "node:os";
import type { Histogram } from "./histogram.ts";
import type { LoadResult } from "./load.ts";

export const SCHEMA_VERSION = 1;

export interface MachineInfo {
  cpus: number;
  cpuModel: string;
  /** Total memory, MiB. */
  mem: number;
  os: string;
  bun: string;
}

export type ScenarioKind = "first-request" | "load" | "burst" | "deploy";

export interface ScenarioResult {
  /** Stable id: docker-run, forge-cold, forge-cell, warm-gateway, warm-direct, warm-nginx, burst, deploy-under-load. */
  name: string;
  /** What it measures, for people. */
  title: string;
  kind: ScenarioKind;
  /** Why it did not run (docker absent, nginx absent, ...); its figures are then absent. */
  skipped?: string;
  /** Why it failed; the suite exits non-zero. */
  error?: string;
  /** Latency samples. */
  samples: number;
  p50?: number;
  p90?: number;
  p99?: number;
  p999?: number;
  max?: number;
  mean?: number;
  /** Responses per second (load scenarios). */
  rps?: number;
  /** Failed requests: status >= 400 or no response. */
  errors: number;
  errorsByKind?: Record<string, number>;
  errorsByStatus?: Record<string, number>;
  /** Workers of a load scenario. */
  concurrency?: number;
  /** Scenario-specific figures (instances after a burst, deploy time, connections...). */
  extra?: Record<string, number | string>;
  /** Latency CDF: [ms, fraction] pairs. */
  cdf?: [number, number][];
}

export interface Ratio {
  /** e.g. "cell start vs docker run". */
  name: string;
  /** Scenario and figure compared, and the reference. */
  of: string;
  to: string;
  metric: "p50" | "p99" | "rps";
  /** of / to (how many times the reference is slower, or higher). */
  value: number;
  /** For people: "12.3x faster", "+85 us at p50". */
  text: string;
}

export interface BenchReport {
  schema: typeof SCHEMA_VERSION;
  tool: "forge-bench";
  createdAt: string;
  machine: MachineInfo;
  driver: string;
  /** "in-process" or the URL of the forge measured. */
  target: string;
  units: { latency: "ms"; rps: "requests/s" };
  options: Record<string, number | string | boolean>;
  scenarios: ScenarioResult[];
  ratios: Ratio[];
  notes: string[];
}

export function machineInfo(): MachineInfo {
  const list = cpus();
  return {
    cpus: list.length,
    cpuModel: list[0]?.model.trim() ?? "unknown",
    mem: Math.round(totalmem() / 1024 / 1024),
    os: `${platform()} ${release()} ${arch()}`,
    bun: Bun.version,
  };
}

const ms = (us: number): number => Math.round(us) / 1000;

/** The figures of a histogram as a scenario's fields (ms). */
export function latencyFields(h: Histogram): Pick<ScenarioResult, "samples" | "p50" | "p90" | "p99" | "p999" | "max" | "mean" | "cdf"> {
  if (h.count === 0) return { samples: 0 };
  return {
    samples: h.count,
    p50: ms(h.percentile(50)),
    p90: ms(h.percentile(90)),
    p99: ms(h.percentile(99)),
    p999: ms(h.percentile(99.9)),
    max: ms(h.max),
    mean: ms(h.mean),
    cdf: h.cdf(120).map((p) => [ms(p.us), Math.round(p.fraction * 10_000) / 10_000]),
  };
}

/** A load run as a scenario. */
export function loadScenario(name: string, title: string, r: LoadResult, extra: Record<string, number | string> = {}): ScenarioResult {
  return {
    name,
    title,
    kind: "load",
    ...latencyFields(r.latency),
    rps: Math.round(r.rps),
    errors: r.errors.total,
    errorsByKind: { ...r.errors.byKind },
    errorsByStatus: { ...r.errors.byStatus },
    concurrency: r.concurrency,
    extra: { requests: r.requests, connections: r.connections, ...extra, ...errorSamples(r) },
  };
}

function errorSamples(r: LoadResult): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [kind, message] of Object.entries(r.errors.samples)) if (message) out[`error:${kind}`] = message;
  return out;
}

/** The ratios the suite is about, from what ran. */
export function computeRatios(scenarios: ScenarioResult[]): Ratio[] {
  const by = new Map(scenarios.filter((s) => !s.skipped && !s.error && s.samples > 0).map((s) => [s.name, s]));
  const out: Ratio[] = [];
  const faster = (name: string, of: string, to: string): void => {
    const a = by.get(of)?.p50;
    const b = by.get(to)?.p50;
    if (a === undefined || b === undefined || a <= 0) return;
    const value = b / a;
    out.push({ name, of, to, metric: "p50", value: round(value), text: value >= 1 ? `${fmtX(value)} faster` : `${fmtX(1 / value)} slower` });
  };
  const overhead = (name: string, of: string, to: string): void => {
    const a = by.get(of);
    const b = by.get(to);
    if (a?.p50 === undefined || b?.p50 === undefined || b.p50 <= 0) return;
    const diffUs = Math.round((a.p50 - b.p50) * 1000);
    out.push({ name: `${name} (p50)`, of, to, metric: "p50", value: round(a.p50 / b.p50), text: `${fmtX(a.p50 / b.p50)} the latency (${diffUs >= 0 ? "+" : ""}${diffUs} us)` });
    if (a.rps && b.rps) out.push({ name: `${name} (req/s)`, of, to, metric: "rps", value: round(a.rps / b.rps), text: `${Math.round((a.rps / b.rps) * 100)}% of the throughput` });
  };
  faster("cell start vs docker run", "forge-cell", "docker-run");
  faster("true cold vs docker run", "forge-cold", "docker-run");
  faster("cell start vs true cold", "forge-cell", "forge-cold");
  faster("node cell start vs bun cell start", "forge-cell-node", "forge-cell");
  faster("node cell start vs true cold", "forge-cell-node", "forge-cold");
  overhead("node vs bun through the gateway", "warm-gateway-node", "warm-gateway");
  overhead("gateway vs direct to the instance", "warm-gateway", "warm-direct");
  overhead("gateway vs nginx", "warm-gateway", "warm-nginx");
  overhead("nginx vs direct to the instance", "warm-nginx", "warm-direct");
  return out;
}

/** The table people read: one row a scenario, then the ratios and notes. */
export function formatReport(report: BenchReport): string {
  const rows: string[][] = [["SCENARIO", "N", "P50", "P90", "P99", "P99.9", "MAX", "REQ/S", "ERRORS", "NOTE"]];
  for (const s of report.scenarios) {
    if (s.skipped || s.error) {
      rows.push([s.name, "-", "-", "-", "-", "-", "-", "-", "-", s.skipped ? `skipped: ${s.skipped}` : `FAILED: ${s.error}`]);
      continue;
    }
    rows.push([
      s.name,
      String(s.samples),
      fmtMs(s.p50),
      fmtMs(s.p90),
      fmtMs(s.p99),
      fmtMs(s.p999),
      fmtMs(s.max),
      s.rps === undefined ? "-" : s.rps.toLocaleString("en-US"),
      String(s.errors),
      noteOf(s),
    ]);
  }
  const m = report.machine;
  const lines = [
    `forge bench suite — driver ${report.driver}, ${report.target}; ${m.cpus} x ${m.cpuModel}, ${Math.round(m.mem / 1024)} GiB, ${m.os}, bun ${m.bun}`,
    "",
    table(rows),
  ];
  if (report.ratios.length) {
    lines.push("", table([["RATIO", "VALUE"], ...report.ratios.map((r) => [r.name, r.text])]));
  }
  for (const n of report.notes) lines.push(`note: ${n}`);
  return lines.join("\n");
}

/** Figures compared between two runs: new / old for each scenario both have. */
export function compareReports(older: BenchReport, newer: BenchReport): { rows: { scenario: string; metric: string; old: number; new: number; ratio: number }[]; text: string } {
  const metrics = ["p50", "p90", "p99", "max", "rps", "errors"] as const;
  const old = new Map(older.scenarios.map((s) => [s.name, s]));
  const rows: { scenario: string; metric: string; old: number; new: number; ratio: number }[] = [];
  for (const s of newer.scenarios) {
    const o = old.get(s.name);
    if (!o || s.skipped || o.skipped || s.error || o.error) continue;
    for (const metric of metrics) {
      const a = o[metric];
      const b = s[metric];
      if (a === undefined || b === undefined) continue;
      rows.push({ scenario: s.name, metric, old: a, new: b, ratio: a === 0 ? (b === 0 ? 1 : Number.POSITIVE_INFINITY) : round(b / a) });
    }
  }
  const text = table([
    ["SCENARIO", "FIGURE", "OLD", "NEW", "NEW/OLD"],
    ...rows.map((r) => {
      const unit = r.metric === "rps" || r.metric === "errors" ? "" : " ms";
      return [r.scenario, r.metric, `${r.old}${unit}`, `${r.new}${unit}`, Number.isFinite(r.ratio) ? `${r.ratio.toFixed(2)}x` : "new"];
    }),
  ]);
  return { rows, text: `comparing ${older.createdAt} (${older.driver}) -> ${newer.createdAt} (${newer.driver})\n${text}` };
}

/** Checks that a parsed file is a report this version reads; returns it typed. */
export function parseReport(data: unknown, source: string): BenchReport {
  const r = data as Partial<BenchReport> | null;
  if (!r || typeof r !== "object" || r.tool !== "forge-bench" || !Array.isArray(r.scenarios)) {
    throw new TypeError(`${source} is not a forge bench report (expected the JSON of \`forge bench suite --json\`)`);
  }
  if (r.schema !== SCHEMA_VERSION) throw new TypeError(`${source} has report schema ${String(r.schema)}; this forge reads schema ${SCHEMA_VERSION}`);
  return r as BenchReport;
}

// --- internal ---

function noteOf(s: ScenarioResult): string {
  const e = s.extra ?? {};
  const parts: string[] = [];
  if (s.concurrency !== undefined) parts.push(`c=${s.concurrency}`);
  for (const [k, v] of Object.entries(e)) {
    if (k.startsWith("error:") || k === "requests" || k === "connections") continue;
    parts.push(`${k}=${v}`);
  }
  return parts.join(" ");
}

function fmtMs(v: number | undefined): string {
  if (v === undefined) return "-";
  if (v < 1) return `${Math.round(v * 1000)}us`;
  if (v < 100) return `${v.toFixed(2)}ms`;
  return `${Math.round(v)}ms`;
}

function fmtX(v: number): string {
  return v >= 10 ? `${Math.round(v)}x` : `${v.toFixed(1)}x`;
}

function round(v: number): number {
  return Math.round(v * 1000) / 1000;
}

function table(rows: string[][]): string {
  const widths: number[] = [];
  for (const r of rows) r.forEach((c, i) => (widths[i] = Math.max(widths[i] ?? 0, c.length)));
  return rows.map((r) => r.map((c, i) => c.padEnd(widths[i] ?? 0)).join("  ").trimEnd()).join("\n");
}
