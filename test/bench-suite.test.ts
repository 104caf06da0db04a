/**
 * `forge bench` through the real CLI: a tiny suite on the process driver as a smoke test
 * (no errors, well-formed JSON and HTML; never a time), a load at a deployed function, and
 * every bad input exiting 1 with a message and a hint.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import type { BenchReport } from "../src/bench/report.ts";
import { isCI } from "../src/config.ts";
import { cli, ROOT, startForge, tempDir, type ForgeProcess } from "./_helpers.ts";

function freePort(): number {
  const probe = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const port = probe.port;
  probe.stop(true);
  return port;
}

describe("forge bench suite (smoke, process driver)", () => {
  test("a tiny suite runs every scenario without errors and writes a well-formed JSON and HTML report", async () => {
    using dir = tempDir("forge-bench-suite-");
    const json = join(dir, "run.json");
    const html = join(dir, "run.html");
    const r = await cli(undefined, ["bench", "suite", "--driver", "process", "--requests", "60", "--concurrency", "4", "--samples", "2", "--burst", "8", "--json", json, "--report", html]);
    expect(r.stderr).not.toContain(" failed: ");
    expect(r.code).toBe(0);

    const report = (await Bun.file(json).json()) as BenchReport;
    expect(report.schema).toBe(1);
    expect(report.tool).toBe("forge-bench");
    expect(report.driver).toBe("process");
    expect(report.machine.cpus).toBeGreaterThan(0);
    const names = report.scenarios.map((s) => s.name);
    expect(names).toEqual(["docker-run", "forge-cold", "forge-cell", "warm-gateway", "warm-direct", "warm-nginx", "burst", "deploy-under-load", "forge-cell-node", "warm-gateway-node"]);
    const byName = new Map(report.scenarios.map((s) => [s.name, s]));
    expect(byName.get("docker-run")?.skipped).toContain("process");
    const nginx = byName.get("warm-nginx");
    if (Bun.which("nginx") || isCI()) expect(nginx?.skipped).toBeUndefined();
    for (const s of report.scenarios) {
      if (s.skipped) continue;
      expect({ name: s.name, error: s.error, errors: s.errors }).toEqual({ name: s.name, error: undefined, errors: 0 });
      expect(s.samples).toBeGreaterThan(0);
      expect(s.p50).toBeGreaterThan(0);
    }
    expect(byName.get("warm-gateway")?.samples).toBe(60);
    expect(byName.get("forge-cold")?.samples).toBe(2);
    expect(byName.get("forge-cell")?.samples).toBe(2);
    expect(byName.get("forge-cell-node")?.samples).toBe(2);
    expect(byName.get("warm-gateway-node")?.samples).toBe(60);
    // 8 requests at concurrency 8 per instance: one instance, never more than the burst needs
    expect(byName.get("burst")?.extra?.instances).toBe(1);
    expect(byName.get("deploy-under-load")?.extra?.["answered-by"]).toBe("v2");
    expect(report.ratios.some((x) => x.name === "cell start vs true cold")).toBe(true);
    expect(report.ratios.some((x) => x.name === "node cell start vs bun cell start")).toBe(true);

    // the table printed on stdout names every scenario
    for (const n of names) expect(r.stdout).toContain(n);

    // the HTML report: every scenario and an <svg>, as HTMLRewriter parses it
    const page = await Bun.file(html).text();
    const seen = new Set<string>();
    let svgs = 0;
    await new HTMLRewriter()
      .on("[data-scenario]", { element: (e) => void seen.add(e.getAttribute("data-scenario") ?? "") })
      .on("svg", { element: () => void svgs++ })
      .transform(new Response(page))
      .text();
    for (const n of names) expect(seen.has(n)).toBe(true);
    expect(svgs).toBeGreaterThan(0);
    expect(page.trimEnd().endsWith("</html>")).toBe(true);

    // --input re-renders a saved run; --compare prints the ratio of each figure
    const again = await cli(undefined, ["bench", "suite", "--input", json, "--compare", json, "--report", join(dir, "again.html")]);
    expect(again.code).toBe(0);
    expect(again.stdout).toContain("NEW/OLD");
    expect(again.stdout).toContain("1.00x");
  }, 60_000);
});

describe("forge bench <name> against a forge", () => {
  let forge: ForgeProcess;
  beforeAll(async () => {
    forge = await startForge();
  });
  afterAll(async () => {
    await forge?.[Symbol.asyncDispose]();
  });

  test("a load at a deployed function through its subdomain: counts in --json, no errors", async () => {
    expect((await cli(forge, ["deploy", join(ROOT, "examples/hello")])).code).toBe(0);
    const r = await cli(forge, ["bench", "hello", "-n", "300", "-c", "4", "--path", "/?name=bench", "--json"]);
    expect(r.code).toBe(0);
    const out = JSON.parse(r.stdout) as { requests: number; ok: number; connections: number; url: string; latencyMs: { p50: number; p99: number }; errors: { total: number } };
    expect(out.requests).toBe(300);
    expect(out.ok).toBe(300);
    expect(out.errors.total).toBe(0);
    expect(out.connections).toBe(4);
    expect(out.url).toBe(`http://hello.localhost:${forge.port}/?name=bench`);
    expect(out.latencyMs.p99).toBeGreaterThanOrEqual(out.latencyMs.p50);

    const table = await cli(forge, ["bench", "hello", "-d", "200ms", "-c", "2"]);
    expect(table.code).toBe(0);
    expect(table.stdout).toContain("P99.9");
    expect(table.stdout).toContain("REQ/S");
  });

  test("an unknown function: a clear error before any load, exit 1", async () => {
    const r = await cli(forge, ["bench", "nope"]);
    expect(r.code).toBe(1);
    expect(r.stdout + r.stderr).toContain("nope");
    expect(r.stdout + r.stderr).toContain("hint:");
  });
});

describe("forge bench: bad input exits 1 with a message and a hint", () => {
  const unreachable = { FORGE_URL: `http://127.0.0.1:${freePort()}`, FORGE_API_KEY: "k" };
  const cases: [string, string[], string][] = [
    ["-c 0", ["bench", "greet", "-c", "0"], "--concurrency must be a whole number"],
    ["-c abc", ["bench", "greet", "-c", "abc"], "--concurrency must be a whole number"],
    ["a malformed duration", ["bench", "greet", "-d", "10x"], "is not a duration"],
    ["-d and -n together", ["bench", "greet", "-d", "1s", "-n", "10"], "not both"],
    ["-n 0", ["bench", "greet", "-n", "0"], "--requests must be a whole number"],
    ["a malformed warm-up", ["bench", "greet", "--warmup", "soon"], "--warmup \"soon\" is not a duration"],
    ["a path without /", ["bench", "greet", "--path", "x"], "--path must start with /"],
    ["a bad method", ["bench", "greet", "--method", "GE T"], "is not an HTTP method"],
    ["a missing --data file", ["bench", "greet", "--data", "@/nonexistent/body.json"], "does not exist"],
    ["an unreachable forge", ["bench", "greet"], "cannot reach forge"],
    ["suite: an unknown driver", ["bench", "suite", "--driver", "k8s"], "--driver must be process or docker"],
    ["suite: an unknown scenario", ["bench", "suite", "--only", "warm-gateway,fastest"], "no scenario \"fastest\""],
    ["suite: --json without a file", ["bench", "suite", "--json", "--report", "x.html"], "--json takes a file name"],
    ["suite: --requests 0", ["bench", "suite", "--requests", "0"], "--requests must be a whole number"],
    ["suite: a malformed warm-up", ["bench", "suite", "--warmup", "-1s"], "--warmup \"-1s\" is not a duration"],
    ["suite: a missing --compare file", ["bench", "suite", "--compare", "/nonexistent/old.json"], "does not exist"],
    ["suite: a bad --url", ["bench", "suite", "--url", "ftp://x"], "is not an http(s) URL"],
  ];
  for (const [what, args, message] of cases) {
    test(what, async () => {
      const r = await cli(undefined, args, unreachable);
      expect(r.code).toBe(1);
      const text = r.stdout + r.stderr;
      expect(text).toContain(message);
      expect(text).toContain("hint");
    });
  }

  test("suite: --compare of a file that is not a report", async () => {
    using dir = tempDir("forge-bench-bad-");
    await Bun.write(join(dir, "x.json"), JSON.stringify({ hello: 1 }));
    await Bun.write(join(dir, "y.json"), "not json");
    for (const [file, message] of [["x.json", "not a forge bench report"], ["y.json", "is not JSON"]] as const) {
      const r = await cli(undefined, ["bench", "suite", "--input", join(dir, file)]);
      expect(r.code).toBe(1);
      expect(r.stdout + r.stderr).toContain(message);
    }
  });

  test("suite: --url of a forge that does not answer", async () => {
    const r = await cli(undefined, ["bench", "suite", "--url", unreachable.FORGE_URL, "--only", "warm-gateway"]);
    expect(r.code).toBe(1);
    expect(r.stdout + r.stderr).toContain("cannot reach forge");
  });
});
