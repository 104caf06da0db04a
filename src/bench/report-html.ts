/**
 * The suite's report as one self-contained HTML page: no script, no CDN, no external
 * font; a latency CDF per scenario and throughput bars as inline SVG. The markup is
 * well-formed (every element closed, attributes quoted, text escaped) so it opens in any
 * browser and parses as XML too.
 */
import type { BenchReport, ScenarioResult } from "./report.ts";

export function renderHtml(report: BenchReport): string {
  const m = report.machine;
  const ran = report.scenarios.filter((s) => !s.skipped && !s.error && s.samples > 0);
  const loads = ran.filter((s) => s.rps !== undefined && s.rps > 0);
  const body = [
    `<h1>forge bench suite</h1>`,
    `<p class="meta">${esc(report.createdAt)} · driver <b>${esc(report.driver)}</b> · ${esc(report.target)} · ${m.cpus} × ${esc(m.cpuModel)} · ${Math.round(m.mem / 1024)} GiB · ${esc(m.os)} · bun ${esc(m.bun)}</p>`,
    `<h2>Summary</h2>`,
    summaryTable(report.scenarios),
    report.ratios.length ? `<h2>Ratios</h2><ul class="ratios">${report.ratios.map((r) => `<li><b>${esc(r.name)}</b>: ${esc(r.text)}</li>`).join("")}</ul>` : "",
    loads.length ? `<h2>Throughput</h2>${throughputBars(loads)}` : "",
    `<h2>Latency distribution</h2>`,
    `<div class="grid">${ran.map((s) => cdfFigure(s)).join("")}</div>`,
    report.notes.length ? `<h2>Notes</h2><ul>${report.notes.map((n) => `<li>${esc(n)}</li>`).join("")}</ul>` : "",
    `<p class="meta">schema ${report.schema} · options ${esc(JSON.stringify(report.options))}</p>`,
  ].join("\n");
  return htmlPage(`forge bench — ${report.driver} — ${report.createdAt}`, body);
}

