/**
 * `forge bench trace`: replays a trace against a forge it starts itself, once per keep-alive
 * policy, each on a fresh forge (child process, temp data dir, port 0):
 *
 *   1. start forge with the policy, the trace minute, the keep-alive scaled to it, the budget
 *   2. deploy one function per trace function (the same archive, told apart by env), 4 at once
 *   3. wait until the deploys' instances are retired (keep-alive up to a minute) and the pool
 *      is quiet (its instances and cells unchanged for a while)
 *   4. send every invocation at its time, open-loop, at most `maxInFlight` at once (the rest
 *      are counted as dropped); sample memory from /metrics meanwhile
 *   5. wait for the last answers, read the memory-time counters, stop forge, remove its data
 *
 * The schedule (which function, when) and each function's memory come from the seeded PRNG,
 * so every policy replays exactly the same requests.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createConsola, type ConsolaInstance } from "consola";
import { packFiles } from "../../build/index.ts";
import { ForgeClient } from "../../cli/client.ts";
import { startForgeChild } from "../_forge-process.ts";
import { Histogram } from "../histogram.ts";
import { machineInfo, type MachineInfo } from "../report.ts";
import { declaredMemoryMb, TRACE_FUNCTION_SOURCE } from "./_function.ts";
import { memorySample, scrape, type MemorySample } from "./_metrics.ts";
import { inverseCdf, spreadMinute } from "./draw.ts";
import { durationsOf, memoryOf, type Trace } from "./format.ts";
import { seeded } from "./prng.ts";

export const START_KINDS = ["warm", "cell", "cold", "other"] as const;
export type StartKind = (typeof START_KINDS)[number];

export interface ReplayOptions {
  trace: Trace;
  /** Where the trace was read from (said in the report). */
  source?: string;
  /** Real time of one trace minute, ms. Default 60000 (real time). */
  minuteMs?: number;
  /** Replay the first N functions. Default all. */
  functions?: number;
  /** Replay the first M minutes. Default all. */
  minutes?: number;
  /** Keep-alive policies, one forge each. Default ["fixed"]. */
  policies?: string[];
  /** Driver of the forges. Default process. */
  driver?: "process" | "docker";
  /** FORGE_MEMORY_BUDGET_MB of the forges. Default forge's. */
  budgetMb?: number;
  /** Fixed keep-alive, in trace minutes. Default 10. */
  keepAliveMinutes?: number;
  /** FORGE_STEM_CELLS of the forges. Default forge's. */
  stemCells?: string;
  /** Multiplies each function's drawn memory. Default 1. */
  memoryScale?: number;
  /** Seed of the schedule and the memory draws. Default 1. */
  seed?: number;
  /** Requests in flight at most; past it a request is dropped (counted). Default 512. */
  maxInFlight?: number;
  /** Interval of the memory samples, ms. Default a tenth of a trace minute, within 100..5000. */
  sampleEveryMs?: number;
  /** Per-request timeout, ms. Default 60000. */
  timeoutMs?: number;
  /** Where the replay says what it does. Default a consola on stderr. */
  logger?: ConsolaInstance;
}

export interface ReplayFunction {
  name: string;
  hash: string;
  invocations: number;
  /** Memory the function allocates, MB (drawn from its app's percentiles, times --memory-scale). */
  memoryMb: number;
  /** memoryMb it is deployed with. */
  declaredMb: number;
  /** Median run time of its table, ms. */
  medianMs: number;
}

export interface MemoryPoint {
  /** Trace minutes since the replay began. */
  minute: number;
  countedMb: number | null;
  residentMb: number | null;
}

export interface LatencySummary {
  count: number;
  p50: number;
  p99: number;
  p999: number;
  max: number;
  mean: number;
}

