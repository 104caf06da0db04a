/** What the docker benches share: the engine with the runtime image, a function image, stats. */
import { mkdir, mkdtemp, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import type Dockerode from "dockerode";
import { buildRuntimeImage, createImageBuilder } from "../build/index.ts";
import { loadConfig } from "../config.ts";
import { BUNDLE_FILE, connectDocker, pingDocker } from "../pool/index.ts";

/** The function every docker bench runs: the smallest answer, so the path is what is measured. */
export const BENCH_BUNDLE = `export default { fetch() { return new Response("ok"); } };\n`;

export interface BenchEngine {
  docker: Dockerode;
  runtimeImage: string;
  /** A folder holding task/BUNDLE_FILE (BENCH_BUNDLE): the bundle in the folder of a version. */
  dir: string;
  bundlePath: string;
}

export async function benchEngine(): Promise<BenchEngine> {
  const config = loadConfig();
  const docker = connectDocker(config.dockerHost);
  const problem = await pingDocker(docker);
  if (problem !== undefined) throw new Error(`no Docker engine answers: ${problem} (run .ci/services.sh)`);
  await buildRuntimeImage(docker, "bun", { image: config.runtimeImage });
  const dir = await mkdtemp(join(tmpdir(), "forge-bench-"));
  const bundlePath = join(dir, "task", BUNDLE_FILE);
  await mkdir(dirname(bundlePath), { recursive: true });
  await writeFile(bundlePath, BENCH_BUNDLE);
  return { docker, runtimeImage: config.runtimeImage, dir, bundlePath };
}

/** forge/fn-<name>:v1 holding BENCH_BUNDLE, as a deploy would build it. */
export async function benchImage(engine: BenchEngine, name: string): Promise<string> {
  const builder = createImageBuilder({ docker: engine.docker, runtimeImage: engine.runtimeImage });
  return builder.buildBundleImage(name, 1, dirname(engine.bundlePath), () => {});
}

export async function removeBenchImage(engine: BenchEngine, name: string): Promise<void> {
  await createImageBuilder({ docker: engine.docker, runtimeImage: engine.runtimeImage }).removeImages(name);
}

export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const index = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[index] ?? Number.NaN;
}

export interface Summary {
  n: number;
  median: number;
  p90: number;
  min: number;
}

export function summarize(samples: number[]): Summary {
  const sorted = [...samples].sort((a, b) => a - b);
  return { n: sorted.length, median: percentile(sorted, 50), p90: percentile(sorted, 90), min: sorted[0] ?? Number.NaN };
}

/** A free TCP port on 127.0.0.1 (bound, read, released). */
export function freePort(): number {
  const server = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const port = server.port;
  server.stop(true);
  return port;
}

export function row(cells: string[], widths: number[]): string {
  return cells.map((c, i) => c.padEnd(widths[i] ?? 0)).join("  ").trimEnd();
}
