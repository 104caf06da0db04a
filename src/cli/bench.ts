/**
 * `forge bench <name>`: a closed-loop load at one function through its subdomain,
 * `forge bench suite`: cold vs warm vs baselines in one run, with JSON and HTML reports, and
 * `forge bench trace <dir>` / `forge bench trace-gen <dir>`: replay (or write) an Azure
 * Functions 2019 trace, once per keep-alive policy.
 */
import { defineCommand, runCommand } from "citty";
import { mkdir, stat } from "node:fs/promises";
import { resolve } from "node:path";
import { compareReports, formatReport, formatUs, parseReport, renderHtml, runLoad, runSuite, SCENARIOS, type BenchReport, type LoadResult } from "../bench/index.ts";
import { comparisonRows, generateTrace, readTrace, renderTraceHtml, replayTrace, TraceFormatError, writeTrace, type Trace } from "../bench/trace/index.ts";
import { loadConfig, parseDuration } from "../config.ts";
import { ErrorCode, ForgeError } from "../errors.ts";
import { checkUrl } from "./_connection.ts";
import { client, connection, connectionFlags, jsonArg, output, table, ui } from "./_shared.ts";

/** Bun runs one JS thread: past this, a single generator process is the bottleneck anyway. */
const MAX_CONCURRENCY = 10_000;

const suite = defineCommand({
  meta: { name: "suite", description: "cold vs warm vs baselines (docker run, direct socket, nginx), side by side" },
  args: {
    driver: { type: "string", description: "driver of the forge the suite starts: process | docker (default process)" },
    url: { type: "string", description: "measure this running forge instead (or --target NAME; the key as for every command)" },
    report: { type: "string", description: "write a self-contained HTML report to this file" },
    json: { type: "string", description: "write the JSON report to this file (- for stdout)" },
    compare: { type: "string", description: "a JSON report of an earlier run: print the ratio of each figure" },
    input: { type: "string", description: "read a JSON report instead of running (to render or compare it)" },
    requests: { type: "string", description: "requests of each warm scenario (default 5000)" },
    concurrency: { type: "string", description: "workers of the warm scenarios (default 16)" },
    warmup: { type: "string", description: "load before each warm scenario is measured, not counted (default 2s; 0 for none)" },
    samples: { type: "string", description: "first requests per cold-start scenario (default 10)" },
    burst: { type: "string", description: "concurrent requests of the burst (default 32)" },
    only: { type: "string", description: `comma-separated scenarios: ${SCENARIOS.join(", ")}` },
  },
  async run({ args }) {
    const jsonTo = args.json === undefined ? undefined : String(args.json);
    if (jsonTo?.startsWith("-") && jsonTo !== "-") {
      throw new ForgeError(ErrorCode.BadRequest, 400, `--json takes a file name, got ${JSON.stringify(jsonTo)}`, { hint: "e.g. --json bench.json, or --json - for stdout" });
    }
    const toStdout = jsonTo === "" || jsonTo === "-";
    const compareWith = args.compare ? await readReport(String(args.compare), "--compare") : undefined;

    let report: BenchReport;
    if (args.input) {
      report = await readReport(String(args.input), "--input");
    } else {
      const driver = args.driver === undefined ? undefined : String(args.driver);
      if (driver !== undefined && driver !== "process" && driver !== "docker") {
        throw new ForgeError(ErrorCode.BadRequest, 400, `--driver must be process or docker, got ${JSON.stringify(driver)}`, { hint: "e.g. --driver process" });
      }
      const only = args.only === undefined ? undefined : String(args.only).split(",").map((s) => s.trim()).filter(Boolean);
      for (const s of only ?? []) {
        if (!(SCENARIOS as readonly string[]).includes(s)) throw new ForgeError(ErrorCode.BadRequest, 400, `--only: no scenario ${JSON.stringify(s)}`, { hint: `pick from ${SCENARIOS.join(", ")}` });
      }
      let url: string | undefined;
      let apiKey: string | undefined;
      // --url and --target are every command's flags (main.ts took them out of argv): either
      // one says to measure that forge, with the key the CLI resolves for it.
      const flags = connectionFlags();
      if (args.url !== undefined || flags.url !== undefined || flags.target !== undefined) {
        const c = connection();
        url = args.url !== undefined ? checkUrl(String(args.url), "--url") : c.url;
        apiKey = c.key;
      }
      report = await runSuite({
        ...(driver ? { driver } : {}),
        ...(url ? { url, ...(apiKey ? { apiKey } : {}) } : {}),
        ...optionalInt(args.requests, "requests", 1, 10_000_000),
        ...optionalInt(args.concurrency, "concurrency", 1, MAX_CONCURRENCY),
        ...(args.warmup === undefined ? {} : { warmupMs: warmup(String(args.warmup)) }),
        ...optionalInt(args.samples, "samples", 1, 10_000),
        ...optionalInt(args.burst, "burst", 1, MAX_CONCURRENCY),
        ...(only ? { only } : {}),
        ...(url ? {} : { config: loadConfig() }),
        logger: ui.create({ stdout: process.stderr }),
        progressTo: process.stderr,
      });
    }

    if (toStdout) process.stdout.write(JSON.stringify(report, null, 2) + "\n");
    else ui.log(formatReport(report));
    if (jsonTo && !toStdout) {
      await Bun.write(resolve(jsonTo), JSON.stringify(report, null, 2) + "\n");
      if (!toStdout) ui.success(`JSON report: ${resolve(jsonTo)}`);
    }
    if (args.report) {
      await Bun.write(resolve(String(args.report)), renderHtml(report));
      if (!toStdout) ui.success(`HTML report: ${resolve(String(args.report))}`);
    }
    if (compareWith) {
      const cmp = compareReports(compareWith, report);
      if (toStdout) process.stderr.write(cmp.text + "\n");
      else ui.log("\n" + cmp.text);
    }
    const failed = report.scenarios.filter((s) => s.error);
    if (failed.length) {
      throw new ForgeError(ErrorCode.Internal, 500, `${failed.length} scenario(s) failed: ${failed.map((s) => s.name).join(", ")}`, {
        hint: "see the messages above; the report holds each failure",
      });
    }
  },
});