export interface PolicyResult {
  policy: string;
  /** Why the policy's run failed (then the figures are what was measured before). */
  error?: string;
  /** Instances and stem cells when the replay began (after deploy, once the pool was quiet). */
  startState: { instances: number | null; stemCells: number | null };
  sent: number;
  /** 2xx answers. */
  answered: number;
  /** Not sent: `maxInFlight` requests were already in flight. */
  dropped: number;
  /** Non-2xx statuses and failures ("timeout", "connection") with their counts. */
  errors: Record<string, number>;
  /** Start kinds (x-forge-start) of the answered requests, and their shares (summing to 1). */
  starts: Record<StartKind, number>;
  shares: Record<StartKind, number>;
  /** End-to-end latency less the function's own run time (x-run-ms), ms. */
  addedMs: LatencySummary;
  addedByStart: Record<StartKind, LatencySummary>;
  /** The CDF of added latency: [ms, fraction] pairs. */
  addedCdf: [number, number][];
  /** How late requests were sent against their schedule, ms (the generator's own lag). */
  sendLagMs: { p99: number; max: number };
  /** How long a GET /metrics took, ms (a slow one says forge's event loop is busy). */
  scrapeMs: { p50: number; max: number };
  /** GiB-seconds (real time) over the replay: null where forge has no such metric. */
  memoryGiBs: { instances: number | null; cells: number | null; total: number | null };
  peakMb: { counted: number | null; resident: number | null };
  memory: MemoryPoint[];
  /** Real time of the replay, ms. */
  wallMs: number;
}

export interface TraceReport {
  tool: "forge-bench-trace";
  schema: 1;
  createdAt: string;
  machine: MachineInfo;
  settings: {
    source: string;
    day: string;
    functions: number;
    minutes: number;
    invocations: number;
    minuteMs: number;
    keepAliveMinutes: number;
    driver: string;
    budgetMb: number | null;
    stemCells: string | null;
    memoryScale: number;
    seed: number;
    maxInFlight: number;
    sampleEveryMs: number;
  };
  functions: ReplayFunction[];
  policies: PolicyResult[];
  notes: string[];
}

/** One planned invocation list, the same for every policy: times (ms from start) ascending. */
export interface ReplayPlan {
  functions: (ReplayFunction & { durations: [number, number][] })[];
  at: Float64Array;
  fn: Uint32Array;
  minutes: number;
}

/** Picks the functions and minutes, draws memory, and schedules every invocation. */
export function planReplay(trace: Trace, o: { minuteMs: number; functions?: number; minutes?: number; memoryScale?: number; seed?: number }): ReplayPlan {
  const rnd = seeded(o.seed ?? 1);
  const picked = trace.functions.slice(0, o.functions ?? trace.functions.length);
  const minutes = Math.min(o.minutes ?? Infinity, Math.max(0, ...picked.map((f) => f.perMinute.length)));
  const functions = picked.map((f, i) => {
    const durations = durationsOf(trace, f).points;
    const memoryMb = Math.round(inverseCdf(memoryOf(trace, f).points, rnd()) * (o.memoryScale ?? 1) * 10) / 10;
    return {
      name: `t${String(i + 1).padStart(4, "0")}-${f.hash.toLowerCase().replace(/[^a-z0-9]/g, "").slice(0, 6) || "fn"}`,
      hash: f.hash,
      invocations: f.perMinute.slice(0, minutes).reduce((a, b) => a + b, 0),
      memoryMb,
      declaredMb: declaredMemoryMb(memoryMb),
      medianMs: inverseCdf(durations, 0.5),
      durations,
    };
  });
  const events: [number, number][] = [];
  for (let m = 0; m < minutes; m++) {
    picked.forEach((f, i) => {
      for (const off of spreadMinute(f.perMinute[m] ?? 0, o.minuteMs, rnd)) events.push([m * o.minuteMs + off, i]);
    });
  }
  events.sort((a, b) => a[0] - b[0]);
  return { functions, minutes, at: Float64Array.from(events, (e) => e[0]), fn: Uint32Array.from(events, (e) => e[1]) };
}

