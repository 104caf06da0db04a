/**
 * What do invocation records, metrics and function logs cost the warm path? Starts two
 * forges on the process driver (FORGE_TELEMETRY=on and off), deploys examples/hello on
 * each (one instance, concurrency 256) and measures both with wrk, alternating rounds
 * after a warm-up. Prints requests/s and CPU per request of each, and the ratio on / off.
 *
 *   bun src/bench/telemetry-cost.ts [-c 64] [-d 5s] [--rounds 3]
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { parseDuration } from "../config.ts";
import { median, startForgeWithHello, wrk, type ForgeChild } from "./_forge-process.ts";

async function main(): Promise<number> {
  const { values } = parseArgs({ options: { c: { type: "string", default: "64" }, d: { type: "string", default: "5s" }, rounds: { type: "string", default: "3" } } });
  const c = Number(values.c);
  const seconds = Math.max(1, Math.round((parseDuration(values.d) ?? 5000) / 1000));
  const rounds = Number(values.rounds);
  if (!Bun.which("wrk")) {
    process.stderr.write("wrk is not installed (apt-get install wrk)\n");
    return 1;
  }
  const dirs: string[] = [];
  const forges: ForgeChild[] = [];
  try {
    for (const telemetry of ["on", "off"]) {
      const dir = mkdtempSync(join(tmpdir(), `forge-telemetry-${telemetry}-`));
      dirs.push(dir);
      forges.push(await startForgeWithHello({ FORGE_DATA_DIR: dir, FORGE_DRIVER: "process", FORGE_TELEMETRY: telemetry }, ["--concurrency", "256", "--max-instances", "1"]));
    }
    const [on, off] = forges as [ForgeChild, ForgeChild];
    const run = (f: ForgeChild, s: number) => wrk(`${f.url}/?name=x`, f.host, c, s, f.proc.pid);
    run(on, 2); // warm-up: the JIT and the instance
    run(off, 2);
    const results = { on: [] as { rps: number; cpuUs: number }[], off: [] as { rps: number; cpuUs: number }[] };
    for (let i = 0; i < rounds; i++) {
      results.on.push(run(on, seconds));
      results.off.push(run(off, seconds));
    }
    const onRps = median(results.on.map((r) => r.rps));
    const offRps = median(results.off.map((r) => r.rps));
    const onCpu = median(results.on.map((r) => r.cpuUs));
    const offCpu = median(results.off.map((r) => r.cpuUs));
    console.log(`telemetry on : ${onRps.toFixed(0)} req/s, ${onCpu.toFixed(1)} us CPU per request (median of ${rounds} x ${seconds}s, wrk -c${c})`);
    console.log(`telemetry off: ${offRps.toFixed(0)} req/s, ${offCpu.toFixed(1)} us CPU per request`);
    console.log(`ratio on/off: throughput ${(onRps / offRps).toFixed(3)}, CPU per request ${(onCpu / offCpu).toFixed(3)}`);
    return 0;
  } finally {
    for (const f of forges) {
      f.proc.kill("SIGTERM");
      await f.proc.exited;
    }
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  }
}

process.exit(await main());