const trace = defineCommand({
  meta: { name: "trace", description: "replay an Azure Functions 2019 trace against a fresh forge per keep-alive policy" },
  args: {
    dir: { type: "positional", required: true, description: "folder of the trace's CSV files (the lowest dNN day is read)" },
    minute: { type: "string", description: "real time of one trace minute, e.g. 1s (default 1m)" },
    functions: { type: "string", description: "replay the first N functions (default all)" },
    minutes: { type: "string", description: "replay the first M minutes (default all)" },
    policies: { type: "string", description: "comma-separated keep-alive policies, one forge each (default fixed)" },
    driver: { type: "string", description: "driver of the forges: process | docker (default process)" },
    budget: { type: "string", description: "memory budget of the forges, MB (FORGE_MEMORY_BUDGET_MB; default forge's)" },
    "keep-alive": { type: "string", description: "fixed keep-alive in trace time (default 10m)" },
    "stem-cells": { type: "string", description: "FORGE_STEM_CELLS of the forges, e.g. bun=2 (default forge's)" },
    "memory-scale": { type: "string", description: "multiplies each function's drawn memory (default 1)" },
    seed: { type: "string", description: "seed of the schedule and memory draws (default 1)" },
    json: { type: "string", description: "write the JSON report to this file (- for stdout)" },
    report: { type: "string", description: "write a self-contained HTML report to this file" },
  },
  async run({ args }) {
    const jsonTo = args.json === undefined ? undefined : String(args.json);
    if (jsonTo?.startsWith("-") && jsonTo !== "-") {
      throw new ForgeError(ErrorCode.BadRequest, 400, `--json takes a file name, got ${JSON.stringify(jsonTo)}`, { hint: "e.g. --json trace.json, or --json - for stdout" });
    }
    const toStdout = jsonTo === "" || jsonTo === "-";
    const dir = resolve(String(args.dir));
    const driver = String(args.driver ?? "process");
    if (driver !== "process" && driver !== "docker") throw new ForgeError(ErrorCode.BadRequest, 400, `--driver must be process or docker, got ${JSON.stringify(driver)}`, { hint: "e.g. --driver process" });
    const policies = String(args.policies ?? "fixed").split(",").map((p) => p.trim()).filter(Boolean);
    for (const p of policies) {
      if (!/^[a-z][a-z0-9-]*$/.test(p)) throw new ForgeError(ErrorCode.BadRequest, 400, `--policies: ${JSON.stringify(p)} is not a policy name`, { hint: "e.g. --policies fixed,histogram" });
    }
    const keepAliveMs = args["keep-alive"] === undefined ? 10 * 60_000 : duration(String(args["keep-alive"]), "keep-alive");
    const memoryScale = args["memory-scale"] === undefined ? 1 : Number(args["memory-scale"]);
    if (!(memoryScale > 0 && memoryScale <= 100)) throw new ForgeError(ErrorCode.BadRequest, 400, `--memory-scale must be a number above 0 (at most 100), got ${JSON.stringify(String(args["memory-scale"]))}`, { hint: "e.g. --memory-scale 0.5" });
    const stemCells = args["stem-cells"] === undefined ? undefined : String(args["stem-cells"]);
    const tr = await loadTrace(dir);
    const report = await replayTrace({
      trace: tr,
      source: dir,
      minuteMs: args.minute === undefined ? 60_000 : duration(String(args.minute), "minute"),
      ...optionalInt(args.functions, "functions", 1, 1_000_000),
      ...optionalInt(args.minutes, "minutes", 1, 1440),
      policies,
      driver,
      ...(args.budget === undefined ? {} : { budgetMb: intIn(args.budget, "budget", 64, 1 << 24, "--budget 4096") }),
      keepAliveMinutes: keepAliveMs / 60_000,
      ...(stemCells !== undefined ? { stemCells } : {}),
      memoryScale,
      ...(args.seed === undefined ? {} : { seed: intIn(args.seed, "seed", 0, 2 ** 32 - 1, "--seed 1") }),
      logger: ui.create({ stdout: process.stderr }),
    });
    if (toStdout) process.stdout.write(JSON.stringify(report, null, 2) + "\n");
    else ui.log(table(comparisonRows(report)));
    if (jsonTo && !toStdout) {
      await Bun.write(resolve(jsonTo), JSON.stringify(report, null, 2) + "\n");
      ui.success(`JSON report: ${resolve(jsonTo)}`);
    }
    if (args.report) {
      await Bun.write(resolve(String(args.report)), renderTraceHtml(report));
      if (!toStdout) ui.success(`HTML report: ${resolve(String(args.report))}`);
    }
    const failed = report.policies.filter((p) => p.error);
    if (failed.length) {
      throw new ForgeError(ErrorCode.Internal, 500, `${failed.length} policy run(s) failed: ${failed.map((p) => `${p.policy} (${p.error})`).join("; ")}`, { hint: "the report holds what was measured before each failure" });
    }
  },
});

