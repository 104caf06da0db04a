/**
 * What Driver.memoryUsage reports and what a look costs, per driver: the measured memory of an
 * idle bun instance and of an idle stem cell, then the time of one memoryUsage() over N live
 * instances (median and p95 of 20 looks; the docker driver's fallback answers from figures a
 * background round of the engine's stats gathered, ~7 s for 50 containers). The process driver runs twice when forge is root:
 * with a memory cgroup per instance (the cgroups' working sets) and with the watch (each
 * process tree's own pages).
 *
 *   bun src/bench/memory-usage.ts [--instances 50] [--drivers process,docker]
 */
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { createConsola } from "consola";
import type { Driver, InstanceSpec } from "../pool/driver.ts";
import { createDockerDriver, createProcessDriver } from "../pool/index.ts";
import { BENCH_BUNDLE, benchEngine, percentile } from "./_docker-bench.ts";

const MIB = 1024 * 1024;
const LOOKS = 20;
const quiet = createConsola({ level: -999 });

type Measured = Driver & { memoryUsage(): Promise<Map<string, number>> };

async function measure(label: string, driver: Measured, bundlePath: string, count: number, memoryMb: number): Promise<void> {
  const spec = (i: number, role: "instance" | "cell"): InstanceSpec => ({
    id: `mu${i}${role[0]}${crypto.randomUUID().slice(0, 6)}`,
    role,
    runtime: "bun",
    ...(role === "instance" ? { function: "bench", version: 1, bundlePath } : {}),
    env: {},
    memoryMb,
  });
  try {
    const instance = await driver.start(spec(0, "instance"));
    const cell = await driver.start(spec(0, "cell"));
    // idle: let start-up garbage be collected and the figures settle
    await Bun.sleep(1_000);
    // the docker driver's fallback (the engine's stats) has figures once a round is done
    let idle = await driver.memoryUsage();
    for (const deadline = Date.now() + 15_000; !(idle.has(instance.id) && idle.has(cell.id)) && Date.now() < deadline; ) {
      await Bun.sleep(50); // polling interval
      idle = await driver.memoryUsage();
    }
    const mib = (bytes: number | undefined) => (bytes === undefined ? "n/a" : (bytes / MIB).toFixed(1));
    for (let i = 2; i < count; i += 8) {
      await Promise.all(Array.from({ length: Math.min(8, count - i) }, (_, k) => driver.start(spec(i + k, "instance"))));
    }
    const times: number[] = [];
    let reported = 0;
    // how long forge's event loop is held: the longest gap of a 1 ms timer during the looks
    let last = performance.now();
    let longestGap = 0;
    const ticker = setInterval(() => {
      const now = performance.now();
      longestGap = Math.max(longestGap, now - last);
      last = now;
    }, 1);
    try {
      for (let i = 0; i < LOOKS; i++) {
        const t0 = performance.now();
        reported = (await driver.memoryUsage()).size;
        times.push(performance.now() - t0);
      }
    } finally {
      clearInterval(ticker);
    }
    times.sort((a, b) => a - b);
    console.log(
      `${label.padEnd(28)} idle instance ${mib(idle.get(instance.id)).padStart(6)} MiB  idle cell ${mib(idle.get(cell.id)).padStart(6)} MiB  ` +
        `memoryUsage() over ${reported}: median ${percentile(times, 50).toFixed(2)} ms, p95 ${percentile(times, 95).toFixed(2)} ms, longest loop gap ${longestGap.toFixed(1)} ms`,
    );
  } finally {
    await driver.dispose();
  }
}

async function main(): Promise<number> {
  const { values } = parseArgs({ options: { instances: { type: "string", default: "50" }, drivers: { type: "string", default: "process,docker" } } });
  const count = Number(values.instances);
  const drivers = values.drivers.split(",");
  const dir = await mkdtemp(join(tmpdir(), "forge-bench-mu-"));
  const bundlePath = join(dir, "fn.mjs");
  await writeFile(bundlePath, BENCH_BUNDLE);
  try {
    if (drivers.includes("process")) {
      const modes = process.getuid?.() === 0 ? (["cgroup", "rss"] as const) : (["rss"] as const);
      for (const memoryLimits of modes) {
        for (const memoryMb of [128, 256]) {
          const dataDir = await mkdtemp(join(tmpdir(), "forge-bench-mu-pd-"));
          const driver = createProcessDriver({ dataDir, logger: quiet, memoryLimits });
          await measure(`process (${driver.memoryLimits}) ${memoryMb} MB`, driver, bundlePath, count, memoryMb);
          await rm(dataDir, { recursive: true, force: true });
        }
      }
    }
    if (drivers.includes("docker")) {
      const engine = await benchEngine();
      for (const [label, extra] of [["docker (cgroup files)", {}], ["docker (engine stats)", { cgroupLayouts: [] }]] as const) {
        const driver = createDockerDriver({ docker: engine.docker, dataDir: engine.dir, runtimeImage: engine.runtimeImage, logger: quiet, stopGraceSec: 1, ...extra });
        await measure(`${label} 128 MB`, driver, bundlePath, count, 128);
      }
      await rm(engine.dir, { recursive: true, force: true });
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  return 0;
}

process.exit(await main());