export async function replayTrace(options: ReplayOptions): Promise<TraceReport> {
  const logger = options.logger ?? createConsola({ level: 3, stdout: process.stderr, stderr: process.stderr });
  const minuteMs = options.minuteMs ?? 60_000;
  const o = {
    minuteMs,
    policies: options.policies?.length ? options.policies : ["fixed"],
    driver: options.driver ?? "process",
    keepAliveMinutes: options.keepAliveMinutes ?? 10,
    memoryScale: options.memoryScale ?? 1,
    seed: options.seed ?? 1,
    maxInFlight: options.maxInFlight ?? 512,
    sampleEveryMs: options.sampleEveryMs ?? Math.min(5000, Math.max(100, minuteMs / 10)),
    timeoutMs: options.timeoutMs ?? 60_000,
  };
  const plan = planReplay(options.trace, { minuteMs, memoryScale: o.memoryScale, seed: o.seed, ...(options.functions !== undefined ? { functions: options.functions } : {}), ...(options.minutes !== undefined ? { minutes: options.minutes } : {}) });
  const archive = await packFiles([
    { path: "index.js", data: TRACE_FUNCTION_SOURCE },
    { path: "forge.json", data: JSON.stringify({ entry: "index.js" }) },
  ]);
  logger.info(`trace ${options.source ?? ""} ${options.trace.day}: ${plan.functions.length} functions, ${plan.minutes} minutes, ${plan.at.length} invocations; one trace minute = ${minuteMs} ms, so ${((plan.minutes * minuteMs) / 1000).toFixed(1)} s per policy`);

  const policies: PolicyResult[] = [];
  for (const policy of o.policies) {
    logger.start(`policy ${policy}`);
    policies.push(await runPolicy(plan, archive, policy, { ...o, ...(options.budgetMb !== undefined ? { budgetMb: options.budgetMb } : {}), ...(options.stemCells !== undefined ? { stemCells: options.stemCells } : {}) }, logger));
  }
  return {
    tool: "forge-bench-trace",
    schema: 1,
    createdAt: new Date().toISOString(),
    machine: machineInfo(),
    settings: {
      source: options.source ?? "",
      day: options.trace.day,
      functions: plan.functions.length,
      minutes: plan.minutes,
      invocations: plan.at.length,
      minuteMs,
      keepAliveMinutes: o.keepAliveMinutes,
      driver: o.driver,
      budgetMb: options.budgetMb ?? null,
      stemCells: options.stemCells ?? null,
      memoryScale: o.memoryScale,
      seed: o.seed,
      maxInFlight: o.maxInFlight,
      sampleEveryMs: o.sampleEveryMs,
    },
    functions: plan.functions.map(({ durations: _, ...f }) => f),
    policies,
    notes: [
      "added latency: end-to-end (request sent to body received, through the gateway by Host header) less the function's own run time (its x-run-ms header)",
      "start state: every function deployed (a deploy verifies one instance); then, when the keep-alive is at most a minute of real time, the replay waited until those instances were retired, and in any case until the pool's instances and stem cells stayed unchanged for 600 ms (see each policy's start state)",
      `memory-time is GiB-seconds of real time; in trace time multiply by ${Number((60_000 / minuteMs).toFixed(3))}`,
      `each function allocates and touches its drawn memory at load and declares memoryMb = max(128, ceil(drawn * 1.5 / 32) * 32)`,
    ],
  };
}

// --- internal ---

interface PolicySettings {
  minuteMs: number;
  driver: string;
  keepAliveMinutes: number;
  maxInFlight: number;
  sampleEveryMs: number;
  timeoutMs: number;
  budgetMb?: number;
  stemCells?: string;
}

const DEPLOY_CONCURRENCY = 4;
/** How long a forge may take to stop on SIGTERM before it is killed. */
const STOP_TIMEOUT_MS = 15_000;

