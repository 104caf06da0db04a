/**
 * A trace replay's report: the policies side by side as a text table, and as one
 * self-contained HTML page (inline SVG, no script, no external assets) in the suite's style:
 * the CDF of added latency of every policy, and memory over time of every policy.
 */
import { COLORS, esc, fmtMs, htmlPage } from "../report-html.ts";
import type { PolicyResult, TraceReport } from "./replay.ts";

/** Rows of the comparison: a label, then one cell per policy. */
export function comparisonRows(report: TraceReport): string[][] {
  const ps = report.policies;
  const row = (label: string, cell: (p: PolicyResult) => string): string[] => [label, ...ps.map((p) => (p.error && p.sent === 0 ? "failed" : cell(p)))];
  const num = (v: number | null, digits = 1): string => (v === null ? "–" : v.toFixed(digits));
  const pct = (v: number): string => `${(v * 100).toFixed(1)} %`;
  return [
    ["", ...ps.map((p) => p.policy)],
    row("sent", (p) => String(p.sent)),
    row("answered (2xx)", (p) => String(p.answered)),
    row("errors", (p) => Object.entries(p.errors).map(([k, n]) => `${k}: ${n}`).join(", ") || "0"),
    row("dropped", (p) => String(p.dropped)),
    row("warm / cell / cold", (p) => `${pct(p.shares.warm)} / ${pct(p.shares.cell)} / ${pct(p.shares.cold)}`),
    row("added p50 (ms)", (p) => num(p.addedMs.p50, 2)),
    row("added p99 (ms)", (p) => num(p.addedMs.p99, 2)),
    row("added p99.9 (ms)", (p) => num(p.addedMs.p999, 2)),
    row("memory-time instances (GiB-s)", (p) => num(p.memoryGiBs.instances, 2)),
    row("memory-time cells (GiB-s)", (p) => num(p.memoryGiBs.cells, 2)),
    row("peak counted (MB)", (p) => num(p.peakMb.counted, 0)),
    row("peak resident (MB)", (p) => num(p.peakMb.resident, 0)),
    row("start: instances / cells", (p) => `${num(p.startState.instances, 0)} / ${num(p.startState.stemCells, 0)}`),
    row("send lag p99 (ms)", (p) => num(p.sendLagMs.p99, 1)),
    row("GET /metrics p50 / max (ms)", (p) => `${num(p.scrapeMs.p50, 1)} / ${num(p.scrapeMs.max, 0)}`),
  ];
}

export function renderTraceHtml(report: TraceReport): string {
  const s = report.settings;
  const m = report.machine;
  const failed = report.policies.filter((p) => p.error);
  const body = [
    `<h1>forge bench trace</h1>`,
    `<p class="meta">${esc(report.createdAt)} · driver <b>${esc(s.driver)}</b> · ${esc(s.source)} ${esc(s.day)} · ${s.functions} functions × ${s.minutes} minutes, ${s.invocations} invocations · one trace minute = ${s.minuteMs} ms · keep-alive ${s.keepAliveMinutes} trace minutes${s.budgetMb !== null ? ` · budget ${s.budgetMb} MB` : ""} · ${m.cpus} × ${esc(m.cpuModel)} · bun ${esc(m.bun)}</p>`,
    `<h2>Policies</h2>`,
    comparisonTable(report),
    failed.length ? `<ul>${failed.map((p) => `<li class="failed"><b>${esc(p.policy)}</b> failed: ${esc(p.error ?? "")}</li>`).join("")}</ul>` : "",
    `<h2>Added latency</h2>`,
    `<figure>${cdfChart(report.policies)}</figure>`,
    `<h2>Memory over time</h2>`,
    `<div class="grid" style="grid-template-columns:repeat(auto-fill,minmax(480px,1fr))">`,
    `<figure><figcaption>counted (what the budget counts)</figcaption>${memoryChart(report, "countedMb")}</figure>`,
    `<figure><figcaption>resident (measured)</figcaption>${memoryChart(report, "residentMb")}</figure>`,
    `</div>`,
    `<h2>Notes</h2><ul>${report.notes.map((n) => `<li>${esc(n)}</li>`).join("")}</ul>`,
    `<p class="meta">schema ${report.schema} · settings ${esc(JSON.stringify(s))}</p>`,
  ].join("\n");
  return htmlPage(
    `forge bench trace — ${s.driver} — ${report.createdAt}`,
    body,
    "p.meta{overflow-wrap:anywhere}.legend span{margin-right:1rem}.legend i{display:inline-block;width:.8rem;height:.8rem;border-radius:2px;margin-right:.3rem;vertical-align:-1px}",
  );
}

// --- internal ---

function comparisonTable(report: TraceReport): string {
  const [head = [], ...rows] = comparisonRows(report);
  return `<table><thead><tr>${head.map((c) => `<th>${esc(c)}</th>`).join("")}</tr></thead><tbody>${rows.map((r) => `<tr>${r.map((c) => `<td>${esc(c)}</td>`).join("")}</tr>`).join("")}</tbody></table>`;
}

function legend(policies: PolicyResult[]): string {
  return `<p class="legend">${policies.map((p, i) => `<span data-policy="${esc(p.policy)}"><i style="background:${COLORS[i % COLORS.length]}"></i>${esc(p.policy)}</span>`).join("")}</p>`;
}

const W = 720;
const H = 260;
const L = 50;
const R = 12;
const T = 10;
const B = 32;

