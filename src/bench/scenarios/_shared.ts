/** What the suite's scenarios share: the forge measured, the settings, deploying, first requests. */
import { randomBytes } from "node:crypto";
import type { ConsolaInstance } from "consola";
import { packFiles } from "../../build/index.ts";
import type { ForgeClient, FunctionInfo } from "../../cli/client.ts";
import type { PoolManager } from "../../pool/index.ts";
import type { ProgressStream } from "../load.ts";
import type { ScenarioResult } from "../report.ts";

/** A forge to measure: started in-process by the suite, or a running one (--url). */
export interface BenchTarget {
  /** Apex URL (control API and gateway). */
  url: string;
  client: ForgeClient;
  /** In-process only: stem cells and instances seen directly. */
  pool?: PoolManager;
}

export interface SuiteSettings {
  /** Requests of each warm scenario. */
  requests: number;
  /** Workers of the warm scenarios. */
  concurrency: number;
  /** Load before each warm scenario is measured, milliseconds (not counted). */
  warmupMs: number;
  /** First requests measured per cold-start scenario. */
  samples: number;
  /** Concurrent requests of the burst. */
  burst: number;
  /** Image of `docker run` baseline (the runtime image). */
  runtimeImage: string;
}

export interface SuiteContext {
  settings: SuiteSettings;
  logger: ConsolaInstance;
  progressTo?: ProgressStream;
  /** A temp folder of this run, removed at the end. */
  tmp: string;
  /** Prefix of every function this run deploys (bench-<hex>-), so a shared forge is left clean. */
  prefix: string;
  notes: string[];
}

/** The benchmark function: as small as a function gets, so forge's own cost shows. */
export const FUNCTION_SOURCE = `export default {
  fetch(request) {
    return new Response("ok " + (process.env.BENCH_VERSION ?? "1") + "\\n", { headers: { "content-type": "text/plain" } });
  },
};
`;

export function runPrefix(): string {
  return `bench-${randomBytes(3).toString("hex")}-`;
}

export interface Deployed {
  name: string;
  version: number;
  /** Host header that reaches the function through the gateway. */
  host: string;
}

/** Deploys the benchmark function under `name` with config overrides. */
/** Deploys the bench's function (FUNCTION_SOURCE, the same on both runtimes) on `runtime`. */
export async function deployFunction(target: BenchTarget, name: string, config: Record<string, unknown> = {}, runtime: "bun" | "node" = "bun"): Promise<Deployed> {
  const archive = await packFiles([
    { path: "index.js", data: FUNCTION_SOURCE },
    { path: "forge.json", data: JSON.stringify({ name, entry: "index.js", runtime }) },
  ]);
  const result = await target.client.deploy(name, archive, config);
  return { name, version: result.version, host: new URL(result.url).host };
}

export async function deleteFunction(target: BenchTarget, name: string, logger: ConsolaInstance): Promise<void> {
  await target.client.delete(name).catch((err: unknown) => logger.warn(`could not delete ${name}:`, err instanceof Error ? err.message : err));
}

export interface FirstRequest {
  us: number;
  status: number;
  /** x-forge-start: warm, cell or cold. */
  start: string;
}

/** One request through the gateway, timed to the end of its body. */
export async function timedRequest(target: BenchTarget, host: string, path = "/"): Promise<FirstRequest> {
  const t0 = Bun.nanoseconds();
  const res = await fetch(new URL(path, target.url), { headers: { host } });
  await res.arrayBuffer();
  return { us: (Bun.nanoseconds() - t0) / 1000, status: res.status, start: res.headers.get("x-forge-start") ?? "unknown" };
}

export function info(target: BenchTarget, name: string): Promise<FunctionInfo> {
  return target.client.info(name);
}

/** Polls `check` until it holds (the condition, not a guessed wait), or throws after `timeoutMs`. */
export async function waitFor(check: () => boolean | Promise<boolean>, what: string, timeoutMs = 30_000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!(await check())) {
    if (performance.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await Bun.sleep(2);
  }
}

/** A free TCP port on 127.0.0.1 for a program that cannot take port 0 and report back. */
export function freePort(): number {
  const probe = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const port = probe.port;
  probe.stop(true);
  return port;
}

/** Runs a scenario, turning a throw into a failed result instead of ending the suite. */
export async function guard(name: string, title: string, kind: ScenarioResult["kind"], logger: ConsolaInstance, run: () => Promise<ScenarioResult | ScenarioResult[]>): Promise<ScenarioResult[]> {
  logger.start(`${name}: ${title}`);
  try {
    const r = await run();
    return Array.isArray(r) ? r : [r];
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    logger.error(`${name} failed: ${message}`);
    return [{ name, title, kind, error: message, samples: 0, errors: 0 }];
  }
}

export function skipped(name: string, title: string, kind: ScenarioResult["kind"], why: string): ScenarioResult {
  return { name, title, kind, skipped: why, samples: 0, errors: 0 };
}