const traceGen = defineCommand({
  meta: { name: "trace-gen", description: "write a synthetic trace in the Azure Functions 2019 format (deterministic by seed)" },
  args: {
    dir: { type: "positional", required: true, description: "folder to write the three CSV files into (created if missing)" },
    functions: { type: "string", description: "functions (default 200)" },
    minutes: { type: "string", description: "minutes (default 60; the dataset has 1440)" },
    seed: { type: "string", description: "PRNG seed (default 1)" },
  },
  async run({ args }) {
    const dir = resolve(String(args.dir));
    const t = generateTrace({
      ...optionalInt(args.functions, "functions", 1, 1_000_000),
      ...optionalInt(args.minutes, "minutes", 1, 1440),
      ...(args.seed === undefined ? {} : { seed: intIn(args.seed, "seed", 0, 2 ** 32 - 1, "--seed 1") }),
    });
    await mkdir(dir, { recursive: true });
    await writeTrace(dir, t);
    const total = t.functions.reduce((a, f) => a + f.perMinute.reduce((x, y) => x + y, 0), 0);
    const minutes = t.functions[0]?.perMinute.length ?? 0;
    ui.success(`wrote ${t.functions.length} functions × ${minutes} minutes (${total} invocations, ${(total / Math.max(1, minutes)).toFixed(1)} a minute) to ${dir}`);
  },
});

