/**
 * Density: how many idle functions stay warm per GB of memory budget when the budget counts
 * declared limits (before issue 17, FORGE_MEMORY_ACCOUNTING=declared) and when it counts
 * measured resident memory plus the headroom (after, the default).
 *
 *   bun src/bench/density.ts [--driver process|docker] [--functions 64] [--budget 1024]
 *
 * For each accounting: a fresh forge (no stem cells) with the budget, examples/hello deployed
 * under `--functions` names (128 MiB each) one after another, then, once every instance was
 * measured (or after 3 s with declared accounting), the functions with a warm instance.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { startForgeChild } from "./_forge-process.ts";

const ROOT = resolve(import.meta.dir, "../..");
const MAIN = join(ROOT, "src/cli/main.ts");

const { values } = parseArgs({ options: { driver: { type: "string", default: "process" }, functions: { type: "string", default: "64" }, budget: { type: "string", default: "1024" } } });
const driver = values.driver === "docker" ? "docker" : "process";
const count = Number(values.functions);
const budgetMb = Number(values.budget);

interface Row {
  accounting: string;
  deployed: number;
  warm: number;
  perGb: number;
  countedMb: number;
  residentMb: number | null;
  declaredMb: number;
}

async function run(accounting: "declared" | "measured"): Promise<Row> {
  const dataDir = mkdtempSync(join(tmpdir(), "forge-density-"));
  const forge = await startForgeChild({ FORGE_DATA_DIR: dataDir, FORGE_DRIVER: driver, FORGE_MEMORY_BUDGET_MB: String(budgetMb), FORGE_MEMORY_ACCOUNTING: accounting, FORGE_STEM_CELLS: "0" });
  const api = async <T>(path: string): Promise<T> => (await (await fetch(`${forge.url}${path}`, { headers: { authorization: `Bearer ${forge.key}` } })).json()) as T;
  try {
    const names = Array.from({ length: count }, (_, i) => `d${String(i).padStart(3, "0")}`);
    for (const name of names) {
      const d = Bun.spawnSync([process.execPath, MAIN, "deploy", join(ROOT, "examples/hello"), "--name", name, "--memory", "128"], {
        env: { PATH: process.env.PATH ?? "", FORGE_URL: forge.url, FORGE_API_KEY: forge.key, NO_COLOR: "1" },
      });
      if (d.exitCode !== 0) throw new Error(`deploy ${name}: ${d.stdout.toString()}${d.stderr.toString()}`);
    }
    type Info = { pool: { instances: { state: string; residentMb?: number }[] } | null; memory: { countedMb: number; residentMb?: number; declaredMb: number } };
    const deadline = Date.now() + (accounting === "measured" ? 20_000 : 3_000);
    let infos: Info[] = [];
    for (;;) {
      infos = await Promise.all(names.map((n) => api<Info>(`/v1/functions/${n}`)));
      const measured = infos.every((i) => (i.pool?.instances ?? []).every((x) => x.residentMb !== undefined));
      if ((accounting === "measured" && measured) || Date.now() > deadline) break;
    }
    const warm = infos.filter((i) => (i.pool?.instances ?? []).some((x) => x.state === "ready")).length;
    const memory = infos[0]?.memory ?? { countedMb: 0, declaredMb: 0 };
    return { accounting, deployed: count, warm, perGb: Math.round((warm / (budgetMb / 1024)) * 10) / 10, countedMb: memory.countedMb, residentMb: memory.residentMb ?? null, declaredMb: memory.declaredMb };
  } finally {
    forge.proc.kill("SIGTERM");
    await forge.proc.exited;
    rmSync(dataDir, { recursive: true, force: true });
  }
}

const rows: Row[] = [];
for (const accounting of ["declared", "measured"] as const) rows.push(await run(accounting));
console.log(`density, ${driver} driver, budget ${budgetMb} MiB, ${count} functions of 128 MiB (examples/hello), idle`);
console.log("| accounting | warm functions | per GB of budget | counted MiB | resident MiB | declared MiB |");
console.log("| --- | --- | --- | --- | --- | --- |");
for (const r of rows) console.log(`| ${r.accounting} | ${r.warm} of ${r.deployed} | ${r.perGb} | ${r.countedMb} | ${r.residentMb ?? "-"} | ${r.declaredMb} |`);
const [before, after] = rows;
if (before && after && before.warm > 0) console.log(`measured / declared: ${(after.warm / before.warm).toFixed(2)}x`);
