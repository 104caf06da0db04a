/**
 * `forge bench trace`: the trace format read and written (the generator's files parse back to
 * the same trace), the draws and the schedule, and one small replay through the real CLI on
 * the process driver (every invocation of the trace sent once and answered; never a time).
 */
import { describe, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import {
  findDay,
  formatTrace,
  generateTrace,
  inverseCdf,
  parseTrace,
  planReplay,
  readTrace,
  seeded,
  spreadMinute,
  TraceFormatError,
  writeTrace,
  type Trace,
  type TraceReport,
} from "../src/bench/trace/index.ts";
import { cli, tempDir } from "./_helpers.ts";

const plain = (t: Trace): Trace => ({ day: t.day, functions: t.functions, durations: t.durations, memory: t.memory });
const total = (t: Trace, minutes = Infinity): number => t.functions.reduce((a, f) => a + f.perMinute.slice(0, minutes).reduce((x, y) => x + y, 0), 0);

describe("the trace format", () => {
  test("the generator's files parse back to the same trace", async () => {
    const t = plain(generateTrace({ functions: 50, minutes: 30, seed: 7 }));
    expect(parseTrace("d01", formatTrace(t))).toEqual(t);
    using dir = tempDir("forge-trace-");
    await writeTrace(dir, t);
    expect(await readTrace(dir)).toEqual(t);
  });

  test("\\r\\n line ends and blank lines are tolerated; the lowest day is read", async () => {
    const t = plain(generateTrace({ functions: 5, minutes: 3, seed: 2 }));
    const files = formatTrace(t);
    const crlf = (s: string): string => s.replace(/\n/g, "\r\n") + "\r\n\r\n";
    using dir = tempDir("forge-trace-");
    writeFileSync(join(dir, "invocations_per_function_md.anon.d03.csv"), "garbage");
    writeFileSync(join(dir, "invocations_per_function_md.anon.d02.csv"), crlf(files.invocations));
    writeFileSync(join(dir, "function_durations_percentiles.anon.d02.csv"), crlf(files.durations));
    writeFileSync(join(dir, "app_memory_percentiles.anon.d02.csv"), crlf(files.memory));
    expect(await findDay(dir)).toBe("d02");
    expect(await readTrace(dir)).toEqual({ ...t, day: "d02" });
  });

  test("a bad row is an error naming the file and the line", () => {
    const files = formatTrace(plain(generateTrace({ functions: 3, minutes: 4, seed: 3 })));
    const lines = files.invocations.split("\n");
    lines[2] = (lines[2] ?? "").replace(/,\d+$/, ",x");
    expect(() => parseTrace("d01", { invocations: lines.join("\n") })).toThrow(TraceFormatError);
    expect(() => parseTrace("d01", { invocations: lines.join("\n") })).toThrow("invocations_per_function_md.anon.d01.csv:3: 4 is not a number");
    const short = files.durations.split("\n");
    short[1] = (short[1] ?? "").split(",").slice(0, 5).join(",");
    expect(() => parseTrace("d01", { invocations: files.invocations, durations: short.join("\n") })).toThrow("function_durations_percentiles.anon.d01.csv:2: expected 14 fields");
  });

  test("a function or app without a row gets the defaults", () => {
    const files = formatTrace(plain(generateTrace({ functions: 3, minutes: 2, seed: 4 })));
    const t = parseTrace("d01", { invocations: files.invocations });
    expect(t.durations).toEqual([]);
    const plan = planReplay(t, { minuteMs: 1000 });
    expect(plan.functions.map((f) => f.memoryMb)).toEqual([64, 64, 64]);
    expect(plan.functions.every((f) => f.declaredMb === 128 && f.medianMs === 50)).toBe(true);
  });
});

describe("the generator", () => {
  test("is deterministic by seed", () => {
    expect(generateTrace({ functions: 40, minutes: 20, seed: 5 })).toEqual(generateTrace({ functions: 40, minutes: 20, seed: 5 }));
    expect(generateTrace({ functions: 40, minutes: 20, seed: 5 })).not.toEqual(generateTrace({ functions: 40, minutes: 20, seed: 6 }));
  });

  test("is skewed like the paper and keeps a replay's rate sane", () => {
    const big = generateTrace({ functions: 200, minutes: 60, seed: 1 });
    expect(total(big) / 60).toBeLessThanOrEqual(150);
    // most functions are rare: fewer invocations in the hour than minutes with none
    const perFn = big.functions.map((f) => f.perMinute.reduce((a, b) => a + b, 0)).sort((a, b) => a - b);
    expect(perFn[100]).toBeLessThan(15);
    // and the top 2 % carry most of the load
    expect(perFn.slice(-4).reduce((a, b) => a + b, 0)).toBeGreaterThan(total(big) / 2);
    const small = total(generateTrace({ functions: 20, minutes: 10, seed: 1 }));
    expect(small).toBeGreaterThan(500);
    expect(small).toBeLessThan(5000);
    for (const d of big.durations) {
      expect(d.percentiles[3]).toBeGreaterThanOrEqual(5);
      expect(d.percentiles[3]).toBeLessThanOrEqual(200);
    }
    for (const m of big.memory) {
      expect(m.percentiles[3]).toBeGreaterThanOrEqual(20);
      expect(m.percentiles[3]).toBeLessThanOrEqual(150);
    }
  });
});

describe("draws and the schedule", () => {
  test("an inverse-CDF draw stays within [min, max] and never decreases with u", () => {
    const table: [number, number][] = [[0, 3], [1, 5], [25, 20], [50, 40], [75, 60], [99, 300], [100, 450]];
    expect(inverseCdf(table, 0)).toBe(3);
    expect(inverseCdf(table, 0.5)).toBe(40);
    expect(inverseCdf(table, 1)).toBe(450);
    expect(inverseCdf(table, 0.625)).toBeCloseTo(50, 9);
    const rnd = seeded(9);
    let prev = -Infinity;
    for (let i = 0; i <= 1000; i++) {
      const v = inverseCdf(table, i / 1000);
      expect(v).toBeGreaterThanOrEqual(prev);
      prev = v;
      const r = inverseCdf(table, rnd());
      expect(r).toBeGreaterThanOrEqual(3);
      expect(r).toBeLessThanOrEqual(450);
    }
  });

  test("a minute's count spread over the minute gives exactly that count within the minute", () => {
    const rnd = seeded(3);
    for (const count of [0, 1, 2, 7, 60, 1000]) {
      const at = spreadMinute(count, 1000, rnd);
      expect(at.length).toBe(count);
      expect(at.every((t) => t >= 0 && t < 1000)).toBe(true);
      expect([...at].sort((a, b) => a - b)).toEqual(at);
    }
  });

  test("the plan holds every invocation of the chosen functions and minutes, each in its minute", () => {
    const t = generateTrace({ functions: 30, minutes: 12, seed: 11 });
    const plan = planReplay(t, { minuteMs: 500, functions: 20, minutes: 8 });
    const want = t.functions.slice(0, 20).reduce((a, f) => a + f.perMinute.slice(0, 8).reduce((x, y) => x + y, 0), 0);
    expect(plan.at.length).toBe(want);
    expect(plan.functions.length).toBe(20);
    // per function and minute, the count of the trace
    for (let i = 0; i < plan.at.length; i++) expect(plan.at[i] ?? 0).toBeGreaterThanOrEqual(i > 0 ? (plan.at[i - 1] ?? 0) : 0);
    const counts = new Map<string, number>();
    plan.at.forEach((at, i) => {
      const key = `${plan.fn[i]}:${Math.floor(at / 500)}`;
      counts.set(key, (counts.get(key) ?? 0) + 1);
    });
    t.functions.slice(0, 20).forEach((f, i) => f.perMinute.slice(0, 8).forEach((n, m) => expect(counts.get(`${i}:${m}`) ?? 0).toBe(n)));
    for (const f of plan.functions) expect(f.name).toMatch(/^t\d{4}-[0-9a-f]{6}$/);
    expect(planReplay(t, { minuteMs: 500, functions: 20, minutes: 8 })).toEqual(plan);
  });
});

describe("forge bench trace (process driver, through the CLI)", () => {
  test(
    "a 20-function, 10-minute trace at 1s a minute: every invocation sent once and answered, per policy",
    async () => {
      using dir = tempDir("forge-trace-run-");
      const gen = await cli(undefined, ["bench", "trace-gen", dir, "--functions", "20", "--minutes", "10", "--seed", "1"]);
      expect(gen.stderr + gen.stdout).toContain("wrote 20 functions");
      expect(gen.code).toBe(0);
      const invocations = total(await readTrace(dir), 10);

      const json = join(dir, "out.json");
      const html = join(dir, "out.html");
      // histogram: forge ignores a policy it does not know yet, which must not fail the replay
      const r = await cli(undefined, ["bench", "trace", dir, "--minute", "1s", "--policies", "fixed,histogram", "--keep-alive", "2m", "--json", json, "--report", html]);
      expect(r.stderr).not.toContain("failed");
      expect(r.code).toBe(0);
      const report = (await Bun.file(json).json()) as TraceReport;
      expect(report.settings).toMatchObject({ functions: 20, minutes: 10, invocations, minuteMs: 1000, keepAliveMinutes: 2, driver: "process" });
      expect(report.policies.map((p) => p.policy)).toEqual(["fixed", "histogram"]);
      for (const p of report.policies) {
        expect({ policy: p.policy, error: p.error, sent: p.sent, answered: p.answered, dropped: p.dropped, errors: p.errors }).toEqual({ policy: p.policy, error: undefined, sent: invocations, answered: invocations, dropped: 0, errors: {} });
        expect(p.shares.warm + p.shares.cell + p.shares.cold + p.shares.other).toBeCloseTo(1, 9);
        expect(p.starts.warm + p.starts.cell + p.starts.cold + p.starts.other).toBe(invocations);
        expect(p.addedMs.count).toBe(invocations);
        expect(p.addedMs.p50).toBeGreaterThan(0);
        expect(p.addedMs.p99).toBeGreaterThanOrEqual(p.addedMs.p50);
        expect(p.addedCdf.length).toBeGreaterThan(0);
        expect(p.memory.length).toBeGreaterThan(0);
      }
      // the table on stdout compares both
      expect(r.stdout).toContain("fixed");
      expect(r.stdout).toContain("histogram");
      const page = await Bun.file(html).text();
      expect(page).toContain("<svg");
      expect(page).toContain('data-policy="histogram"');
    },
    120_000,
  );
});
