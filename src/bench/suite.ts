/**
 * `forge bench suite`: every scenario in one run, against a forge the suite starts itself
 * (in-process, temp data dir, port 0, the chosen driver) or a running one (`url`):
 *
 *   1. docker-run         plain `docker run` of the runtime image to first response (docker only)
 *   2. forge-cold         first request with no stem cell (a server started with 0 cells)
 *   3. forge-cell         first request with a stem cell ready
 *   4. warm-gateway       warm load through the gateway (each warm load after a warm-up, not counted)
 *   5. warm-direct        the same load straight to the instance's socket (the limit)
 *   6. warm-nginx         the same load through nginx to that socket (the peer proxy)
 *   7. burst              N concurrent requests at a cold function; instances counted
 *   8. deploy-under-load  a deploy during a steady load; failed requests counted
 *   9. forge-cell-node    first request of a node function with a node stem cell ready
 *  10. warm-gateway-node  the warm-gateway load on the same function on runtime node
 *
 * In-process servers run one after the other (never two at once: on the docker driver each
 * would reconcile the other's containers away), and every load runs on its own thread so
 * the generator never shares the gateway's event loop.
 */
import { randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createConsola, type ConsolaInstance } from "consola";
import { ForgeClient } from "../cli/client.ts";
import { cellMin, loadConfig, type Config, type StemCells } from "../config.ts";
import { startServer, type ForgeServer } from "../server.ts";
import type { ProgressStream } from "./load.ts";
import { computeRatios, machineInfo, SCHEMA_VERSION, type BenchReport, type ScenarioResult } from "./report.ts";
import { guard, runPrefix, skipped, waitFor, type BenchTarget, type SuiteContext, type SuiteSettings } from "./scenarios/_shared.ts";
import { burst, BURST } from "./scenarios/burst.ts";
import { deployUnderLoad, DEPLOY } from "./scenarios/deploy-under-load.ts";
import { CELL, CELL_NODE, COLD, firstRequests } from "./scenarios/first-request.ts";
import { NAME as DOCKER_RUN, plainDockerRun, TITLE as DOCKER_RUN_TITLE } from "./scenarios/plain-docker.ts";
import { DIRECT, GATEWAY, GATEWAY_NODE, NGINX, warmScenarios } from "./scenarios/warm.ts";

export const SCENARIOS = [DOCKER_RUN, COLD.name, CELL.name, GATEWAY.name, DIRECT.name, NGINX.name, BURST.name, DEPLOY.name, CELL_NODE.name, GATEWAY_NODE.name] as const;
export type ScenarioName = (typeof SCENARIOS)[number];

export interface SuiteOptions {
  /** Driver of the forge the suite starts. Default process. Ignored with `url`. */
  driver?: "process" | "docker";
  /** Measure this running forge instead of starting one. */
  url?: string;
  /** API key of `url`. */
  apiKey?: string;
  /** Requests of each warm scenario. Default 5000. */
  requests?: number;
  /** Workers of the warm scenarios. Default 16. */
  concurrency?: number;
  /** Load before each warm scenario is measured, not counted: JIT of gateway, instance and generator. Default 2000 ms. */
  warmupMs?: number;
  /** First requests per cold-start scenario (and docker runs). Default 10. */
  samples?: number;
  /** Concurrent requests of the burst. Default 32. */
  burst?: number;
  /** Run only these scenarios. Default all. */
  only?: readonly string[];
  /** Settings the in-process forge starts from. Default loadConfig() (the environment). */
  config?: Config;
  /** Where the suite says what it does. Default a consola on stderr. */
  logger?: ConsolaInstance;
  /** Live progress line of load scenarios (drawn only on a TTY). */
  progressTo?: ProgressStream;
}