export default defineCommand({
  meta: {
    name: "bench",
    description:
      "load a function through its subdomain, or run the suite of cold vs warm vs baselines:\n" +
      "  forge bench suite [--driver process|docker] [--url URL] [--report out.html] [--json out.json|-]\n" +
      "                    [--compare old.json] [--input run.json] [--requests N] [--concurrency N] [--warmup 2s]\n" +
      `                    [--samples N] [--burst N] [--only ${SCENARIOS.slice(0, 2).join(",")},...]\n` +
      "  forge bench trace <dir> [--minute 1s] [--functions N] [--minutes M] [--policies fixed,histogram]\n" +
      "                    [--driver process|docker] [--budget MB] [--keep-alive 10m] [--stem-cells SPEC]\n" +
      "                    [--memory-scale F] [--seed S] [--json out.json|-] [--report out.html]\n" +
      "  forge bench trace-gen <dir> [--functions N] [--minutes M] [--seed S]",
  },
  args: {
    name: { type: "positional", required: true, description: "function name, or `suite`, `trace`, `trace-gen`" },
    concurrency: { type: "string", alias: ["c"], description: "workers, one kept-alive connection each (default 64)" },
    duration: { type: "string", alias: ["d"], description: "how long, e.g. 10s, 500ms, 2m (default 10s)" },
    requests: { type: "string", alias: ["n"], description: "how many requests in all (instead of -d)" },
    path: { type: "string", description: "path and query to request (default /)" },
    method: { type: "string", description: "HTTP method (default GET, POST with --data)" },
    data: { type: "string", description: "request body, or @file to read it from a file" },
    timeout: { type: "string", description: "per-request timeout (default 30s)" },
    warmup: { type: "string", description: "load this long first, not counted (JIT of the function and the gateway), e.g. 2s (default 0)" },
    ...jsonArg,
  },
  async run({ args, rawArgs }) {
    if (args.name === "suite") {
      await runCommand(suite, { rawArgs: rawArgs.slice(rawArgs.indexOf("suite") + 1) });
      return;
    }
    if (args.name === "trace" || args.name === "trace-gen") {
      const rest = rawArgs.slice(rawArgs.indexOf(args.name) + 1);
      if (args.name === "trace") await runCommand(trace, { rawArgs: rest });
      else await runCommand(traceGen, { rawArgs: rest });
      return;
    }
    const name = String(args.name);
    const concurrency = intIn(args.concurrency ?? "64", "concurrency", 1, MAX_CONCURRENCY, "-c 64");
    if (args.duration !== undefined && args.requests !== undefined) {
      throw new ForgeError(ErrorCode.BadRequest, 400, "give either -d (a duration) or -n (a number of requests), not both", { hint: "e.g. -d 10s or -n 10000" });
    }
    const durationMs = args.duration === undefined ? undefined : duration(String(args.duration), "duration");
    const requests = args.requests === undefined ? undefined : intIn(args.requests, "requests", 1, 1_000_000_000, "-n 10000");
    const timeoutMs = args.timeout === undefined ? 30_000 : duration(String(args.timeout), "timeout");
    const warmupMs = args.warmup === undefined ? 0 : warmup(String(args.warmup));
    const path = String(args.path ?? "/");
    if (!path.startsWith("/")) throw new ForgeError(ErrorCode.BadRequest, 400, `--path must start with /, got ${JSON.stringify(path)}`, { hint: "e.g. --path /hello?name=World" });
    const body = args.data === undefined ? undefined : await readData(String(args.data));
    const method = String(args.method ?? (body === undefined ? "GET" : "POST")).toUpperCase();
    if (!/^[A-Z]{1,16}$/.test(method)) throw new ForgeError(ErrorCode.BadRequest, 400, `--method ${JSON.stringify(method)} is not an HTTP method`, { hint: "e.g. --method POST" });

    // The control API first: an unknown function or an unreachable forge is a clear error,
    // not a run of 404s or connection errors.
    const api = client();
    const fn = await api.info(name);
    const host = new URL(fn.url).host;
    const target = new URL(path, api.baseUrl).href;
    if (!args.json) ui.info(`${requests !== undefined ? `${requests} requests` : `${((durationMs ?? 10_000) / 1000).toFixed(1)}s`} at ${concurrency} connections${warmupMs ? ` after a ${(warmupMs / 1000).toFixed(1)}s warm-up` : ""}: ${method} http://${host}${path}`);
    const r = await runLoad({
      url: target,
      headers: { host, ...(body !== undefined ? { "content-type": isJson(body) ? "application/json" : "text/plain; charset=utf-8" } : {}) },
      method,
      ...(body !== undefined ? { body } : {}),
      concurrency,
      ...(requests !== undefined ? { requests } : { durationMs: durationMs ?? 10_000 }),
      timeoutMs,
      warmupMs,
      progressTo: process.stderr,
    });
    output(Boolean(args.json), summary(name, `http://${host}${path}`, r), () => ui.log(formatLoad(r)));
    if (r.latency.count === 0) {
      const first = Object.values(r.errors.samples)[0];
      throw new ForgeError(ErrorCode.DriverUnavailable, 503, `no request got a response${first ? `: ${first}` : ""}`, { hint: "check that forge is up (forge list) and the function answers (forge invoke)" });
    }
  },
});