async function runPolicy(plan: ReplayPlan, archive: Uint8Array, policy: string, o: PolicySettings, logger: ConsolaInstance): Promise<PolicyResult> {
  const result = emptyResult(policy);
  const dataDir = await mkdtemp(join(tmpdir(), "forge-trace-"));
  let proc: ReturnType<typeof Bun.spawn> | undefined;
  try {
    const child = await startForgeChild({
      FORGE_DATA_DIR: dataDir,
      FORGE_DRIVER: o.driver,
      FORGE_KEEP_ALIVE_POLICY: policy,
      FORGE_POLICY_MINUTE: `${Math.round(o.minuteMs)}ms`,
      FORGE_KEEP_ALIVE: `${Math.round(o.keepAliveMinutes * o.minuteMs)}ms`,
      ...(o.budgetMb !== undefined ? { FORGE_MEMORY_BUDGET_MB: String(o.budgetMb) } : {}),
      // startForgeChild's default is no cells; a replay leaves forge's own unless told
      FORGE_STEM_CELLS: o.stemCells,
    });
    proc = child.proc;
    const api = new ForgeClient(child.url, child.key);

    // 2. deploy, 4 at once
    const t = performance.now();
    const hosts: string[] = new Array<string>(plan.functions.length);
    let next = 0;
    await Promise.all(
      Array.from({ length: Math.min(DEPLOY_CONCURRENCY, plan.functions.length) }, async () => {
        while (next < plan.functions.length) {
          const i = next++;
          const f = plan.functions[i];
          if (!f) continue;
          const env = { TRACE_MEMORY_MB: String(f.memoryMb), TRACE_DURATIONS: JSON.stringify(f.durations) };
          const r = await api.deploy(f.name, archive, { env, memoryMb: f.declaredMb });
          hosts[i] = new URL(r.url).host;
        }
      }),
    );
    logger.info(`deployed ${plan.functions.length} functions in ${((performance.now() - t) / 1000).toFixed(1)} s`);

    // 3. quiet
    const metrics = (): Promise<MemorySample> => scrape(child.url, child.key).then(memorySample);
    await quiet(child.url, child.key, o.keepAliveMinutes * o.minuteMs);
    const before = await metrics();
    result.startState = { instances: before.instances, stemCells: before.stemCells };

    // 4. replay
    await replay(plan, hosts, child.url, o, result, metrics);
    const after = await metrics();
    const diff = (a: number | null, b: number | null): number | null => (a === null || b === null ? null : Math.max(0, b - a));
    const instances = diff(before.instanceGiBs, after.instanceGiBs);
    const cells = diff(before.cellGiBs, after.cellGiBs);
    result.memoryGiBs = { instances, cells, total: instances === null && cells === null ? null : (instances ?? 0) + (cells ?? 0) };
    logger.success(`policy ${policy}: ${result.answered}/${result.sent} answered, ${result.dropped} dropped, cold ${(result.shares.cold * 100).toFixed(1)} %`);
  } catch (err) {
    result.error = err instanceof Error ? err.message : String(err);
    logger.error(`policy ${policy} failed: ${result.error}`);
  } finally {
    if (proc) await stop(proc);
    await rm(dataDir, { recursive: true, force: true });
  }
  return result;
}

async function replay(plan: ReplayPlan, hosts: string[], url: string, o: PolicySettings, r: PolicyResult, metrics: () => Promise<MemorySample>): Promise<void> {
  const gateway = new URL("/", url).href;
  const added = new Histogram();
  const byStart = Object.fromEntries(START_KINDS.map((k) => [k, new Histogram()])) as Record<StartKind, Histogram>;
  const lag = new Histogram();
  const scrapes = new Histogram();
  const pending = new Set<Promise<void>>();
  const fail = (key: string): void => {
    r.errors[key] = (r.errors[key] ?? 0) + 1;
  };

  const one = async (host: string): Promise<void> => {
    const t0 = performance.now();
    try {
      const res = await fetch(gateway, { headers: { host }, signal: AbortSignal.timeout(o.timeoutMs) });
      await res.arrayBuffer();
      const e2e = performance.now() - t0;
      if (res.status < 200 || res.status > 299) return fail(String(res.status));
      r.answered++;
      const h = res.headers.get("x-forge-start");
      const kind: StartKind = h === "warm" || h === "cell" || h === "cold" ? h : "other";
      r.starts[kind]++;
      const run = Number(res.headers.get("x-run-ms") ?? NaN);
      const us = Math.max(0, e2e - (Number.isFinite(run) ? run : 0)) * 1000;
      added.record(us);
      byStart[kind].record(us);
    } catch (err) {
      fail((err as { name?: string }).name === "TimeoutError" ? "timeout" : "connection");
    }
  };

  // the memory sampler, alongside
  let sampling = true;
  const t0 = performance.now();
  const sampler = (async () => {
    while (sampling) {
      try {
        const t = performance.now();
        const s = await metrics();
        scrapes.record((performance.now() - t) * 1000);
        r.memory.push({ minute: Math.round(((performance.now() - t0) / o.minuteMs) * 1000) / 1000, countedMb: mb(s.countedBytes), residentMb: mb(s.residentBytes) });
      } catch {
        // a scrape that failed is a gap in the series, not a failed replay
      }
      if (sampling) await Bun.sleep(o.sampleEveryMs);
    }
  })();

  // the schedule, open-loop: each request at its time, whatever the others do
  const n = plan.at.length;
  let i = 0;
  while (i < n) {
    const now = performance.now() - t0;
    while (i < n && (plan.at[i] ?? 0) <= now) {
      const host = hosts[plan.fn[i] ?? 0] ?? "";
      lag.record((now - (plan.at[i] ?? 0)) * 1000);
      i++;
      if (pending.size >= o.maxInFlight) {
        r.dropped++;
        continue;
      }
      r.sent++;
      const p: Promise<void> = one(host).finally(() => pending.delete(p));
      pending.add(p);
    }
    if (i < n) await Bun.sleep(Math.max(0, Math.min(1000, (plan.at[i] ?? 0) - (performance.now() - t0))));
  }
  await Promise.all(pending);
  r.wallMs = Math.round(performance.now() - t0);
  sampling = false;
  await sampler;

  const summary = (h: Histogram): LatencySummary => ({ count: h.count, p50: ms(h.percentile(50)), p99: ms(h.percentile(99)), p999: ms(h.percentile(99.9)), max: ms(h.max), mean: ms(h.mean) });
  r.addedMs = summary(added);
  r.addedByStart = Object.fromEntries(START_KINDS.map((k) => [k, summary(byStart[k])])) as Record<StartKind, LatencySummary>;
  r.addedCdf = added.cdf(200).map((p) => [ms(p.us), Math.round(p.fraction * 1e5) / 1e5]);
  const total = START_KINDS.reduce((a, k) => a + r.starts[k], 0);
  r.shares = Object.fromEntries(START_KINDS.map((k) => [k, total === 0 ? 0 : r.starts[k] / total])) as Record<StartKind, number>;
  r.sendLagMs = { p99: ms(lag.percentile(99)), max: ms(lag.max) };
  r.scrapeMs = { p50: ms(scrapes.percentile(50)), max: ms(scrapes.max) };
  const peak = (xs: (number | null)[]): number | null => xs.reduce<number | null>((a, v) => (v === null ? a : Math.max(a ?? 0, v)), null);
  r.peakMb = { counted: peak(r.memory.map((p) => p.countedMb)), resident: peak(r.memory.map((p) => p.residentMb)) };
}

