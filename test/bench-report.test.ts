/** The suite's reports: the JSON schema, the text table, ratios, comparison, and the HTML page. */
import { describe, expect, test } from "bun:test";
import { Histogram } from "../src/bench/histogram.ts";
import { compareReports, computeRatios, formatReport, latencyFields, machineInfo, parseReport, SCHEMA_VERSION, type BenchReport, type ScenarioResult } from "../src/bench/report.ts";
import { renderHtml } from "../src/bench/report-html.ts";

function scenario(name: string, kind: ScenarioResult["kind"], center: number, rps?: number): ScenarioResult {
  const h = new Histogram();
  for (let i = 1; i <= 1000; i++) h.record(center * (0.5 + i / 1000));
  return { name, title: `the ${name} <scenario> & "friends"`, kind, ...latencyFields(h), errors: 0, ...(rps ? { rps, concurrency: 16 } : {}) };
}

function sampleReport(): BenchReport {
  const scenarios: ScenarioResult[] = [
    scenario("docker-run", "first-request", 350_000),
    scenario("forge-cold", "first-request", 25_000),
    scenario("forge-cell", "first-request", 3_000),
    scenario("warm-gateway", "load", 400, 20_000),
    scenario("warm-direct", "load", 100, 60_000),
    { name: "warm-nginx", title: "nginx", kind: "load", skipped: "nginx is not installed", samples: 0, errors: 0 },
    { ...scenario("burst", "burst", 30_000, 500), extra: { instances: 4, expected: 4 } },
    { ...scenario("deploy-under-load", "deploy", 500, 10_000), extra: { "deploy-ms": 40 } },
  ];
  return {
    schema: SCHEMA_VERSION,
    tool: "forge-bench",
    createdAt: "2026-11-23T00:00:00.000Z",
    machine: machineInfo(),
    driver: "process",
    target: "in-process",
    units: { latency: "ms", rps: "requests/s" },
    options: { requests: 5000 },
    scenarios,
    ratios: computeRatios(scenarios),
    notes: ["a <note> & more"],
  };
}

/** Element names, attributes and text, as HTMLRewriter sees them. */
async function elements(html: string): Promise<{ scenarios: string[]; svgs: number; figures: string[]; title: string }> {
  const scenarios: string[] = [];
  const figures: string[] = [];
  let svgs = 0;
  let title = "";
  await new HTMLRewriter()
    .on("[data-scenario]", { element: (e) => void scenarios.push(e.getAttribute("data-scenario") ?? "") })
    .on("figure", { element: (e) => void figures.push(e.getAttribute("data-scenario") ?? "") })
    .on("svg", { element: () => void svgs++ })
    .on("title", { text: (t) => void (title += t.text) })
    .transform(new Response(html))
    .text();
  return { scenarios, svgs, figures, title };
}

const VOID = new Set(["meta", "link", "br", "hr", "img", "input", "source", "wbr", "col", "area", "base", "embed", "track", "param"]);

/**
 * Checks that every element is closed in order, attributes are quoted, and no raw `<` or
 * `&` stands in text: a character scanner, no regular expressions. Returns the problems.
 */
function wellFormed(html: string): string[] {
  const problems: string[] = [];
  const stack: string[] = [];
  let i = 0;
  const isNameChar = (c: string): boolean => (c >= "a" && c <= "z") || (c >= "A" && c <= "Z") || (c >= "0" && c <= "9") || c === "-" || c === ":";
  while (i < html.length) {
    const c = html[i];
    if (c === "&") {
      const semi = html.indexOf(";", i);
      if (semi < 0 || semi - i > 10) problems.push(`bare & at ${i}`);
      i++;
      continue;
    }
    if (c !== "<") {
      if (c === ">") problems.push(`bare > at ${i}`);
      i++;
      continue;
    }
    if (html.startsWith("<!DOCTYPE", i) || html.startsWith("<!--", i)) {
      const end = html.startsWith("<!--", i) ? html.indexOf("-->", i) + 3 : html.indexOf(">", i) + 1;
      i = end;
      continue;
    }
    const closing = html[i + 1] === "/";
    let j = i + (closing ? 2 : 1);
    let name = "";
    while (j < html.length && isNameChar(html[j] ?? "")) name += html[j++];
    if (!name) {
      problems.push(`bare < at ${i}`);
      i++;
      continue;
    }
    // attributes: name="value" pairs until > or />
    let selfClosing = false;
    while (j < html.length && html[j] !== ">") {
      const ch = html[j];
      if (ch === '"') {
        const end = html.indexOf('"', j + 1);
        if (end < 0) {
          problems.push(`unclosed attribute in <${name}>`);
          return problems;
        }
        j = end + 1;
        continue;
      }
      if (ch === "=" && html[j + 1] !== '"') problems.push(`unquoted attribute in <${name}> at ${j}`);
      if (ch === "/" && html[j + 1] === ">") selfClosing = true;
      j++;
    }
    i = j + 1;
    const lower = name.toLowerCase();
    if (closing) {
      const open = stack.pop();
      if (open !== lower) problems.push(`</${name}> closes <${open ?? "nothing"}>`);
    } else if (!selfClosing && !VOID.has(lower)) {
      stack.push(lower);
      if (lower === "style") {
        const end = html.indexOf("</style>", i);
        i = end < 0 ? html.length : end;
      }
    }
  }
  if (stack.length) problems.push(`unclosed: ${stack.join(", ")}`);
  return problems;
}