/** The CDFs of added latency, one line per policy, log scale on x. */
function cdfChart(policies: PolicyResult[]): string {
  const all = policies.flatMap((p) => p.addedCdf.map(([ms]) => ms)).filter((v) => v > 0);
  if (all.length === 0) return `<p class="meta">no latency samples</p>`;
  let lo = Math.log10(Math.min(...all));
  let hi = Math.log10(Math.max(...all));
  if (hi - lo < 0.3) {
    const mid = (lo + hi) / 2;
    lo = mid - 0.15;
    hi = mid + 0.15;
  }
  const x = (ms: number): number => L + ((Math.log10(Math.max(ms, 10 ** lo)) - lo) / (hi - lo)) * (W - L - R);
  const y = (f: number): number => T + (1 - f) * (H - T - B);
  const grid: string[] = [];
  for (const f of [0.5, 0.9, 0.99]) grid.push(`<line x1="${L}" x2="${W - R}" y1="${y(f).toFixed(1)}" y2="${y(f).toFixed(1)}" stroke="#e3e6ef" stroke-dasharray="3 3"/><text x="${L - 4}" y="${(y(f) + 4).toFixed(1)}" text-anchor="end">p${Math.round(f * 100)}</text>`);
  for (let e = Math.floor(lo); e <= Math.ceil(hi); e++) {
    for (const mult of [1, 2, 5]) {
      const v = mult * 10 ** e;
      const lv = Math.log10(v);
      if (lv < lo - 1e-9 || lv > hi + 1e-9) continue;
      const xv = x(v).toFixed(1);
      grid.push(`<line x1="${xv}" x2="${xv}" y1="${T}" y2="${H - B}" stroke="#e3e6ef"/><text x="${xv}" y="${H - B + 14}" text-anchor="middle">${esc(fmtMs(v))}</text>`);
    }
  }
  const paths = policies.map((p, i) => {
    const pts = p.addedCdf.filter(([ms]) => ms > 0);
    if (pts.length === 0) return "";
    let d = `M${x(pts[0]?.[0] ?? 1).toFixed(1)},${y(0).toFixed(1)}`;
    let prev = 0;
    for (const [ms, f] of pts) {
      d += ` L${x(ms).toFixed(1)},${y(prev).toFixed(1)} L${x(ms).toFixed(1)},${y(f).toFixed(1)}`;
      prev = f;
    }
    return `<path data-policy="${esc(p.policy)}" d="${d}" fill="none" stroke="${COLORS[i % COLORS.length]}" stroke-width="2"/>`;
  });
  const axes = `<line x1="${L}" x2="${W - R}" y1="${H - B}" y2="${H - B}" stroke="#99a"/><line x1="${L}" x2="${L}" y1="${T}" y2="${H - B}" stroke="#99a"/><text x="${(L + W - R) / 2}" y="${H - 4}" text-anchor="middle">added latency (log scale)</text>`;
  return `${legend(policies)}<svg xmlns="http://www.w3.org/2000/svg" width="100%" viewBox="0 0 ${W} ${H}" role="img" aria-label="CDF of added latency per policy">${grid.join("")}${axes}${paths.join("")}</svg>`;
}

/** One memory series of every policy over trace minutes. */
function memoryChart(report: TraceReport, field: "countedMb" | "residentMb"): string {
  const policies = report.policies;
  const values = policies.flatMap((p) => p.memory.map((pt) => pt[field]).filter((v): v is number => v !== null));
  if (values.length === 0) return `<p class="meta">forge reported no such metric</p>`;
  const maxMb = Math.max(...values, 1) * 1.1;
  const maxMin = Math.max(report.settings.minutes, ...policies.flatMap((p) => p.memory.map((pt) => pt.minute)), 1);
  const w = 350;
  const x = (min: number): number => L + (min / maxMin) * (w - L - R);
  const y = (v: number): number => T + (1 - v / maxMb) * (H - T - B);
  const grid: string[] = [];
  for (let k = 0; k <= 4; k++) {
    const v = (maxMb / 4) * k;
    grid.push(`<line x1="${L}" x2="${w - R}" y1="${y(v).toFixed(1)}" y2="${y(v).toFixed(1)}" stroke="#e3e6ef"/><text x="${L - 4}" y="${(y(v) + 4).toFixed(1)}" text-anchor="end">${Math.round(v)}</text>`);
  }
  for (let k = 0; k <= 4; k++) {
    const min = (maxMin / 4) * k;
    grid.push(`<text x="${x(min).toFixed(1)}" y="${H - B + 14}" text-anchor="${k === 0 ? "start" : k === 4 ? "end" : "middle"}">${Number(min.toFixed(1))}</text>`);
  }
  const paths = policies.map((p, i) => {
    const pts = p.memory.filter((pt) => pt[field] !== null);
    if (pts.length === 0) return "";
    const d = pts.map((pt, j) => `${j === 0 ? "M" : "L"}${x(pt.minute).toFixed(1)},${y(pt[field] ?? 0).toFixed(1)}`).join(" ");
    return `<path data-policy="${esc(p.policy)}" d="${d}" fill="none" stroke="${COLORS[i % COLORS.length]}" stroke-width="1.5"/>`;
  });
  const axes = `<line x1="${L}" x2="${w - R}" y1="${H - B}" y2="${H - B}" stroke="#99a"/><line x1="${L}" x2="${L}" y1="${T}" y2="${H - B}" stroke="#99a"/><text x="${(L + w - R) / 2}" y="${H - 4}" text-anchor="middle">trace minute · MB</text>`;
  return `${legend(policies)}<svg xmlns="http://www.w3.org/2000/svg" width="100%" viewBox="0 0 ${w} ${H}" role="img" aria-label="${field === "countedMb" ? "counted" : "resident"} memory over time per policy">${grid.join("")}${axes}${paths.join("")}</svg>`;
}
