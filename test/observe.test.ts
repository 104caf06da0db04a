/**
 * Observability end to end on the process driver: function logs (past, filtered, followed,
 * capped), /metrics (valid for promtool, counters matching the requests sent) and the
 * invocation records behind `forge info`'s percentiles.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { isCI } from "../src/config.ts";
import { percentile } from "../src/observe/index.ts";
import { cli, followLogsUntil, startForge, tempDir, until, type ForgeProcess } from "./_helpers.ts";

let forge: ForgeProcess;
const dir = tempDir("forge-obs-");

beforeAll(async () => {
  forge = await startForge({ env: { FORGE_LOG_RETENTION_MB: "1", FORGE_STEM_CELLS: "1" } });
  writeFileSync(
    join(dir, "index.ts"),
    `export default { async fetch(req: Request) {
       const url = new URL(req.url);
       const n = url.searchParams.get("n") ?? "0";
       if (url.pathname === "/flood") {
         const line = "x".repeat(10_000);
         for (let i = 0; i < 10_000; i++) console.log(line); // 100 MB
         return new Response("flooded");
       }
       if (url.pathname === "/fail") return new Response("nope", { status: 500 });
       console.log("hello-log", n);
       console.error("warn-log", n);
       return Response.json({ n });
     } };`,
  );
  expect((await cli(forge, ["deploy", dir, "--name", "chatty"])).code).toBe(0);
});
afterAll(async () => {
  await forge?.[Symbol.asyncDispose]();
  dir[Symbol.dispose]();
});

describe("function logs", () => {
  test("a function's output is found with forge logs, tagged with its request id", async () => {
    const r = await forge.fn("chatty", "/?n=1");
    const id = r.headers.get("x-forge-request-id") ?? "";
    await r.text();
    const found = await until(async () => {
      const out = await cli(forge, ["logs", "chatty", "--json"]);
      const lines = out.stdout.trim().split("\n").filter(Boolean).map((l) => JSON.parse(l) as { text: string; requestId?: string; stream: string });
      return lines.filter((l) => l.requestId === id).length >= 2 ? lines : undefined;
    }, 10_000, "log lines");
    const mine = found.filter((l) => l.requestId === id);
    expect(mine.map((l) => [l.stream, l.text]).sort()).toEqual([["stderr", "warn-log 1"], ["stdout", "hello-log 1"]]);
    const byRequest = await cli(forge, ["logs", "chatty", "--request", id]);
    expect(byRequest.code).toBe(0);
    expect(byRequest.stdout).toContain("hello-log 1");
    expect(byRequest.stdout).not.toContain("hello-log 0");
  });

  test("-f shows new lines as they come and ends cleanly on Ctrl-C", async () => {
    const poke = async (): Promise<void> => void (await (await forge.fn("chatty", "/?n=followed")).text());
    expect(await followLogsUntil(forge, "chatty", poke, "hello-log followed")).toBe(0);
  });

  test("a function printing 100 MB is capped by retention, and forge keeps serving", async () => {
    const r = await forge.fn("chatty", "/flood");
    expect(await r.text()).toBe("flooded");
    const ok = await forge.fn("chatty", "/?n=after");
    expect(ok.status).toBe(200);
    // Wait until the flood has been read and written, then check the cap (1 MiB + a batch).
    await until(async () => {
      const out = await cli(forge, ["logs", "chatty", "--json", "--limit", "200"]);
      return out.stdout.includes("x".repeat(100));
    }, 30_000, "flood logged");
    const du = Bun.spawnSync(["du", "-sb", join(forge.dataDir, "logs", "chatty")]);
    const bytes = Number(new TextDecoder().decode(du.stdout).split("\t")[0]);
    expect(bytes).toBeLessThanOrEqual(1024 * 1024 + 64 * 1024);
    expect((await forge.fn("chatty", "/?n=still")).status).toBe(200);
  });
});

describe("metrics and invocation records", () => {
  test("/metrics passes promtool and its counters match the requests sent", async () => {
    await using fresh = tempDir("forge-metrics-");
    writeFileSync(join(fresh, "index.ts"), `export default (req: Request) => new URL(req.url).pathname === "/bad" ? new Response("x", { status: 503 }) : new Response("ok");`);
    const dep = await cli(forge, ["deploy", fresh, "--name", "counted"]);
    expect(dep.stderr).toBe("");
    for (let i = 0; i < 7; i++) await (await forge.fn("counted", "/")).text();
    for (let i = 0; i < 3; i++) await (await forge.fn("counted", "/bad")).text();
    const text = await until(async () => {
      const t = await (await fetch(`${forge.url}/metrics`)).text();
      return sum(t, "forge_invocations_total", 'function="counted"') === 10 ? t : undefined;
    }, 5000, "10 counted");
    expect(sum(text, "forge_invocations_total", 'function="counted",status="200"')).toBe(7);
    expect(sum(text, "forge_invocations_total", 'function="counted",status="503"')).toBe(3);
    expect(sum(text, "forge_invocation_duration_seconds_count", 'function="counted"')).toBe(10);
    expect(text).toContain("forge_stem_cells ");
    expect(text).toMatch(/forge_instances\{function="counted",state="ready"\} 1/);

    const promtool = Bun.which("promtool");
    if (!promtool) {
      if (isCI()) throw new Error("promtool is missing (Debian package prometheus); .ci/services.sh installs it");
      return;
    }
    const check = Bun.spawnSync([promtool, "check", "metrics"], { stdin: new TextEncoder().encode(text) });
    const report = new TextDecoder().decode(check.stdout) + new TextDecoder().decode(check.stderr);
    expect(report).toBe("");
    expect(check.exitCode).toBe(0);
  });

  test("records older than FORGE_RECORD_RETENTION are deleted", async () => {
    await using short = await startForge({ env: { FORGE_RECORD_RETENTION: "1s", FORGE_STEM_CELLS: "0" } });
    expect((await cli(short, ["deploy", dir, "--name", "brief"])).code).toBe(0);
    expect((await short.fn("brief", "/?n=1")).status).toBe(200);
    const records = async (): Promise<unknown[]> => ((await (await short.api("/v1/functions/brief/invocations")).json()) as { invocations: unknown[] }).invocations;
    await until(async () => ((await records()).length === 1 ? true : undefined), 5_000, "the record");
    await until(async () => ((await records()).length === 0 ? true : undefined), 10_000, "the record to be pruned");
  });

  test("the invocation records and forge info's percentiles match a known load", async () => {
    await using fresh = tempDir("forge-records-");
    writeFileSync(join(fresh, "index.ts"), `export default async (req: Request) => { const ms = Number(new URL(req.url).searchParams.get("ms")); await Bun.sleep(ms); return new Response(String(ms), { status: ms === 0 ? 500 : 200 }); };`);
    expect((await cli(forge, ["deploy", fresh, "--name", "timed"])).code).toBe(0);
    const sleeps = [0, 10, 20, 30, 40, 50, 60, 70, 80, 90];
    for (const ms of sleeps) await (await forge.fn("timed", `/?ms=${ms}`)).text();
    const info = JSON.parse((await cli(forge, ["info", "timed", "--json"])).stdout) as { stats: { last5m: { count: number; p50Ms: number; p95Ms: number; p99Ms: number; errorRate: number; coldStartRate: number } } };
    const s = info.stats.last5m;
    expect(s.count).toBe(10);
    expect(s.errorRate).toBeCloseTo(0.1, 5);
    expect(s.coldStartRate).toBe(0); // the instance that verified the deploy serves the first request warm
    const records = (await (await forge.api("/v1/functions/timed/invocations?limit=100")).json()) as { invocations: { durationMs: number; status: number; start: string }[] };
    expect(records.invocations.length).toBe(10);
    expect(records.invocations.filter((r) => r.status === 500).length).toBe(1);
    // Every duration covers the function's own sleep; the percentiles are those of the records.
    const durations = records.invocations.map((r) => r.durationMs).sort((a, b) => a - b);
    durations.forEach((d, i) => expect(d).toBeGreaterThanOrEqual(sleeps[i] ?? 0));
    expect(s.p50Ms).toBe(percentile(durations, 0.5) ?? -1);
    expect(s.p99Ms).toBe(percentile(durations, 0.99) ?? -1);
    expect(s.p50Ms).toBeGreaterThanOrEqual(40);
    const human = await cli(forge, ["info", "timed"]);
    expect(human.stdout).toContain(`last 5m: 10 requests, p50 ${s.p50Ms.toFixed(1)} ms`);
    expect(human.stdout).toContain("errors 10.0%, cold starts 0.0%");
    const onlyErrors = (await (await forge.api("/v1/functions/timed/invocations?status=500")).json()) as { invocations: unknown[] };
    expect(onlyErrors.invocations.length).toBe(1);
  });
});

function sum(text: string, metric: string, labelPart: string): number {
  let total = 0;
  for (const line of text.split("\n")) {
    if (!line.startsWith(metric + "{") || !line.includes(labelPart)) continue;
    total += Number(line.slice(line.lastIndexOf(" ") + 1));
  }
  return total;
}