// --- internal ---

function summary(name: string, url: string, r: LoadResult): Record<string, unknown> {
  const ms = (us: number): number => Math.round(us) / 1000;
  return {
    function: name,
    url,
    concurrency: r.concurrency,
    durationMs: Math.round(r.durationMs),
    requests: r.requests,
    ok: r.ok,
    rps: Math.round(r.rps),
    latencyMs: { p50: ms(r.latency.percentile(50)), p90: ms(r.latency.percentile(90)), p99: ms(r.latency.percentile(99)), p999: ms(r.latency.percentile(99.9)), max: ms(r.latency.max), mean: ms(r.latency.mean) },
    statuses: r.statuses,
    errors: r.errors,
    connections: r.connections,
  };
}

function formatLoad(r: LoadResult): string {
  const h = r.latency;
  const lines = [
    table([
      ["P50", "P90", "P99", "P99.9", "MAX", "REQ/S", "REQUESTS", "ERRORS"],
      [formatUs(h.percentile(50)), formatUs(h.percentile(90)), formatUs(h.percentile(99)), formatUs(h.percentile(99.9)), formatUs(h.max), Math.round(r.rps).toLocaleString("en-US"), r.requests.toLocaleString("en-US"), String(r.errors.total)],
    ]),
    `${(r.durationMs / 1000).toFixed(2)}s, ${r.concurrency} workers, ${r.connections} connections opened`,
  ];
  const byStatus = Object.entries(r.errors.byStatus);
  if (byStatus.length) lines.push(`errors by status: ${byStatus.map(([s, n]) => `${s}: ${n}`).join(", ")}`);
  const byKind = Object.entries(r.errors.byKind).filter(([, n]) => n > 0);
  if (byKind.length) {
    lines.push(`errors by kind: ${byKind.map(([k, n]) => `${k}: ${n}`).join(", ")}`);
    for (const [kind, message] of Object.entries(r.errors.samples)) lines.push(`  ${kind}: ${message}`);
  }
  return lines.join("\n");
}