/** A self-contained page: the reports' stylesheet (plus `extraCss`) and `body`; `title` is escaped here. */
export function htmlPage(title: string, body: string, extraCss = ""): string {
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8"/>
<meta name="viewport" content="width=device-width, initial-scale=1"/>
<title>${esc(title)}</title>
<style>${CSS}${extraCss}</style>
</head>
<body>
${body}
</body>
</html>
`;
}

// --- internal ---

export const CSS = `
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:1100px;padding:0 1rem;color:#1d2330}
h1{margin-bottom:.2rem}h2{margin-top:2rem;border-bottom:1px solid #dde;padding-bottom:.2rem}
.meta{color:#667}
table{border-collapse:collapse;width:100%}th,td{padding:.3rem .5rem;border-bottom:1px solid #eef;text-align:right;white-space:nowrap}
th:first-child,td:first-child,td.note{text-align:left}td.note{white-space:normal;color:#556}
tr.skipped td{color:#99a}tr.failed td{color:#b00}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(330px,1fr));gap:1rem}
figure{margin:0;border:1px solid #eef;border-radius:6px;padding:.5rem}figcaption{font-weight:600;margin-bottom:.3rem}
svg text{font:11px system-ui,sans-serif;fill:#556}
.ratios li{margin:.2rem 0}
`;

export const COLORS = ["#2f6fde", "#e0702b", "#2aa876", "#c33d6b", "#7c5cd6", "#b8942a", "#3aa6c4", "#6b7280"];

function summaryTable(scenarios: ScenarioResult[]): string {
  const head = `<tr><th>scenario</th><th>samples</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th><th>req/s</th><th>errors</th><th>what</th></tr>`;
  const rows = scenarios.map((s) => {
    const cls = s.skipped ? "skipped" : s.error ? "failed" : "ran";
    if (s.skipped || s.error) {
      return `<tr class="${cls}" data-scenario="${esc(s.name)}"><td>${esc(s.name)}</td><td colspan="8">${esc(s.skipped ? `skipped: ${s.skipped}` : `failed: ${s.error ?? ""}`)}</td><td class="note">${esc(s.title)}</td></tr>`;
    }
    const cells = [s.samples, s.p50, s.p90, s.p99, s.p999, s.max].map((v, i) => `<td>${i === 0 ? String(v) : fmtMs(v)}</td>`).join("");
    const extra = Object.entries(s.extra ?? {})
      .filter(([k]) => !k.startsWith("error:"))
      .map(([k, v]) => `${k} ${v}`)
      .join(", ");
    return `<tr class="${cls}" data-scenario="${esc(s.name)}"><td>${esc(s.name)}</td>${cells}<td>${s.rps === undefined ? "–" : s.rps.toLocaleString("en-US")}</td><td>${s.errors}</td><td class="note">${esc(s.title)}${extra ? ` <span class="meta">(${esc(extra)})</span>` : ""}</td></tr>`;
  });
  return `<table><thead>${head}</thead><tbody>${rows.join("")}</tbody></table>`;
}

function throughputBars(loads: ScenarioResult[]): string {
  const width = 720;
  const label = 170;
  const barH = 22;
  const gap = 8;
  const height = loads.length * (barH + gap) + gap;
  const max = Math.max(...loads.map((s) => s.rps ?? 0), 1);
  const bars = loads.map((s, i) => {
    const y = gap + i * (barH + gap);
    const w = Math.max(1, ((s.rps ?? 0) / max) * (width - label - 150));
    return `<g data-scenario="${esc(s.name)}"><text x="${label - 8}" y="${y + barH / 2 + 4}" text-anchor="end">${esc(s.name)}</text><rect x="${label}" y="${y}" width="${w.toFixed(1)}" height="${barH}" fill="${COLORS[i % COLORS.length]}" rx="3"/><text x="${(label + w + 6).toFixed(1)}" y="${y + barH / 2 + 4}">${esc((s.rps ?? 0).toLocaleString("en-US"))} req/s${s.concurrency ? ` (c=${s.concurrency})` : ""}</text></g>`;
  });
  return `<svg xmlns="http://www.w3.org/2000/svg" width="100%" viewBox="0 0 ${width} ${height}" role="img" aria-label="requests per second by scenario">${bars.join("")}</svg>`;
}

function cdfFigure(s: ScenarioResult): string {
  const W = 330;
  const H = 200;
  const L = 36;
  const R = 10;
  const T = 10;
  const B = 30;
  const points = (s.cdf ?? []).filter(([ms]) => ms > 0);
  if (points.length === 0) {
    return `<figure data-scenario="${esc(s.name)}"><figcaption>${esc(s.name)}</figcaption><p class="meta">no latency samples</p></figure>`;
  }
  // Log scale on x: latencies of one scenario span decades (cold starts, tails).
  let lo = Math.log10(Math.min(...points.map((p) => p[0])));
  let hi = Math.log10(Math.max(...points.map((p) => p[0])));
  if (hi - lo < 0.3) {
    // A narrow spread (few samples): show a factor of two around it, not a vertical line.
    const mid = (lo + hi) / 2;
    lo = mid - 0.15;
    hi = mid + 0.15;
  }
  const x = (ms: number): number => L + ((Math.log10(ms) - lo) / (hi - lo)) * (W - L - R);
  const y = (f: number): number => T + (1 - f) * (H - T - B);
  let d = `M${x(points[0]?.[0] ?? 1).toFixed(1)},${y(0).toFixed(1)}`;
  let prevF = 0;
  for (const [ms, f] of points) {
    d += ` L${x(ms).toFixed(1)},${y(prevF).toFixed(1)} L${x(ms).toFixed(1)},${y(f).toFixed(1)}`;
    prevF = f;
  }
  const grid: string[] = [];
  for (const f of [0.5, 0.9, 0.99]) {
    grid.push(`<line x1="${L}" x2="${W - R}" y1="${y(f).toFixed(1)}" y2="${y(f).toFixed(1)}" stroke="#e3e6ef" stroke-dasharray="3 3"/><text x="${L - 4}" y="${(y(f) + 4).toFixed(1)}" text-anchor="end">p${Math.round(f * 100)}</text>`);
  }
  // Ticks at 1, 2 and 5 per decade; when the range holds fewer than two, its two ends.
  let ticks: number[] = [];
  for (let e = Math.floor(lo); e <= Math.ceil(hi); e++) {
    for (const m of [1, 2, 5]) {
      const v = m * 10 ** e;
      const lv = Math.log10(v);
      if (lv >= lo - 1e-9 && lv <= hi + 1e-9) ticks.push(v);
    }
  }
  if (ticks.length > 6) ticks = ticks.filter((v) => Math.abs(Math.log10(v) - Math.round(Math.log10(v))) < 1e-9);
  if (ticks.length < 2) ticks = [10 ** lo, 10 ** hi];
  ticks.forEach((v, i) => {
    const xv = x(v).toFixed(1);
    // The outermost labels hang inward so that neither is cut by the chart's edge.
    const anchor = ticks.length > 1 && i === 0 ? "start" : ticks.length > 1 && i === ticks.length - 1 ? "end" : "middle";
    grid.push(`<line x1="${xv}" x2="${xv}" y1="${T}" y2="${H - B}" stroke="#e3e6ef"/><text x="${xv}" y="${H - B + 14}" text-anchor="${anchor}">${esc(fmtMs(v))}</text>`);
  });
  const axes = `<line x1="${L}" x2="${W - R}" y1="${H - B}" y2="${H - B}" stroke="#99a"/><line x1="${L}" x2="${L}" y1="${T}" y2="${H - B}" stroke="#99a"/><text x="${(L + W - R) / 2}" y="${H - 4}" text-anchor="middle">latency (log scale)</text>`;
  const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="100%" viewBox="0 0 ${W} ${H}" role="img" aria-label="latency CDF of ${esc(s.name)}">${grid.join("")}${axes}<path d="${d}" fill="none" stroke="#2f6fde" stroke-width="2"/></svg>`;
  const caption = `${s.name} — p50 ${fmtMs(s.p50)}, p99 ${fmtMs(s.p99)}, max ${fmtMs(s.max)} (${s.samples} samples)`;
  return `<figure data-scenario="${esc(s.name)}"><figcaption>${esc(caption)}</figcaption>${svg}</figure>`;
}

export function fmtMs(v: number | undefined): string {
  if (v === undefined) return "–";
  if (v < 1) return `${Math.round(v * 1000)} µs`;
  if (v < 100) return `${Number(v.toFixed(2))} ms`;
  if (v < 10_000) return `${Math.round(v)} ms`;
  return `${Number((v / 1000).toFixed(1))} s`;
}

export function esc(text: string): string {
  return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;").replace(/'/g, "&#39;");
}