export async function runSuite(options: SuiteOptions = {}): Promise<BenchReport> {
  const logger = options.logger ?? createConsola({ level: 3, stdout: process.stderr, stderr: process.stderr });
  const base = options.config ?? loadConfig();
  const driver = options.driver ?? "process";
  const only = new Set<string>(options.only?.length ? options.only : SCENARIOS);
  const settings: SuiteSettings = {
    requests: options.requests ?? 5000,
    concurrency: options.concurrency ?? 16,
    warmupMs: options.warmupMs ?? 2000,
    samples: options.samples ?? 10,
    burst: options.burst ?? 32,
    runtimeImage: base.runtimeImage,
  };
  const tmp = await mkdtemp(join(tmpdir(), "forge-bench-"));
  const ctx: SuiteContext = {
    settings,
    logger,
    ...(options.progressTo ? { progressTo: options.progressTo } : {}),
    tmp,
    prefix: runPrefix(),
    notes: [],
  };
  const results: ScenarioResult[] = [];
  try {
    // 1. the baseline, before any forge runs
    if (only.has(DOCKER_RUN)) {
      if (options.url === undefined && driver !== "docker") {
        results.push(skipped(DOCKER_RUN, DOCKER_RUN_TITLE, "first-request", "the driver is process (run with --driver docker for the docker baseline)"));
      } else {
        results.push(...(await guard(DOCKER_RUN, DOCKER_RUN_TITLE, "first-request", logger, () => plainDockerRun(ctx))));
      }
    }

    if (options.url !== undefined) {
      const target: BenchTarget = { url: options.url.replace(/\/+$/, ""), client: new ForgeClient(options.url, options.apiKey) };
      await target.client.list(); // unreachable or unauthorized: say so before any scenario
      if (only.has(COLD.name) || only.has(CELL.name)) {
        const both = await guard("first-request", "first requests of new functions", "first-request", logger, () => firstRequests(ctx, target, "either"));
        results.push(...both.filter((s) => only.has(s.name) || s.error));
      }
      results.push(...(await steadyScenarios(ctx, target, only)));
    } else {
      // 2. true cold: a forge with no stem cells
      if (only.has(COLD.name)) {
        results.push(
          ...(await guard(COLD.name, COLD.title, "first-request", logger, async () => {
            await using forge = await inProcess(base, driver, { bun: 0, node: 0 }, logger);
            // awaited here, so the server outlives the scenario
            return await firstRequests(ctx, forge.target, "cold");
          })),
        );
      }
      // 3-8: a forge with stem cells
      const rest = SCENARIOS.filter((s) => s !== DOCKER_RUN && s !== COLD.name && only.has(s));
      if (rest.length) {
        let forge: InProcessForge | undefined;
        try {
          forge = await inProcess(base, driver, { bun: Math.max(1, cellMin(base.stemCells.bun)), node: Math.max(1, cellMin(base.stemCells.node)) }, logger);
        } catch (err) {
          const message = `could not start forge (${driver} driver): ${err instanceof Error ? err.message : String(err)}`;
          logger.error(message);
          for (const name of rest) results.push({ name, title: name, kind: "load", error: message, samples: 0, errors: 0 });
        }
        if (forge) {
          try {
            const target = forge.target;
            if (only.has(CELL.name)) results.push(...(await guard(CELL.name, CELL.title, "first-request", logger, () => firstRequests(ctx, target, "cell"))));
            if (only.has(CELL_NODE.name)) {
              results.push(
                ...(forge.server.runtimes.node
                  ? await guard(CELL_NODE.name, CELL_NODE.title, "first-request", logger, () => firstRequests(ctx, target, "cell", "node"))
                  : [skipped(CELL_NODE.name, CELL_NODE.title, "first-request", "this machine has no node binary (FORGE_NODE_BIN)")]),
              );
            }
            results.push(...(await steadyScenarios(ctx, target, only)));
          } finally {
            await forge[Symbol.asyncDispose]();
          }
        }
      }
    }
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }

  const order = new Map<string, number>(SCENARIOS.map((s, i) => [s, i]));
  results.sort((a, b) => (order.get(a.name) ?? 99) - (order.get(b.name) ?? 99));
  ctx.notes.push(
    `latency: from the first byte of a request sent to the last byte of its response received; loads are closed-loop over kept-alive connections, on a thread of their own; warm scenarios after a ${settings.warmupMs / 1000}s warm-up that is not counted`,
  );
  return {
    schema: SCHEMA_VERSION,
    tool: "forge-bench",
    createdAt: new Date().toISOString(),
    machine: machineInfo(),
    driver: options.url !== undefined ? (options.driver ?? "unknown") : driver,
    target: options.url ?? "in-process",
    units: { latency: "ms", rps: "requests/s" },
    options: { requests: settings.requests, concurrency: settings.concurrency, warmupMs: settings.warmupMs, samples: settings.samples, burst: settings.burst },
    scenarios: results,
    ratios: computeRatios(results),
    notes: ctx.notes,
  };
}

export interface InProcessForge extends AsyncDisposable {
  server: ForgeServer;
  target: BenchTarget;
}

/** A forge in this process: temp data dir, port 0, `stemCells` cells, ready when it resolves. */
export async function inProcess(base: Config, driver: "process" | "docker", stemCells: StemCells, logger: ConsolaInstance): Promise<InProcessForge> {
  const dataDir = await mkdtemp(join(tmpdir(), "forge-bench-data-"));
  const config: Config = {
    ...base,
    port: 0,
    host: "127.0.0.1",
    dataDir,
    db: join(dataDir, "forge.db"),
    redisUrl: undefined,
    driver,
    stemCells,
    apiKey: `forge_bench_${randomBytes(12).toString("hex")}`,
  };
  let server: ForgeServer;
  try {
    server = await startServer(config, { logger: logger.withTag("forge").create({ level: 1 }) });
  } catch (err) {
    await rm(dataDir, { recursive: true, force: true });
    throw err;
  }
  const pool = server.pool;
  const dispose = async (): Promise<void> => {
    await server.stop(2_000);
    await rm(dataDir, { recursive: true, force: true });
  };
  try {
    // One cell of each runtime that keeps some (node's only where forge found a node binary).
    const wanted = (["bun", "node"] as const).filter((r) => cellMin(stemCells[r]) > 0 && (r === "bun" || server.runtimes.node));
    if (wanted.length > 0) await waitFor(() => wanted.every((r) => (pool.stats().cellsByRuntime[r] ?? 0) >= 1), `a stem cell of ${wanted.join(" and ")}`);
  } catch (err) {
    await dispose();
    throw err;
  }
  return {
    server,
    target: { url: server.url, client: new ForgeClient(server.url, server.apiKey), pool },
    [Symbol.asyncDispose]: dispose,
  };
}

// --- internal ---

async function steadyScenarios(ctx: SuiteContext, target: BenchTarget, only: ReadonlySet<string>): Promise<ScenarioResult[]> {
  const out: ScenarioResult[] = [];
  if (only.has(GATEWAY.name) || only.has(DIRECT.name) || only.has(NGINX.name) || only.has(GATEWAY_NODE.name)) {
    out.push(...(await guard("warm", "warm requests: gateway, direct, nginx, gateway to node", "load", ctx.logger, () => warmScenarios(ctx, target, only))));
  }
  if (only.has(BURST.name)) out.push(...(await guard(BURST.name, BURST.title, "burst", ctx.logger, () => burst(ctx, target))));
  if (only.has(DEPLOY.name)) out.push(...(await guard(DEPLOY.name, DEPLOY.title, "deploy", ctx.logger, () => deployUnderLoad(ctx, target))));
  return out;
}