function intIn(v: unknown, flag: string, min: number, max: number, example: string): number {
  const text = String(v).trim();
  const n = Number(text);
  if (!/^\d+$/.test(text) || !Number.isSafeInteger(n) || n < min || n > max) {
    throw new ForgeError(ErrorCode.BadRequest, 400, `--${flag} must be a whole number from ${min} to ${max}, got ${JSON.stringify(String(v))}`, { hint: `e.g. ${example}` });
  }
  return n;
}

function optionalInt<K extends string>(v: unknown, flag: K, min: number, max: number): Partial<Record<K, number>> {
  if (v === undefined) return {};
  return { [flag]: intIn(v, flag, min, max, `--${flag} ${min === 1 ? 10 : min}`) } as Partial<Record<K, number>>;
}

function duration(text: string, flag: string): number {
  const ms = parseDuration(text);
  if (ms === undefined || ms <= 0) {
    throw new ForgeError(ErrorCode.BadRequest, 400, `--${flag} ${JSON.stringify(text)} is not a duration`, { hint: "use a number with a unit: 500ms, 10s, 2m (a bare number is milliseconds)" });
  }
  return ms;
}

/** A --warmup: a duration, or 0 for none. */
function warmup(text: string): number {
  return /^0+(?:ms|s)?$/.test(text.trim()) ? 0 : duration(text, "warmup");
}

async function readData(d: string): Promise<string> {
  if (!d.startsWith("@")) return d;
  const f = Bun.file(resolve(d.slice(1)));
  if (!(await f.exists())) throw new ForgeError(ErrorCode.BadRequest, 400, `${d.slice(1)} does not exist`, { hint: "pass --data @path/to/body.json" });
  return f.text();
}

function isJson(text: string): boolean {
  try {
    JSON.parse(text);
    return true;
  } catch {
    return false;
  }
}

/** The trace of `dir`; a missing folder or a bad file is a user error naming it. */
async function loadTrace(dir: string): Promise<Trace> {
  const st = await stat(dir).catch(() => undefined);
  if (!st?.isDirectory()) throw new ForgeError(ErrorCode.BadRequest, 400, `${dir} is not a folder`, { hint: "pass the folder of the trace's CSV files, or write one with `forge bench trace-gen DIR`" });
  try {
    return await readTrace(dir);
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    throw new ForgeError(ErrorCode.BadRequest, 400, err instanceof TraceFormatError ? `bad trace file: ${message}` : message, {
      hint: "the Azure Functions 2019 files (invocations_per_function_md.anon.d01.csv and the rest), or `forge bench trace-gen DIR`",
    });
  }
}

async function readReport(path: string, flag: string): Promise<BenchReport> {
  const f = Bun.file(resolve(path));
  if (!(await f.exists())) throw new ForgeError(ErrorCode.BadRequest, 400, `${flag}: ${path} does not exist`, { hint: "pass a file written by `forge bench suite --json FILE`" });
  let data: unknown;
  try {
    data = JSON.parse(await f.text());
  } catch {
    throw new ForgeError(ErrorCode.InvalidJson, 400, `${flag}: ${path} is not JSON`, { hint: "pass a file written by `forge bench suite --json FILE`" });
  }
  try {
    return parseReport(data, path);
  } catch (err) {
    throw new ForgeError(ErrorCode.BadRequest, 400, `${flag}: ${err instanceof Error ? err.message : String(err)}`, { hint: "pass a file written by `forge bench suite --json FILE` of this forge version" });
  }
}