/**
 * Waits for the start state: every instance the deploys left retired by the keep-alive (so
 * every policy starts from the same state however long its deploys took), when that comes
 * within a minute; then until the pool's instances and cells read the same three times 200 ms
 * apart (at most 30 s more).
 */
async function quiet(url: string, key: string, keepAliveMs: number): Promise<void> {
  const poll = async (check: (text: string) => boolean, forMs: number): Promise<void> => {
    const deadline = performance.now() + forMs;
    while (performance.now() < deadline) {
      if (check(await scrape(url, key))) return;
      await Bun.sleep(200); // the interval of a condition poll, not a guessed wait
    }
  };
  if (keepAliveMs <= 60_000) await poll((text) => (memorySample(text).instances ?? 0) === 0, keepAliveMs * 1.5 + 5_000);
  let last = "";
  let same = 0;
  await poll((text) => {
    const now = text
      .split("\n")
      .filter((l) => l.startsWith("forge_instances{") || l.startsWith("forge_stem_cells"))
      .join("\n");
    same = now === last ? same + 1 : 0;
    last = now;
    return same >= 3;
  }, 30_000);
}

/** SIGTERM, wait for the exit; SIGKILL past STOP_TIMEOUT_MS. */
async function stop(proc: ReturnType<typeof Bun.spawn>): Promise<void> {
  if (proc.exitCode !== null || proc.signalCode !== null) return;
  proc.kill("SIGTERM");
  const timer = setTimeout(() => proc.kill("SIGKILL"), STOP_TIMEOUT_MS);
  await proc.exited;
  clearTimeout(timer);
}

function emptyResult(policy: string): PolicyResult {
  const zero: LatencySummary = { count: 0, p50: 0, p99: 0, p999: 0, max: 0, mean: 0 };
  return {
    policy,
    startState: { instances: null, stemCells: null },
    sent: 0,
    answered: 0,
    dropped: 0,
    errors: {},
    starts: { warm: 0, cell: 0, cold: 0, other: 0 },
    shares: { warm: 0, cell: 0, cold: 0, other: 0 },
    addedMs: zero,
    addedByStart: { warm: zero, cell: zero, cold: zero, other: zero },
    addedCdf: [],
    sendLagMs: { p99: 0, max: 0 },
    scrapeMs: { p50: 0, max: 0 },
    memoryGiBs: { instances: null, cells: null, total: null },
    peakMb: { counted: null, resident: null },
    memory: [],
    wallMs: 0,
  };
}

const ms = (us: number): number => Math.round(us) / 1000;
const mb = (bytes: number | null): number | null => (bytes === null ? null : Math.round((bytes / 1048576) * 10) / 10);