describe("bench reports", () => {
  test("ratios: cell start vs docker run, gateway vs direct; skipped scenarios give none", () => {
    const r = sampleReport();
    const byName = new Map(r.ratios.map((x) => [x.name, x]));
    const cellVsDocker = byName.get("cell start vs docker run");
    expect(cellVsDocker?.value).toBeGreaterThan(100);
    expect(cellVsDocker?.text).toContain("faster");
    expect(byName.get("gateway vs direct to the instance (p50)")?.value).toBeGreaterThan(3);
    expect(byName.get("gateway vs direct to the instance (req/s)")?.text).toBe("33% of the throughput");
    expect([...byName.keys()].some((k) => k.includes("nginx"))).toBe(false);
  });

  test("the text table has a row a scenario, the skip reason, and the ratios", () => {
    const text = formatReport(sampleReport());
    for (const s of sampleReport().scenarios) expect(text).toContain(s.name);
    expect(text).toContain("skipped: nginx is not installed");
    expect(text).toContain("cell start vs docker run");
    expect(text).toContain("instances=4");
  });

  test("JSON: versioned, round-trips through parseReport; other files are refused", () => {
    const r = sampleReport();
    const back = parseReport(JSON.parse(JSON.stringify(r)), "run.json");
    expect(back.schema).toBe(1);
    expect(back.scenarios.map((s) => s.name)).toEqual(r.scenarios.map((s) => s.name));
    const warm = back.scenarios.find((s) => s.name === "warm-gateway");
    expect(warm?.p50).toBeGreaterThan(0);
    expect(warm?.cdf?.at(-1)?.[1]).toBe(1);
    expect(() => parseReport({ hello: 1 }, "x.json")).toThrow("not a forge bench report");
    expect(() => parseReport({ ...r, schema: 99 }, "x.json")).toThrow("schema 99");
  });

  test("compare: new/old of each figure of the scenarios both runs have", () => {
    const old = sampleReport();
    const next = sampleReport();
    next.scenarios = next.scenarios.map((s) => (s.name === "warm-gateway" ? { ...s, p50: (s.p50 ?? 0) / 2, rps: (s.rps ?? 0) * 2 } : s));
    const { rows, text } = compareReports(old, next);
    expect(rows.find((r) => r.scenario === "warm-gateway" && r.metric === "p50")?.ratio).toBe(0.5);
    expect(rows.find((r) => r.scenario === "warm-gateway" && r.metric === "rps")?.ratio).toBe(2);
    expect(rows.some((r) => r.scenario === "warm-nginx")).toBe(false);
    expect(text).toContain("NEW/OLD");
  });

  test("HTML: self-contained, well-formed, every scenario in the table, a CDF per scenario that ran, throughput bars", async () => {
    const r = sampleReport();
    const html = renderHtml(r);
    expect(html.startsWith("<!DOCTYPE html>")).toBe(true);
    expect(wellFormed(html)).toEqual([]);
    // nothing fetched from elsewhere
    expect(html.includes("<script")).toBe(false);
    expect(html.includes("src=")).toBe(false);
    expect(html.includes("https://")).toBe(false);
    const seen = await elements(html);
    expect(seen.title).toContain("forge bench");
    for (const s of r.scenarios) expect(seen.scenarios).toContain(s.name);
    const ran = r.scenarios.filter((s) => !s.skipped).map((s) => s.name);
    expect(seen.figures.sort()).toEqual([...ran].sort());
    expect(seen.svgs).toBe(ran.length + 1); // a CDF each, and the throughput bars
    // text is escaped, never markup
    expect(html).toContain("&lt;scenario&gt; &amp; &quot;friends&quot;");
    expect(html).toContain("a &lt;note&gt; &amp; more");
  });

  test("the well-formedness check itself catches broken markup", () => {
    expect(wellFormed("<div><span></div>")).not.toEqual([]);
    expect(wellFormed("<p a=b></p>")).not.toEqual([]);
    expect(wellFormed("<p>1 < 2</p>")).not.toEqual([]);
    expect(wellFormed("<p>ok &amp; <br/><img src=\"x\"/></p>")).toEqual([]);
  });
});
